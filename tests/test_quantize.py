"""Quantization: int8 where it pays (with a reason for every layer), pow2, the accuracy gate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from aiaas_torch.cli import main
from aiaas_torch.data import from_arrays
from aiaas_torch.models import fold_preprocessing
from aiaas_torch.quantize import (
    Pow2Linear,
    QuantConfig,
    QuantGateError,
    pow2_exponent,
    quantize,
)


def _is_plain(lin: nn.Linear) -> bool:
    """True when a Linear's weight is an ordinary float tensor (not a torchao quantized tensor)."""
    return type(lin.weight) is nn.Parameter and lin.weight.dtype == torch.float32


def _rel_rmse(f: torch.Tensor, q: torch.Tensor) -> float:
    f, q = f.double(), q.double()
    return float(torch.sqrt(torch.mean((q - f) ** 2)) / torch.sqrt(torch.mean(f**2)))


@pytest.fixture(scope="module")
def mlp_float(mlp_result):
    return fold_preprocessing(mlp_result.model)


@pytest.fixture(scope="module")
def origin_float(origin_result):
    return fold_preprocessing(origin_result.model)


def test_mlp_int8_is_accurate_and_smaller(mlp_float, mlp_result):
    q, rep = quantize(mlp_float, QuantConfig(scheme="int8"), mlp_result.eval_X)
    assert rep.rel_rmse <= 0.02
    assert rep.size_ratio >= 3
    assert rep.gate_passed and not rep.forced
    # the report's figures are what the models do
    X = torch.from_numpy(mlp_result.eval_X)
    with torch.no_grad():
        f, qo = mlp_float(X), q(X)
    assert rep.eval_rows == len(X) > 0
    assert rep.rel_rmse == pytest.approx(_rel_rmse(f, qo), rel=1e-6)
    assert rep.max_abs_error == pytest.approx(float((qo - f).abs().max()), rel=1e-6)
    assert rep.rel_rmse > 0  # int8 did change the answers
    assert rep.weight_bytes_before == 4 * sum(p.numel() for p in mlp_float.parameters())
    # the float model is left as it was
    assert all(_is_plain(m) for m in mlp_float if isinstance(m, nn.Linear))


def test_mlp_int8_decisions_and_reasons(mlp_float, mlp_result):
    q, rep = quantize(mlp_float, QuantConfig(), mlp_result.eval_X)
    shapes = [(d.in_features, d.out_features) for d in rep.layers]
    assert shapes == [(100, 512), (512, 512), (512, 1)]
    for d in rep.layers:
        assert d.decision and d.reason
    assert [d.decision for d in rep.layers] == ["int8-dynamic", "int8-dynamic", "float"]
    assert "out_features == 1" in rep.layers[2].reason
    assert str(rep.layers[0].weights) in rep.layers[0].reason
    # the decisions are what was done to the modules
    lins = [m for m in q if isinstance(m, nn.Linear)]
    assert not _is_plain(lins[0]) and not _is_plain(lins[1])
    assert _is_plain(lins[2])
    text = rep.summary()
    for d in rep.layers:
        assert d.reason in text
    assert rep.to_dict()["size_ratio"] == rep.size_ratio


def test_origin_layer_stays_float_with_its_reason(origin_float, origin_result):
    q, rep = quantize(origin_float, QuantConfig(scheme="int8"), origin_result.eval_X)
    (d,) = rep.layers
    assert (d.in_features, d.out_features, d.weights) == (1, 1, 1)
    assert d.decision == "float"
    assert "in_features == 1" in d.reason
    assert _is_plain(q[0])
    assert rep.size_ratio == 1.0 and rep.rel_rmse == 0.0


def test_small_layers_stay_float_below_min_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)).eval()
    _, rep = quantize(model, QuantConfig(), torch.randn(32, 8).numpy())
    assert [d.decision for d in rep.layers] == ["float", "float"]
    assert all("< 16384" in d.reason for d in rep.layers)


def test_min_weights_zero_forces_int8_on_every_linear(mlp_float, mlp_result, origin_float, origin_result):
    q, rep = quantize(mlp_float, QuantConfig(min_weights=0), mlp_result.eval_X)
    assert [d.decision for d in rep.layers] == ["int8-dynamic", "int8-dynamic", "int8-weight-only"]
    assert all("min_weights=0" in d.reason for d in rep.layers)
    assert not any(_is_plain(m) for m in q if isinstance(m, nn.Linear))
    assert rep.rel_rmse <= 0.02

    q1, rep1 = quantize(origin_float, QuantConfig(min_weights=0), origin_result.eval_X)
    assert rep1.layers[0].decision == "int8-weight-only"
    assert not _is_plain(q1[0])
    with torch.no_grad():
        assert abs(float(q1(torch.tensor([[6.0]]))) - 12) < 0.2  # int8 of a single weight is coarse but sane


