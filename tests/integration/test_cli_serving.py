"""The `aiaas` command against the session's real TorchServe: as people type it, and as other clients need it."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from aiaas_torch.cli import main
from aiaas_torch.client import Client, NotFound
from aiaas_torch.serving import read_keys

pytestmark = pytest.mark.serving


def _aiaas(args: list[str], cwd=None, home_env: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m aiaas_torch.cli ARGS` in cwd with AIAAS_HOME set to home_env (unset when None)."""
    env = {k: v for k, v in os.environ.items() if k != "AIAAS_HOME"}
    if home_env is not None:
        env["AIAAS_HOME"] = home_env
    return subprocess.run([sys.executable, "-m", "aiaas_torch.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_serve_token_prints_a_token_that_a_plain_http_call_can_use(served, capsys):
    assert main(["serve", "token", "--home", str(served.home)]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and len(out.splitlines()) == 1  # nothing but the token: $(aiaas serve token) works
    token = out.strip()
    assert token == read_keys(served.home)["inference"]
    url = urlsplit(served.info.inference_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)  # what curl does, without our client
    try:
        conn.request("POST", "/predictions/y2x/1.0", body=b'{"instances": [[6]]}',
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        r = conn.getresponse()
        answer = json.loads(r.read())
    finally:
        conn.close()
    assert r.status == 200 and answer["predictions"][0] == pytest.approx(12.0, rel=1e-3)


def test_predict_takes_options_between_the_name_and_the_rows(served, capsys):
    argv = ["predict", "y2x", "--home", str(served.home), "6", "--json", "--version", "1.0", "7"]
    assert main(argv) == 0
    assert [round(p) for p in json.loads(capsys.readouterr().out)["predictions"]] == [12, 14]


def test_the_cli_finds_the_server_from_a_subdirectory_and_through_aiaas_home(served, tmp_path):
    (tmp_path / "proj" / "src").mkdir(parents=True)
    (tmp_path / "proj" / ".aiaas").symlink_to(served.home, target_is_directory=True)
    r = _aiaas(["predict", "y2x", "6", "--version", "1.0", "--json"], cwd=tmp_path / "proj" / "src")
    assert r.returncode == 0 and round(json.loads(r.stdout)["predictions"][0]) == 12, r.stderr
    r = _aiaas(["predict", "y2x", "7", "--version", "1.0", "--json"], cwd=tmp_path, home_env=str(served.home))
    assert r.returncode == 0 and round(json.loads(r.stdout)["predictions"][0]) == 14, r.stderr
    r = _aiaas(["serve", "status"], cwd=tmp_path / "proj" / "src")
    assert r.returncode == 0 and f"TorchServe pid {served.info.pid}" in r.stdout, r.stdout + r.stderr


def test_a_misspelled_model_or_version_lists_what_is_served(served, client, capsys):
    with pytest.raises(NotFound) as e:
        client.predict("y2z", {"instances": [[6]]})
    served_names = sorted({key.rsplit("-", 1)[0] for key in served.archives})  # the session's archives, "NAME-VERSION"
    assert e.value.status == 404 and e.value.message.endswith("; served models: " + ", ".join(served_names))
    with pytest.raises(NotFound) as e:
        client.predict("y2x", {"instances": [[6]]}, version="9.9")
    assert e.value.message.endswith("; y2x's versions: 1.0, 2.0")
    assert main(["predict", "y2z", "6", "--home", str(served.home)]) == 2
    assert "served models: " + ", ".join(served_names) in capsys.readouterr().err
    with Client(inference_url=served.info.inference_url, token=read_keys(served.home)["inference"]) as c:
        with pytest.raises(NotFound) as e:  # no management access: TorchServe's own message, nothing guessed
            c.predict("y2z", {"instances": [[6]]})
    assert "served models" not in e.value.message


def test_starting_a_second_server_in_the_same_home_names_the_stop_command(served, capsys):
    argv = ["serve", "start", "--home", str(served.home), "--model-store", str(served.store), "--free-ports"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"already runs from {served.home}" in err and f"stop it first with `aiaas serve stop --home {served.home}`" in err
