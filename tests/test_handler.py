"""The handler inside TorchServe's own worker code: one request's bytes never change another request's answer.

Each batch goes through the worker's real path without a socket: the frames the Java frontend sends are decoded by
`ts.protocol.otf_message_handler.retrieve_msg` (every test runs twice: with the worker handing JSON bodies over as
bytes, as our config sets it, and JSON-decoding them itself, as a plain TorchServe does), handed to `ts.service.Service.predict`
(which calls our `handle` and answers 503 to the whole batch if anything escapes it) and the response frame it
builds is read back per request. The model is a known linear function, so every good answer is checked by arithmetic.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import struct

import pytest
import torch

from aiaas_torch.handlers import json_body, plain_rows, tabular_handler
from aiaas_torch.handlers.tabular_handler import TabularHandler
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.protocol.otf_message_handler import retrieve_msg
from ts.service import Service

W, B = (1.5, -2.0, 0.5), 3.0  # the model: y = 1.5a − 2b + 0.5c + 3
JSON_CT = {"Content-Type": "application/json"}
CARD = {
    "input": {"features": [{"name": n, "min": -10.0, "max": 10.0, "mean": 0.0} for n in "abc"], "max_rows": 100},
    "output": {"target": "y", "task": "regression", "classes": None},
    "files": {},
}


@pytest.fixture(autouse=True, params=["false", "true"], ids=["bytes", "decoded"])
def worker_decoding(request, monkeypatch) -> str:
    """Set the worker's TS_DECODE_INPUT_REQUEST (the frontend sets it from decode_input_request); return it."""
    monkeypatch.setenv("TS_DECODE_INPUT_REQUEST", request.param)
    return request.param


def _want(row) -> float:
    return sum(w * x for w, x in zip(W, row)) + B


def _handler() -> TabularHandler:
    """Return a TabularHandler set up as initialize() would, on an in-memory linear model."""
    h = TabularHandler()
    h.card, h.max_rows, h.device = CARD, 100, "cpu"
    h.model_name, h.model_version = "m", "1.0"
    lin = torch.nn.Linear(3, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([W]))
        lin.bias.fill_(B)
    h.model = lin
    h.initialized = True
    return h


def _bytes(b: bytes | str) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("!i", len(b)) + b


def _frame(requests: list[tuple[bytes, dict]]) -> bytes:
    """Return the predict frame the frontend sends for (body, headers) requests: cmd, then per request its id,
    headers and one "body" parameter with the request's Content-Type (what the frontend does for a raw body)."""
    out = b"I"
    for i, (body, headers) in enumerate(requests):
        out += _bytes(f"req-{i}")
        for k, v in headers.items():
            out += _bytes(k) + _bytes(v)
        out += struct.pack("!i", -1)
        if body is not None:
            ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
            out += _bytes("body") + _bytes(ctype) + _bytes(body)
        out += struct.pack("!i", -1)
    return out + struct.pack("!i", -1)


class _Conn:
    """A socket stand-in that serves recv() from a byte string."""

    def __init__(self, data: bytes):
        self.buf = io.BytesIO(data)

    def recv(self, n: int) -> bytes:
        return self.buf.read(n)


def _read_response(frame: bytes, n: int) -> tuple[int, list[tuple[int, dict, bytes]]]:
    """Return (batch code, [(HTTP status, response headers, body)] per request) from a worker's predict response."""
    conn = _Conn(frame)

    def i32() -> int:
        return struct.unpack("!i", conn.recv(4))[0]

    def buf() -> bytes:
        return conn.recv(i32())

    code = i32()
    buf()  # the batch's message
    answers = []
    for _ in range(n):
        buf()  # request id
        length = i32()
        conn.recv(max(length, 0))  # content type
        status = i32()
        buf()  # reason phrase
        headers = {buf().decode(): buf().decode() for _ in range(i32())}
        answers.append((status, headers, buf()))
    assert i32() == -1
    return code, answers


