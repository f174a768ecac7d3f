"""The input contract of a served model, shared by the TorchServe handler and the aiaas library.

Torch-and-stdlib only (plus numpy, which ships beside torch, for the one-pass check of plain batches; without it
every value takes the per-value checks): this file is shipped inside every .mar beside the handler, where aiaas_torch
may be absent. It turns a request body into checked rows (or a `ContractError` naming the row, the feature and what
was expected), turns model outputs back into the answer for that body's format, and builds
the error body of a refused request. The tensor contract of imported models is tensor_contract.py, what both share
contract_common.py; checking files (integrity.py) and picking the program (programs.py) live beside it.

Every card's input is a list of named tensors (`input_tensors`): name, dtype, shape with the batch dimension
written -1, and the value range seen in training or calibration. A tabular card is one instance of it: one float32
input [-1, F] whose F columns are the named `features`; its row forms below are its way to fill that one input.

Request bodies, one rule each (tabular cards):
- {"instances": [[...], ...]} or {"instances": [{"name": value, ...}, ...]}  → {"predictions": [...], ...}
- {"inputs": [{"name", "shape", "datatype", "data"}]} (Open Inference v2, one [N, features] tensor) → v2 answer
- a bare list of lists is rows; a bare list of numbers is ONE row.
An instances or rows answer carries "warnings" (per row, a list of notes) only when some row has one: a category the
card's vocabulary does not hold (answered with the all-zero encoding, and counted in UnseenCategories).
Tensor cards (imported models, see `parse_tensor_request`): v2 bodies with every named input, or `instances`
whose items are one sample (nested lists of the sample shape) or objects of named inputs.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import operator

try:  # numpy ships beside torch in every worker we build; without it every batch takes the per-value checks
    import numpy as np
except ImportError:  # pragma: no cover
    np = None

try:  # a C JSON parser, several times faster than json on request bodies; a worker without it parses with json
    import orjson
except ImportError:  # pragma: no cover
    orjson = None

try:  # installed package (tests, aiaas predict --local)
    from . import batch_checks
    from .contract_common import (DEFAULT_MAX_ROWS, FLOAT32_MAX, V2_NUMERIC_TYPES, ContractError, is_tabular, ParsedRequest, UnsupportedMediaType,
                                  check_names, clip_text, flatten_values, NonFiniteLiteral, quoted, refuse_non_finite, show_value, some_of, v2_answer,
                                  error_body)  # fmt: skip
    from .tensor_contract import (BATCH, DTYPES, answer_tensors, parse_tensor_request, check_tensor_specs, input_tensors,
                                  output_tensors, parse_v2_tensors, warmup_inputs)  # fmt: skip
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    import batch_checks
    from contract_common import (DEFAULT_MAX_ROWS, FLOAT32_MAX, V2_NUMERIC_TYPES, ContractError, is_tabular, ParsedRequest, UnsupportedMediaType,
                                 check_names, clip_text, flatten_values, NonFiniteLiteral, quoted, refuse_non_finite, show_value, some_of, v2_answer,
                                 error_body)  # fmt: skip
    from tensor_contract import (BATCH, DTYPES, answer_tensors, parse_tensor_request, check_tensor_specs, input_tensors,
                                 output_tensors, parse_v2_tensors, warmup_inputs)  # fmt: skip

# The contract's one entry for the handler, aiaas_torch and the tests: its own functions, the shared error and request
# (contract_common.py) and the tensor contract's card helpers (tensor_contract.py).
__all__ = ["DEFAULT_MAX_ROWS", "ContractError", "UnsupportedMediaType", "ParsedRequest", "error_body", "has_long_integer",
           "decode_body", "check_content_type", "parse_request", "count_out_of_range", "answer", "BATCH", "DTYPES",
           "input_tensors", "output_tensors", "check_tensor_specs", "parse_v2_tensors", "warmup_inputs"]  # fmt: skip


def _mark_constant(name: str) -> NonFiniteLiteral:
    """Return the marker for a NaN, Infinity or -Infinity literal."""
    return NonFiniteLiteral(name)


# orjson reads an integer literal of over 64 bits as a float, where json keeps it an int (which int dtypes and the
# messages need): a body holding 19 digits in a row that follow neither a digit nor a '.' (an integer literal, an
# exponent or text) takes json's path. One C pass: digits become '1', '.' stays, every other byte becomes '0'.
_DIGIT_CLASSES = bytes(0x31 if 0x30 <= b <= 0x39 else 0x2E if b == 0x2E else 0x30 for b in range(256))
_LONG_INTEGER = b"0" + b"1" * 19


def has_long_integer(body: bytes) -> bool:
    """Return True when a bytes body may hold an integer literal of 19 digits or more (orjson would read a float)."""
    classes = body.translate(_DIGIT_CLASSES)
    return classes.find(_LONG_INTEGER) >= 0 or classes.startswith(_LONG_INTEGER[1:])


def _orjson_value(body: bytes):
    """Return orjson's value of a bytes body where it is json's own, else None (None is then json's to decide)."""
    if has_long_integer(body):
        return None
    try:
        return orjson.loads(body)
    except Exception:  # any refusal (NaN/Infinity, 1e400, not UTF-8, a BOM, bad JSON, deep nesting): json decides
        return None


def decode_body(body):
    """Return the JSON value of a request body given as bytes, str, or already-decoded JSON; any failure is a ContractError.

    A bytes body goes through orjson first where it gives json's own value; every body orjson refuses goes through
    json, whose value or message stands. One difference remains: nesting of about 990-1,024 levels, which json
    refuses deep in a call stack ("nested too deeply"), reaches the contract's own checks (still a 400 naming it).
    """
    if orjson is not None and isinstance(body, (bytes, bytearray)):
        value = _orjson_value(body)
        if value is not None:
            return value
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ContractError(f"body: not UTF-8 text (byte {e.start})") from None
    if isinstance(body, str):
        if not body.strip():
            raise ContractError("body: empty; expected JSON such as {\"instances\": [[...]]}")
        try:
            return json.loads(body, parse_constant=_mark_constant)
        except RecursionError:
            raise ContractError("body: JSON nested too deeply") from None
        except json.JSONDecodeError as e:
            raise ContractError(f"body: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        except ValueError as e:  # valid JSON that Python refuses, e.g. an integer literal of over 4,300 digits
            raise ContractError(f"body: cannot be read ({str(e).split(';')[0][:200]})") from None
    return body


_USUAL_JSON_TYPES = {"application/json", "application/json; charset=utf-8", "application/json;charset=utf-8"}


def check_content_type(value) -> None:
    """Raise UnsupportedMediaType unless a request's Content-Type is JSON (application/json, */*+json) in UTF-8, or absent."""
    if value is None or (type(value) is str and value in _USUAL_JSON_TYPES):  # what nearly every request sends: no parsing
        return
    media, *params = [part.strip().lower() for part in str(value).split(";")]
    charsets = [p.split("=", 1)[1].strip().strip('"') for p in params if p.startswith("charset=")]
    if any(c not in ("utf-8", "utf8") for c in charsets):
        raise UnsupportedMediaType(f"Content-Type: charset {clip_text(charsets[0])!r} is not supported; send JSON in UTF-8")
    if media in ("", "application/json") or (media.startswith("application/") and media.endswith("+json")):
        return
    raise UnsupportedMediaType(
        f"Content-Type: {str(value)[:80]!r} is not supported; send the JSON body with Content-Type: application/json"
    )


def _number(v, where: str) -> float:
    """Return v as a finite float, or raise ContractError naming `where`."""
    if isinstance(v, NonFiniteLiteral):
        raise ContractError(f"{where}: {v} is not a valid JSON number (NaN and Infinity are not allowed)")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ContractError(f"{where}: {show_value(v)} is not a number")
    try:
        f = float(v)
    except OverflowError:
        raise ContractError(f"{where}: {str(v)[:40]}… is too large for float32") from None
    if not math.isfinite(f) or abs(f) > FLOAT32_MAX:
        raise ContractError(f"{where}: {v!r} is not a finite float32 number")
    return f


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
        if enc.plain:
            return [_number(row[n], f"{label}[{i}].{n}") for n in names]
        coded = [enc.value(row[n], j, f"{label}[{i}].{n}") for j, n in enumerate(names)]
        if -1.0 in coded:
            enc.note_unseen(i, [row[n] for n in names], coded)
        return coded
    if isinstance(row, list):
        if len(row) != len(names):
            raise ContractError(f"{label}[{i}]: {len(row)} values, expected {len(names)} ({some_of(names, 20)})")
        if enc.plain:
            return [_number(v, f"{label}[{i}] feature {names[j]!r}") for j, v in enumerate(row)]
        coded = [enc.value(v, j, f"{label}[{i}] feature {names[j]!r}") for j, v in enumerate(row)]
        if -1.0 in coded:
            enc.note_unseen(i, row, coded)
        return coded
    raise ContractError(f"{label}[{i}]: expected a list of {len(names)} numbers or an object of features, got {type(row).__name__}")


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


def _parse_v2(body: dict, features: list, max_rows: int, enc: _Encoding) -> ParsedRequest:
    """Return the rows of an Open Inference (v2) body with one [N, features] input tensor."""
    cats = [n for n, v in zip(enc.names, enc.vocabs) if v is not None]
    if cats:
        raise ContractError(f"inputs: this model has categorical feature(s) {some_of(map(show_value, cats), 5)}, which a numeric v2 tensor cannot "
                            "carry; send {\"instances\": [{\"feature\": value, ...}]} with the category strings")  # fmt: skip
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
    d = len(features)
    if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
        raise ContractError(f"inputs[0].shape: {show_value(shape, 60)} is not a list of integers")
    if len(shape) == 1:
        shape = [1, shape[0]]
    if len(shape) != 2 or shape[1] != d or shape[0] < 0:
        raise ContractError(f"inputs[0].shape: {clip_text(str(t['shape']), 60)}, expected [N, {d}]")
    n = shape[0]
    if n == 0:
        raise ContractError("inputs[0]: no rows; send at least one")
    if n > max_rows:
        raise ContractError(f"inputs[0]: {n} rows, more than the limit of {max_rows} per request")
    flat = flatten_values(t["data"], "inputs[0].data", (n * d, f"{{}} values for shape [{n}, {d}]"))
    names = [f["name"] for f in features]
    rows = [[enc.value(flat[i * d + j], j, f"inputs[0].data row {i} feature {names[j]!r}") for j in range(d)] for i in range(n)]
    rid = body.get("id")
    return ParsedRequest(rows, "v2", v2_id=rid if isinstance(rid, str) and not isinstance(rid, NonFiniteLiteral) else None)


def parse_request(body, card: dict, max_rows: int | None = None) -> ParsedRequest:
    """Return the checked rows of one request body against the card's input contract, or raise ContractError."""
    limit = max_rows or card["input"].get("max_rows") or DEFAULT_MAX_ROWS
    value = decode_body(body)
    if not is_tabular(card):
        return parse_tensor_request(value, card, limit)
    return _fast_parse(value, card, limit) or _parse_rows(value, card, limit)


def _parse_rows(value, card: dict, limit: int) -> ParsedRequest:
    """Return the checked rows of a decoded tabular body, one value at a time, or raise ContractError naming what is wrong."""
    features = card["input"]["features"]
    enc = _Encoding(features, card["input"].get("unseen_category") == "error")
    if isinstance(value, dict):
        if "instances" in value and "inputs" in value:
            raise ContractError("body: has both 'instances' and 'inputs'; send one")
        if "instances" in value:
            parsed = ParsedRequest(_check_rows(value["instances"], enc, "instances", limit), "instances")
        elif "inputs" in value:
            parsed = _parse_v2(value, features, limit, enc)
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
        cat = [j for j, v in enumerate(enc.vocabs) if v is not None]
        parsed.unseen = sum(1 for r in parsed.rows for j in cat if r[j] == -1.0)
        if enc.notes:
            parsed.warnings = [enc.notes.get(i, []) for i in range(len(parsed.rows))]
    parsed.inputs = {input_tensors(card)[0]["name"]: parsed.rows}
    return parsed


_PLAIN_TYPES = batch_checks.PLAIN_TYPES


class _Plan:
    """What a plain card (numeric features only, none imputed) implies for checking a batch in one pass: the
    names, their set, a getter of a named row's values in feature order, each feature's training range, and the
    name of the input tensor the rows fill."""

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
    """Return the cached _Plan of a tabular card (what it implies for the one-pass checks), or None when the card is
    not plain — numeric features only, none imputed — or numpy is absent: every body then takes the per-value checks."""
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
    """Return (rows, fmt) of a decoded instances body or bare rows whose rows are lists of the plan's width, or
    objects of exactly its names (given as value tuples in feature order), 1 to `limit` of them: the shape the
    one-pass checks take. None sends the body to the per-value checks; the values themselves are not looked at."""
    if type(value) is dict:
        if "instances" not in value or "inputs" in value:
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
        return (rows, fmt) if set(map(len, rows)) == {plan.width} else None
    if kinds == _DICT:
        nameset = plan.nameset
        return (list(map(plan.get, rows)), fmt) if all(r.keys() == nameset for r in rows) else None
    return None  # mixed forms, or rows that are neither lists nor objects


_LIST, _DICT = {list}, {dict}


def check_plain_batch(shapes: list, plan: _Plan, alone: bool = True):
    """Return (ParsedRequest per request, their rows as one float32 [N, F] array, how many values fall outside the
    training range) for several requests' rows as plain_shape gives them, every value checked (a plain int or float
    within float32's range) and counted in one pass over the whole batch; None when any value fails, so that each
    request's own checks find which and name it. Each ParsedRequest's out_of_range stays 0 (the batch's count is the
    total, what the metrics record); alone=False (other requests share the forward): each also carries its rows'
    float64 view for stacking."""
    rows = list(itertools.chain.from_iterable(values for values, _ in shapes))
    if len(rows) * plan.width <= batch_checks.SMALL:  # a small batch: C-level maps, one numpy call (as _fast_parse)
        a = batch_checks.small_rows(rows)
        if a is None:
            return None
        outside, batch = batch_checks.count_outside(None, a, plan.lo, plan.hi), np.array(a, dtype=np.float32)
    else:
        a = batch_checks.plain_array(rows)
        if a is None or not batch_checks.within_float32(a):
            return None
        outside, batch = batch_checks.count_outside(a, rows, plan.lo, plan.hi), a.astype(np.float32)
    parsed, start, tensor = [], 0, plan.tensor
    for values, fmt in shapes:
        p = ParsedRequest(values, fmt)
        p.inputs = {tensor: values}
        if not alone:
            stop = start + len(values)
            p.array = a[start:stop]  # float64 rows (an array, or a small batch's lists of floats) for stacking
            start = stop
        parsed.append(p)
    return parsed, batch, outside


def _fast_parse(value, card: dict, limit: int):
    """Return the ParsedRequest of an instances body, bare rows or a v2 body whose every value is a plain
    in-range-of-float32 int or float, checked and counted in one vectorised pass; None sends the body to the
    per-value checks, which compose the message of whatever is wrong."""
    plan = plain_plan(card)
    if plan is None:
        return None
    if isinstance(value, dict) and "inputs" in value:
        a = batch_checks.v2_array(value, plan.width, limit, V2_NUMERIC_TYPES)
        rid = value.get("id")
        return None if a is None else _fast_parsed(a, "v2", plan, rid if type(rid) is str else None)
    shape = plain_shape(value, plan, limit)
    if shape is None:
        return None
    values, fmt = shape
    if len(values) * plan.width <= batch_checks.SMALL:  # the common small request: no numpy call of its own
        rows = batch_checks.small_rows(values)
        return None if rows is None else _checked(rows, None, fmt, plan)
    a = batch_checks.plain_array(values)
    return None if a is None else _fast_parsed(a, fmt, plan)


def _fast_parsed(a, fmt: str, plan: _Plan, v2_id: str | None = None):
    """Return the ParsedRequest of rows (a: float64 [N, F]) within float32's range, their out-of-range values
    counted, or None (a value beyond float32, NaN or infinite) for the per-value checks."""
    rows = batch_checks.float32_rows(a)
    return None if rows is None else _checked(rows, a, fmt, plan, v2_id)


def _checked(rows: list, a, fmt: str, plan: _Plan, v2_id: str | None = None) -> ParsedRequest:
    """Return the ParsedRequest of rows the one-pass check passed (a: their float64 array, None for a small batch)."""
    parsed = ParsedRequest(rows, fmt, batch_checks.count_outside(a, rows, plan.lo, plan.hi), v2_id=v2_id,
                           array=rows if a is None else a)  # fmt: skip
    parsed.inputs = {plan.tensor: rows}
    return parsed


def count_out_of_range(rows: list, features: list) -> int:
    """Return how many numeric values fall outside the [min, max] that training saw for their feature (a NaN, an
    imputed null, compares false and is not counted; neither are category codes)."""
    lo = [f["min"] if f.get("kind", "numeric") == "numeric" else -math.inf for f in features]
    hi = [f["max"] if f.get("kind", "numeric") == "numeric" else math.inf for f in features]
    return sum(1 for r in rows for j, v in enumerate(r) if v < lo[j] or v > hi[j])


def answer(card: dict, parsed: ParsedRequest, outputs: list, model_name: str, model_version: str) -> dict:
    """Return the JSON answer for one request: `outputs` is the model's output rows for its rows, in order, or
    {output name: per-sample outputs} as the handler's forward returns them."""
    out = card["output"]
    if not is_tabular(card):
        return answer_tensors(card, parsed, outputs, model_name, model_version)
    if isinstance(outputs, dict):
        outputs = outputs[output_tensors(card)[0]["name"]]
    if not isinstance(outputs, batch_checks.Outputs):  # rows from a caller other than the handler's batch forward
        outputs = batch_checks.Outputs(outputs, out["task"] == "classification")
    bad = outputs.first_non_finite()
    if bad is not None:
        refuse_non_finite(None, parsed, "inputs[0].data row", bad)
    if out["task"] == "classification":
        classes = out["classes"]
        probs = outputs.probabilities()
        labels = [classes[k] for k in outputs.best()]
        if parsed.fmt == "v2":
            label_type = "BYTES" if any(isinstance(c, str) for c in classes) else "INT64"
            outs = [
                {"name": "predictions", "shape": [len(labels)], "datatype": label_type, "data": labels},
                {"name": "probabilities", "shape": [len(probs), len(classes)], "datatype": "FP32", "data": [p for row in probs for p in row]},
            ]
            return v2_answer(parsed, outs, model_name, model_version)
        return _noted({"predictions": labels, "probabilities": probs, "classes": classes, "model": model_name, "version": model_version},
                      parsed)  # fmt: skip
    values = outputs.first_column()
    if parsed.fmt == "v2":
        return v2_answer(parsed, [{"name": out["target"], "shape": [len(values)], "datatype": "FP32", "data": values}], model_name, model_version)
    return _noted({"predictions": values, "model": model_name, "version": model_version}, parsed)


def _noted(answer: dict, parsed: ParsedRequest) -> dict:
    """Return the answer with `warnings` (one list per row) after `predictions`'s fields when some row has one."""
    if parsed.warnings:
        answer["warnings"] = parsed.warnings
    return answer
