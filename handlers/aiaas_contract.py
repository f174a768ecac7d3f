"""The input contract of a served model, shared by the TorchServe handler and the aiaas library.

Torch-and-stdlib only (plus numpy, which ships beside torch, for the one-pass check of plain batches; without it
every value takes the per-value checks): this file is shipped inside every .mar beside the handler, where aiaas_torch
may be absent. It turns a request body into checked rows (or a `ContractError` naming the row, the feature and what
was expected), turns model outputs back into the answer for that body's format, and builds
the error body of a refused request. Checking files (integrity.py) and picking the program (programs.py) live beside it.

Every card's input is a list of named tensors (`input_tensors`): name, dtype, shape with the batch dimension
written -1, and the value range seen in training or calibration. A tabular card is one instance of it: one float32
input [-1, F] whose F columns are the named `features`; its row forms below are its way to fill that one input.

Request bodies, one rule each (tabular cards):
- {"instances": [[...], ...]} or {"instances": [{"name": value, ...}, ...]}  → {"predictions": [...], ...}
- {"inputs": [{"name", "shape", "datatype", "data"}]} (Open Inference v2, one [N, features] tensor) → v2 answer
- a bare list of lists is rows; a bare list of numbers is ONE row.
Tensor cards (imported models, see `_parse_tensor_request`): v2 bodies with every named input, or `instances`
whose items are one sample (nested lists of the sample shape) or objects of named inputs.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
from dataclasses import dataclass

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
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    import batch_checks

DEFAULT_MAX_ROWS = 10_000
V2_NUMERIC_TYPES = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}


class ContractError(ValueError):
    """A request that breaks the model's input contract; its message is the 400 answer."""

    status = 400


class UnsupportedMediaType(ContractError):
    """A request body sent with a Content-Type other than JSON; its message is the 415 answer."""

    status = 415


@dataclass
class ParsedRequest:
    """Checked rows of one request, the body format to answer in, and how many values fell outside training range."""

    rows: list  # the samples of the first input, each a flat list (tabular: the rows)
    fmt: str  # "instances" | "v2" | "rows"
    out_of_range: int = 0
    v2_id: str | None = None
    imputed: int = 0  # nulls sent for features the card imputes (NaN in rows)
    unseen: int = 0  # categories the card's vocabulary does not hold (code -1 in rows)
    inputs: dict | None = None  # input name → its samples, each a flat list of values in the card's dtype
    array: object = None  # the one-pass check's rows (float64 array [N, F], or a small batch's float lists) for the forward


class _NonFiniteLiteral(str):
    """A NaN/Infinity literal (not JSON, but Python's json accepts it): kept as a marker so that the check of
    the value it stands in for refuses it with the row and feature named."""


_NonFiniteLiteral.__name__ = "NaN/Infinity literal"  # what "expected ..., got <type>" messages show


def _mark_constant(name: str) -> _NonFiniteLiteral:
    """Return the marker for a NaN, Infinity or -Infinity literal."""
    return _NonFiniteLiteral(name)


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


def _clip(text: str, limit: int = 40) -> str:
    """Return text cut to `limit` characters, with an ellipsis when it was longer (error messages echo bodies)."""
    return text if len(text) <= limit else text[:limit] + "…"


def _some(names, k: int, sep: str = ", ") -> str:
    """Return the first k names joined by sep, then " … and N more" when there are more: messages never cut a list silently."""
    names = [str(n) for n in names]
    shown = sep.join(names[:k])
    return shown if len(names) <= k else f"{shown} … and {len(names) - k} more"


def _show(value, limit: int = 40, depth: int = 2) -> str:
    """Return a short JSON-like rendering of a request value for an error message (bounded depth and length)."""
    if isinstance(value, list) and value and depth > 0:
        inner = [_show(v, limit, depth - 1) for v in value[:5]]
        return _clip("[" + ", ".join(inner + ["…"] * (len(value) > 5)) + "]", limit)
    if isinstance(value, dict) and value and depth > 0:
        inner = [f"{_show(k)}: {_show(v, limit, depth - 1)}" for k, v in itertools.islice(value.items(), 5)]
        return _clip("{" + ", ".join(inner + ["…"] * (len(value) > 5)) + "}", limit)
    if isinstance(value, (list, dict)):
        return ("[…]" if value else "[]") if isinstance(value, list) else ("{…}" if value else "{}")
    if isinstance(value, str):
        return _clip(json.dumps(value[: limit + 1]), limit)
    if isinstance(value, (bytes, bytearray)):
        return _clip(repr(bytes(value[: limit + 1])), limit)
    return _clip(json.dumps(value) if isinstance(value, (int, float, bool)) or value is None else repr(value), limit)