def test_pow2_reproduces_a_weight_of_exactly_2():
    lin = nn.Linear(3, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, -0.75, 0.125]]))  # all multiples of 2^-5
        lin.bias.fill_(0.3)
    model = nn.Sequential(lin).eval()
    X = torch.randn(50, 3) * 100
    q, rep = quantize(model, QuantConfig(scheme="pow2"), X.numpy())
    assert isinstance(q[0], Pow2Linear)
    d = rep.layers[0]
    assert d.decision == "pow2" and d.pow2_exponent == -5 and "2^-5" in d.reason
    assert q[0].weight_q.dtype == torch.int8
    assert q[0].weight_q.tolist() == [[64, -24, 4]]
    with torch.no_grad():
        assert torch.equal(q(X), model(X))
    assert rep.rel_rmse == 0.0 and rep.max_abs_error == 0.0


def test_trained_origin_model_with_pow2_answers_like_float(origin_float, origin_result):
    q, rep = quantize(origin_float, QuantConfig(scheme="pow2"), origin_result.eval_X)
    X = torch.tensor([[1.0], [3.0], [6.0], [100.0]])
    with torch.no_grad():
        f, qo = origin_float(X), q(X)
    assert float((qo - f).abs()[:3].max()) <= 0.01
    assert float(q[0].weight_q) * 2.0 ** q[0].exponent == 2.0  # the trained ≈2.000 weight is stored as exactly 2
    assert rep.layers[0].decision == "pow2"
    assert rep.gate_passed


@pytest.mark.parametrize("max_abs", [1e-6, 0.3, 1.0, 2.0, 127.0, 128.0, 5000.0])
def test_pow2_exponent_is_the_smallest_that_fits(max_abs):
    k = pow2_exponent(max_abs)
    assert max_abs / 2.0**k <= 127
    assert max_abs / 2.0 ** (k - 1) > 127
    assert pow2_exponent(0.0) == 0


def test_scheme_none_changes_nothing(mlp_float, mlp_result):
    q, rep = quantize(mlp_float, QuantConfig(scheme="none"), mlp_result.eval_X)
    assert all(d.decision == "float" and d.reason == "scheme 'none'" for d in rep.layers)
    assert rep.rel_rmse == 0.0 and rep.size_ratio == 1.0


def test_failed_gate_raises_and_force_passes_it(mlp_float, mlp_result):
    cfg = QuantConfig(scheme="int8", gate_max_rel_rmse=0.0)
    with pytest.raises(QuantGateError, match="gate failed") as e:
        quantize(mlp_float, cfg, mlp_result.eval_X)
    assert not e.value.report.gate_passed
    assert e.value.report.rel_rmse > 0
    msg = str(e.value)  # the figure, and the way out for Python callers and CLI users alike
    assert f"relative RMSE against float {e.value.report.rel_rmse:.4%}" in msg
    assert "gate_max_rel_rmse=F" in msg and "--gate F" in msg and "force=True" in msg and "--force" in msg
    assert isinstance(e.value, ValueError)

    q, rep = quantize(mlp_float, QuantConfig(scheme="int8", gate_max_rel_rmse=0.0, force=True), mlp_result.eval_X)
    assert rep.gate_passed is False and rep.forced is True
    assert not _is_plain(q[0])
    assert "FAILED" in rep.summary() and "forced" in rep.summary()


