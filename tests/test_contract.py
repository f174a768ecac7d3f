"""The request contract shared by the handler and the library: body rules, rejections, answers, files and host."""

from __future__ import annotations

import json
import math

import pytest

from aiaas_torch.handlers import aiaas_contract as c
from aiaas_torch.handlers import integrity
from aiaas_torch.handlers.aiaas_contract import ContractError, parse_request


def _card(names=("a", "b", "c"), task="regression", classes=None, max_rows=5, files=None):
    return {
        "input": {"features": [{"name": n, "min": 0.0, "max": 10.0} for n in names], "max_rows": max_rows},
        "output": {"target": "y", "task": task, "classes": classes},
        "files": files if files is not None else {},
    }


CARD = _card()
ONE = _card(names=("x",))


# --- accepted bodies ---------------------------------------------------------------------------------------


def test_instances_of_lists():
    p = parse_request('{"instances": [[1, 2, 3], [4.5, 5, 6]]}', CARD)
    assert p.rows == [[1.0, 2.0, 3.0], [4.5, 5.0, 6.0]]
    assert p.fmt == "instances"
    assert all(isinstance(v, float) for r in p.rows for v in r)


def test_instances_of_objects_are_put_in_feature_order():
    p = parse_request(b'{"instances": [{"c": 3, "a": 1, "b": 2}]}', CARD)
    assert p.rows == [[1.0, 2.0, 3.0]] and p.fmt == "instances"


def test_v2_body_gets_a_v2_answer():
    body = {"id": "r1", "inputs": [{"name": "in", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6]]}]}
    p = parse_request(json.dumps(body), CARD)
    assert p.fmt == "v2" and p.v2_id == "r1"
    assert p.rows == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    ans = c.answer(CARD, p, [[0.5], [1.5]], "m", "2")
    assert ans == {
        "model_name": "m",
        "model_version": "2",
        "id": "r1",
        "outputs": [{"name": "y", "shape": [2], "datatype": "FP32", "data": [0.5, 1.5]}],
    }
    # flat data and a 1-D shape are one row
    p1 = parse_request({"inputs": [{"name": "in", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]}]}, CARD)
    assert p1.rows == [[1.0, 2.0, 3.0]] and p1.v2_id is None


def test_bare_list_of_lists_is_rows():
    p = parse_request("[[1, 2, 3], [4, 5, 6]]", CARD)
    assert p.rows == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]] and p.fmt == "rows"
    assert c.answer(CARD, p, [[1.0], [2.0]], "m", "1") == {"predictions": [1.0, 2.0], "model": "m", "version": "1"}


def test_bare_list_of_numbers_is_one_row():
    p = parse_request("[1, 2, 3]", CARD)
    assert p.rows == [[1.0, 2.0, 3.0]]
    assert parse_request("[6]", ONE).rows == [[6.0]]
    # [6, 7] to a one-feature model is one row of width 2, not two rows
    with pytest.raises(ContractError, match=r"rows\[0\]: 2 values, expected 1 \(x\)"):
        parse_request("[6, 7]", ONE)


def test_out_of_range_values_are_counted():
    p = parse_request("[[-1, 5, 11], [0, 10, 3]]", CARD)
    assert p.out_of_range == 2


# --- rejections --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs",
    [
        [[1, 2, 3]],  # rows instead of a tensor object
        {"name": "in", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},  # not in a list
        [{"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}] * 2,  # two tensors
        "1,2,3",
    ],
)
def test_inputs_in_any_other_shape_is_an_error(inputs):
    with pytest.raises(ContractError, match=r"^inputs: expected a list holding one tensor object"):
        parse_request({"inputs": inputs}, CARD)


@pytest.mark.parametrize(
    "tensor, match",
    [
        ({"name": "in", "shape": [1, 3], "data": [1, 2, 3]}, r"inputs\[0\]: missing field\(s\) \['datatype'\]"),
        ({"name": "in", "shape": [1, 3], "datatype": "BYTES", "data": [1, 2, 3]}, r"inputs\[0\].datatype: 'BYTES'"),
        ({"name": "in", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}, r"inputs\[0\].shape: \[1, 4\], expected \[N, 3\]"),
        ({"name": "in", "shape": [1, "3"], "datatype": "FP32", "data": [1, 2, 3]}, r"inputs\[0\].shape: .* not a list of integers"),
        ({"name": "in", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3]}, r"inputs\[0\].data: 3 values for shape \[2, 3\]"),
        ({"name": "in", "shape": [0, 3], "datatype": "FP32", "data": []}, r"inputs\[0\]: no rows"),
        ({"name": "in", "shape": [6, 3], "datatype": "FP32", "data": [0] * 18}, r"inputs\[0\]: 6 rows, more than the limit of 5"),
        ({"name": "in", "shape": [1, 3], "datatype": "FP32", "data": [1, "x", 3]}, r"inputs\[0\].data row 0 feature 'b': \"x\" is not a number"),
    ],
)
def test_bad_v2_tensors(tensor, match):
    with pytest.raises(ContractError, match=match):
        parse_request({"inputs": [tensor]}, CARD)


