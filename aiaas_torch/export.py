"""Write a run directory (model files + the model card), from training or from its own checkpoint (requantize).

A run directory holds:
  model.json        the model card: input contract, output, training, metrics, QuantReport, hashes, versions
  model.pt2         AOTInductor package for CPU, dynamic batch dimension, when measurement chose a compiled program
                    (model_2.pt2 too where a second one serves another batch-size range; see optimize.py)
  model_float.pt2   torch.export program of the float model (CUDA, the eager rebuild's weights, the fallback)
  checkpoint.pt     the training checkpoint (resume, re-quantize)
Everything is written into a staging directory beside the target and moved into place only when complete (rundir.py), with
the card written last, so a crash mid-export never leaves a run directory that loads. Reading the card back is
card.py's job; loading a run directory for prediction is runs.py's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import _quiet, making, optimize as _optimize, rundir
from .atomic import staging_dir
from .card import CHECKPOINT, FLOAT_PROGRAM, SCHEMA_VERSION, read_card
from .conditioning import WHITENING, whitens
from .data import Schema
from .errors import InputError
from .handlers import aiaas_contract as contract
from .handlers import integrity
from .models import ModelSpec, Preprocess, build_model, fold_preprocessing, linear_layers
from .quantize import QuantConfig, QuantReport, quantize
from .checkpoint import load_checkpoint, save_checkpoint
from .train import TrainConfig, TrainResult


@dataclass
class ExportResult:
    """Where the run directory is, its card, and the QuantReport of the exported model."""

    run_dir: Path
    card: dict
    report: QuantReport
    compile_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    def optimization_summary(self) -> str:
        """Return the human-readable lines of the card's optimization section (timings, plan, reason)."""
        return _optimize.describe(self.card["optimization"])


def _coefficients(float_model, schema: Schema, spec: ModelSpec):
    """Return a linear/logistic model's weights and bias in raw feature units, else None."""
    if spec.kind == "mlp":
        return None
    lin = linear_layers(float_model)[0][1]
    W = lin.weight.detach().tolist()
    names = _encoded_names(float_model, schema)
    if spec.kind == "linear":
        return {"weights": dict(zip(names, W[0])), "bias": float(lin.bias.detach()[0])}
    return {"weights": {str(c): dict(zip(names, row)) for c, row in zip(schema.classes, W)}, "bias": {str(c): float(b) for c, b in zip(schema.classes, lin.bias.tolist())}}


def _encoded_names(float_model, schema: Schema) -> list[str]:
    """Return the names of the first Linear's inputs: a feature's name, or "name=category" for a one-hot column."""
    pre = next((m for m in float_model if isinstance(m, Preprocess)), None)
    names = []
    for j, f in enumerate(schema.features):
        if pre is not None and j in pre.onehot:
            names += [f"{f.name}={f.categories[int(c)]}" for c in getattr(pre, f"codes_{j}")[0].tolist()]
        else:
            names.append(f.name)
    return names


