"""Atomic writes: a file or a whole directory appears complete or not at all (temp beside the target + os.replace)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from .errors import InputError


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, binary: bool = False, newline: str | None = None) -> Iterator:
    """Yield a new file to write that replaces `path` complete when the block ends, or is removed if it raises.

    The file is created beside `path` under an unpredictable name, exclusively and without following a symlink
    (mkstemp: O_CREAT | O_EXCL | O_NOFOLLOW), so nothing planted in the folder is written through; flushed to disk,
    then renamed over `path`.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": newline})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def private_dir(path: str | os.PathLike, exist_ok: bool = False) -> Path:
    """Return `path` as a directory of mode 0700: created with that mode, then chmod-ed (the umask masks mkdir's mode)."""
    path = Path(path)
    path.mkdir(mode=0o700, exist_ok=exist_ok)
    os.chmod(path, 0o700)
    return path


def write_atomic(path: str | os.PathLike, write: Callable, binary: bool = False) -> Path:
    """Call write(file) on a temp file beside `path`, flush it to disk and rename it to `path`; returns the path."""
    with atomic_file(path, binary) as f:
        write(f)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write text to `path` atomically; returns the path."""
    return write_atomic(path, lambda f: f.write(text))


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    """Write obj as indented JSON (no NaN/Infinity) to `path` atomically; returns the path."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


@contextlib.contextmanager
def staging_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty directory beside `target` (same filesystem, so it can be renamed there); removed on failure."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def swap_into_place(staging: Path, target: Path, replaceable: Callable[[Path], bool]) -> None:
    """Move a complete staging directory to `target`; an existing target is replaced only when replaceable(target)
    or empty (else InputError), and put back if the move fails."""
    old = None
    if target.exists():
        if any(target.iterdir()) and not replaceable(target):
            raise InputError(f"{target}: exists and is not an aiaas run directory; refusing to replace it")
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)  # the new files did not land: put the previous directory back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
