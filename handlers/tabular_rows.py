"""The per-value checks of a tabular card's request body: every row form, each value checked alone, and a message
naming the row, the feature and what was expected for the first value that fails.

Stdlib only; shipped in every .mar beside the handler. This is the reference path: the one-pass check of plain rows
(plain_rows.py) gives the same rows and counts or declines, and a declined body comes here for its message. The
Open Inference tensor's shape rules (`v2_table`) live here once and serve both.
"""

from __future__ import annotations

import heapq
import math

try:  # installed package (tests, aiaas predict --local)
    from .contract_common import (V2_NUMERIC_TYPES, finite_float, json_number, ContractError, NonFiniteLiteral, ParsedRequest, check_names, clip_text,
                                  flatten_values, quoted, show_value, some_of)  # fmt: skip
    from .tensor_contract import input_tensors
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    from contract_common import (V2_NUMERIC_TYPES, finite_float, json_number, ContractError, NonFiniteLiteral, ParsedRequest, check_names, clip_text,
                                 flatten_values, quoted, show_value, some_of)  # fmt: skip
    from tensor_contract import input_tensors


def _number(v, where: str) -> float:
    """Return v as a finite float, or raise ContractError naming `where`."""
    return finite_float(json_number(v, where), where)


class _Encoding:
    """How one request's values become the program's floats: each feature's vocabulary (None: numeric), which
    features take null, and the unseen-category policy; built once per request from the card."""

    def __init__(self, features: list, strict: bool):
        self.names = [f["name"] for f in features]
        self.vocabs = [{c: float(k) for k, c in enumerate(f["categories"])} if f.get("kind") == "categorical" else None
                       for f in features]  # fmt: skip
        self.nullable = [f.get("impute") is not None for f in features]
        self.categories = [f.get("categories") for f in features]
        self.strict = strict
        self.plain = not any(self.nullable) and not any(v is not None for v in self.vocabs)
        self.categorical = [j for j, v in enumerate(self.vocabs) if v is not None]
        self.notes: dict = {}  # row index → the warnings of its unseen categories

    def note_unseen(self, i: int, values, coded: list) -> None:
        """Record a warning for each category of row i (`values`: as sent, by position) coded -1 (unseen); returns None."""
        for j in self.categorical:
            if coded[j] == -1.0:
                self.notes.setdefault(i, []).append(
                    f"feature {self.names[j]!r}: {show_value(values[j])} was not seen in training (all-zero encoding)")

    def value(self, v, j: int, where: str) -> float:
        """Return feature j's value as a float: the number, a category's code (-1: unseen), or NaN for an imputed null."""
        vocab = self.vocabs[j]
        if v is None and self.nullable[j]:
            return math.nan
        if vocab is None:
            return _number(v, where)
        if isinstance(v, bool) or isinstance(v, NonFiniteLiteral) or not isinstance(v, (str, int, float)):
            raise ContractError(f"{where}: {show_value(v)} is not a category; expected a string, one of {some_of(map(show_value, self.categories[j]), 5)}")
        code = vocab.get(v if isinstance(v, str) else str(v))
        if code is not None:
            return code
        if self.strict:
            raise ContractError(f"{where}: unknown category {show_value(v)}; known categories: {some_of(map(show_value, self.categories[j]), 5)}")
        return -1.0


def _check_row(row, i: int, enc: _Encoding, label: str) -> list:
    """Return one row as floats in feature order, from a list or a {name: value} object."""
    names = enc.names
    if isinstance(row, dict):
        check_names(row, names, f"{label}[{i}]", "feature")
        values, where = [row[n] for n in names], [f"{label}[{i}].{n}" for n in names]
    elif isinstance(row, list):
        if len(row) != len(names):
            raise ContractError(f"{label}[{i}]: {len(row)} values, expected {len(names)} ({some_of(names, 20)})")
        values, where = row, [f"{label}[{i}] feature {n!r}" for n in names]
    else:
        raise ContractError(f"{label}[{i}]: expected a list of {len(names)} numbers or an object of features, got {type(row).__name__}")
    if enc.plain:
        return [_number(v, w) for v, w in zip(values, where)]
    coded = [enc.value(v, j, w) for j, (v, w) in enumerate(zip(values, where))]
    if -1.0 in coded:
        enc.note_unseen(i, values, coded)
    return coded


def _check_rows(rows, enc: _Encoding, label: str, max_rows: int) -> list:
    """Return the checked rows of a list of rows, refusing empty, over-long and mixed named/positional batches."""
    if not isinstance(rows, list):
        raise ContractError(f"{label}: expected a list of rows, got {type(rows).__name__}")
    if not rows:
        raise ContractError(f"{label}: no rows; send at least one")
    if len(rows) > max_rows:
        raise ContractError(f"{label}: {len(rows)} rows, more than the limit of {max_rows} per request")
    kinds = {type(r) for r in rows if isinstance(r, (list, dict))}
    if len(kinds) > 1:
        raise ContractError(f"{label}: mixes named (object) and positional (list) rows; use one form")
    return [_check_row(r, i, enc, label) for i, r in enumerate(rows)]


