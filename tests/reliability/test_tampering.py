"""Promise 6: a changed model file is refused at load (integrity); with a signing key on the server, an archive
that is unsigned, signed with another key, or whose card was edited with its hashes recomputed is refused
(authenticity); model files and checkpoints are never unpickled as arbitrary objects.

The server gets its key the one documented way: $AIAAS_SIGNING_KEY in the environment of `server.start` (or
`aiaas serve start`); TorchServe's workers inherit it and the handler checks the card's HMAC-SHA256 with it.
tests/integration flips a byte of model_float.pt2; here the attack is a *valid* model file swapped in.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from pathlib import Path

import psutil
import pytest
import torch

from aiaas_torch import server
from aiaas_torch.archive import package, verify_archive
from aiaas_torch.client import Client
from aiaas_torch.export import load_run, requantize
from aiaas_torch.handlers.aiaas_contract import SIGNING_KEY_ENV
from aiaas_torch.quantize import QuantConfig
from aiaas_torch.train import load_checkpoint

from rel_helpers import REPO, close, group_pids, kill_leftovers, reaping, stop_instance, workers

KEY = "reliability-signing-key-1"
OTHER_KEY = "someone-elses-key"


def _rewrite_mar(src: Path, dst: Path, replace: dict[str, bytes], rehash: bool) -> None:
    """Copy a .mar replacing members; with rehash, also fix the card's SHA-256/bytes of the replaced files."""
    with zipfile.ZipFile(src) as zin:
        members = {i.filename: (i, zin.read(i.filename)) for i in zin.infolist()}
    for name, data in replace.items():
        members[name] = (members[name][0], data)
    if rehash:
        info, raw = members["model.json"]
        card = json.loads(raw)
        for name, data in replace.items():
            card["files"][name].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        members["model.json"] = (info, (json.dumps(card, indent=2) + "\n").encode())
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info, data in members.values():
            zout.writestr(info, data)


@pytest.fixture(scope="module")
def archives(runs, tmp_path_factory) -> dict[str, Path]:
    """{case: path of lin-1.0.mar in a store of its own} for every tampering case."""
    root = tmp_path_factory.mktemp("tamper")
    other_float = (runs.other / "model_float.pt2").read_bytes()
    out = {
        "signed": package(runs.lin, "lin", "1.0", root / "signed", sign_key=KEY).path,
        "unsigned": package(runs.lin, "lin", "1.0", root / "unsigned").path,
        "other-key": package(runs.lin, "lin", "1.0", root / "other-key", sign_key=OTHER_KEY).path,
    }
    out["swapped-file"] = root / "swapped-file" / "lin-1.0.mar"
    _rewrite_mar(out["unsigned"], out["swapped-file"], {"model_float.pt2": other_float}, rehash=False)
    out["edited-card-rehashed"] = root / "edited-card-rehashed" / "lin-1.0.mar"
    _rewrite_mar(out["signed"], out["edited-card-rehashed"], {"model_float.pt2": other_float}, rehash=True)
    return out


def _start_expecting_refusal(tmp_path: Path, mar: Path) -> str:
    """Return the ServerError message of a start that must be refused; check nothing is left running."""
    home = tmp_path / "home"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with reaping(home), pytest.raises(server.ServerError) as e:
        server.start(home, mar.parent, {"lin": mar.name}, free_ports=True, ready_timeout=90)
    assert server.status(home)["running"] is False
    ours = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(ours, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], [p.cmdline() for p in alive]
    return str(e.value)


# --------------------------------------------------------------------------------------------- integrity


@pytest.mark.serving
@pytest.mark.slow
def test_a_valid_model_file_swapped_into_the_archive_is_refused_naming_the_file(archives, tmp_path, monkeypatch):
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    mar = archives["swapped-file"]
    with pytest.raises(ValueError, match=r"model_float\.pt2 does not match the SHA-256"):
        verify_archive(mar)
    message = _start_expecting_refusal(tmp_path, mar)
    assert "refusing to load model lin" in message and "model_float.pt2: SHA-256 does not match" in message


# --------------------------------------------------------------------------------------------- authenticity


