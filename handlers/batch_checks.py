"""Whole-batch steps of the tabular contract: a plain batch checked in one numpy pass, and a batch's outputs turned into
what every request's answer needs (finiteness, softmax probabilities and labels) once per batch.

Torch-free, stdlib plus numpy, shipped inside every .mar beside the handler. Nothing here composes an error message:
a check that finds anything unusual returns None, and the per-value checks (tabular_rows.py) then judge the body and
name what is wrong; plain_rows.py is the one-pass check these steps serve. Without numpy, `Outputs` and `softmax_rows` compute the same numbers in plain Python.
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
    from .contract_common import FLOAT32_MAX  # the bound of tabular_rows' per-value check
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


def within_float32(a) -> bool:
    """Return True when every value of a non-empty float64 array is within float32's range (a NaN is not)."""
    return bool(a.max() <= FLOAT32_MAX and a.min() >= -FLOAT32_MAX)  # a NaN makes both NaN: false


def small_rows(values: list):
    """Return a small batch's equal-length rows (lists or tuples) of plain ints and floats as lists of floats within
    float32's range, or None: the one-pass check without numpy's per-call cost (what plain_array and within_float32 give)."""
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


def count_outside(a, rows: list, lo, hi, sizes: list) -> list:
    """Return, per request (`sizes`: each one's number of rows, in order), how many values of a checked batch (array a,
    the same as lists `rows`; a None: a small batch) fall outside [lo, hi] per column; lo and hi are (numpy array,
    list) pairs of the columns' bounds."""
    if a is None or a.size <= SMALL:
        lt, gt, either = operator.lt, operator.gt, operator.or_
        lo, hi, out, start = lo[1], hi[1], [], 0
        for n in sizes:
            if n == 1:  # the common request: no generator
                r = rows[start]
                out.append(sum(map(either, map(lt, r, lo), map(gt, r, hi))))
            else:
                out.append(sum(sum(map(either, map(lt, r, lo), map(gt, r, hi))) for r in rows[start : start + n]))
            start += n
        return out
    outside = (a < lo[0]) | (a > hi[0])
    if not outside.any():  # the common batch: every value within the range
        return [0] * len(sizes)
    if len(sizes) == 1:
        return [int(np.count_nonzero(outside))]
    per_row = np.count_nonzero(outside, axis=1)
    if len(sizes) == len(per_row):  # one row each, the common batch
        return per_row.tolist()
    return np.add.reduceat(per_row, list(itertools.accumulate(sizes[:-1], initial=0))).tolist()


def v2_data(data, n: int, width: int):
    """Return an Open Inference tensor's data of n rows × width plain numbers (JSON, flat or as rows, or a numeric array
    from the binary extension) as a float64 [n, width] array, or None for the per-value checks; its range is not
    checked here."""
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


def stack(spans: list):
    """Return the rows of several requests as one float32 [N, F] array (a tabular input's dtype: torch then takes it
    without a copy), from each one's (float32 array, first row, end row) span as the one-pass check gives them: the
    array itself when the spans cover it in order (one batch checked at once), else their rows joined."""
    first, prev = spans[0][0], 0
    for a, start, stop in spans:
        if a is not first or start != prev:
            break
        prev = stop
    else:
        if prev == len(first):
            return first
    return np.concatenate([a[start:stop] for a, start, stop in spans])


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

    __slots__ = ("_b", "start", "stop")  # _b: (non-finite rows, probabilities, best classes, first column) of the batch

    def __init__(self, rows, classify: bool):
        probs = best = first = None
        if not classify and (np is None or not isinstance(rows, np.ndarray) or rows.size <= SMALL):
            # a small regression output: one conversion to lists, then C-level maps (numpy's calls cost more here)
            lists = rows.tolist() if np is not None and isinstance(rows, np.ndarray) else rows
            finite = math.isfinite
            bad = [] if all(map(finite, itertools.chain.from_iterable(lists))) else [
                i for i, r in enumerate(lists) if not all(map(finite, r))]  # fmt: skip
            first = [float(r[0]) for r in lists]
        elif np is not None:
            # a float array as the forward gives it (its values as tolist() gives them), else the rows in float64
            a = rows if isinstance(rows, np.ndarray) and rows.dtype.kind == "f" else np.asarray(rows, dtype=np.float64)
            bad = [] if np.isfinite(a).all() else np.flatnonzero(~np.isfinite(a).all(axis=1)).tolist()
            if not classify:
                first = a[:, 0].tolist()
            elif bad:
                with np.errstate(all="ignore"):  # a non-finite row's probabilities are never sent: its request is refused
                    probs, best = softmax_rows(a)
            else:
                probs, best = softmax_rows(a)
        else:  # a classifier without numpy; a non-finite row's probabilities are never sent: its request is refused
            bad = [i for i, r in enumerate(rows) if not all(map(math.isfinite, r))]
            skip = set(bad)
            probs, best = softmax_rows([[0.0] if i in skip else r for i, r in enumerate(rows)])
        self._b = (bad, probs, best, first)
        self.start, self.stop = 0, len(rows)

    def __len__(self) -> int:
        """Return the number of rows."""
        return self.stop - self.start

    def __getitem__(self, part: slice) -> Outputs:
        """Return the rows `part` (a slice) of these rows, sharing what was computed for the batch."""
        start, stop = part.start, part.stop
        if type(start) is not int or type(stop) is not int or part.step is not None or not 0 <= start <= stop <= self.stop - self.start:
            start, stop, _ = part.indices(self.stop - self.start)  # the general slice; the handler's own are plain [start:stop]
            stop = max(start, stop)
        view = _new(Outputs)
        view._b, view.start, view.stop = self._b, self.start + start, self.start + stop
        return view

    def first_non_finite(self):
        """Return the index (within these rows) of the first row holding NaN or ±Infinity, or None."""
        bad = self._b[0]
        if not bad:
            return None
        k = bisect.bisect_left(bad, self.start)
        return bad[k] - self.start if k < len(bad) and bad[k] < self.stop else None

    def probabilities(self) -> list:
        """Return each row's softmax probabilities (a classifier's rows)."""
        return self._b[1][self.start : self.stop]

    def best(self) -> list:
        """Return each row's most probable class index (a classifier's rows)."""
        return self._b[2][self.start : self.stop]

    def first_column(self) -> list:
        """Return each row's first value as a float (a regression's rows)."""
        return self._b[3][self.start : self.stop]