def run_batch_raw(handler: TabularHandler, requests: list[tuple[bytes | None, dict]]) -> list[tuple[int, dict, bytes]]:
    """Return [(HTTP status, response headers, body bytes)] for a batch, as TorchServe's worker would answer it."""
    service = Service("m", ".", {"model": {"modelVersion": "1.0"}}, handler.handle, None, len(requests),
                      metrics_cache=_metrics_cache())  # fmt: skip
    service.set_cl_socket(None)
    cmd, msg = retrieve_msg(_Conn(_frame(requests)))
    assert cmd == b"I" and len(msg) == len(requests)
    code, answers = _read_response(bytes(service.predict(msg)), len(requests))
    # the batch code is what a request without a status of its own gets; a batch failure sets it for every request
    return [(status if code == 200 else code, headers, body) for status, headers, body in answers]


def run_batch(handler: TabularHandler, requests: list[tuple[bytes | None, dict]]) -> list[tuple[int, object]]:
    """Return [(HTTP status, decoded JSON body)] for a batch, as TorchServe's worker would answer it."""
    return [(status, json.loads(body) if body != b"error" else body) for status, _, body in run_batch_raw(handler, requests)]


def _metrics_cache() -> MetricsCacheYamlImpl:
    cache = MetricsCacheYamlImpl(config_file_path=str(tabular_handler.__file__).replace("tabular_handler.py", "metrics.yaml"))
    cache.initialize_cache()
    return cache


def _good(i: int) -> tuple[bytes, dict]:
    return json.dumps({"instances": [[i, 1.0, -2.0]]}).encode(), dict(JSON_CT)


def _assert_goods(results, bad_index: int) -> None:
    for i, (status, body) in enumerate(results):
        if i != bad_index:
            assert status == 200, (i, status, body)
            assert body["predictions"] == pytest.approx([_want([i, 1.0, -2.0])], rel=1e-6), (i, body)


def _deepest_decodable() -> int:
    """Return the deepest list nesting json.loads accepts at this stack depth (bisection)."""
    lo, hi = 1, 100_000
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            json.loads("[" * mid + "]" * mid)
            lo = mid
        except RecursionError:
            hi = mid - 1
    return lo


