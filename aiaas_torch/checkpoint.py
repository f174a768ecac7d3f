"""Training checkpoints: written atomically, read back without unpickling arbitrary objects."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .atomic import write_atomic
from .errors import InputError


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write a training checkpoint atomically (temp file + rename); returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda f: torch.save(state, f), binary=True)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Return a checkpoint's contents, loaded without unpickling arbitrary objects."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: checkpoint not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise InputError(f"{p}: not a readable aiaas checkpoint ({type(e).__name__}: {e})") from None
