"""Bring your own model: import_model and `aiaas import` write a run directory whose answers equal the user's own
eager module; the gate refuses; programs without a dynamic batch, bad calibration and pickled .pt2 files are refused."""

from __future__ import annotations

import io
import json
import math
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from aiaas_torch.cli import main
from aiaas_torch.errors import InputError
from aiaas_torch.importer import import_model, load_program_file
from aiaas_torch.quantize import QuantConfig, QuantGateError
from aiaas_torch.runs import load_run


def _twin(byom):
    """The scaled-down twin of the benchmark's 10 M-parameter token encoder (same class, int64 token ids)."""
    torch.manual_seed(0)
    return byom.TokenEncoder(vocab=50, d=32, heads=2, layers=1, ff=64, seq=8, classes=3).eval()


def _tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 50, (n, 8), generator=torch.Generator().manual_seed(seed))


class TwoInOut(nn.Module):
    """Two inputs (a float image, int64 ids) and two outputs (a [N, 2] float, a [N] int64)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, image, ids):
        return self.lin(image.flatten(1)) + ids.float().sum(1, keepdim=True), ids[:, 0] * 2


def test_the_dct_layer_is_orthonormal(byom):
    A = byom.dct2_matrix(8)
    assert torch.allclose(A.T @ A, torch.eye(64, dtype=torch.float64), atol=1e-12)
    img = torch.full((1, 1, 8, 8), 3.0)
    coef = byom.DCT2d(8)(img).flatten()
    assert coef[0].item() == pytest.approx(8 * 3.0, rel=1e-6) and coef[1:].abs().max().item() < 1e-5  # a flat image: DC only


def test_digits_cnn_is_accurate_and_imports_with_the_gate_measured(digits, tmp_path):
    model, Xte, yte = digits
    with torch.no_grad():
        acc = float((model(torch.from_numpy(Xte)).argmax(1).numpy() == yte).mean())
    assert acc >= 0.95
    res = import_model(model, torch.from_numpy(Xte[:2]), tmp_path / "digits", calibration={"image": Xte},
                       labels=[str(d) for d in range(10)], compile="never")  # fmt: skip
    card = res.card
    assert card["input"]["tensors"] == [{"name": "image", "dtype": "float32", "shape": [-1, 1, 8, 8], "min": 0.0, "max": 16.0}]
    assert card["output"]["tensors"] == [{"name": "output", "dtype": "float32", "shape": [-1, 10]}]
    decisions = {l["name"]: l["decision"] for l in card["quantization"]["layers"]}
    assert decisions["model.head.1"] == "int8-dynamic" and card["quantization"]["gate_passed"]  # 1024×128 weights
    assert card["quantization"]["eval_rows"] == len(yte)
    body = {"inputs": [{"name": "image", "shape": [3, 1, 8, 8], "datatype": "UINT8", "data": Xte[:3].astype(int).ravel().tolist()}]}
    ans = load_run(res.run_dir).predict(body)
    probs = torch.softmax(model(torch.from_numpy(Xte[:3])), 1).detach()
    got = torch.tensor(ans["outputs"][1]["data"]).reshape(3, 10)
    assert torch.allclose(got, probs, rtol=1e-5, atol=1e-7)
    assert ans["outputs"][0]["data"] == [str(int(d)) for d in probs.argmax(1)]


def test_the_token_encoder_twin_takes_int64_ids_and_answers_as_its_eager_module(byom, tmp_path):
    model = _twin(byom)
    calib = _tokens(32)
    res = import_model(model, calib[:2], tmp_path / "tok", calibration={"tokens": calib.numpy()}, compile="never")
    spec = res.card["input"]["tensors"][0]
    assert (spec["name"], spec["dtype"], spec["shape"]) == ("tokens", "int64", [-1, 8]) and 0 <= spec["min"] <= spec["max"] <= 49
    assert res.card["model"]["parameters"] == sum(p.numel() for p in model.parameters())
    m = load_run(res.run_dir)
    x = _tokens(5, seed=1)
    want = model(x).detach()
    v2 = m.predict({"inputs": [{"name": "tokens", "shape": [5, 8], "datatype": "INT64", "data": x.ravel().tolist()}]})
    assert torch.allclose(torch.tensor(v2["outputs"][0]["data"]).reshape(5, 3), want, rtol=1e-5, atol=1e-6)
    inst = m.predict({"instances": x.tolist()})
    assert torch.allclose(torch.tensor(inst["predictions"]), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="datatype FP32 cannot fill the int64 input"):
        m.predict({"inputs": [{"name": "tokens", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]})


def test_several_inputs_and_outputs_round_trip(tmp_path):
    torch.manual_seed(0)
    model = TwoInOut().eval()
    image, ids = torch.rand(20, 1, 2, 2), torch.randint(0, 9, (20, 3))
    res = import_model(model, (image[:2], ids[:2]), tmp_path / "two", output_names=["y", "first"],
                       calibration=(image.numpy(), ids.numpy()), compile="never")  # fmt: skip
    assert [t["name"] for t in res.card["input"]["tensors"]] == ["image", "ids"]
    assert res.card["output"]["tensors"] == [{"name": "y", "dtype": "float32", "shape": [-1, 2]}, {"name": "first", "dtype": "int64", "shape": [-1]}]
    body = {"inputs": [{"name": "ids", "shape": [2, 3], "datatype": "INT32", "data": ids[:2].ravel().tolist()},
                       {"name": "image", "shape": [2, 1, 2, 2], "datatype": "FP64", "data": image[:2].ravel().tolist()}]}  # fmt: skip
    out = {o["name"]: o for o in load_run(res.run_dir).predict(body)["outputs"]}
    y, first = model(image[:2], ids[:2])
    assert torch.allclose(torch.tensor(out["y"]["data"]).reshape(2, 2), y.detach(), rtol=1e-5, atol=1e-6)
    assert out["first"] == {"name": "first", "shape": [2], "datatype": "INT64", "data": first.tolist()}


def test_the_gate_refuses_with_the_measured_error_unless_forced(byom, tmp_path):
    model, calib = _twin(byom), _tokens(32)
    strict = QuantConfig("int8", min_weights=0, gate_max_rel_rmse=1e-7)
    with pytest.raises(QuantGateError) as e:
        import_model(model, calib[:2], tmp_path / "g", calibration={"tokens": calib.numpy()}, quant=strict, compile="never")
    assert e.value.report.rel_rmse > 1e-7 and f"{e.value.report.rel_rmse:.4%}" in str(e.value)
    assert not (tmp_path / "g").exists()
    forced = QuantConfig("int8", min_weights=0, gate_max_rel_rmse=1e-7, force=True)
    res = import_model(model, calib[:2], tmp_path / "g", calibration={"tokens": calib.numpy()}, quant=forced, compile="never")
    assert res.card["quantization"]["forced"] and not res.card["quantization"]["gate_passed"]


def test_a_program_without_a_dynamic_batch_dimension_is_refused(tmp_path):
    ep = torch.export.export(nn.Linear(3, 2), (torch.zeros(4, 3),))
    with pytest.raises(InputError, match=r'batch dimension is fixed.*dynamic_shapes=\{"x": \{0: torch.export.Dim\("batch"\)\}\}'):
        import_model(ep, torch.zeros(4, 3), tmp_path / "s", calibration=np.zeros((16, 3), np.float32))


def test_bad_calibration_is_refused_naming_the_problem(byom, tmp_path):
    model, calib = _twin(byom), _tokens(32).numpy()

    def refused(cal, match):
        with pytest.raises(InputError, match=match):
            import_model(model, torch.from_numpy(calib[:2]), tmp_path / "c", calibration=cal, compile="never")

    refused({"ids": calib}, r"missing input\(s\) \['tokens'\]")
    refused({"tokens": calib[:, :4]}, r"shape \[32, 4\], expected \[N, 8\]")
    refused({"tokens": calib.astype(np.float32)}, "float32 samples for an int64 input")
    refused({"tokens": calib[:5]}, "5 samples, fewer than the 16")
    refused(None, "calibration: required")
    assert not (tmp_path / "c").exists()


def _pt2(tmp_path):
    """Return (path of a saved program with a dynamic batch, its ExportedProgram, calibration samples)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(40, 4)
    ep = torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "prog.pt2"
    torch.export.save(ep, str(path))
    return path, ep, x