_DEEP = _deepest_decodable() - 4
BAD_BODIES = {
    "int-over-4300-digits": (b"[[" + b"9" * 5000 + b", 1, 2]]", "4300 digits"),
    "int-over-4300-digits-named": (b'{"instances": [{"a": 1, "b": -' + b"1" * 4301 + b', "c": 2}]}', "4300 digits"),
    "huge-exponent": (b"[[1e999999999, 1, 2]]", "finite float32"),
    "v2-datatype-a-list": (json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": ["FP32"], "data": [1, 2, 3]}]}).encode(),
                           "is not a numeric type"),
    "v2-datatype-an-object": (json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": {}, "data": [1, 2, 3]}]}).encode(),
                              "is not a numeric type"),
    # as deep as the decoder takes here: TorchServe's worker may decode it, and our messages must not recurse into it
    "deep-list-as-value": (b"[[" + b"[" * _DEEP + b"]" * _DEEP + b", 1, 2]]", ("is not a number", "nested too deeply")),
    "deep-list-as-shape": (b'{"inputs": [{"name": "x", "shape": ' + b"[" * _DEEP + b"]" * _DEEP + b', "datatype": "FP32", "data": [1]}]}',
                           ("is not a list of integers", "nested too deeply")),
    "lone-surrogate-utf8-bytes": (b'[["\xed\xa0\x80", 1, 2]]', "not UTF-8"),
    "utf16-body": ("[[1, 2, 3]]".encode("utf-16"), "not UTF-8"),
    "utf8-bom": (b"\xef\xbb\xbf[[1, 2, 3]]", "BOM"),
    # a JSON string is never parsed a second time, whoever parsed it first
    "json-string-holding-json": (json.dumps(json.dumps({"instances": [[1, 2, 3]]})).encode(), "got a JSON string"),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_one_bad_body_is_its_own_400_and_the_rest_of_the_batch_is_answered(name):
    body, needle = BAD_BODIES[name]
    requests = [_good(i) for i in range(4)]
    requests[2] = (body, dict(JSON_CT))
    results = run_batch(_handler(), requests)
    status, answer = results[2]
    assert status == 400, results
    needles = needle if isinstance(needle, tuple) else (needle,)
    assert answer["code"] == 400 and answer["type"] == "InvalidInput" and any(n in answer["message"] for n in needles), answer
    assert len(answer["message"]) < 400, answer["message"]  # names the problem, does not echo the body
    _assert_goods(results, bad_index=2)


def test_a_worker_without_orjson_answers_every_request_the_same(monkeypatch):
    requests = [_good(0), (BAD_BODIES["huge-exponent"][0], dict(JSON_CT)), _good(2), (b'[[NaN, 1, 2]]', dict(JSON_CT)),
                (b"[[%d, 1, 2]]" % 2**70, dict(JSON_CT))]  # fmt: skip
    with_orjson = run_batch(_handler(), requests)
    monkeypatch.setattr(json_body, "orjson", None)
    assert run_batch(_handler(), requests) == with_orjson
    assert [status for status, _ in with_orjson] == [200, 400, 200, 400, 200]


def test_a_huge_string_is_refused_without_being_echoed_back():
    requests = [_good(0), (json.dumps({"instances": [{"a": 1, "b": 2, "c": 3, "x" * 1_000_000: 4}]}).encode(), dict(JSON_CT)), _good(2)]
    results = run_batch(_handler(), requests)
    assert results[1][0] == 400 and "unknown feature" in results[1][1]["message"] and len(results[1][1]["message"]) < 400
    _assert_goods(results, bad_index=1)


def test_a_describe_header_on_a_predict_request_does_not_answer_the_batch_with_the_card():
    requests = [(_good(0)[0], {**JSON_CT, "describe": "True"}), _good(1), _good(2)]
    results = run_batch(_handler(), requests)
    _assert_goods(results, bad_index=-1)


def test_torchserves_describe_call_still_gets_the_card():
    # the frontend's describe job: a batch of its own, the management request's headers plus describe=True, no body
    ((status, card),) = run_batch(_handler(), [(None, {"describe": "True"})])
    assert status == 200 and card == CARD


def _bug_on_666(monkeypatch, module, name) -> None:
    """Make module.name raise KeyError (a bug of ours) on a body holding 666."""
    real = getattr(module, name)

    def parse(body, *args):
        if b"666" in (body if isinstance(body, bytes) else json.dumps(body).encode()):
            raise KeyError("a bug of ours")
        return real(body, *args)

    monkeypatch.setattr(module, name, parse)


def _bug_logs(caplog) -> list:
    """Return the handler's log lines, each asserted to carry the KeyError of _bug_on_666."""
    logged = [r for r in caplog.records if r.name == tabular_handler.__name__]
    assert all(r.exc_info and "a bug of ours" in str(r.exc_info[1]) for r in logged)
    return [r.getMessage() for r in logged]


def test_a_bug_while_reading_one_request_is_its_own_500_logged_once(monkeypatch, caplog):
    _bug_on_666(monkeypatch, tabular_handler.contract, "parse_request")  # the per-request check
    requests = [_good(0), (b'{"instances": [{"a": 666, "b": 1, "c": 2, "d": 0}]}', dict(JSON_CT)), _good(2)]  # not plain rows: `check`
    with caplog.at_level(logging.ERROR, logger=tabular_handler.__name__):
        results = run_batch(_handler(), requests)
    assert results[1][0] == 500 and results[1][1]["code"] == 500 and "internal error" in results[1][1]["message"]
    _assert_goods(results, bad_index=1)
    assert len(_bug_logs(caplog)) == 1


def test_a_bug_in_the_batch_check_is_logged_and_every_request_is_checked_alone(monkeypatch, caplog):
    _bug_on_666(monkeypatch, plain_rows, "plain_shape")  # the batch hook's reading (and the plain path of `check`)
    requests = [_good(0), (b"[[666, 1, 2]]", dict(JSON_CT)), _good(2)]
    with caplog.at_level(logging.ERROR, logger=tabular_handler.__name__):
        results = run_batch(_handler(), requests)
    assert results[1][0] == 500 and "internal error" in results[1][1]["message"]
    _assert_goods(results, bad_index=1)
    lines = _bug_logs(caplog)
    assert len(lines) == 2 and "one-pass check of a batch of 3" in lines[0] and "reading request 1 of a batch of 3" in lines[1], lines


@pytest.mark.parametrize("bad", [True, "1.5", None, 1e39, -(10**39), 10**400, float("nan"), [1.0]], ids=repr)
def test_one_bad_value_in_a_batch_of_plain_requests_gets_the_answer_it_gets_alone(bad):
    # the batch's one-pass check declines the batch; each request is then checked on its own and named as if alone
    requests = [_good(i) for i in range(5)]
    requests[2] = (json.dumps({"instances": [[1.0, 2.0, 0.0], [1.0, bad, 0.0]]}).encode(), dict(JSON_CT))
    batch = run_batch(_handler(), requests)
    assert batch[2][0] == 400 and "instances[1]" in batch[2][1]["message"], batch[2]
    assert batch == [run_batch(_handler(), [r])[0] for r in requests]


def test_a_clean_batch_counts_out_of_range_values_of_every_request(caplog):
    caplog.set_level(logging.INFO, logger="ts.metrics")
    bodies = [[[11.0, 1.0, -2.0]], [[0.0, 1.0, -2.0]], [[-11.0, 99.0, -2.0], [1.0, 1.0, 1.0]], {"instances": [{"a": 1, "b": 2, "c": 30}]}]
    results = run_batch(_handler(), [(json.dumps(b).encode(), dict(JSON_CT)) for b in bodies])
    assert [len(body["predictions"]) for status, body in results if status == 200] == [1, 1, 2, 1]
    lines = _handler_metric_lines(caplog)
    assert sorted(line.split("|")[0] for line in lines) == ["[METRICS]OutOfRangeValues.Count:4", "[METRICS]RowsPredicted.Count:5"], lines


def test_a_forward_that_fails_for_the_batch_fails_only_the_request_that_fails_alone(caplog):
    h = _handler()
    model = h.model

    def fragile(x):
        if (x == 13.0).any():
            raise RuntimeError("kernel failure on 13")
        return model(x)

    h.model = fragile
    requests = [_good(0), (b"[[13, 1, 2]]", dict(JSON_CT)), _good(2), _good(3)]
    with caplog.at_level(logging.ERROR, logger=tabular_handler.__name__):
        results = run_batch(h, requests)
    assert results[1][0] == 500 and results[1][1]["type"] == "InternalServerError"
    _assert_goods(results, bad_index=1)
    messages = [r.getMessage() for r in caplog.records if r.name == tabular_handler.__name__]
    assert len(messages) == 2 and "batch of 4 rows" in messages[0] and "request 1 (1 rows)" in messages[1], messages


def _v2_body(data, n: int) -> tuple[bytes, dict]:
    return json.dumps({"inputs": [{"name": "x", "shape": [n, 3], "datatype": "FP32", "data": data}]}).encode(), dict(JSON_CT)


def test_checked_arrays_reach_the_forward_as_one_array_and_a_per_value_request_sends_lists(monkeypatch):
    h, seen = _handler(), []
    real = tabular_handler.programs.run_samples

    def spy(model, card, inputs, device="cpu", arrays=False, specs=None):
        seen.append([type(v).__name__ for v in inputs.values()])
        return real(model, card, inputs, device, arrays, specs)

    monkeypatch.setattr(tabular_handler.programs, "run_samples", spy)
    plain = run_batch(h, [_good(0), _v2_body([5, 1.0, -2.0, 6, 1.0, -2.0], 2), _good(7)])
    ragged = run_batch(h, [_good(0), _v2_body([[5, 1.0], [-2.0, 6, 1.0, -2.0]], 2)])  # valid; the per-value checks read it
    assert seen == [["ndarray"], ["list"]]
    for results in (plain, ragged):
        assert [s for s, _ in results] == [200] * len(results), results
        assert results[0][1]["predictions"] == pytest.approx([_want([0, 1.0, -2.0])], rel=1e-6)
        assert results[1][1]["outputs"][0]["data"] == pytest.approx([_want([5, 1.0, -2.0]), _want([6, 1.0, -2.0])], rel=1e-6)
    assert plain[2][1]["predictions"] == pytest.approx([_want([7, 1.0, -2.0])], rel=1e-6)


def test_without_numpy_a_worker_answers_every_format_with_the_same_bytes(monkeypatch, same_json):
    from aiaas_torch.handlers import batch_checks, protocols

    h = _handler()
    lin = h.model
    h.card = dict(CARD, output={"target": "y", "task": "classification", "classes": ["lo", "hi"]})
    h.model = lambda x: torch.cat([-lin(x), lin(x)], dim=1)  # two logits per row
    requests = [_good(0), _v2_body([5, 1.0, -2.0, 6, 1.0, -2.0], 2), _triton_request([[1.0, 2.0, 3.0]], "FP32"),
                (json.dumps([[9, 9, 9]]).encode(), dict(JSON_CT))]  # fmt: skip
    with_numpy = run_batch_raw(h, requests)
    for module in (plain_rows, batch_checks, protocols):
        monkeypatch.setattr(module, "np", None)
    h.card = copy.deepcopy(h.card)  # a worker without numpy never planned this card
    without = run_batch_raw(h, requests)
    assert [s for s, _, _ in with_numpy] == [200] * 4 and [(s, h) for s, h, _ in with_numpy] == [(s, h) for s, h, _ in without]
    assert all(same_json(a, b) for (_, _, a), (_, _, b) in zip(with_numpy, without))
    assert json.loads(with_numpy[0][2])["predictions"] == ["hi" if _want([0, 1.0, -2.0]) > 0 else "lo"]


def test_an_encoding_bug_for_one_request_is_its_own_500(monkeypatch):
    h = _handler()
    real = h.encode

    def encode(parsed, wire, outputs):
        if parsed.rows[0][0] == 7.0:
            raise TypeError("a bug of ours")
        return real(parsed, wire, outputs)

    h.encode = encode
    h.batch_lane = False  # a replaced encode that must answer every request turns the batch hooks off
    results = run_batch(h, [_good(0), _good(7), _good(2)])
    assert results[1][0] == 500 and results[1][1]["code"] == 500
    _assert_goods(results, bad_index=1)


def test_a_card_the_plain_lane_cannot_plan_is_served_request_by_request():
    # a training range beyond float64: numpy cannot hold it, so the one-pass plan fails (OverflowError escaped handle)
    h = _handler()
    h.card = copy.deepcopy(CARD)
    h.card["input"]["features"][0]["min"] = -(10**400)
    results = run_batch(h, [_good(0), _good(1)])
    assert [s for s, _ in results] == [200, 200]
    assert [b["predictions"] for _, b in results] == [b["predictions"] for _, b in run_batch(_handler(), [_good(0), _good(1)])]


@pytest.mark.parametrize("batch_lane", [True, False])
def test_read_sees_every_request_and_check_and_encode_what_the_batch_hooks_leave(batch_lane):
    h, seen = _handler(), {"read": [], "check": [], "encode": []}
    h.batch_lane = batch_lane
    for step, arg in (("read", 0), ("check", 0), ("encode", 1)):  # the request, or its protocols.Decoded
        real = getattr(h, step)
        setattr(h, step, lambda *a, real=real, step=step, arg=arg: seen[step].append(a[arg]) or real(*a))
    v2 = _v2_body([5, 1.0, -2.0], 1)
    results = run_batch(h, [_good(0), (b'{"instances": [{"a": 1, "b": 2, "c": 3}]}', dict(JSON_CT)), v2, (b"[[1, 2]]", dict(JSON_CT))])
    assert [s for s, _ in results] == [200, 200, 200, 400]
    assert len(seen["read"]) == 4
    if batch_lane:  # the hooks took the plain rows (v2 too); check names the short row; encode writes the v2 answer
        assert [w.body for w in seen["check"]] == [[[1, 2]]] and [w.wire for w in seen["encode"]] == ["v2"]
    else:  # every request through check, every answer through encode
        assert len(seen["check"]) == 4 and len(seen["encode"]) == 3


def test_a_batch_hook_may_be_replaced_by_a_subclass():
    class Quiet(TabularHandler):
        def answer_batch(self, parsed, wires, outputs):
            return ['{"hook":true}' if w.wire == "json" else None for w in wires]

    h = Quiet()
    h.__dict__.update(vars(_handler()))
    results = run_batch(h, [_good(0), _v2_body([5, 1.0, -2.0], 1)])
    assert results[0] == (200, {"hook": True}) and results[1][1]["outputs"][0]["data"] == pytest.approx([_want([5, 1.0, -2.0])])


def test_a_bug_while_writing_a_batchs_answers_at_once_falls_back_to_each_requests_own(caplog):
    requests = [_good(0), _good(7), (json.dumps([[2, 1, -2]]).encode(), dict(JSON_CT))]
    want = run_batch_raw(_handler(), requests)
    h = _handler()
    h.answer_batch = lambda *a: 1 / 0
    with caplog.at_level(logging.ERROR, logger=tabular_handler.__name__):
        assert run_batch_raw(h, requests) == want and [s for s, _, _ in want] == [200] * 3
    logged = [r for r in caplog.records if r.name == tabular_handler.__name__]
    assert len(logged) == 1 and isinstance(logged[0].exc_info[1], ZeroDivisionError)


def _handler_metric_lines(caplog) -> list[str]:
    """Return the [METRICS] lines logged since caplog started, less TorchServe's own (PredictionTime, HandlerTime)."""
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[METRICS]")]
    return [line for line in lines if not line.startswith(("[METRICS]PredictionTime.", "[METRICS]HandlerTime."))]


def test_a_clean_batch_writes_one_metric_line_under_one_request_id(caplog):
    caplog.set_level(logging.INFO, logger="ts.metrics")
    _assert_goods(run_batch(_handler(), [_good(i) for i in range(4)]), bad_index=-1)
    lines = _handler_metric_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("[METRICS]RowsPredicted.Count:4|"), lines
    assert lines[0].endswith(",req-0") and "req-1" not in lines[0], lines  # one request's id, not the batch's list


def test_a_batch_with_a_rejected_request_adds_only_that_count(caplog):
    caplog.set_level(logging.INFO, logger="ts.metrics")
    requests = [_good(i) for i in range(3)]
    requests[1] = (b'{"instances": [["x", 1, 2]]}', dict(JSON_CT))
    run_batch(_handler(), requests)
    lines = _handler_metric_lines(caplog)
    assert sorted(line.split("|", 1)[0] for line in lines) == ["[METRICS]RequestsRejected.Count:1", "[METRICS]RowsPredicted.Count:2"]


def test_a_metrics_failure_does_not_fail_the_answers():
    h = _handler()
    h._metrics = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("metrics backend broken"))
    _assert_goods(run_batch(h, [_good(0), _good(1)]), bad_index=-1)


