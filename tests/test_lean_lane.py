"""The handler's lean lane for the common request gives what the general path gives: the same header values, the
same answer bytes, the same rows, the same forward."""

from __future__ import annotations

import json
import math
import random
import struct

import numpy as np
import pytest
import torch

from aiaas_torch.handlers import aiaas_contract as c
from aiaas_torch.handlers import batch_checks, programs, protocols

# floats whose shortest repr is long, tiny, huge, signed zero, subnormal, and float32 values seen as doubles
EDGES = [-0.0, 0.0, 5e-324, -2.2250738585072014e-308, 1e-300, 3.4028234663852886e38, -3.4e38, 1e16, 1.0, -1.5,
         0.1, 1 / 3, 123456789.125, float(np.float32(0.1)), float(np.float32(-7.3e-39))]  # fmt: skip


def _value(rng: random.Random) -> float:
    r = rng.random()
    if r < 0.3:
        return rng.choice(EDGES)
    if r < 0.5:  # a float32 output as the forward gives it (tolist of a float32 array: a double)
        return float(np.float32(rng.uniform(-1e6, 1e6)))
    return struct.unpack("<d", struct.pack("<Q", rng.getrandbits(63) & ~(0x7FF << 52) | rng.randint(1, 0x7FE) << 52))[0] * rng.choice([1, -1])


def _card(classes) -> dict:
    output = {"target": "y", "task": "classification" if classes else "regression", "classes": classes}
    return {"input": {"features": [{"name": "x", "min": 0.0, "max": 1.0, "mean": 0.5}]}, "output": output}


@pytest.mark.parametrize("classes", [None, ["lo", "hi"], [0, 1, 2], ["é", 'q"uote', "\\", "日本"], [True, None, 2.5]])
@pytest.mark.parametrize("seed", range(4))
def test_answer_text_is_the_json_of_the_contracts_answer_byte_for_byte(classes, seed):
    rng = random.Random(seed)
    card, width = _card(classes), len(classes) if classes else 1
    # logits kept small enough for softmax to stay finite; regression outputs span every magnitude
    rows = [[(_value(rng) if not classes else rng.uniform(-30, 30)) for _ in range(width)] for _ in range(rng.randint(1, 40))]
    name, version = rng.choice([("m", "1.0"), ("modèle", "2"), ('a"b', "v1.2_x")])
    text = protocols.AnswerText(card, name, version)
    for arrays in (True, False):
        batch = batch_checks.Outputs(np.array(rows, dtype=np.float64) if arrays else rows, bool(classes))
        start = 0
        while start < len(rows):
            stop = min(len(rows), start + rng.randint(1, 5))
            part = batch[start:stop]
            for fmt in ("instances", "rows"):
                parsed = c.ParsedRequest([[0.5]] * (stop - start), fmt)
                want, headers = protocols.encode(protocols.Decoded(None), c.answer(card, parsed, part, name, version))
                assert headers == {} and text.text(part) == want
            start = stop


def test_answer_text_writes_negative_zero_and_extremes_as_json_does():
    card = _card(None)
    values = [-0.0, 5e-324, 1.7976931348623157e308, -1e-7, 1e16, 1e22, 0.1]
    got = protocols.AnswerText(card, "m", "1").text(batch_checks.Outputs([[v] for v in values], False))
    assert got == json.dumps({"predictions": values, "model": "m", "version": "1"}, separators=(",", ":"))
    assert json.loads(got)["predictions"][0] == 0.0 and math.copysign(1, json.loads(got)["predictions"][0]) == -1


@pytest.mark.parametrize("seed", range(20))
def test_scan_finds_the_values_header_finds(seed):
    rng = random.Random(seed)
    names = ["Content-Type", "content-type", "CONTENT-TYPE", "Inference-Header-Content-Length", "inference-header-content-length",
             "Host", "Accept", "X-Other", "content-typex", 7, None]  # fmt: skip
    headers = {rng.choice(names): rng.choice(["application/json", "12", None, "text/plain", b"raw"]) for _ in range(rng.randint(0, 8))}
    assert protocols.scan(headers) == (protocols.header(headers, protocols.BINARY_HEADER), protocols.header(headers, "content-type"))


def test_scan_of_no_headers():
    assert protocols.scan(None) == (None, None) and protocols.scan({}) == (None, None)
    # the first of two spellings wins, as with header; a None value is found (and means: absent)
    assert protocols.scan({"content-type": None, "Content-Type": "text/plain"}) == (None, None)
    assert protocols.scan({"Inference-Header-Content-Length": "5", "inference-header-content-length": "9"}) == ("5", None)


