"""Reduced-precision spike: which batch-invariant forms of a large MLP survive torch.export + AOTInductor, and pay?

For the MLP 1024→4096→4096→1 (briefly SGD-trained on generated data, or random with --random) each candidate is
exported with a dynamic batch dimension, compiled by AOTInductor and loaded back; the loaded programs are then
timed side by side (interleaved rounds, medians) at batch 1 and 256 with 1 and 2 torch threads, compared with
the float eager model on held-out rows (relative RMSE, 2 % gate), and checked for batch invariance (a row alone
vs in 256 rows; bit-identical when its neighbours are scaled ×100). Prints the host CPU and vector ISA first.

    .venv/bin/python benchmarks/reduced_precision.py --out docs/bench/reduced_precision.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from aiaas_torch import _quiet, bench
from aiaas_torch.data import from_arrays
from aiaas_torch.handlers import integrity
from aiaas_torch.making import export_program, vector_isa
from aiaas_torch.models import fold_preprocessing
from aiaas_torch.quantize import _tensors
from aiaas_torch.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantize import batch_invariance, make_data  # noqa: E402  (one copy of the data and the invariance check)

D, HIDDEN, ROWS = 1024, (4096, 4096), 4096
BASE_CONFIGS = {"aot_inductor.use_runtime_constant_folding": True}  # what aiaas_torch/export.py compiles with
GATE = 0.02


class GemvLinear(nn.Module):
    """Linear whose weight is stored narrow (fp16, bf16, or int8 with one scale per output row).

    The product is written as a broadcast multiply and a sum over the input features, so inductor fuses the
    widening of each weight into the reduction (one pass over the narrow bytes) instead of calling a GEMM; no
    node depends on the weight alone, so constant folding cannot widen it back to float32 at load time.
    """

    def __init__(self, lin: nn.Linear, dtype: torch.dtype):
        super().__init__()
        w = lin.weight.detach()
        if dtype == torch.int8:
            scale = w.abs().amax(1).clamp_min(1e-12) / 127.0
            self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scale", scale.float())
        else:
            self.register_buffer("weight", w.to(dtype))
            self.scale = None
        self.register_buffer("bias", lin.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return x Wᵀ (· row scale) + b, accumulated in float32 one row of x at a time."""
        y = (x.unsqueeze(-2) * self.weight).sum(-1)
        return (y * self.scale if self.scale is not None else y) + self.bias


class UpcastLinear(nn.Linear):
    """Linear with the weight stored narrow and widened to float32 in forward (F.linear on the widened copy)."""

    def __init__(self, lin: nn.Linear, dtype: torch.dtype):
        nn.Module.__init__(self)
        self.in_features, self.out_features = lin.in_features, lin.out_features
        self.register_buffer("weight", lin.weight.detach().to(dtype))
        self.register_buffer("bias", lin.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return x · float32(W)ᵀ + b."""
        return F.linear(x, self.weight.float(), self.bias)


class Bf16Linear(nn.Module):
    """Linear in bfloat16: weight stored bf16, each row of x rounded to bf16, result widened back to float32."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.register_buffer("weight", lin.weight.detach().bfloat16())
        self.register_buffer("bias", lin.bias.detach().bfloat16())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return float32(bf16(x) · Wᵀ + b)."""
        return F.linear(x.bfloat16(), self.weight, self.bias).float()


def replace_large(model: nn.Sequential, make) -> nn.Sequential:
    """Return a copy of `model` with every Linear wider than 1 in and out replaced by make(linear)."""
    mods = [make(m) if isinstance(m, nn.Linear) and min(m.in_features, m.out_features) > 1 else m for m in model]
    return nn.Sequential(*mods).eval()


def torchao_form(model: nn.Sequential, config_name: str) -> nn.Sequential:
    """Return a copy of `model` quantized by torchao's `config_name` on the layers wider than 1 in and out."""
    import copy

    tq = _quiet.import_torchao()
    q = copy.deepcopy(model).eval()
    tq.quantize_(q, getattr(tq, config_name)(), filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and min(m.in_features, m.out_features) > 1)
    return q


FREEZE = {"freezing": True}
# The CPP GEMM template with runtime constant folding fails in torch 2.13 ("Not all constant gets mapped for
# constant folding graph"), so the autotuned forms fold their (packed) weights at compile time instead.
AUTOTUNE = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
            "aot_inductor.use_runtime_constant_folding": False}

