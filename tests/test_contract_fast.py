"""The one-pass check of plain tabular batches agrees with the per-value checks: same rows, same counts, same messages."""

from __future__ import annotations

import functools
import json
import math
import random
import zlib

import numpy as np
import pytest
import torch

from aiaas_torch.handlers import aiaas_contract as c
from aiaas_torch.handlers import plain_rows, tabular_rows
from aiaas_torch.handlers.aiaas_contract import ContractError
from aiaas_torch.handlers.contract_common import NonFiniteLiteral


def _fast(value, card: dict, limit: int):
    """Return the one-pass check's ParsedRequest of one decoded body (a batch of one), or None where it declines."""
    return c.check_plain_batch([value], card, limit)[0]

EDGES = [-0.0, 0.0, 0, 1, -7, 3.4e38, -3.4e38, 2**60, -(2**70), 1e-300, 5e-324]


def _card(width: int, rng: random.Random, max_rows: int = 500) -> dict:
    feats = []
    for j in range(width):
        lo = rng.uniform(-5, 5)
        feats.append({"name": f"f{j}", "kind": "numeric", "min": lo, "max": lo + rng.uniform(0, 5), "mean": lo})
    return {"input": {"features": feats, "max_rows": max_rows}, "output": {"target": "y", "task": "regression"}}


def _value(rng: random.Random):
    r = rng.random()
    if r < 0.2:
        return rng.choice(EDGES)
    if r < 0.35:
        return rng.randint(-20, 20)  # ints, many outside the range
    return rng.uniform(-15, 15)  # about half outside the range


def _batch(card: dict, rng: random.Random, n: int) -> list:
    return [[_value(rng) for _ in card["input"]["features"]] for _ in range(n)]


def _same(fast: c.ParsedRequest, slow: c.ParsedRequest) -> None:
    assert fast is not None, "the one-pass check declined a plain batch"
    # repr tells -0.0 from 0.0 and shows every digit
    assert [list(map(repr, r)) for r in fast.rows] == [list(map(repr, r)) for r in slow.rows]
    assert (fast.fmt, fast.out_of_range, fast.imputed, fast.unseen, fast.v2_id) == (slow.fmt, slow.out_of_range, slow.imputed, slow.unseen, slow.v2_id)
    assert list(fast.inputs) == list(slow.inputs) and fast.inputs[next(iter(fast.inputs))] == slow.rows


@pytest.mark.parametrize("seed", range(12))
def test_random_plain_batches_give_the_per_value_rows_and_counts(seed):
    rng = random.Random(seed)
    card = _card(rng.randint(1, 12), rng)
    rows = _batch(card, rng, rng.randint(1, 60))
    names = [f["name"] for f in card["input"]["features"]]
    named = [dict(rng.sample(list(zip(names, r)), len(r))) for r in rows]  # keys in any order
    bodies = [{"instances": rows}, rows, {"instances": named}, rows[0]]
    for body in bodies:
        slow = tabular_rows.parse_rows(json.loads(json.dumps(body)), card, 500)
        assert slow.out_of_range == sum(1 for r in slow.rows for v, f in zip(r, card["input"]["features"]) if not f["min"] <= v <= f["max"])
        _same(_fast(json.loads(json.dumps(body)), card, 500), slow)
        _same(c.parse_request(json.dumps(body).encode(), card), slow)


def _same_refusal(body, card: dict, limit: int) -> None:
    """Assert the one-pass check declines the body and parse_request refuses it with the per-value path's own message."""
    with pytest.raises(ContractError) as slow:
        tabular_rows.parse_rows(body, card, limit)
    assert _fast(body, card, limit) is None
    with pytest.raises(ContractError) as got:
        c.parse_request(body, card)
    assert str(got.value) == str(slow.value)


BAD = [True, False, NonFiniteLiteral("NaN"), NonFiniteLiteral("-Infinity"), "1.5", None, 3.5e38, -1e39, 10**400,
       float("inf"), [1.0], {"v": 1}]  # fmt: skip