@pytest.mark.parametrize("seed", range(8))
def test_small_rows_agree_with_the_numpy_check(seed):
    rng = random.Random(seed)
    pool = [0, -0.0, 1, -7, 2**60, -(2**70), 2**1030, 3.4e38, 3.5e38, -1e39, 1e-300, 5e-324, 0.1, float("inf"), float("nan"), True, "1", None]
    for _ in range(50):
        width = rng.randint(1, 8)
        values = [[rng.choice(pool) if rng.random() < 0.3 else rng.uniform(-9, 9) for _ in range(width)] for _ in range(rng.randint(1, 64 // width))]
        if rng.random() < 0.3:
            values = [tuple(r) for r in values]  # named rows come as tuples
        a = batch_checks.plain_array(values)
        want = None if a is None or not batch_checks.within_float32(a) else a.tolist()
        got = batch_checks.small_rows(values)
        assert (None if got is None else [list(map(repr, r)) for r in got]) == (None if want is None else [list(map(repr, r)) for r in want])
        if got is not None:
            assert all(type(r) is list for r in got)


def test_stack_takes_one_checked_batch_as_it_is_and_joins_anything_else():
    batch = np.array([[0.1, -0.0], [1e-45, 3.4e38], [2.5, 1 / 3]], dtype=np.float32)
    assert batch_checks.stack([(batch, 0, 1), (batch, 1, 3)]) is batch  # the spans cover the batch in order: no copy
    other = np.array([[7.0, 8.0]], dtype=np.float32)
    for spans, want in (([(batch, 1, 3)], batch[1:]), ([(batch, 1, 3), (batch, 0, 1)], batch[[1, 2, 0]]),
                        ([(batch, 0, 1), (batch, 2, 3)], batch[[0, 2]]), ([(batch, 0, 3), (other, 0, 1)], np.vstack([batch, other]))):  # fmt: skip
        got = batch_checks.stack(spans)
        assert got.dtype == np.float32 and got.tobytes() == want.tobytes()


def test_run_samples_takes_a_float32_array_as_it_is_and_anything_else_converted():
    card = {"input": {"features": [{"name": n, "min": 0.0, "max": 1.0} for n in "ab"]}, "output": {"target": "y", "task": "regression"}}
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3).eval()
    rows = [[0.25, -1.5], [3.0, 1e-3], [7.0, 2.0]]
    want = programs.run_samples(model, card, {"input": rows})["y"]
    seen = []
    spy = lambda x: seen.append(x) or model(x)  # noqa: E731
    a = np.array(rows, dtype=np.float32)
    assert programs.run_samples(spy, card, {"input": a})["y"] == want
    assert seen[-1].data_ptr() == a.ctypes.data  # no copy
    for other in (np.array(rows, dtype=np.float64), np.array(rows, dtype=np.float32).ravel()):  # another dtype or shape
        assert programs.run_samples(spy, card, {"input": other})["y"] == want


@pytest.mark.parametrize("classes", [None, ["a", "b", "c"]])
def test_handle_answers_the_common_batch_with_the_general_paths_bytes(classes):
    from aiaas_torch.handlers.tabular_handler import TabularHandler

    rng = random.Random(1)
    feats = [{"name": f"f{j}", "kind": "numeric", "min": -1.0, "max": 1.0, "mean": 0.0} for j in range(4)]
    h = TabularHandler()
    h.card = {"input": {"features": feats}, "output": _card(classes)["output"], "files": {}}
    h.max_rows, h.device, h.model_name, h.model_version = 100, "cpu", "m", "1.0"
    torch.manual_seed(0)
    h.model = torch.nn.Linear(4, len(classes) if classes else 1).eval()
    bodies = [{"instances": [[rng.uniform(-3, 3) for _ in feats] for _ in range(rng.randint(1, 3))]} for _ in range(6)]
    bodies += [[rng.randint(-5, 5) for _ in feats], [[2**60, -0.0, 1e-300, 3]], {"instances": [dict(zip("abcd", [0.5] * 4))]}]
    data = [{"body": json.dumps(b).encode()} for b in bodies]

    class Context:
        def get_all_request_header(self, idx):
            return {"Content-Type": "application/json"}

        def get_request_header(self, idx, name):
            return None

        def set_response_content_type(self, idx, value):
            pass

        def set_response_status(self, code, phrase, idx=0):
            statuses[idx] = code

        def set_response_header(self, idx, name, value):
            pass

    statuses: dict = {}
    got = h.handle(data, Context())
    assert statuses == {8: 400}  # named rows of unknown features: refused, the rest answered
    parsed = [c.parse_request(d["body"], h.card, 100) for d in data[:8]]
    outputs = h._forward(parsed)
    for i, p in enumerate(parsed):
        want = protocols.encode(protocols.Decoded(None), c.answer(h.card, p, outputs[i], "m", "1.0"))[0]
        assert got[i] == want


def test_outputs_slices_as_a_list_does():
    values = [float(v) for v in range(6)]
    batch = batch_checks.Outputs([[v] for v in values], False)
    for start in (None, -9, -2, 0, 1, 5, 6, 9):
        for stop in (None, -9, -1, 0, 2, 6, 9):
            part = batch[start:stop]
            assert part.first_column() == values[start:stop] and len(part) == len(values[start:stop])
            assert part[1:3].first_column() == values[start:stop][1:3]
