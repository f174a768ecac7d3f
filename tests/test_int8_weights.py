"""Weight-only int8 Linear (aiaas_torch/int8_weights.py, issue 28): quantization bounds of both schemes, answers
against references written here (float64 dequantize-then-matmul, with and without the bf16 roundings of the int8pack
path; float F.linear on the original weights), batch invariance of every path, odd sizes, and the export →
pt2_check → import → programs.load round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from aiaas_torch import int8_weights as iw
from aiaas_torch.card import CARD
from aiaas_torch.cli import main
from aiaas_torch.handlers import programs, pt2_check

# (in_features, out_features): odd widths, widths that are not multiples of 8/16/32, a width of 1, and round ones
SHAPES = [(53, 37), (77, 301), (3, 5), (1, 7), (129, 65), (64, 48), (250, 1)]
PATHS = iw.PATHS  # every path runs on every CPU (int8pack has a scalar kernel where ATen has no vector one)


def _weights(n_in, n_out, seed=0):
    """Return a float weight [out, in] with rows of very different magnitudes, and a bias."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, n_in, generator=g) * torch.exp(torch.randn(n_out, 1, generator=g))
    return w, torch.randn(n_out, generator=g)


def _reference(x, q, scale, bias, bf16: bool):
    """Return x·(q·s)ᵀ + b in float64 from the int8 weight; with bf16=True, x and s rounded to bf16 first (what the
    int8pack path feeds its kernel)."""
    x, s = x.double(), scale.double()
    if bf16:
        x, s = x.to(torch.bfloat16).double(), s.to(torch.bfloat16).double()
    y = x @ q.double().T * s
    return y + bias.double() if bias is not None else y


def test_channel_scheme_reconstructs_each_row_within_half_a_step():
    for n_in, n_out in SHAPES:
        w, _ = _weights(n_in, n_out)
        qw = iw.quantize_weight(w, "channel")
        assert qw.q.dtype == torch.int8 and qw.q.shape == w.shape and qw.scale.shape == (n_out,)
        assert int(qw.q.abs().max()) <= 127
        step = w.abs().amax(1) / 127  # the scale the scheme promises, computed here
        assert torch.allclose(qw.scale, step, rtol=1e-6)
        err = (w - qw.q.float() * step[:, None]).abs().amax(1)
        assert torch.all(err <= step / 2 * (1 + 1e-5)), (n_in, n_out)
        assert torch.equal(qw.q.abs().amax(1), torch.full((n_out,), 127, dtype=torch.int8))  # the largest |w| maps to ±127


def test_pow2_scales_are_the_smallest_powers_of_two_that_fit_and_reconstruct_within_half_a_step():
    for n_in, n_out in SHAPES:
        w, _ = _weights(n_in, n_out, seed=1)
        qw = iw.quantize_weight(w, "pow2")
        mantissa, _ = torch.frexp(qw.scale)
        assert torch.all(mantissa == 0.5), "every scale is an exact power of two"
        amax = w.abs().amax(1)
        assert torch.all(amax / qw.scale <= 127) and torch.all(amax / (qw.scale / 2) > 127), "k is the smallest that fits"
        err = (w - qw.q.float() * qw.scale[:, None]).abs()
        assert torch.all(err <= qw.scale[:, None] / 2), (n_in, n_out)
    # the origin model's folded weight 2.000 is stored exactly: 2 = 64 · 2^-5
    qw = iw.quantize_weight(torch.tensor([[2.0, -1.0, 0.5]]), "pow2")
    assert float(qw.scale[0]) == 2.0**-5 and qw.q.tolist() == [[64, -32, 16]]


def test_a_row_of_zeros_quantizes_to_zeros_with_a_finite_scale():
    for scheme in iw.SCHEMES:
        qw = iw.quantize_weight(torch.zeros(3, 5), scheme)
        assert torch.all(qw.q == 0) and torch.all(torch.isfinite(qw.scale))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("scheme", iw.SCHEMES)
