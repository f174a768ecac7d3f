"""Weight-only int8 Linear layers for exported programs: replace a model's nn.Linear layers by int8-weight ones.

The kernel, the schemes ("channel", "pow2"), the path choice and the layer itself live in handlers/int8_matmul.py,
the one copy a worker runs (a decoder quantizes its weights there at load); this module is the export side and
re-exports those names for the library, tests and benchmarks.
"""

from __future__ import annotations

from torch import nn

from .handlers import int8_matmul
from .handlers.int8_matmul import (  # noqa: F401  (re-exported: the library's names for the worker's kernel)
    FAST_CAPABILITIES, K_MULTIPLE, PAD_ROWS, PATHS, QMAX, SCHEMES, Int8WeightLinear, QuantizedWeight, best_path,
    paths_here, quantize_weight)


def quantize_linears(model: nn.Module, keep=None, scheme: str = "channel", path: str | None = None) -> list:
    """Replace, in place, every nn.Linear of `model` for which `keep(name, linear)` is true (None: every one) by an
    Int8WeightLinear; return the dotted names replaced, in module order."""
    path = int8_matmul.best_path() if path is None else path
    chosen = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and (keep is None or keep(n, m))]
    if any(name == "" for name, _ in chosen):
        raise ValueError("model: the model itself is an nn.Linear; wrap it in a module to quantize it")
    for name, lin in chosen:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, Int8WeightLinear.from_linear(lin, scheme, path))
    return [n for n, _ in chosen]
