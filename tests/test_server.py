"""TorchServe process control against real TorchServe 0.12 instances on 127.0.0.1 (free ports, tmp homes)."""

from __future__ import annotations

import socket
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import replace
from pathlib import Path

import httpx
import psutil
import pytest

from aiaas_torch import serving as server
from aiaas_torch.serving import control
from aiaas_torch.serving.pids import inet_connections
from aiaas_torch.serving.config import base_config, effective_config, parse_properties
from aiaas_torch.serving.readiness import unbound_ports
from aiaas_torch.client import Client, StatusError, TokenError
from aiaas_torch.serving import Ports, TorchServeError, ServerInfo

FIXTURES = Path(__file__).parent / "fixtures" / "echo"
REPO = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}


# --------------------------------------------------------------------------------------------- helpers


def build_mar(store: Path, name: str, handler: Path, version: str = "1.0") -> Path:
    """Return STORE/NAME.mar: an archive built by `aiaas package` (a card listing every member's SHA-256) whose
    handler is `handler`. Start refuses archives without a card (nothing in them can be checked), so the echo
    fixtures are packaged from a tiny run directory trained here; their handlers ignore its model."""
    import tempfile

    import numpy as np

    from aiaas_torch.archive import ServingConfig, package
    from aiaas_torch.data import from_arrays
    from aiaas_torch.export import export_run
    from aiaas_torch.quantize import QuantConfig
    from aiaas_torch.train import TrainConfig, train

    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=store.parent))
    x = np.arange(1, 6, dtype=np.float64)
    result = train(from_arrays(x.reshape(-1, 1), 2 * x, ["x"], target="y"), TrainConfig(epochs=1, val_fraction=0.0, progress=False))
    run = export_run(result, work / "run", QuantConfig("none"), compile=False).run_dir
    made = package(run, name, version, work / "store", serving=ServingConfig(workers=1), handler=handler).path
    return made.replace(store / f"{name}.mar")


def _members(mar: Path) -> dict[str, bytes]:
    """Return {member name: bytes} of a zip archive."""
    with zipfile.ZipFile(mar) as z:
        return {n: z.read(n) for n in z.namelist()}


