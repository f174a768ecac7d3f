"""Promise 6: archives are checked by the installed package before TorchServe loads them, never by code inside them.

`server.start` (and `aiaas serve start`) checks every archive it is about to load with archive.verify_archive:
the card must list every other member with a matching SHA-256 (integrity), and with $AIAAS_SIGNING_KEY set the
card's HMAC-SHA256 must match (authenticity; it covers every member, handler code and model-config.yaml included).
A refused archive stops the start before TorchServe is launched, naming the archive and the member; TorchServe
then loads private copies written from the checked bytes. The key never reaches TorchServe or its workers.
Model files and checkpoints are never unpickled as arbitrary objects.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import struct
import zipfile
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch

from aiaas_torch import archive
from aiaas_torch import serving as server
from aiaas_torch.serving import control
from aiaas_torch.serving.config import parse_properties
from aiaas_torch.archive import SIGNING_KEY_ENV, package, verify_archive
from aiaas_torch.cli import main
from aiaas_torch.client import Client
from aiaas_torch.export import requantize
from aiaas_torch.runs import load_run
from aiaas_torch.quantize import QuantConfig
from aiaas_torch.train import load_checkpoint

from rel_helpers import FIXTURES, REPO, close, group_pids, kill_leftovers, reaping, stop_instance, workers

KEY = "reliability-signing-key-1"
OTHER_KEY = "someone-elses-key"
PROBE_HANDLER = FIXTURES / "env_probe_handler.py"
EVIL_HANDLER = b"""class EvilHandler:
    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        return ['{"predictions": ["EVIL"]}'] * len(data)
"""


def _members(mar: Path) -> dict[str, bytes]:
    """Return {name: bytes} of every member of a .mar, in archive order."""
    with zipfile.ZipFile(mar) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _write_mar(dst: Path, members: dict[str, bytes]) -> Path:
    """Write members as a .mar (a plain zip, as anyone could make one) and return its path."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return dst


def _rehash(members: dict[str, bytes], names) -> None:
    """Fix the card's SHA-256 and size of the named members, as an attacker without the key would."""
    card = json.loads(members["model.json"])
    for n in names:
        card["files"].setdefault(n, {}).update(sha256=hashlib.sha256(members[n]).hexdigest(), bytes=len(members[n]))
    members["model.json"] = (json.dumps(card, indent=2) + "\n").encode()


def _hide_member(src: Path, dst: Path, name: str, data: bytes) -> Path:
    """Copy a .mar with one more member that only a front-to-back reader sees: its local header and data sit after
    the last member, and the central directory (which zipfile reads) does not list it. TorchServe unpacks with
    Java's ZipInputStream, which reads local headers front to back, so it would unpack this member, last."""
    raw = src.read_bytes()
    eocd = raw.rindex(b"PK\x05\x06")
    (offset_cd,) = struct.unpack("<I", raw[eocd + 16 : eocd + 20])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    local = buf.getvalue()[: buf.getvalue().index(b"PK\x01\x02")]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(raw[:offset_cd] + local + raw[offset_cd : eocd + 16] + struct.pack("<I", offset_cd + len(local)) + raw[eocd + 20 :])
    return dst


def _edited_config(members: dict[str, bytes]) -> None:
    """Raise max_rows in model-config.yaml (a setting the worker obeys) without touching the card."""
    text = members["model-config.yaml"].decode()
    assert "max_rows: 10000" in text
    members["model-config.yaml"] = text.replace("max_rows: 10000", "max_rows: 100000000").encode()


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

    def derive(case: str, base: str, edit) -> None:
        members = _members(out[base])
        edit(members)
        out[case] = _write_mar(root / case / "lin-1.0.mar", members)

    derive("swapped-file", "unsigned", lambda m: m.update({"model_float.pt2": other_float}))
    derive("handler-replaced", "signed", lambda m: m.update({"tabular_handler.py": EVIL_HANDLER}))
    derive("handler-replaced-card-rehashed", "signed",
           lambda m: (m.update({"tabular_handler.py": EVIL_HANDLER}), _rehash(m, ["tabular_handler.py"])))
    derive("model-replaced-card-rehashed", "signed", lambda m: (m.update({"model_float.pt2": other_float}), _rehash(m, ["model_float.pt2"])))
    derive("contract-replaced", "signed", lambda m: m.update({"aiaas_contract.py": b"raise SystemExit\n"}))
    derive("config-edited", "signed", _edited_config)
    derive("manifest-edited", "signed", lambda m: m.update({"MAR-INF/MANIFEST.json": m["MAR-INF/MANIFEST.json"].replace(b'"lin"', b'"evil"')}))
    derive("extra-member", "signed", lambda m: m.update({"sitecustomize.py": EVIL_HANDLER}))
    derive("missing-member", "signed", lambda m: m.pop("aiaas_contract.py"))
    derive("no-card", "signed", lambda m: m.pop("model.json"))
    derive("dotdot-member", "signed", lambda m: m.update({"../evil.py": EVIL_HANDLER}))
    derive("absolute-member", "signed", lambda m: m.update({"/tmp/evil.py": EVIL_HANDLER}))
    derive("backslash-member", "signed", lambda m: m.update({"sub\\evil.py": EVIL_HANDLER}))
    out["hidden-member"] = _hide_member(out["signed"], root / "hidden-member" / "lin-1.0.mar", "tabular_handler.py", EVIL_HANDLER)
    return out