_USUAL_JSON_TYPES = {"application/json", "application/json; charset=utf-8", "application/json;charset=utf-8"}


def check_content_type(value) -> None:
    """Raise UnsupportedMediaType unless a request's Content-Type is JSON (application/json, */*+json) in UTF-8, or absent."""
    if value is None or (type(value) is str and value in _USUAL_JSON_TYPES):  # what nearly every request sends: no parsing
        return
    media, *params = [part.strip().lower() for part in str(value).split(";")]
    charsets = [p.split("=", 1)[1].strip().strip('"') for p in params if p.startswith("charset=")]
    if any(c not in ("utf-8", "utf8") for c in charsets):
        raise UnsupportedMediaType(f"Content-Type: charset {_clip(charsets[0])!r} is not supported; send JSON in UTF-8")
    if media in ("", "application/json") or (media.startswith("application/") and media.endswith("+json")):
        return
    raise UnsupportedMediaType(
        f"Content-Type: {str(value)[:80]!r} is not supported; send the JSON body with Content-Type: application/json"
    )


def _number(v, where: str) -> float:
    """Return v as a finite float, or raise ContractError naming `where`."""
    if isinstance(v, _NonFiniteLiteral):
        raise ContractError(f"{where}: {v} is not a valid JSON number (NaN and Infinity are not allowed)")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ContractError(f"{where}: {_show(v)} is not a number")
    try:
        f = float(v)
    except OverflowError:
        raise ContractError(f"{where}: {str(v)[:40]}… is too large for float32") from None
    if not math.isfinite(f) or abs(f) > 3.4e38:
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

    def value(self, v, j: int, where: str) -> float:
        """Return feature j's value as a float: the number, a category's code (-1: unseen), or NaN for an imputed null."""
        vocab = self.vocabs[j]
        if v is None and self.nullable[j]:
            return math.nan
        if vocab is None:
            return _number(v, where)
        if isinstance(v, bool) or isinstance(v, _NonFiniteLiteral) or not isinstance(v, (str, int, float)):
            raise ContractError(f"{where}: {_show(v)} is not a category; expected a string, one of {_some(map(_show, self.categories[j]), 5)}")
        code = vocab.get(v if isinstance(v, str) else str(v))
        if code is not None:
            return code
        if self.strict:
            raise ContractError(f"{where}: unknown category {_show(v)}; known categories: {_some(map(_show, self.categories[j]), 5)}")
        return -1.0


def _check_row(row, i: int, enc: _Encoding, label: str) -> list:
    """Return one row as floats in feature order, from a list or a {name: value} object."""
    names = enc.names
    if isinstance(row, dict):
        _check_names(row, names, f"{label}[{i}]", "feature")
        if enc.plain:
            return [_number(row[n], f"{label}[{i}].{n}") for n in names]
        return [enc.value(row[n], j, f"{label}[{i}].{n}") for j, n in enumerate(names)]
    if isinstance(row, list):
        if len(row) != len(names):
            raise ContractError(f"{label}[{i}]: {len(row)} values, expected {len(names)} ({_some(names, 20)})")
        if enc.plain:
            return [_number(v, f"{label}[{i}] feature {names[j]!r}") for j, v in enumerate(row)]
        return [enc.value(v, j, f"{label}[{i}] feature {names[j]!r}") for j, v in enumerate(row)]
    raise ContractError(f"{label}[{i}]: expected a list of {len(names)} numbers or an object of features, got {type(row).__name__}")


def _check_names(obj: dict, names: list, where: str, what: str) -> None:
    """Raise ContractError when an object of named values has a name not in `names` or lacks one of them."""
    unknown = [k for k in obj if k not in names]
    if unknown:
        raise ContractError(f"{where}: unknown {what}(s) [{_some([repr(_clip(k)) for k in unknown], 5)}]; expected [{_some(map(repr, names), 20)}]")
    missing = [n for n in names if n not in obj]
    if missing:
        raise ContractError(f"{where}: missing {what}(s) [{_some(map(repr, missing), 5)}]")


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


