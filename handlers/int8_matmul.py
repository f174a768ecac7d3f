"""The int8-weight kernel a worker runs: int8 weights, one scale per output row, float activations (issue 28).

A decoder at batch 1 reads every weight once per token, so int8 weights (a quarter of float's bytes) pay on any
CPU where a kernel reads them without widening them first. Two schemes: "channel" (symmetric, round-to-nearest,
scale = max|w_row| / 127) and "pow2" (the origin document's x_q = round(x / 2^k), one k per row: the scale is a
power of two, so the dequantized weight q·2^k is exact in any float format). Two paths compute y = x·(q·s)ᵀ + b:

  int8pack-bf16  ATen's `torch._weight_int8pack_mm` with bf16 activations: its AVX2 and AVX-512 kernels read the
                 int8 weights directly (docs/performance.md). bf16 activations and output cost about 2e-3
                 relative error on top of the int8 rounding.
  dequantize     pure PyTorch: int8 → float32 weight × scale, then F.linear. Correct on every CPU, slower than
                 float (it widens the weights on every call); its answers equal float's on the dequantized weights.
                 Every batch gets 3 zero rows appended (PAD_ROWS) so that sgemm takes one kernel whatever the batch.

`best_path` picks by the CPU's ATen capability where the layer is built (in the worker for a decoder, at export for a
program); `Int8WeightLinear` holds only tensors and calls only `torch.ops.aten` operators (handlers/pt2_check.py's
allow-list), so an exported program needs no torchao. Both paths are batch-invariant: a row's answer is
bit-identical whatever else is in the batch (tests/test_int8_weights.py, tests/test_int8_decoding.py). This file is
shipped in every archive (torch only); aiaas_torch/int8_weights.py is the export side and imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

SCHEMES = ("channel", "pow2")
PATHS = ("int8pack-bf16", "dequantize")
FAST_CAPABILITIES = ("AVX2", "AVX512")  # ATen capabilities where int8pack has a vector kernel for bf16 activations
# int8pack's vector kernels step through in_features 8 (AVX2) or 16 (AVX-512) at a time with aligned loads of x's
# rows (and, on AVX-512, of the weight's): any other width reads past the row or faults, with no error first (seen
# here at 53 and 3). The weight is padded with zero columns to a multiple of 16 and x with zeros to match.
K_MULTIPLE = 16
QMAX = 127
# MKL's sgemm computes a row the same way from 4 rows up but takes other kernels for 1–3 rows (measured here, 1 and
# 2 threads, M up to 600), so a row alone and in a batch would differ in the last bits: the dequantize path appends
# 3 zero rows to every batch and drops their answers
PAD_ROWS = 3


@dataclass
class QuantizedWeight:
    """An int8 weight [out, in] and its per-row float32 scale [out]: w ≈ q · scale[:, None]."""

    q: torch.Tensor
    scale: torch.Tensor
    scheme: str

    def dequantize(self) -> torch.Tensor:
        """Return the float32 weight q · scale that this form stands for."""
        return self.q.float() * self.scale[:, None]


def quantize_weight(weight: torch.Tensor, scheme: str = "channel") -> QuantizedWeight:
    """Return the int8 form of a float weight [out, in]: symmetric, round-to-nearest, one scale per output row.

    "channel": scale = max|w_row| / 127; "pow2": scale = 2^k with the smallest k such that max|w_row| / 2^k ≤ 127.
    A row of zeros gets scale 1 (its q is all zero either way).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme: {scheme!r} must be one of {SCHEMES}")
    w = weight.detach().float()
    if w.dim() != 2:
        raise ValueError(f"weight: expected 2 dimensions [out, in], got {tuple(w.shape)}")
    amax = w.abs().amax(1)
    if scheme == "pow2":
        k = torch.ceil(torch.log2(amax / QMAX))
        # log2 rounding can leave max|w| / 2^k a hair above 127: step k up where it does
        k = torch.where(amax / torch.exp2(k) > QMAX, k + 1, k)
        scale = torch.where(amax > 0, torch.exp2(k), torch.ones_like(amax))
    else:
        scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    q = torch.clamp(torch.round(w / scale[:, None]), -QMAX, QMAX).to(torch.int8)
    return QuantizedWeight(q, scale.float(), scheme)


