"""Build and verify the TorchServe .mar archive of a run directory, reproducibly and atomically.

torch-model-archiver (its Python API, `archive_format="no-archive"`) lays the files out in a private staging
directory; we then zip them deterministically (sorted names, fixed timestamps and modes, `createdOn` from the
card) and `os.replace` the result into the model store as NAME-VERSION.mar, so packaging the same run twice gives
byte-identical archives and no half-written archive is ever visible.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import handlers as _handlers_pkg
from .export import CARD, read_card
from .handlers import aiaas_contract as contract

HANDLER_DIR = Path(_handlers_pkg.__file__).parent
HANDLER_FILE = HANDLER_DIR / "tabular_handler.py"
CONTRACT_FILE = HANDLER_DIR / "aiaas_contract.py"
PROGRAMS_FILE = HANDLER_DIR / "programs.py"
METRICS_CONFIG = HANDLER_DIR / "metrics.yaml"
MODEL_CONFIG = "model-config.yaml"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.]*$")
DEVICES = ("auto", "cpu", "gpu")
SERVING_ROLES = {"cpu-compiled", "float-program"}


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
        raise ValueError(f"profile: {name!r} is not one of throughput, latency")

    def validate(self) -> "ServingConfig":
        """Return self after checking every field, raising ValueError naming the bad one."""
        for name in ("workers", "batch_size", "response_timeout_s", "threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: {v!r} must be an integer ≥ 1")
        if not isinstance(self.max_batch_delay_ms, int) or self.max_batch_delay_ms < 0:
            raise ValueError(f"max_batch_delay_ms: {self.max_batch_delay_ms!r} must be an integer ≥ 0")
        if self.max_batch_delay_ms == 0 and self.batch_size > 1:
            # measured: TorchServe 0.12 reads maxBatchDelay 0 as unset and waits its default 100 ms per batch
            raise ValueError("max_batch_delay_ms: 0 with batch_size > 1 makes TorchServe 0.12 wait 100 ms per batch; use ≥ 1")
        if self.max_rows is not None and (not isinstance(self.max_rows, int) or self.max_rows < 1):
            raise ValueError(f"max_rows: {self.max_rows!r} must be an integer ≥ 1")
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
        raise ValueError(f"name: {name!r} must start with a letter or digit and hold only letters, digits and '_'")
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise ValueError(f"version: {version!r} must hold only letters, digits, '.' and '_'")
    if device not in DEVICES:
        raise ValueError(f"device: {device!r} is not one of {DEVICES}")
    serving = (serving or ServingConfig()).validate()
    handler_file = Path(handler).resolve() if handler is not None else HANDLER_FILE
    custom_handler = handler_file != HANDLER_FILE.resolve()
    if not handler_file.is_file():
        raise ValueError(f"handler: {handler_file} is not a file")
    if custom_handler and handler_file.name in (HANDLER_FILE.name, CONTRACT_FILE.name, CARD, MODEL_CONFIG):
        raise ValueError(f"handler: {handler_file.name!r} would clash with a file the archive already ships")
    run_dir = Path(run_dir)
    card = read_card(run_dir)
    problems = contract.verify_files(card, run_dir, roles=SERVING_ROLES)
    if problems:
        raise ValueError(f"{run_dir}: " + "; ".join(problems))
    store = Path(model_store)
    store.mkdir(parents=True, exist_ok=True)

    card = dict(card)
    card["files"] = {n: m for n, m in card["files"].items() if m.get("role") in SERVING_ROLES}
    model_config = _model_config(serving, device, card["input"]["max_rows"])
    card["serving"] = {"name": name, "version": version, "device": device, **model_config}
    if sign_key:
        card["signature"] = {"alg": "HMAC-SHA256", "value": contract.card_digest(card, sign_key)}

    with tempfile.TemporaryDirectory(prefix=".aiaas-package-", dir=store) as work:
        work = Path(work)
        inputs = work / "inputs"
        inputs.mkdir()
        (inputs / CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        (inputs / MODEL_CONFIG).write_text(yaml.safe_dump(model_config, sort_keys=True))
        shutil.copy2(CONTRACT_FILE, inputs / CONTRACT_FILE.name)
        shutil.copy2(PROGRAMS_FILE, inputs / PROGRAMS_FILE.name)
        extra = [inputs / CARD, inputs / CONTRACT_FILE.name, inputs / PROGRAMS_FILE.name] + [run_dir / n for n in sorted(card["files"])]
        if custom_handler:
            extra.append(HANDLER_FILE)
        laid_out = _run_archiver(name, version, inputs / MODEL_CONFIG, extra, work, handler_file)
        _fix_manifest(laid_out, card["created"])
        final = store / archive_name(name, version)
        tmp = work / (final.name + ".partial")
        files = _deterministic_zip(laid_out, tmp, card["created"])
        verify_archive(tmp)
        os.replace(tmp, final)
    return PackageResult(final, name, version, contract.sha256_file(final), files)


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
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n in names:
            info = zipfile.ZipInfo(n, date_time=stamp)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            with open(src / n, "rb") as f:
                zf.writestr(info, f.read(), compresslevel=6)
    return names


def verify_archive(path: str | os.PathLike) -> dict:
    """Return the card inside a .mar after checking every model file's SHA-256 against it (ValueError if not)."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path}: not a readable .mar archive ({e})") from None
    with zf:
        names = set(zf.namelist())
        for required in (CARD, "MAR-INF/MANIFEST.json", HANDLER_FILE.name, CONTRACT_FILE.name, PROGRAMS_FILE.name):
            if required not in names:
                raise ValueError(f"{path}: {required} missing from the archive")
        card = json.loads(zf.read(CARD))
        for n, meta in card.get("files", {}).items():
            if n not in names:
                raise ValueError(f"{path}: {n} named in the card is missing from the archive")
            if hashlib.sha256(zf.read(n)).hexdigest() != meta.get("sha256"):
                raise ValueError(f"{path}: {n} does not match the SHA-256 in the card")
    return card
