"""Whole-batch steps of the tabular contract: a plain batch checked in one numpy pass, and a batch's outputs turned into
what every request's answer needs (finiteness, softmax probabilities and labels) once per batch.

Torch-free, stdlib plus numpy, shipped inside every .mar beside the handler. Nothing here composes an error message:
a check that finds anything unusual returns None, and aiaas_contract's per-value checks then judge the body and name
what is wrong. Without numpy, `Outputs` and `softmax_rows` compute the same numbers in plain Python.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator

try:  # numpy ships beside torch in every worker we build; without it the per-value paths serve
    import numpy as np
except ImportError:  # pragma: no cover
    np = None
try:  # installed package (tests, aiaas predict --local)
    from .contract_common import FLOAT32_MAX  # the bound of the per-value check (`_number`)
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    from contract_common import FLOAT32_MAX

_new = object.__new__
PLAIN_TYPES = {int, float}  # exact types: bool and the NaN/Infinity marker are subclasses the per-value checks refuse
_FLOATS = {float}
# Up to this many values, C-level Python maps beat numpy, whose every call costs about a microsecond: a request of
# one 10-value row is checked and counted in ~2 µs instead of ~8.
SMALL = 64


def plain_array(rows: list):
    """Return a list of equal-length rows of plain ints and floats as a float64 array, or None when a value is of
    another type or an integer beyond float range."""
    if not set(map(type, itertools.chain.from_iterable(rows))) <= PLAIN_TYPES:
        return None
    try:
        return np.array(rows, dtype=np.float64)
    except (OverflowError, ValueError, TypeError):  # an integer beyond float range
        return None


def float32_rows(a):
    """Return a 2-D float64 array's rows as lists when every value is within float32's range (NaN is not), else None."""
    rows = a.tolist()
    if a.size <= SMALL:
        ok = all(map(FLOAT32_MAX.__ge__, map(abs, itertools.chain.from_iterable(rows))))
    else:
        ok = within_float32(a)
    return rows if ok else None


def within_float32(a) -> bool:
    """Return True when every value of a non-empty float64 array is within float32's range (a NaN is not)."""
    return bool(a.max() <= FLOAT32_MAX and a.min() >= -FLOAT32_MAX)  # a NaN makes both NaN: false


def small_rows(values: list):
    """Return a small batch's equal-length rows (lists or tuples) of plain ints and floats as lists of floats within
    float32's range, or None: the one-pass check without numpy's per-call cost (what float32_rows(plain_array) gives)."""
    kinds = set(map(type, values[0] if len(values) == 1 else itertools.chain.from_iterable(values)))
    if not kinds <= PLAIN_TYPES:
        return None
    if kinds == _FLOATS and type(values[0]) is list:  # JSON's usual rows: already lists of floats
        rows = values
    else:
        try:
            rows = [list(map(float, r)) for r in values]
        except OverflowError:  # an integer beyond float range
            return None
    return rows if all(map(FLOAT32_MAX.__ge__, map(abs, rows[0] if len(rows) == 1 else itertools.chain.from_iterable(rows)))) else None


def count_outside(a, rows: list, lo, hi) -> int:
    """Return how many values of a checked batch (array a, the same as lists `rows`; a None: a small batch) fall
    outside [lo, hi] per column; lo and hi are (numpy array, list) pairs of the columns' bounds."""
    if a is None or a.size <= SMALL:
        lt, gt, either = operator.lt, operator.gt, operator.or_
        if len(rows) == 1:  # the common request: no generator
            return sum(map(either, map(lt, rows[0], lo[1]), map(gt, rows[0], hi[1])))
        return sum(sum(map(either, map(lt, r, lo[1]), map(gt, r, hi[1]))) for r in rows)
    return int(np.count_nonzero((a < lo[0]) | (a > hi[0])))


def v2_array(body: dict, width: int, limit: int, numeric_types: set):
    """Return the [N, width] float64 array of an Open Inference body holding one tensor of plain numbers (JSON
    `data` flat or as rows, or a numeric array from the binary extension), or None for the per-value checks; its
    range is checked by float32_rows."""
    inputs = body.get("inputs")
    if "instances" in body or type(inputs) is not list or len(inputs) != 1 or type(inputs[0]) is not dict:
        return None
    t = inputs[0]
    if not ("name" in t and "shape" in t and "datatype" in t and "data" in t) or type(t["datatype"]) is not str:
        return None
    shape, data = t["shape"], t["data"]
    if t["datatype"] not in numeric_types or type(shape) is not list or not all(type(s) is int for s in shape):
        return None
    n = shape[0] if len(shape) == 2 and shape[1] == width else 1 if shape == [width] else 0
    if not 0 < n <= limit:
        return None
    if type(data) is list:
        if len(data) == n * width and set(map(type, data)) <= PLAIN_TYPES:
            a = plain_array([data])
        elif len(data) == n and set(map(type, data)) == {list} and set(map(len, data)) == {width}:
            a = plain_array(data)
        else:
            return None
        return None if a is None else a.reshape(n, width)
    if np is not None and isinstance(data, np.ndarray) and data.dtype.kind in "iuf" and data.size == n * width:
        return data.astype(np.float64).reshape(n, width)
    return None


