"""Quantization: int8 where it pays (with a reason for every layer), pow2, the accuracy gate."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

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
    assert isinstance(e.value, ValueError)

    q, rep = quantize(mlp_float, QuantConfig(scheme="int8", gate_max_rel_rmse=0.0, force=True), mlp_result.eval_X)
    assert rep.gate_passed is False and rep.forced is True
    assert not _is_plain(q[0])
    assert "FAILED" in rep.summary() and "forced" in rep.summary()


@pytest.mark.parametrize(
    "field, value",
    [("scheme", "int4"), ("min_weights", -1), ("min_weights", 1.5), ("min_weights", True),
     ("gate_max_rel_rmse", -0.1), ("gate_max_rel_rmse", math.nan)],
)
def test_quant_config_validate_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        QuantConfig(**{field: value}).validate()