# --- wire formats (handlers/protocols.py): Open Inference binary tensor data and TF Serving REST bodies.
# Requests are built and answers read by tritonclient's own encoder and decoder, not by code of ours.


def _triton_request(rows: list, datatype: str = "FP32", binary: bool = True, outputs=None, header_name: str | None = None):
    """Return (body, headers) of tritonclient's infer request for rows of the a, b, c model."""
    import numpy as np
    import tritonclient.http as th
    from tritonclient.utils import triton_to_np_dtype

    t = th.InferInput("x", [len(rows), 3], datatype)
    t.set_data_from_numpy(np.array(rows, dtype=triton_to_np_dtype(datatype)), binary_data=binary)
    body, json_size = th.InferenceServerClient.generate_request_body([t], outputs=outputs)
    headers = {} if json_size is None else {header_name or "Inference-Header-Content-Length": str(json_size)}
    return body, headers


def _triton_result(status: int, headers: dict, body: bytes):
    """Return tritonclient's InferResult of a 200 answer (header names as the worker sent them)."""
    import tritonclient.http as th

    assert status == 200, (status, body[:300])
    length = next((v for k, v in headers.items() if k.lower() == "inference-header-content-length"), None)
    return th.InferenceServerClient.parse_response_body(body, header_length=None if length is None else int(length))


