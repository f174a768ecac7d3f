"""Load tabular data (CSV or arrays) into a Dataset, inferring and checking its schema, and split it; what training
fits on the rows (imputation, scaling, rotation) is preprocessing.py.

Validation lives here in one place, in the style of scikit-learn's `check_array`: every rejection is a
`ValueError` whose message names the file, the row (as a line number of the file) and the column.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from .csvread import DECIMALS, ENCODING, MISSING, decimal_comma_hint, parse_float, read_csv_text, rows_with_target
from .errors import InputError, InputTypeError
from .handlers.contract_common import FLOAT32_MAX
from .idcols import exclude_ids
from .preprocessing import mark_imputed, parse_impute
from .target import infer_task, target_values

TASKS = ("auto", "regression", "classification")
MAX_CATEGORIES = 50


@dataclass
class FeatureStats:
    """One input column: its name and what training saw of it (a categorical column's values are codes into
    `categories`; `impute` is the strategy asked for, with the value training fitted once it has)."""

    name: str
    dtype: str
    min: float
    max: float
    mean: float
    std: float
    kind: str = "numeric"  # "numeric" | "categorical"
    categories: list | None = None  # sorted vocabulary of a categorical column: code i stands for categories[i]
    impute: dict | None = None  # {"strategy": one of card.IMPUTE_STRATEGIES, "value": the fitted value}

    def to_card(self) -> dict:
        """Return the card's entry for this feature: the fields that apply to its kind."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Schema:
    """The input contract and output description inferred from a data set."""

    features: list[FeatureStats]
    target: str
    task: str  # "regression" | "classification"
    classes: list | None = None  # class labels, in the order of the model's outputs
    unseen_category: str = "zero"  # served answer to an unknown category: "zero" (all-zero encoding) or "error" (400)

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
            unseen_category=d.get("unseen_category", "zero"),
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
    dropped_rows: list[int] = field(default_factory=list)  # lines of a CSV's rows left out for a missing target
    excluded: dict = field(default_factory=dict)  # {column: why} of a CSV's columns left out of the features (row ids)
    reading: dict = field(default_factory=dict)  # how a CSV was read: sep, decimal, encoding

    def __len__(self) -> int:
        """Return the number of rows."""
        return int(self.X.shape[0])

    def subset(self, idx) -> "Dataset":
        """Return the rows at `idx` (an index array copies, a slice is a view) as a Dataset sharing this schema."""
        return replace(self, X=self.X[idx], y=self.y[idx])


