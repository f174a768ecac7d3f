"""Build and verify the TorchServe .mar archive of a run directory, reproducibly and atomically.

torch-model-archiver (its Python API, `archive_format="no-archive"`) lays the files out in a private staging
directory; we then zip them deterministically (sorted names, fixed timestamps and modes, `createdOn` from the
card) and `os.replace` the result into the model store as NAME-VERSION.mar, so packaging the same run twice gives
byte-identical archives and no half-written archive is ever visible.

The card inside the archive (model.json) is written last, after the archiver has laid the other files out, so it
lists the SHA-256 of every other member (manifest, handler code, model-config.yaml, model programs); a signed
card's HMAC-SHA256 therefore covers all of them. `verify_archive` is the one check of an archive, run here in the
installed package (by `package` and by `serving.start` before TorchServe loads anything), never by archive code.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import hmac
import json
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import handlers as _handlers_pkg
from .errors import InputError, check_int
from .card import CARD, is_generation, is_text, read_card
from .handlers import integrity

HANDLER_DIR = Path(_handlers_pkg.__file__).parent
HANDLER_FILE = HANDLER_DIR / "tabular_handler.py"
CONTRACT_FILE = HANDLER_DIR / "aiaas_contract.py"
PROGRAMS_FILE = HANDLER_DIR / "programs.py"
INTEGRITY_FILE = HANDLER_DIR / "integrity.py"
PROTOCOLS_FILE = HANDLER_DIR / "protocols.py"
BATCH_CHECKS_FILE = HANDLER_DIR / "batch_checks.py"
SHIPPED_CODE = (CONTRACT_FILE, HANDLER_DIR / "contract_common.py", HANDLER_DIR / "tensor_contract.py", PROGRAMS_FILE,
                HANDLER_DIR / "pt2_check.py", INTEGRITY_FILE, PROTOCOLS_FILE, BATCH_CHECKS_FILE, HANDLER_DIR / "json_body.py",
                HANDLER_DIR / "plain_rows.py", HANDLER_DIR / "tabular_rows.py")  # beside the handler in every archive (fmt: skip)
TEXT_HANDLER_FILE = HANDLER_DIR / "text_handler.py"  # the handler of text cards (aiaas import of a Hugging Face directory)
TEXT_CODE = (HANDLER_DIR / "text_contract.py", HANDLER_DIR / "openai_api.py")  # shipped beside it, in text archives only
GENERATION_HANDLER_FILE = HANDLER_DIR / "generation_handler.py"  # the handler of generation cards (causal LMs)
GENERATION_CODE = tuple(HANDLER_DIR / f for f in ("decoder_weights.py", "decoders.py", "generation.py", "chat_template.py",
                                                  "openai_api.py", "contract_common.py", "json_body.py", "integrity.py",
                                                  "int8_matmul.py"))
GENERATION_ROLES = {"weights", "config", "tokenizer", "template"}  # the model files a generation worker reads
METRICS_CONFIG = HANDLER_DIR / "metrics.yaml"
MODEL_CONFIG = "model-config.yaml"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.]*$")
DEVICES = ("auto", "cpu", "gpu")
SERVING_ROLES = {"cpu-compiled", "float-program", "tokenizer"}
SIGNING_KEY_ENV = "AIAAS_SIGNING_KEY"  # HMAC key: read by `package --sign` and `serve start`, never by a worker
SIGNATURE_ALG = "HMAC-SHA256"


class ArchiveError(InputError):
    """An archive that fails verification; `member` is the member at fault (None: the archive as a whole)."""

    def __init__(self, path, member: str | None, problem: str):
        self.path, self.member, self.problem = Path(path), member, problem
        super().__init__(f"{path}: " + (f"{member}: " if member is not None else "") + problem)


class ForeignArchiveError(ArchiveError):
    """A readable .mar without a model card: not built by `aiaas package`, so nothing in it can be checked."""


@dataclass
class ServingConfig:
    """TorchServe settings written into the archive's model-config.yaml."""

    workers: int = 2
    batch_size: int = 16
    max_batch_delay_ms: int = 1
    response_timeout_s: int = 30
    threads: int = 1  # torch threads per worker
    max_rows: int | None = None  # per request; None: the card's limit

    @classmethod
    def profile(cls, name: str) -> "ServingConfig":
        """Return the settings of a named profile: "throughput" (batching) or "latency" (batch 1)."""
        if name == "throughput":
            return cls()
        if name == "latency":
            return cls(batch_size=1, max_batch_delay_ms=0)
        raise InputError(f"profile: {name!r} is not one of throughput, latency")

    def validate(self) -> "ServingConfig":
        """Return self after checking every field, raising InputError naming the bad one."""
        for name in ("workers", "batch_size", "response_timeout_s", "threads"):
            check_int(name, getattr(self, name), 1)
        check_int("max_batch_delay_ms", self.max_batch_delay_ms, 0)
        if self.max_batch_delay_ms == 0 and self.batch_size > 1:
            # measured: TorchServe 0.12 reads maxBatchDelay 0 as unset and waits its default 100 ms per batch
            raise InputError("max_batch_delay_ms: 0 with batch_size > 1 makes TorchServe 0.12 wait 100 ms per batch; use ≥ 1")
        if self.max_rows is not None:
            check_int("max_rows", self.max_rows, 1)
        return self