@pytest.mark.parametrize("size", [2, 20], ids=["small batch", "large batch"])  # batch_checks.SMALL: plain Python below, numpy above
@pytest.mark.parametrize("bad", BAD, ids=repr)
@pytest.mark.parametrize("form", ["instances", "rows", "named"])
def test_one_bad_value_gives_exactly_the_per_value_message(bad, form, size):
    rng = random.Random(zlib.crc32(f"{bad!r} {form} {size}".encode()))
    card = _card(6, rng)
    rows = _batch(card, rng, size)
    rows[rng.randrange(size)][rng.randrange(6)] = bad
    names = [f["name"] for f in card["input"]["features"]]
    body = {"instances": [dict(zip(names, r)) for r in rows]} if form == "named" else {"instances": rows} if form == "instances" else rows
    _same_refusal(body, card, 500)


@pytest.mark.parametrize("change", ["short row", "long row", "missing name", "extra name", "too many rows", "mixed forms", "bare scalar row"])
def test_a_malformed_batch_gives_exactly_the_per_value_message(change):
    rng = random.Random(7)
    card = _card(4, rng, max_rows=30)
    rows = _batch(card, rng, 10)
    names = [f["name"] for f in card["input"]["features"]]
    named = [dict(zip(names, r)) for r in rows]
    if change == "short row":
        rows[3] = rows[3][:-1]
    elif change == "long row":
        rows[9].append(1.0)
    elif change == "missing name":
        del named[2]["f1"]
    elif change == "extra name":
        named[5]["f9"] = 1.0
    elif change == "too many rows":
        rows = rows * 4
    elif change == "mixed forms":
        rows[4] = named[4]
    else:
        rows[1] = 2.0
    body = {"instances": named if "name" in change else rows}
    _same_refusal(body, card, 30)


def test_a_card_changed_in_place_is_checked_against_its_new_ranges():
    card = _card(2, random.Random(1))
    body = {"instances": [[100.0, 100.0]]}
    assert c.parse_request(body, card).out_of_range == 2
    card["input"]["features"][0]["max"] = 1000.0
    assert c.parse_request(body, card).out_of_range == 1
    card["input"]["tensor_name"] = "table"
    assert list(c.parse_request(body, card).inputs) == ["table"] == [t["name"] for t in c.input_tensors(card)]
    card["input"]["features"][1]["kind"] = "categorical"
    card["input"]["features"][1]["categories"] = ["a"]
    assert _fast(body, card, 500) is None


def test_cards_with_categories_or_imputed_features_take_the_per_value_checks():
    rng = random.Random(3)
    for extra in ({"impute": "mean"}, {"kind": "categorical", "categories": ["a", "b"]}):
        card = _card(3, rng)
        card["input"]["features"][1].update(extra)
        assert _fast({"instances": [[1.0, 0.0, 1.0]]}, card, 500) is None
    assert math.isnan(c.parse_request({"instances": [[1.0, None, 1.0]]}, _imputed(rng)).rows[0][1])


def _imputed(rng):
    card = _card(3, rng)
    card["input"]["features"][1]["impute"] = "mean"
    return card


def test_without_numpy_every_batch_takes_the_per_value_checks(monkeypatch):
    monkeypatch.setattr(plain_rows, "np", None)
    card = _card(3, random.Random(5))
    body = {"instances": [[1, -0.0, 2.5]]}
    assert _fast(body, card, 500) is None
    assert [list(map(repr, r)) for r in c.parse_request(body, card).rows] == [["1.0", "-0.0", "2.5"]]


# --- Open Inference (v2) bodies: JSON data and the binary extension take the same one-pass check.

from aiaas_torch.handlers import batch_checks, protocols  # noqa: E402


def v2_answer(rows: list, form: str, width: int, datatype: str = "FP64", **extra) -> dict:
    """Return a v2 body of rows: data flat, as rows, or (one row) with shape [width]."""
    data = [v for r in rows for v in r] if form != "rows" else rows
    shape = [width] if form == "shape [d]" else [len(rows), width]
    return {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}], **extra}


