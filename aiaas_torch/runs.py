"""A run directory loaded back for prediction in this process, through the same contract and program choice as the server."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from . import _quiet
from .card import COMPILED, is_text, read_card
from .errors import InputError
from .handlers import aiaas_contract as contract
from .handlers import integrity
from .handlers import programs
from .handlers import text_contract


class LocalModel:
    """A run directory loaded for prediction in this process, through the same contract as the server."""

    def __init__(self, run_dir: str | os.PathLike, program: str = "auto"):
        _quiet.install()
        self.run_dir = Path(run_dir)
        self.card = read_card(self.run_dir)
        problems = integrity.verify_files(self.card, self.run_dir)
        if problems:
            raise InputError(f"{self.run_dir}: " + "; ".join(problems))
        if program not in ("auto", "compiled", "float"):
            raise InputError(f"program: {program!r} is not one of auto, compiled, float")
        card = self.card
        if program != "auto":  # one program for every batch size: the compiled package, or the float program
            meta = self.card["files"].get(COMPILED, {})
            want = "float-program" if program == "float" else meta.get("candidate", "compiled")
            plan = [{"max_rows": None, "candidate": want, "ranked": [want]}]
            card = dict(self.card, optimization=dict(self.card.get("optimization") or {}, plan=plan))
            if program == "compiled" and not meta:
                raise InputError(f"{self.run_dir}: no compiled package loadable on this host (none in the run directory)")
        self.programs = programs.load(card, str(self.run_dir))
        if program == "compiled" and self.programs.files != [COMPILED]:
            raise InputError(f"{self.run_dir}: no compiled package loadable on this host ({self.programs.reason})")
        self.program_file = self.programs.files[0]  # the program serving batch 1
        self._fn = self.programs
        self.text = text_contract.TextModel(self.card, str(self.run_dir), self.programs) if is_text(self.card) else None

    def forward(self, X) -> np.ndarray:
        """Return the raw model outputs (rows × outputs) for a 2-D array of raw features."""
        if self.text is not None:
            raise InputError(f"{self.run_dir}: a text model takes texts: predict({{'instances': ['text', ...]}})")
        x = torch.as_tensor(np.asarray(X, dtype=np.float32))
        with torch.inference_mode():
            return self._fn(x).detach().numpy()

    def predict(self, body, name: str = "local", version: str = "local") -> dict:
        """Return the answer the server would give for a request body (raises ValueError for a bad body)."""
        if self.text is not None:
            try:
                return self.text.predict(body, name, version)
            except text_contract.ContractError as e:
                raise InputError(str(e)) from None
        parsed = contract.parse_request(body, self.card)
        out = programs.run_samples(self._fn, self.card, parsed.inputs)
        return contract.answer(self.card, parsed, out, name, version)


def load_run(run_dir: str | os.PathLike, program: str = "auto") -> LocalModel:
    """Return a LocalModel for a run directory after checking its card and every file's SHA-256."""
    return LocalModel(run_dir, program)