@dataclass
class PackageResult:
    """The archive written: its path, model name and version, SHA-256, and the files it holds."""

    path: Path
    name: str
    version: str
    sha256: str
    files: list[str]


def archive_name(name: str, version: str) -> str:
    """Return the archive file name NAME-VERSION.mar (the archiver's NAME.mar would let v2 overwrite v1)."""
    return f"{name}-{version}.mar"


def _model_config(serving: ServingConfig, device: str, max_rows: int) -> dict:
    """Return the model-config.yaml content; deviceType is left unset for "auto" so TorchServe decides."""
    cfg = {
        "minWorkers": serving.workers,
        "maxWorkers": serving.workers,
        "batchSize": serving.batch_size,
        "maxBatchDelay": serving.max_batch_delay_ms,
        "responseTimeout": serving.response_timeout_s,
        "handler": {"max_rows": serving.max_rows or max_rows, "threads": serving.threads},
    }
    if device != "auto":
        cfg["deviceType"] = device
    return cfg


def _generation_config(serving: ServingConfig, device: str, card: dict) -> dict:
    """Return the model-config.yaml of a generation card: one worker, TorchServe's continuous batching.

    One `handle` call is one engine step over the running sequences (handlers/generation_handler.py). batchSize bounds
    the requests the worker sees at once: the engine's slots, its waiting queue (max_queue), and as many again, so
    that a request past the queue reaches the handler and gets its 429 with Retry-After; requests past batchSize wait
    in TorchServe's own queue (jobQueueSize), which answers 503 when full. responseTimeout bounds one step.
    """
    gen = card.get("generation", {})
    slots, queue = int(gen.get("slots", 16)), int(gen.get("max_queue", 64))
    cfg = {
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": 2 * (slots + queue),
        "maxBatchDelay": max(1, serving.max_batch_delay_ms),
        "responseTimeout": serving.response_timeout_s,
        "continuousBatching": True,
        "jobQueueSize": 4 * (slots + queue),
        "handler": {"threads": serving.threads, "slots": slots, "max_queue": queue},
    }
    if device != "auto":
        cfg["deviceType"] = device
    return cfg