def _forbid_launch(monkeypatch) -> None:
    """Make any launch of TorchServe fail the test: the refusals here must all come before it."""
    def no_launch(*args, **kwargs):
        raise AssertionError("TorchServe was launched for an archive that must be refused")

    monkeypatch.setattr(control.subprocess, "Popen", no_launch)


# --------------------------------------------------------------------------------------------- refusals


@pytest.mark.slow
@pytest.mark.parametrize("key, case, member, needle", [
    # without a key (integrity): every member is still checked against the card
    (None, "swapped-file", "model_float.pt2", "SHA-256 does not match the card"),
    (None, "handler-replaced", "tabular_handler.py", "SHA-256 does not match the card"),
    (None, "extra-member", "sitecustomize.py", "not listed in the card"),
    (None, "dotdot-member", "'../evil.py'", "'..'"),
    (None, "no-card", "model.json", "only archives built by `aiaas package` load"),  # nothing to check it against
    # with a key (authenticity)
    (KEY, "handler-replaced", "tabular_handler.py", "SHA-256 does not match the card"),
    (KEY, "contract-replaced", "aiaas_contract.py", "SHA-256 does not match the card"),
    (KEY, "config-edited", "model-config.yaml", "SHA-256 does not match the card"),
    (KEY, "manifest-edited", "MAR-INF/MANIFEST.json", "SHA-256 does not match the card"),
    (KEY, "extra-member", "sitecustomize.py", "not listed in the card"),
    (KEY, "missing-member", "aiaas_contract.py", "missing from the archive"),
    (KEY, "handler-replaced-card-rehashed", "model.json", "signature does not match"),
    (KEY, "model-replaced-card-rehashed", "model.json", "signature does not match"),
    (KEY, "unsigned", "model.json", "not signed"),
    (KEY, "other-key", "model.json", "signature does not match"),
    (KEY, "no-card", "model.json", "only archives built by `aiaas package` load"),
    (KEY, "dotdot-member", "'../evil.py'", "'..'"),
    (KEY, "absolute-member", "'/tmp/evil.py'", "absolute path"),
    (KEY, "backslash-member", "'sub\\\\evil.py'", "backslash"),
])  # fmt: skip
def test_a_tampered_archive_is_refused_before_torchserve_starts_naming_the_member(archives, tmp_path, monkeypatch, key, case, member, needle):
    if key is None:
        monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
        verify_archive(archives["unsigned"])  # an intact unsigned archive passes without a key
    else:
        monkeypatch.setenv(SIGNING_KEY_ENV, key)
    _forbid_launch(monkeypatch)
    mar, home = archives[case], tmp_path / "home"
    with pytest.raises(server.ServerArgumentError) as e:
        server.start_server(home, mar.parent, {"lin": mar.name}, free_ports=True, ready_timeout=30)
    assert f"{mar}: {member}: " in str(e.value) and needle in str(e.value), str(e.value)
    assert not (home / "server.json").exists() and not (home / "store").exists()


