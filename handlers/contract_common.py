"""What the tabular and the tensor request contracts share: the error, the checked request, the bounded renderings
that error messages echo, and the answer rules both follow (the v2 body, outputs JSON cannot carry).

Stdlib only (numpy when present, to flatten a binary tensor); shipped in every .mar beside the handler.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

try:  # numpy ships beside torch in every worker we build
    import numpy as np
except ImportError:  # pragma: no cover
    np = None

DEFAULT_MAX_ROWS = 10_000
V2_NUMERIC_TYPES = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
# The largest finite float32, torch.finfo(torch.float32).max: the one bound of "fits in float32" for training data
# (aiaas_torch.data), the served contracts and the OpenAPI document; a float32 model holds it exactly.
FLOAT32_MAX = 3.4028234663852886e38


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
    warnings: list | None = None  # per row, the notes its answer carries (unseen categories); None when no row has one
    inputs: dict | None = None  # input name → its samples, each a flat list of values in the card's dtype
    array: object = None  # the one-pass check's rows (float64 array [N, F], or a small batch's float lists) for the forward


def is_tabular(card: dict) -> bool:
    """Return True when the card's input is named features (a trained tabular model), False when it is named tensors
    (an imported model's tensor card); the one test of it, for the handlers and (through card.py) the library."""
    return "features" in card["input"]


def clip_text(text: str, limit: int = 40) -> str:
    """Return text cut to `limit` characters, with an ellipsis when it was longer (error messages echo bodies)."""
    return text if len(text) <= limit else text[:limit] + "…"


def some_of(names, k: int, sep: str = ", ", show=str, total: int | None = None) -> str:
    """Return the first k names, each as show renders it, joined by sep, then " … and N more" when there are more
    (total: how many there are, when `names` holds only the first ones): messages never cut a list silently, and
    only the k shown are rendered (a body may send a million names)."""
    names = names if isinstance(names, (list, tuple)) else list(names)
    total = len(names) if total is None else total
    shown = sep.join(map(show, names[:k]))
    return shown if total <= k else f"{shown} … and {total - k} more"


def quoted(name) -> str:
    """Return a name from a request (a key) as a message quotes it: its repr, cut to 40 characters."""
    return repr(clip_text(str(name)))


def show_value(value, limit: int = 40, depth: int = 2) -> str:
    """Return a short JSON-like rendering of a request value for an error message (bounded depth and length)."""
    if isinstance(value, list) and value and depth > 0:
        inner = [show_value(v, limit, depth - 1) for v in value[:5]]
        return clip_text("[" + ", ".join(inner + ["…"] * (len(value) > 5)) + "]", limit)
    if isinstance(value, dict) and value and depth > 0:
        inner = [f"{show_value(k)}: {show_value(v, limit, depth - 1)}" for k, v in itertools.islice(value.items(), 5)]
        return clip_text("{" + ", ".join(inner + ["…"] * (len(value) > 5)) + "}", limit)
    if isinstance(value, (list, dict)):
        return ("[…]" if value else "[]") if isinstance(value, list) else ("{…}" if value else "{}")
    if isinstance(value, str):
        return clip_text(json.dumps(value[: limit + 1]), limit)
    if isinstance(value, (bytes, bytearray)):
        return clip_text(repr(bytes(value[: limit + 1])), limit)
    return clip_text(json.dumps(value) if isinstance(value, (int, float, bool)) or value is None else repr(value), limit)


def flatten_values(data, where: str, expect: tuple | None = None) -> list:
    """Return nested lists flattened to one list (v2 allows nested data).

    expect: (count, message) — data holding another count of values raises ContractError(f"{where}: {message}"),
    the message formatted with the count found, having stored at most `count` values (a body's data longer than its
    declared shape costs no copy)."""
    if np is not None and isinstance(data, np.ndarray):  # a binary-extension tensor (protocols.py)
        if expect is not None and data.size != expect[0]:
            raise ContractError(f"{where}: {expect[1].format(data.size)}")
        return data.ravel().tolist()
    if not isinstance(data, list):
        raise ContractError(f"{where}: expected a list, got {type(data).__name__}")
    most = None if expect is None else expect[0]
    if len(data) > 8 and set(map(type, data)) <= _LEAVES:  # flat data: its length says it all
        if most is not None and len(data) != most:
            raise ContractError(f"{where}: {expect[1].format(len(data))}")
        return list(data)
    out: list = []
    dropped = 0  # values beyond `most`, counted for the message and not kept
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if not isinstance(v, list):
                out.append(v)
                continue
            if len(stack) > 32:
                raise ContractError(f"{where}: nested too deeply")
            if most is not None and len(out) > most:  # checked at each list: at most one list's values past `most`
                dropped += len(out) - most
                del out[most:]
            if len(v) <= 8 or not set(map(type, v)) <= _LEAVES:  # short, or lists (anything unusual) within: value by value
                stack.append(iter(v))
                break
            if most is not None and len(out) + len(v) > most:  # a list of values in one step, kept while within `most`
                dropped += len(v)
            else:
                out.extend(v)
        else:
            stack.pop()
    count = len(out) + dropped
    if expect is not None and count != expect[0]:
        raise ContractError(f"{where}: {expect[1].format(count)}")
    return out


def refuse_non_finite(samples: list | None, parsed: ParsedRequest, v2_label: str, first: int | None = None) -> None:
    """Raise ContractError naming the first sample whose model output holds NaN or ±Infinity (JSON can carry neither);
    `first`: that sample's index when the caller found it (then `samples` is not read)."""
    for i, sample in enumerate(samples or ()):
        if not all(map(math.isfinite, flatten_values(sample, "output") if isinstance(sample, list) else (sample,))):
            first = i
            break
    if first is not None:
        where = {"instances": f"instances[{first}]", "v2": f"{v2_label} {first}"}.get(parsed.fmt, f"rows[{first}]")
        raise ContractError(f"{where}: the model's output overflows float32 (values far outside the training range)")


def v2_answer(parsed: ParsedRequest, outputs: list, model_name: str, model_version: str) -> dict:
    """Return an Open Inference (v2) response body."""
    body = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if parsed.v2_id is not None:
        body["id"] = parsed.v2_id
    return body


def error_body(message: str, code: int = 400) -> dict:
    """Return the JSON body of a refused (4xx) or failed (5xx) request."""
    return {"code": code, "type": "InvalidInput" if code < 500 else "InternalServerError", "message": message}


class NonFiniteLiteral(str):
    """A NaN/Infinity literal (not JSON, but Python's json accepts it): kept as a marker so that the check of
    the value it stands in for refuses it with the row and feature named."""


NonFiniteLiteral.__name__ = "NaN/Infinity literal"  # what "expected ..., got <type>" messages show
_LEAVES = {int, float, bool, str, type(None), NonFiniteLiteral}  # what a list JSON gives holds when it holds no list


def check_names(obj: dict, names: list, where: str, what: str) -> None:
    """Raise ContractError when an object of named values has a name not in `names` or lacks one of them."""
    known = set(names)
    if not obj.keys() <= known:  # the first five unknown names and their count: no list of a body's million keys
        first = list(itertools.islice((k for k in obj if k not in known), 5))
        count = len(obj) - len(obj.keys() & known)
        raise ContractError(f"{where}: unknown {what}(s) [{some_of(first, 5, show=quoted, total=count)}]; expected [{some_of(map(repr, names), 20)}]")
    missing = [n for n in names if n not in obj]
    if missing:
        raise ContractError(f"{where}: missing {what}(s) [{some_of(map(repr, missing), 5)}]")


def json_number(v, where: str):
    """Return v when it is a JSON number (int or float, not bool), else raise ContractError naming `where`."""
    if isinstance(v, NonFiniteLiteral):
        raise ContractError(f"{where}: {v} is not a valid JSON number (NaN and Infinity are not allowed)")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ContractError(f"{where}: {show_value(v)} is not a number")
    return v


def finite_float(v, where: str, dtype: str = "float32", limit: float = FLOAT32_MAX) -> float:
    """Return the number v as a float within ±limit (float32's by default), else raise ContractError naming `where`."""
    try:
        f = float(v)
    except OverflowError:
        raise ContractError(f"{where}: {str(v)[:40]}… is too large for {dtype}") from None
    if not math.isfinite(f) or abs(f) > limit:
        raise ContractError(f"{where}: {v!r} is not a finite {dtype} number")
    return f