def load_csv(
    path: str | os.PathLike,
    target: str,
    task: str = "auto",
    impute=(),
    categorical: Sequence[str] = (),
    max_categories: int = MAX_CATEGORIES,
    strict: bool = False,
    sep: str | None = None,
    decimal: str = DECIMALS[0],
    encoding: str = ENCODING,
    drop_missing_target: bool = False,
    keep: Sequence[str] = (),
    ids: Sequence[str] = (),
) -> Dataset:
    """Return the Dataset read from a CSV file with a header row, feature columns and the named target column.

    impute: strategies for missing cells (see `parse_impute`); without one, a missing cell is an error naming line and
    column. A column with mostly non-numeric cells (or named in `categorical`) is categorical: its values become codes
    into its sorted vocabulary, at most `max_categories` of them. strict: the served model answers an unseen category
    with 400 instead of the all-zero encoding. sep (None: sniffed from the header), decimal and encoding say how the
    file is written. drop_missing_target: leave out the rows without a target (counted) instead of refusing the file.
    A column that looks like a row id (see `idcols.id_reason`) is excluded with a warning unless named in `keep`;
    the columns in `ids` are excluded without one.
    """
    p = Path(path)
    if not isinstance(target, str) or not target:
        raise InputError("target: give the name of the target column")
    strategies = parse_impute(impute)
    categorical, keep, ids = (_names(v) for v in (categorical, keep, ids))
    if isinstance(max_categories, bool) or not isinstance(max_categories, int) or max_categories < 1:
        raise InputError(f"max_categories: {max_categories!r} must be a positive integer")
    if not p.exists():
        raise InputError(f"{p}: file not found")
    if not p.is_file():
        raise InputError(f"{p}: not a regular file")
    table = read_csv_text(p, sep, decimal, encoding)
    header = table.header
    seen = {h: j for j, h in enumerate(header)}
    if target not in seen:
        raise InputError(f"{p}: target column {target!r} not found; columns are {header}")
    named = (("impute", [c for c in strategies if c != "*"]), ("categorical", categorical), ("keep", keep), ("id", ids))
    for what, names in named:
        for c in names:
            if c not in seen or c == target:
                raise InputError(f"{what}: {c!r} is not a feature column of {p}; feature columns are {[h for h in header if h != target]}")
            if what != "id" and c in ids:
                raise InputError(f"{what}: {c!r} is also declared an id column (--id); an id is not a feature")
    t = seen[target]
    data, dropped = rows_with_target(table.rows, len(header), t, p, target, drop_missing_target)
    if len(data) < 2:
        raise InputError(f"{p}: {len(data)} data row(s){' with a target' if dropped else ''}; at least 2 are needed")
    excluded, notes = exclude_ids(header, table.rows, t, ids, set(keep) | set(categorical) | set(strategies), p)
    feature_idx = [j for j in range(len(header)) if j != t and header[j] not in excluded]
    if not feature_idx:
        raise InputError(f"{p}: no feature columns besides the target {target!r}" + (f" and the excluded {list(excluded)}" if excluded else ""))
    X = np.empty((len(data), len(feature_idx)), dtype=np.float32)
    vocab: dict[int, list] = {}
    for c, j in enumerate(feature_idx):
        name = header[j]
        strategy = strategies.get(name, strategies.get("*"))
        cats = _column(X[:, c], [(line, row[j]) for line, row in data], f"{p}", name, strategy is not None,
                       name in categorical, max_categories)  # fmt: skip
        if cats is not None:
            vocab[c] = cats
    y_text = [row[t].strip() for _, row in data]
    y_values, y_numeric = target_values(y_text, p, [line for line, _ in data], target, task)
    names = [header[j] for j in feature_idx]
    ds = _build(X, y_values, y_numeric, names, target, task, str(p), table.sha256, vocab)
    mark_imputed(ds.schema, strategies)
    ds.schema.unseen_category = "error" if strict else "zero"
    ds.warnings[:0] = notes
    ds.dropped_rows, ds.excluded = dropped, excluded
    ds.reading = {"sep": table.sep, "decimal": table.decimal, "encoding": table.encoding}
    return ds


def dataset_lineage(ds: Dataset) -> dict:
    """Return the card's data fields of how a CSV was read: the rows left out for a missing target, the columns
    excluded from the features, and the separator, decimal mark and encoding; empty for arrays."""
    if not ds.reading:
        return {}
    dropped = {"count": len(ds.dropped_rows), "lines": ds.dropped_rows[:20]}
    return {"dropped_missing_target": dropped, "excluded_columns": dict(ds.excluded), "csv": dict(ds.reading)}


def _names(v) -> list[str]:
    """Return a column-name option as a list (one name may be given as a string)."""
    return [v] if isinstance(v, str) else list(v or ())