def test_int8_weight_scheme_stores_a_quarter_of_the_linear_bytes_and_answers_like_float(mlp_float, mlp_result):
    """Issue 28: int8 weights, one scale per row, float activations; a layer below min_weights stays float, with
    its reason; int8 weights padded to a width that is a multiple of 16 (what ATen's kernels read) and bf16 scales:
    0.25× float plus the padding and 2 bytes a row, ≤ 0.27× for a 512-wide layer."""
    from aiaas_torch.int8_weights import Int8WeightLinear

    q, rep = quantize(mlp_float, QuantConfig(scheme="int8-weight"), mlp_result.eval_X)
    assert [d.decision for d in rep.layers] == ["int8-weight", "int8-weight", "float"]
    assert "512 weights < 16384" in rep.layers[2].reason and "one scale per output row" in rep.layers[0].reason
    lins = [m for m in mlp_float if isinstance(m, nn.Linear)]
    new = [m for m in q if isinstance(m, Int8WeightLinear)]
    assert len(new) == 2 and _is_plain([m for m in q if isinstance(m, nn.Linear)][0])
    for f, m in zip(lins[:2], new):
        stored = m.weight_q.numel() * m.weight_q.element_size() + m.scale.numel() * m.scale.element_size()
        width = -(-f.in_features // 16) * 16 if m.path == "int8pack-bf16" else f.in_features
        scale_bytes = 2 if m.path == "int8pack-bf16" else 4
        assert m.weight_q.dtype == torch.int8 and stored == f.out_features * (width + scale_bytes)
    stored = new[1].weight_q.numel() + new[1].scale.numel() * new[1].scale.element_size()
    assert stored <= 0.27 * lins[1].weight.numel() * 4  # 512 → 512: no padding
    assert rep.weight_bytes_before == 4 * sum(p.numel() for p in mlp_float.parameters())
    assert rep.size_ratio >= 3
    X = torch.from_numpy(mlp_result.eval_X)
    with torch.no_grad():
        f, qo = mlp_float(X), q(X)
    assert rep.rel_rmse == pytest.approx(_rel_rmse(f, qo), rel=1e-6) and 0 < rep.rel_rmse <= 0.02 and rep.gate_passed
    with pytest.raises(QuantGateError, match="gate failed"):  # forced like int8: a failed gate refuses it
        quantize(mlp_float, QuantConfig(scheme="int8-weight", gate_max_rel_rmse=0.0), mlp_result.eval_X)


@pytest.mark.parametrize(
    "field, value",
    [("scheme", "int4"), ("min_weights", -1), ("min_weights", 1.5), ("min_weights", True),
     ("gate_max_rel_rmse", -0.1), ("gate_max_rel_rmse", math.nan)],
)
def test_quant_config_validate_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        QuantConfig(**{field: value}).validate()


@pytest.mark.parametrize("task, value", [("regression", -1.0), ("regression", math.inf), ("classification", 5.0),
                                         ("classification", -0.5), ("classification", math.nan)])
def test_gate_out_of_its_range_is_refused_naming_the_cli_option(task, value):
    """The CLI's --gate sets the task's gate field; a bad value is named as the user wrote it (it named the field)."""
    with pytest.raises(ValueError, match=r"^gate \(--gate\): .* must be .* for a " + task):
        QuantConfig().with_gate(task, value)


def test_cli_gate_of_5_for_a_classifier_exits_2_naming_gate(tmp_path, capsys):
    csv = tmp_path / "c.csv"
    csv.write_text("x,label\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(20)))
    assert main(["train", str(csv), "--target", "label", "--out", str(tmp_path / "r"), "--gate", "5", "--no-compile"]) == 2
    err = capsys.readouterr().err
    assert "--gate" in err and "5.0" in err and "[0, 1]" in err and "gate_min_label_agreement" not in err
    assert not (tmp_path / "r").exists()


# --- the classifier's gate: label agreement with float ---------------------------------------------------------


def _offset_classes(offset: float, sep: float, seed: int = 0):
    """Three classes in 8 informative features, plus one uninformative column centred on `offset` (a raw-unit column
    such as a year): per-row int8 of the activations spends its range on that column, so the logits move."""
    rng = np.random.default_rng(seed)
    n, d = 1500, 8
    centers = rng.normal(scale=sep, size=(3, d))
    y = rng.integers(0, 3, n)
    X = np.column_stack([centers[y] + rng.normal(size=(n, d)), offset + rng.normal(size=n)]).astype(np.float32)
    return X, np.array(["a", "b", "c"])[y]


def _trained_logistic(offset: float, sep: float):
    from aiaas_torch.train import TrainConfig, train

    X, labels = _offset_classes(offset, sep)
    ds = from_arrays(X, labels, [f"x{i}" for i in range(9)], "label", task="classification")
    r = train(ds, TrainConfig(model="logistic", epochs=200, lr=0.05, momentum=0.9, seed=0, progress=False))
    return fold_preprocessing(r.model), r


def test_classifier_gate_passes_when_labels_agree_though_logits_move():
    """int8 moves the logits by more than the regression gate's 2 % while every served label stays float's: the
    classifier's gate (label agreement) passes it. The relative-RMSE gate refused this model."""
    model, r = _trained_logistic(offset=50.0, sep=3.0)
    q, rep = quantize(model, QuantConfig("int8", min_weights=0), r.eval_X, r.eval_y, "classification")
    X = torch.from_numpy(r.eval_X)
    with torch.no_grad():
        f, qo = model(X), q(X)
    assert _rel_rmse(f, qo) > 0.02  # the old gate's figure: over its 2 %
    agree = float((f.argmax(1) == qo.argmax(1)).double().mean())
    assert agree >= 0.99
    assert rep.gate_passed and not rep.forced and rep.task == "classification"
    assert rep.label_agreement == pytest.approx(agree)
    y = torch.from_numpy(r.eval_y).long()
    assert rep.accuracy_float == pytest.approx(float((f.argmax(1) == y).double().mean()))
    assert rep.accuracy_quantized == pytest.approx(float((qo.argmax(1) == y).double().mean()))
    assert rep.max_prob_error == pytest.approx(float((qo.softmax(1) - f.softmax(1)).abs().max()), rel=1e-5)
    d = rep.to_dict()
    assert d["label_agreement"] == rep.label_agreement and d["gate_min_label_agreement"] == 0.99
    assert "gate_max_rel_rmse" not in d  # the regression gate is not this model's gate
    assert "labels agree" in rep.summary() and "accuracy" in rep.summary()


def test_classifier_gate_refuses_disagreeing_labels_naming_the_figures_and_the_options(tmp_path, capsys):
    model, r = _trained_logistic(offset=300.0, sep=1.0)
    X = torch.from_numpy(r.eval_X)
    with pytest.raises(QuantGateError) as e:
        quantize(model, QuantConfig("int8", min_weights=0), r.eval_X, r.eval_y, "classification")
    q, _ = quantize(model, QuantConfig("int8", min_weights=0, force=True), r.eval_X)
    with torch.no_grad():
        agree = float((model(X).argmax(1) == q(X).argmax(1)).double().mean())
    assert agree < 0.95  # int8 really changes many labels here
    msg = str(e.value)
    assert f"labels agree with float on {agree:.2%} of {len(X)} held-out rows < 99.00%" in msg
    assert "accuracy" in msg and "probability error" in msg
    assert "--gate F" in msg and "--force" in msg and "gate_min_label_agreement=F" in msg and "force=True" in msg
    # the gate is configurable: a lower label agreement passes the same model
    _, rep = quantize(model, QuantConfig("int8", min_weights=0, gate_min_label_agreement=agree - 0.01), r.eval_X, r.eval_y)
    assert rep.gate_passed

    # the CLI: --gate is the classifier's label agreement; the refusal is one line naming --gate and --force
    Xc, labels = _offset_classes(offset=300.0, sep=1.0)
    csv = tmp_path / "cls.csv"
    csv.write_text(",".join(f"x{i}" for i in range(9)) + ",label\n" + "".join(",".join(f"{v:.5f}" for v in row) + f",{t}\n" for row, t in zip(Xc, labels)))
    base = ["train", str(csv), "--target", "label", "--model", "logistic", "--epochs", "200", "--lr", "0.05", "--momentum", "0.9",
            "--min-weights", "0", "--no-compile"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "forced"), "--quantize", "int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert "labels agree with float on" in err and "--gate" in err and "--force" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "forced").exists()
    assert main([*base, "--out", str(tmp_path / "loose"), "--quantize", "int8", "--gate", "0.5", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["quantization"]["gate_min_label_agreement"] == 0.5 and card["quantization"]["gate_passed"]
    # under auto a failing int8 is no candidate: the export succeeds and serves float, saying why
    assert main([*base, "--out", str(tmp_path / "auto"), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["quantization"]["gate_passed"] is False
    dropped = card["optimization"]["candidates"]["int8-compiled"]
    assert dropped["status"] == "dropped" and dropped["reason"].startswith("fails the accuracy gate: labels agree with float on")
    assert all(p["candidate"].startswith("float") for p in card["optimization"]["plan"])


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, True])
def test_label_agreement_gate_is_a_fraction(value):
    with pytest.raises(ValueError, match=r"^gate_min_label_agreement: "):
        QuantConfig(gate_min_label_agreement=value).validate()


def test_the_command_line_offers_every_scheme_the_library_has():
    # int8-weight landed in quantize.SCHEMES while the CLI's --quantize choices still listed four schemes
    import argparse

    from aiaas_torch.cli.train import add_quant_options
    from aiaas_torch.quantize import SCHEMES

    p = argparse.ArgumentParser()
    add_quant_options(p)
    choices = next(a.choices for a in p._actions if "--quantize" in a.option_strings)
    assert sorted(choices) == sorted(SCHEMES)
