"""Load tabular data (CSV or arrays), infer and check its schema, split it, and compute feature scaling.

Validation lives here in one place, in the style of scikit-learn's `check_array`: every rejection is a
`ValueError` whose message names the file, the row (as a line number of the file) and the column.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from .errors import InputError, InputTypeError

TASKS = ("auto", "regression", "classification")
MAX_CLASSES = 20  # more distinct integer targets than this is a regression
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class FeatureStats:
    """One input column: its name and what training saw of it."""

    name: str
    dtype: str
    min: float
    max: float
    mean: float
    std: float


@dataclass
class Schema:
    """The input contract and output description inferred from a data set."""

    features: list[FeatureStats]
    target: str
    task: str  # "regression" | "classification"
    classes: list | None = None  # class labels, in the order of the model's outputs

    @property
    def feature_names(self) -> list[str]:
        """Return the feature names in input order."""
        return [f.name for f in self.features]

    def to_dict(self) -> dict:
        """Return the schema as plain JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Schema":
        """Return a Schema rebuilt from `to_dict` output."""
        return cls(
            features=[FeatureStats(**f) for f in d["features"]],
            target=d["target"],
            task=d["task"],
            classes=d.get("classes"),
        )


@dataclass
class Dataset:
    """Features X (float32, rows × features), target y, the schema, and where the data came from."""

    X: np.ndarray
    y: np.ndarray  # float32 for regression, int64 class indices for classification
    schema: Schema
    source: str = "arrays"
    sha256: str = ""
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        """Return the number of rows."""
        return int(self.X.shape[0])

    def subset(self, idx) -> "Dataset":
        """Return the rows at `idx` (an index array copies, a slice is a view) as a Dataset sharing this schema."""
        return Dataset(self.X[idx], self.y[idx], self.schema, self.source, self.sha256, self.warnings)


def _parse_float(text: str, where: str) -> float:
    """Return `text` as a finite float, or raise ValueError naming `where`."""
    s = text.strip()
    if s == "":
        raise InputError(f"{where}: empty cell, expected a number")
    try:
        v = float(s)
    except ValueError:
        raise InputError(f"{where}: non-numeric value {s[:40]!r}, expected a number") from None
    if not math.isfinite(v):
        raise InputError(f"{where}: {s!r} is not a finite number (NaN and inf are not allowed)")
    if abs(v) > FLOAT32_MAX:
        raise InputError(f"{where}: {s[:40]!r} is too large for float32 (|x| > 3.4e38)")
    return v


def csv_header(row: list[str], where) -> list[str]:
    """Return a CSV header row's column names, stripped, refusing an empty or a duplicate name (line 1 of `where`)."""
    header = [h.strip() for h in row]
    seen: dict[str, int] = {}
    for j, h in enumerate(header):
        if h == "":
            raise InputError(f"{where}, line 1, column {j + 1}: empty column name")
        if h in seen:
            raise InputError(f"{where}, line 1: duplicate column name {h!r} (columns {seen[h] + 1} and {j + 1})")
        seen[h] = j
    return header


