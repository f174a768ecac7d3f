"""Which model program serves, and how it is loaded: one copy for the TorchServe handler and for LocalModel.

Torch-and-stdlib only: shipped inside every .mar beside the handler. At export, `decide` turns each candidate
program's measured timings into a plan (which candidate serves which range of batch sizes, with its reason); at
load, `choose` turns the card's plan, this host's CPU flags, the torch version and the device into the programs
to load, and `load` loads them into a `ProgramSet` that runs the right one for each batch.

A program is one of three kinds, each loaded by its own code here, so a new reduced-precision form needs no
change in this file when it is an AOTInductor package (kind "compiled"):
  eager     nn.Sequential rebuilt from the card's layer list, weights from the float torch.export program
  program   the float torch.export program's module()
  compiled  an AOTInductor package (built for one vector ISA, one torch version)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

try:  # numpy ships beside torch in every worker we build; without it every input is converted by torch.as_tensor
    import numpy as np
except ImportError:  # pragma: no cover
    np = None

try:  # installed package (tests, aiaas predict --local)
    from . import aiaas_contract as contract
    from . import integrity, pt2_check
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    import aiaas_contract as contract
    import integrity
    import pt2_check

KINDS = ("eager", "program", "compiled")
FLOAT = "float32"
MARGIN = 0.10  # a less simple candidate must be at least 10 % faster than the simpler one it replaces


@dataclass
class Range:
    """One batch-size range of a plan: rows up to `max_rows` (None: no limit) go to `candidate`."""

    max_rows: int | None
    candidate: str
    ranked: list = field(default_factory=list)  # the candidates to fall back to, best first

    def to_dict(self) -> dict:
        """Return the range as JSON-ready data."""
        return {"max_rows": self.max_rows, "candidate": self.candidate, "ranked": list(self.ranked)}


def fmt_seconds(seconds: float) -> str:
    """Return a duration for a reason: µs below 1 ms, else ms."""
    return f"{seconds * 1e6:.0f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.1f} ms"


def decide(order: list, timings: dict, batches: list, margin: float = MARGIN, isa: str = "") -> tuple:
    """Return (list of Range, reason) from candidates in order simplest first and timings {name: {batch: seconds}}.

    At each measured batch size the simplest measured candidate is kept unless a less simple one is faster than
    the current pick by `margin`; consecutive batch sizes split at their geometric mean.
    """
    if not batches or any(not isinstance(b, int) or b < 1 for b in batches):
        raise ValueError(f"batches: {batches!r} must be positive integers")
    if not 0 <= margin < 1:
        raise ValueError(f"margin: {margin!r} must be in [0, 1)")
    batches = sorted(set(batches))
    on = f" on {isa}" if isa else ""
    winners, reasons, ranked = [], [], []
    for b in batches:
        measured = [n for n in order if isinstance(timings.get(n, {}).get(b), (int, float)) and math.isfinite(timings[n][b])]
        if not measured:
            raise ValueError(f"timings: no candidate was measured at batch {b}")
        pick = measured[0]
        for n in measured[1:]:
            if timings[n][b] < timings[pick][b] * (1 - margin):
                pick = n
        t = timings[pick][b]
        others = sorted((n for n in measured if n != pick), key=lambda n: timings[n][b])
        why = ", ".join(f"{n} {fmt_seconds(timings[n][b])} ({timings[n][b] / t:.2g}× {'slower' if timings[n][b] >= t else 'time'})" for n in others)
        reasons.append(f"batch {b}: {pick} {fmt_seconds(t)}{on}" + (f"; {why}" if why else ""))
        winners.append(pick)
        ranked.append([pick] + others)
    plan: list[Range] = []
    for i, b in enumerate(batches):
        upper = int(math.sqrt(b * batches[i + 1])) if i + 1 < len(batches) else None
        if plan and plan[-1].candidate == winners[i]:
            plan[-1].max_rows = upper
        else:
            plan.append(Range(upper, winners[i], ranked[i]))
    return plan, "; ".join(reasons) + f" (a less simple program must be ≥ {margin:.0%} faster)"


@dataclass
class Choice:
    """What to load: the device, one (max_rows, candidate, file, kind) per batch-size range, and why."""

    device: str
    ranges: list  # [(max_rows | None, candidate name, file name, kind)]
    reason: str


def _usable(name: str, meta: dict, card: dict, flags: set, torch_version: str) -> str | None:
    """Return why candidate `name` cannot serve on this host, or None when it can."""
    files = card.get("files", {})
    opt = card.get("optimization") or {}
    f = meta.get("file")
    if meta.get("kind") not in KINDS:
        return f"{name}: unknown kind {meta.get('kind')!r}"
    if not f or f not in files:
        return f"{name}: its file is not in this archive"
    if meta["kind"] == "eager" and not card.get("model", {}).get("sequential"):
        return f"{name}: the card has no layer list to rebuild it from"
    if meta["kind"] == "compiled":
        built = card.get("versions", {}).get("torch")
        if built != torch_version:
            return f"{name}: {f} was built with torch {built}, this worker has torch {torch_version}"
        isa = files[f].get("isa") or ""
        if not integrity.host_supports(isa, flags):
            return f"{name}: {f} needs ISA {isa or 'unrecorded'}, which this CPU lacks"
    if meta.get("precision", FLOAT) != FLOAT and not meta.get("forced"):  # forced (for size): served everywhere it loads
        here, there = integrity.isa_class(flags), (opt.get("host") or {}).get("isa_class")
        if here != there:
            return f"{name}: {meta.get('precision')} was measured fast on {there}; this host is {here}"
    return None


def choose(card: dict, flags: set, torch_version: str, cuda_available: bool = False, gpu_id=None) -> Choice:
    """Return the Choice of programs to serve `card` on a host with these CPU flags, torch version and device."""
    files = card.get("files", {})
    float_prog = next((n for n, m in files.items() if m.get("role") == "float-program"), None)
    if float_prog is None:
        raise ValueError("model card: no float-program file to serve")
    if gpu_id is not None and cuda_available:
        return Choice(f"cuda:{int(gpu_id)}", [(None, "float-program", float_prog, "program")], "a GPU: the float program on it")
    opt = card.get("optimization") or {}
    cands = dict(opt.get("candidates") or {})
    cands["float-program"] = {"kind": "program", "precision": FLOAT, "file": float_prog}  # always the last resort
    compiled = next((n for n, m in files.items() if m.get("role") == "cpu-compiled"), None)
    if not opt.get("candidates") and compiled:  # a card written before measured choice: its compiled package, if it loads here
        cands["compiled"] = {"kind": "compiled", "precision": FLOAT, "file": compiled}
    plan = opt.get("plan") or [{"max_rows": None, "candidate": "compiled" if compiled else "float-program"}]
    ranges, notes = [], []
    for r in plan:
        for name in list(r.get("ranked") or []) + [r.get("candidate"), "float-program"]:
            meta = cands.get(name)
            why = _usable(name, meta, card, flags, torch_version) if isinstance(meta, dict) else f"{name}: not a candidate of this card"
            if why is None:
                ranges.append((r.get("max_rows"), name, meta["file"], meta["kind"]))
                break
            if why not in notes:
                notes.append(why)
    reason = "; ".join(f"{'≤ ' + str(m) if m else 'any'} rows: {n} ({f})" for m, n, f, _ in ranges)
    return Choice("cpu", ranges, reason + (f"; not used: {'; '.join(notes)}" if notes else ""))


class FlatSequential(torch.nn.Sequential):
    """An nn.Sequential of Linear and ReLU layers whose forward calls their functions itself: the same kernels as
    each layer's own forward, without a module call per layer (about 5 µs each, most of a small model's time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the layers' output on x."""
        linear, relu = torch.nn.functional.linear, torch.relu
        for m in self._modules.values():
            x = linear(x, m.weight, m.bias) if type(m) is torch.nn.Linear else relu(x)
        return x


