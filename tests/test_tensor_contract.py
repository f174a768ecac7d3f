"""The tensor contract of imported models: cards with named inputs of any shape and dtype, v2 and instances bodies,
shape and dtype refusals that name the input, answers with every named output, per-request errors in a batch."""

from __future__ import annotations

import json

import pytest
import torch

from aiaas_torch.card import check_card
from aiaas_torch.errors import InputError
from aiaas_torch.handlers import aiaas_contract as c
from aiaas_torch.handlers.aiaas_contract import ContractError, parse_request
from aiaas_torch.handlers.tabular_handler import TabularHandler
from test_handler import JSON_CT, run_batch

CARD = {
    "schema_version": 1,
    "input": {
        "tensors": [
            {"name": "image", "dtype": "float32", "shape": [-1, 1, 2, 2], "min": 0.0, "max": 16.0},
            {"name": "ids", "dtype": "int64", "shape": [-1, 3], "min": 0, "max": 99},
        ],
        "max_rows": 4,
    },
    "output": {
        "task": "tensor",
        "classes": None,
        "tensors": [{"name": "sums", "dtype": "float32", "shape": [-1, 2]}, {"name": "first", "dtype": "int64", "shape": [-1]}],
    },
    "files": {},
    "quantization": {},
    "versions": {},
}
ONE = {
    **CARD,
    "input": {"tensors": [{"name": "x", "dtype": "float32", "shape": [-1, 1, 2, 2], "min": -1.0, "max": 1.0}], "max_rows": 8},
    "output": {"task": "classification", "classes": ["cat", "dog"], "tensors": [{"name": "logits", "dtype": "float32", "shape": [-1, 2]}]},
}
IMG = [[[1, 2], [3, 4]]]  # one [1, 2, 2] sample


def v2_answer(*tensors, **extra) -> dict:
    return {"inputs": [dict(zip(("name", "shape", "datatype", "data"), t)) for t in tensors], **extra}


def _err(body, card=CARD) -> str:
    with pytest.raises(ContractError) as e:
        parse_request(json.dumps(body), card)
    return str(e.value)


# --- accepted bodies -----------------------------------------------------------------------------------------------