def test_every_path_matches_the_dequantize_then_matmul_reference_on_odd_sizes(path, scheme):
    g = torch.Generator().manual_seed(3)
    for n_in, n_out in SHAPES:
        w, b = _weights(n_in, n_out)
        layer = iw.Int8WeightLinear.from_weight(w, b, scheme, path)
        qw = iw.quantize_weight(w, scheme)
        for batch in (1, 2, 5, 16, 17):
            x = torch.randn(batch, n_in, generator=g)
            with torch.no_grad():
                y = layer(x)
            assert y.dtype == torch.float32 and y.shape == (batch, n_out)
            if path == "dequantize":  # float32 sgemm on the dequantized weight: float32 rounding only
                want = _reference(x, qw.q, qw.scale, b, bf16=False)
                mag = x.double().abs() @ (qw.q.double().abs() * qw.scale.double()[:, None]).T + b.double().abs()
                assert torch.all((y.double() - want).abs() <= 1e-5 * mag + 1e-6), (n_in, n_out, batch)
            else:  # x and the scales rounded to bf16 as the kernel takes them; its bf16 output rounds once more
                want = _reference(x, qw.q, qw.scale, None, bf16=True)
                mag = x.to(torch.bfloat16).double().abs() @ (qw.q.double().abs() * qw.scale.to(torch.bfloat16).double()[:, None]).T
                got = y.double() - b.double()
                assert torch.all((got - want).abs() <= 2.0**-8 * want.abs() + 1e-5 * mag + 1e-6), (n_in, n_out, batch)


@pytest.mark.parametrize("path", PATHS)
def test_answers_stay_close_to_float_on_the_original_weights(path):
    """Relative RMS error against float F.linear on the unquantized weights: int8 rounding (≈ 0.9 % for Gaussian
    rows, whose max is ≈ 4σ) plus, on int8pack, bf16's 2^-9 roundings of x, the scales and the output."""
    w, b = torch.randn(512, 1024) / 32, torch.randn(512) / 10
    x = torch.randn(16, 1024)
    want = F.linear(x.double(), w.double(), b.double())
    for scheme, bound in (("channel", 0.015), ("pow2", 0.03)):
        with torch.no_grad():
            y = iw.Int8WeightLinear.from_weight(w, b, scheme, path)(x).double()
        rel = float(torch.sqrt(torch.mean((y - want) ** 2)) / torch.sqrt(torch.mean(want**2)))
        assert 1e-4 < rel < bound, (scheme, rel)  # > 1e-4: the layer really runs on int8 weights


def test_the_two_paths_agree_within_the_bf16_tolerance():
    w, b = _weights(200, 90, seed=4)
    x = torch.randn(9, 200)
    with torch.no_grad():
        fast = iw.Int8WeightLinear.from_weight(w, b, "channel", "int8pack-bf16")(x).double()
        slow = iw.Int8WeightLinear.from_weight(w, b, "channel", "dequantize")(x).double()
    rel = float(torch.sqrt(torch.mean((fast - slow) ** 2)) / torch.sqrt(torch.mean(slow**2)))
    assert rel < 5e-3


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n_in,n_out", [(53, 37), (256, 512), (77, 1)])
def test_a_row_is_bit_identical_alone_and_in_any_batch_with_any_neighbours(path, n_in, n_out):
    w, b = _weights(n_in, n_out, seed=5)
    layer = iw.Int8WeightLinear.from_weight(w, b, "channel", path)
    g = torch.Generator().manual_seed(6)
    row = torch.randn(1, n_in, generator=g)
    with torch.no_grad():
        alone = layer(row)[0]
        for batch in range(2, 18):
            for scale in (1.0, 100.0):
                others = torch.randn(batch - 1, n_in, generator=g) * scale
                pos = batch // 2
                x = torch.cat([others[:pos], row, others[pos:]])
                assert torch.equal(layer(x)[pos], alone), (batch, scale)
        seq = torch.randn(3, 4, n_in, generator=g)  # [batch, tokens, features]: a token's answer is its own
        seq[1, 2] = row[0]
        assert torch.equal(layer(seq)[1, 2], alone)


