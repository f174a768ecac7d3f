"""The candidates of model selection: the default grid, a candidate's TrainConfig, and fitting one quietly (the
trivial baseline included: the mean, or the majority class)."""

from __future__ import annotations

import numpy as np
import torch

from .data import Dataset
from .train import TrainConfig, TrainResult, evaluate, train


def default_grid(task: str, y_std: float = 1.0) -> list[dict]:
    """Return the default candidates, simplest first: the baseline, L2-regularized linear/logistic, three MLPs.

    The linear/logistic candidates train with the automatic solver (conditioning.py: whitened, the rate from the data,
    stopped on convergence): each reaches its penalized optimum, so a rate, a rotation or raw features would only
    repeat it. y_std: a regression target's std. An MLP's loss curvature grows with the target's scale (a linear
    model's does not), so a regression MLP's learning rates are divided by it to stay stable on raw targets.
    """
    kind = "linear" if task == "regression" else "logistic"
    mlp_lr = 1.0 / max(1.0, float(y_std)) if task == "regression" else 1.0
    grid: list[dict] = [{"model": "baseline"}] + [{"model": kind, "weight_decay": wd} for wd in (0.0, 1e-3, 1e-2)]
    for hidden in ((16,), (64,), (64, 64)):
        for lr in (0.01, 0.05):
            for wd in (0.0, 1e-3):
                grid.append({"model": "mlp", "hidden": hidden, "lr": float(f"{lr * mlp_lr:.3g}"), "weight_decay": wd})
    return grid


def candidate_config(cand: dict, epochs: int, seed: int) -> TrainConfig:
    """Return the TrainConfig of a candidate, no validation split, no progress bar: a linear/logistic one without "lr"
    gets the automatic solver (TrainConfig's defaults), one with a rate (and every MLP) full batch with momentum 0.9."""
    fields = {k: v for k, v in cand.items() if k != "model"}
    if "hidden" in fields:
        fields["hidden"] = tuple(fields["hidden"])
    if cand["model"] == "mlp" or fields.get("lr") is not None:
        fields.setdefault("momentum", 0.9)
    return TrainConfig(model=cand["model"], epochs=epochs, seed=seed, val_fraction=0.0, progress=False, **fields)


def baseline_metrics(train_ds: Dataset, X: np.ndarray, y: np.ndarray) -> dict:
    """Return the metrics of the mean (regression) or majority-class predictor fitted on `train_ds`, on (X, y)."""
    model = baseline_model(train_ds)
    return evaluate(model, np.nan_to_num(X), y, train_ds.schema.task)  # its weights are zero: a missing value must not make NaN


def baseline_model(train_ds: Dataset) -> torch.nn.Module:
    """Return a constant model: the training mean, or the class frequencies' log (argmax: the majority class)."""
    from .models import ModelSpec, build_model

    task = train_ds.schema.task
    n_out = 1 if task == "regression" else len(train_ds.schema.classes)
    model = build_model(ModelSpec("linear" if task == "regression" else "logistic", train_ds.X.shape[1], n_out))
    last = model[-1]
    with torch.no_grad():
        last.weight.zero_()
        if task == "regression":
            last.bias.fill_(float(np.mean(train_ds.y, dtype=np.float64)))
        else:
            counts = np.bincount(train_ds.y, minlength=n_out).astype(np.float64)
            last.bias.copy_(torch.as_tensor(np.log(np.maximum(counts, 0.5) / counts.sum()), dtype=torch.float32))
    return model.eval()


def train_quietly(ds: Dataset, config: TrainConfig) -> TrainResult:
    """Return `train`'s result without emitting its TrainingWarnings (the search trains hundreds of candidates, folds in
    threads; the chosen one's warnings reach its card through TrainResult.warnings). No warning filter is touched:
    warnings.catch_warnings swaps process-wide state, which threads entering and leaving it in turn leave scrambled."""
    return train(ds, config, quiet=True)


def fit_candidate(cand: dict, train_ds: Dataset, epochs: int, seed: int) -> TrainResult:
    """Return a candidate trained on all of `train_ds` (the baseline: a one-epoch fit whose weights are replaced)."""
    if cand["model"] != "baseline":
        return train_quietly(train_ds, candidate_config(cand, epochs, seed))
    kind = "linear" if train_ds.schema.task == "regression" else "logistic"
    result = train_quietly(train_ds, candidate_config({"model": kind}, 1, seed))
    result.warnings = []  # they judged the one-epoch fit, which the baseline's weights replace
    last = result.model[-1]  # the baseline's weights are zero and its bias the answer, whatever layers are in front
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(baseline_model(train_ds)[-1].bias)
    result.model.eval()
    result.checkpoint["model"] = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
    result.metrics = {"train": evaluate(result.model, train_ds.X, train_ds.y, train_ds.schema.task)}
    return result
