"""The security settings `server.start` forces, whatever the config file or the environment says (issue 9, 4),
and the readiness check reading only this start's log lines (issue 9, 3).

Unit tests check each forced setting on the effective config; one real TorchServe, started in a used home with a
hostile config and hostile environment variables, proves that they really do not take effect.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import httpx
import psutil
import pytest

from aiaas_torch import serving as server
from aiaas_torch.serving.config import effective_config, launcher_env
from aiaas_torch.cli import main
from aiaas_torch.handlers.integrity import REFUSAL_MARK
from aiaas_torch.serving import SECURITY_SETTINGS, Ports, SecuritySettingWarning

from test_server import FIXTURES, build_mar, group_pids, kill_leftovers

PORTS = Ports(1, 2, 3, 4, 5, 600)
HOSTILE = {  # each key set against what start forces
    "disable_token_authorization": "true",
    "enable_model_api": "true",
    "allowed_urls": "https://.*,file://.*",
    "install_py_dep_per_model": "true",
    "enable_envvars_config": "true",
    "use_env_allowed_urls": "true",
}


def _effective(base: dict, trusted=()) -> tuple[dict, list[str]]:
    """Return the effective config of `base` and the warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        props = effective_config(base, PORTS, Path("/store"), trusted)
    return props, [str(w.message) for w in caught if issubclass(w.category, SecuritySettingWarning)]


@pytest.mark.parametrize("key", sorted(HOSTILE))
def test_each_security_setting_is_forced_with_a_warning_naming_the_key(key):
    props, said = _effective({key: HOSTILE[key]})
    assert props[key] == SECURITY_SETTINGS[key]
    assert len(said) == 1 and f"{key}={HOSTILE[key]}" in said[0] and f"forces {key}={SECURITY_SETTINGS[key]}" in said[0]


@pytest.mark.parametrize("key", ["inference_address", "management_address", "metrics_address"])
def test_an_address_off_loopback_is_forced_back_with_a_warning(key):
    props, said = _effective({key: "http://0.0.0.0:80"})
    assert props[key].startswith("http://127.0.0.1:")
    assert len(said) == 1 and key in said[0]


def test_settings_that_already_agree_raise_no_warning():
    base = {**SECURITY_SETTINGS, "disable_token_authorization": "FALSE", "inference_address": "http://127.0.0.1:8080"}
    assert _effective(base)[1] == []


def test_the_worker_hands_bodies_over_undecoded_whatever_the_config_says():
    """decode_input_request=false: one JSON parse per body (the handler's); forced and warned about like the rest."""
    props, said = _effective({"decode_input_request": "true"})
    assert props["decode_input_request"] == "false"
    assert len(said) == 1 and "decode_input_request=true" in said[0] and "forces decode_input_request=false" in said[0]
    assert _effective({})[0]["decode_input_request"] == "false"


def test_the_shipped_base_config_already_agrees_with_every_forced_setting():
    base = server.config.parse_properties(server.BASE_CONFIG.read_text())
    assert base["decode_input_request"] == "false" and _effective(base)[1] == []


@pytest.mark.parametrize("key", server.TRUSTABLE_KEYS)
def test_code_and_flag_settings_are_dropped_unless_trusted_by_name(key):
    props, said = _effective({key: "/somewhere"})
    assert key not in props and len(said) == 1 and f"--trust-config-key {key}" in said[0]
    props, said = _effective({key: "/somewhere"}, trusted=[key])
    assert props[key] == "/somewhere" and said == []


def test_untrusted_environment_variables_do_not_reach_torchserve(monkeypatch, tmp_path):
    monkeypatch.setenv("TS_OPEN_INFERENCE_PROTOCOL", "oip")
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Dx=y")
    monkeypatch.setenv("TS_CONFIG_FILE", "/elsewhere")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = launcher_env(tmp_path / "logs", tmp_path / "tmp")
    assert not {"TS_OPEN_INFERENCE_PROTOCOL", "JAVA_TOOL_OPTIONS", "TS_CONFIG_FILE"} & set(env)
    said = " ".join(str(w.message) for w in caught)
    assert "TS_OPEN_INFERENCE_PROTOCOL" in said and "JAVA_TOOL_OPTIONS" in said