def _flatten(data, where: str) -> list:
    """Return nested lists flattened to one list (v2 allows nested data)."""
    if np is not None and isinstance(data, np.ndarray):  # a binary-extension tensor (protocols.py)
        return data.ravel().tolist()
    if not isinstance(data, list):
        raise ContractError(f"{where}: expected a list, got {type(data).__name__}")
    out: list = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                if len(stack) > 32:
                    raise ContractError(f"{where}: nested too deeply")
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def _parse_v2(body: dict, features: list, max_rows: int, enc: _Encoding) -> ParsedRequest:
    """Return the rows of an Open Inference (v2) body with one [N, features] input tensor."""
    cats = [n for n, v in zip(enc.names, enc.vocabs) if v is not None]
    if cats:
        raise ContractError(f"inputs: this model has categorical feature(s) {_some(map(_show, cats), 5)}, which a numeric v2 tensor cannot "
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
        shown = _clip(repr(dtype)) if isinstance(dtype, str) else _show(dtype)
        raise ContractError(f"inputs[0].datatype: {shown} is not a numeric type ({sorted(V2_NUMERIC_TYPES)})")
    shape = t["shape"]
    d = len(features)
    if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
        raise ContractError(f"inputs[0].shape: {_show(shape, 60)} is not a list of integers")
    if len(shape) == 1:
        shape = [1, shape[0]]
    if len(shape) != 2 or shape[1] != d or shape[0] < 0:
        raise ContractError(f"inputs[0].shape: {_clip(str(t['shape']), 60)}, expected [N, {d}]")
    n = shape[0]
    if n == 0:
        raise ContractError("inputs[0]: no rows; send at least one")
    if n > max_rows:
        raise ContractError(f"inputs[0]: {n} rows, more than the limit of {max_rows} per request")
    flat = _flatten(t["data"], "inputs[0].data")
    if len(flat) != n * d:
        raise ContractError(f"inputs[0].data: {len(flat)} values for shape [{n}, {d}]")
    names = [f["name"] for f in features]
    rows = [[enc.value(flat[i * d + j], j, f"inputs[0].data row {i} feature {names[j]!r}") for j in range(d)] for i in range(n)]
    rid = body.get("id")
    return ParsedRequest(rows, "v2", v2_id=rid if isinstance(rid, str) and not isinstance(rid, _NonFiniteLiteral) else None)


def parse_request(body, card: dict, max_rows: int | None = None) -> ParsedRequest:
    """Return the checked rows of one request body against the card's input contract, or raise ContractError."""
    limit = max_rows or card["input"].get("max_rows") or DEFAULT_MAX_ROWS
    value = decode_body(body)
    if "features" not in card["input"]:
        return _parse_tensor_request(value, card, limit)
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
            raise ContractError(f"body: object without 'instances' or 'inputs' (keys: [{_some([repr(_clip(k)) for k in sorted(value)], 10)}])")
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


def _plan(card: dict):
    """Return the cached _Plan of a tabular card, or None when the card is not plain (or numpy is absent)."""
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
    except (TypeError, ValueError, KeyError):  # a card the per-value path will judge
        plan = None
    if len(_PLANS) >= 64:
        _PLANS.clear()
    _PLANS[id(features)] = (features, plan)
    return plan


def _fast_parse(value, card: dict, limit: int):
    """Return the ParsedRequest of an instances body, bare rows or a v2 body whose every value is a plain
    in-range-of-float32 int or float, checked and counted in one vectorised pass; None sends the body to the
    per-value checks, which compose the message of whatever is wrong."""
    plan = _plan(card)
    if plan is None:
        return None
    if isinstance(value, dict) and "inputs" in value:
        a = batch_checks.v2_array(value, plan.width, limit, V2_NUMERIC_TYPES)
        rid = value.get("id")
        return None if a is None else _fast_parsed(a, "v2", plan, rid if type(rid) is str else None)
    if isinstance(value, dict):
        if "instances" not in value:
            return None
        rows, fmt = value["instances"], "instances"
    elif isinstance(value, list):
        rows, fmt = value, "rows"
        if value and set(map(type, value)) <= _PLAIN_TYPES:
            rows = [value]  # a bare list of numbers is one row
    else:
        return None
    if not isinstance(rows, list) or not rows or len(rows) > limit:
        return None
    kinds = set(map(type, rows))
    if kinds == {list}:
        if set(map(len, rows)) != {plan.width}:
            return None
        values = rows
    elif kinds == {dict}:
        nameset = plan.nameset
        if not all(r.keys() == nameset for r in rows):
            return None
        values = list(map(plan.get, rows))
    else:  # mixed forms, or rows that are neither lists nor objects
        return None
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
    if "features" not in card["input"]:
        return _answer_tensors(card, parsed, outputs, model_name, model_version)
    if isinstance(outputs, dict):
        outputs = outputs[output_tensors(card)[0]["name"]]
    if not isinstance(outputs, batch_checks.Outputs):  # rows from a caller other than the handler's batch forward
        outputs = batch_checks.Outputs(outputs, out["task"] == "classification")
    bad = outputs.first_non_finite()
    if bad is not None:
        _refuse_non_finite(None, parsed, "inputs[0].data row", bad)
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
            return _v2(parsed, outs, model_name, model_version)
        return {"predictions": labels, "probabilities": probs, "classes": classes, "model": model_name, "version": model_version}
    values = outputs.first_column()
    if parsed.fmt == "v2":
        return _v2(parsed, [{"name": out["target"], "shape": [len(values)], "datatype": "FP32", "data": values}], model_name, model_version)
    return {"predictions": values, "model": model_name, "version": model_version}


def _refuse_non_finite(samples: list | None, parsed: ParsedRequest, v2_label: str, first: int | None = None) -> None:
    """Raise ContractError naming the first sample whose model output holds NaN or ±Infinity (JSON can carry neither);
    `first`: that sample's index when the caller found it (then `samples` is not read)."""
    for i, sample in enumerate(samples or ()):
        if not all(map(math.isfinite, _flatten(sample, "output") if isinstance(sample, list) else (sample,))):
            first = i
            break
    if first is not None:
        where = {"instances": f"instances[{first}]", "v2": f"{v2_label} {first}"}.get(parsed.fmt, f"rows[{first}]")
        raise ContractError(f"{where}: the model's output overflows float32 (values far outside the training range)")


def _v2(parsed: ParsedRequest, outputs: list, model_name: str, model_version: str) -> dict:
    """Return an Open Inference (v2) response body."""
    body = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if parsed.v2_id is not None:
        body["id"] = parsed.v2_id
    return body


def error_body(message: str, code: int = 400) -> dict:
    """Return the JSON body of a refused (4xx) or failed (5xx) request."""
    return {"code": code, "type": "InvalidInput" if code < 500 else "InternalServerError", "message": message}


# --- the tensor contract ---------------------------------------------------------------------------------------
# A dtype's v2 name, whether it holds integers, and its range; integers sent to a float input must be exact in it.
DTYPES = {
    "float16": ("FP16", False, 65504.0, 2**11),
    "float32": ("FP32", False, 3.4028234663852886e38, 2**24),
    "float64": ("FP64", False, 1.7976931348623157e308, 2**53),
    "int8": ("INT8", True, -(2**7), 2**7 - 1),
    "int16": ("INT16", True, -(2**15), 2**15 - 1),
    "int32": ("INT32", True, -(2**31), 2**31 - 1),
    "int64": ("INT64", True, -(2**63), 2**63 - 1),
    "uint8": ("UINT8", True, 0, 2**8 - 1),
}
BATCH = -1  # how a card writes the dynamic batch dimension of a shape


def input_tensors(card: dict) -> list:
    """Return the card's inputs as [{name, dtype, shape, min, max}]; a tabular card's is one float32 [-1, F] input."""
    inp = card["input"]
    if "features" not in inp:
        return inp["tensors"]
    feats = inp["features"]
    return [{"name": inp.get("tensor_name", "input"), "dtype": "float32", "shape": [BATCH, len(feats)],
             "min": min(f["min"] for f in feats), "max": max(f["max"] for f in feats), "features": [f["name"] for f in feats]}]  # fmt: skip


def output_tensors(card: dict) -> list:
    """Return the card's outputs as [{name, dtype, shape}]; a tabular card's is one float32 [-1, width] output."""
    out = card["output"]
    if "tensors" in out:
        return out["tensors"]
    width = out.get("width") or (len(out["classes"]) if out.get("classes") else 1)
    return [{"name": out.get("target") or "output", "dtype": "float32", "shape": [BATCH, width]}]


def check_tensor_specs(specs, where: str, ranged: bool) -> None:
    """Raise ValueError naming the field when a card's tensor list is malformed (used by card.check_card)."""
    if not isinstance(specs, list) or not specs:
        raise ValueError(f"{where}: must be a non-empty list of {{name, dtype, shape}}")
    names = set()
    for i, t in enumerate(specs):
        at = f"{where}[{i}]"
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
            raise ValueError(f"{at}: must be an object with a non-empty string 'name'")
        if t["name"] in names:
            raise ValueError(f"{at}: name {t['name']!r} is used twice")
        names.add(t["name"])
        if t.get("dtype") not in DTYPES:
            raise ValueError(f"{at}.dtype: {_show(t.get('dtype'))} is not one of {sorted(DTYPES)}")
        shape = t.get("shape")
        if not (isinstance(shape, list) and shape and shape[0] == BATCH
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape[1:])):  # fmt: skip
            raise ValueError(f"{at}.shape: {_show(shape, 60)} must be [{BATCH}, d1, d2, ...] ({BATCH}: the batch dimension)")
        for k in ("min", "max") if ranged else ():
            if not isinstance(t.get(k), (int, float)) or isinstance(t.get(k), bool):
                raise ValueError(f"{at}.{k}: must be a number (the range seen in the calibration samples)")