# name -> (builder of the eager module from the float Sequential, extra inductor configs, what it is)
CANDIDATES = {
    "float32": (lambda m: m, {}, "today's float compiled program (baseline)"),
    "float32 freezing": (lambda m: m, FREEZE, "float, inductor freezing=True"),
    "float32 autotune": (lambda m: m, AUTOTUNE, "float, freezing + max_autotune (CPP GEMM template vs ATen)"),
    "fp16 upcast": (lambda m: replace_large(m, lambda l: UpcastLinear(l, torch.float16)), {}, "fp16 weights, F.linear(x, w.float())"),
    "fp16 gemv": (lambda m: replace_large(m, lambda l: GemvLinear(l, torch.float16)), {}, "fp16 weights widened inside a fused reduction"),
    "bf16 gemv": (lambda m: replace_large(m, lambda l: GemvLinear(l, torch.bfloat16)), {}, "bf16 weights widened inside a fused reduction"),
    "int8 gemv": (lambda m: replace_large(m, lambda l: GemvLinear(l, torch.int8)), {}, "int8 weights + row scale, fused reduction"),
    "bf16 linear": (lambda m: replace_large(m, Bf16Linear), AUTOTUNE, "bf16 weights and activations, freezing + max_autotune"),
    "torchao int8 weight-only": (lambda m: torchao_form(m, "Int8WeightOnlyConfig"), {}, "torchao Int8WeightOnlyConfig"),
    "torchao int8 dynamic": (lambda m: torchao_form(m, "Int8DynamicActivationInt8WeightConfig"), {}, "today's int8 (per-row activations)"),
}


def trained_model(random: bool) -> tuple[nn.Sequential, np.ndarray, np.ndarray]:
    """Return (folded float Sequential of Linear/ReLU, held-out rows, timing rows) of the large MLP."""
    X, y = make_data(D, ROWS)
    if random:
        torch.manual_seed(0)
        layers, w = [], D
        for h in HIDDEN:
            layers += [nn.Linear(w, h), nn.ReLU()]
            w = h
        return nn.Sequential(*layers, nn.Linear(w, 1)).eval(), make_data(D, 1024, seed=1)[0], X
    result = train(from_arrays(X, y), TrainConfig(model="mlp", hidden=HIDDEN, epochs=2, lr=0.01, momentum=0.9,
                                                  batch_size=256, val_fraction=0.1, progress=False))  # fmt: skip
    return fold_preprocessing(result.model), np.ascontiguousarray(result.eval_X[:1024]), X


def stored_bytes(model: nn.Module) -> int:
    """Return the bytes of every parameter and buffer as stored (inside torchao's tensor subclasses too)."""
    return sum(t.numel() * t.element_size() for m in model.modules() for t in _tensors(m))


def build(name: str, float_model: nn.Sequential, root: Path) -> dict:
    """Return one candidate's eager module, exportability, compile result and loaded program (or the error)."""
    make, extra, what = CANDIDATES[name]
    out = {"what": what, "inductor_configs": {**BASE_CONFIGS, **extra}}
    eager = make(float_model)
    out["eager"], out["weight_bytes"] = eager, stored_bytes(eager)
    try:
        ep = export_program(eager, D)
        out["exportable"] = True
    except Exception as e:  # noqa: BLE001  (a spike records why a form fails, whatever the error)
        out["exportable"], out["error"] = False, f"export: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return out
    path = root / f"{name.replace(' ', '_')}.pt2"
    t0 = time.perf_counter()
    try:
        torch._inductor.aoti_compile_and_package(ep, package_path=str(path), inductor_configs=out["inductor_configs"])
        out["compile_s"] = round(time.perf_counter() - t0, 1)
        out["fn"] = torch._inductor.aoti_load_package(str(path))
        out["package_bytes"] = path.stat().st_size
        out["compiles"] = True
    except Exception as e:  # noqa: BLE001
        out["compiles"], out["error"] = False, f"AOTI: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return out


