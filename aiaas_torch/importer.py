"""Bring your own model: a user's nn.Module or torch.export program → the same run directory `aiaas train` writes.

The card's input is the tensor contract (named inputs: dtype, shape with the batch dimension -1, the value range
seen in the calibration samples), its output names every output, with class labels where given. An nn.Module is
exported here with a dynamic batch dimension, quantized behind the gate measured on the calibration samples, and
served by the program measured fastest on this host (optimize.py), as our own models are. An ExportedProgram's
module() holds no nn.Linear, so torchao cannot quantize it: it is imported as exported (float, or as its author
quantized it) and compiled where that pays; the card says why it was not quantized. No user code and no pickle
reach the server: the run directory holds torch.export programs (graphs, JSON and raw tensor bytes) and
AOTInductor packages (native code compiled here: sign the archive).
"""

from __future__ import annotations

import inspect
import io
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import _quiet, making, optimize as _optimize, rundir
from .card import FLOAT_PROGRAM, SCHEMA_VERSION
from .errors import InputError, InputTypeError
from .atomic import staging_dir
from .export import ExportResult
from .making import MAX_BATCH, export_module
from .handlers import aiaas_contract as contract
from .handlers import pt2_check
from .models import linear_layers
from .quantize import FORCED_SCHEMES, QuantConfig, quantize

MIN_CALIBRATION = 16  # fewer samples say little about a quantized model's error or the inputs' range
HOW_TO_EXPORT = ('export it with a dynamic batch dimension, e.g. torch.export.export(model, (x,), '
                 'dynamic_shapes={"x": {0: torch.export.Dim("batch")}})')  # fmt: skip
NOT_QUANTIZED = ("an ExportedProgram's module() holds no nn.Linear, so torchao cannot quantize it: imported as exported "
                 "(float, or as its author quantized it)")  # fmt: skip
TIMING_SAMPLES = max(_optimize.BATCHES)


def gate_task(labels) -> str:
    """Return the quantization gate's task for an imported model: labelled outputs are gated like our classifiers
    (label agreement with float), any other output by relative RMSE ("regression")."""
    return "classification" if labels else "regression"


class _Joined(nn.Module):
    """A model whose outputs are flattened and joined into one float tensor, so that the gate compares every output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> "_Joined":
        """Return self in train/eval mode; an ExportedProgram's module() refuses train() and has no modes to set."""
        self.training = mode
        try:
            self.model.train(mode)
        except NotImplementedError:
            pass
        return self

    def forward(self, *xs):
        """Return every output of the model, flattened per sample and concatenated."""
        out = self.model(*xs)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return torch.cat([o.reshape(o.shape[0], -1).float() for o in outs], 1)


def load_program_file(path: str | os.PathLike) -> torch.export.ExportedProgram:
    """Return the ExportedProgram saved by torch.export.save at `path`, read by torch only from its checked canonical copy."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such file")
    try:
        data = pt2_check.canonical_bytes(str(p))
    except pt2_check.Refused as e:
        raise InputError(f"{path}: refused, not a program torch.export.save writes or one that would run code: {e}") from None
    try:
        return torch.export.load(io.BytesIO(data))
    except Exception as e:
        raise InputError(f"{path}: not a program torch.export.load can read ({type(e).__name__}: {str(e)[:200]})") from None


def _program_inputs(ep, names) -> list:
    """Return [(name, example-shaped meta tensor)] of a program's user inputs, refusing one without a dynamic batch dimension."""
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    user = list(ep.graph_signature.user_inputs)
    names = list(names or user)
    if len(names) != len(user):
        raise InputError(f"input_names: {len(names)} names for a program of {len(user)} inputs {user}")
    out = []
    for name, ph in zip(names, user):
        val = placeholders[ph].meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise InputError(f"input {name!r}: not a tensor input; a served program takes tensors only")
        if not val.shape or isinstance(val.shape[0], int):
            raise InputError(f"input {name!r}: the program's batch dimension is fixed ({list(val.shape)}); {HOW_TO_EXPORT}")
        if not all(isinstance(d, int) for d in val.shape[1:]):
            raise InputError(f"input {name!r}: only the batch dimension may be dynamic ({list(val.shape)})")
        out.append((name, val.dtype, list(val.shape[1:])))
    return out