def v2_table(body: dict, width: int, max_rows: int) -> tuple:
    """Return (the tensor object, N) of an Open Inference (v2) body holding one numeric [N, width] tensor (shape [width]:
    one row), or raise ContractError naming what is wrong; its `data` is not read."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ContractError("inputs: expected a list holding one tensor object {name, shape, datatype, data}")
    t = inputs[0]
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in t]
    if missing:
        raise ContractError(f"inputs[0]: missing field(s) {missing}")
    dtype = t["datatype"]
    if not isinstance(dtype, str) or dtype not in V2_NUMERIC_TYPES:
        shown = clip_text(repr(dtype)) if isinstance(dtype, str) else show_value(dtype)
        raise ContractError(f"inputs[0].datatype: {shown} is not a numeric type ({sorted(V2_NUMERIC_TYPES)})")
    shape = t["shape"]
    if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
        raise ContractError(f"inputs[0].shape: {show_value(shape, 60)} is not a list of integers")
    if len(shape) == 1:
        shape = [1, shape[0]]
    if len(shape) != 2 or shape[1] != width or shape[0] < 0:
        raise ContractError(f"inputs[0].shape: {clip_text(str(t['shape']), 60)}, expected [N, {width}]")
    n = shape[0]
    if n == 0:
        raise ContractError("inputs[0]: no rows; send at least one")
    if n > max_rows:
        raise ContractError(f"inputs[0]: {n} rows, more than the limit of {max_rows} per request")
    return t, n


def v2_id(body: dict):
    """Return a v2 body's request id when it is a JSON string (answered back), else None."""
    rid = body.get("id")
    return rid if isinstance(rid, str) and not isinstance(rid, NonFiniteLiteral) else None


def _parse_v2(body: dict, max_rows: int, enc: _Encoding) -> ParsedRequest:
    """Return the rows of an Open Inference (v2) body with one [N, features] input tensor."""
    cats = [n for n, v in zip(enc.names, enc.vocabs) if v is not None]
    if cats:
        raise ContractError(f"inputs: this model has categorical feature(s) {some_of(map(show_value, cats), 5)}, which a numeric v2 tensor cannot "
                            "carry; send {\"instances\": [{\"feature\": value, ...}]} with the category strings")  # fmt: skip
    d = len(enc.names)
    t, n = v2_table(body, d, max_rows)
    flat = flatten_values(t["data"], "inputs[0].data", (n * d, f"{{}} values for shape [{n}, {d}]"))
    names = enc.names
    rows = [[enc.value(flat[i * d + j], j, f"inputs[0].data row {i} feature {names[j]!r}") for j in range(d)] for i in range(n)]
    return ParsedRequest(rows, "v2", v2_id=v2_id(body))


def parse_rows(value, card: dict, limit: int) -> ParsedRequest:
    """Return the checked rows of a decoded tabular body, one value at a time, or raise ContractError naming what is wrong."""
    features = card["input"]["features"]
    enc = _Encoding(features, card["input"].get("unseen_category") == "error")
    if isinstance(value, dict):
        if "instances" in value and "inputs" in value:
            raise ContractError("body: has both 'instances' and 'inputs'; send one")
        if "instances" in value:
            parsed = ParsedRequest(_check_rows(value["instances"], enc, "instances", limit), "instances")
        elif "inputs" in value:
            parsed = _parse_v2(value, limit, enc)
        else:
            raise ContractError(f"body: object without 'instances' or 'inputs' (keys: [{some_of(heapq.nsmallest(10, value), 10, show=quoted, total=len(value))}])")
    elif isinstance(value, list):
        if value and all(not isinstance(v, (list, dict)) for v in value):
            value = [value]  # a bare list of numbers is one row
        parsed = ParsedRequest(_check_rows(value, enc, "rows", limit), "rows")
    else:
        raise ContractError(f"body: expected a JSON object or list, got {type(value).__name__}")
    parsed.out_of_range = count_out_of_range(parsed.rows, features)
    if not enc.plain:
        parsed.imputed = sum(1 for r in parsed.rows for v in r if v != v)
        parsed.unseen = sum(1 for r in parsed.rows for j in enc.categorical if r[j] == -1.0)
        if enc.notes:
            parsed.warnings = [enc.notes.get(i, []) for i in range(len(parsed.rows))]
    parsed.inputs = {input_tensors(card)[0]["name"]: parsed.rows}
    return parsed


def count_out_of_range(rows: list, features: list) -> int:
    """Return how many numeric values fall outside the [min, max] that training saw for their feature (a NaN, an
    imputed null, compares false and is not counted; neither are category codes)."""
    lo = [f["min"] if f.get("kind", "numeric") == "numeric" else -math.inf for f in features]
    hi = [f["max"] if f.get("kind", "numeric") == "numeric" else math.inf for f in features]
    return sum(1 for r in rows for j, v in enumerate(r) if v < lo[j] or v > hi[j])
