"""The one-pass check of plain rows: bodies of a plain card (numeric features only, none imputed) whose every value is
a plain int or float are checked and counted together, in one pass over all of them (numpy, or C-level maps for a
small batch).

Stdlib plus numpy, shipped in every .mar beside the handler. Both callers take it through `check_plain_batch`:
`aiaas_contract.parse_request` for one body (a batch of one), and the handler's `check_batch` hook for all bodies of
a TorchServe batch. Nothing here composes a message: a body it does not take, or a batch holding any value it
declines, goes to the per-value checks (tabular_rows.py), which give the same rows and counts or name what is wrong.
"""

from __future__ import annotations

import itertools
import operator

try:  # numpy ships beside torch in every worker we build; without it every body takes the per-value checks
    import numpy as np
except ImportError:  # pragma: no cover
    np = None

try:  # installed package (tests, aiaas predict --local)
    from . import batch_checks
    from .contract_common import ContractError, ParsedRequest
    from .tabular_rows import v2_id, v2_table
    from .tensor_contract import input_tensors
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    import batch_checks
    from contract_common import ContractError, ParsedRequest
    from tabular_rows import v2_id, v2_table
    from tensor_contract import input_tensors

_PLAIN_TYPES = batch_checks.PLAIN_TYPES
_LIST, _DICT = {list}, {dict}
_ROWS, _FORMAT = operator.itemgetter(0), operator.itemgetter(1)  # of plain_shape's (rows, format, v2 id)


class _Plan:
    """What a plain card implies for the one-pass check: the names, their set, a getter of a named row's values in
    feature order, each feature's training range, and the name of the input tensor the rows fill."""

    def __init__(self, card: dict):
        features = card["input"]["features"]
        self.key = _plan_key(card)
        self.tensor = input_tensors(card)[0]["name"]
        self.width = len(features)
        self.names = [f["name"] for f in features]
        self.nameset = set(self.names)
        self.get = operator.itemgetter(*self.names) if self.width > 1 else (lambda r, n=self.names[0]: (r[n],))
        lo, hi = np.array([f["min"] for f in features], dtype=np.float64), np.array([f["max"] for f in features], dtype=np.float64)
        self.lo, self.hi = (lo, lo.tolist()), (hi, hi.tolist())  # for numpy, and for batch_checks' small batches


def _plan_key(card: dict) -> tuple:
    """Return what a _Plan depends on in the card (the tensor name, a copy of each feature's fields), so that a card
    changed in place is planned again; it compares equal to (tensor name, the live features list) while unchanged."""
    return card["input"].get("tensor_name"), [dict(f) for f in card["input"]["features"]]


_PLANS: dict = {}  # id(features) → (features, _Plan or None); the features list is held so its id is not reused


def plain_plan(card: dict):
    """Return the cached _Plan of a tabular card, or None when the card is not plain — numeric features only, none
    imputed — or numpy is absent: every body then takes the per-value checks."""
    features = card["input"]["features"]
    hit = _PLANS.get(id(features))
    # Compared against the live list (dict equality, in C): no key is built per request.
    if hit is not None and hit[0] is features and (hit[1] is None or hit[1].key == (card["input"].get("tensor_name"), features)):
        return hit[1]
    plan = None
    try:
        if np is not None and features and all(f.get("kind", "numeric") == "numeric" and f.get("impute") is None
                                               and {type(f["min"]), type(f["max"])} <= _PLAIN_TYPES for f in features):  # fmt: skip
            plan = _Plan(card)
    except (TypeError, ValueError, KeyError, OverflowError, AttributeError):  # a card the per-value path will judge
        plan = None
    if len(_PLANS) >= 64:
        _PLANS.clear()
    _PLANS[id(features)] = (features, plan)
    return plan