def group_pids(info: ServerInfo) -> set[int]:
    """Return the pids of the Java server, its launcher and its workers."""
    pids = {info.pid, info.pgid}
    try:
        pids |= {c.pid for c in psutil.Process(info.pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        pass
    return pids


def kill_leftovers(pids: set[int]) -> None:
    """SIGKILL whichever of these pids still run (safety net for a failing test; never by name)."""
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if any(m in " ".join(proc.cmdline()) for m in ("torchserve", "model_service_worker", "ModelServer")):
                proc.kill()
        except psutil.Error:
            pass


def gone(pid: int) -> bool:
    """Return True when pid no longer exists (zombies count as existing)."""
    return not psutil.pid_exists(pid)


# --------------------------------------------------------------------------------------------- config (no server)


def test_one_base_config_shipped_with_the_package_and_used_from_any_directory(tmp_path, monkeypatch):
    # The one file a human edits is the repository's config.properties; the package ships it through a link
    # (editable installs read it in place, wheels copy its content)...
    assert server.BASE_CONFIG == REPO / "aiaas_torch" / "serving" / "config.properties"
    assert server.BASE_CONFIG.is_symlink() and server.BASE_CONFIG.resolve() == REPO / "config.properties"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "aiaas_torch.serving" in pyproject["packages"]
    assert "config.properties" in pyproject["package-data"]["aiaas_torch.serving"]  # ...and wheels ship it
    # ...and a start without --config uses it wherever it runs, unless that directory has its own config.properties.
    monkeypatch.chdir(tmp_path)
    props, source = base_config(None)
    assert source == str(server.BASE_CONFIG) and props == parse_properties(server.BASE_CONFIG.read_text())
    # The security choices the file documents are really there.
    assert props["disable_token_authorization"] == "false" and props["enable_model_api"] == "false"
    assert all("127.0.0.1" in props[k] for k in ("inference_address", "management_address", "metrics_address"))
    (tmp_path / "config.properties").write_text("job_queue_size=7\n")
    assert base_config(None) == ({"job_queue_size": "7"}, str(tmp_path / "config.properties"))


def test_serving_does_not_import_torch():
    # `serve status` and `serve stop` must not pay for torch, and neither does checking an archive (archive.py is
    # torch-free). This loads the subpackage without running aiaas_torch/__init__.py, so only serving's own imports count.
    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('aiaas_torch'); pkg.__path__ = [sys.argv[1]]; pkg.__version__ = '0'\n"
        "sys.modules['aiaas_torch'] = pkg\n"
        "import aiaas_torch.serving, aiaas_torch.client\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(REPO / "aiaas_torch")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_effective_config_forces_loopback_and_security(tmp_path):
    base = {"inference_address": "http://0.0.0.0:80", "disable_token_authorization": "true",
            "enable_model_api": "true", "metrics_mode": "log", "load_models": "all", "job_queue_size": "7"}  # fmt: skip
    with pytest.warns(server.SecuritySettingWarning) as said:
        props = effective_config(base, Ports(1, 2, 3, 4, 5, 600), tmp_path)
    assert len(said) == 3  # inference_address, disable_token_authorization, enable_model_api
    assert props["inference_address"] == "http://127.0.0.1:1"
    assert props["management_address"] == "http://127.0.0.1:2" and props["metrics_address"] == "http://127.0.0.1:3"
    assert (props["grpc_inference_port"], props["grpc_management_port"], props["initial_worker_port"]) == ("4", "5", "600")
    assert props["disable_token_authorization"] == "false" and props["enable_model_api"] == "false"
    assert props["metrics_mode"] == "prometheus" and "load_models" not in props
    assert props["job_queue_size"] == "7"  # other base settings survive
    assert Path(props["metrics_config"]).is_absolute() and Path(props["metrics_config"]).name == "metrics.yaml"
    assert props["model_store"] == str(tmp_path)


def test_find_java_without_java_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TorchServeError, match="apt-get install openjdk-17-jre-headless"):
        server.find_java()
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(TorchServeError, match="JAVA_HOME"):
        server.find_java()


def test_stop_and_status_without_server(tmp_path):
    assert server.stop_server(tmp_path) is False
    assert server.server_status(tmp_path)["running"] is False


# --------------------------------------------------------------------------------------------- real TorchServe


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A model store with echo.mar (and broken.mar, whose handler cannot be imported)."""
    path = tmp_path_factory.mktemp("store")
    build_mar(path, "echo", FIXTURES / "echo_handler.py")
    build_mar(path, "broken", FIXTURES / "broken_handler.py")
    return path


@pytest.fixture(scope="module")
def echo(store, tmp_path_factory):
    """A TorchServe serving the echo model from its own home on free ports; stopped after the module."""
    home = tmp_path_factory.mktemp("home1")
    info = server.start_server(home=home, model_store=store, models={"echo": "echo.mar"}, free_ports=True, ready_timeout=60)
    pids = group_pids(info)
    yield info
    server.stop_server(home, timeout=10)
    kill_leftovers(pids)


@pytest.mark.serving
def test_start_records_info_and_workers_are_ready(echo):
    assert ServerInfo.from_json((echo.home / "server.json").read_text()) == echo
    assert server.load_info(echo.home) == echo
    st = server.server_status(echo.home)
    assert st["running"] is True and st["pid"] == echo.pid
    (version,) = st["models"]["echo"]
    ready = [w for w in version["workers"] if w["status"] == "READY"]
    assert len(ready) >= version["minWorkers"] == 1
    assert all(psutil.pid_exists(w["pid"]) for w in ready)
    keys = server.read_keys(echo.home)
    assert set(keys) == {"management", "inference", "api"} and all(keys.values())


@pytest.mark.serving
def test_instance_home_layout_and_config(echo, store):
    props = parse_properties((echo.home / "config.properties").read_text())
    # TorchServe loads the copies start() made in HOME/store (the checked bytes of echo.mar), not the store
    assert props["model_store"] == str(echo.home / "store") and echo.model_store == store
    assert _members(echo.home / "store" / "echo.mar") == _members(store / "echo.mar")  # re-zipped, same members
    assert Path(props["metrics_config"]).is_file()
    assert props["inference_address"] == echo.inference_url
    assert (echo.home / "key_file.json").is_file() and (echo.home / "logs" / "ts_log.log").is_file()
    assert (echo.home / "tmp" / ".model_server.pid").read_text().strip() == str(echo.pid)
    # The quiet log config is in force: nothing at DEBUG in the server log.
    assert "[DEBUG]" not in (echo.home / "logs" / "ts_log.log").read_text()


@pytest.mark.serving
def test_listens_on_loopback_only(echo):
    listening = [c.laddr for c in inet_connections(psutil.Process(echo.pid)) if c.status == psutil.CONN_LISTEN]
    ports = {int(u.rsplit(":", 1)[1]) for u in (echo.inference_url, echo.management_url, echo.metrics_url)}
    assert ports <= {a.port for a in listening}
    assert len(listening) == 5  # three HTTP APIs and two gRPC ones
    assert {a.ip for a in listening} <= LOOPBACK


@pytest.mark.serving
def test_readiness_also_requires_every_port_bound(echo):
    # Workers can be READY before gRPC binds (and fails): start() also waits for Java to hold every port.
    assert unbound_ports(echo) == []
    stray = server.free_ports(1)[0]
    assert unbound_ports(replace(echo, listen_ports=echo.listen_ports + (stray,))) == [stray]


@pytest.mark.serving
def test_predict_through_client(echo):
    with Client(home=echo.home) as client:
        assert client.predict("echo", {"a": [1, 2]}) == {"a": [1, 2]}
        assert client.predict("echo", [1.5, "x"]) == [1.5, "x"]
        assert client.predict("echo", b'{"raw": true}', version="1.0") == {"raw": True}
        assert client.ready("echo") is True
        assert client.ready("nope") is False
        (desc,) = client.describe("echo")
        assert desc["modelName"] == "echo" and desc["modelVersion"] == "1.0"
        assert "ts_inference_requests_total" in client.metrics()


@pytest.mark.serving
def test_request_without_or_with_wrong_token_is_refused(echo):
    for token in (None, "wrong"):
        with Client(inference_url=echo.inference_url, token=token, retries=0) as client:
            with pytest.raises(TokenError) as err:
                client.predict("echo", {"a": 1})
            assert err.value.status == 400 and err.value.type == "InvalidKeyException"
    # The management API is guarded the same way, with its own key.
    keys = server.read_keys(echo.home)
    r = httpx.get(f"{echo.management_url}/models", headers={"Authorization": f"Bearer {keys['inference']}"})
    assert r.status_code == 400 and r.json()["type"] == "InvalidKeyException"


@pytest.mark.serving
def test_per_request_error_from_the_handler(echo):
    with Client(home=echo.home, retries=0) as client:
        with pytest.raises(StatusError) as err:
            client.predict("echo", {"status": 422, "message": "bad row"})
    assert err.value.status == 422 and err.value.message == "bad row"


@pytest.mark.serving
def test_token_api_rotates_key_in_the_file_and_client_follows(echo):
    client = Client(home=echo.home, retries=0)
    old = client.token
    keys = server.read_keys(echo.home)
    # TorchServe 0.12: the API key rotates a key; the answer body is empty, the new key is only in key_file.json.
    r = httpx.get(f"{echo.management_url}/token", params={"type": "inference"}, headers={"Authorization": f"Bearer {keys['api']}"})
    assert r.status_code == 200 and r.text.strip() == ""
    new = server.read_keys(echo.home)["inference"]
    assert new != old
    with Client(inference_url=echo.inference_url, token=old, retries=0) as stale:
        with pytest.raises(TokenError):
            stale.predict("echo", {})
    try:
        assert client.predict("echo", {"after": "rotation"}) == {"after": "rotation"}
        assert client.token == new
    finally:
        client.close()


@pytest.mark.serving
def test_scale_and_set_default_work_with_model_api_off(echo):
    answer = server.scale(echo, "echo", 2)
    assert "scaled to 2" in answer["status"]
    (version,) = server.server_status(echo.home)["models"]["echo"]
    assert version["minWorkers"] == 2 and sum(w["status"] == "READY" for w in version["workers"]) == 2
    server.scale(echo, "echo", 1, version="1.0")
    assert server.wait_until_ready(echo, ["echo"], timeout=30)["echo"][0]["minWorkers"] == 1
    assert "1.0" in server.set_default(echo, "echo", "1.0")["status"]
    with pytest.raises(TorchServeError, match="404"):
        server.set_default(echo, "echo", "9.9")
    # Registering is what the model API guards: refused with 405.
    mk = server.read_keys(echo.home)["management"]
    r = httpx.post(f"{echo.management_url}/models", params={"url": "echo.mar"}, headers={"Authorization": f"Bearer {mk}"})
    assert r.status_code == 405


@pytest.mark.serving
def test_second_start_in_same_home_is_refused(echo, store):
    with pytest.raises(TorchServeError, match="already runs"):
        server.start_server(home=echo.home, model_store=store, models={"echo": "echo.mar"}, free_ports=True)
    assert server.server_status(echo.home)["running"] is True


@pytest.mark.serving
def test_two_instances_side_by_side_and_stop_leaves_nothing(echo, store, tmp_path):
    second = server.start_server(home=tmp_path / "h2", model_store=store, models=["echo=echo.mar"], free_ports=True, ready_timeout=60)
    pids = group_pids(second)
    try:
        assert second.pid != echo.pid and second.inference_url != echo.inference_url
        assert len(pids) >= 3  # launcher, Java, one worker
        with Client(home=second.home) as c2, Client(home=echo.home) as c1:
            assert c2.token != c1.token  # each instance has its own keys
            assert c2.predict("echo", {"who": 2}) == {"who": 2}
            assert c1.predict("echo", {"who": 1}) == {"who": 1}
        assert server.stop_server(second.home) is True
        assert all(gone(pid) for pid in pids), [p for p in pids if not gone(p)]
        assert not (second.home / "server.json").exists()
        assert server.stop_server(second.home) is False
        assert server.server_status(second.home)["running"] is False
        with Client(home=echo.home) as c1:
            assert c1.predict("echo", {"still": "up"}) == {"still": "up"}
    finally:
        kill_leftovers(pids)


def test_a_home_too_long_for_the_worker_sockets_is_refused_before_anything_starts(store, tmp_path):
    # before: TorchServe started, every worker died on bind ("AF_UNIX path too long"), and start waited out its timeout
    home = tmp_path / ("h" * (120 - len(str(tmp_path))))
    with pytest.raises(server.ServerArgumentError, match=r"too long for TorchServe's worker sockets.*at most \d+ bytes long"):
        server.start_server(home=home, model_store=store, models={"echo": "echo.mar"}, free_ports=True, ready_timeout=20)
    assert not home.exists()
    from aiaas_torch.serving.control import check_home_length

    check_home_length(tmp_path / "h" / "ok")  # a usual home passes
    edge = Path("/" + "e" * (107 - len("/tmp/.ts.sock.9999") - 1))  # sockets .ts.sock.9000 … 9999: exactly 107 bytes
    check_home_length(edge, 9000)
    with pytest.raises(server.ServerArgumentError, match=f"at most {len(str(edge)) - 1} bytes long"):
        check_home_length(edge, 39000)  # free ports: five digits
    check_home_length(home, 39000, native_io=False)  # use_native_io=false: workers talk TCP, any home will do


@pytest.mark.serving
def test_port_in_use_is_named_before_starting(store, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    free = server.free_ports(5)
    try:
        with pytest.raises(TorchServeError, match=f"port {port} .*management.* in use"):
            server.start_server(home=tmp_path / "h3", model_store=store, models={"echo": "echo.mar"},
                         ports=Ports(free[0], port, free[1], free[2], free[3], free[4]))  # fmt: skip
    finally:
        taken.close()
    assert not (tmp_path / "h3" / "server.json").exists()


@pytest.mark.serving
def test_port_taken_after_the_check_is_reported_from_torchserve_log(store, tmp_path, monkeypatch):
    # Someone grabs a port between our check and Java's bind. gRPC binds last, after the workers are READY
    # and the HTTP APIs answer; TorchServe then dies seconds later. start() must not report success.
    monkeypatch.setattr(control, "check_ports_free", lambda ports: None)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    free = server.free_ports(5)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        with pytest.raises(TorchServeError, match=f"died.*Failed to bind.*:{port}"):
            server.start_server(home=tmp_path / "h4", model_store=store, models={"echo": "echo.mar"},
                         ports=Ports(free[0], free[1], free[2], free[3], port, free[4]), ready_timeout=30)  # fmt: skip
    finally:
        taken.close()
    assert {p.pid for p in psutil.Process().children(recursive=True)} - before == set()
    assert not (tmp_path / "h4" / "server.json").exists()


@pytest.mark.serving
def test_model_that_never_loads_times_out_with_the_model_log(store, tmp_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(TorchServeError) as err:
        server.start_server(home=tmp_path / "h5", model_store=store, models={"broken": "broken.mar"},
                     free_ports=True, ready_timeout=15)  # fmt: skip
    message = str(err.value)
    assert "not ready within 15 s" in message and "model_log.log" in message
    assert "last worker error: RuntimeError: broken_handler: this model cannot load (on purpose)" in message
    # start() cleaned up after itself: no server, no worker, no server.json.
    assert {p.pid for p in psutil.Process().children(recursive=True)} - before == set()
    assert not (tmp_path / "h5" / "server.json").exists()
