"""One JSON parse per body (issue 17): `decode_body` parses bytes with orjson where orjson gives json's own value, and
every value and message is the one Python's json path gives, with or without orjson installed.

Each body of the corpus is decoded twice, with orjson and with the module's orjson removed (as in a worker without
it); the outcomes (the value with the type of every node, or the ContractError's message) must be identical.
"""

from __future__ import annotations

import json
import random

import pytest

from aiaas_torch.handlers import json_body
from aiaas_torch.handlers.contract_common import ContractError

pytestmark = pytest.mark.skipif(json_body.orjson is None, reason="orjson is not installed here")


def _typed(value):
    """Return value as nested (type name, content) pairs: 1 and 1.0, or a NaN marker and its text, stay apart."""
    if isinstance(value, dict):
        return ("dict", [(k, _typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    if isinstance(value, float):
        return ("float", value.hex())
    return (type(value).__name__, value)


def _outcome(body, monkeypatch, with_orjson: bool):
    """Return ("value", typed value) or ("error", message) of decode_body(body), with or without orjson."""
    with monkeypatch.context() as m:
        if not with_orjson:
            m.setattr(json_body, "orjson", None)
        try:
            return "value", _typed(json_body.decode_body(body))
        except ContractError as e:
            return "error", str(e)


ROW = b"[1.5, -2, 3e2]"
CORPUS = {
    "plain": b'{"instances": [' + ROW + b", " + ROW + b"]}",
    "nan": b'{"instances": [[NaN, 1, 2]]}',
    "minus-infinity": b'{"instances": [[1, -Infinity, 2]]}',
    "infinity-top": b"Infinity",
    "1e400": b'{"instances": [[1e400, 1, 2]]}',
    "-1e400": b"[-1e400]",
    "2**70": b'{"instances": [[%d, 1, 2]]}' % 2**70,
    "-2**70": b"[%d]" % -(2**70),
    "2**64": b"[%d]" % 2**64,
    "u64-max": b"[%d]" % (2**64 - 1),
    "i64-min": b"[%d]" % -(2**63),
    "i64-min-minus-1": b"[%d]" % (-(2**63) - 1),
    "18-digit-int": b"[%d]" % (10**18 - 1),
    "top-level-20-digit-int": b"%d" % 10**19,
    "4400-digit-int": b"[" + b"7" * 4400 + b"]",
    "300-digit-int": b"[" + b"7" * 300 + b"]",
    "long-fraction": b"[0.000123456789012345678901, 1.00000000000000000000001]",
    "long-integer-part-float": b"[123456789012345678901234.5]",
    "long-exponent": b"[1e-0000000000000000000000005]",
    "digits-in-a-string": b'{"id": "123456789012345678901234", "instances": [[1, 2, 3]]}',
    "bad-utf8-at-byte-17": b'{"instances": [["\xff", 1, 2]]}',
    "lone-surrogate-bytes": b'["\xed\xa0\x80"]',
    "lone-surrogate-escape": b'["\\ud800"]',
    "latin1": b'{"caf\xe9": 1}',
    "utf16": "[1]".encode("utf-16"),
    "bom": b"\xef\xbb\xbf" + ROW,
    "nested-200": b"[" * 200 + b"]" * 200,
    "nested-200000": b"[" * 200_000 + b"]" * 200_000,
    "nested-objects-100000": b'{"a": ' * 100_000 + b"1" + b"}" * 100_000,
    "duplicate-keys": b'{"instances": [[1, 2, 3]], "b": 1, "instances": [[4, 5, 6]]}',
    "empty": b"",
    "whitespace": b" \n\t\r ",
    "nul-after": ROW + b"\x00",
    "control-char-in-string": b'["\x01"]',
    "trailing-comma": b"[1, 2,]",
    "single-quotes": b"{'a': 1}",
    "truncated": b'{"instances": [[1, 2',
    "null": b"null",
    "false": b"false",
    "json-string": json.dumps(json.dumps({"instances": [[1, 2, 3]]})).encode(),
    "negative-zero": b"[-0, -0.0, 0e0, 1E5, 1e-400]",
    "unicode": '{"é": "☃", "\\u00e9x": "\\ud83d\\ude00"}'.encode(),
    "bytearray": bytearray(b'{"instances": [[1, 2, 3]]}'),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_orjson_and_json_give_the_same_value_or_message(name, monkeypatch):
    body = CORPUS[name]
    assert _outcome(body, monkeypatch, True) == _outcome(body, monkeypatch, False)


def test_the_corpus_holds_both_outcomes(monkeypatch):
    """Guard against a corpus that proves nothing: it must hold values and refusals of each kind named in the issue."""
    outcomes = {name: _outcome(body, monkeypatch, False) for name, body in CORPUS.items()}

    def one_row(*cells):
        return "value", ("dict", [("instances", ("list", [("list", list(cells))]))])

    assert outcomes["2**70"] == one_row(("int", 2**70), ("int", 1), ("int", 2))
    assert outcomes["nan"] == one_row(("NaN/Infinity literal", "NaN"), ("int", 1), ("int", 2))
    assert outcomes["bad-utf8-at-byte-17"] == ("error", "body: not UTF-8 text (byte 17)")
    assert "BOM" in outcomes["bom"][1] and "4300" in outcomes["4400-digit-int"][1]
    assert outcomes["nested-200000"] == ("error", "body: JSON nested too deeply")
    assert outcomes["empty"][0] == outcomes["whitespace"][0] == "error"


def test_random_numbers_in_every_common_format_parse_to_the_same_floats(monkeypatch):
    rng = random.Random(17)
    values = [rng.gauss(0, 1) * 10.0 ** rng.randint(-30, 30) for _ in range(3000)]
    texts = [format(v, f) for v in values for f in (".17g", "", ".6f", ".15e", ".3g")]
    texts += [str(rng.randint(-(2**63), 2**64 - 1)) for _ in range(500)]
    body = ("[" + ", ".join(texts) + "]").encode()
    assert _outcome(body, monkeypatch, True) == _outcome(body, monkeypatch, False)


def test_a_plain_body_is_parsed_by_orjson_once(monkeypatch):
    calls = []
    real = json_body.orjson.loads

    class Spy:
        JSONDecodeError = json_body.orjson.JSONDecodeError

        @staticmethod
        def loads(body):
            calls.append(body)
            return real(body)

    monkeypatch.setattr(json_body, "orjson", Spy)
    monkeypatch.setattr(json_body.json, "loads", lambda *a, **k: pytest.fail("json.loads ran on a body orjson read"))
    assert json_body.decode_body(CORPUS["plain"]) == {"instances": [[1.5, -2, 300.0]] * 2}
    assert calls == [CORPUS["plain"]]


def test_a_body_orjson_would_read_differently_is_left_to_json(monkeypatch):
    monkeypatch.setattr(json_body.orjson, "loads", lambda body: pytest.fail(f"orjson.loads ran on {body[:40]!r}"), raising=False)
    assert json_body.decode_body(CORPUS["2**70"])["instances"][0][0] == 2**70
    assert json_body.decode_body(CORPUS["i64-min-minus-1"]) == [-(2**63) - 1]