def interleaved_medians(fns: dict, x: torch.Tensor, budget_s: float, min_rounds: int = 3) -> dict:
    """Return each function's median ms on x, timing all of them in alternating rounds so load hits each alike."""
    times = {k: [] for k in fns}
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(2):
                fn(x)
        end = time.perf_counter() + budget_s
        rounds = 0
        while rounds < min_rounds or (time.perf_counter() < end and rounds < 500):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn(x)
                times[k].append(time.perf_counter() - t0)
            rounds += 1
    return {k: round(1000 * statistics.median(v), 3) for k, v in times.items()}


def rel_rmse(fn, ref: torch.Tensor, X: torch.Tensor) -> float:
    """Return RMS(fn(X) − ref) / RMS(ref)."""
    with torch.inference_mode():
        q = fn(X).double()
    r = ref.double()
    return float(torch.sqrt(((q - r) ** 2).mean()) / torch.sqrt((r**2).mean()))


def aten_probe(budget_s: float) -> dict:
    """Return eager ms of the reduced-precision ATen kernels on one 4096×4096 layer (rows 1 and 16, 2 threads)."""
    torch.manual_seed(0)
    w = torch.randn(4096, 4096) / 64
    s = w.abs().amax(1) / 127
    q = torch.round(w / s[:, None]).to(torch.int8)
    wh, wb = w.half(), w.bfloat16()
    int4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (4096, 4096), dtype=torch.int32), 1)
    int4_scales = torch.rand(4096 // 128, 4096, 2).bfloat16()
    out, saved = {}, torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for m in (1, 16):
            x = torch.randn(m, 4096)
            xb, xi = x.bfloat16(), torch.randint(-127, 128, (max(m, 17), 4096), dtype=torch.int8)  # _int_mm needs > 16 rows
            fns = {
                "fp32 F.linear": lambda: F.linear(x, w),
                "fp16 F.linear (fp16 x)": lambda: F.linear(x.half(), wh),
                "bf16 F.linear (bf16 x)": lambda: F.linear(xb, wb),
                "_weight_int8pack_mm (fp32 x)": lambda: torch._weight_int8pack_mm(x, q, s),
                "_weight_int8pack_mm (bf16 x)": lambda: torch._weight_int8pack_mm(xb, q, s.bfloat16()),
                "_weight_int4pack_mm_for_cpu g128 (bf16 x)": lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, int4, 128, int4_scales),
                "_int_mm (17+ rows)": lambda: torch._int_mm(xi, q.t()),
            }
            out[f"rows {m}"] = interleaved_medians({k: (lambda _x, f=f: f()) for k, f in fns.items()}, x, budget_s)
    finally:
        torch.set_num_threads(saved)
    return out