def stack(arrays: list):
    """Return the rows of several checked batches, each a [n_i, F] float64 array or (a small batch) lists of floats,
    as one [sum n_i, F] float32 array (a tabular input's dtype: torch then takes it without a copy, which costs a
    third of converting while copying)."""
    if len(arrays) == 1:
        a = arrays[0]
        return a.astype(np.float32) if isinstance(a, np.ndarray) else np.array(a, dtype=np.float32)
    if not any(isinstance(a, np.ndarray) for a in arrays):  # the common batch of small requests: one conversion
        return np.array(list(itertools.chain.from_iterable(arrays)), dtype=np.float32)
    return np.concatenate([a if isinstance(a, np.ndarray) else np.array(a, dtype=np.float64) for a in arrays], dtype=np.float32)


def softmax_rows(logits) -> tuple:
    """Return (probabilities, index of the most probable class) per row of a batch of finite logits, as lists.

    Each probability is exp(v - max) / the left-to-right sum of the row's exps, in float64, as Python's per-row code
    computes it (byte-identical JSON where numpy's exp is libm's, as on AVX2 hosts; numpy's SIMD exp on other ISAs may
    differ in the last bits); the most probable class is the first of equal probabilities.
    """
    if np is None:
        probs = []
        for row in logits:
            m = max(row)
            e = [math.exp(float(v) - m) for v in row]
            s = sum(e)
            probs.append([v / s for v in e])
        return probs, [max(range(len(p)), key=p.__getitem__) for p in probs]
    a = np.asarray(logits, dtype=np.float64)
    e = np.exp(a - a.max(axis=1, keepdims=True))
    s = e[:, 0].copy()
    for j in range(1, e.shape[1]):  # column by column: the order of Python's sum (numpy's own sum is pairwise)
        s += e[:, j]
    p = e / s[:, None]
    return p.tolist(), p.argmax(axis=1).tolist()


class Outputs:
    """A batch's [N, width] output with what each request's answer needs computed once for the batch: the rows that
    are not finite, and softmax probabilities and best class (classifier) or the first column (regression). Slicing
    gives one request's rows."""

    __slots__ = ("_bad", "_probs", "_best", "_first", "start", "stop")

    def __init__(self, rows, classify: bool):
        self._probs = self._best = self._first = None
        if not classify and (np is None or not isinstance(rows, np.ndarray) or rows.size <= SMALL):
            # a small regression output: one conversion to lists, then C-level maps (numpy's calls cost more here)
            lists = rows.tolist() if np is not None and isinstance(rows, np.ndarray) else rows
            finite = math.isfinite
            self._bad = [] if all(map(finite, itertools.chain.from_iterable(lists))) else [
                i for i, r in enumerate(lists) if not all(map(finite, r))]  # fmt: skip
            self._first = [float(r[0]) for r in lists]
        elif np is not None:
            # a float array as the forward gives it (its values as tolist() gives them), else the rows in float64
            a = rows if isinstance(rows, np.ndarray) and rows.dtype.kind == "f" else np.asarray(rows, dtype=np.float64)
            self._bad = [] if np.isfinite(a).all() else np.flatnonzero(~np.isfinite(a).all(axis=1)).tolist()
            if not classify:
                self._first = a[:, 0].tolist()
            elif self._bad:
                with np.errstate(all="ignore"):  # a non-finite row's probabilities are never sent: its request is refused
                    self._probs, self._best = softmax_rows(a)
            else:
                self._probs, self._best = softmax_rows(a)
        else:  # a classifier without numpy; a non-finite row's probabilities are never sent: its request is refused
            self._bad = [i for i, r in enumerate(rows) if not all(map(math.isfinite, r))]
            bad = set(self._bad)
            self._probs, self._best = softmax_rows([[0.0] if i in bad else r for i, r in enumerate(rows)])
        self.start, self.stop = 0, len(rows)

    def __len__(self) -> int:
        """Return the number of rows."""
        return self.stop - self.start

    def __getitem__(self, part: slice) -> Outputs:
        """Return the rows `part` (a slice) of these rows, sharing what was computed for the batch."""
        start, stop, n = part.start, part.stop, self.stop - self.start
        if part.step is not None or type(start) is not int or type(stop) is not int or not 0 <= start <= stop <= n:
            start, stop, _ = part.indices(n)  # the general slice; the handler's own are plain [start:stop]
        view = _new(Outputs)
        view._bad, view._probs, view._best, view._first = self._bad, self._probs, self._best, self._first
        view.start, view.stop = self.start + start, self.start + max(start, stop)
        return view

    def first_non_finite(self):
        """Return the index (within these rows) of the first row holding NaN or ±Infinity, or None."""
        k = bisect.bisect_left(self._bad, self.start)
        return self._bad[k] - self.start if k < len(self._bad) and self._bad[k] < self.stop else None

    def non_finite_rows(self) -> list:
        """Return the indexes (within these rows, ascending) of the rows holding NaN or ±Infinity."""
        return [b - self.start for b in self._bad if self.start <= b < self.stop]

    def probabilities(self) -> list:
        """Return each row's softmax probabilities (a classifier's rows)."""
        return self._probs[self.start : self.stop]

    def best(self) -> list:
        """Return each row's most probable class index (a classifier's rows)."""
        return self._best[self.start : self.stop]

    def first_column(self) -> list:
        """Return each row's first value as a float (a regression's rows)."""
        return self._first[self.start : self.stop]