@pytest.mark.parametrize("header_name", ["Inference-Header-Content-Length", "inference-header-content-length", "INFERENCE-HEADER-CONTENT-LENGTH"])
def test_binary_tensor_data_in_and_out_whatever_the_header_case(header_name):
    rows = [[1.0, 2.0, 3.0], [-4.0, 0.5, 8.0]]
    results = run_batch_raw(_handler(), [_triton_request(rows, header_name=header_name), _good(1)])
    status, headers, body = results[0]
    assert any(k.lower() == "inference-header-content-length" for k in headers), headers  # tritonclient's default: binary outputs
    result = _triton_result(status, headers, body)
    assert result.as_numpy("y").tolist() == pytest.approx([_want(r) for r in rows], rel=1e-6)
    assert result.get_output("y")["parameters"]["binary_data_size"] == 4 * len(rows)
    assert results[1][0] == 200 and json.loads(results[1][2])["predictions"] == pytest.approx([_want([1, 1.0, -2.0])])


@pytest.mark.parametrize("datatype", ["FP64", "FP16", "INT64", "INT32", "UINT8"])
def test_binary_inputs_of_other_numeric_datatypes(datatype):
    rows = [[1, 2, 3], [4, 0, 8]]
    ((status, headers, body),) = run_batch_raw(_handler(), [_triton_request(rows, datatype)])
    assert _triton_result(status, headers, body).as_numpy("y").tolist() == pytest.approx([_want(r) for r in rows], rel=1e-6)