def _column(out: np.ndarray, cells: list, p: str, name: str, imputed: bool, forced: bool, max_categories: int):
    """Fill `out` with one feature column's values (NaN where missing and imputed); returns its sorted vocabulary
    when the column is categorical (the values are then codes into it), else None."""
    texts = [(line, cell.strip()) for line, cell in cells]
    present = [(line, s) for line, s in texts if s.lower() not in MISSING]
    bad = []
    if not forced:
        for line, s in present:
            try:
                float(s)
            except ValueError:
                bad.append((line, s))
    categorical = forced or (bool(bad) and len(bad) > len(present) // 2)
    hint = decimal_comma_hint([s for _, s in bad]) if categorical and not forced else ""
    if hint:
        raise InputError(f"{p}, column {name!r}: {hint}")
    if categorical:
        cats = sorted({s for _, s in present})
        if len(cats) > max_categories:
            raise InputError(f"{p}, column {name!r}: {len(cats)} distinct categories, more than the limit of {max_categories} "
                             f"(raise it with max_categories / --max-categories, or drop the column)")  # fmt: skip
        code = {c: float(i) for i, c in enumerate(cats)}
    for r, (line, s) in enumerate(texts):
        where = f"{p}, line {line}, column {name!r}"
        if s.lower() in MISSING:
            if imputed:
                out[r] = np.nan
            elif s == "":
                raise InputError(f"{where}: empty cell, expected a {'category' if categorical else 'number'} ({_impute_hint(name)})")
            elif s.lower() == "nan" and not categorical:
                parse_float(s, where)  # raises the "not a finite number" error a NaN cell always got
            else:
                raise InputError(f"{where}: missing value {s!r} ({_impute_hint(name)})")
            continue
        out[r] = code[s] if categorical else parse_float(s, where)
    return cats if categorical else None


def _impute_hint(name: str) -> str:
    """Return the hint of a missing-cell error: the options that fill the column's missing cells."""
    return f"use --impute median, or --impute {name}=median; in Python impute='median'"


def from_arrays(
    X, y, feature_names: Sequence[str] | None = None, target: str = "y", task: str = "auto", impute=()
) -> Dataset:
    """Return a Dataset built from a 2-D feature array and a 1-D target (numbers, or labels for classes); NaN marks a
    missing value in a column that `impute` names (see `parse_impute`), and is an error in any other."""
    strategies = parse_impute(impute)
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
    for c in strategies:
        if c != "*" and c not in names:
            raise InputError(f"impute: {c!r} is not a feature name; features are {names[:20]}")
    imputed = np.array([strategies.get(n, strategies.get("*")) is not None for n in names], dtype=bool)
    bad = np.argwhere(~np.isfinite(Xa) & ~(np.isnan(Xa) & imputed))
    if bad.size:
        r, c = bad[0]
        raise InputError(f"X, row {r}, column {names[c]!r}: {Xa[r, c]} is not a finite number (NaN, inf, or beyond float32)")
    if not (isinstance(X, np.ndarray) and X.dtype == np.float32) and np.any(np.abs(Xa) == FLOAT32_MAX):
        _refuse_beyond_float32(X, Xa.shape, names)
    if ya.dtype.kind in "fiub":
        yv = ya.astype(np.float64)
        badt = np.flatnonzero(~np.isfinite(yv))
        if badt.size:
            raise InputError(f"y, row {badt[0]}: {yv[badt[0]]} is not a finite number")
        badt = np.flatnonzero(np.abs(yv) > FLOAT32_MAX)  # a regression target is float32: it would become inf
        if badt.size:
            raise InputError(f"y, row {badt[0]}: {float(yv[badt[0]])!r} is too large for float32 (|x| > {FLOAT32_MAX:.7g})")
        y_values, numeric = yv.tolist(), True
    else:
        y_values, numeric = [str(v) for v in ya.tolist()], False
    h = hashlib.sha256(memoryview(np.ascontiguousarray(Xa)).cast("B"))
    h.update(np.ascontiguousarray(ya).tobytes() if ya.dtype.kind in "fiub" else "\x1f".join(y_values).encode())
    h = h.hexdigest()
    ds = _build(Xa, y_values, numeric, names, target, task, "arrays", h)
    mark_imputed(ds.schema, strategies)
    return ds


def _refuse_beyond_float32(X, shape: tuple, names: list) -> None:
    """Raise InputError naming row and column of a value of X beyond float32's largest, which the cast to float32 rounded
    down to it (values up to half a float32 step above it): the bound CSV cells and served requests have; returns None."""
    wide = np.asarray(X, dtype=np.float64).reshape(shape)
    over = np.argwhere(np.abs(wide) > FLOAT32_MAX)
    if over.size:
        r, c = over[0]
        raise InputError(f"X, row {r}, column {names[c]!r}: {float(wide[r, c])!r} is too large for float32 (|x| > {FLOAT32_MAX:.7g})")


def _build(Xa, y_values, numeric, names, target, task, source, sha, vocab: dict | None = None) -> Dataset:
    """Return the Dataset for checked values (NaN: missing, to impute), inferring the task and class labels; `vocab`
    maps a categorical column's index to its categories."""
    if task not in TASKS:
        raise InputError(f"task: {task!r} is not one of {TASKS}")
    n = Xa.shape[0]
    if task == "auto":
        task = infer_task(y_values, numeric, n)
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
    vocab = vocab or {}
    for j, name in enumerate(names):
        col = Xa[:, j]
        col = col[~np.isnan(col)]
        if col.size == 0:
            raise InputError(f"{source}, column {name!r}: every value is missing")
        std = float(col.std(dtype=np.float64))
        if std == 0.0:
            shown = repr(vocab[j][0]) if j in vocab else f"{col[0]:g}"
            msg = f"{source}, column {name!r}: constant feature (every value is {shown}); it carries no information"
            warnings.warn(msg, UserWarning, stacklevel=3)
            notes.append(msg)
        f = FeatureStats(name, "float32", float(col.min()), float(col.max()), float(col.mean(dtype=np.float64)), std)
        if j in vocab:
            f.kind, f.categories = "categorical", vocab[j]
        feats.append(f)
    schema = Schema(feats, target, task, classes)
    return Dataset(np.ascontiguousarray(Xa, dtype=np.float32), y, schema, source, sha, notes)


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