@pytest.mark.slow
def test_serve_start_with_a_key_exits_2_naming_the_archive_and_the_member(archives, tmp_path, monkeypatch, capsys):
    _forbid_launch(monkeypatch)
    monkeypatch.setenv(SIGNING_KEY_ENV, KEY)
    mar = archives["handler-replaced"]
    code = main(["serve", "start", "--home", str(tmp_path / "home"), "--model-store", str(mar.parent),
                 "--models", f"lin={mar.name}", "--free-ports"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(mar) in err and "tabular_handler.py: SHA-256 does not match the card" in err and "Traceback" not in err


@pytest.mark.slow
def test_load_models_all_checks_every_archive_in_the_store(runs, archives, tmp_path, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    (store / "lin-1.0.mar").write_bytes(archives["signed"].read_bytes())
    (store / "zz-1.0.mar").write_bytes(archives["config-edited"].read_bytes())
    monkeypatch.setenv(SIGNING_KEY_ENV, KEY)
    _forbid_launch(monkeypatch)
    with pytest.raises(server.ServerArgumentError, match=re.escape(f"{store / 'zz-1.0.mar'}: model-config.yaml: SHA-256 does not match")):
        server.start_server(tmp_path / "home", store, None, free_ports=True, ready_timeout=30)
    (store / "zz-1.0.mar").unlink()
    (store / "exploded").mkdir()  # TorchServe would load a folder as a model, unchecked
    with pytest.raises(server.ServerArgumentError, match=r"exploded: TorchServe would load this as a model"):
        server.start_server(tmp_path / "home", store, None, free_ports=True, ready_timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("file, needle", [
    ("file:///tmp/lin-1.0.mar", "a URL cannot be checked"), ("/etc/passwd.mar", "no such file"),
    ("../nowhere/lin-1.0.mar", "no such file"), ("..", "not found in the model store"),
])  # fmt: skip
def test_models_name_an_archive_in_the_store_or_a_path_to_one_never_a_url(archives, tmp_path, monkeypatch, file, needle):
    _forbid_launch(monkeypatch)
    with pytest.raises(server.ServerArgumentError, match=needle):
        server.start_server(tmp_path / "home", archives["unsigned"].parent, {"lin": file}, free_ports=True, ready_timeout=30)


@pytest.mark.slow
def test_an_archive_given_by_path_is_checked_like_one_in_the_store(archives, tmp_path, monkeypatch):
    _forbid_launch(monkeypatch)
    monkeypatch.setenv(SIGNING_KEY_ENV, KEY)
    mar, home = archives["handler-replaced"], tmp_path / "home"
    with pytest.raises(server.ServerArgumentError) as e:  # the store holds nothing: the path alone names the archive
        server.start_server(home, tmp_path / "no-store", {"lin": str(mar)}, free_ports=True, ready_timeout=30)
    assert f"{mar}: tabular_handler.py: SHA-256 does not match the card" in str(e.value), str(e.value)
    assert not (home / "server.json").exists() and not (home / "store").exists()


@pytest.mark.slow
def test_the_card_of_an_archive_lists_every_other_member_with_its_sha256(archives):
    members = _members(archives["signed"])
    card = json.loads(members.pop("model.json"))
    assert set(card["files"]) == set(members)
    assert {"tabular_handler.py", "aiaas_contract.py", "model-config.yaml", "MAR-INF/MANIFEST.json", "model_float.pt2"} <= set(members)
    for name, data in members.items():
        assert card["files"][name]["sha256"] == hashlib.sha256(data).hexdigest(), name
        assert card["files"][name]["bytes"] == len(data), name
    assert card["files"]["tabular_handler.py"]["role"] == "handler" and card["files"]["model-config.yaml"]["role"] == "serving-config"


@pytest.mark.slow
def test_a_hidden_member_only_torchserve_would_see_never_reaches_it(archives, tmp_path):
    mar = archives["hidden-member"]
    assert EVIL_HANDLER in mar.read_bytes()  # stored in the clear, after the real members
    card = verify_archive(mar, KEY, copy_to=tmp_path / "copy.mar")  # zipfile's view: intact and signed
    assert card["signature"]["alg"] == "HMAC-SHA256"
    copy = (tmp_path / "copy.mar").read_bytes()
    assert EVIL_HANDLER not in copy
    assert _members(tmp_path / "copy.mar") == _members(archives["signed"])


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["../model_float.pt2", "/abs/model_float.pt2", "sub/model_float.pt2", "sub\\model_float.pt2"])
def test_a_card_naming_a_file_outside_its_directory_is_refused_at_package_and_at_load(runs, tmp_path, bad):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs.lin, run)
    target = Path(bad) if bad.startswith("/") else run / bad
    if not bad.startswith("/"):  # make the named file exist, with the right hash: only its name is wrong
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run / "model_float.pt2", target)
    card = json.loads((run / "model.json").read_text())
    card["files"][bad] = dict(card["files"].pop("model_float.pt2"))
    (run / "model.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=re.escape(repr(bad)) + r": file name"):
        package(run, "lin", "1.0", tmp_path / "store")
    assert not list((tmp_path / "store").glob("*.mar"))
    with pytest.raises(ValueError, match=re.escape(repr(bad)) + r": file name"):
        load_run(run)


@pytest.mark.slow
def test_a_worker_needs_no_key_and_still_refuses_a_damaged_model_file(archives, tmp_path, monkeypatch):
    # What a plain `torchserve --start` keeps: the handler checks the model programs' SHA-256 (damage), no signature.
    from aiaas_torch.handlers.integrity import REFUSAL_MARK
    from aiaas_torch.handlers.tabular_handler import TabularHandler

    model_dir = tmp_path / "model"
    with zipfile.ZipFile(archives["unsigned"]) as zf:
        zf.extractall(model_dir)
    context = SimpleNamespace(system_properties={"model_dir": str(model_dir), "gpu_id": None}, model_name="lin",
                              manifest=json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text()), model_yaml_config={})  # fmt: skip
    monkeypatch.setenv(SIGNING_KEY_ENV, KEY)
    threads = torch.get_num_threads()  # initialize sets the worker's thread count
    try:
        handler = TabularHandler()
        handler.initialize(context)
        assert handler.initialized
        damaged = bytearray((model_dir / "model_float.pt2").read_bytes())
        damaged[len(damaged) // 2] ^= 0x01
        (model_dir / "model_float.pt2").write_bytes(bytes(damaged))
        with pytest.raises(RuntimeError, match=re.escape(f"{REFUSAL_MARK} lin: model_float.pt2: SHA-256 does not match")):
            TabularHandler().initialize(context)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.serving
@pytest.mark.slow
def test_with_a_key_signed_archives_serve_from_checked_copies_and_no_worker_can_read_the_key(runs, archives, tmp_path, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    lin = _hide_member(archives["signed"], store / "lin-1.0.mar", "tabular_handler.py", EVIL_HANDLER)
    probe = package(runs.lin, "probe", "1.0", store, handler=PROBE_HANDLER, sign_key=KEY,
                    serving=archive.ServingConfig(workers=1)).path  # fmt: skip
    real_verify = archive.verify_archive

    def verify_then_swap(path, key=None, copy_to=None):
        """Check as usual, then swap the store's file, as someone who can write to the store could."""
        card = real_verify(path, key, copy_to)
        if Path(path).name == lin.name:
            Path(path).write_bytes(archives["handler-replaced"].read_bytes())
        return card

    monkeypatch.setattr(archive, "verify_archive", verify_then_swap)
    monkeypatch.setenv(SIGNING_KEY_ENV, KEY)
    home = tmp_path / "home"
    with reaping(home):
        info = server.start_server(home, store, {"lin": lin.name, "probe": probe.name}, free_ports=True, ready_timeout=120)
        pids = group_pids(info)
        try:
            rows = [[1.0, -1.0, 0.5]]
            want = float(load_run(runs.lin).forward(rows)[0][0])
            with Client(home=home, request_timeout=30) as c:
                answer = c.predict("probe", {"instances": rows})
                assert answer["key_in_worker_env"] is False and answer["key_in_frontend_env"] is False, answer
                assert close(answer["predictions"][0], want)
                # neither the hidden member nor the file swapped in after the check was loaded
                assert close(c.predict("lin", {"instances": rows})["predictions"][0], want)
                assert c.describe("lin")[0]["customizedMetadata"]["signature"]["alg"] == "HMAC-SHA256"
            assert len(workers(info, "lin")) == 2
            for pid in [pid for _, pid, _ in workers(info, "lin")] + [info.pid]:
                assert SIGNING_KEY_ENV not in psutil.Process(pid).environ()
            props = parse_properties((home / "config.properties").read_text())
            assert props["model_store"] == str(home / "store") and KEY not in (home / "config.properties").read_text()
            assert stat.S_IMODE((home / "store").stat().st_mode) == 0o700 and stat.S_IMODE((home / "tmp").stat().st_mode) == 0o700
        finally:
            stop_instance(home, info)
            kill_leftovers(pids)


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