def _fmt_shape(shape) -> str:
    """Return a shape for a message, the batch dimension as N."""
    return "[" + ", ".join("N" if d == BATCH else str(d) for d in shape) + "]"


def _tensor_value(v, spec: dict, where: str, integral: bool = False):
    """Return one value converted for an input of spec's dtype, or raise ContractError (lossy or unsafe values refused)."""
    dtype = spec["dtype"]
    _, is_int, a, b = DTYPES[dtype]
    if isinstance(v, _NonFiniteLiteral):
        raise ContractError(f"{where}: {v} is not a valid JSON number (NaN and Infinity are not allowed)")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ContractError(f"{where}: {_show(v)} is not a number")
    if isinstance(v, float) and (integral or is_int) and not v.is_integer():
        raise ContractError(f"{where}: {v!r} is not an integer ({'its datatype' if integral else dtype + ' input'} takes integers)")
    if is_int:
        if not a <= v <= b:
            raise ContractError(f"{where}: {_clip(str(v))} is outside the {dtype} range [{a}, {b}]")
        return int(v)
    if isinstance(v, int) and abs(v) > b:
        raise ContractError(f"{where}: the integer {_clip(str(v))} cannot be represented exactly in {dtype}")
    try:
        f = float(v)
    except OverflowError:
        raise ContractError(f"{where}: {str(v)[:40]}… is too large for {dtype}") from None
    if not math.isfinite(f) or abs(f) > a:
        raise ContractError(f"{where}: {v!r} is not a finite {dtype} number")
    return f