def rebuild_sequential(layers: list, state_dict: dict) -> torch.nn.Sequential:
    """Return the eval-mode FlatSequential of a card's layer list (["linear", in, out] | ["relu"]) with these weights."""
    mods = []
    for spec in layers:
        if spec[0] == "linear":
            mods.append(torch.nn.Linear(int(spec[1]), int(spec[2])))
        elif spec[0] == "relu":
            mods.append(torch.nn.ReLU())
        else:
            raise ValueError(f"model card: layer {spec!r} cannot be rebuilt (only linear and relu)")
    model = FlatSequential(*mods)
    model.load_state_dict({k: v.detach() for k, v in state_dict.items()}, strict=True)
    return model.eval()


def load_exported(path: str):
    """Return the ExportedProgram at `path`, read by torch only from its checked canonical copy (pt2_check.Refused, a
    ValueError naming member and field, for anything torch.export.save does not write or torch would evaluate)."""
    return pt2_check.load(path)


def load_program(kind: str, path: str, card: dict, device: str = "cpu"):
    """Return a callable model of one kind loaded from `path` (no unpickling: torch.export or AOTInductor files)."""
    if kind == "compiled":
        return load_compiled(path)
    ep = load_exported(path)
    if kind == "eager":
        return rebuild_sequential(card["model"]["sequential"], ep.state_dict).to(device)
    return ep.module(check_guards=False).to(device)  # the default builds guard code from the program's JSON and execs it