def test_cli_imports_a_saved_program_as_exported(tmp_path, capsys):
    path, ep, x = _pt2(tmp_path)
    np.savez(tmp_path / "cal.npz", input=x.numpy())
    out = tmp_path / "run"
    assert main(["import", str(path), "--out", str(out), "--calibration", str(tmp_path / "cal.npz"), "--labels", "a,b,c",
                 "--compile", "never", "--json"]) == 0  # fmt: skip
    card = json.loads(capsys.readouterr().out)
    assert card["model"]["source"] == "ExportedProgram" and "holds no nn.Linear" in card["quantization"]["not_quantized"]
    assert card["output"]["classes"] == ["a", "b", "c"]
    ans = load_run(out).predict({"instances": x[:4].tolist()})
    want = torch.softmax(ep.module()(x[:4]), 1).detach()
    assert torch.allclose(torch.tensor(ans["probabilities"]), want, rtol=1e-5)
    assert main(["quantize", str(out), "--quantize", "int8"]) == 2
    assert "an imported model" in capsys.readouterr().err
    assert main(["import", str(path), "--out", str(tmp_path / "r2"), "--calibration", str(tmp_path / "cal.npz"), "--quantize", "int8"]) == 2
    assert "holds no nn.Linear" in capsys.readouterr().err
    np.savez(tmp_path / "obj.npz", input=np.array([{"a": 1}] * 16, dtype=object))
    assert main(["import", str(path), "--out", str(tmp_path / "r3"), "--calibration", str(tmp_path / "obj.npz")]) == 2
    assert "not a numpy .npz of plain arrays" in capsys.readouterr().err


def _rewrite(src, dst, change) -> None:
    """Copy a zip archive member by member, passing each (name, bytes) through change()."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, change(info.filename, zin.read(info.filename)))


class _Opens:
    """An object whose unpickling opens (creates) a file: what a hostile .pt2 could run instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_program_whose_loading_would_unpickle_is_refused_before_torch_reads_it(tmp_path):
    path, _, _ = _pt2(tmp_path)
    assert load_program_file(path) is not None
    pickled = tmp_path / "pickled.pt2"

    def use_pickle(name, data):
        if name.endswith("_weights_config.json"):
            cfg = json.loads(data)
            next(iter(cfg["config"].values()))["use_pickle"] = True
            return json.dumps(cfg).encode()
        return data

    _rewrite(path, pickled, use_pickle)
    with pytest.raises(InputError, match="use_pickle: pickled weights and constants are not allowed"):
        load_program_file(pickled)
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pt2"
    buf = io.BytesIO()
    torch.save(_Opens(marker), buf)
    _rewrite(path, hostile, lambda name, data: buf.getvalue() if "/sample_inputs/" in name else data)
    assert load_program_file(hostile) is not None  # torch reads our own (empty) sample inputs in its place
    assert not marker.exists()
    with pytest.raises(Exception):  # what the check prevents: torch.export.load falls back to a full unpickle
        torch.export.load(str(hostile))
    assert marker.exists()