def test_trusting_a_security_setting_is_refused(tmp_path):
    with pytest.raises(server.ServerArgumentError, match="disable_token_authorization"):
        server.start_server(tmp_path / "home", tmp_path, None, trust_config_keys=["disable_token_authorization"])
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "start", "--home", str(tmp_path / "h"), "--trust-config-key", "enable_model_api"])
    assert exit_.value.code == 2


# --------------------------------------------------------------------------------------------- real TorchServe


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A TorchServe started in a home whose model log holds an old refusal, with a hostile config and environment."""
    root = tmp_path_factory.mktemp("hostile")
    store = root / "store"
    store.mkdir()
    build_mar(store, "echo", FIXTURES / "echo_handler.py")
    home = root / "home"
    (home / "logs").mkdir(parents=True)
    # What an earlier start that refused a tampered archive left in this home's model log.
    (home / "logs" / "model_log.log").write_text(
        f"2026-01-01T00:00:00,000 [ERROR] W-9000-y2x_1.0-stderr MODEL_LOG - {REFUSAL_MARK} y2x: model.pt2: SHA-256 "
        "does not match the model card (file changed after export)\n"
    )
    plugins = root / "plugins"
    plugins.mkdir()
    config = root / "hostile.properties"
    config.write_text(
        "".join(f"{k}={v}\n" for k, v in HOSTILE.items())
        + "inference_address=http://0.0.0.0:8080\nvmargs=-Daiaas.hostile.marker=1\n"
        + f"plugins_path={plugins}\n"
    )
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.setenv("TS_DISABLE_TOKEN_AUTHORIZATION", "true")  # would switch token auth off with envvars config on
        mp.setenv("TS_ENABLE_MODEL_API", "true")
        mp.setenv("TS_OPEN_INFERENCE_PROTOCOL", "oip")
        info = server.start_server(home, store, {"echo": "echo.mar"}, free_ports=True, config=config, ready_timeout=90)
    pids = group_pids(info)
    yield info, [str(w.message) for w in caught]
    server.stop_server(home, timeout=10)
    kill_leftovers(pids)


@pytest.mark.serving
def test_an_old_refusal_in_the_same_home_does_not_block_a_good_start(hostile):
    info, _ = hostile
    assert server.server_status(info.home)["models"]["echo"][0]["workers"][0]["status"] == "READY"


@pytest.mark.serving
def test_token_auth_and_model_api_hold_against_a_hostile_config_and_environment(hostile):
    info, said = hostile
    with httpx.Client(timeout=10, trust_env=False) as http:
        r = http.post(f"{info.inference_url}/predictions/echo", json={"a": 1})
        assert r.status_code == 400 and "InvalidKeyException" in r.text
        key = server.read_keys(info.home)["management"]
        r = http.post(f"{info.management_url}/models", params={"url": "echo.mar"}, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 405
    for key in HOSTILE:
        assert any(key in s for s in said), key


@pytest.mark.serving
def test_no_jvm_flags_plugins_or_ts_variables_reach_the_java_frontend(hostile):
    info, said = hostile
    java = psutil.Process(info.pid)
    cmdline = " ".join(java.cmdline())
    assert "aiaas.hostile.marker" not in cmdline and "plugins" not in cmdline.split("-cp", 1)[1].split()[0]
    assert "TS_OPEN_INFERENCE_PROTOCOL" not in java.environ()
    assert any("vmargs" in s for s in said) and any("plugins_path" in s for s in said)
    assert any("TS_OPEN_INFERENCE_PROTOCOL" in s for s in said)