def _binary(rows: list, width: int, datatype: str, with_numpy: bool, monkeypatch) -> dict:
    """Return the contract body protocols.decode makes of a binary-extension request (with numpy, or struct alone)."""
    np_dtype = {"FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "INT8": "<i1", "INT32": "<i4", "INT64": "<i8", "UINT8": "<u1", "UINT64": "<u8"}
    raw = np.array(rows, dtype=np_dtype[datatype]).tobytes() if datatype != "BF16" else (
        np.array(rows, dtype="<f4").view("<u4") >> 16).astype("<u2").tobytes()
    head = json.dumps({"id": "r1", "inputs": [{"name": "x", "shape": [len(rows), width], "datatype": datatype,
                                               "parameters": {"binary_data_size": len(raw)}}]}).encode()  # fmt: skip
    with monkeypatch.context() as m:
        if not with_numpy:
            m.setattr(protocols, "np", None)
        return protocols.decode(head + raw, {"Inference-Header-Content-Length": str(len(head))}).body


@pytest.mark.parametrize("seed", range(8))
def test_random_v2_json_bodies_give_the_per_value_rows_and_counts(seed):
    rng = random.Random(100 + seed)
    card = _card(rng.randint(1, 12), rng)
    width = len(card["input"]["features"])
    rows = _batch(card, rng, rng.randint(1, 40))
    for form, datatype in (("flat", "FP32"), ("rows", "FP64"), ("shape [d]", "INT64"), ("flat", "UINT8")):
        body = v2_answer(rows[:1] if form == "shape [d]" else rows, form, width, datatype, id="req-7")
        slow = tabular_rows.parse_rows(json.loads(json.dumps(body)), card, 500)
        assert slow.fmt == "v2" and slow.v2_id == "req-7"
        _same(_fast(json.loads(json.dumps(body)), card, 500), slow)
        _same(c.parse_request(json.dumps(body).encode(), card), slow)


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "FP16", "INT8", "INT32", "INT64", "UINT8", "UINT64"])
def test_binary_v2_tensors_give_the_rows_struct_gave_and_the_per_value_counts(datatype, monkeypatch):
    rng = random.Random(datatype)
    card = _card(5, rng)
    ints = datatype.startswith(("INT", "UINT"))
    lo = 0 if datatype.startswith("UINT") else -100
    rows = [[rng.randint(lo, 100) if ints else rng.uniform(-15, 15) for _ in range(5)] for _ in range(17)]
    if datatype in ("INT64", "UINT64"):
        rows[3][2] = 2**62 + 1  # not exact in float64: both paths round the same way
    fast_body, struct_body = _binary(rows, 5, datatype, True, monkeypatch), _binary(rows, 5, datatype, False, monkeypatch)
    assert isinstance(struct_body["inputs"][0]["data"], list)
    slow = tabular_rows.parse_rows(struct_body, card, 500)  # what the body gave before numpy read it
    assert slow.v2_id == "r1" and len(slow.rows) == 17
    _same(_fast(fast_body, card, 500), slow)
    _same(c.parse_request(fast_body, card), slow)


@pytest.mark.parametrize("datatype", sorted(protocols._FORMATS) + ["BF16"])
def test_binary_elements_read_with_numpy_are_the_ones_struct_read(datatype, monkeypatch):
    raw = random.Random(datatype).randbytes(8 * 24)  # every bit pattern may come: NaNs, infinities, subnormals
    if datatype == "BOOL":
        raw = bytes(b & 1 for b in raw)
    got = protocols._unpack(raw, datatype, "inputs[0]")
    monkeypatch.setattr(protocols, "np", None)
    want = protocols._unpack(raw, datatype, "inputs[0]")
    assert isinstance(got, np.ndarray) and isinstance(want, list)
    assert list(map(repr, got.tolist())) == list(map(repr, want)) and list(map(type, got.tolist())) == list(map(type, want))


def _same_v2_refusal(body, card: dict, limit: int = 500) -> None:
    """Assert the one-pass check declines a v2 body and parse_request refuses it with the per-value message."""
    with pytest.raises(ContractError) as slow:
        tabular_rows.parse_rows(body, card, limit)
    assert _fast(body, card, limit) is None
    with pytest.raises(ContractError) as got:
        c.parse_request(body, card, limit)
    assert str(got.value) == str(slow.value)


@pytest.mark.parametrize("size", [2, 20], ids=["small batch", "large batch"])
@pytest.mark.parametrize("bad", BAD, ids=repr)
@pytest.mark.parametrize("form", ["flat", "rows"])
def test_one_bad_v2_value_gives_exactly_the_per_value_message(bad, form, size):
    rng = random.Random(zlib.crc32(f"v2 {bad!r} {form} {size}".encode()))
    card = _card(6, rng)
    rows = _batch(card, rng, size)
    rows[rng.randrange(size)][rng.randrange(6)] = bad
    body = v2_answer(rows, form, 6)
    if bad == [1.0]:  # v2 data may nest: flattened, it is a good value, read by the per-value path
        assert _fast(body, card, 500) is None
        assert c.parse_request(body, card).rows == tabular_rows.parse_rows(body, card, 500).rows
        return
    _same_v2_refusal(body, card)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 3.5e38, -1e300])
