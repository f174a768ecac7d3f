"""The TrainingWarning texts a careful colleague would give about a fit: no better than a trivial baseline, too few
validation rows to tell, a training loss still falling at the last epoch. (How far from the optimum a linear or
logistic fit stopped is conditioning.gap_warning's.)"""

from __future__ import annotations

import math

import numpy as np

from .data import Dataset

MIN_VALIDATION_ROWS = 30  # fewer: a validation score is too noisy to compare models by
STEEP_TAIL = 0.10  # the last 10 % of the epochs run ...
STEEP_SHARE = 0.05  # ... still made more than 5 % of the run's whole decrease of the training loss: not converged


def training_warnings(history: list[dict], train_ds: Dataset, val_ds: Dataset | None, scored: dict, stopped_early: bool) -> list[str]:
    """Return the TrainingWarning messages for a run: `scored` holds the model's metrics on the validation rows (the
    training rows when there is no validation split), which the trivial baseline is scored on too."""
    out = []
    rows = val_ds if val_ds is not None else train_ds
    where = f"the {len(rows)} validation rows" if val_ds is not None else f"the {len(rows)} training rows (no validation split)"
    if train_ds.schema.task == "regression":
        base = float(np.mean((rows.y.astype(np.float64) - np.mean(train_ds.y, dtype=np.float64)) ** 2))
        if scored["mse"] >= base:
            out.append(f"the model is no better than predicting the training mean: MSE {scored['mse']:.4g} against "
                       f"{base:.4g} on {where}; it learned nothing usable (more epochs, a higher --lr, other features?)")  # fmt: skip
    else:
        majority = int(np.bincount(train_ds.y).argmax())
        base = float(np.mean(rows.y == majority))
        if scored["accuracy"] <= base:
            label = train_ds.schema.classes[majority]
            out.append(f"the model is no better than always answering the majority class {label!r}: accuracy "
                       f"{scored['accuracy']:.4g} against {base:.4g} on {where} (more epochs, a higher --lr, other features?)")  # fmt: skip
    if val_ds is not None and len(val_ds) < MIN_VALIDATION_ROWS:
        out.append(f"only {len(val_ds)} validation rows (fewer than {MIN_VALIDATION_ROWS}): the validation score says little; "
                   "cross-validation uses every row (aiaas train --select --cv 5)")  # fmt: skip
    losses = [h["train_loss"] for h in history]
    tail = max(1, math.ceil(STEEP_TAIL * len(losses)))
    if not stopped_early and len(losses) >= 10:
        total, late = losses[0] - losses[-1], losses[-1 - tail] - losses[-1]
        if total > 0 and late > STEEP_SHARE * total:
            out.append(f"the training loss was still falling at the last epoch: the last {tail} of {len(losses)} epochs "
                       f"lowered it by {late / total:.1%} of the whole run's decrease (more than {STEEP_SHARE:.0%}); "
                       "train longer (--epochs) or with a higher --lr")  # fmt: skip
    return out