def test_best_path_follows_the_cpu_capability():
    assert iw.best_path("AVX2") == "int8pack-bf16" and iw.best_path("AVX512") == "int8pack-bf16"
    assert iw.best_path("DEFAULT") == "dequantize" and iw.best_path("NO AVX") == "dequantize"
    assert iw.paths_here("DEFAULT") == ("dequantize",)
    assert iw.paths_here("AVX2") == ("int8pack-bf16", "dequantize")
    assert iw.best_path() in iw.PATHS and "dequantize" in iw.paths_here()
    with pytest.raises(ValueError, match="path"):
        iw.Int8WeightLinear.from_weight(torch.ones(2, 2), None, "channel", "vnni")
    with pytest.raises(ValueError, match="scheme"):
        iw.quantize_weight(torch.ones(2, 2), "int4")


class _Net(nn.Module):
    """Two large Linear layers, one odd-sized small one, and an activation between."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(200, 1024)
        self.down = nn.Linear(1024, 100)
        self.head = nn.Linear(100, 3)

    def forward(self, x):
        return self.head(torch.relu(self.down(torch.relu(self.up(x)))))


@pytest.mark.parametrize("scheme", iw.SCHEMES)
def test_quantize_linears_replaces_the_chosen_layers_and_stores_about_a_quarter_of_the_bytes(scheme):
    torch.manual_seed(0)
    model = _Net().eval()
    float_bytes = {n: m.weight.numel() * 4 for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    x = torch.randn(8, 200)
    with torch.no_grad():
        want = model(x).double()
    names = iw.quantize_linears(model, keep=lambda name, lin: lin.weight.numel() >= 16384, scheme=scheme)
    assert names == ["up", "down"]
    assert isinstance(model.up, iw.Int8WeightLinear) and isinstance(model.head, nn.Linear)
    for n in names:
        m = model.get_submodule(n)
        assert m.weight_q.dtype == torch.int8
        stored = m.weight_q.numel() + m.scale.numel() * m.scale.element_size()  # int8 weight and its scales
        assert stored <= 0.27 * float_bytes[n], n
    with torch.no_grad():
        got = model(x).double()
    assert float(torch.sqrt(torch.mean((got - want) ** 2)) / torch.sqrt(torch.mean(want**2))) < 0.03


@pytest.mark.parametrize("path", PATHS)
def test_export_passes_pt2_check_imports_and_serves_the_eager_answers(path, tmp_path):
    torch.manual_seed(0)
    model = _Net().eval()
    iw.quantize_linears(model, keep=lambda name, lin: name != "head", path=path)
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(model, (torch.randn(2, 200),), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    if path == "int8pack-bf16":
        assert "aten._weight_int8pack_mm.default" in targets
    pt2_check.save(ep, str(tmp_path / "prog.pt2"))  # checks the program against the allow-list on the way
    x = torch.randn(5, 200)
    loaded = programs.load_exported(str(tmp_path / "prog.pt2")).module(check_guards=False)
    with torch.no_grad():
        want = model(x)
        assert torch.equal(loaded(x), want)
        assert torch.equal(loaded(x[:1]), model(x[:1]))  # the dynamic batch dimension, down to 1 (the float head
        # is compared at the same batch size: float sgemm is not batch-invariant below 4 rows, see int8_weights.PAD_ROWS)
    np.savez(tmp_path / "cal.npz", x=torch.randn(32, 200).numpy())
    out = tmp_path / "run"
    assert main(["import", str(tmp_path / "prog.pt2"), "--out", str(out), "--calibration", str(tmp_path / "cal.npz"), "--compile", "never"]) == 0
    card = json.loads((out / CARD).read_text())
    served = programs.load(card, str(out), flags=set())
    with torch.no_grad():
        got = served(x)
    assert torch.equal(got, want)