def load_compiled(path: str):
    """Return a loaded AOTInductor package, skipping inductor's g++ ISA probe (the caller checked CPU flags).

    The probe compiles and runs test programs only to compare ISAs for a warning: 1.5–10 s per process. The
    setting is restored afterwards, so the caller's own torch.compile keeps probing as usual.
    """
    from torch._inductor import config as inductor_config

    saved = inductor_config.cpp.vec_isa_ok
    if os.environ.get("TORCHINDUCTOR_VEC_ISA_OK") is None:
        inductor_config.cpp.vec_isa_ok = True
    try:
        return torch._inductor.aoti_load_package(path)
    finally:
        inductor_config.cpp.vec_isa_ok = saved


class ProgramSet:
    """The loaded programs of a Choice: calling it runs the program of the range the batch's row count falls in."""

    def __init__(self, device: str, ranges: list, reason: str):
        self.device = device
        self.ranges = ranges  # [(max_rows | None, candidate, file, callable)]
        self.reason = reason
        self.files = [f for _, _, f, _ in ranges]

    def pick(self, rows: int) -> tuple:
        """Return (candidate, file, callable) serving a batch of `rows` rows."""
        for max_rows, name, f, fn in self.ranges:
            if max_rows is None or rows <= max_rows:
                return name, f, fn
        return self.ranges[-1][1:]

    def __call__(self, x: torch.Tensor, *more: torch.Tensor):
        """Return the outputs of the program serving a batch of x's size (more: the model's further inputs)."""
        return self.pick(int(x.shape[0]))[2](x, *more)


def _input(samples, spec: dict, device: str) -> torch.Tensor:
    """Return one input's samples as a tensor of its spec's dtype and [N, ...] shape; a CPU numpy array already of
    that dtype and shape (the handler's stacked rows) is taken as it is: each conversion step costs microseconds."""
    if (device == "cpu" and np is not None and type(samples) is np.ndarray and samples.dtype == spec["dtype"]
            and list(samples.shape[1:]) == spec["shape"][1:] and len(samples.shape) == len(spec["shape"])):  # fmt: skip
        return torch.from_numpy(samples)
    return torch.as_tensor(samples, dtype=getattr(torch, spec["dtype"]), device=device).reshape(-1, *spec["shape"][1:])


def run_samples(model, card: dict, inputs: dict, device: str = "cpu", arrays: bool = False, specs: tuple | None = None) -> dict:
    """Return {output name: per-sample outputs} of one forward of `model` on {input name: checked flat samples}.

    Each input's samples (lists, or a numpy array of the stacked samples) are stacked along the batch dimension in
    the card's dtype and shape (tabular: one float32 [N, F] input); each output is split back into one (nested) list
    per sample, or (arrays) returned as one numpy array. specs: io_specs(card), when the caller keeps it.
    """
    in_specs, names = specs or io_specs(card)
    xs = [_input(inputs[s["name"]], s, device) for s in in_specs]
    n = int(xs[0].shape[0])
    with torch.inference_mode():
        result = model(*xs)
    result = result if isinstance(result, (tuple, list)) else (result,)
    if len(result) != len(names):
        raise RuntimeError(f"the model returned {len(result)} outputs, the card names {len(names)}")
    outputs = {}
    for name, t in zip(names, result):
        if int(t.shape[0]) != n:
            raise RuntimeError(f"the model returned {int(t.shape[0])} output rows for {n} input rows")
        if t.dtype is not torch.float32 or t.device.type != "cpu":
            t = (t.float() if t.is_floating_point() else t).cpu()
        outputs[name] = t.numpy() if arrays else t.tolist()
    return outputs


def io_specs(card: dict) -> tuple:
    """Return (the card's input tensor specs, its output names), what every forward of run_samples reads."""
    return contract.input_tensors(card), [s["name"] for s in contract.output_tensors(card)]


def load(card: dict, directory: str, cuda_available: bool = False, gpu_id=None, flags: set | None = None,
         log=None) -> ProgramSet:  # fmt: skip
    """Return the ProgramSet for `card` in `directory` on this host; a program that fails to load is replaced by the next usable one."""
    flags = integrity.cpu_flags() if flags is None else flags
    choice = choose(card, flags, torch.__version__, cuda_available, gpu_id)
    loaded, cache, reason = [], {}, choice.reason
    for max_rows, name, f, kind in choice.ranges:
        key = (kind, f)
        if key not in cache:
            try:
                cache[key] = load_program(kind, os.path.join(directory, f), card, choice.device)
            except Exception as e:  # a package that will not load here: the float program serves this range
                if log:
                    log(f"{f} ({name}) failed to load ({type(e).__name__}: {e}); falling back to the float program")
                name, f, kind = "float-program", _float_program(card), "program"
                key = (kind, f)
                reason += f"; {name} replaced after a load failure"
                cache.setdefault(key, load_program(kind, os.path.join(directory, f), card, choice.device))
        loaded.append((max_rows, name, f, cache[key]))
    return ProgramSet(choice.device, loaded, reason)


def _float_program(card: dict) -> str:
    """Return the file name of the card's float torch.export program."""
    return next(n for n, m in card["files"].items() if m.get("role") == "float-program")