def package(
    run_dir: str | os.PathLike,
    name: str,
    version: str = "1.0",
    model_store: str | os.PathLike = "model_store",
    device: str = "auto",
    serving: ServingConfig | None = None,
    sign_key: str | None = None,
    handler: str | os.PathLike | None = None,
) -> PackageResult:
    """Build MODEL_STORE/NAME-VERSION.mar from a run directory and verify it; returns a PackageResult.

    handler: the TorchServe handler file to run (default: ours); ours is shipped beside it either way, so a
    handler that wraps ``tabular_handler.TabularHandler`` (as the reliability tests' fault injector does) can import it.
    """
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InputError(f"name: {name!r} must start with a letter or digit and hold only letters, digits and '_'")
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise InputError(f"version: {version!r} must hold only letters, digits, '.' and '_'")
    if device not in DEVICES:
        raise InputError(f"device: {device!r} is not one of {DEVICES}")
    serving = (serving or ServingConfig()).validate()
    run_dir = Path(run_dir)
    card = read_card(run_dir)
    generation = is_generation(card)
    if generation:
        ours, code, roles = GENERATION_HANDLER_FILE, GENERATION_CODE, GENERATION_ROLES
    else:
        ours, code = (TEXT_HANDLER_FILE, SHIPPED_CODE + TEXT_CODE) if is_text(card) else (HANDLER_FILE, SHIPPED_CODE)
        roles = SERVING_ROLES
    handler_file = Path(handler).resolve() if handler is not None else ours
    custom_handler = handler_file != ours.resolve()
    if not handler_file.is_file():
        raise InputError(f"handler: {handler_file} is not a file")
    if custom_handler and handler_file.name in (ours.name, *(f.name for f in code), CARD, MODEL_CONFIG):
        raise InputError(f"handler: {handler_file.name!r} would clash with a file the archive already ships")
    problems = integrity.verify_files(card, run_dir, roles=roles)
    if problems:
        raise InputError(f"{run_dir}: " + "; ".join(problems))
    model_files = {n: m for n, m in card["files"].items() if m.get("role") in roles}
    shipped = {CARD, MODEL_CONFIG, integrity.MANIFEST, ours.name, *(f.name for f in code), handler_file.name}
    for n in model_files:
        if n in shipped:
            raise InputError(f"{run_dir / CARD}: model file {n!r} would clash with a file the archive already ships")
    store = Path(model_store)
    store.mkdir(parents=True, exist_ok=True)

    card = dict(card)
    model_config = (_generation_config(serving, device, card) if generation
                    else _model_config(serving, device, card["input"]["max_rows"]))
    card["serving"] = {"name": name, "version": version, "device": device, **model_config}

    with tempfile.TemporaryDirectory(prefix=".aiaas-package-", dir=store) as work:
        work = Path(work)
        inputs = work / "inputs"
        inputs.mkdir()
        (inputs / MODEL_CONFIG).write_text(yaml.safe_dump(model_config, sort_keys=True))
        for f in code:
            shutil.copy2(f, inputs / f.name)
        extra = [inputs / f.name for f in code] + [run_dir / n for n in sorted(model_files)]
        if custom_handler:
            extra.append(ours)
        laid_out = _run_archiver(name, version, inputs / MODEL_CONFIG, extra, work, handler_file)
        _fix_manifest(laid_out, card["created"])
        card["files"] = _member_entries(laid_out, model_files, handler_file.name)
        if sign_key:
            card["signature"] = {"alg": SIGNATURE_ALG, "value": card_digest(card, sign_key)}
        (laid_out / CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        final = store / archive_name(name, version)
        tmp = work / (final.name + ".partial")
        files = _deterministic_zip(laid_out, tmp, card["created"])
        verify_archive(tmp, sign_key)
        os.replace(tmp, final)
    return PackageResult(final, name, version, integrity.sha256_file(final), files)


def _member_entries(laid_out: Path, model_files: dict, handler_name: str) -> dict:
    """Return the card's `files`: the model files' entries, then role, SHA-256 and size of every other laid-out file."""
    roles = {integrity.MANIFEST: "manifest", MODEL_CONFIG: "serving-config", handler_name: "handler"}
    entries = dict(model_files)
    for path in sorted(p for p in laid_out.rglob("*") if p.is_file()):
        n = path.relative_to(laid_out).as_posix()
        if n not in entries and n != CARD:
            entries[n] = {"role": roles.get(n, "handler-code"), "sha256": integrity.sha256_file(path), "bytes": path.stat().st_size}
    return entries


def _run_archiver(name: str, version: str, config_file: Path, extra: list[Path], work: Path, handler: Path = HANDLER_FILE) -> Path:
    """Run torch-model-archiver (no-archive) with its temp dir pointed at `work`; returns the laid-out directory."""
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    out = work / "out"
    out.mkdir()
    cfg = ModelArchiverConfig(
        model_name=name,
        handler=str(handler),
        version=version,
        extra_files=",".join(str(p) for p in extra),
        export_path=str(out),
        archive_format="no-archive",
        force=True,
        config_file=str(config_file),
    )
    saved = tempfile.tempdir
    tempfile.tempdir = str(work)  # the archiver deletes and recreates $TMPDIR/NAME: keep it private
    try:
        generate_model_archive(cfg)
    finally:
        tempfile.tempdir = saved
    laid_out = out / name
    if not (laid_out / "MAR-INF" / "MANIFEST.json").is_file():
        raise RuntimeError(f"torch-model-archiver produced no manifest in {laid_out}")
    return laid_out


def _fix_manifest(laid_out: Path, created_iso: str) -> None:
    """Stamp MANIFEST.json's createdOn with the card's creation time instead of the clock."""
    path = laid_out / "MAR-INF" / "MANIFEST.json"
    manifest = json.loads(path.read_text())
    manifest["createdOn"] = _dt.datetime.fromisoformat(created_iso).strftime("%d/%m/%Y %H:%M:%S")
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _deterministic_zip(src: Path, dst: Path, created_iso: str) -> list[str]:
    """Zip `src` into `dst` with sorted names, a fixed timestamp and fixed modes; returns the names written."""
    when = _dt.datetime.fromisoformat(created_iso)
    stamp = (max(1980, when.year), when.month, when.day, when.hour, when.minute, when.second)
    names = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    with zipfile.ZipFile(dst, "w") as zf:
        for n in names:
            with open(src / n, "rb") as f:
                _write_member(zf, n, f.read(), stamp, zipfile.ZIP_DEFLATED)
    return names


def _write_member(zf: zipfile.ZipFile, name: str, data: bytes, stamp: tuple, compression: int) -> None:
    """Write one regular file (mode 0644, no extra fields) into an open zip."""
    info = zipfile.ZipInfo(name, date_time=stamp)
    info.external_attr = 0o644 << 16
    info.compress_type = compression
    info.create_system = 3
    zf.writestr(info, data, compresslevel=6 if compression == zipfile.ZIP_DEFLATED else None)


def card_digest(card: dict, key: str) -> str:
    """Return the HMAC-SHA256 (hex) of the card's canonical JSON, the "signature" field left out."""
    body = {k: v for k, v in card.items() if k != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    return hmac.new(key.encode("utf-8"), canonical, hashlib.sha256).hexdigest()


def _signature_problem(card: dict, key: str) -> str | None:
    """Return why the card's signature does not hold under `key`, or None when it does."""
    sig = card.get("signature")
    if not isinstance(sig, dict) or sig.get("alg") != SIGNATURE_ALG or not isinstance(sig.get("value"), str):
        return f"the card is not signed, and with ${SIGNING_KEY_ENV} set only signed archives load"
    if not hmac.compare_digest(sig["value"], card_digest(card, key)):
        return "the card's signature does not match (card or a member edited, or signed with another key)"
    return None


def verify_archive(path: str | os.PathLike, key: str | None = None, copy_to: str | os.PathLike | None = None) -> dict:
    """Return the card inside a .mar after checking that it lists every other member with a matching SHA-256.

    Refused (ArchiveError, a ValueError naming the archive and the member): an unreadable archive or card, an
    unsafe member name (absolute, `..`, backslash), a member twice, a member not listed in the card (extra), a
    listed one missing, a SHA-256 mismatch; with `key`, a card that is unsigned or whose HMAC does not match.
    ForeignArchiveError: a readable archive with no card at all.
    copy_to: also write exactly the checked bytes of those members, as a fresh zip, to this path (atomically).
    TorchServe unpacks a .mar by reading it front to back (local headers), while this check reads the central
    directory; serving the fresh copy, not the original, leaves no room for the two readings to differ.
    """
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchiveError(path, None, f"not a readable .mar archive ({e})") from None
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        for i, n in enumerate(names):
            problem = integrity.path_problem(n)
            if problem:
                raise ArchiveError(path, repr(n), f"member name {problem}")
            if n in names[:i]:
                raise ArchiveError(path, n, "appears twice in the archive")
        if CARD not in names:
            raise ForeignArchiveError(path, CARD, "missing: not an archive built by `aiaas package`")
        if integrity.MANIFEST not in names:
            raise ArchiveError(path, integrity.MANIFEST, "missing from the archive")
        card_bytes = _read_member(zf, path, CARD)
        try:
            card = json.loads(card_bytes)
        except (ValueError, UnicodeDecodeError) as e:
            raise ArchiveError(path, CARD, f"not valid JSON ({e})") from None
        files = card.get("files") if isinstance(card, dict) else None
        if not isinstance(files, dict):
            raise ArchiveError(path, CARD, "has no 'files' object listing the archive's members")
        for n, meta in files.items():
            problem = integrity.file_name_problem(n)
            if problem:
                raise ArchiveError(path, repr(n), f"file name in the card {problem}")
            if n == CARD or not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
                raise ArchiveError(path, n, "its card entry has no SHA-256")
            if n not in names:
                raise ArchiveError(path, n, "listed in the card but missing from the archive")
        for n in names:
            if n != CARD and n not in files:
                raise ArchiveError(path, n, "in the archive but not listed in the card (an extra member; "
                                            "archives packaged before every member was listed must be packaged again)")
        if key:
            problem = _signature_problem(card, key)
            if problem:
                raise ArchiveError(path, CARD, problem)
        out = Path(copy_to) if copy_to is not None else None
        partial = out.with_name(f".{out.name}.partial") if out is not None else None
        try:
            with zipfile.ZipFile(partial, "w") if partial is not None else contextlib.nullcontext() as copy:
                for info in infos:
                    data = card_bytes if info.filename == CARD else _read_member(zf, path, info.filename)
                    if info.filename != CARD and hashlib.sha256(data).hexdigest() != files[info.filename]["sha256"]:
                        raise ArchiveError(path, info.filename, "SHA-256 does not match the card")
                    if copy is not None:
                        _write_member(copy, info.filename, data, info.date_time, zipfile.ZIP_STORED)
            if partial is not None:
                os.replace(partial, out)
        finally:
            if partial is not None:
                partial.unlink(missing_ok=True)
    return card


def _read_member(zf: zipfile.ZipFile, path: Path, name: str) -> bytes:
    """Return one member's bytes, or raise ArchiveError when it cannot be read (corrupt data, bad CRC)."""
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError, EOFError, zlib.error) as e:  # RuntimeError: encrypted
        raise ArchiveError(path, name, f"cannot be read ({e})") from None