@pytest.mark.parametrize("datatype", ["FP32", "FP64", "FP16"])
def test_a_bad_binary_value_gives_exactly_the_per_value_message(bad, datatype, monkeypatch):
    if datatype != "FP64" and abs(bad) > 1e38 and math.isfinite(bad):
        bad = np.inf  # what the narrower type makes of it
    card = _card(4, random.Random(4))
    rows = [[0.5] * 4 for _ in range(20)]  # 80 values: numpy's range check (the small one is in the tests above)
    rows[4][1] = bad
    body = _binary(rows, 4, datatype, True, monkeypatch)
    _same_v2_refusal(body, card)
    with pytest.raises(ContractError) as before:  # the message of the struct-read body, before numpy
        c.parse_request(_binary(rows, 4, datatype, False, monkeypatch), card)
    with pytest.raises(ContractError) as now:
        c.parse_request(body, card)
    assert str(now.value) == str(before.value) and "row 4 feature 'f1'" in str(now.value)


V2_CHANGES = {
    "no inputs list": lambda b: {"inputs": b["inputs"][0]},
    "two tensors": lambda b: {"inputs": b["inputs"] * 2},
    "missing data": lambda b: {"inputs": [{k: v for k, v in b["inputs"][0].items() if k != "data"}]},
    "text datatype": lambda b: {"inputs": [dict(b["inputs"][0], datatype="BYTES")]},
    "marker datatype": lambda b: {"inputs": [dict(b["inputs"][0], datatype=NonFiniteLiteral("NaN"))]},
    "bool in shape": lambda b: {"inputs": [dict(b["inputs"][0], shape=[True, 3])]},
    "wrong width": lambda b: {"inputs": [dict(b["inputs"][0], shape=[2, 6])]},
    "zero rows": lambda b: {"inputs": [dict(b["inputs"][0], shape=[0, 3], data=[])]},
    "negative rows": lambda b: {"inputs": [dict(b["inputs"][0], shape=[-4, 3])]},
    "too many rows": lambda b: {"inputs": [dict(b["inputs"][0], shape=[40, 3], data=b["inputs"][0]["data"] * 20)]},
    "short data": lambda b: {"inputs": [dict(b["inputs"][0], data=b["inputs"][0]["data"][:-1])]},
    "data not a list": lambda b: {"inputs": [dict(b["inputs"][0], data="1,2,3")]},
    "nested too deeply": lambda b: {"inputs": [dict(b["inputs"][0], data=functools.reduce(lambda d, _: [d], range(40), 1.0))]},
    "instances too": lambda b: dict(b, instances=[[1, 2, 3]]),
    "3-d shape": lambda b: {"inputs": [dict(b["inputs"][0], shape=[2, 3, 1])]},
}


@pytest.mark.parametrize("change", list(V2_CHANGES))
def test_a_malformed_v2_body_gives_exactly_the_per_value_message(change):
    card = _card(3, random.Random(11), max_rows=30)
    body = V2_CHANGES[change](v2_answer([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "flat", 3))
    _same_v2_refusal(body, card, 30)


def test_v2_data_the_one_pass_check_does_not_read_still_goes_through_the_per_value_checks():
    card = _card(3, random.Random(12))
    ragged = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1.0, 2.0], [3.0, 4.0, 5.0, 6.0]]}]}
    assert _fast(ragged, card, 500) is None
    assert c.parse_request(ragged, card).rows == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    named_id = v2_answer([[1.0, 2.0, 3.0]], "flat", 3, id=NonFiniteLiteral("NaN"))  # an id that is not a string is dropped
    assert c.parse_request(named_id, card).v2_id is None and _fast(named_id, card, 500).v2_id is None


# --- answers per batch: softmax, labels and the finiteness rule once per batch give the bytes the per-row code gave.


