"""Kernel options for int8 weights side by side: one 4096×4096 Linear, weights cycled past the L3 cache (issue 28).

Every form gets the same number of distinct layers (random weights), enough that the smallest form's weights
(int8: 16 MiB a layer) cover at least 4× the L3 size, so no form's weights sit in cache between calls: decoding
at batch 1 reads every weight once per token, and that is what this measures. Forms are timed in alternating
turns (A, B, C, …, A, B, C, …) and each form's median per-call time over the turns is reported with its ratio to
float `F.linear`, its relative error against float (RMS(y − y_float) / RMS(y_float)) and whether a row's answer is
bit-identical alone and inside a batch of random neighbours. Prints the host CPU, ISA flags, L3 size and load.

    .venv/bin/python benchmarks/int8_linear.py                 # 2 threads, batch 1 and 16
    .venv/bin/python benchmarks/int8_linear.py --no-compile    # skip torchao compiled (tens of seconds to compile)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from aiaas_torch import int8_weights  # noqa: E402
from aiaas_torch.handlers import integrity  # noqa: E402

ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def l3_bytes() -> int:
    """Return this host's L3 cache size in bytes (sysfs; 32 MiB where it cannot be read)."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for d in sorted(base.glob("index*")) if base.exists() else []:
        try:
            if (d / "level").read_text().strip() == "3":
                m = re.fullmatch(r"(\d+)([KMG]?)", (d / "size").read_text().strip())
                return int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)]
        except (OSError, AttributeError):
            continue
    return 32 * 2**20


def host_line() -> str:
    """Return one line naming the CPU, its vector ISA flags, L3, threads, torch and the load average."""
    flags = integrity.cpu_flags()
    have = [f for f in ISA_FLAGS if f in flags]
    return (f"host: {integrity.cpu_model_name()}, {os.cpu_count()} CPUs, ISA class {integrity.isa_class(flags)} "
            f"(flags: {' '.join(have) or 'none'}), ATen capability {torch.backends.cpu.get_cpu_capability()}, "
            f"L3 {l3_bytes() / 2**20:.0f} MiB, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip


def build_forms(weights: list, compile_torchao: bool) -> dict:
    """Return {form name: (description, [one callable x → y per layer])} for the layers' float `weights`."""
    forms = {"float F.linear": ("fp32 weights, MKL/oneDNN sgemm", [lambda x, w=w: F.linear(x, w) for w in weights])}
    packed = [int8_weights.quantize_weight(w, "channel") for w in weights]
    forms["ATen int8pack, bf16 act."] = ("torch._weight_int8pack_mm, x and scales in bf16, y back to fp32",
        [lambda x, q=q: torch._weight_int8pack_mm(x.to(torch.bfloat16), q.q, q.scale.to(torch.bfloat16)).float() for q in packed])
    forms["ATen int8pack, fp32 act."] = ("torch._weight_int8pack_mm, x and scales in fp32",
        [lambda x, q=q: torch._weight_int8pack_mm(x, q.q, q.scale) for q in packed])
    forms["dequantize → F.linear"] = ("pure PyTorch: int8 → fp32 weight × scale every call, then sgemm",
        [lambda x, q=q: F.linear(x, q.q.float() * q.scale[:, None]) for q in packed])
    forms["int8 → fp32 matmul, scale after"] = ("pure PyTorch: x @ int8ᵀ.float(), then × scale",
        [lambda x, q=q: F.linear(x, q.q.float()) * q.scale for q in packed])
    bf16 = [w.to(torch.bfloat16) for w in weights]
    forms["bf16 F.linear"] = ("bf16 weights and activations (half the bytes)", [lambda x, w=w: F.linear(x.to(torch.bfloat16), w).float() for w in bf16])
    try:
        fp16 = [torch.ops.quantized.linear_prepack_fp16(w, None) for w in weights]
        forms["fbgemm fp16"] = ("torch.ops.quantized.linear_dynamic_fp16 (fp16 weights, fp32 act.)",
            [lambda x, p=p: torch.ops.quantized.linear_dynamic_fp16(x, p) for p in fp16])
    except (RuntimeError, AttributeError) as e:
        print(f"fbgemm fp16: not available ({str(e).splitlines()[0]})")
    try:
        scales = [float(w.abs().max()) / 127 for w in weights]
        i8 = [torch.ops.quantized.linear_prepack(torch.quantize_per_tensor(w, s, 0, torch.qint8), None) for w, s in zip(weights, scales)]
        forms["fbgemm int8 dynamic"] = ("torch.ops.quantized.linear_dynamic (per-batch int8 activations: batch-coupled)",
            [lambda x, p=p: torch.ops.quantized.linear_dynamic(x, p, True) for p in i8])
    except (RuntimeError, AttributeError) as e:
        print(f"fbgemm int8: not available ({str(e).splitlines()[0]})")
    try:
        from aiaas_torch import _quiet

        tq = _quiet.import_torchao()
        layers = []
        for w in weights:
            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
            lin.weight.data = w
            tq.quantize_(lin, tq.Int8WeightOnlyConfig())
            layers.append(lin)
        forms["torchao Int8WeightOnly eager"] = ("torchao 0.18 Int8WeightOnlyConfig, eager", [lambda x, m=m: m(x) for m in layers])
        if compile_torchao:
            compiled = torch.compile(lambda m, x: m(x), dynamic=False)
            t0 = time.perf_counter()
            compiled(layers[0], torch.zeros(1, weights[0].shape[1]))
            print(f"torchao compiled: first call (compile) {time.perf_counter() - t0:.1f} s")
            forms["torchao Int8WeightOnly compiled"] = ("same, torch.compile (inductor)", [lambda x, m=m: compiled(m, x) for m in layers])
    except Exception as e:  # noqa: BLE001  (a benchmark reports what it could not build and goes on)
        print(f"torchao: not available ({type(e).__name__}: {str(e).splitlines()[0]})")
    mod = int8_weights.Int8WeightLinear
    for path in int8_weights.paths_here():
        layers = [mod.from_weight(w, None, "channel", path=path) for w in weights]
        forms[f"Int8WeightLinear [{path}]"] = (f"aiaas_torch.int8_weights, path {path}", [lambda x, m=m: m(x) for m in layers])
    return forms


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def time_turn(calls: list, x: torch.Tensor, passes: int, clock=time.perf_counter) -> tuple:
    """Return (mean seconds of one call, fastest single call) over `passes` passes through every layer, on `clock`."""
    times = []
    for _ in range(passes):
        for f in calls:
            t0 = clock()
            f(x)
            times.append(clock() - t0)
    return sum(times) / len(times), min(times)


def figures(forms: dict, weights: list, batch: int, rounds: int, passes: int, clock=time.perf_counter) -> dict:
    """Return {form: {median_s, min_s, rel_err, invariant}} at one batch size, timed in alternating turns: the median
    of the turns' mean call times, and the fastest single call (on a shared host: the least disturbed one)."""
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, weights[0].shape[1], generator=g)
    out = {}
    with torch.inference_mode():
        want = F.linear(x.double(), weights[0].double())
        for name, (_, calls) in forms.items():
            y = calls[0](x).double()
            alone = calls[0](x[:1])
            neighbours = torch.cat([x[:1], torch.randn(16, x.shape[1], generator=g) * 100])
            err = float(torch.sqrt(torch.mean((y - want) ** 2)) / torch.sqrt(torch.mean(want**2)))
            out[name] = {"turns": [], "fastest": [], "rel_err": err, "invariant": bool(torch.equal(alone[0], calls[0](neighbours)[0]))}
            calls[0](x)  # warm
        for _ in range(rounds):
            for name, (_, calls) in forms.items():
                mean, fastest = time_turn(calls, x, passes, clock)
                out[name]["turns"].append(mean)
                out[name]["fastest"].append(fastest)
    for v in out.values():
        v["median_s"] = statistics.median(v.pop("turns"))
        v["min_s"] = min(v.pop("fastest"))
    return out