def _nested(value, where: str) -> tuple:
    """Return (shape, flat values) of a rectangular nested list (a number alone has shape []), or raise naming `where`."""
    if not isinstance(value, list):
        return [], [value]
    shape, level = [], value
    while isinstance(level, list):
        shape.append(len(level))
        level = level[0] if level else None
        if len(shape) > 32:
            raise ContractError(f"{where}: nested too deeply")
    flat = _flatten(value, where)
    expected = 1
    for d in shape:
        expected *= d
    if len(flat) != expected or any(isinstance(v, list) for v in flat):
        raise ContractError(f"{where}: ragged nested lists (not a rectangular array)")
    return shape, flat


def _sample(value, spec: dict, where: str) -> list:
    """Return one sample of an input as a flat list in its dtype, refusing a shape other than the card's."""
    shape, flat = _nested(value, where)
    want = spec["shape"][1:]
    if shape != want:
        raise ContractError(f"{where}: input {spec['name']!r} expects samples of shape {want} ({_fmt_shape(spec['shape'])} "
                            f"in a batch), received shape {shape}")  # fmt: skip
    return [_tensor_value(v, spec, f"{where} value {i}") for i, v in enumerate(flat)]


def _parse_tensor_request(value, card: dict, limit: int) -> ParsedRequest:
    """Return the checked inputs of a request body for a tensor card: a v2 body or instances (samples or named objects)."""
    specs = input_tensors(card)
    if isinstance(value, dict) and "instances" in value and "inputs" in value:
        raise ContractError("body: has both 'instances' and 'inputs'; send one")
    if isinstance(value, dict) and "inputs" in value:
        inputs, fmt = parse_v2_tensors(value, specs, limit), "v2"
    elif isinstance(value, dict) and "instances" in value:
        inputs, fmt = _tensor_instances(value["instances"], specs, limit), "instances"
    else:
        shown = f"an object with keys [{_some([repr(_clip(k)) for k in sorted(value)], 10)}]" if isinstance(value, dict) else type(value).__name__
        raise ContractError(f"body: expected {{\"inputs\": [...]}} (Open Inference v2) or {{\"instances\": [...]}}, got {shown}")
    rid = value.get("id") if fmt == "v2" else None
    parsed = ParsedRequest(inputs[specs[0]["name"]], fmt, inputs=inputs,
                           v2_id=rid if isinstance(rid, str) and not isinstance(rid, _NonFiniteLiteral) else None)  # fmt: skip
    parsed.out_of_range = sum(1 for s in specs for sample in inputs[s["name"]] for v in sample if v < s["min"] or v > s["max"])
    return parsed