def test_json_inputs_with_binary_outputs_asked_by_name_and_json_outputs():
    import tritonclient.http as th

    rows = [[1.0, 2.0, 3.0]]
    as_binary = run_batch_raw(_handler(), [_triton_request(rows, binary=False, outputs=[th.InferRequestedOutput("y", binary_data=True)])])
    as_json = run_batch_raw(_handler(), [_triton_request(rows, binary=False, outputs=[th.InferRequestedOutput("y", binary_data=False)])])
    assert _triton_result(*as_binary[0]).get_output("y")["parameters"]["binary_data_size"] == 4
    status, headers, body = as_json[0]
    assert not any(k.lower() == "inference-header-content-length" for k in headers)
    assert json.loads(body)["outputs"][0]["data"] == pytest.approx([_want(rows[0])])


def test_an_output_the_model_lacks_is_a_400_naming_it():
    import tritonclient.http as th

    results = run_batch(_handler(), [_triton_request([[1.0, 2.0, 3.0]], outputs=[th.InferRequestedOutput("nope")]), _good(1)])
    assert results[0][0] == 400 and "'nope'" in results[0][1]["message"] and "['y']" in results[0][1]["message"], results[0]
    _assert_goods(results, bad_index=0)


BAD_BINARY = {
    "length-past-the-body": (lambda body, n: (body, str(len(body) + 1)), "outside the body"),
    "length-not-a-number": (lambda body, n: (body, "twelve"), "not an integer"),
    "binary-part-cut-short": (lambda body, n: (body[:-2], str(n)), "runs past the body's end"),
    "bytes-left-over": (lambda body, n: (body + b"\0\0\0\0", str(n)), "4 bytes after the binary inputs"),
    "header-not-json": (lambda body, n: (b"x" + body[1:], str(n)), "not valid JSON"),
}