def main(argv=None) -> int:
    """Print the host, then the table of forms at each batch size; returns 0."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--cache-multiple", type=float, default=4.0, help="cycle at least this many L3 sizes of int8 weights")
    p.add_argument("--no-compile", action="store_true", help="skip torchao compiled")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall (default) or cpu: this thread's CPU seconds, which a shared host's other load inflates less; "
                        "meaningful with --threads 1 only (with 1 thread torch computes on the calling thread)")
    p.add_argument("--stat", choices=["median", "min"], default="median",
                   help="the table's figure: median of the turns (default) or the fastest single call (a shared host)")
    p.add_argument("--only", nargs="+", metavar="TEXT", help="time only the forms whose name contains one of these (float always)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.size
    layers = max(2, math.ceil(args.cache_multiple * l3_bytes() / (n * n)))  # int8: n·n bytes a layer
    print(host_line())
    print(f"clock: {args.clock}, figure: {args.stat}; {layers} layers of {n}×{n}: int8 {layers * n * n / 2**20:.0f} MiB, fp32 {layers * n * n * 4 / 2**20:.0f} MiB cycled "
          f"(≥ {args.cache_multiple:g}× L3 for every form); {args.rounds} alternating rounds × {args.passes} passes")  # fmt: skip
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, n, generator=g) / math.sqrt(n) for _ in range(layers)]
    if args.clock == "cpu" and args.threads != 1:
        p.error("--clock cpu needs --threads 1")
    forms = build_forms(weights, not args.no_compile)
    if args.only:
        forms = {k: v for k, v in forms.items() if k == "float F.linear" or any(t in k for t in args.only)}
    results = {}
    for b in args.batches:
        results[b] = figures(forms, weights, b, args.rounds, args.passes, CLOCKS[args.clock])
    key = f"{args.stat}_s"
    base = {b: results[b]["float F.linear"][key] for b in args.batches}
    head = "| form | " + " | ".join(f"batch {b}: ms, × float" for b in args.batches) + " | rel. error vs float | row bit-identical in any batch |"
    print(head)
    print("|" + "---|" * (len(args.batches) + 3))
    for name in forms:
        cells = [f"{results[b][name][key] * 1e3:.2f} ms, {base[b] / results[b][name][key]:.2f}×" for b in args.batches]
        r = results[args.batches[0]][name]
        print(f"| {name} | " + " | ".join(cells) + f" | {r['rel_err']:.1e} | {'yes' if all(results[b][name]['invariant'] for b in args.batches) else 'no'} |")
    print("forms: " + "; ".join(f"{k}: {v[0]}" for k, v in forms.items()))
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps({"host": host_line(), "layers": layers, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
