"""Choose the served program by measurement on this host: one decision for quantization and compilation.

`CANDIDATES` lists the programs a run directory can serve, simplest first; a new reduced-precision form is one
more entry (a name, a kind, a precision, and a function building the module to compile). `optimize` drops the
candidates that cannot win before paying for a compile (cost model), compiles the rest, times each at batch 1,
the serving batch and a bulk batch with the serving thread count, and lets `programs.decide` keep the fastest by
a margin, else the simpler one. The card's "optimization" section records the host, every candidate's timings
or why it was dropped, the plan and its reason; the handler and LocalModel load that plan with `programs.load`.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import making
from .errors import InputError
from .handlers import integrity
from .handlers import programs
from .quantize import FORCED_SCHEMES, gate_failure

COMPILE_MODES = ("auto", "always", "never")
BATCHES = (1, 16, 256)  # batch 1, the default serving batch (ServingConfig.batch_size), a bulk request
ROUNDS = 3  # timings per candidate and batch size, taken in turns; the median is kept
THREADS = 1  # torch threads per worker in the default ServingConfig: time the way a worker runs
# Below this many weights a compile cannot pay: measured here, AOTInductor's call costs 20–50 µs against 9 µs
# for the whole eager forward of the 1-weight origin model, and a compile costs 15–75 s.
MIN_COMPILE_WEIGHTS = 1024
# What a compile can save over the eager float model: Python dispatch per layer (≈ 10 µs here) and fusing
# elementwise ops, both negligible against large matrix products, which eager and compiled run with the same BLAS.
SAVING_PER_LAYER_S = 10e-6
COMPILED_NAMES = ("model.pt2", "model_2.pt2", "model_3.pt2")  # the compiled programs a plan keeps, in plan order

Timer = Callable[[str, int, Callable, torch.Tensor, float], float]


@dataclass(frozen=True)
class Candidate:
    """A program form: its name, how it loads (programs.KINDS), its precision, and for compiled ones what it compiles."""

    name: str
    kind: str
    precision: str
    build: Callable | None = None  # (float_model, qmodel, report) → module to compile, or a str saying why not


def _float_module(float_model, qmodel, report):
    """Return the float model (the float-compiled candidate's module)."""
    return float_model


def _quantized_module(float_model, qmodel, report):
    """Return the quantized model, or why it is no candidate (scheme none, no layer changed, or it fails the gate)."""
    if report.scheme == "none":
        return "scheme 'none'"
    if all(l.decision == "float" for l in report.layers):
        return f"{report.scheme.replace('auto', 'int8')} leaves every layer float: the same program as float-compiled"
    failure = gate_failure(report)
    if failure is not None and not report.forced:  # a forced scheme that fails the gate was refused before this
        return f"fails the accuracy gate: {failure}"
    return qmodel


CANDIDATES = (
    Candidate("float-eager", "eager", programs.FLOAT),
    Candidate("float-program", "program", programs.FLOAT),
    Candidate("float-compiled", "compiled", programs.FLOAT, _float_module),
    Candidate("quantized-compiled", "compiled", "quantized", _quantized_module),  # named by scheme: int8-, pow2-, int8-weight-compiled
)


def compile_mode(compile) -> str:
    """Return "auto", "always" or "never" for a compile setting (None, True, False or one of those names)."""
    if compile is None:
        return "auto"
    if isinstance(compile, bool):
        return "always" if compile else "never"
    if compile not in COMPILE_MODES:
        raise InputError(f"compile: {compile!r} is not one of {COMPILE_MODES}")
    return compile


def sequential_layers(model: nn.Module) -> list | None:
    """Return the card's layer list (["linear", in, out] | ["relu"]) of a plain Sequential, or None when it is not one."""
    if not isinstance(model, nn.Sequential):
        return None
    out = []
    for m in model:
        if type(m) is nn.Linear:
            out.append(["linear", m.in_features, m.out_features])
        elif type(m) is nn.ReLU:
            out.append(["relu"])
        else:
            return None
    return out


def median_timer(name: str, batch: int, fn: Callable, x: torch.Tensor, limit_s: float) -> float:
    """Return the median seconds of fn(x) over about 0.04 s, or the first call's time when it already exceeds limit_s."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        fn(x)
        first = time.perf_counter() - t0
        if first > limit_s:
            return first  # it cannot win: do not spend seconds confirming it
        times = []
        end = time.perf_counter() + 0.04
        while len(times) < 5 or (time.perf_counter() < end and len(times) < 500):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass
class Optimization:
    """What `optimize` decided: the card section, compiled files to keep (staging name → final name), notes."""

    section: dict
    compiled: dict = field(default_factory=dict)  # staging file name → final file name
    compile_seconds: float | None = None
    notes: list = field(default_factory=list)


def _host() -> dict:
    """Return this host's CPU model, vector ISA class (from its CPU flags), the timing thread count and torch version.

    Inductor's own ISA pick ("isa") is added only when something is compiled: the probe costs 4–10 s here.
    """
    return {"cpu": integrity.cpu_model_name(), "isa_class": integrity.isa_class(integrity.cpu_flags()), "threads": THREADS,
            "torch": torch.__version__}  # fmt: skip


def optimize(float_model, qmodel, report, staging: Path, *, scheme: str, compile="auto", compiler: bool = True,
             timer: Timer | None = None, batches=BATCHES, margin: float = programs.MARGIN, host: dict | None = None,
             float_ep=None, inputs: tuple | None = None) -> Optimization:  # fmt: skip
    """Return the Optimization of one export: candidates dropped or compiled into `staging`, timed, and the plan.

    float_ep: the float model's torch.export program when the caller has it (saves exporting it again).
    inputs: for a model of named tensor inputs (imported), one tensor per input holding max(batches) samples to time
    on; None for a tabular model (one [N, F] input of random rows).
    """
    from .card import FLOAT_PROGRAM

    mode = compile_mode(compile)
    timer = timer or median_timer
    host = host or _host()
    # forcing int8/pow2 forces the quantized program, unless quantization left every layer float (then it is the float one)
    forced = scheme in FORCED_SCHEMES and any(l.decision != "float" for l in report.layers)
    n_weights = sum(m.weight.numel() for m in float_model.modules() if isinstance(m, nn.Linear))
    if inputs is None:
        first = next(m for m in float_model.modules() if isinstance(m, nn.Linear) or hasattr(m, "n_features"))
        n_features = first.in_features if isinstance(first, nn.Linear) else first.n_features  # raw width, before Preprocess
        rows = torch.randn(max(batches), n_features, generator=torch.Generator().manual_seed(0))
        at, run = (lambda b: rows[:b]), (lambda fn: fn)
    else:  # an imported program may hold no nn.Linear (a loaded ExportedProgram): count every weight
        n_features, n_weights = inputs, n_weights or sum(p.numel() for p in float_model.parameters())
        at, run = (lambda b: tuple(t[:b] for t in inputs)), (lambda fn: lambda xs: fn(*xs))
    qname = f"{scheme if scheme in ('pow2', 'int8-weight') else 'int8'}-compiled"
    layers = sequential_layers(float_model)
    section = {"host": host, "mode": {"quantize": scheme, "compile": mode}, "batches": list(batches),
               "margin": margin, "candidates": {}, "plan": [], "reason": ""}  # fmt: skip
    cands, opt, modules = section["candidates"], Optimization(section), {}

    def drop(name: str, c: Candidate, why: str, **extra) -> None:
        cands[name] = {"kind": c.kind, "precision": c.precision if c.precision != "quantized" else scheme.replace("auto", "int8"),
                       "file": None, "status": "dropped", "reason": why, **extra}  # fmt: skip

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        def measure(name: str, fn) -> dict:
            out = {}
            for b in batches:
                best = min((cands[n]["seconds"][str(b)] for n in cands if cands[n].get("seconds", {}).get(str(b))), default=math.inf)
                out[str(b)] = timer(name, b, run(fn), at(b), 3 * best)
            return out

        for c in CANDIDATES:
            name = qname if c.name == "quantized-compiled" else c.name
            if c.kind == "eager":
                if layers is None:
                    drop(name, c, "not a Sequential of Linear and ReLU: cannot be rebuilt from the card")
                    continue
                modules[name] = programs.rebuild_sequential(layers, float_model.state_dict())
            elif c.kind == "program":
                if "float-eager" in modules:  # measured 0.93× eager on the large MLP, 25× slower on the origin model
                    drop(name, c, "runs float-eager's kernels plus ≈ 100 µs of graph interpretation a call: "
                                  "kept as the fallback, never faster")  # fmt: skip
                    continue
                modules[name] = (float_ep or _export(float_model, n_features)).module(check_guards=False)
            else:
                module = c.build(float_model, qmodel, report)
                why = module if isinstance(module, str) else None
                if why is None and mode == "never":
                    why = "compile never"
                elif why is None and not compiler:
                    why = "no C++ compiler on this host"
                elif why is None and forced and name != qname:
                    why = f"--quantize {scheme} forces the {qname} program"
                elif why is None and mode == "auto" and not forced and n_weights < MIN_COMPILE_WEIGHTS:
                    why = f"{n_weights} weights < {MIN_COMPILE_WEIGHTS}: a compiled call costs more here than the whole eager forward"
                elif why is None and mode == "auto" and not forced and c.precision == programs.FLOAT and "float-eager" in modules:
                    why = _saving_bound(cands["float-eager"]["seconds"], len(layers), margin)
                elif why is None and c.precision != programs.FLOAT and not forced and (base := _baseline(modules)):
                    why = _prefilter(name, run(module), cands[base]["seconds"], timer, at, batches, margin, host["isa_class"], base)
                if why:
                    drop(name, c, why)
                    continue
                staged = f".candidate-{name}.pt2"
                if "isa" not in host:
                    host["isa"] = making.vector_isa()
                secs = making.compile_package(float_ep if module is float_model and float_ep else _export(module, n_features), staging / staged)
                opt.compile_seconds = (opt.compile_seconds or 0.0) + secs
                modules[name] = programs.load_compiled(str(staging / staged))
                cands[name] = {"kind": c.kind, "precision": "float32" if c.precision == programs.FLOAT else scheme.replace("auto", "int8"),
                               "file": staged, "compile_seconds": round(secs, 2)}  # fmt: skip
                if forced and name == qname:
                    cands[name]["forced"] = True
            cands.setdefault(name, {"kind": c.kind, "precision": c.precision, "file": FLOAT_PROGRAM})
            cands[name]["status"] = "measured"
            cands[name]["seconds"] = measure(name, modules[name])
        # one candidate timed after another sees the load of a shared host drift: time them again in turns
        names = [n for n in cands if cands[n]["status"] == "measured"]
        for b in map(str, batches):
            samples = {n: [cands[n]["seconds"][b]] for n in names}
            for _ in range(ROUNDS - 1):
                for n in names:
                    best = min(min(v) for v in samples.values())
                    if samples[n][0] <= 3 * best:  # one already out of the running gets no more seconds
                        samples[n].append(timer(n, int(b), run(modules[n]), at(int(b)), 3 * best))
            for n in names:
                cands[n]["seconds"][b] = statistics.median(samples[n])
    finally:
        torch.set_num_threads(saved_threads)

    measured = [n for n, m in cands.items() if m["status"] == "measured"]
    eligible = measured
    if forced and qname in measured:
        eligible = [qname]
    elif mode == "always" and any(cands[n]["kind"] == "compiled" for n in measured):
        eligible = [n for n in measured if cands[n]["kind"] == "compiled"]
    timings = {n: {int(b): s for b, s in cands[n]["seconds"].items()} for n in eligible}
    plan, reason = programs.decide(eligible, timings, list(batches), margin, host["isa_class"])
    if forced and qname not in measured:
        opt.notes.append(f"--quantize {scheme} needs a compiled package ({cands[qname]['reason']}): the float program serves")
    elif forced:
        opt.notes.append(cost_line(qname, cands, batches, host["isa_class"]))
    # keep the compiled files the plan serves, renamed in plan order; drop the others
    winners = [r.candidate for r in plan]
    final_names = iter(COMPILED_NAMES)
    for n in dict.fromkeys(winners):
        if cands[n]["kind"] == "compiled":
            final = next(final_names)
            opt.compiled[cands[n]["file"]] = final
            cands[n]["file"] = final
    for n, m in cands.items():
        if m["kind"] == "compiled" and m.get("file") and m["file"].startswith(".candidate-"):
            (staging / m["file"]).unlink(missing_ok=True)
            m["file"] = None
            m["kept"] = False
    section["plan"] = [dict(r.to_dict(), ranked=[n for n in r.ranked if cands[n].get("file")]) for r in plan]
    section["reason"] = reason
    return opt


def _baseline(modules: dict) -> str | None:
    """Return the measured float candidate a reduced-precision module's eager form must beat before it is worth a
    compile: the float eager model, else (an imported model: no eager rebuild serves it) the float program, which
    runs the same kernels; None when neither was measured."""
    return next((n for n in ("float-eager", "float-program") if n in modules), None)


def _prefilter(name, qmodule, float_seconds: dict, timer: Timer, at, batches, margin: float, isa: str, base: str = "float-eager"):
    """Return why a reduced-precision module cannot win (its eager form is not faster than float eager at any batch), or None."""
    ratios = {}
    for b in batches:
        f = float_seconds[str(b)]
        q = timer(f"{name} (eager prefilter)", b, qmodule, at(b), 3 * f)
        ratios[b] = q / f
        if q < f * (1 - margin):
            return None
    worst = max(ratios, key=ratios.get)
    return (f"{name.split('-')[0]} eager {ratios[worst]:.1f}× slower than {base.replace('-', ' ')} at batch {worst} on {isa} "
            f"(best {min(ratios.values()):.2f}×): compiling it cannot win")  # fmt: skip


def _saving_bound(eager_seconds: dict, n_layers: int, margin: float):
    """Return why compiling the float model cannot beat its eager form by the margin at any batch, or None."""
    bound = SAVING_PER_LAYER_S * n_layers
    fastest = min(eager_seconds.values())
    if bound >= margin * fastest:
        return None
    return (f"a compile saves at most ≈ {bound * 1e6:.0f} µs ({n_layers} layers × {SAVING_PER_LAYER_S * 1e6:.0f} µs), "
            f"< {margin:.0%} of the eager forward at every batch (≥ {programs.fmt_seconds(fastest)}): it cannot win")  # fmt: skip


def cost_line(name: str, cands: dict, batches, isa: str) -> str:
    """Return one line comparing a forced candidate's measured time with the fastest float one, per batch size."""
    parts = []
    for b in batches:
        f = min((m["seconds"][str(b)] for m in cands.values() if m.get("seconds") and m["precision"] == programs.FLOAT), default=None)
        q = cands[name]["seconds"][str(b)]
        if f:
            parts.append(f"batch {b}: {q / f:.2f}× the time of float" + (f" ({f / q:.1f}× faster)" if q < f else f" ({q / f:.1f}× slower)"))
    return f"{name} forced on {isa}: " + "; ".join(parts)


def _export(module, n_features):
    """Return the torch.export program of `module` with a dynamic batch dimension (n_features: an int for a tabular
    model, else the timing inputs, one tensor per input)."""
    if isinstance(n_features, tuple):
        return making.export_module(module, n_features)
    return making.export_program(module, n_features)


def describe(section: dict) -> str:
    """Return a few human-readable lines: the host, each candidate's timings or why it was dropped, and the plan."""
    h = section["host"]
    lines = [f"optimization on {h['cpu']} (ISA class {h['isa_class']}{', inductor ' + h['isa'] if h.get('isa') else ''}, {h['threads']} thread): "
             f"quantize {section['mode']['quantize']}, compile {section['mode']['compile']}"]  # fmt: skip
    for n, m in section["candidates"].items():
        if m["status"] == "measured":
            ts = ", ".join(f"b{b} {programs.fmt_seconds(s)}" for b, s in m["seconds"].items())
            lines.append(f"  {n}: {ts}" + ("" if m.get("file") else " (not kept)"))
        else:
            lines.append(f"  {n}: dropped — {m['reason']}")
    plan = "; ".join(f"{'≤ ' + str(r['max_rows']) if r['max_rows'] else 'any'} rows → {r['candidate']}" for r in section["plan"])
    lines.append(f"  serves: {plan}")
    lines.append(f"  why: {section['reason']}")
    return "\n".join(lines)

