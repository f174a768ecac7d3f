"""The run directory: files, the model card, loading back, batch invariance, atomicity, tampering, requantize."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import aiaas_torch
from aiaas_torch.handlers import aiaas_contract as contract
from aiaas_torch.handlers import integrity
from aiaas_torch.models import fold_preprocessing
from aiaas_torch.quantize import QuantConfig, QuantGateError, quantize

export = importlib.import_module("aiaas_torch.export")
making = importlib.import_module("aiaas_torch.making")
rundir = importlib.import_module("aiaas_torch.rundir")
card_mod = importlib.import_module("aiaas_torch.card")
runs = importlib.import_module("aiaas_torch.runs")

FILES = {"model.json", "model.pt2", "model_float.pt2", "checkpoint.pt"}


def copy_run(run_dir: Path, dest: Path) -> Path:
    """Return a private copy of a session run directory (the session's own stays untouched)."""
    return Path(shutil.copytree(run_dir, dest))


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _snapshot(d: Path) -> dict:
    return {p.name: _sha(p) for p in sorted(d.iterdir())}


def _close(a, b, rel: float):
    """Assert a ≈ b elementwise within `rel` of each value, or of the batch's output scale for values near 0."""
    scale = float(np.sqrt(np.mean(np.asarray(b, np.float64) ** 2)))
    np.testing.assert_allclose(a, b, rtol=rel, atol=rel * scale)


@pytest.fixture(scope="module")
def rows(mlp_result):
    return np.random.default_rng(42).normal(size=(256, mlp_result.spec.n_features)).astype(np.float32)


@pytest.fixture(scope="module")
def mlp_compiled(mlp_run):
    return runs.load_run(mlp_run.run_dir, program="compiled")


# --- the run directory and its card ------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["origin_run", "mlp_run"])
def test_run_directory_holds_the_model_files(which, request):
    run = request.getfixturevalue(which)
    assert {p.name for p in run.run_dir.iterdir()} == FILES
    assert not [p for p in run.run_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
    assert run.compile_seconds is not None and run.compile_seconds > 0


def test_origin_card(origin_run, origin_result, origin_csv):
    card = card_mod.read_card(origin_run.run_dir)
    assert card == json.loads(json.dumps(origin_run.card))
    assert card["schema_version"] == card_mod.SCHEMA_VERSION == 1
    inp = card["input"]
    assert [f["name"] for f in inp["features"]] == ["x"]
    assert inp["dtype"] == "float32" and all(f["dtype"] == "float32" for f in inp["features"])
    x = inp["features"][0]
    assert (x["min"], x["max"], x["mean"]) == (1.0, 5.0, 3.0)
    assert x["std"] == pytest.approx(np.std([1, 2, 3, 4, 5]))
    assert "standardize" in inp["scaling"] and inp["rotation"] is None
    assert inp["max_rows"] == contract.DEFAULT_MAX_ROWS
    assert card["output"] == {"target": "y", "task": "regression", "classes": None, "width": 1, "kind": "value"}
    tr = card["training"]
    assert tr["optimizer"] == "torch.optim.SGD" and "1/(2m)" in tr["loss"]
    settings = origin_result.config.to_dict()
    del settings["hidden"]  # a linear model has no hidden layers: the card records no sizes for them
    assert tr["settings"] == settings
    assert tr["settings"]["lr"] == 0.01 and tr["settings"]["epochs"] == 1000
    assert tr["epochs_run"] == 1000 and not tr["stopped_early"]
    assert tr["final_J"] == {"train": origin_result.metrics["train"]["J"]}
    assert tr["history"]["epoch"][-1] == 1000 and len(tr["history"]["epoch"]) <= 201
    assert card["metrics"]["train"]["mse"] == pytest.approx(origin_result.metrics["train"]["mse"])
    coef = card["model"]["coefficients"]
    assert abs(coef["weights"]["x"] - 2) <= 0.01 and abs(coef["bias"]) <= 0.05
    q = card["quantization"]
    assert q["scheme"] == "auto" and q["layers"][0]["decision"] == "float" and "in_features == 1" in q["layers"][0]["reason"]
    opt = card["optimization"]
    assert opt["host"]["isa"] == making.vector_isa() and opt["host"]["cpu"] and opt["mode"]["compile"] == "always"
    assert [r["candidate"] for r in opt["plan"]] == ["float-compiled"]  # compile=True forces a compiled program
    assert "int8 leaves every layer float" in opt["candidates"]["int8-compiled"]["reason"]
    assert card["data"]["sha256"] == _sha(origin_csv)
    assert card["data"]["source"] == str(origin_csv) and card["data"]["rows"] == 5
    assert card["versions"] == {
        "torch": torch.__version__,
        "torchao": importlib.metadata.version("torchao"),
        "aiaas_torch": aiaas_torch.__version__,
        "python": platform.python_version(),
    }


@pytest.mark.parametrize("which", ["origin_run", "mlp_run"])
def test_card_hashes_every_model_file(which, request):
    run = request.getfixturevalue(which)
    files = run.card["files"]
    assert set(files) == FILES - {"model.json"}
    for name, meta in files.items():
        p = run.run_dir / name
        assert meta["sha256"] == _sha(p), name
        assert meta["bytes"] == p.stat().st_size
    assert {m["role"] for m in files.values()} == {"cpu-compiled", "float-program", "checkpoint"}
    assert files["model.pt2"]["isa"] == making.vector_isa()
    assert files["model.pt2"]["compile_seconds"] > 0


def test_mlp_card_metrics_and_quantization(mlp_run, mlp_result):
    card = mlp_run.card
    assert set(card["metrics"]) == {"train", "validation"}
    for split in ("train", "validation"):
        assert set(card["metrics"][split]) == {"J", "mse", "rmse", "mae", "r2"}
        assert card["training"]["final_J"][split] == mlp_result.metrics[split]["J"]
    q = card["quantization"]
    assert q == mlp_run.report.to_dict()
    assert [l["decision"] for l in q["layers"]] == ["int8-dynamic", "int8-dynamic", "float"]
    assert q["rel_rmse"] <= 0.02 and q["size_ratio"] >= 3 and q["gate_passed"]
    assert [f["name"] for f in card["input"]["features"]] == [f"x{j}" for j in range(100)]
    assert card["model"]["coefficients"] is None
    assert card["model"]["layers"] == ["0: Linear(100→512)", "2: Linear(512→512)", "4: Linear(512→1)"]
    assert card["data"]["validation_rows"] == 600 and card["data"]["train_rows"] == 2400


# --- loading back ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which, result", [("origin_run", "origin_result"), ("mlp_run", "mlp_result")])
def test_float_program_equals_the_in_memory_folded_model(which, result, request):
    run, res = request.getfixturevalue(which), request.getfixturevalue(result)
    m = runs.load_run(run.run_dir, program="float")
    assert m.program_file == "model_float.pt2"
    X = np.random.default_rng(0).normal(size=(64, res.spec.n_features)).astype(np.float32) * 3
    with torch.no_grad():
        ref = fold_preprocessing(res.model)(torch.from_numpy(X)).numpy()
    _close(m.forward(X), ref, 1e-5)


def test_compiled_package_is_bit_identical_with_itself(mlp_run, mlp_compiled, rows):
    again = runs.load_run(mlp_run.run_dir, program="compiled")
    a = mlp_compiled.forward(rows)
    assert a.shape == (256, 1) and a.dtype == np.float32
    assert np.array_equal(a, mlp_compiled.forward(rows))
    assert np.array_equal(a, again.forward(rows))


def test_compiled_package_is_the_quantized_model(mlp_compiled, mlp_result, rows):
    qmodel, _ = quantize(fold_preprocessing(mlp_result.model), QuantConfig(), mlp_result.eval_X)
    with torch.no_grad():
        q = qmodel(torch.from_numpy(rows)).numpy()
        f = fold_preprocessing(mlp_result.model)(torch.from_numpy(rows)).numpy()
    out = mlp_compiled.forward(rows)
    _close(out, q, 1e-4)
    assert not np.allclose(out, f, rtol=1e-5, atol=1e-5)  # it is int8, not the float model


def test_auto_program_and_predict_through_the_contract(origin_run):
    m = runs.load_run(origin_run.run_dir)
    isa_ok = integrity.host_supports(origin_run.card["files"]["model.pt2"]["isa"])
    assert m.program_file == ("model.pt2" if isa_ok else "model_float.pt2")
    ans = m.predict({"instances": [[6.0], [1.0]]}, name="y2x", version="1")
    assert ans["model"] == "y2x" and abs(ans["predictions"][0] - 12) <= 0.05 and abs(ans["predictions"][1] - 2) <= 0.05
    assert abs(m.predict([6])["predictions"][0] - 12) <= 0.05
    with pytest.raises(contract.ContractError, match="expected 1"):
        m.predict([6, 7])
    with pytest.raises(ValueError, match="program"):
        runs.load_run(origin_run.run_dir, program="gpu")


# --- batch invariance through the compiled package (MLP, int8) ---------------------------------------------


def test_a_changed_neighbour_leaves_every_other_row_bit_identical(mlp_compiled, rows):
    base = mlp_compiled.forward(rows)
    for i, value in ((7, 1e4), (200, -1e4), (0, 0.0)):
        changed = rows.copy()
        changed[i] = value
        out = mlp_compiled.forward(changed)
        assert np.array_equal(np.delete(out, i, 0), np.delete(base, i, 0)), i
        assert not np.array_equal(out[i], base[i]) or value == 0.0


def test_an_added_extreme_row_leaves_every_other_row_bit_identical(mlp_compiled, rows):
    base = mlp_compiled.forward(rows)
    extreme = np.full((1, rows.shape[1]), 1e4, np.float32)
    assert np.array_equal(mlp_compiled.forward(np.vstack([rows, extreme]))[:256], base)
    assert np.array_equal(mlp_compiled.forward(np.vstack([extreme, rows]))[1:], base)


def test_a_row_alone_agrees_with_the_row_in_a_batch(mlp_run, mlp_compiled, rows):
    batch = mlp_compiled.forward(rows)
    alone = np.vstack([mlp_compiled.forward(rows[i : i + 1]) for i in range(len(rows))])
    _close(alone, batch, 5e-3)  # int8: another batch size may take another kernel
    flt = runs.load_run(mlp_run.run_dir, program="float")
    fbatch = flt.forward(rows)
    falone = np.vstack([flt.forward(rows[i : i + 1]) for i in range(len(rows))])
    _close(falone, fbatch, 1e-5)


# --- atomicity -----------------------------------------------------------------------------------------------


def _boom(*args, **kwargs):
    raise RuntimeError("simulated crash mid-export")


def test_crash_before_the_card_leaves_no_run_directory(origin_result, tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "write_json_atomic", _boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        export.export_run(origin_result, tmp_path / "run", compile=False)
    assert list(tmp_path.iterdir()) == []  # no run directory, no staging directory
    with pytest.raises(ValueError, match="no model.json"):
        runs.load_run(tmp_path / "run")


def test_crash_while_compiling_leaves_the_previous_run_unchanged(origin_run, mlp_result, tmp_path, monkeypatch):
    run = copy_run(origin_run.run_dir, tmp_path / "run")
    before = _snapshot(run)
    monkeypatch.setattr(making, "compile_package", _boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        export.export_run(mlp_result, run, compile=True)
    assert _snapshot(run) == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert abs(runs.load_run(run).predict([6])["predictions"][0] - 12) <= 0.05


def test_failed_final_move_puts_the_previous_run_back(origin_result, origin_run, tmp_path, monkeypatch):
    run = copy_run(origin_run.run_dir, tmp_path / "run")
    before = _snapshot(run)
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        if ".run.staging-" in os.fspath(src):
            raise OSError("simulated failure moving the new run into place")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(export.os, "replace", replace)
    with pytest.raises(OSError, match="simulated failure"):
        export.export_run(origin_result, run, compile=False)
    monkeypatch.undo()
    assert _snapshot(run) == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    runs.load_run(run)


def test_export_replaces_a_previous_run(origin_result, origin_run, tmp_path):
    run = copy_run(origin_run.run_dir, tmp_path / "run")
    res = export.export_run(origin_result, run, QuantConfig(scheme="none"), compile=False)
    assert set(res.card["files"]) == {"model_float.pt2", "checkpoint.pt"}
    assert not (run / "model.pt2").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    m = runs.load_run(run)
    assert m.program_file == "model_float.pt2"
    with pytest.raises(ValueError, match="no compiled package"):
        runs.load_run(run, program="compiled")


def test_export_refuses_to_replace_a_foreign_directory(origin_result, tmp_path):
    other = tmp_path / "run"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an aiaas run directory"):
        export.export_run(origin_result, other, compile=False)
    assert [p.name for p in other.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_export_stops_before_writing_when_the_gate_fails(mlp_result, tmp_path):
    with pytest.raises(QuantGateError):
        export.export_run(mlp_result, tmp_path / "run", QuantConfig("int8", gate_max_rel_rmse=0.0), compile=False)
    assert list(tmp_path.iterdir()) == []


# --- tampering and bad cards ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.pt2", "model_float.pt2", "checkpoint.pt"])
def test_tampered_model_file_is_refused_naming_it(name, origin_run, tmp_path):
    run = copy_run(origin_run.run_dir, tmp_path / "run")
    data = bytearray((run / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (run / name).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{name}: SHA-256 does not match"):
        runs.load_run(run)


def test_missing_model_file_is_refused_naming_it(origin_run, tmp_path):
    run = copy_run(origin_run.run_dir, tmp_path / "run")
    (run / "model_float.pt2").unlink()
    with pytest.raises(ValueError, match=r"model_float.pt2: missing"):
        runs.load_run(run, program="float")


def _set(path: str, value):
    def edit(card):
        *parents, leaf = path.split(".")
        d = card
        for p in parents:
            d = d[p]
        if value is KeyError:
            del d[leaf]
        else:
            d[leaf] = value
    return edit


@pytest.mark.parametrize(
    "edit, match",
    [
        (_set("input", ["x"]), r"field 'input' must be dict, got list"),
        (_set("schema_version", "1"), r"field 'schema_version' must be int"),
        (_set("schema_version", True), r"field 'schema_version' must be int"),
        (_set("schema_version", 2), r"schema_version 2 is not 1"),
        (_set("files", None), r"field 'files' must be dict"),
        (_set("versions", KeyError), r"field 'versions' missing"),
        (_set("input.features", []), r"field 'input.features'"),
        (lambda c: c["input"]["features"][0].update(min="1"), r"field 'input.features\['x'\].min' must be a number"),
        (_set("output.task", "ranking"), r"field 'output.task'"),
    ],
)
def test_card_with_a_wrong_field_is_refused_naming_the_field(edit, match, origin_run, tmp_path):
    run = copy_run(origin_run.run_dir, tmp_path / "run")
    card = json.loads((run / "model.json").read_text())
    edit(card)
    (run / "model.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=match):
        runs.load_run(run)


def test_card_that_is_not_json_is_refused(origin_run, tmp_path):
    run = copy_run(origin_run.run_dir, tmp_path / "run")
    (run / "model.json").write_text("{")
    with pytest.raises(ValueError, match=r"model.json: not valid JSON"):
        runs.load_run(run)


# --- requantize ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_requantize_with_pow2_re_exports(origin_run, origin_result, tmp_path):
    run = copy_run(origin_run.run_dir, tmp_path / "run")
    old = card_mod.read_card(run)
    res = export.requantize(run, QuantConfig(scheme="pow2"))
    card = card_mod.read_card(run)
    assert old["quantization"]["scheme"] == "auto"
    assert card["quantization"]["scheme"] == "pow2" == res.report.scheme
    assert card["quantization"]["layers"][0]["decision"] == "pow2"
    assert card["files"]["model.pt2"]["sha256"] != old["files"]["model.pt2"]["sha256"]
    # the lineage carries over from the checkpoint
    for key in ("settings", "solver", "epochs_run", "final_J"):
        assert card["training"][key] == old["training"][key]
    assert card["training"]["solver"]["epochs_run"] == card["training"]["epochs_run"]  # what the solver ran: kept too
    assert card["data"] == old["data"] and card["input"] == old["input"]
    m = runs.load_run(run, program="compiled")
    folded = fold_preprocessing(origin_result.model)
    with torch.no_grad():
        want = float(folded(torch.tensor([[6.0]])))
    got = m.predict([6])["predictions"][0]
    assert abs(got - want) <= 0.01
    # the weight is now exactly 2, so the answer is 12 + bias in float32
    assert got == float(np.float32(12.0) + np.float32(folded[0].bias.item()))


def test_requantize_refuses_a_tampered_checkpoint(origin_run, tmp_path):
    run = copy_run(origin_run.run_dir, tmp_path / "run")
    with open(run / "checkpoint.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="checkpoint.pt: SHA-256"):
        export.requantize(run, QuantConfig(scheme="pow2"), compile=False)


def test_loading_the_compiled_package_leaves_inductor_settings_as_they_were(origin_run):
    from torch._inductor import config as inductor_config

    before = inductor_config.cpp.vec_isa_ok
    model = aiaas_torch.load_run(origin_run.run_dir, program="compiled")
    assert model.program_file == "model.pt2"
    assert inductor_config.cpp.vec_isa_ok == before
