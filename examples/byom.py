"""Bring your own model: two PyTorch models built and trained outside aiaas, imported, packaged and served.

1. digits: scikit-learn's 1,797 handwritten digits (8×8, values 0–16, shipped as digits.npz) classified by a small
   CNN trained with torch.optim.SGD. Its first layer is fixed: the orthonormal 2-D DCT of each image (the origin
   document's orthogonal transform, AᵀA = I), a buffer, not a trained weight.
2. tokens: a transformer encoder over int64 token ids whose projections are all nn.Linear (nn.MultiheadAttention's
   packed in_proj_weight is not a Linear, so torchao could not quantize it). Random weights; at the default size it
   holds about 10.5 M parameters (benchmarks/import.py); tests use a scaled-down twin of the same class.

Run:  python examples/byom.py OUT_DIR   (trains the CNN, imports it: OUT_DIR/digits; then `aiaas package` and `serve`)
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

DIGITS = Path(__file__).with_name("digits.npz")


def dct_matrix(n: int) -> torch.Tensor:
    """Return the orthonormal DCT-II matrix C (n × n): C Cᵀ = I, row k is the k-th cosine basis vector."""
    k = torch.arange(n, dtype=torch.float64).reshape(-1, 1)
    i = torch.arange(n, dtype=torch.float64).reshape(1, -1)
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c


def dct2_matrix(n: int) -> torch.Tensor:
    """Return A (n² × n²) with A·vec(X) = vec(C X Cᵀ), the orthonormal 2-D DCT of an n × n image (AᵀA = I)."""
    c = dct_matrix(n)
    return torch.kron(c, c)


class DCT2d(nn.Module):
    """A fixed layer: the orthonormal 2-D DCT of each [1, n, n] image (a buffer, not trained)."""

    def __init__(self, n: int = 8):
        super().__init__()
        self.n = n
        self.register_buffer("A", dct2_matrix(n).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the DCT coefficients of each image, shaped like the images."""
        return (x.flatten(1) @ self.A.T).reshape(-1, 1, self.n, self.n)


class DigitsCNN(nn.Module):
    """DCT → two 3×3 convolutions → two Linear layers: logits of the ten digits for [N, 1, 8, 8] images (0–16)."""

    def __init__(self):
        super().__init__()
        self.dct = DCT2d(8)
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return the logits of each image (pixel values 0–16 scaled to 0–1 first)."""
        return self.head(self.conv(self.dct(image / 16.0)))


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> tuple:
    """Return (train images, train labels, test images, test labels): float32 [N, 1, 8, 8] in 0–16, int64 labels."""
    with np.load(DIGITS, allow_pickle=False) as d:
        images, labels = d["images"].astype(np.float32)[:, None], d["labels"].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(len(labels) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def train_digits(X: np.ndarray, y: np.ndarray, epochs: int = 15, lr: float = 0.1, batch: int = 256, seed: int = 0) -> DigitsCNN:
    """Return a DigitsCNN trained with torch.optim.SGD (momentum 0.9) on images X and labels y, in eval mode."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # so small a model trains 20× slower on two threads of a shared 2-core host (measured)
    try:
        for _ in range(epochs):
            for idx in torch.randperm(len(yt), generator=g).split(batch):
                opt.zero_grad()
                nn.functional.cross_entropy(model(Xt[idx]), yt[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer with its own nn.Linear projections (q, k, v, out, and the feed-forward)."""

    def __init__(self, d: int, heads: int, ff: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the layer's output for [N, T, d] activations."""
        b, t, d = x.shape
        h = self.n1(x)
        q, k, v = (p(h).reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = x + self.o(a)
        return x + self.ff2(nn.functional.gelu(self.ff1(self.n2(x))))


class TokenEncoder(nn.Module):
    """Token ids [N, T] (int64) → class logits [N, classes]: embedding, encoder layers, mean pooling, a Linear head."""

    def __init__(self, vocab: int = 2000, d: int = 512, heads: int = 8, layers: int = 3, ff: int = 2048, seq: int = 32,
                 classes: int = 4):  # fmt: skip
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq, d) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(d, heads, ff) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return the logits of each sequence of token ids."""
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).mean(1))


def main(out: str) -> int:
    """Train the digits CNN, print its test accuracy, and import it (int8 where it pays) into OUT/digits; returns 0."""
    from aiaas_torch import import_model

    Xtr, ytr, Xte, yte = load_digits()
    model = train_digits(Xtr, ytr)
    with torch.no_grad():
        acc = float((model(torch.from_numpy(Xte)).argmax(1).numpy() == yte).mean())
    print(f"digits CNN: test accuracy {acc:.3f} on {len(yte)} images")
    res = import_model(model, torch.from_numpy(Xte[:2]), Path(out) / "digits", calibration={"image": Xte},
                       labels=[str(d) for d in range(10)])  # fmt: skip
    print(res.report.summary())
    print(res.optimization_summary())
    print(f"run directory: {res.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs"))
