"""Promise 1: every malformed HTTP request gets a 4xx with a JSON message naming the problem; no worker dies, and
no other request of its batch is affected.

Each case that reaches the handler is sent to the shared `batch8` model (batchSize 8, maxBatchDelay 2 s) together
with 7 good requests at the same moment: the answers' X-Aiaas-Batch-* headers (set by the probe handler) must show
that all 8 were one batch, the good ones must get the local model's values and the bad one its own 4xx. Routing
errors (404), which TorchServe answers itself, are sent alone to `lin`. Before and after each case the workers (ids
and pids from the management API) must be the same READY processes.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pytest

from aiaas_torch.client import BadRequest, Client, StatusError

from rel_helpers import PROBE_BATCH, PROBE_ID_HEADER, PROBE_SIZE_HEADER, CountingTransport, close, keys, workers

pytestmark = [pytest.mark.serving, pytest.mark.slow]

JSON_CT = {"Content-Type": "application/json"}
MAX_REQUEST_SIZE = 6553500  # TorchServe's default max_request_size
ROW_LIMIT = 10_000  # the card's default max_rows


@dataclass
class Case:
    """One malformed request: what to send, and a fragment the 4xx answer's JSON message must contain (or one of them)."""

    id: str
    body: bytes | None
    needle: str | tuple
    status: int = 400
    headers: dict = field(default_factory=lambda: dict(JSON_CT))
    path: str = "/predictions/lin"
    method: str = "POST"


def _j(obj) -> bytes:
    return json.dumps(obj).encode()


DEEP = 990  # list nesting the worker's own JSON decoder may still accept: our messages must not recurse into it
HUGE = 5_000_000  # characters: under max_request_size, far over anything an error message should echo