def plain_shape(value, plan: _Plan, limit: int):
    """Return (rows, format, v2 id) of a decoded body in a form the one-pass check takes, or None (the per-value checks
    then judge it); its values are not looked at. Rows: an instances body's or bare rows' 1 to `limit` lists of the
    plan's width, or objects of exactly its names (as value tuples in feature order); a v2 body's one [N, width]
    tensor of plain numbers as a float64 array."""
    if type(value) is dict:
        if "inputs" in value:
            return None if "instances" in value else _v2_shape(value, plan, limit)
        if "instances" not in value:
            return None
        rows, fmt = value["instances"], "instances"
    elif type(value) is list:
        rows, fmt = value, "rows"
        if value and set(map(type, value)) <= _PLAIN_TYPES:
            rows = [value]  # a bare list of numbers is one row
    else:
        return None
    if type(rows) is not list or not rows or len(rows) > limit:
        return None
    kinds = set(map(type, rows))
    if kinds == _LIST:
        return (rows, fmt, None) if set(map(len, rows)) == {plan.width} else None
    if kinds == _DICT:
        nameset = plan.nameset
        return (list(map(plan.get, rows)), fmt, None) if all(r.keys() == nameset for r in rows) else None
    return None  # mixed forms, or rows that are neither lists nor objects


def _v2_shape(body: dict, plan: _Plan, limit: int):
    """Return (float64 [N, width] array, "v2", id) of an Open Inference body the shape rules (tabular_rows.v2_table)
    accept and whose data are plain numbers, else None."""
    try:
        t, n = v2_table(body, plan.width, limit)
    except ContractError:  # the per-value checks raise it again, with its message
        return None
    a = batch_checks.v2_data(t["data"], n, plan.width)
    return None if a is None else (a, "v2", v2_id(body))


def check_plain_batch(values: list, card: dict, limit: int) -> list:
    """Return, for each decoded body of `values`, its ParsedRequest when it holds plain rows of a plain card, every
    value checked (a plain int or float within float32's range) and counted in one pass over all of them; None for
    every other body, and for all of them when any value fails (each body's own checks then find which and name it).

    Each ParsedRequest's rows are the per-value path's (lists of floats), its `array` (the batch's float32 rows, first
    row, end row) what the forward stacks."""
    plan = plain_plan(card)
    if plan is None:
        return [None] * len(values)
    shapes = [plain_shape(v, plan, limit) for v in values]
    if None not in shapes:  # the common batch: every body plain
        return _check(shapes, plan) or [None] * len(values)
    taken = [s for s in shapes if s is not None]
    checked = _check(taken, plan) if taken else None
    if checked is None:
        return [None] * len(values)
    parsed = iter(checked)
    return [None if s is None else next(parsed) for s in shapes]


def _check(shapes: list, plan: _Plan):
    """Return the ParsedRequests of plain_shape's (rows, format, v2 id) triples, every value checked in one pass, or None."""
    if "v2" not in map(_FORMAT, shapes):  # lists of rows only
        rows = list(itertools.chain.from_iterable(map(_ROWS, shapes)))
        if len(rows) * plan.width <= batch_checks.SMALL:  # a small batch: C-level maps, one numpy call
            rows = batch_checks.small_rows(rows)
            return None if rows is None else _split(shapes, rows, None, np.array(rows, dtype=np.float32), plan)
        a = batch_checks.plain_array(rows)
    else:  # a v2 body's array among them
        parts = [s[0] if type(s[0]) is not list else batch_checks.plain_array(s[0]) for s in shapes]
        a = None if any(p is None for p in parts) else parts[0] if len(parts) == 1 else np.concatenate(parts)
    if a is None or not batch_checks.within_float32(a):
        return None
    return _split(shapes, a.tolist(), a, a.astype(np.float32), plan)


def _split(shapes: list, rows: list, a, batch, plan: _Plan) -> list:
    """Return one ParsedRequest per shape of the batch's checked rows (lists of floats; a: the same as a float64 array,
    None for a small batch; batch: the float32 rows), each with its own out-of-range count."""
    counts = batch_checks.count_outside(a, rows, plan.lo, plan.hi, list(map(len, map(_ROWS, shapes))))
    out, start, tensor = [], 0, plan.tensor
    for (values, fmt, rid), outside in zip(shapes, counts):
        stop = start + len(values)
        part = rows[start:stop]
        # positional: ParsedRequest's field order (rows, fmt, out_of_range, v2_id, imputed, unseen, warnings, inputs,
        # array); keywords cost several times more on this path, once per request
        out.append(ParsedRequest(part, fmt, outside, rid, 0, 0, None, {tensor: part}, (batch, start, stop)))
        start = stop
    return out