def _per_row_softmax(logits: list) -> list:
    """The per-row softmax answers used before (the oracle): exp(v - max) over Python's left-to-right sum."""
    m = max(logits)
    e = [math.exp(float(v) - m) for v in logits]
    s = sum(e)
    return [v / s for v in e]


def _per_row_body(card: dict, fmt: str, rows: list) -> dict:
    """The answer body the per-row code gave for a request's output rows (lists of the float32 values)."""
    out = card["output"]
    if out["task"] == "classification":
        probs = [_per_row_softmax(r) for r in rows]
        labels = [out["classes"][max(range(len(p)), key=p.__getitem__)] for p in probs]
        if fmt == "v2":
            label_type = "BYTES" if any(isinstance(k, str) for k in out["classes"]) else "INT64"
            return {"model_name": "m", "model_version": "1", "outputs": [
                {"name": "predictions", "shape": [len(labels)], "datatype": label_type, "data": labels},
                {"name": "probabilities", "shape": [len(probs), len(out["classes"])], "datatype": "FP32", "data": [p for r in probs for p in r]}]}  # fmt: skip
        return {"predictions": labels, "probabilities": probs, "classes": out["classes"], "model": "m", "version": "1"}
    values = [float(r[0]) for r in rows]
    if fmt == "v2":
        return {"model_name": "m", "model_version": "1", "outputs": [{"name": "y", "shape": [len(values)], "datatype": "FP32", "data": values}]}
    return {"predictions": values, "model": "m", "version": "1"}


