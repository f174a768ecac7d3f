"""Issue 23 finding 7, in process: once a body is parsed, refusing it for its row count or its size costs next to no
memory in every request format (the count and the declared shape are checked before anything is built per row or
per value). tests/reliability/test_memory_per_request.py measures the same on a real worker's RSS.

Each body is parsed first (the parse is unavoidable and not measured); then tracemalloc's peak over the handler's
own steps — protocols.decode_with (TF Serving's columns become rows there) and parse_request — must stay under
BUDGET, while the bodies hold ROWS rows: one object per row would cost MBs (a 3-key dict is ~200 bytes), a copy of
the values' references alone 8 bytes each (≥ 480 KB here), one repr per name of a body's 20,000 names ~1 MB. An
Open Inference binary body is refused before its tensor bytes are copied.
"""

from __future__ import annotations

import json
import random
import tracemalloc

import pytest

from aiaas_torch.handlers import protocols
from aiaas_torch.handlers.aiaas_contract import ContractError, parse_request
from aiaas_torch.handlers import contract_common

LIMIT = 100
ROWS = 20_000
BUDGET = 64_000  # bytes: the error message, a traceback and small lists of names
ROW = [1.0, 2.0, 3.0]
TAB = {"input": {"features": [{"name": n, "min": 0.0, "max": 10.0} for n in "abc"], "max_rows": LIMIT},
       "output": {"target": "y", "task": "regression", "classes": None}, "files": {}}  # fmt: skip
TENS = {"input": {"tensors": [{"name": "x", "dtype": "float32", "shape": [-1, 3], "min": 0.0, "max": 10.0}], "max_rows": LIMIT},
        "output": {"task": "regression", "tensors": [{"name": "y", "dtype": "float32", "shape": [-1, 1]}]}, "files": {}}  # fmt: skip


def v2_answer(shape, data, name="input"):
    return {"inputs": [{"name": name, "shape": shape, "datatype": "FP32", "data": data}]}


# (id, card, body (decoded JSON), a fragment the refusal must hold)
CASES = [
    ("instances-lists", TAB, lambda: {"instances": [list(ROW) for _ in range(ROWS)]}, f"{ROWS} rows, more than the limit of {LIMIT}"),
    ("instances-named", TAB, lambda: {"instances": [dict(zip("abc", ROW)) for _ in range(ROWS)]}, f"{ROWS} rows, more than"),
    ("bare-rows", TAB, lambda: [list(ROW) for _ in range(ROWS)], f"{ROWS} rows, more than"),
    ("bare-one-row", TAB, lambda: ROW * ROWS, f"{3 * ROWS} values, expected 3"),
    ("tfs-instances", TAB, lambda: {"signature_name": "s", "instances": [list(ROW) for _ in range(ROWS)]}, f"{ROWS} rows, more than"),
    ("tfs-columns", TAB, lambda: {"signature_name": "s", "inputs": {k: [v] * ROWS for k, v in zip("abc", ROW)}}, f"{ROWS} rows, more than"),
    ("tfs-columns-list", TAB, lambda: {"inputs": [list(ROW) for _ in range(ROWS)]}, f"{ROWS} rows, more than"),
    ("v2-flat-over-limit", TAB, lambda: v2_answer([ROWS, 3], ROW * ROWS), f"{ROWS} rows, more than"),
    ("v2-flat-longer-than-shape", TAB, lambda: v2_answer([2, 3], ROW * ROWS), f"{3 * ROWS} values for shape [2, 3]"),
    ("v2-nested-longer-than-shape", TAB, lambda: v2_answer([2, 3], [list(ROW) for _ in range(ROWS)]), f"{3 * ROWS} values for shape [2, 3]"),
    ("v2-mixed-longer-than-shape", TAB, lambda: v2_answer([2, 3], [1.0, [2.0, 3.0]] + [list(ROW) for _ in range(ROWS)]), "values for shape [2, 3]"),
    ("named-row-of-many-names", TAB, lambda: {"instances": [{f"k{i}": 1.0 for i in range(ROWS)}]}, f"unknown feature(s) ['k0', 'k1', 'k2', 'k3', 'k4' … and {ROWS - 5} more]"),
    ("object-of-many-keys", TAB, lambda: {f"k{i}": 1.0 for i in range(ROWS)}, f"'k0', 'k1', 'k10', 'k100', 'k1000'"),
    ("tensor-object-of-many-keys", TENS, lambda: {f"k{i}": 1.0 for i in range(ROWS)}, f"… and {ROWS - 10} more"),
    ("tensor-instances", TENS, lambda: {"instances": [list(ROW) for _ in range(ROWS)]}, f"{ROWS} samples, more than"),
    ("tensor-instances-named", TENS, lambda: {"instances": [{"x": list(ROW)} for _ in range(ROWS)]}, f"{ROWS} samples, more than"),
    ("tensor-one-huge-sample", TENS, lambda: {"instances": [ROW * ROWS]}, "expects samples of shape [3]"),
    ("tensor-columns", TENS, lambda: {"inputs": {"x": [list(ROW) for _ in range(ROWS)]}}, f"{ROWS} rows, more than"),
    ("tensor-v2-over-limit", TENS, lambda: v2_answer([ROWS, 3], ROW * ROWS, "x"), f"{ROWS} samples, more than"),
    ("tensor-v2-longer-than-shape", TENS, lambda: v2_answer([2, 3], ROW * ROWS, "x"), f"{3 * ROWS} values for shape [2, 3]"),
    ("tensor-v2-nested-longer-than-shape", TENS, lambda: v2_answer([2, 3], [list(ROW) for _ in range(ROWS)], "x"), "values for shape [2, 3]"),
]