@pytest.mark.parametrize("name", list(BAD_BINARY))
def test_a_malformed_binary_body_is_its_own_400(name):
    make, needle = BAD_BINARY[name]
    body, headers = _triton_request([[1.0, 2.0, 3.0]])
    body, length = make(body, int(headers["Inference-Header-Content-Length"]))
    results = run_batch(_handler(), [_good(0), (body, {"Inference-Header-Content-Length": length}), _good(2)])
    assert results[1][0] == 400 and needle in results[1][1]["message"], results[1]
    _assert_goods(results, bad_index=1)


def test_tf_serving_columnar_bodies_answer_outputs():
    named = {"inputs": {"a": [1.0, -4.0], "b": [2.0, 0.5], "c": [3.0, 8.0]}, "signature_name": "serving_default"}
    bare = {"inputs": [[1.0, 2.0, 3.0], [-4.0, 0.5, 8.0]]}
    results = run_batch(_handler(), [(json.dumps(named).encode(), dict(JSON_CT)), (json.dumps(bare).encode(), dict(JSON_CT))])
    want = [_want([1.0, 2.0, 3.0]), _want([-4.0, 0.5, 8.0])]
    for status, answer in results:
        assert status == 200 and list(answer) == ["outputs"] and answer["outputs"] == pytest.approx(want, rel=1e-6), answer


