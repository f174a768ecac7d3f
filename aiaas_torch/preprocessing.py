"""What training fits on its rows before the model sees them: the impute strategies asked for (parsed, then fitted on
the training split), the category codes training saw, standardization and the PCA rotation.

The strategy names are card.IMPUTE_STRATEGIES, the one list that `impute=` / `--impute` takes and a card records.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .card import IMPUTE_STRATEGIES
from .csvread import parse_float
from .errors import InputError

_TYPED = ", ".join(s for s in IMPUTE_STRATEGIES if s != "constant") + ", constant, constant:VALUE"  # for the messages


def parse_impute(specs) -> dict[str, str]:
    """Return {column or "*": strategy} from specs such as "mean", "age=median", "city=constant:unknown"."""
    if isinstance(specs, str):
        specs = [specs]
    out: dict[str, str] = {}
    for spec in specs or ():
        if not isinstance(spec, str) or not spec.strip():
            raise InputError(f"impute: {spec!r} is not a strategy; use {_TYPED}, or COL=STRATEGY")
        col, strategy = spec.split("=", 1) if "=" in spec.split(":", 1)[0] else ("*", spec)
        col, strategy = col.strip(), strategy.strip()
        ok = strategy in IMPUTE_STRATEGIES or (strategy.startswith("constant:") and strategy[len("constant:"):] != "")
        if not col or not ok:
            raise InputError(f"impute: {spec!r}: expected {_TYPED}, or COL=one of those")
        if col in out:
            raise InputError(f"impute: column {col!r} given twice")
        out[col] = strategy
    return out


def mark_imputed(schema, strategies: dict) -> None:
    """Record on each feature of a data.Schema the impute strategy asked for it (its value is fitted later, by
    `fit_preprocessing`); returns None."""
    for f in schema.features:
        strategy = strategies.get(f.name, strategies.get("*"))
        if strategy is not None:
            f.impute = {"strategy": strategy}


def fit_preprocessing(schema, X: np.ndarray) -> tuple:
    """Return (data.Schema with each imputed feature's fitted strategy and value, per-column fill values, {column:
    codes training saw}) from the training rows X; the fill of a column without imputation is 0 (no NaN to fill)."""
    fill = np.zeros(X.shape[1], np.float32)
    codes: dict[int, np.ndarray] = {}
    feats = []
    for j, f in enumerate(schema.features):
        col = X[:, j]
        known = col[~np.isnan(col)]
        f = replace(f, impute=dict(f.impute) if f.impute else None)
        if f.impute is None and known.size < col.size:
            raise InputError(f"column {f.name!r}: {col.size - known.size} missing value(s) and no impute strategy for it")
        if f.impute is not None:
            strategy = f.impute["strategy"]
            if known.size == 0 and not strategy.startswith("constant"):
                raise InputError(f"column {f.name!r}: every training value is missing; cannot fit its {strategy}")
            fill[j], value, named = _fit_one(f, known, strategy)
            f.impute = {"strategy": named, "value": value}
        if f.kind == "categorical":
            filled = np.where(np.isnan(col), fill[j], col)
            codes[j] = np.unique(filled[filled >= 0]).astype(np.float32)
        feats.append(f)
    return replace(schema, features=feats), fill, codes


def _fit_one(f, known: np.ndarray, strategy: str) -> tuple[float, object, str]:
    """Return (fill value in the program's input, the value the card records, the strategy name it records) of one
    imputed feature from its known training values."""
    name, _, text = strategy.partition(":")
    if f.kind == "categorical":
        if name == "constant":  # a named category, or none (-1: the all-zero encoding)
            value = text or None
            return (f.categories.index(value) if value in f.categories else -1.0), value, name
        # mean, median and most_frequent of a category: the most frequent one (the first in sorted order on a tie)
        code = int(np.bincount(known.astype(np.int64)).argmax())
        return float(code), f.categories[code], "most_frequent"
    if name == "constant":
        fill = parse_float(text or "0", f"impute, column {f.name!r}")
    elif name == "most_frequent":  # the most frequent value (the smallest on a tie)
        values, counts = np.unique(known, return_counts=True)
        fill = values[int(counts.argmax())]
    else:
        fill = np.mean(known, dtype=np.float64) if name == "mean" else np.median(known)
    fill = float(np.float32(fill))
    return fill, fill, name


def standardize_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return per-feature (mean, std) of X; a constant feature gets std 1 so scaling leaves it finite."""
    mean = X.mean(axis=0, dtype=np.float64)
    std = X.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def pca_rotation(Z: np.ndarray, tol: float = 1e-5) -> np.ndarray:
    """Return the orthogonal PCA basis A (features × features) of standardized data Z, checked AᵀA = I to tol."""
    Z64 = np.asarray(Z, dtype=np.float64)
    cov = Z64.T @ Z64 / max(1, Z64.shape[0] - 1)
    _, vecs = np.linalg.eigh(cov)
    A = vecs[:, ::-1].copy()  # largest variance first
    err = float(np.abs(A.T @ A - np.eye(A.shape[1])).max())
    if err > tol:
        raise InputError(f"rotation: AᵀA differs from I by {err:.2e} (> {tol:g}); data too ill-conditioned")
    return A.astype(np.float32)