def _module_inputs(module: nn.Module, example: tuple, names) -> list:
    """Return [(name, dtype, sample shape)] of an nn.Module's example inputs (names default to forward's parameters)."""
    if names is None:
        params = [p for p in inspect.signature(module.forward).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = [p.name for p in params[: len(example)]]
        names += [f"input_{i}" for i in range(len(names), len(example))]
    names = list(names)
    if len(names) != len(example):
        raise InputError(f"input_names: {len(names)} names for {len(example)} example inputs")
    return [(n, t.dtype, list(t.shape[1:])) for n, t in zip(names, example)]


def _dtype_name(dtype: torch.dtype, what: str) -> str:
    """Return the card's name of a torch dtype, refusing one the request contract cannot carry."""
    name = str(dtype).replace("torch.", "")
    if name not in contract.DTYPES:
        raise InputError(f"{what}: dtype {name} is not supported (one of {sorted(contract.DTYPES)})")
    return name


def _calibration(calibration, specs: list) -> tuple:
    """Return the calibration samples as one tensor per input, checked against the inputs' names, dtypes and shapes."""
    if calibration is None:
        raise InputError(f"calibration: required; give at least {MIN_CALIBRATION} samples per input (the gate and the input ranges)")
    if isinstance(calibration, (np.ndarray, torch.Tensor)) and len(specs) == 1:
        calibration = {specs[0][0]: calibration}
    if isinstance(calibration, (tuple, list)):
        calibration = dict(zip([s[0] for s in specs], calibration))
    if not isinstance(calibration, dict) and not hasattr(calibration, "files"):
        raise InputTypeError(f"calibration: expected {{input name: array}}, got {type(calibration).__name__}")
    keys = list(calibration.files if hasattr(calibration, "files") else calibration)
    missing = [s[0] for s in specs if s[0] not in keys]
    if missing:
        raise InputError(f"calibration: missing input(s) {missing}; it holds {keys[:20]}")
    out, n = [], None
    for name, dtype, shape in specs:
        a = calibration[name]
        t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else None
        if t is None or t.dtype in (torch.bool, torch.complex64, torch.complex128) or t.dtype == getattr(torch, "object", None):
            raise InputError(f"calibration[{name!r}]: expected a numeric array, got {type(a).__name__}")
        if list(t.shape[1:]) != shape or t.dim() != len(shape) + 1:
            raise InputError(f"calibration[{name!r}]: shape {list(t.shape)}, expected [N, {', '.join(map(str, shape))}]".replace(", ]", "]"))
        if t.is_floating_point() and not dtype.is_floating_point:
            raise InputError(f"calibration[{name!r}]: {str(t.dtype)[6:]} samples for an {str(dtype)[6:]} input (fractions would be cut)")
        t = t.to(dtype)
        if dtype.is_floating_point and not bool(torch.isfinite(t).all()):
            raise InputError(f"calibration[{name!r}]: holds NaN or infinite values")
        if n is not None and t.shape[0] != n:
            raise InputError(f"calibration[{name!r}]: {t.shape[0]} samples, but {specs[0][0]!r} has {n}")
        n = int(t.shape[0])
        out.append(t)
    if n < MIN_CALIBRATION:
        raise InputError(f"calibration: {n} samples, fewer than the {MIN_CALIBRATION} needed")
    return tuple(out)


def _timing_inputs(calib: tuple) -> tuple:
    """Return the calibration samples repeated to TIMING_SAMPLES rows (the largest batch timed)."""
    idx = torch.arange(TIMING_SAMPLES) % calib[0].shape[0]
    return tuple(t[idx] for t in calib)


def _outputs(model, calib: tuple, names) -> list:
    """Return [{name, dtype, shape}] of the model's outputs on two calibration samples, checked to keep the batch dimension."""
    with torch.no_grad():
        out = model(*(t[:2] for t in calib))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    names = list(names or (["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]))
    if len(names) != len(outs):
        raise InputError(f"output_names: {len(names)} names for a model of {len(outs)} outputs")
    specs = []
    for name, o in zip(names, outs):
        if not isinstance(o, torch.Tensor) or o.dim() == 0 or o.shape[0] != 2:
            raise InputError(f"output {name!r}: not a tensor with the batch dimension first")
        specs.append({"name": name, "dtype": _dtype_name(o.dtype, f"output {name!r}"), "shape": [contract.BATCH, *o.shape[1:]]})
    return specs


def import_model(module_or_program, example_inputs, run_dir: str | os.PathLike, *, input_names=None, output_names=None,
                 calibration=None, quant: QuantConfig | None = None, labels=None, compile=None,
                 max_rows: int = contract.DEFAULT_MAX_ROWS, timer=None) -> ExportResult:  # fmt: skip
    """Write a run directory for a user's nn.Module or ExportedProgram, as `aiaas train` writes one; returns the ExportResult.

    example_inputs: a tensor or a tuple of tensors, batch dimension first. calibration: {input name: array of
    samples} (or a tuple in input order): the gate and the card's input ranges are measured on it. labels: class
    names, one per column of the model's one output [N, K] (the answers then carry labels and probabilities).
    compile, timer: as for export_run. Raises QuantGateError before writing when the gate fails (unless forced).
    """
    _quiet.install()
    quant = (quant or QuantConfig()).validate()
    mode = _optimize.compile_mode(compile)
    example = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if not isinstance(example, tuple) or not example or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in example):
        raise InputTypeError("example_inputs: expected a tensor or a tuple of tensors, each with the batch dimension first")
    notes: list[str] = []
    if isinstance(module_or_program, torch.export.ExportedProgram):
        ep = module_or_program
        specs = _program_inputs(ep, input_names)
        source = "ExportedProgram"
        if quant.scheme in FORCED_SCHEMES:
            raise InputError(f"quantize {quant.scheme}: {NOT_QUANTIZED}; quantize the model before exporting it, or import the nn.Module")
        float_model = ep.module(check_guards=False)  # the default execs guard code built from the program's JSON
    elif isinstance(module_or_program, nn.Module):
        float_model = module_or_program.eval()
        specs = _module_inputs(float_model, example, input_names)
        source, ep = "nn.Module", None
    else:
        raise InputTypeError(f"module_or_program: expected an nn.Module or a torch.export.ExportedProgram, got {type(module_or_program).__name__}")
    for name, dtype, shape in specs:
        _dtype_name(dtype, f"input {name!r}")
    calib = _calibration(calibration, specs)
    if ep is None:
        try:
            ep = export_module(float_model, calib)
        except Exception as e:
            raise InputError(f"torch.export could not export the module ({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None
    out_specs = _outputs(float_model, calib, output_names)
    if labels is not None:
        labels = list(labels)
        if len(out_specs) != 1 or out_specs[0]["shape"] != [contract.BATCH, len(labels)] or not all(isinstance(l, (str, int)) for l in labels):
            raise InputError(f"labels: {len(labels)} labels need one output of shape [N, {len(labels)}] (the model's outputs: "
                             f"{[o['shape'] for o in out_specs]})")  # fmt: skip
    task = gate_task(labels)
    if source == "ExportedProgram":
        qjoined, report = quantize(_Joined(float_model), QuantConfig("none"), calib, task=task)
        qmodel = float_model
    else:
        qjoined, report = quantize(_Joined(float_model), quant, calib, task=task)
        qmodel = qjoined.model
    compiler, no_compiler = making.compiler_check(mode)
    notes += no_compiler
    run_dir = Path(run_dir)
    with staging_dir(run_dir) as staging:
        try:  # re-serialized from the checked graph: no guard code, our own sample inputs, byte-reproducible
            pt2_check.save(ep, str(staging / FLOAT_PROGRAM))
        except pt2_check.Refused as e:
            raise InputError(f"the program cannot be served: {e}") from None
        opt = _optimize.optimize(float_model, qmodel, report, staging, scheme=quant.scheme if source == "nn.Module" else "none",
                                 compile=mode, compiler=compiler, timer=timer, float_ep=ep, inputs=_timing_inputs(calib))  # fmt: skip
        rundir.place_compiled(staging, opt.compiled)
        notes += opt.notes
        quantization = report.to_dict()
        if source == "ExportedProgram":
            quantization["not_quantized"] = NOT_QUANTIZED
        card = {
            "schema_version": SCHEMA_VERSION,
            "created": rundir.now(),
            "input": {
                "tensors": [{"name": n, "dtype": _dtype_name(d, n), "shape": [contract.BATCH, *s], "min": float(t.min()), "max": float(t.max())}
                            for (n, d, s), t in zip(specs, calib)],  # fmt: skip
                "range": f"min and max over the {calib[0].shape[0]} calibration samples",
                "max_rows": max_rows,
            },
            "output": {"task": "classification" if labels else "tensor", "classes": labels, "tensors": out_specs,
                       "kind": "logits; answers give labels and softmax probabilities" if labels else "the model's outputs"},  # fmt: skip
            "model": {
                "source": source,
                "class": type(module_or_program).__name__,
                "parameters": int(sum(p.numel() for p in float_model.parameters())),
                "layers": [f"{n}: Linear({m.in_features}→{m.out_features})" for n, m in linear_layers(float_model)],
                "sequential": _optimize.sequential_layers(float_model) if source == "nn.Module" else None,
            },
            "import": {"calibration_samples": int(calib[0].shape[0]), "batch_dimension": "dynamic, 1 to " + str(MAX_BATCH)},
            "metrics": {},
            "quantization": quantization,
            "optimization": opt.section,
            "files": rundir.files_section(staging, opt.section, {FLOAT_PROGRAM: {"sample_inputs_sha256": pt2_check.SAMPLE_INPUTS_SHA256}}),
            "versions": rundir.versions(),
            "notes": notes,
        }
        rundir.finish(staging, run_dir, card)
    return ExportResult(run_dir, card, report, opt.compile_seconds, notes)