def _binary(shape: list, values: int, name: str = "input") -> tuple:
    """Return (body, binary header value) of an Open Inference binary-extension body of `values` FP32 values."""
    head = json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": 4 * values}}]}).encode()
    return head + bytes(4 * values), str(len(head))


BINARY = [
    ("binary-over-limit", TAB, lambda: _binary([ROWS, 3], 3 * ROWS), f"{ROWS} rows, more than"),
    ("binary-longer-than-shape", TAB, lambda: _binary([2, 3], 3 * ROWS), f"{3 * ROWS} values for shape [2, 3]"),
    ("tensor-binary-over-limit", TENS, lambda: _binary([ROWS, 3], 3 * ROWS, "x"), f"{ROWS} samples, more than"),
    ("tensor-binary-longer-than-shape", TENS, lambda: _binary([2, 3], 3 * ROWS, "x"), f"{3 * ROWS} values for shape [2, 3]"),
]


def _refuse(card: dict, value, length=None) -> str:
    """Return the ContractError message the handler's steps give a decoded body (as the worker runs them)."""
    try:
        wire = protocols.decode_with(value, length, LIMIT)
        parse_request(wire.body, card, LIMIT)
    except ContractError as e:
        return str(e)
    raise AssertionError("accepted")


@pytest.mark.parametrize("case", CASES + BINARY, ids=[c[0] for c in CASES + BINARY])
def test_a_refused_body_costs_no_memory_beyond_its_parse(case):
    cid, card, build, needle = case
    value, length = build() if cid in dict((c[0], 1) for c in BINARY) else (build(), None)  # binary: the body's bytes
    _refuse(card, value, length)  # once unmeasured: caches (the card's plan, imports) are not the body's cost
    tracemalloc.start()
    try:
        message = _refuse(card, value, length)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert needle in message, message
    assert peak <= BUDGET, f"refusing it allocated {peak} bytes"


def test_a_body_within_the_limit_is_still_read_whole():
    cols = protocols.decode_with({"inputs": {k: [v] * LIMIT for k, v in zip("abc", ROW)}}, None, LIMIT)
    assert parse_request(cols.body, TAB, LIMIT).rows == [ROW] * LIMIT
    nested = v2_answer([2, 3], [1.0, [2.0, [3.0]], [4.0, 5.0, 6.0]])  # v2 allows any nesting of the right count
    assert parse_request(nested, TAB, LIMIT).rows == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert parse_request({"instances": [[1, 2, 3]]}, TENS, LIMIT).inputs == {"x": [[1.0, 2.0, 3.0]]}


def _reference_flatten(data) -> list:
    """Return nested lists flattened, the plain recursive way (what flatten_values must equal)."""
    return [x for v in data for x in (_reference_flatten(v) if isinstance(v, list) else [v])]


def test_flatten_keeps_its_order_and_counts_what_it_does_not_keep():
    rng = random.Random(7)

    def nested(depth: int):
        if depth == 0 or rng.random() < 0.3:
            return rng.choice([rng.random(), rng.randint(-5, 5), None, "s", True])
        return [nested(depth - 1) for _ in range(rng.choice([0, 1, 3, 8, 9, 20]))]

    for _ in range(300):
        data = [nested(3) for _ in range(rng.randint(0, 12))]
        want = _reference_flatten(data)
        assert contract_common.flatten_values(data, "d") == want
        assert contract_common.flatten_values(data, "d", (len(want), "{} values")) == want
        for wrong in (0, max(0, len(want) - 1), len(want) + 1):
            if wrong != len(want):
                with pytest.raises(ContractError, match=rf"^d: {len(want)} values$"):
                    contract_common.flatten_values(data, "d", (wrong, "{} values"))