def test_a_multi_input_v2_body_fills_each_input_in_its_dtype():
    body = v2_answer(("ids", [2, 3], "INT32", [[1, 2, 3], [4, 5, 6]]), ("image", [2, 1, 2, 2], "UINT8", [1, 2, 3, 4, 5, 6, 7, 8]), id="q")
    p = parse_request(json.dumps(body), CARD)
    assert p.fmt == "v2" and p.v2_id == "q"
    assert p.inputs["image"] == [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    assert all(isinstance(v, float) for s in p.inputs["image"] for v in s)
    assert p.inputs["ids"] == [[1, 2, 3], [4, 5, 6]] and all(type(v) is int for s in p.inputs["ids"] for v in s)


def test_instances_of_named_objects_and_of_single_samples():
    p = parse_request({"instances": [{"image": IMG, "ids": [7, 8, 9]}]}, CARD)
    assert p.fmt == "instances" and p.inputs == {"image": [[1.0, 2.0, 3.0, 4.0]], "ids": [[7, 8, 9]]}
    q = parse_request({"instances": [IMG, [[[0.5, 0], [0, -0.5]]]]}, ONE)
    assert q.inputs == {"x": [[1.0, 2.0, 3.0, 4.0], [0.5, 0.0, 0.0, -0.5]]} and q.out_of_range == 3  # 2, 3, 4 > max 1


def test_integral_floats_fill_an_int_input_and_exact_ints_fill_a_float_one():
    p = parse_request({"instances": [{"image": [[[2**24, 0], [0, 0]]], "ids": [1.0, 2, 3]}]}, CARD)
    assert p.inputs["ids"] == [[1, 2, 3]] and p.inputs["image"][0][0] == 2.0**24


# --- refused bodies: each names the input, what was expected and what came ---------------------------------------


def test_a_v2_shape_mismatch_names_the_input_the_expected_and_the_received_shape():
    msg = _err(v2_answer(("image", [1, 2, 2], "FP32", [1, 2, 3, 4]), ("ids", [1, 3], "INT64", [1, 2, 3])))
    assert "'image'" in msg and "[1, 2, 2]" in msg and "[N, 1, 2, 2]" in msg, msg


def test_an_instance_of_the_wrong_sample_shape_names_both_shapes():
    msg = _err({"instances": [IMG, [[1, 2], [3, 4]]]}, ONE)
    assert msg.startswith("instances[1]") and "'x'" in msg and "[1, 2, 2]" in msg and "received shape [2, 2]" in msg, msg
    assert "ragged" in _err({"instances": [[[[1, 2], [3]]]]}, ONE)


def test_float_data_for_an_int_input_is_refused_as_lossy():
    msg = _err(v2_answer(("image", [1, 1, 2, 2], "FP32", [1, 2, 3, 4]), ("ids", [1, 3], "FP32", [1.5, 2, 3])))
    assert "'ids'" in msg and "FP32" in msg and "int64" in msg and "INT64" in msg, msg
    assert "not an integer" in _err({"instances": [{"image": IMG, "ids": [1.5, 2, 3]}]})


def test_values_the_target_dtype_cannot_hold_are_refused():
    assert "outside the int64 range" in _err(v2_answer(("image", [1, 1, 2, 2], "FP32", [1, 2, 3, 4]), ("ids", [1, 3], "INT64", [2**63, 1, 1])))
    assert "exactly in float32" in _err({"instances": [{"image": [[[2**24 + 1, 0], [0, 0]]], "ids": [1, 2, 3]}]})
    assert "not a finite float32" in _err({"instances": [{"image": [[[1e39, 0], [0, 0]]], "ids": [1, 2, 3]}]})
    with pytest.raises(ContractError, match="NaN and Infinity"):
        parse_request('{"instances": [{"image": [[[NaN, 0], [0, 0]]], "ids": [1, 2, 3]}]}', CARD)


def test_missing_unknown_twice_sent_and_unequal_batch_inputs_are_refused():
    img = ("image", [1, 1, 2, 2], "FP32", [1, 2, 3, 4])
    assert "missing input(s) ['ids']" in _err(v2_answer(img))
    assert "not an input of this model" in _err(v2_answer(img, ("nope", [1], "FP32", [1])))
    assert "sent twice" in _err(v2_answer(img, img))
    assert "same batch size" in _err(v2_answer(img, ("ids", [2, 3], "INT64", [1, 2, 3, 4, 5, 6])))
    assert "6 values for shape [1, 3]" in _err(v2_answer(img, ("ids", [1, 3], "INT64", [1, 2, 3, 4, 5, 6])))
    assert "missing input(s) ['ids']" in _err({"instances": [{"image": IMG}]})
    assert "send an object of named inputs" in _err({"instances": [IMG]})
    assert "more than the limit of 4" in _err({"instances": [{"image": IMG, "ids": [1, 2, 3]}] * 5})
    assert "Open Inference v2" in _err([[1, 2, 3]])


# --- answers ---------------------------------------------------------------------------------------------------------


def test_answers_carry_every_named_output():
    outputs = {"sums": [[1.0, 2.0], [3.0, 4.0]], "first": [7, 8]}
    p = parse_request({"instances": [{"image": IMG, "ids": [1, 2, 3]}] * 2}, CARD)
    assert c.answer(CARD, p, outputs, "m", "1") == {
        "predictions": [{"sums": [1.0, 2.0], "first": 7}, {"sums": [3.0, 4.0], "first": 8}], "model": "m", "version": "1"}
    v = parse_request(v2_answer(("image", [2, 1, 2, 2], "FP32", [0] * 8), ("ids", [2, 3], "INT64", [0] * 6), id="r"), CARD)
    assert c.answer(CARD, v, outputs, "m", "1")["outputs"] == [
        {"name": "sums", "shape": [2, 2], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]},
        {"name": "first", "shape": [2], "datatype": "INT64", "data": [7, 8]},
    ]


def test_a_non_finite_float_output_is_refused_naming_the_sample_never_answered_as_invalid_json():
    p = parse_request({"instances": [{"image": IMG, "ids": [1, 2, 3]}] * 2}, CARD)
    bad = {"sums": [[1.0, 2.0], [3.0, float("inf")]], "first": [7, 8]}
    with pytest.raises(ContractError, match=r"^instances\[1\]: the model's output overflows float32"):
        c.answer(CARD, p, bad, "m", "1")
    v = parse_request(v2_answer(("image", [2, 1, 2, 2], "FP32", [0] * 8), ("ids", [2, 3], "INT64", [0] * 6)), CARD)
    with pytest.raises(ContractError, match=r"^sample 0: the model's output overflows float32"):
        c.answer(CARD, v, {"sums": [[float("nan"), 2.0], [3.0, 4.0]], "first": [7, 8]}, "m", "1")
    json.dumps(c.answer(CARD, p, {"sums": [[1.0, 2.0], [3.0, 4.0]], "first": [7, 8]}, "m", "1"), allow_nan=False)


def test_labels_give_predictions_and_probabilities_beside_the_raw_output():
    p = parse_request({"instances": [IMG]}, ONE)
    ans = c.answer(ONE, p, {"logits": [[0.0, 2.0]]}, "m", "1")
    assert ans["predictions"] == ["dog"] and ans["classes"] == ["cat", "dog"] and ans["logits"] == [[0.0, 2.0]]
    assert ans["probabilities"][0][1] == pytest.approx(1 / (1 + torch.exp(torch.tensor(-2.0)).item()))


# --- the card ------------------------------------------------------------------------------------------------------