def best_path(capability: str | None = None) -> str:
    """Return the fastest path for a CPU of ATen `capability` (default: this one's): int8pack-bf16 on AVX2/AVX-512."""
    cap = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    return "int8pack-bf16" if cap in FAST_CAPABILITIES else "dequantize"


def paths_here(capability: str | None = None) -> tuple:
    """Return the paths worth running on this CPU: its fast path where it has one, and the fallback, which runs anywhere."""
    best = best_path(capability)
    return (best,) if best == "dequantize" else (best, "dequantize")


class Int8WeightLinear(nn.Module):
    """nn.Linear with int8 weights and per-row scales (buffers `weight_q`, `scale`, `bias`); y = x·(q·s)ᵀ + b in float32.

    For the int8pack path `weight_q` is stored with its input dimension zero-padded to a multiple of K_MULTIPLE
    and the input is zero-padded to match (zeros add nothing to the sums); `in_features` is the layer's own width.
    """

    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None, path: str | None = None):
        super().__init__()
        path = best_path() if path is None else path
        if path not in PATHS:
            raise ValueError(f"path: {path!r} must be one of {PATHS}")
        self.out_features, self.in_features = qweight.q.shape
        self.scheme, self.path = qweight.scheme, path
        q, scale = qweight.q, qweight.scale
        self.pad = (-self.in_features) % K_MULTIPLE if path == "int8pack-bf16" else 0
        if self.pad:
            q = F.pad(q, (0, self.pad))
        if path == "int8pack-bf16":
            scale = scale.to(torch.bfloat16)  # the kernel takes its scales in the activations' dtype
        self.register_buffer("weight_q", q.contiguous())
        self.register_buffer("scale", scale.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None, scheme: str = "channel", path: str | None = None) -> "Int8WeightLinear":
        """Return the int8 layer of a float weight [out, in] and bias (or None)."""
        return cls(quantize_weight(weight, scheme), bias, path)

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: str = "channel", path: str | None = None) -> "Int8WeightLinear":
        """Return the int8 layer of an nn.Linear."""
        return cls.from_weight(linear.weight, linear.bias, scheme, path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return x·Wᵀ + b over the last dimension of x (any leading dimensions), in x's float dtype."""
        lead = x.shape[:-1]
        if self.path == "dequantize":
            w = self.weight_q.to(x.dtype) * self.scale[:, None].to(x.dtype)
            x2 = F.pad(x.reshape(-1, self.in_features), (0, 0, 0, PAD_ROWS))  # see PAD_ROWS: batch-invariance
            return F.linear(x2, w, self.bias)[: x2.shape[0] - PAD_ROWS].reshape(*lead, self.out_features)
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if x.dtype == torch.bfloat16:  # .to made no copy: a view may start off the alignment the kernel loads at
            x2 = x2.clone()
        if self.pad:
            x2 = F.pad(x2, (0, self.pad))
        y = torch._weight_int8pack_mm(x2.contiguous(), self.weight_q, self.scale).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*lead, self.out_features)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Return the float32 rows q[index] · scale[index]: an embedding lookup in a tied int8 matrix."""
        return self.weight_q[index, : self.in_features].float() * self.scale[index, None].float()

    @property
    def nbytes(self) -> int:
        """Return the bytes of the layer's tensors (int8 weights with their padding, scales, bias)."""
        return sum(t.numel() * t.element_size() for t in self.buffers())

    def extra_repr(self) -> str:
        """Return the layer's shape, scheme and path for print(model)."""
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}, path={self.path}"