@pytest.mark.parametrize("body, needle", [
    ({"inputs": {"a": [1.0, 2.0], "b": [2.0], "c": [3.0, 4.0]}}, "columns of different lengths"),
    ({"inputs": {"a": [1.0], "b": [2.0], "z": [3.0]}}, "unknown feature"),
    ({"inputs": {"a": 1.0, "b": [2.0], "c": [3.0]}}, "inputs.a: expected a list"),
    ({"inputs": {"a": [1.0], "b": [2.0], "c": [3.0]}, "instances_": 1}, "unexpected key"),
    ({"inputs": {}}, "expected a list of tensor objects"),
])  # fmt: skip
def test_bad_tf_serving_columnar_bodies_are_400s(body, needle):
    results = run_batch(_handler(), [_good(0), (json.dumps(body).encode(), dict(JSON_CT))])
    assert results[1][0] == 400 and needle in results[1][1]["message"], results[1]
    _assert_goods(results, bad_index=1)


def test_every_handler_module_is_shipped_in_every_archive():
    # the contract is split into modules that import each other inside a worker: an archive without one fails to load
    import ast
    from pathlib import Path

    from aiaas_torch import archive

    shipped = {f.name for f in archive.SHIPPED_CODE} | {archive.HANDLER_FILE.name}
    folder = Path(tabular_handler.__file__).parent
    local = {p.stem for p in folder.glob("*.py")}
    needed, todo = set(), [archive.HANDLER_FILE.name]
    while todo:  # what the handler file imports from its folder, and what those import, as a worker resolves it
        name = todo.pop()
        needed.add(name)
        for node in ast.walk(ast.parse((folder / name).read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            todo += [f"{n}.py" for n in names if n in local and f"{n}.py" not in needed]
    assert {"json_body.py", "plain_rows.py", "tabular_rows.py"} <= needed and needed <= shipped, sorted(needed - shipped)