def load_csv(path: str | os.PathLike, target: str, task: str = "auto") -> Dataset:
    """Return the Dataset read from a CSV file with a header row, numeric features and the named target column."""
    p = Path(path)
    if not isinstance(target, str) or not target:
        raise InputError("target: give the name of the target column")
    if not p.exists():
        raise InputError(f"{p}: file not found")
    if not p.is_file():
        raise InputError(f"{p}: not a regular file")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not UTF-8 text (byte {e.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows_numbered = []
    start = 1  # the line a record starts on (a quoted field may span lines)
    try:
        for r in reader:
            if any(c.strip() for c in r):
                rows_numbered.append((start, r))
            start = reader.line_num + 1
    except csv.Error as e:
        raise InputError(f"{p}, line {reader.line_num}: malformed CSV ({e})") from None
    if not rows_numbered:
        raise InputError(f"{p}: empty file, expected a header row and data rows")
    header = csv_header(rows_numbered[0][1], p)
    seen = {h: j for j, h in enumerate(header)}
    if target not in seen:
        raise InputError(f"{p}: target column {target!r} not found; columns are {header}")
    t = seen[target]
    feature_idx = [j for j in range(len(header)) if j != t]
    if not feature_idx:
        raise InputError(f"{p}: no feature columns besides the target {target!r}")
    data = rows_numbered[1:]
    if len(data) < 2:
        raise InputError(f"{p}: {len(data)} data row(s); at least 2 are needed")
    X = np.empty((len(data), len(feature_idx)), dtype=np.float32)
    y_text: list[str] = []
    for r, (line, row) in enumerate(data):
        if len(row) != len(header):
            raise InputError(f"{p}, line {line}: {len(row)} fields, expected {len(header)} as in the header")
        for c, j in enumerate(feature_idx):
            X[r, c] = _parse_float(row[j], f"{p}, line {line}, column {header[j]!r}")
        cell = row[t].strip()
        if cell == "":
            raise InputError(f"{p}, line {line}, column {target!r}: empty target cell")
        y_text.append(cell)
    y_values, y_numeric = _target_values(y_text, p, [line for line, _ in data], target, task)
    names = [header[j] for j in feature_idx]
    return _build(X, y_values, y_numeric, names, target, task, str(p), hashlib.sha256(raw).hexdigest())


def _target_values(cells: list[str], p: Path, lines: list[int], target: str, task: str) -> tuple[list, bool]:
    """Return the target cells as floats when all are numeric (checking they are finite), else as string labels.

    A few non-numbers among numbers is a typo, not a set of labels: that is an error naming the line, unless the
    caller asked for classification.
    """
    values: list = []
    bad: list[tuple[int, str]] = []
    for cell, line in zip(cells, lines):
        try:
            v = float(cell)
        except ValueError:
            bad.append((line, cell))
            continue
        if not math.isfinite(v):
            raise InputError(f"{p}, line {line}, column {target!r}: {cell!r} is not a finite number")
        values.append(v)
    if not bad:
        return values, True
    if task == "classification" or (task == "auto" and len(bad) > len(cells) // 2):
        return cells, False
    line, cell = bad[0]
    hint = "" if task == "regression" else " (most of the column is numeric; pass task 'classification' if these are labels)"
    raise InputError(f"{p}, line {line}, column {target!r}: non-numeric target {cell[:40]!r}{hint}")


def from_arrays(
    X, y, feature_names: Sequence[str] | None = None, target: str = "y", task: str = "auto"
) -> Dataset:
    """Return a Dataset built from a 2-D feature array and a 1-D target (numbers, or labels for classes)."""
    if isinstance(X, (str, bytes)) or X is None:
        raise InputTypeError(f"X: expected a 2-D array of numbers, got {type(X).__name__}")
    try:
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf and is named just below
            Xa = np.asarray(X, dtype=np.float32)  # float32 input is used as it is: no copy
    except (TypeError, ValueError) as e:
        raise InputError(f"X: not a rectangular array of numbers ({e})") from None
    if Xa.ndim == 1:
        Xa = Xa.reshape(-1, 1)
    if Xa.ndim != 2:
        raise InputError(f"X: expected 2 dimensions (rows × features), got shape {Xa.shape}")
    ya = np.asarray(y)
    if ya.ndim == 2 and ya.shape[1] == 1:
        ya = ya[:, 0]
    if ya.ndim != 1:
        raise InputError(f"y: expected 1 dimension, got shape {ya.shape}")
    if ya.shape[0] != Xa.shape[0]:
        raise InputError(f"y: {ya.shape[0]} values for {Xa.shape[0]} rows of X")
    if Xa.shape[0] < 2:
        raise InputError(f"X: {Xa.shape[0]} row(s); at least 2 are needed")
    names = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(Xa.shape[1])]
    if len(names) != Xa.shape[1]:
        raise InputError(f"feature_names: {len(names)} names for {Xa.shape[1]} columns of X")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"feature_names: duplicate names {dup}")
    bad = np.argwhere(~np.isfinite(Xa))
    if bad.size:
        r, c = bad[0]
        raise InputError(f"X, row {r}, column {names[c]!r}: {Xa[r, c]} is not a finite number (NaN, inf, or beyond float32)")
    if ya.dtype.kind in "fiub":
        yv = ya.astype(np.float64)
        badt = np.flatnonzero(~np.isfinite(yv))
        if badt.size:
            raise InputError(f"y, row {badt[0]}: {yv[badt[0]]} is not a finite number")
        y_values, numeric = yv.tolist(), True
    else:
        y_values, numeric = [str(v) for v in ya.tolist()], False
    h = hashlib.sha256(memoryview(np.ascontiguousarray(Xa)).cast("B"))
    h.update(np.ascontiguousarray(ya).tobytes() if ya.dtype.kind in "fiub" else "\x1f".join(y_values).encode())
    h = h.hexdigest()
    return _build(Xa, y_values, numeric, names, target, task, "arrays", h)


def _build(Xa, y_values, numeric, names, target, task, source, sha) -> Dataset:
    """Return the Dataset for checked values, inferring the task and class labels."""
    if task not in TASKS:
        raise InputError(f"task: {task!r} is not one of {TASKS}")
    n = Xa.shape[0]
    if task == "auto":
        task = _infer_task(y_values, numeric, n)
    if task == "regression":
        if not numeric:
            raise InputError(f"{source}, column {target!r}: regression needs a numeric target")
        y = np.asarray(y_values, dtype=np.float32)
        classes = None
    else:
        if numeric:
            if any(v != int(v) for v in y_values):
                raise InputError(f"{source}, column {target!r}: classification needs integer or string labels")
            y_values = [int(v) for v in y_values]
        classes = sorted(set(y_values))
        if len(classes) < 2:
            raise InputError(f"{source}, column {target!r}: one class only ({classes[0]!r}); need at least 2")
        index = {c: i for i, c in enumerate(classes)}
        y = np.asarray([index[v] for v in y_values], dtype=np.int64)
    notes: list[str] = []
    feats = []
    for j, name in enumerate(names):
        col = Xa[:, j]
        std = float(col.std(dtype=np.float64))
        if std == 0.0:
            msg = f"{source}, column {name!r}: constant feature (every value is {col[0]:g}); it carries no information"
            warnings.warn(msg, UserWarning, stacklevel=3)
            notes.append(msg)
        feats.append(FeatureStats(name, "float32", float(col.min()), float(col.max()), float(col.mean(dtype=np.float64)), std))
    schema = Schema(feats, target, task, classes)
    return Dataset(np.ascontiguousarray(Xa, dtype=np.float32), y, schema, source, sha, notes)


def _infer_task(y_values: list, numeric: bool, n: int) -> str:
    """Return "classification" for string labels or few distinct integers, else "regression"."""
    if not numeric:
        return "classification"
    distinct = set(y_values)
    if all(v == int(v) for v in distinct) and len(distinct) <= min(MAX_CLASSES, max(2, n // 10)):
        return "classification"
    return "regression"


def split(ds: Dataset, val_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """Return (train, validation) split deterministically by seed; validation is None when val_fraction is 0."""
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction: {val_fraction!r} must be in [0, 1)")
    n = len(ds)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    if n - n_val < 1:
        raise InputError(f"val_fraction: {val_fraction} leaves no training rows out of {n}")
    if n_val == 0:
        return ds, None
    # One gather into shuffled order, then two views: the data set is copied once, not once per part.
    perm = np.random.default_rng(seed).permutation(n)
    shuffled = ds.subset(perm)
    return shuffled.subset(slice(n_val, None)), shuffled.subset(slice(0, n_val))


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