def table(res: dict) -> str:
    """Return the Markdown table of one run (ratios are float32-compiled ms ÷ candidate ms, same threads and batch)."""
    keys = list(res["latency_ms"])
    lines = [f"host: {res['machine']['cpu']}, {res['machine']['cores']} cores, inductor ISA {res['isa']}, CPU flags "
             f"{res['cpu_flags']}; torch {res['machine']['torch']}, torchao {res['machine']['torchao']}; "
             f"load {res['machine']['loadavg_1min']} → {res['loadavg_end']}", ""]  # fmt: skip
    head = "| candidate | export | AOTI | compile s | " + " | ".join(f"{k} ms (× vs float)" for k in keys)
    lines += [head + " | rel RMSE | alone vs 256 max rel | neighbours ×100 bit-identical | weight bytes |",
              "|---" * (4 + len(keys) + 4) + "|"]  # fmt: skip
    for name, c in res["candidates"].items():
        cells = [name, "yes" if c.get("exportable") else "NO", "yes" if c.get("compiles") else "NO", str(c.get("compile_s", "–"))]
        for k in keys:
            ms = res["latency_ms"][k].get(name)
            base = res["latency_ms"][k].get("float32")
            cells.append(f"{ms:.2f} ({base / ms:.2f}×)" if ms and base else "–")
        inv = c.get("batch_invariance") or {}
        rm = c.get("rel_rmse")
        cells += [f"{rm:.3%}{'' if rm <= GATE else ' ✗'}" if rm is not None else "–",
                  f"{inv['alone_vs_batch256_max_rel']:.1e}" if inv else "–",
                  str(inv.get("neighbour_changed_bit_identical", "–")), f"{c['weight_bytes']:,}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    for name, c in res["candidates"].items():
        if c.get("error"):
            lines.append(f"- {name}: {c['error']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Run the spike; print the table; write JSON with --out."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated names (default all)")
    p.add_argument("--random", action="store_true", help="random weights instead of a brief SGD training")
    p.add_argument("--threads", default="2,1", help="torch thread counts to time (default 2,1)")
    p.add_argument("--budget", type=float, default=8.0, help="seconds of timing per threads × batch (default 8)")
    p.add_argument("--wait-quiet", type=float, default=0.0, help="wait up to this many s for 1-min load < 1")
    p.add_argument("--aten-probe", action="store_true", help="also time the ATen reduced-precision kernels eagerly")
    p.add_argument("--out", default=None, help="write the JSON result here")
    a = p.parse_args(argv)
    names = [n.strip() for n in a.candidates.split(",") if n.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        p.error(f"--candidates: unknown {unknown}; choose from {list(CANDIDATES)}")
    if "float32" not in names:
        names.insert(0, "float32")
    _quiet.install()
    if a.wait_quiet:
        bench.wait_quiet(1.0, a.wait_quiet, echo=lambda m: print(m, file=sys.stderr, flush=True))
    flags = sorted(integrity.cpu_flags() & {"avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "avx512_bf16"})
    res = {"machine": bench.machine_info(), "isa": vector_isa(), "cpu_flags": " ".join(flags),
           "command": "benchmarks/reduced_precision.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "candidates": {}, "latency_ms": {}}  # fmt: skip
    print(f"[spike] host {res['machine']['cpu']}, ISA {res['isa']}, flags {res['cpu_flags']}", file=sys.stderr, flush=True)
    float_model, eval_X, X = trained_model(a.random)
    with torch.inference_mode():
        ref = float_model(torch.from_numpy(eval_X))
    built = {}
    with tempfile.TemporaryDirectory(prefix="aiaas-rp-") as root:
        for n in names:
            print(f"[spike] {n}: export + AOTI ...", file=sys.stderr, flush=True)
            built[n] = build(n, float_model, Path(root))
            c = built[n]
            print(f"[spike]   {n}: export={c.get('exportable')} compiles={c.get('compiles')} {c.get('compile_s', '')} s {c.get('error', '')}", file=sys.stderr, flush=True)
        for n, c in built.items():
            fn = c.get("fn") or c["eager"]
            c["rel_rmse"] = rel_rmse(fn, ref, torch.from_numpy(eval_X))
            c["rel_rmse_of"] = "compiled" if c.get("fn") else "eager"
            if c.get("fn"):
                c["batch_invariance"] = batch_invariance(c["fn"], X)
            print(f"[spike] {n}: rel RMSE {c['rel_rmse']:.3%}, {c.get('batch_invariance')}", file=sys.stderr, flush=True)
        fns = {n: c["fn"] for n, c in built.items() if c.get("fn")}
        saved = torch.get_num_threads()
        try:
            for t in (int(s) for s in a.threads.split(",")):
                torch.set_num_threads(t)
                for b in (1, 256):
                    print(f"[spike] timing {t} thr, batch {b} ...", file=sys.stderr, flush=True)
                    x = torch.from_numpy(np.ascontiguousarray(X[:b]))
                    res["latency_ms"][f"{t} thr b{b}"] = interleaved_medians(fns, x, a.budget)
                    print(f"[spike]   {res['latency_ms'][f'{t} thr b{b}']}", file=sys.stderr, flush=True)
        finally:
            torch.set_num_threads(saved)
    for n, c in built.items():
        res["candidates"][n] = {k: v for k, v in c.items() if k not in ("eager", "fn")}
    if a.aten_probe:
        print("[spike] ATen kernels, one 4096×4096 layer, eager ...", file=sys.stderr, flush=True)
        res["aten_probe_ms"] = aten_probe(a.budget)
    res["loadavg_end"] = round(os.getloadavg()[0], 2)
    print(table(res))
    for rows, ms in res.get("aten_probe_ms", {}).items():
        print(f"- ATen eager, 2 thr, one 4096×4096 layer, {rows}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(a.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        tmp.replace(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