def _logits(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    """Return float32 logits of mixed magnitudes: ordinary, huge, tiny, exact ties and near-ties."""
    scale = rng.choice([1.0, 30.0, 1e3, 1e30, 1e-30, 1e-44, 3e37], size=(n, 1))
    a = (rng.standard_normal((n, width)) * scale).astype(np.float32)
    a[rng.random(n) < 0.2, :] = 0.0  # every class equally likely: the first wins
    near = rng.random(n) < 0.2
    a[near, -1] = np.nextafter(a[near, 0], np.float32(np.inf))
    return a


def _dumps(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


@pytest.mark.parametrize("numpy_present", [True, False])
@pytest.mark.parametrize("classes", [["no", "yes"], [0, 1, 2], [f"c{k}" for k in range(12)], list(range(9)), None], ids=str)
def test_batch_answers_are_byte_identical_to_the_per_row_answers(classes, numpy_present, monkeypatch, same_json):
    if not numpy_present:
        monkeypatch.setattr(batch_checks, "np", None)
    rng = np.random.default_rng(len(classes or ()) + 7 * numpy_present)
    card = {"input": {"features": [{"name": "a", "min": 0.0, "max": 1.0}]},
            "output": {"target": "y", "task": "classification" if classes else "regression", "classes": classes}}  # fmt: skip
    for _ in range(30):
        sizes = rng.integers(1, 9, size=rng.integers(1, 7)).tolist()
        logits = _logits(rng, sum(sizes), len(classes) if classes else 1)
        batch = batch_checks.Outputs(logits if numpy_present else logits.tolist(), bool(classes))
        start = 0
        for k, size in enumerate(sizes):
            fmt = ["instances", "v2", "rows"][k % 3]
            rows = logits.tolist()[start : start + size]  # what the forward's tolist() gave each request
            want = _dumps(_per_row_body(card, fmt, rows))
            assert same_json(_dumps(c.answer(card, c.ParsedRequest([[0.0]] * size, fmt), {"y": batch[start : start + size]}, "m", "1")), want)
            assert same_json(_dumps(c.answer(card, c.ParsedRequest([[0.0]] * size, fmt), rows, "m", "1")), want)  # lists, as LocalModel passes
            start += size


@pytest.mark.parametrize("classes", [["a", "b", "c"], None], ids=["classifier", "regression"])
def test_a_non_finite_output_refuses_its_own_request_naming_its_first_bad_sample(classes):
    card = {"input": {"features": [{"name": "a", "min": 0.0, "max": 1.0}]},
            "output": {"target": "y", "task": "classification" if classes else "regression", "classes": classes}}  # fmt: skip
    out = np.ones((10, len(classes) if classes else 1), dtype=np.float32)
    out[3, 0], out[5, -1], out[8, 0] = np.inf, np.nan, -np.inf  # requests: rows 0-2, 3-6, 7-9
    batch = batch_checks.Outputs(out, bool(classes))
    first = c.answer(card, c.ParsedRequest([[0.0]] * 3, "instances"), batch[0:3], "m", "1")
    assert first["predictions"] == (["a"] * 3 if classes else [1.0] * 3)
    for (lo, hi), fmt, where in (((3, 7), "instances", "instances[0]"), ((7, 10), "v2", "inputs[0].data row 1"), ((4, 7), "rows", "rows[1]")):
        with pytest.raises(ContractError) as e:
            c.answer(card, c.ParsedRequest([[0.0]] * (hi - lo), fmt), batch[lo:hi], "m", "1")
        assert str(e.value) == f"{where}: the model's output overflows float32 (values far outside the training range)"
        with pytest.raises(ContractError) as from_lists:
            c.answer(card, c.ParsedRequest([[0.0]] * (hi - lo), fmt), out.tolist()[lo:hi], "m", "1")
        assert str(from_lists.value) == str(e.value)


def test_the_bad_value_batches_straddle_the_small_batch_bound():
    assert 2 * 6 <= batch_checks.SMALL < 20 * 4  # the small and large batches above take the two ways of checking


# --- the whole batch's one pass (the handler's plain lane) ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_a_batch_of_plain_requests_checked_at_once_gives_each_request_the_rows_and_count_it_gets_alone(seed):
    rng = random.Random(1000 + seed)
    card = _card(rng.randint(1, 12), rng)
    names = [f["name"] for f in card["input"]["features"]]
    bodies = []
    for _ in range(rng.randint(1, 16)):
        rows = _batch(card, rng, rng.randint(1, 5))
        bodies.append(rng.choice([{"instances": rows}, rows, {"instances": [dict(zip(names, r)) for r in rows]},
                                  {"inputs": [{"name": "x", "shape": [len(rows), len(names)], "datatype": "FP64", "data": rows}], "id": "r"}]))  # fmt: skip
    slow = [tabular_rows.parse_rows(json.loads(json.dumps(b)), card, 500) for b in bodies]
    parsed = c.check_plain_batch([json.loads(json.dumps(b)) for b in bodies], card, 500)
    batch = parsed[0].array[0]
    assert batch.dtype == np.float32 and batch.tolist() == np.array([r for s in slow for r in s.rows], dtype=np.float32).tolist()
    start = 0
    for p, s in zip(parsed, slow):
        _same(p, s)  # rows, format, v2 id and the request's own out-of-range count
        assert p.array == (batch, start, start + len(s.rows))
        start += len(s.rows)


@pytest.mark.parametrize("rows", [1, 4], ids=["small batch", "large batch"])  # 30 values or 120: batch_checks.SMALL is 64
@pytest.mark.parametrize("bad", BAD[:-2] + [2**200], ids=repr)  # a nested list or object is not a plain shape at all
def test_one_bad_value_anywhere_in_the_batch_declines_the_whole_pass(bad, rows):
    rng = random.Random(zlib.crc32(repr(bad).encode()))
    card = _card(5, rng)
    bodies = [{"instances": _batch(card, rng, rows)} for _ in range(6)] + [{"rows": "not plain"}]
    assert [p is None for p in c.check_plain_batch(bodies, card, 500)] == [False] * 6 + [True]
    values = bodies[rng.randrange(6)]["instances"]
    values[rng.randrange(len(values))][rng.randrange(5)] = bad
    assert c.check_plain_batch(bodies, card, 500) == [None] * 7


@pytest.mark.parametrize("body", [{"instances": [[1, 2]], "inputs": []}, {"rows": [[1, 2]]}, {"instances": []}, [], 3, "x",
                                  {"instances": [[1, 2]] * 501}, {"instances": [[1, 2], [3]]}, {"instances": [[1, 2], {"f0": 1, "f1": 2}]},
                                  {"instances": [{"f0": 1}]}, {"instances": [[[1, 2]]]}, {"instances": [(1, 2)]},
                                  {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}], ids=repr)  # fmt: skip
def test_bodies_that_are_not_plain_rows_are_left_to_the_per_request_checks(body):
    card = _card(2, random.Random(3))
    assert plain_rows.plain_shape(body, plain_rows.plain_plan(card), 500) is None
    assert c.check_plain_batch([body, [1.0, 2.0]], card, 500)[0] is None  # the other body of the batch is still taken