def _tensor_instances(items, specs: list, limit: int) -> dict:
    """Return {input name: samples} of an instances list: one sample per item (an object of named inputs, or nested
    lists of the sample shape when the card has one input)."""
    if not isinstance(items, list):
        raise ContractError(f"instances: expected a list of samples, got {type(items).__name__}")
    if not items:
        raise ContractError("instances: no samples; send at least one")
    if len(items) > limit:
        raise ContractError(f"instances: {len(items)} samples, more than the limit of {limit} per request")
    names = [s["name"] for s in specs]
    out: dict = {n: [] for n in names}
    for i, item in enumerate(items):
        if isinstance(item, dict):
            _check_names(item, names, f"instances[{i}]", "input")
            for s in specs:
                out[s["name"]].append(_sample(item[s["name"]], s, f"instances[{i}].{s['name']}"))
        elif len(specs) == 1:
            out[names[0]].append(_sample(item, specs[0], f"instances[{i}]"))
        else:
            raise ContractError(f"instances[{i}]: the model has {len(specs)} inputs [{_some(map(repr, names), 20)}]; send an object of named inputs")
    return out


def parse_v2_tensors(body: dict, specs: list, limit: int) -> dict:
    """Return {input name: samples} of a decoded Open Inference (v2) body holding every named input once."""
    inputs = body.get("inputs")
    names = [s["name"] for s in specs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise ContractError(f"inputs: expected a list of tensor objects {{name, shape, datatype, data}}, one per input [{_some(map(repr, names), 20)}]")
    by_name, out, n = {s["name"]: s for s in specs}, {}, None
    for k, t in enumerate(inputs):
        missing = [f for f in ("name", "shape", "datatype", "data") if f not in t]
        if missing:
            raise ContractError(f"inputs[{k}]: missing field(s) {missing}")
        name = t["name"]
        if not isinstance(name, str) or name not in by_name:
            raise ContractError(f"inputs[{k}].name: {_show(name)} is not an input of this model; expected [{_some(map(repr, names), 20)}]")
        if name in out:
            raise ContractError(f"inputs[{k}]: input {name!r} sent twice")
        spec, where = by_name[name], f"inputs[{k}] {name!r}"
        dtype = t["datatype"]
        if not isinstance(dtype, str) or dtype not in V2_NUMERIC_TYPES:
            shown = _clip(repr(dtype)) if isinstance(dtype, str) else _show(dtype)
            raise ContractError(f"{where}.datatype: {shown} is not a numeric type ({sorted(V2_NUMERIC_TYPES)})")
        integral = dtype.startswith(("INT", "UINT"))
        if DTYPES[spec["dtype"]][1] and not integral:
            raise ContractError(f"{where}: datatype {dtype} cannot fill the {spec['dtype']} input (fractions would be cut); "
                                f"send {DTYPES[spec['dtype']][0]}")  # fmt: skip
        shape = t["shape"]
        if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
            raise ContractError(f"{where}.shape: {_show(shape, 60)} is not a list of integers")
        if len(shape) != len(spec["shape"]) or shape[1:] != spec["shape"][1:] or shape[0] < 0:
            raise ContractError(f"{where}: shape {_clip(str(shape), 60)}, expected {_fmt_shape(spec['shape'])}")
        if n is not None and shape[0] != n:
            raise ContractError(f"{where}: {shape[0]} samples, but {next(iter(out))!r} has {n}; every input needs the same batch size")
        n = shape[0]
        if n == 0:
            raise ContractError(f"{where}: no samples; send at least one")
        if n > limit:
            raise ContractError(f"{where}: {n} samples, more than the limit of {limit} per request")
        flat, size = _flatten(t["data"], f"{where}.data"), _prod(shape[1:])
        if len(flat) != n * size:
            raise ContractError(f"{where}.data: {len(flat)} values for shape {shape}")
        vals = [_tensor_value(v, spec, f"{where}.data[{i}]", integral) for i, v in enumerate(flat)]
        out[name] = [vals[i * size : (i + 1) * size] for i in range(n)]
    missing = [m for m in names if m not in out]
    if missing:
        raise ContractError(f"inputs: missing input(s) [{_some(map(repr, missing), 5)}]; the model takes [{_some(map(repr, names), 20)}]")
    return out


def _prod(dims) -> int:
    """Return the product of a list of dimensions (1 for none)."""
    p = 1
    for d in dims:
        p *= d
    return p


def warmup_inputs(card: dict) -> dict:
    """Return {input name: one sample} inside the card's contract (feature means; else each input's minimum)."""
    if "features" in card["input"]:
        return {input_tensors(card)[0]["name"]: [[f["mean"] for f in card["input"]["features"]]]}
    return {s["name"]: [[s["min"]] * _prod(s["shape"][1:])] for s in input_tensors(card)}


def _answer_tensors(card: dict, parsed: ParsedRequest, outputs: dict, model_name: str, model_version: str) -> dict:
    """Return the answer of a tensor card: every named output (v2: one tensor each; instances: `predictions`, one
    object per sample keyed by output name when there are several), with labels and probabilities where the card has labels."""
    specs = output_tensors(card)
    for s in specs:
        if not DTYPES[s["dtype"]][1]:  # float outputs (integers are always finite)
            _refuse_non_finite(outputs[s["name"]], parsed, "sample")
    classes = card["output"].get("classes")
    n = len(parsed.rows)
    extra_v2, extra = [], {}
    if classes:  # one output of width len(classes): its logits give labels and softmax probabilities
        probs, best = batch_checks.softmax_rows(outputs[specs[0]["name"]])
        labels = [classes[k] for k in best]
        label_type = "BYTES" if any(isinstance(c, str) for c in classes) else "INT64"
        extra_v2 = [{"name": "predictions", "shape": [n], "datatype": label_type, "data": labels},
                    {"name": "probabilities", "shape": [n, len(classes)], "datatype": "FP32", "data": [p for r in probs for p in r]}]  # fmt: skip
        extra = {"predictions": labels, "probabilities": probs, "classes": classes}
    if parsed.fmt == "v2":
        outs = [{"name": s["name"], "shape": [n, *s["shape"][1:]], "datatype": DTYPES[s["dtype"]][0],
                 "data": _flatten(outputs[s["name"]], s["name"])} for s in specs]  # fmt: skip
        return _v2(parsed, extra_v2 + outs, model_name, model_version)
    if classes:  # as a tabular classifier answers, with the raw output beside
        return {**extra, specs[0]["name"]: outputs[specs[0]["name"]], "model": model_name, "version": model_version}
    if len(specs) == 1:
        preds = outputs[specs[0]["name"]]
    else:
        preds = [{s["name"]: outputs[s["name"]][i] for s in specs} for i in range(n)]
    return {"predictions": preds, "model": model_name, "version": model_version}
