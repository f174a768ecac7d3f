"""Issue 23 (5, 8b, 8d, 8a): the home is 0700 before TorchServe starts, homes of others are refused, --models names are
checked, and the signature policy is the server's. No TorchServe is started: the launch itself is intercepted.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from aiaas_torch import serving as server
from aiaas_torch.cli import main
from aiaas_torch.serving import control
from aiaas_torch.serving.home import deploy_key, find_home, key_fingerprint, write_policy

NOBODY = 65534


class Launched(Exception):
    """Raised by the stand-in for Popen: TorchServe would have started here."""


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture()
def launch(monkeypatch):
    """Replace TorchServe's launch with a probe; return the list of {path: mode} seen at each launch."""
    seen: list[dict] = []

    def probe(cmd, cwd, **kw):
        home = Path(cwd)
        paths = [home, *home.parents][:3] + [p for p in home.iterdir() if p.is_dir()]
        seen.append({str(p): _mode(p) for p in paths})
        raise Launched()

    monkeypatch.setattr(control.subprocess, "Popen", probe)
    return seen


@pytest.fixture()
def no_umask():
    """Run with umask 0, so that nothing is 0700 by the umask's grace."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_the_home_and_every_folder_start_creates_are_0700_when_torchserve_is_launched(tmp_path, launch, no_umask):
    store = tmp_path / "store"
    store.mkdir()
    home = tmp_path / "a" / "b" / "home"
    with pytest.raises(Launched):
        server.start_server(home, store, None, free_ports=True)
    (modes,) = launch
    created = {str(p) for p in (home, home.parent, home.parent.parent)}
    assert created <= set(modes) and {str(home / d) for d in ("store", "tmp", "logs", "workflows")} <= set(modes)
    assert {p: oct(m) for p, m in modes.items() if m != 0o700} == {}


def test_an_existing_home_readable_by_others_is_tightened_before_the_launch(tmp_path, launch):
    (tmp_path / "store").mkdir()
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o755)
    with pytest.raises(Launched):
        server.start_server(home, tmp_path / "store", None, free_ports=True)
    assert launch[0][str(home)] == 0o700


@pytest.mark.parametrize("how", ["another owner", "world-writable"])
def test_an_existing_home_of_another_user_or_writable_by_others_is_refused_before_anything_starts(tmp_path, launch, how, capsys):
    (tmp_path / "store").mkdir()
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY) if how == "another owner" else os.chmod(home, 0o777)
    code = main(["serve", "start", "--home", str(home), "--model-store", str(tmp_path / "store"), "--free-ports"])
    err = capsys.readouterr().err
    assert code == 2 and not launch, (code, err)
    assert str(home) in err and ("uid 65534" in err if how == "another owner" else "mode 0777" in err), err


@pytest.mark.parametrize("how", ["another owner", "world-writable"])
def test_find_home_refuses_an_ancestor_home_of_another_user_or_writable_by_others(tmp_path, monkeypatch, how, capsys):
    monkeypatch.delenv("AIAAS_HOME", raising=False)
    planted = tmp_path / ".aiaas"
    (planted / "logs").mkdir(parents=True)
    os.chmod(planted, 0o700)
    os.chown(planted, NOBODY, NOBODY) if how == "another owner" else os.chmod(planted, 0o777)
    below = tmp_path / "project" / "src"
    below.mkdir(parents=True)
    with pytest.raises(server.ServerArgumentError) as e:
        find_home(cwd=below)
    said = str(e.value)
    assert str(planted) in said and ("uid 65534" in said if how == "another owner" else "mode 0777" in said), said
    monkeypatch.chdir(below)
    assert main(["serve", "status"]) == 2
    assert str(planted) in capsys.readouterr().err


def test_find_home_still_finds_a_home_of_ours(tmp_path, monkeypatch):
    monkeypatch.delenv("AIAAS_HOME", raising=False)
    (tmp_path / ".aiaas").mkdir(mode=0o700)
    (tmp_path / "sub").mkdir()
    assert find_home(cwd=tmp_path / "sub").path == tmp_path / ".aiaas"


@pytest.mark.parametrize(("arg", "named"), [
    ("a,b=x.mar", "model name 'a,b'"),  # TorchServe would split it into two models
    ("bad name=x.mar", "model name 'bad name'"),
    ("v1.2=x.mar", "model name 'v1.2'"),
    ("m=x,y.mar", "'x,y.mar'"),
    ("m={store}/sub/k=v.mar", "an '=' in the file name"),
])  # fmt: skip
def test_a_bad_models_name_or_archive_exits_2_naming_it_before_anything_starts(tmp_path, launch, capsys, arg, named):
    store = tmp_path / "store"
    (store / "sub").mkdir(parents=True)
    for junk in ("x.mar", "x,y.mar", "sub/k=v.mar"):
        (store / junk).write_bytes(b"not an archive")
    arg = arg.format(store=store)
    code = main(["serve", "start", "--home", str(tmp_path / "home"), "--model-store", str(store), "--models", arg])
    err = capsys.readouterr().err
    assert code == 2 and named in err and "not a readable" not in err and not launch, (code, err)
    assert len(err.strip().splitlines()) == 1, err


def test_the_signature_policy_is_recorded_by_start_and_decides_deploys_whatever_the_shell_has(tmp_path):
    signed, plain = tmp_path / "signed", tmp_path / "plain"
    for home, key in ((signed, "server-key"), (plain, None)):
        home.mkdir()
        path = write_policy(home, key)
        assert _mode(path) == 0o600 and "server-key" not in path.read_text()
    assert json.loads((signed / "signing.json").read_text()) == {"signatures_required": True,
                                                                 "key_fingerprint": key_fingerprint("server-key")}
    with pytest.raises(server.ServerArgumentError, match="started with a signing key"):
        deploy_key(signed, None)  # a shell without the key cannot deploy unchecked archives
    with pytest.raises(server.ServerArgumentError, match="another key"):
        deploy_key(signed, "shell-key")
    assert deploy_key(signed, "server-key") == "server-key"
    assert deploy_key(plain, "shell-key") is None  # the server loads unsigned archives: the shell's key is not asked
    with pytest.raises(server.ServerArgumentError, match="restart the server"):
        deploy_key(tmp_path, "server-key")  # no recorded policy


def test_an_archive_with_no_card_is_refused_with_or_without_a_key(tmp_path, launch, capsys, monkeypatch):
    """Issue 23, 8e: a .mar not built by `aiaas package` lists no member hashes, so nothing in it can be checked."""
    import zipfile

    store = tmp_path / "store"
    store.mkdir()
    with zipfile.ZipFile(store / "foreign.mar", "w") as mar:
        mar.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": "foreign", "handler": "h.py"}}))
        mar.writestr("h.py", "import os\n\n\ndef handle(data, context):\n    return data\n")
    for key in (None, "a key"):
        monkeypatch.delenv("AIAAS_SIGNING_KEY", raising=False) if key is None else monkeypatch.setenv("AIAAS_SIGNING_KEY", key)
        code = main(["serve", "start", "--home", str(tmp_path / "home"), "--model-store", str(store), "--models", "f=foreign.mar"])
        err = capsys.readouterr().err
        assert code == 2 and str(store / "foreign.mar") in err and "model.json" in err and not launch, (key, code, err)
        assert not (tmp_path / "home" / "store").exists()  # no copy left behind
