"""Making model programs: torch.export with a dynamic batch dimension, the AOTInductor compile, and this host's
compiler and vector-ISA facts. export.py (training), importer.py (a user's model) and optimize.py (the candidate
programs) all make their programs here; this module imports nothing of the package.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

MAX_BATCH = 1 << 20
NO_COMPILER_NOTE = "no C++ compiler found: no compiled CPU package; serving uses the float program"


def compiler_available() -> bool:
    """Return True when a C++ compiler for AOTInductor is on PATH."""
    return shutil.which(os.environ.get("CXX", "g++")) is not None or shutil.which("c++") is not None


def compiler_check(mode: str) -> tuple[bool, list[str]]:
    """Return (a compiler is available, the card notes to add): a note when compiling was allowed but no compiler is found."""
    compiler = compiler_available()
    return compiler, ([NO_COMPILER_NOTE] if mode != "never" and not compiler else [])


def vector_isa() -> str:
    """Return the vector ISA inductor compiles CPU code for on this host (e.g. "avx512", "avx2", "none")."""
    from torch._inductor import cpu_vec_isa

    isa = cpu_vec_isa.pick_vec_isa()
    return str(isa) if isa else "none"


def export_program(model: torch.nn.Module, n_features: int):
    """Return a torch.export ExportedProgram of a tabular `model` ([N, n_features] in) with a dynamic batch dimension."""
    example = (torch.zeros(2, n_features),)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return torch.export.export(model, example, dynamic_shapes=({0: batch},))


def export_module(module: torch.nn.Module, inputs: tuple):
    """Return the torch.export program of `module` on `inputs` (one tensor per input) with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    example = tuple(t[:2] if t.shape[0] >= 2 else torch.cat([t, t])[:2] for t in inputs)  # batch 1 would be specialized
    return torch.export.export(module, example, dynamic_shapes=tuple({0: batch} for _ in example))


def compile_package(ep, path: Path) -> float:
    """Compile an ExportedProgram into an AOTInductor .pt2 at `path`; returns the seconds it took."""
    t0 = time.perf_counter()
    torch._inductor.aoti_compile_and_package(
        ep, package_path=str(path), inductor_configs={"aot_inductor.use_runtime_constant_folding": True}
    )
    return time.perf_counter() - t0
