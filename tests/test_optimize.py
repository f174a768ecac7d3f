"""The served program chosen by measurement at export: cost model, injected timings, the card's record, forced
choices, and the serving host's ISA class (with injected or edited facts: no hardware needed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import aiaas_torch.export as export
import aiaas_torch.making as making
import aiaas_torch.optimize as optimize
import aiaas_torch.runs as runs
from aiaas_torch.handlers import integrity
from aiaas_torch.handlers import programs
from aiaas_torch.quantize import QuantConfig


def _boom(*a, **k):
    raise AssertionError("compiled although the cost model says a compile cannot pay")


def test_a_tiny_model_is_not_compiled_and_serves_eager(origin_result, tmp_path, monkeypatch):
    monkeypatch.setattr(making, "compile_package", _boom)
    res = export.export_run(origin_result, tmp_path / "run")  # compile auto, quantize auto
    opt = res.card["optimization"]
    assert "1 weights < 1024" in opt["candidates"]["float-compiled"]["reason"]
    assert [r["candidate"] for r in opt["plan"]] == ["float-eager"]
    assert set(opt["candidates"]["float-eager"]["seconds"]) == {"1", "16", "256"}
    assert opt["host"]["cpu"] and opt["host"]["isa_class"] == integrity.isa_class(integrity.cpu_flags())
    assert "isa" not in opt["host"]  # inductor's ISA probe (4–10 s) is paid only when something is compiled
    assert res.compile_seconds is None and not (tmp_path / "run" / "model.pt2").exists()
    m = runs.load_run(tmp_path / "run")
    assert m.program_file == "model_float.pt2" and m.programs.pick(1)[0] == "float-eager"
    assert abs(m.predict([6.0])["predictions"][0] - 12.0) < 0.05


class FakeTimer:
    """Timings by candidate name and batch size, standing in for a host; records what was timed."""

    def __init__(self, table: dict):
        self.table, self.calls = table, []

    def __call__(self, name, batch, fn, x, limit_s):
        assert x.shape[0] == batch
        self.calls.append((name, batch))
        return self.table[name][batch]


@pytest.fixture()
def fake_compile(monkeypatch):
    """Compiling writes a stub package and 'loading' it returns the module itself (the timer is injected)."""
    compiled = []

    def compile_(ep, path):
        compiled.append(path.name)
        path.write_bytes(b"stub package")
        return 1.5

    monkeypatch.setattr(making, "compile_package", compile_)
    monkeypatch.setattr(programs, "load_compiled", lambda path: (lambda x: x))
    return compiled


US = 1e-6
FLOAT = {"float-eager": {1: 100 * US, 16: 300 * US, 256: 3000 * US}, "float-program": {1: 250 * US, 16: 450 * US, 256: 3100 * US},
         "float-compiled": {1: 95 * US, 16: 290 * US, 256: 2900 * US}}  # fmt: skip


def test_int8_slower_in_eager_form_is_never_compiled(mlp_result, tmp_path, fake_compile):
    timer = FakeTimer({**FLOAT, "int8-compiled (eager prefilter)": {1: 1200 * US, 16: 3600 * US, 256: 36000 * US}})
    res = export.export_run(mlp_result, tmp_path / "run", timer=timer)
    opt = res.card["optimization"]
    assert fake_compile == [".candidate-float-compiled.pt2"]  # int8 dropped before paying a compile
    reason = opt["candidates"]["int8-compiled"]["reason"]
    assert "12.0× slower than float eager at batch 1" in reason and opt["host"]["isa_class"] in reason
    assert [r["candidate"] for r in opt["plan"]] == ["float-eager"]  # float-compiled is within the 10 % margin
    assert "float-compiled" in opt["reason"] and not (tmp_path / "run" / "model.pt2").exists()
    assert not any(p.name.startswith(".candidate-") for p in (tmp_path / "run").iterdir())


def test_int8_fastest_at_bulk_batches_serves_them_and_float_serves_batch_1(mlp_result, tmp_path, fake_compile):
    timer = FakeTimer({**FLOAT, "int8-compiled (eager prefilter)": {1: 200 * US, 16: 250 * US, 256: 900 * US},
                       "int8-compiled": {1: 150 * US, 16: 280 * US, 256: 700 * US}})  # fmt: skip
    res = export.export_run(mlp_result, tmp_path / "run", timer=timer)
    opt, files = res.card["optimization"], res.card["files"]
    assert [(r["max_rows"], r["candidate"]) for r in opt["plan"]] == [(64, "float-eager"), (None, "int8-compiled")]
    assert opt["candidates"]["int8-compiled"]["seconds"] == {"1": 150 * US, "16": 280 * US, "256": 700 * US}
    assert opt["candidates"]["int8-compiled"]["file"] == "model.pt2" and files["model.pt2"]["candidate"] == "int8-compiled"
    assert files["model.pt2"]["role"] == "cpu-compiled" and files["model.pt2"]["isa"] == opt["host"]["isa"]
    assert opt["candidates"]["float-compiled"]["file"] is None  # measured, not served: not kept
    assert set(fake_compile) == {".candidate-float-compiled.pt2", ".candidate-int8-compiled.pt2"}
    assert res.compile_seconds == 3.0 and "int8-compiled 700 µs" in opt["reason"]
    assert ("float-eager", 256) in timer.calls  # timed at batch 1, the serving batch and a bulk batch


def test_forced_int8_is_served_and_its_measured_cost_is_reported(mlp_result, tmp_path, fake_compile):
    timer = FakeTimer({**FLOAT, "int8-compiled": {1: 1200 * US, 16: 3600 * US, 256: 36000 * US}})
    res = export.export_run(mlp_result, tmp_path / "run", QuantConfig("int8"), timer=timer)
    opt = res.card["optimization"]
    assert fake_compile == [".candidate-int8-compiled.pt2"]  # forced: no float compile
    assert [r["candidate"] for r in opt["plan"]] == ["int8-compiled"] and opt["candidates"]["int8-compiled"]["forced"]
    assert any("int8-compiled forced" in n and "batch 256: 12.00× the time of float (12.0× slower)" in n for n in res.notes), res.notes


def test_forced_int8_weight_is_its_own_candidate_and_served(mlp_result, tmp_path, fake_compile):
    timer = FakeTimer({**FLOAT, "int8-weight-compiled": {1: 50 * US, 16: 220 * US, 256: 2600 * US}})
    res = export.export_run(mlp_result, tmp_path / "run", QuantConfig("int8-weight"), timer=timer)
    opt = res.card["optimization"]
    assert fake_compile == [".candidate-int8-weight-compiled.pt2"]  # forced: no float compile
    cand = opt["candidates"]["int8-weight-compiled"]
    assert cand["precision"] == "int8-weight" and cand["forced"] and "int8-compiled" not in opt["candidates"]
    assert [r["candidate"] for r in opt["plan"]] == ["int8-weight-compiled"]
    assert [d["decision"] for d in res.card["quantization"]["layers"]] == ["int8-weight", "int8-weight", "float"]


def test_compile_never_and_compile_always(mlp_result, tmp_path, fake_compile):
    timer = FakeTimer({**FLOAT, "int8-compiled (eager prefilter)": {1: 1, 16: 1, 256: 1}})
    never = export.export_run(mlp_result, tmp_path / "never", compile="never", timer=timer)
    assert fake_compile == [] and never.card["optimization"]["candidates"]["float-compiled"]["reason"] == "compile never"
    always = export.export_run(mlp_result, tmp_path / "always", QuantConfig("none"), compile="always", timer=timer)
    assert [r["candidate"] for r in always.card["optimization"]["plan"]] == ["float-compiled"]  # 5 % faster, but forced
    with pytest.raises(ValueError, match="compile: 'sometimes' is not one of"):
        export.export_run(mlp_result, tmp_path / "bad", compile="sometimes", timer=timer)


def test_local_model_falls_back_to_float_where_the_isa_class_differs_from_the_build_host(mlp_run, tmp_path):
    """A measured (not forced) int8 plan built on another ISA class: LocalModel serves float, as the handler would."""
    run = tmp_path / "run"
    shutil.copytree(mlp_run.run_dir, run)
    card = json.loads((run / "model.json").read_text())
    here = integrity.isa_class(integrity.cpu_flags())
    card["optimization"]["host"]["isa_class"] = "avx512_vnni" if here != "avx512_vnni" else "avx2"
    card["optimization"]["candidates"]["int8-compiled"]["forced"] = False
    (run / "model.json").write_text(json.dumps(card))
    assert runs.load_run(mlp_run.run_dir).program_file == "model.pt2"  # the forced plan, as built
    moved = runs.load_run(run)
    assert moved.program_file == "model_float.pt2" and "int8 was measured fast on" in moved.programs.reason
    x = np.random.default_rng(0).normal(size=(3, 100)).astype(np.float32)
    assert np.array_equal(moved.forward(x), runs.load_run(run, program="float").forward(x))


AVX2_PLUMBING = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from aiaas_torch.data import from_arrays
    from aiaas_torch.export import export_run
    from aiaas_torch.making import vector_isa
    from aiaas_torch.quantize import QuantConfig
    from aiaas_torch.train import TrainConfig, train
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 20)).astype(np.float32)
    ds = from_arrays(X, X.sum(1))
    r = train(ds, TrainConfig(model="mlp", hidden=(64, 64), epochs=2, progress=False))
    e = export_run(r, sys.argv[1], QuantConfig("none"), compile="always")
    print(json.dumps({"isa": vector_isa(), "card": e.card}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif("avx512f" not in integrity.cpu_flags(),
                    reason="no AVX-512 on this host: ATEN_CPU_CAPABILITY=avx2 changes nothing here, and every export "
                           "on this host already builds and serves the AVX2 path natively")  # fmt: skip
def test_avx2_plumbing_on_an_avx512_host(tmp_path):
    """ATEN_CPU_CAPABILITY=avx2 moves ATen's and inductor's ISA (not oneDNN/MKL): the card, the package and the
    choice on an AVX2-only host must follow. It checks the plumbing, not speed."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2")
    r = subprocess.run([sys.executable, "-c", AVX2_PLUMBING, str(tmp_path / "run")], env=env, capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    card = out["card"]
    assert out["isa"] == "avx2" and card["files"]["model.pt2"]["isa"] == "avx2"
    choice = programs.choose(card, {"avx", "avx2", "fma"}, card["versions"]["torch"])
    assert choice.ranges[0][2] == "model.pt2"
    assert runs.load_run(tmp_path / "run", program="compiled").forward(np.zeros((2, 20), np.float32)).shape == (2, 1)


def test_forcing_int8_that_changes_no_layer_compiles_the_float_program(origin_result, tmp_path, fake_compile):
    timer = FakeTimer({n: {1: 1e-5, 16: 1e-5, 256: 1e-5} for n in ("float-eager", "float-program", "float-compiled")})
    res = export.export_run(origin_result, tmp_path / "run", QuantConfig("int8"), compile="always", timer=timer)
    assert fake_compile == [".candidate-float-compiled.pt2"]
    assert [r["candidate"] for r in res.card["optimization"]["plan"]] == ["float-compiled"] and not res.notes


def test_a_float_model_dominated_by_matrix_products_is_not_compiled(mlp_result, tmp_path, fake_compile):
    slow = {1: 6e-3, 16: 20e-3, 256: 190e-3}  # the large MLP's eager float here: 50 µs of savable overhead is < 10 %
    timer = FakeTimer({"float-eager": slow, "float-program": slow, "int8-compiled (eager prefilter)": {1: 1, 16: 1, 256: 1}})
    res = export.export_run(mlp_result, tmp_path / "run", timer=timer)
    reason = res.card["optimization"]["candidates"]["float-compiled"]["reason"]
    assert fake_compile == [] and "saves at most ≈ 50 µs (5 layers × 10 µs)" in reason and "≥ 6.0 ms" in reason


def test_timings_are_taken_in_turns_and_the_median_kept(mlp_result, tmp_path, fake_compile):
    """A host whose load drifts: the second sample of every candidate is slow; the median of three ignores it."""
    seen = {}

    def drifting(name, batch, fn, x, limit_s):
        seen[(name, batch)] = seen.get((name, batch), 0) + 1
        base = {"float-eager": 100e-6, "float-compiled": 1000e-6, "int8-compiled (eager prefilter)": 1.0}[name]
        return base * (50 if seen[(name, batch)] == 2 else 1)

    res = export.export_run(mlp_result, tmp_path / "run", timer=drifting)
    cands = res.card["optimization"]["candidates"]
    assert cands["float-eager"]["seconds"] == {"1": 100e-6, "16": 100e-6, "256": 100e-6}
    assert seen[("float-eager", 1)] == optimize.ROUNDS  # once before the compile, then in turns
    assert seen[("float-compiled", 1)] == 1  # 10× slower: out of the running, no more seconds on it
    assert "never faster" in cands["float-program"]["reason"]  # where the eager rebuild exists