ROW = [1.0, 2.0, 3.0]
CASES = [
    # wrong content type (the body itself is a valid request)
    Case("ctype-text-plain", _j({"instances": [ROW]}), "Content-Type", 415, {"Content-Type": "text/plain"}),
    Case("ctype-octet-stream", _j({"instances": [ROW]}), "Content-Type", 415, {"Content-Type": "application/octet-stream"}),
    Case("ctype-form-urlencoded", b"instances=1,2,3", "Content-Type", 415, {"Content-Type": "application/x-www-form-urlencoded"}),
    Case("ctype-multipart", b'--XX\r\nContent-Disposition: form-data; name="body"\r\n\r\n[1,2,3]\r\n--XX--\r\n', "Content-Type", 415,
         {"Content-Type": "multipart/form-data; boundary=XX"}),
    Case("ctype-xml", b"<instances><row>1 2 3</row></instances>", "Content-Type", 415, {"Content-Type": "application/xml"}),
    Case("ctype-image", b"\x89PNG\r\n\x1a\n\x00\x00", "Content-Type", 415, {"Content-Type": "image/png"}),
    # not JSON, truncated, empty
    Case("not-json", b"this is not json", "not valid JSON"),
    Case("single-quotes", b"{'instances': [[1, 2, 3]]}", "not valid JSON"),
    Case("trailing-comma", b'{"instances": [[1, 2, 3],]}', "not valid JSON"),
    Case("truncated-in-row", b'{"instances": [[1, 2', "not valid JSON"),
    Case("truncated-in-string", b'{"instan', "not valid JSON"),
    Case("truncated-last-brace", b'{"instances": [[1, 2, 3]]', "not valid JSON"),
    Case("empty-body", b"", "empty"),
    Case("whitespace-body", b"  \n\t ", "empty"),
    Case("invalid-utf8", b'{"instances": [["\xff\xfe", 2, 3]]}', "UTF-8"),
    Case("deeply-nested-arrays", b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    Case("deeply-nested-in-row", _j({"instances": [[[[[[[[1]]]]]], 2, 3]]}), "is not a number"),
    Case("v2-nested-too-deep", b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": ' + b"[" * 40 + b"1"
         + b"]" * 40 + b"}]}", "nested too deeply"),
    # wrong shapes at the top
    Case("top-number", b"42", "expected a JSON object or list"),
    Case("top-string", b'"1,2,3"', "expected a JSON object or list"),
    Case("top-null", b"null", "expected a JSON object or list"),
    Case("top-string-holding-json", _j(json.dumps({"instances": [ROW]})), "got a JSON string"),
    Case("object-without-instances", _j({"rows": [ROW]}), "without 'instances' or 'inputs'"),
    Case("instances-and-inputs", _j({"instances": [ROW], "inputs": []}), "both 'instances' and 'inputs'"),
    Case("instances-not-a-list", _j({"instances": {"a": 1}}), "expected a list of rows"),
    Case("inputs-not-a-list", _j({"inputs": 3}), "inputs"),
    Case("v2-string-datatype", _j({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "BYTES", "data": ["1", "2", "3"]}]}), "datatype"),
    Case("v2-shape-mismatch", _j({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": ROW}]}), "3 values for shape [2, 3]"),
    # values that are not finite float32 numbers
    Case("string-for-number", _j({"instances": [["1.0", 2, 3]]}), "is not a number"),
    Case("boolean", _j({"instances": [[True, 2, 3]]}), "is not a number"),
    Case("null-value", _j({"instances": [[None, 2, 3]]}), "is not a number"),
    Case("object-as-value", _j({"instances": [[{"v": 1}, 2, 3]]}), "is not a number"),
    Case("nan-literal", b'{"instances": [[NaN, 2, 3]]}', "feature 'a'"),
    Case("infinity-literal", b'{"instances": [[1, Infinity, 3]]}', "feature 'b'"),
    Case("minus-infinity-literal", b'{"instances": [[1, 2, -Infinity]]}', "feature 'c'"),
    Case("beyond-float32", b'{"instances": [[1e39, 2, 3]]}', "finite float32"),
    Case("beyond-float64", b'{"instances": [[1, 2e400, 3]]}', "finite float32"),
    Case("huge-integer", b'{"instances": [[' + b"9" * 400 + b", 2, 3]]}", "feature 'a'"),
    # what Python's json refuses or mishandles, and odd encodings
    Case("int-over-4300-digits", b'{"instances": [[' + b"9" * 5000 + b", 2, 3]]}", "4300 digits"),
    Case("negative-int-over-4300-digits-named", b'{"instances": [{"a": 1, "b": -' + b"1" * 4301 + b', "c": 2}]}', "4300 digits"),
    Case("int-over-4300-digits-in-v2-shape", b'{"inputs": [{"name": "x", "shape": [' + b"1" * 4400 + b', 3], "datatype": "FP32", '
         b'"data": [1, 2, 3]}]}', "4300 digits"),
    Case("huge-exponent", b'{"instances": [[1e999999999, 2, 3]]}', "finite float32"),
    Case("deep-list-as-value", b'{"instances": [[' + b"[" * DEEP + b"]" * DEEP + b", 2, 3]]}", ("is not a number", "nested too deeply")),
    Case("deep-list-as-v2-shape", b'{"inputs": [{"name": "x", "shape": ' + b"[" * DEEP + b"]" * DEEP + b', "datatype": "FP32", '
         b'"data": [1, 2, 3]}]}', ("is not a list of integers", "nested too deeply")),
    Case("deep-list-as-v2-datatype", b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": ' + b"[" * DEEP + b"]" * DEEP
         + b', "data": [1, 2, 3]}]}', ("is not a numeric type", "nested too deeply")),
    Case("deeply-nested-objects", b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
    Case("v2-datatype-not-a-string", _j({"inputs": [{"name": "x", "shape": [1, 3], "datatype": ["FP32"], "data": ROW}]}),
         "is not a numeric type"),
    Case("huge-string-value", _j({"instances": [["x" * HUGE, 2, 3]]}), "is not a number"),
    Case("huge-string-feature-name", _j({"instances": [{"a": 1, "b": 2, "c": 3, "x" * HUGE: 4}]}), "unknown feature"),
    Case("huge-string-key-at-top", _j({"x" * HUGE: 1}), "without 'instances' or 'inputs'"),
    Case("huge-json-string-body", _j("x" * HUGE), "got a JSON string"),
    Case("lone-surrogate-escape-as-value", b'{"instances": [["\\ud800", 2, 3]]}', "is not a number"),
    Case("lone-surrogate-utf8-bytes", b'{"instances": [["\xed\xa0\x80", 2, 3]]}', "UTF-8"),
    Case("utf16-body", '{"instances": [[1, 2, 3]]}'.encode("utf-16"), "UTF-8"),
    Case("utf16-body-declared", '{"instances": [[1, 2, 3]]}'.encode("utf-16-le"), "send JSON in UTF-8", 415,
         {"Content-Type": "application/json; charset=utf-16"}),
    Case("utf8-bom", b"\xef\xbb\xbf" + _j({"instances": [ROW]}), "BOM"),
    Case("latin1-body", b'{"instances": [{"caf\xe9": 1, "b": 2, "c": 3}]}', "UTF-8"),
    Case("nul-after-body", _j({"instances": [ROW]}) + b"\x00", "not valid JSON"),
    Case("control-chars-in-string", b'{"instances": [["\x01\x02", 2, 3]]}', "not valid JSON"),
    Case("non-ascii-content-type", _j({"instances": [ROW]}), "Content-Type", 415, {"Content-Type": b"application/json\xff\xfe"}),
    # rows of the wrong width, names
    Case("row-too-short", _j({"instances": [[1, 2]]}), "2 values, expected 3"),
    Case("row-too-long", _j({"instances": [[1, 2, 3, 4]]}), "4 values, expected 3"),
    Case("ragged-rows", _j({"instances": [ROW, [1, 2]]}), "instances[1]"),
    Case("bare-list-wrong-width", _j([6, 7]), "2 values, expected 3"),
    Case("row-is-a-number", _j({"instances": [1, 2, 3]}), "expected a list of 3 numbers"),
    Case("unknown-feature", _j({"instances": [{"a": 1, "b": 2, "c": 3, "zz": 4}]}), "unknown feature"),
    Case("missing-feature", _j({"instances": [{"a": 1, "b": 2}]}), "missing feature(s) ['c']"),
    Case("unicode-junk-names", _j({"instances": [{"a\u0000": 1, "\u202eb": 2, "\ud83d\ude00": 3}]}), "unknown feature"),
    Case("lone-surrogate-name", b'{"instances": [{"\\ud800": 1, "b": 2, "c": 3}]}', "unknown feature"),
    Case("mixed-named-positional", _j({"instances": [{"a": 1, "b": 2, "c": 3}, ROW]}), "mixes named"),
    # how many rows
    Case("zero-rows", _j({"instances": []}), "no rows"),
    Case("zero-rows-bare", _j([]), "no rows"),
    Case("v2-zero-rows", _j({"inputs": [{"name": "x", "shape": [0, 3], "datatype": "FP32", "data": []}]}), "no rows"),
    Case("over-row-limit", _j({"instances": [ROW] * (ROW_LIMIT + 1)}), f"more than the limit of {ROW_LIMIT}"),
    # routing: unknown model, version, method
    Case("unknown-model", _j({"instances": [ROW]}), "Model not found", 404, path="/predictions/nosuchmodel"),
    Case("unknown-version", _j({"instances": [ROW]}), "does not exist", 404, path="/predictions/lin/9.9"),
    Case("unicode-junk-model-name", _j({"instances": [ROW]}), "not found", 404, path="/predictions/%E2%80%AEnil%F0%9F%98%80"),
    Case("path-traversal-model-name", _j({"instances": [ROW]}), "", 404, path="/predictions/..%2F..%2Fetc%2Fpasswd"),
]
OVERSIZE = Case("over-max-request-size", None, "max_request_size", 413)


def test_corpus_is_big_enough():
    assert len(CASES) + 1 >= 40 and len({c.id for c in CASES}) == len(CASES)


def _good_request_succeeds(shared, client: Client, salt: float) -> None:
    rows = [[salt, 2.0 * salt, -salt], [0.5, -1.0, 4.0]]
    got = client.predict("lin", {"instances": rows})["predictions"]
    want = shared.expect(rows)
    assert len(got) == 2 and all(close(g, w) for g, w in zip(got, want)), (got, want)


@pytest.fixture(scope="module")
def client(shared):
    with Client(home=shared.home, request_timeout=60, retries=0) as c:
        yield c


BATCHED = [c for c in CASES if c.status in (400, 415) and c.path == "/predictions/lin"]  # answered by our handler
ROUTED = [c for c in CASES if c not in BATCHED]  # answered by TorchServe before any handler runs


@pytest.fixture(scope="module")
def http():
    # one client for every request: creating an httpx.Client costs ~0.1 s of CPU here (its SSL context)
    with httpx.Client(timeout=60, trust_env=False, limits=httpx.Limits(max_connections=2 * PROBE_BATCH)) as c:
        yield c


def _post(http: httpx.Client, shared, path: str, body: bytes | None, headers: dict, method: str = "POST") -> httpx.Response:
    token = keys(shared.home)["inference"]
    return http.request(method, shared.info.inference_url + path, content=body, headers={**headers, "Authorization": f"Bearer {token}"})


def _one_batch(http, shared, body: bytes, headers: dict, good_headers: dict = JSON_CT) -> tuple[httpx.Response, list]:
    """Send one request and PROBE_BATCH − 1 good ones to batch8 at the same moment; return (its answer, [(good row,
    answer)]), after checking from the answers' headers that the handler saw all of them in one batch."""
    rows = [[0.25 * k, -0.5 * k, 1.0 + k] for k in range(1, PROBE_BATCH)]
    answers: list = [None] * PROBE_BATCH
    start = threading.Barrier(PROBE_BATCH)

    def send(k: int) -> None:
        start.wait()
        if k == 0:
            answers[k] = _post(http, shared, "/predictions/batch8", body, headers)
        else:
            answers[k] = _post(http, shared, "/predictions/batch8", _j({"instances": [rows[k - 1]]}), good_headers)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(PROBE_BATCH)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(isinstance(r, httpx.Response) for r in answers), answers
    seen = {(r.headers.get(PROBE_SIZE_HEADER), r.headers.get(PROBE_ID_HEADER)) for r in answers}
    assert len(seen) == 1 and next(iter(seen))[0] == str(PROBE_BATCH), [(r.status_code, r.text[:100]) for r in answers]
    return answers[0], list(zip(rows, answers[1:]))


def _assert_answered(shared, goods: list) -> None:
    want = shared.expect([row for row, _ in goods])
    for (row, r), w in zip(goods, want):
        assert r.status_code == 200, (row, r.status_code, r.text[:300])
        got = r.json()["predictions"]
        assert len(got) == 1 and close(got[0], w), (row, got, w)


def _assert_refused(r: httpx.Response, case: Case) -> None:
    assert r.status_code == case.status, (r.status_code, r.text[:300])
    body = r.json()  # must be JSON
    assert isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"], body
    needles = case.needle if isinstance(case.needle, tuple) else (case.needle,)
    assert any(n in body["message"] for n in needles), body["message"]
    assert len(body["message"]) < 600, body["message"][:300]  # names the problem; does not echo a huge body back


@pytest.mark.parametrize("case", BATCHED, ids=[c.id for c in BATCHED])
def test_malformed_request_is_refused_alone_in_its_batch_and_no_worker_dies(shared, http, case: Case):
    before = workers(shared.info, "batch8")
    assert before and all(s == "READY" for _, _, s in before), before
    bad, goods = _one_batch(http, shared, case.body, case.headers)
    _assert_refused(bad, case)
    _assert_answered(shared, goods)
    assert workers(shared.info, "batch8") == before  # same worker ids, same pids, all READY: none died


def test_a_describe_header_on_predict_requests_changes_nothing(shared, http):
    """TorchServe's describe call reaches the handler as a request with the header describe=True; a predict
    request can carry that header too, and must still be answered as a prediction, its batch untouched."""
    before = workers(shared.info, "batch8")
    headers = {**JSON_CT, "describe": "True"}
    first, goods = _one_batch(http, shared, _j({"instances": [ROW]}), headers, good_headers=headers)
    _assert_answered(shared, [(ROW, first)] + goods)
    assert workers(shared.info, "batch8") == before


@pytest.mark.parametrize("case", ROUTED, ids=[c.id for c in ROUTED])
def test_request_for_an_unknown_route_is_refused_with_json_4xx(shared, client, http, case: Case):
    before = workers(shared.info, "lin")
    _assert_refused(_post(http, shared, case.path, case.body, case.headers, case.method), case)
    assert workers(shared.info, "lin") == before
    _good_request_succeeds(shared, client, salt=float(len(case.id)))


def test_the_client_sends_a_refused_request_once(shared):
    """With its default retries, the client makes one attempt per refused request: no 4xx is retried."""
    long_int = next(c for c in CASES if c.id == "int-over-4300-digits")
    with Client(home=shared.home, request_timeout=60) as c:
        attempts = CountingTransport(c)
        with pytest.raises(BadRequest) as e:
            c.predict("lin", long_int.body)  # before the fix: 503 to its batch, and two retries
        assert long_int.needle in e.value.message and attempts.posts == 1
        with pytest.raises(BadRequest):
            c.predict("lin", {"instances": [[1, 2]]})
        with pytest.raises(StatusError) as e:
            c.predict("lin", {"instances": [ROW]}, version="9.9")
        assert e.value.status == 404
    assert attempts.posts == 3 and not attempts.failed


def test_body_over_max_request_size_is_413_and_the_client_names_the_limit(shared, client):
    """TorchServe's HTTP layer (Netty's aggregator) answers 413 with an EMPTY body before any handler runs,
    so the JSON message is the client's: a typed StatusError naming max_request_size."""
    before = workers(shared.info, "lin")
    body = b'{"instances": [[1, 2, 3]], "pad": "' + b"x" * MAX_REQUEST_SIZE + b'"}'
    token = keys(shared.home)["inference"]
    r = httpx.post(shared.info.inference_url + "/predictions/lin", content=body,
                   headers={**JSON_CT, "Authorization": f"Bearer {token}"}, timeout=60, trust_env=False)  # fmt: skip
    assert r.status_code == OVERSIZE.status and 400 <= r.status_code < 500
    with pytest.raises(StatusError) as e:
        client.predict("lin", body)
    assert e.value.status == 413 and OVERSIZE.needle in e.value.message
    assert workers(shared.info, "lin") == before
    _good_request_succeeds(shared, client, salt=9.0)


def test_a_transfer_cut_short_leaves_the_server_answering(shared, client):
    """A client that announces 100000 bytes, sends 20 and hangs up: nothing reaches a worker, nothing dies."""
    before = workers(shared.info, "lin")
    url = urlsplit(shared.info.inference_url)
    token = keys(shared.home)["inference"]
    head = (f"POST /predictions/lin HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(head + b'{"instances": [[1, 2')
    assert workers(shared.info, "lin") == before
    _good_request_succeeds(shared, client, salt=3.0)