def test_v2_nested_too_deeply():
    data = [1]
    for _ in range(40):
        data = [data]
    with pytest.raises(ContractError, match=r"inputs\[0\].data: nested too deeply"):
        parse_request({"inputs": [{"name": "in", "shape": [1, 1], "datatype": "FP32", "data": data}]}, ONE)


@pytest.mark.parametrize(
    "body, match",
    [
        (b"{not json", r"^body: not valid JSON"),
        (b"\xff\xfe", r"^body: not UTF-8"),
        ("   ", r"^body: empty"),
        ('"hello"', r"^body: expected a JSON object or list, got str"),
        ("42", r"^body: expected a JSON object or list, got int"),
        ('{"rows": [[1, 2, 3]]}', r"^body: object without 'instances' or 'inputs' \(keys: \['rows'\]\)"),
        ('{"instances": [[1,2,3]], "inputs": []}', r"^body: has both"),
        ('{"instances": {"a": 1}}', r"^instances: expected a list of rows, got dict"),
    ],
)
def test_bad_bodies(body, match):
    with pytest.raises(ContractError, match=match):
        parse_request(body, CARD)


@pytest.mark.parametrize(
    "body, match",
    [
        ('{"instances": [[1, 2, 3], [1, 2]]}', r"^instances\[1\]: 2 values, expected 3 \(a, b, c\)"),
        ('[[1, 2, 3, 4]]', r"^rows\[0\]: 4 values, expected 3"),
        ('{"instances": [{"a": 1, "b": 2, "c": 3, "d": 4}]}', r"^instances\[0\]: unknown feature\(s\) \['d'\]"),
        ('{"instances": [{"a": 1, "b": 2, "c": 3}, {"a": 1, "c": 3}]}', r"^instances\[1\]: missing feature\(s\) \['b'\]"),
        ('{"instances": [[1, "2", 3]]}', r"^instances\[0\] feature 'b': \"2\" is not a number"),
        ('{"instances": [{"a": 1, "b": null, "c": 3}]}', r"^instances\[0\].b: null is not a number"),
        ('[[1, 2, true]]', r"^rows\[0\] feature 'c': true is not a number"),
        ('[[1, 2, [3]]]', r"^rows\[0\] feature 'c': \[3\] is not a number"),
        ('{"instances": [[1, 2, 3], 4]}', r"^instances\[1\]: expected a list of 3 numbers or an object"),
    ],
)
def test_row_errors_name_the_row_and_feature(body, match):
    with pytest.raises(ContractError, match=match):
        parse_request(body, CARD)


@pytest.mark.parametrize(
    "body, where",
    [
        ('{"instances": [[1, NaN, 3]]}', "instances[0] feature 'b'"),
        ('[[1, 2, 3], [Infinity, 2, 3]]', "rows[1] feature 'a'"),
        ('[1, 2, -Infinity]', "rows[0] feature 'c'"),
        ('{"instances": [{"a": 1, "b": 2, "c": NaN}]}', "instances[0].c"),
        ('{"inputs": [{"name": "i", "shape": [1, 3], "datatype": "FP32", "data": [1, NaN, 3]}]}', "inputs[0].data row 0 feature 'b'"),
    ],
)
def test_nan_and_infinity_literals_are_refused_naming_row_and_feature(body, where):
    with pytest.raises(ContractError) as e:
        parse_request(body, CARD)
    msg = str(e.value)
    assert msg.startswith(where + ":"), msg
    assert "NaN" in msg or "Infinity" in msg or "inf" in msg