def test_check_card_accepts_tensor_cards_and_names_a_bad_field():
    check_card(CARD, "m.json")
    check_card(ONE, "m.json")
    bad_dtype = json.loads(json.dumps(CARD))
    bad_dtype["input"]["tensors"][1]["dtype"] = "complex64"
    with pytest.raises(InputError, match=r"input.tensors\[1\].dtype"):
        check_card(bad_dtype, "m.json")
    static = json.loads(json.dumps(CARD))
    static["input"]["tensors"][0]["shape"] = [4, 1, 2, 2]
    with pytest.raises(InputError, match=r"input.tensors\[0\].shape.*batch"):
        check_card(static, "m.json")
    no_range = json.loads(json.dumps(CARD))
    del no_range["input"]["tensors"][0]["min"]
    with pytest.raises(InputError, match=r"input.tensors\[0\].min"):
        check_card(no_range, "m.json")
    wrong_labels = json.loads(json.dumps(ONE))
    wrong_labels["output"]["classes"] = ["a", "b", "c"]
    with pytest.raises(InputError, match="output.classes"):
        check_card(wrong_labels, "m.json")


def test_a_tabular_card_is_one_float32_input_of_its_features():
    card = {"input": {"features": [{"name": n, "min": 0.0, "max": float(i + 1)} for i, n in enumerate("ab")]},
            "output": {"target": "y", "task": "regression", "classes": None}}  # fmt: skip
    assert c.input_tensors(card) == [{"name": "input", "dtype": "float32", "shape": [-1, 2], "min": 0.0, "max": 2.0, "features": ["a", "b"]}]
    assert c.output_tensors(card) == [{"name": "y", "dtype": "float32", "shape": [-1, 1]}]
    assert parse_request([[1, 2]], card).inputs == {"input": [[1.0, 2.0]]}


# --- the handler: one forward per batch, per-request errors ----------------------------------------------------------


def _handler() -> TabularHandler:
    """Return a handler on CARD whose model is known arithmetic: sums = [Σ image, Σ ids], first = ids[:, 0] · 2."""
    h = TabularHandler()
    h.card, h.max_rows, h.device, h.model_name, h.model_version, h.initialized = CARD, 4, "cpu", "m", "1.0", True
    h.calls = []

    def model(image, ids):
        h.calls.append((tuple(image.shape), image.dtype, tuple(ids.shape), ids.dtype))
        return torch.stack([image.sum((1, 2, 3)), ids.sum(1).float()], 1), ids[:, 0] * 2

    h.model = model
    return h


def test_a_mixed_batch_answers_each_request_and_refuses_only_the_bad_one():
    good = [json.dumps({"instances": [{"image": [[[i, 1], [1, 1]]], "ids": [i, 2, 3]}]}).encode() for i in range(3)]
    bad_shape = json.dumps(v2_answer(("image", [1, 4], "FP32", [1, 2, 3, 4]), ("ids", [1, 3], "INT64", [1, 2, 3]))).encode()
    h = _handler()
    results = run_batch(h, [(good[0], JSON_CT), (bad_shape, JSON_CT), (good[1], JSON_CT), (good[2], JSON_CT)])
    assert h.calls == [((3, 1, 2, 2), torch.float32, (3, 3), torch.int64)]  # one forward for the three good samples
    assert results[1][0] == 400 and "'image'" in results[1][1]["message"] and "[1, 4]" in results[1][1]["message"]
    assert "[N, 1, 2, 2]" in results[1][1]["message"]
    for k, i in ((0, 0), (2, 1), (3, 2)):
        status, body = results[k]
        assert status == 200 and body["predictions"] == [{"sums": [i + 3.0, i + 5.0], "first": 2 * i}], (k, body)


def test_the_bench_body_of_a_tensor_card_passes_its_contract():
    from aiaas_torch.bench import card_body

    p = parse_request(card_body(CARD), CARD)
    assert p.fmt == "v2" and p.inputs == {"image": [[0.0] * 4], "ids": [[0, 0, 0]]}


def test_one_test_of_a_tabular_card_serves_the_library_and_the_handlers():
    # issue 24: `"features" in card["input"]` was spelled out in nine places (card.py defined is_tabular twice); the
    # handlers' contract_common.is_tabular is the one copy, which card.py imports for the library
    import re
    from pathlib import Path

    from aiaas_torch import card
    from aiaas_torch.handlers import contract_common

    assert card.is_tabular is contract_common.is_tabular
    tabular = {"input": {"features": [{"name": "a", "min": 0.0, "max": 1.0}]}, "output": {"task": "regression"}}
    assert contract_common.is_tabular(tabular) and not contract_common.is_tabular(CARD)
    root = Path(__file__).resolve().parents[1]
    spelled = re.compile(r"""["']features["']\s+(not\s+)?in\s""")
    files = [p for p in [*(root / "aiaas_torch").rglob("*.py"), *(root / "handlers").glob("*.py")] if p.name != "contract_common.py"]
    assert [f"{p.name}:{i}" for p in files for i, ln in enumerate(p.read_text().splitlines(), 1) if spelled.search(ln)] == []
    assert len(spelled.findall((root / "handlers" / "contract_common.py").read_text())) == 1