@pytest.mark.serving
@pytest.mark.slow
def test_with_a_key_the_signed_archive_loads_and_every_worker_has_the_key(runs, archives, tmp_path, monkeypatch):
    monkeypatch.setenv(SIGNING_KEY_ENV, KEY)
    mar = archives["signed"]
    home = tmp_path / "home"
    info = server.start(home, mar.parent, {"lin": mar.name}, free_ports=True, ready_timeout=120)
    pids = group_pids(info)
    try:
        rows = [[1.0, -1.0, 0.5]]
        with Client(home=home, timeout=30) as c:
            assert close(c.predict("lin", {"instances": rows})["predictions"][0], float(load_run(runs.lin).forward(rows)[0][0]))
            assert c.describe("lin")[0]["customizedMetadata"]["signature"]["alg"] == "HMAC-SHA256"
        worker_pids = [pid for _, pid, _ in workers(info, "lin")]
        assert len(worker_pids) == 2
        for pid in worker_pids:  # TorchServe passes its environment (minus blacklist_env_vars) to every worker
            assert psutil.Process(pid).environ().get(SIGNING_KEY_ENV) == KEY
        assert KEY not in (home / "config.properties").read_text()  # the key stays out of files
    finally:
        stop_instance(home, info)
        kill_leftovers(pids)


@pytest.mark.serving
@pytest.mark.slow
@pytest.mark.parametrize("case, needle", [
    ("unsigned", "model card is not signed"),
    ("other-key", "signature does not match"),
    ("edited-card-rehashed", "signature does not match"),
])  # fmt: skip
def test_with_a_key_an_unsigned_or_mis_signed_archive_is_refused(archives, tmp_path, monkeypatch, case, needle):
    mar = archives[case]
    verify_archive(mar)  # every hash matches its card: only the signature can catch these
    monkeypatch.setenv(SIGNING_KEY_ENV, KEY)
    message = _start_expecting_refusal(tmp_path, mar)
    assert "refusing to load model lin" in message and needle in message, message


@pytest.mark.slow
def test_a_config_that_would_hide_the_key_from_the_workers_is_refused(archives, tmp_path, monkeypatch):
    monkeypatch.setenv(SIGNING_KEY_ENV, KEY)
    config = tmp_path / "config.properties"
    config.write_text(server.DEFAULT_CONFIG + "blacklist_env_vars=AIAAS_.*|.*SECRET.*\n")
    mar = archives["unsigned"]
    with reaping(tmp_path / "home"), pytest.raises(server.ServerError, match=r"blacklist_env_vars=.*would hide \$AIAAS_SIGNING_KEY"):
        server.start(tmp_path / "home", mar.parent, {"lin": mar.name}, free_ports=True, config=config, ready_timeout=30)
    assert server.status(tmp_path / "home")["running"] is False
    config.write_text(server.DEFAULT_CONFIG + "blacklist_env_vars=.*PROXY.*\n")  # a pattern that spares the key is fine
    props = server._effective_config(server._parse_properties(config.read_text()), server.DEFAULT_PORTS, tmp_path)
    server._check_signing_key_reaches_workers(props)


# --------------------------------------------------------------------------------------------- no unpickling


SOURCES = sorted((REPO / "aiaas_torch").rglob("*.py")) + sorted((REPO / "handlers").rglob("*.py"))


def test_no_code_path_unpickles_arbitrary_objects():
    assert len(SOURCES) >= 10
    for path in SOURCES:
        text = path.read_text()
        for forbidden in (r"weights_only\s*=\s*False", r"\bpickle\.loads?\(", r"\bdill\b", r"\bcloudpickle\b", r"yaml\.load\(",
                          r"\btorch\.jit\.load\(", r"\bmarshal\.loads?\("):  # fmt: skip
            assert not re.search(forbidden, text), f"{path.relative_to(REPO)}: {forbidden}"
        for call in re.finditer(r"\btorch\.load\(([^()]|\([^()]*\))*\)", text):
            assert re.search(r"weights_only\s*=\s*True", call.group(0)), f"{path.relative_to(REPO)}: {call.group(0)}"


class _Payload:
    """Pickles to a call of os.mkdir(marker): harmless, but proof if a loader ever runs it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_checkpoint_holding_a_pickled_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": "aiaas-checkpoint/1", "model": {}, "extra": _Payload(marker)}, path)
    with pytest.raises(ValueError, match="not a readable aiaas checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.slow
def test_requantize_refuses_a_planted_checkpoint_even_with_its_hash_in_the_card(runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs.lin, run)
    marker = tmp_path / "payload-ran"
    torch.save({"format": "aiaas-checkpoint/1", "extra": _Payload(marker)}, run / "checkpoint.pt")
    card = json.loads((run / "model.json").read_text())
    data = (run / "checkpoint.pt").read_bytes()
    card["files"]["checkpoint.pt"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (run / "model.json").write_text(json.dumps(card, indent=2))
    load_run(run)  # the card is consistent, so the run directory itself loads (it never reads the checkpoint)
    with pytest.raises(ValueError, match="not a readable aiaas checkpoint"):
        requantize(run, QuantConfig("none"), compile=False)
    assert not marker.exists()