@pytest.mark.parametrize(
    "literal, text",
    [("1e400", "inf"), ("1" + "0" * 400, "too large"), ("1e39", "not a finite float32"), ("-4e38", "not a finite float32")],
)
def test_huge_numbers_are_refused(literal, text):
    with pytest.raises(ContractError, match=rf"^rows\[0\] feature 'b': .*{text}"):
        parse_request(f"[[1, {literal}, 3]]", CARD)
    assert parse_request("[[1, 3e38, 3]]", CARD).rows[0][1] == 3e38  # the float32 range itself is fine


def test_empty_batches():
    for body in ("[]", '{"instances": []}'):
        with pytest.raises(ContractError, match="no rows; send at least one"):
            parse_request(body, CARD)


def test_more_rows_than_the_limit():
    with pytest.raises(ContractError, match=r"^instances: 6 rows, more than the limit of 5 per request"):
        parse_request({"instances": [[1, 2, 3]] * 6}, CARD)
    assert len(parse_request({"instances": [[1, 2, 3]] * 5}, CARD).rows) == 5
    assert len(parse_request({"instances": [[1, 2, 3]] * 6}, CARD, max_rows=6).rows) == 6


def test_mixed_named_and_positional_rows():
    with pytest.raises(ContractError, match=r"^instances: mixes named \(object\) and positional \(list\) rows"):
        parse_request('{"instances": [[1, 2, 3], {"a": 1, "b": 2, "c": 3}]}', CARD)


def test_deeply_nested_json():
    with pytest.raises(ContractError, match=r"^body: JSON nested too deeply"):
        parse_request("[" * 100_000 + "]" * 100_000, CARD)


def test_error_body():
    assert c.error_body("bad", 400) == {"code": 400, "type": "InvalidInput", "message": "bad"}


# --- answers -----------------------------------------------------------------------------------------------


