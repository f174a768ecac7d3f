"""One place that silences the third-party noise torch 2.13 and torchao print on paths we do not use.

Each filter matches one known message, so any other warning still reaches the user. Why each is safe:
- torchao tries to load optional CUDA/MX kernels (`_C_mxfp8`, `_C_cutlass_*`) and logs "Failed to load";
  we use only its CPU int8 path, which needs neither.
- torch's pytree logs that registering an Enum as a constant is deprecated; torchao does it at import.
- `isinstance(treespec, LeafSpec)` is a FutureWarning raised inside torch.export's own unpickling.
- `torch.jit.script_method` is deprecated: torch's own modules still define TorchScript methods at import on
  the export/compile path (we never script anything).
- torch.ao.quantization deprecation: we never call it (torchao replaces it: per-row and batch-invariant), but importing
  some torch modules touches it.
"""

from __future__ import annotations

import logging
import warnings

_WARNING_MESSAGES = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*torch\.jit\.script_method` is deprecated.*",
    r".*torch\.ao\.quantization.*deprecated.*",
    r".*Deprecated in .*torch\.ao\.quantization.*",
)
_LOG_MESSAGES = (
    "Failed to load ",  # torchao optional CUDA kernels
    "is an Enum subclass and is now natively supported",  # torch pytree notice for torchao enums
)


class _DropKnownNoise(logging.Filter):
    """Logging filter that drops the known, harmless third-party messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for a known harmless message, True for everything else."""
        msg = record.getMessage()
        return not any(m in msg for m in _LOG_MESSAGES)


_installed = False


def install() -> None:
    """Install the narrow warning and logging filters once per process; returns None."""
    global _installed
    if _installed:
        return
    _installed = True
    for pattern in _WARNING_MESSAGES:
        warnings.filterwarnings("ignore", message=pattern)
    noise = _DropKnownNoise()
    for name in ("torchao", "torch.utils._pytree", "torch._export", "root"):
        logging.getLogger(name).addFilter(noise)
    # torchao's "Failed to load" goes through the root logger's handlers via logging.warning/log.info
    for handler in logging.getLogger().handlers:
        handler.addFilter(noise)


def import_torchao():
    """Import torchao with its import-time noise filtered; returns the torchao.quantization module."""
    install()
    root = logging.getLogger()
    noise = _DropKnownNoise()
    # lastResort handler is used when root has no handlers: filter there too during import.
    last = logging.lastResort
    if last is not None:
        last.addFilter(noise)
    try:
        import torchao.quantization as tq  # noqa: PLC0415 - heavy and optional at import time
    finally:
        if last is not None:
            last.removeFilter(noise)
    root.addFilter(noise)
    return tq
