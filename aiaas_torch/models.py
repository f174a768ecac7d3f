"""Model builders: linear regression, logistic/softmax classification and an MLP.

Feature scaling (and the optional orthogonal rotation) is a layer inside the model, so a trained model and every
file exported from it take raw features. `fold_preprocessing` merges those layers into the first Linear, giving
the plain float model that quantization and export work on (the origin model's weight is then ≈ 2.000, not 2σ).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from .errors import InputError

MODEL_KINDS = ("linear", "logistic", "mlp")


class Preprocess(nn.Module):
    """Impute missing raw features (NaN) with per-column values fitted on the training split, then one-hot encode the
    categorical columns (float codes) by comparing with the codes training saw: an unseen code (−1, or a category no
    training row had) becomes the all-zero encoding by construction. Output columns keep the input's column order."""

    def __init__(self, n_features: int, fill=None, onehot: dict | None = None):
        super().__init__()
        self.n_features = int(n_features)
        fill = np.zeros(n_features, np.float32) if fill is None else np.asarray(fill, np.float32)
        self.register_buffer("fill", torch.as_tensor(fill).clone())
        self.onehot = sorted((onehot or {}).keys())
        for j in self.onehot:  # the codes each categorical column's one-hot compares with, as a [1, k] row
            self.register_buffer(f"codes_{j}", torch.as_tensor(np.asarray(onehot[j], np.float32)).reshape(1, -1).clone())
        # Static column segments, so that export sees slices and compares, not a per-column loop over numeric runs.
        self.segments: list[tuple[int, int, bool]] = []
        j = 0
        for c in self.onehot + [self.n_features]:
            if c > j:
                self.segments.append((j, c, False))
            if c < self.n_features:
                self.segments.append((c, c + 1, True))
            j = c + 1

    @property
    def out_features(self) -> int:
        """Return the encoded width: numeric columns plus one column per training category."""
        return self.n_features - len(self.onehot) + sum(int(getattr(self, f"codes_{j}").shape[1]) for j in self.onehot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the imputed, one-hot encoded features."""
        x = torch.where(torch.isnan(x), self.fill, x)
        if not self.onehot:
            return x
        parts = [x[:, a:b] == getattr(self, f"codes_{a}") if cat else x[:, a:b] for a, b, cat in self.segments]
        return torch.cat([p.to(x.dtype) for p in parts], dim=1)


class Standardize(nn.Module):
    """Scale raw features: (x − mean) / std, with mean and std learned from the training split."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32).clone())
        self.register_buffer("std", torch.as_tensor(np.asarray(std), dtype=torch.float32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the standardized features."""
        return (x - self.mean) / self.std


class Rotate(nn.Module):
    """Rotate standardized features into an orthogonal basis A (AᵀA = I): z = x A."""

    def __init__(self, basis):
        super().__init__()
        self.register_buffer("basis", torch.as_tensor(np.asarray(basis), dtype=torch.float32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the rotated features."""
        return x @ self.basis


@dataclass
class ModelSpec:
    """What to build: kind, input width, output width, hidden sizes, and whether a rotation layer is present."""

    kind: str
    n_features: int
    n_outputs: int
    hidden: tuple[int, ...] = ()
    rotate: bool = False
    impute: bool = False  # a Preprocess layer in front fills missing values
    onehot: tuple[tuple[int, int], ...] = ()  # (raw column, categories training saw) of each one-hot encoded column

    @property
    def encoded_width(self) -> int:
        """Return the width after the Preprocess layer (the raw width when there is none)."""
        return self.n_features - len(self.onehot) + sum(k for _, k in self.onehot)

    def to_dict(self) -> dict:
        """Return the spec as plain JSON-ready data."""
        return json_ready(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """Return a ModelSpec rebuilt from `to_dict` output."""
        return cls(d["kind"], int(d["n_features"]), int(d["n_outputs"]), tuple(d.get("hidden", ())), bool(d.get("rotate")),
                   bool(d.get("impute")), tuple((int(j), int(k)) for j, k in d.get("onehot", ())))  # fmt: skip


def json_ready(settings) -> dict:
    """Return a settings dataclass as plain JSON-ready data (tuples as lists)."""
    return {k: [list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple) else v
            for k, v in asdict(settings).items()}  # fmt: skip


def build_model(spec: ModelSpec, mean=None, std=None, basis=None, fill=None, codes: dict | None = None) -> nn.Sequential:
    """Return an nn.Sequential: Preprocess (when `spec` imputes or one-hot encodes), Standardize, optional Rotate,
    then the Linear (or MLP) layers of `spec`; `fill` and `codes` are Preprocess's values (zeros and arange by default)."""
    if spec.kind not in MODEL_KINDS:
        raise InputError(f"model: {spec.kind!r} is not one of {MODEL_KINDS}")
    if spec.n_features < 1 or spec.n_outputs < 1:
        raise InputError(f"model: needs at least one input and one output, got {spec.n_features}→{spec.n_outputs}")
    d = spec.encoded_width
    mean = np.zeros(d, np.float32) if mean is None else mean
    std = np.ones(d, np.float32) if std is None else std
    layers: list[nn.Module] = []
    if spec.impute or spec.onehot:
        codes = codes if codes is not None else {j: np.arange(k, dtype=np.float32) for j, k in spec.onehot}
        layers.append(Preprocess(spec.n_features, fill, codes))
    layers.append(Standardize(mean, std))
    if spec.rotate:
        layers.append(Rotate(np.eye(d, dtype=np.float32) if basis is None else basis))
    if spec.kind == "mlp":
        if not spec.hidden or any(int(h) < 1 for h in spec.hidden):
            raise InputError(f"hidden: an MLP needs positive hidden sizes, got {list(spec.hidden)}")
        width = d
        for h in spec.hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, spec.n_outputs))
    else:
        layers.append(nn.Linear(d, spec.n_outputs))
    return nn.Sequential(*layers)


@torch.no_grad()
def fold_preprocessing(model: nn.Sequential) -> nn.Sequential:
    """Return a float copy of `model` with Standardize/Rotate merged into the first Linear (same outputs); a Preprocess
    layer stays in front of it."""
    mods = list(model)
    front = [copy.deepcopy(m) for m in mods if isinstance(m, Preprocess)]
    pre = [m for m in mods if isinstance(m, (Standardize, Rotate))]
    rest = [m for m in mods if not isinstance(m, (Standardize, Rotate, Preprocess))]
    first = rest[0]
    if not isinstance(first, nn.Linear):
        raise TypeError(f"fold_preprocessing: expected a Linear after scaling, got {type(first).__name__}")
    W = first.weight.detach().double()  # out × d
    b = first.bias.detach().double()
    mean = torch.zeros(W.shape[1], dtype=torch.float64)
    std = torch.ones(W.shape[1], dtype=torch.float64)
    for m in pre:
        if isinstance(m, Standardize):
            mean, std = m.mean.double(), m.std.double()
        else:
            W = W @ m.basis.double().T  # z = s A  ⇒  W z = (W Aᵀ) s
    W_raw = W / std
    b_raw = b - W_raw @ mean
    # no random init: torch's global generator belongs to whichever thread seeded it (training folds run in threads)
    folded = torch.nn.utils.skip_init(nn.Linear, first.in_features, first.out_features)
    folded.weight.copy_(W_raw.float())
    folded.bias.copy_(b_raw.float())
    tail = [copy.deepcopy(m) for m in rest[1:]]
    return nn.Sequential(*front, folded, *tail).eval()


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Return the (qualified name, module) pairs of every nn.Linear in `model`, in order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