def test_classification_answer_gives_labels_and_probabilities():
    card = _card(task="classification", classes=["cat", "dog", "eel"])
    p = parse_request("[[1, 2, 3], [4, 5, 6]]", card)
    ans = c.answer(card, p, [[0.0, 3.0, 1.0], [5.0, -1.0, 0.0]], "m", "1")
    assert ans["predictions"] == ["dog", "cat"]
    assert ans["classes"] == ["cat", "dog", "eel"]
    for probs, logits in zip(ans["probabilities"], [[0.0, 3.0, 1.0], [5.0, -1.0, 0.0]]):
        assert math.fsum(probs) == pytest.approx(1.0, abs=1e-12)
        z = sum(math.exp(v) for v in logits)
        assert probs == pytest.approx([math.exp(v) / z for v in logits], rel=1e-12)
    # huge logits do not overflow
    big = c.answer(card, p, [[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], "m", "1")
    assert big["probabilities"][0] == pytest.approx([1.0, 0.0, 0.0])
    assert big["probabilities"][1] == pytest.approx([1 / 3] * 3)


def test_classification_v2_answer():
    card = _card(task="classification", classes=[0, 1])
    p = parse_request({"inputs": [{"name": "i", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}, card)
    ans = c.answer(card, p, [[0.0, 2.0]], "m", "1")
    labels, probs = ans["outputs"]
    assert labels == {"name": "predictions", "shape": [1], "datatype": "INT64", "data": [1]}
    assert probs["shape"] == [1, 2] and math.fsum(probs["data"]) == pytest.approx(1.0)
    card_s = _card(task="classification", classes=["no", "yes"])
    assert c.answer(card_s, p, [[0.0, 2.0]], "m", "1")["outputs"][0]["datatype"] == "BYTES"


# --- files and host --------------------------------------------------------------------------------------------


def test_verify_files(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"hello")
    card = {"files": {
        "a.bin": {"role": "cpu-compiled", "sha256": integrity.sha256_file(tmp_path / "a.bin")},
        "b.bin": {"role": "checkpoint", "sha256": "0" * 64},
    }}
    assert integrity.verify_files(card, tmp_path) == ["b.bin: missing"]
    assert integrity.verify_files(card, tmp_path, roles={"cpu-compiled"}) == []
    (tmp_path / "a.bin").write_bytes(b"hellO")
    problems = integrity.verify_files(card, tmp_path, roles={"cpu-compiled"})
    assert len(problems) == 1 and problems[0].startswith("a.bin: SHA-256 does not match")


@pytest.mark.parametrize(
    "isa, flags, ok",
    [
        ("avx512 avx512_vnni", {"avx512f", "avx512dq", "avx512vl", "avx512bw", "avx512_vnni", "avx2", "fma"}, True),
        ("avx512 avx512_vnni", {"avx512f", "avx512dq", "avx512vl", "avx512bw", "avx2", "fma"}, False),
        ("avx512", {"avx512f", "avx512dq", "avx512vl"}, False),
        ("avx2", {"avx2", "fma", "sse4_2"}, True),
        ("avx2", {"avx2"}, False),
        ("asimd", {"asimd", "fp"}, True),
        ("none", set(), True),
        ("", {"avx2", "fma"}, False),  # not recorded: refuse
        (None, {"avx2", "fma"}, False),
    ],
)
def test_host_supports(isa, flags, ok):
    assert integrity.host_supports(isa, flags) is ok


def test_host_supports_this_host_reads_cpuinfo():
    flags = integrity.cpu_flags()
    assert integrity.host_supports("none")
    assert integrity.host_supports("avx2") == ({"avx2", "fma"} <= flags)



@pytest.mark.parametrize(
    "body, match",
    [
        (b"[[" + b"9" * 5000 + b", 2, 3]]", r"^body: cannot be read \(Exceeds the limit \(4300 digits\)"),
        ("[[1, 2, 3]]".encode("utf-16"), r"^body: not UTF-8"),
        (b'[["\xed\xa0\x80", 2, 3]]', r"^body: not UTF-8"),  # a UTF-8-encoded lone surrogate
        (b"\xef\xbb\xbf[[1, 2, 3]]", r"^body: not valid JSON \(Unexpected UTF-8 BOM"),
        ('[["\\ud800", 2, 3]]', r"^rows\[0\] feature 'a': \"\\ud800\" is not a number"),  # a lone surrogate escape is JSON
    ],
)
def test_every_decoding_failure_is_a_contract_error(body, match):
    with pytest.raises(ContractError, match=match):
        parse_request(body, CARD)


def _random_value(rng, depth: int):
    atoms = [0, 1, -1, 2.5, 1e308, True, False, None, "a", "", "\ud800", [], {}, 10**50, float("nan")]
    r = rng.random()
    if depth > 4 or r < 0.4:
        return rng.choice(atoms)
    if r < 0.7:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["a", "b", "c", "instances", "inputs", "name", "shape", "datatype", "data", "id", "zz"]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def test_random_bodies_are_answered_or_refused_with_a_contract_error_only():
    import random

    rng = random.Random(0)
    for _ in range(5000):
        r = rng.random()
        if r < 0.3:
            body = {"instances": _random_value(rng, 1)}
        elif r < 0.6:
            body = {"inputs": [{"name": _random_value(rng, 3), "shape": rng.choice([[1, 3], [2, 3], _random_value(rng, 3)]),
                                "datatype": rng.choice(["FP32", _random_value(rng, 3)]), "data": _random_value(rng, 2)}],
                    "id": _random_value(rng, 3)}  # fmt: skip
        else:
            body = _random_value(rng, 0)
        try:
            parse_request(body, CARD)
        except ContractError as e:
            assert str(e) and len(str(e)) < 600, str(e)[:200]


# --- lists in messages are never cut silently ----------------------------------------------------------------


def test_some_says_how_many_it_left_out():
    assert c.some_of(["a", "b", "c"], 5) == "a, b, c"
    assert c.some_of([f"f{i}" for i in range(12)], 5) == "f0, f1, f2, f3, f4 … and 7 more"


def test_row_messages_say_how_many_names_they_left_out():
    wide = _card(names=[f"f{i:02d}" for i in range(30)], max_rows=5)
    with pytest.raises(ContractError) as e:
        parse_request(json.dumps({"instances": [[1.0] * 12]}), wide)
    assert str(e.value).endswith("12 values, expected 30 (f00, f01, f02, f03, f04, f05, f06, f07, f08, f09, f10, f11, f12, f13, "
                                 "f14, f15, f16, f17, f18, f19 … and 10 more)")
    with pytest.raises(ContractError) as e:
        parse_request(json.dumps({"instances": [{"f00": 1, "f01": 2, "f02": 3}]}), _card(names=[f"f{i:02d}" for i in range(15)]))
    assert str(e.value).endswith("missing feature(s) ['f03', 'f04', 'f05', 'f06', 'f07' … and 7 more]")
    with pytest.raises(ContractError) as e:
        parse_request(json.dumps({f"k{i:02d}": 1 for i in range(13)}), CARD)
    assert "(keys: ['k00', 'k01', 'k02', 'k03', 'k04', 'k05', 'k06', 'k07', 'k08', 'k09' … and 3 more])" in str(e.value)
