"""Model builders: scaling is a layer inside the model, and folding it into the first Linear keeps the outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aiaas_torch import preprocessing
from aiaas_torch.models import ModelSpec, Rotate, Standardize, build_model, fold_preprocessing, linear_layers


def _raw_features(n=64, d=5, seed=0):
    """Raw features with very different offsets and scales, and their standardization statistics.

    Offsets stay within ~15 standard deviations: folding moves the offset into the float32 bias, so a feature
    whose mean is 10⁴ of its spreads would lose digits there (in the unfolded float32 model as well).
    """
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.01, 1.0, 50.0, 3.0, 0.5])[:d]
    loc = torch.tensor([0.05, -3.0, 200.0, 0.0, 7.0])[:d]
    X = torch.randn(n, d, generator=g) * scale + loc
    mean, std = preprocessing.standardize_stats(X.numpy())
    return X, mean, std


def test_scaling_is_the_first_layer_and_the_model_takes_raw_features():
    X, mean, std = _raw_features()
    torch.manual_seed(0)
    model = build_model(ModelSpec("linear", 5, 1), mean, std).eval()
    assert isinstance(model[0], Standardize)
    lin = model[1]
    assert isinstance(lin, nn.Linear) and (lin.in_features, lin.out_features) == (5, 1)
    with torch.no_grad():
        expected = lin((X - torch.from_numpy(mean)) / torch.from_numpy(std))
        torch.testing.assert_close(model(X), expected, rtol=0, atol=0)
    # the statistics are buffers: they travel in the state_dict and are not trained
    assert {"0.mean", "0.std"} <= set(model.state_dict())
    assert all(p is not model[0].mean for p in model.parameters())


def test_rotation_layer_sits_between_scaling_and_linear():
    _, mean, std = _raw_features()
    basis = np.linalg.qr(np.random.default_rng(1).normal(size=(5, 5)))[0].astype(np.float32)
    model = build_model(ModelSpec("logistic", 5, 3, rotate=True), mean, std, basis)
    assert [type(m) for m in model] == [Standardize, Rotate, nn.Linear]
    np.testing.assert_array_equal(model[1].basis.numpy(), basis)


def test_mlp_shape_and_linear_layers():
    model = build_model(ModelSpec("mlp", 4, 2, hidden=(8, 6)))
    shapes = [(m.in_features, m.out_features) for _, m in linear_layers(model)]
    assert shapes == [(4, 8), (8, 6), (6, 2)]
    assert sum(isinstance(m, nn.ReLU) for m in model) == 2


@pytest.mark.parametrize(
    "spec, match",
    [
        (ModelSpec("tree", 3, 1), "model: 'tree'"),
        (ModelSpec("linear", 0, 1), "at least one input"),
        (ModelSpec("mlp", 3, 1, hidden=()), "hidden"),
        (ModelSpec("mlp", 3, 1, hidden=(4, 0)), "hidden"),
    ],
)
def test_build_model_rejects_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        build_model(spec)


def test_spec_round_trips_through_dict():
    spec = ModelSpec("mlp", 7, 3, hidden=(16, 4), rotate=True)
    assert ModelSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("kind, n_out, hidden", [("linear", 1, ()), ("logistic", 3, ()), ("mlp", 2, (16, 8))])
@pytest.mark.parametrize("rotate", [False, True])
def test_fold_preprocessing_keeps_outputs(kind, n_out, hidden, rotate):
    X, mean, std = _raw_features(seed=2)
    basis = None
    if rotate:
        basis = preprocessing.pca_rotation((X.numpy() - mean) / std)
    torch.manual_seed(3)
    model = build_model(ModelSpec(kind, 5, n_out, hidden, rotate), mean, std, basis).eval()
    folded = fold_preprocessing(model)
    assert not any(isinstance(m, (Standardize, Rotate)) for m in folded)
    assert isinstance(folded[0], nn.Linear) and folded[0].in_features == 5
    assert len(linear_layers(folded)) == len(linear_layers(model))
    with torch.no_grad():
        ref = model.double()(X.double())  # the unfolded model in float64 as the reference
        out = folded(X).double()
    scale = float(ref.abs().max())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * scale)
    # folding copies: the source model keeps its layers
    assert isinstance(model[0], Standardize)


def test_fold_gives_raw_unit_coefficients():
    # y = 3·x0 − 0.5·x1 + 4 learned in scaled units: folding must return the raw-unit coefficients
    mean, std = np.array([10.0, -2.0], np.float32), np.array([4.0, 0.25], np.float32)
    model = build_model(ModelSpec("linear", 2, 1), mean, std)
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[3.0 * 4.0, -0.5 * 0.25]]))
        model[1].bias.copy_(torch.tensor([4.0 + 3.0 * 10.0 - 0.5 * -2.0]))
    folded = fold_preprocessing(model)
    torch.testing.assert_close(folded[0].weight, torch.tensor([[3.0, -0.5]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(folded[0].bias, torch.tensor([4.0]), rtol=0, atol=1e-5)