def _history_summary(history: list[dict], points: int = 200) -> dict:
    """Return the loss history subsampled to at most `points` epochs (the last epoch always kept)."""
    if not history:
        return {"epoch": [], "train_loss": [], "val_loss": []}
    step = max(1, len(history) // points)
    picked = history[::step]
    if picked[-1] is not history[-1]:
        picked.append(history[-1])
    return {
        "epoch": [h["epoch"] for h in picked],
        "train_loss": [h["train_loss"] for h in picked],
        "val_loss": [h.get("val_loss") for h in picked],
    }


def export_run(
    result: TrainResult,
    run_dir: str | os.PathLike,
    quant: QuantConfig | None = None,
    compile: bool | str | None = None,
    max_rows: int = contract.DEFAULT_MAX_ROWS,
    timer: _optimize.Timer | None = None,
) -> ExportResult:
    """Quantize, choose the served program by measurement, and write the run directory atomically; returns an ExportResult.

    compile: "auto" (None; compile where the cost model says it can pay), "always" (True) or "never" (False).
    timer: replaces the timing of candidate programs (tests inject timings). Raises before writing if a forced scheme fails the gate.
    """
    _quiet.install()
    run_dir = Path(run_dir)
    quant = (quant or QuantConfig()).validate()
    mode = _optimize.compile_mode(compile)
    float_model = fold_preprocessing(result.model)
    qmodel, report = quantize(float_model, quant, result.eval_X, result.eval_y, result.schema.task)
    compiler, notes = making.compiler_check(mode)

    with staging_dir(run_dir) as staging:
        d = result.spec.n_features
        float_ep = making.export_program(float_model, d)
        torch.export.save(float_ep, str(staging / FLOAT_PROGRAM))
        opt = _optimize.optimize(float_model, qmodel, report, staging, scheme=quant.scheme, compile=mode,
                                 compiler=compiler, timer=timer, float_ep=float_ep)  # fmt: skip
        rundir.place_compiled(staging, opt.compiled)
        notes += opt.notes
        compile_seconds = opt.compile_seconds
        ck = dict(result.checkpoint)
        ck["eval_X"] = torch.from_numpy(np.ascontiguousarray(result.eval_X))
        ck["eval_y"] = torch.from_numpy(np.ascontiguousarray(result.eval_y))
        ck["metrics"] = result.metrics
        ck["data"] = result.data
        ck["seconds"] = result.seconds
        save_checkpoint(ck, staging / CHECKPOINT)
        card = _card(result, float_model, report, staging, opt.section, max_rows, notes)
        rundir.finish(staging, run_dir, card)
    return ExportResult(run_dir, card, report, compile_seconds, notes)


def _card(result, float_model, report, directory: Path, optimization: dict, max_rows, notes) -> dict:
    """Return the model card for the files in `directory`."""
    schema, spec, config = result.schema, result.spec, result.config
    files = rundir.files_section(directory, optimization)
    metrics = result.metrics
    return {
        "schema_version": SCHEMA_VERSION,
        "created": rundir.now(),
        "input": {
            "features": [f.to_card() for f in schema.features],
            "dtype": "float32",
            **_encoding(schema),
            "scaling": "standardize (mean/std of the training split), folded into the first Linear" if config.scale else None,
            "rotation": (WHITENING if whitens(config) else "pca") if spec.rotate else None,
            "max_rows": max_rows,
        },
        "output": {
            "target": schema.target,
            "task": schema.task,
            "classes": schema.classes,
            "width": spec.n_outputs,
            "kind": "value" if schema.task == "regression" else "logits; answers give labels and softmax probabilities",
        },
        "model": {
            "spec": spec.to_dict(),
            "parameters": int(sum(p.numel() for p in float_model.parameters())),
            "layers": [f"{n}: Linear({m.in_features}→{m.out_features})" for n, m in linear_layers(float_model)],
            "sequential": _optimize.sequential_layers(float_model),
            "coefficients": _coefficients(float_model, schema, spec),
        },
        "training": {
            "optimizer": "torch.optim.SGD",
            "loss": "J(θ) = 1/(2m) Σ (h_θ(x_i) − y_i)²" if schema.task == "regression" else "cross-entropy",
            "settings": {k: v for k, v in config.to_dict().items() if k != "hidden" or spec.kind == "mlp"},  # sizes only where there are hidden layers
            "solver": result.solver or None,  # the rate, momentum, batch size the run used (settings say None: automatic)
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "distributed": {"world_size": result.world_size, "backend": result.backend} if result.world_size > 1 else None,
            "seconds": round(result.seconds, 3),
            "final_J": {k: v.get("J", v.get("cross_entropy")) for k, v in metrics.items()},
            "history": _history_summary(result.history),
        },
        "metrics": metrics,
        "quantization": report.to_dict(),
        "optimization": optimization,
        "files": files,
        "data": result.data,
        "versions": rundir.versions(),
        "notes": notes,
        "warnings": list(result.warnings),
    }


def _encoding(schema: Schema) -> dict:
    """Return the card's input fields that say how missing values and categories travel, when the model has any."""
    out = {}
    if any(f.impute for f in schema.features):
        out["missing"] = "null (NaN in the program's input) is imputed inside the program for features with 'impute'"
    if any(f.kind == "categorical" for f in schema.features):
        out["categorical"] = ("a category travels as its float code, the index into the feature's 'categories' (-1: unseen), "
                              "one-hot encoded inside the program")  # fmt: skip
        out["unseen_category"] = schema.unseen_category
    return out


def requantize(run_dir: str | os.PathLike, quant: QuantConfig, compile: bool | str | None = None) -> ExportResult:
    """Re-quantize and re-export an existing run directory from its checkpoint; returns the new ExportResult."""
    run_dir = Path(run_dir)
    card = read_card(run_dir)
    if CHECKPOINT not in card["files"]:
        raise InputError(f"{run_dir}: no {CHECKPOINT} (an imported model): import it again with the new quantization settings")
    problems = integrity.verify_files(card, run_dir, roles={"checkpoint"})
    if problems:
        raise InputError(f"{run_dir}: " + "; ".join(problems))
    ck = load_checkpoint(run_dir / CHECKPOINT)
    spec = ModelSpec.from_dict(ck["spec"])
    model = build_model(spec)
    model.load_state_dict(ck["model"])
    model.eval()
    result = TrainResult(
        model=model,
        spec=spec,
        config=TrainConfig.from_dict(ck["config"]),
        schema=Schema.from_dict(ck["schema"]),
        history=list(ck["history"]),
        metrics=ck["metrics"],
        epochs_run=int(ck["epoch"]),
        best_epoch=int(ck["best_epoch"]) or int(ck["epoch"]),
        stopped_early=bool(card["training"].get("stopped_early")),
        seconds=float(ck["seconds"]),
        data=ck["data"],
        eval_X=ck["eval_X"].numpy(),
        eval_y=ck["eval_y"].numpy(),
        checkpoint={k: v for k, v in ck.items() if k not in ("eval_X", "eval_y", "metrics", "data", "seconds")},
        warnings=list(card.get("warnings", [])),
        solver=card["training"].get("solver") or {},
    )
    return export_run(result, run_dir, quant, compile, card["input"].get("max_rows", contract.DEFAULT_MAX_ROWS))
