"""Writing a run directory: the card's files section and versions, its timestamp, and the staged swap.

Training (export.py), importing (importer.py) and selection (select.py) each fill a staging directory beside the
target (atomic.staging_dir); `finish` writes the card last and moves the whole directory into place, so a crash
mid-write never leaves a run directory that loads. Reading a card back is card.py's job.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
from pathlib import Path

from . import __version__
from .atomic import swap_into_place, write_json_atomic
from .card import CARD, CHECKPOINT, FLOAT_PROGRAM
from .handlers import integrity


def now() -> str:
    """Return the current UTC time as an ISO string without microseconds (the card's "created")."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def versions() -> dict:
    """Return the versions that a model's files depend on (the card's "versions")."""
    import torch

    def ver(pkg: str):
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "torch": torch.__version__,
        "torchao": ver("torchao"),
        "aiaas_torch": __version__,
        "python": platform.python_version(),
    }


def files_section(directory: Path, optimization: dict, extra: dict | None = None) -> dict:
    """Return the card's "files" section for the model files in `directory`: role, SHA-256, size, for compiled ones the
    candidate and ISA, and the fields of `extra` ({file name: {field: value}}) for the files it names."""
    compiled = {m["file"]: (n, m) for n, m in optimization["candidates"].items() if m["kind"] == "compiled" and m.get("file")}
    files = {}
    for name, role, serves in (
        *((f, "cpu-compiled", "cpu") for f in sorted(compiled)),
        (FLOAT_PROGRAM, "float-program", "cuda, the eager rebuild's weights, and cpu where no compiled package serves"),
        (CHECKPOINT, "checkpoint", None),
    ):
        p = directory / name
        if p.exists():
            meta = {"role": role, "sha256": integrity.sha256_file(p), "bytes": p.stat().st_size}
            if serves:
                meta["serves"] = serves
            if role == "cpu-compiled":
                meta["candidate"] = compiled[name][0]
                meta["isa"] = optimization["host"]["isa"]
                meta["compile_seconds"] = compiled[name][1]["compile_seconds"]
            files[name] = {**meta, **(extra or {}).get(name, {})}
    return files


def place_compiled(staging: Path, compiled: dict) -> None:
    """Rename the compiled packages the plan serves from their candidate names to their final ones; returns None."""
    for staged, final in compiled.items():
        os.replace(staging / staged, staging / final)


def replace_run_dir(staging: Path, run_dir: Path) -> None:
    """Move a complete staging directory to `run_dir`, replacing an older run directory (never another folder) there."""
    swap_into_place(staging, run_dir, lambda d: (d / CARD).exists())


def finish(staging: Path, run_dir: Path, card: dict) -> None:
    """Write the card last into the staging directory and move it into place as `run_dir`; returns None."""
    write_json_atomic(staging / CARD, card)
    replace_run_dir(staging, run_dir)
