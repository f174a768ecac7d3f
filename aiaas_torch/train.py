"""SGD trainer: J(θ) = 1/(2m) Σ (h_θ(x_i) − y_i)² for regression, cross-entropy for classification.

Mini-batches (or full batch), momentum, weight decay, an optional LR schedule, early stopping on validation
loss, a seed that makes the same data give the same weights bit-for-bit on CPU, a progress bar, a loss history
and a resumable checkpoint (checkpoint.py). Under `torchrun` it trains with DistributedDataParallel (distributed.py
says how the ranks share the steps); only rank 0 returns a result meant for writing (callers check `TrainResult.rank`).
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import conditioning
from .conditioning import loss_fn  # J(θ): owned by conditioning, which measures the fit against it
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import epoch_order, setup_distributed
from .fitnotes import training_warnings
from .data import Dataset, Schema, dataset_lineage, split
from .preprocessing import fit_preprocessing, pca_rotation, standardize_stats
from .models import MODEL_KINDS, ModelSpec, Preprocess, build_model, fold_preprocessing, json_ready
from .errors import InputError, InputTypeError, check_choice, check_int, check_number

LR_SCHEDULES = ("none", "cosine", "step")
_INIT_LOCK = threading.Lock()  # model selection trains folds in threads



class TrainingWarning(UserWarning):
    """A trained model that a careful colleague would question: no better than a trivial baseline, too few validation
    rows to tell, or a loss still falling at the last epoch. Also listed in TrainResult.warnings and the card."""
DEVICES = ("cpu", "cuda", "auto")


@dataclass
class TrainConfig:
    """Training settings. Linear/logistic with no `lr`: the conditioned solver of conditioning.py (whitening, a rate from
    the data, full batch; logistic: momentum 0.9, batches above 8192 rows; stop on convergence; `epochs` is the maximum).
    A given `lr` (and every MLP) trains the classic way: full batch, momentum 0, lr 0.01 for an MLP, every epoch. Given
    values always win."""

    model: str = "linear"
    hidden: tuple[int, ...] = (64, 64)
    epochs: int = 1000  # the maximum when the run stops on convergence
    lr: float | None = None  # None: chosen from the data (linear, logistic), 0.01 (MLP)
    momentum: float | None = None  # None: 0.9 for the automatic logistic fit, else 0
    weight_decay: float = 0.0
    batch_size: int | None = None  # None: full batch (the automatic logistic fit: 4096 or rows/20 above 8192 rows)
    tol: float | None = None  # stop once an epoch changes J(θ) by less than this, relative (full-batch least squares: or
    # once J(θ) is within this of its optimum); None: 1e-7 with the automatic rate, else off
    seed: int = 0
    val_fraction: float = 0.2
    patience: int | None = None  # early stopping on validation loss; None: off
    lr_schedule: str = "none"
    rotate: bool = False
    progress: bool | None = None  # None: on when stderr is a terminal
    checkpoint_every: int = 0  # epochs between checkpoints; 0: only at the end
    device: str = "cpu"  # "cpu", "cuda" or "auto" (cuda when available); under torchrun, cuda:LOCAL_RANK
    scale: bool = True  # standardize features (mean/std of the training rows); off: raw features (model selection tries both)

    def validate(self) -> "TrainConfig":
        """Return self after checking every field, raising InputError naming the bad one."""
        check_choice("model", self.model, MODEL_KINDS)
        check_int("epochs", self.epochs, 1)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, 1)
        for name in ("lr", "momentum", "tol"):
            if getattr(self, name) is not None:
                check_number(name, getattr(self, name), positive=name == "lr")
        check_number("weight_decay", self.weight_decay)
        check_int("seed", self.seed, 0)
        vf = self.val_fraction
        if not isinstance(vf, (int, float)) or isinstance(vf, bool) or not 0.0 <= vf < 1.0:
            raise InputError(f"val_fraction: {vf!r} must be in [0, 1)")
        if self.patience is not None:
            check_int("patience", self.patience, 1)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.model == "mlp":
            if not self.hidden or any(not isinstance(h, int) or h < 1 for h in self.hidden):
                raise InputError(f"hidden: {list(self.hidden)!r} must be positive integers")
        check_choice("device", self.device, DEVICES)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise InputError("device: 'cuda' asked for, but torch finds no CUDA device here")
        check_int("checkpoint_every", self.checkpoint_every, 0)
        return self

    def to_dict(self) -> dict:
        """Return the settings as plain JSON-ready data."""
        return json_ready(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Return a TrainConfig rebuilt from `to_dict` output."""
        d = dict(d)
        d["hidden"] = tuple(d.get("hidden", ()))
        d.setdefault("device", "cpu")
        d.setdefault("scale", True)
        d.setdefault("tol", None)
        return cls(**d)


@dataclass
class TrainResult:
    """What training produced: the model (scaling inside), its spec, schema, history, metrics and data lineage."""

    model: nn.Sequential
    spec: ModelSpec
    config: TrainConfig
    schema: Schema
    history: list[dict]
    metrics: dict
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    seconds: float
    data: dict
    eval_X: np.ndarray  # held-out rows (validation, else training) kept for quantization error checks
    eval_y: np.ndarray
    checkpoint: dict = field(repr=False, default_factory=dict)
    rank: int = 0  # under torchrun only rank 0 writes
    world_size: int = 1
    backend: str | None = None  # "gloo" | "nccl" when distributed
    warnings: list[str] = field(default_factory=list)  # TrainingWarning messages, also in the card
    solver: dict = field(default_factory=dict)  # what the solver chose: conditioning.record (the card's training.solver)


@torch.no_grad()
def evaluate(model: nn.Module, X: np.ndarray, y: np.ndarray, task: str) -> dict:
    """Return the metrics of `model` on (X, y): J, MSE, RMSE, MAE, R² for regression; accuracy, log-loss for classes."""
    return scores(model(torch.as_tensor(X)), y, task)


@torch.no_grad()
def scores(out: torch.Tensor, y, task: str) -> dict:
    """Return evaluate's metrics of the model outputs `out` against the targets y."""
    if task == "regression":
        pred = out[:, 0].double()
        t = torch.as_tensor(y).double()
        err = pred - t
        mse = float(torch.mean(err**2))
        var = float(torch.mean((t - t.mean()) ** 2))
        return {
            "J": 0.5 * mse,
            "mse": mse,
            "rmse": math.sqrt(mse),
            "mae": float(torch.mean(err.abs())),
            "r2": (1.0 - mse / var) if var > 0 else None,
        }
    t = torch.as_tensor(y)
    logloss = float(nn.functional.cross_entropy(out.double(), t))
    return {"cross_entropy": logloss, "log_loss": logloss, "accuracy": float((out.argmax(1) == t).double().mean())}


def _scheduler(opt, config: TrainConfig):
    """Return the LR scheduler asked for, or None."""
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    if config.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, config.epochs // 3), gamma=0.1)
    return None


def _identity(d: int) -> nn.Linear:
    """Return a d → d Linear computing x itself: folding the parameter-free layers into it gives their affine map."""
    layer = torch.nn.utils.skip_init(nn.Linear, d, d)  # no random init: torch's global generator is the seeds' (_INIT_LOCK)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(d))
        layer.bias.zero_()
    return layer


def check_learnable(dataset: Dataset) -> None:
    """Raise ValueError when no feature varies (a model could only predict the mean); returns None."""
    if all(f.std == 0.0 for f in dataset.schema.features):
        names = ", ".join(dataset.schema.feature_names[:10])
        raise InputError(f"{dataset.source}: every feature column is constant ({names}); there is nothing to learn from")


def train(
    dataset: Dataset,
    config: TrainConfig | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    quiet: bool = False,
) -> TrainResult:
    """Return a TrainResult after SGD training on `dataset`; resumes from `checkpoint_path` when asked; `quiet`: its
    TrainingWarnings are only listed in TrainResult.warnings, not emitted (no global warning filter: thread-safe)."""
    config = (config or TrainConfig()).validate()
    if not isinstance(dataset, Dataset):
        raise InputTypeError(f"dataset: expected aiaas_torch.data.Dataset, got {type(dataset).__name__}")
    task = dataset.schema.task
    check_learnable(dataset)
    if config.model == "logistic" and task != "classification":
        raise InputError("model: 'logistic' needs a classification target (give --task classification?)")
    if config.model == "linear" and task != "regression":
        raise InputError("model: 'linear' is for regression; use 'logistic' or 'mlp' for a classification target")
    train_ds, val_ds = split(dataset, config.val_fraction, config.seed)
    # Imputation values and the categories one-hot encodes are fitted on the training rows only, like the scaling.
    schema, fill, codes = fit_preprocessing(dataset.schema, train_ds.X)
    imputes = any(f.impute is not None for f in schema.features)
    encoded = train_ds.X
    if imputes or codes:
        with torch.no_grad():
            encoded = Preprocess(train_ds.X.shape[1], fill, codes)(torch.from_numpy(train_ds.X)).numpy()
    run, wd = conditioning.plan(config, len(train_ds)), config.weight_decay
    if run.whiten:  # one pass over the rows gives the scaling and the covariance the whitening needs
        mean64, cov64 = conditioning.moments(encoded)
    if not config.scale:
        mean, std = np.zeros(encoded.shape[1], np.float32), np.ones(encoded.shape[1], np.float32)
    elif run.whiten:  # the population std, as standardize_stats; a constant feature gets 1
        var = np.diag(cov64)
        mean, std = mean64.astype(np.float32), np.where(var > 0, np.sqrt(np.maximum(var, 0.0)), 1.0).astype(np.float32)
    else:
        mean, std = standardize_stats(encoded)
    if run.whiten:  # the PCA basis scaled to unit curvature: replaces --rotate's rotation (it includes it)
        basis, lr, scale2, hdiag = conditioning.prepare(run, conditioning.second_moment(mean64, cov64, mean, std), task, wd)
    else:
        basis, lr, scale2, hdiag = pca_rotation((encoded - mean) / std) if config.rotate else None, run.lr, None, None
    n_out = 1 if task == "regression" else len(dataset.schema.classes)
    spec = ModelSpec(config.model, train_ds.X.shape[1], n_out, tuple(config.hidden) if config.model == "mlp" else (), basis is not None,
                     imputes, tuple((j, len(c)) for j, c in sorted(codes.items())))  # fmt: skip

    rank, world, backend, device = setup_distributed(config.device)
    with _INIT_LOCK:  # the seed and the initial weights come from torch's global generator: one thread at a time
        torch.manual_seed(config.seed)
        model = build_model(spec, mean, std, basis, fill, codes).to(device)
    # whitened: weight decay is a penalty on the standardized-unit weights (conditioning.penalty), not SGD's own
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=run.momentum, weight_decay=0.0 if run.whiten else wd)
    sched = _scheduler(opt, config)
    crit = loss_fn(task)
    crit_sum = loss_fn(task, reduction="sum")
    Xt, yt = torch.from_numpy(train_ds.X), torch.from_numpy(train_ds.y)  # views, no copy
    Xv = torch.from_numpy(val_ds.X).to(device) if val_ds is not None else None
    yv = torch.from_numpy(val_ds.y).to(device) if val_ds is not None else None
    n = Xt.shape[0]
    bs = run.batch_size
    full_local = world == 1 and bs == n
    local = world == 1 and (full_local or run.whiten)
    if local:
        Xt, yt = Xt.to(device), yt.to(device)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    fixed = next(i for i, m in enumerate(model) if any(True for _ in m.parameters()))
    if local:
        # Scaling, rotation and whitening have no parameters: apply them once, folded into one affine map (one pass,
        # one new copy of the rows), and step the layers after them: the same gradients, less work a step.
        with torch.no_grad():
            affine = fold_preprocessing(nn.Sequential(*model[:fixed], _identity(model[fixed].in_features).to(device)))
            Xt = affine[-1](torch.from_numpy(encoded).to(device) if len(affine) > 1 else Xt)  # Preprocess is done: `encoded`
            Xv = affine(Xv) if Xv is not None else None
            if not full_local:  # shuffled once; each epoch then visits contiguous batches in its own random order
                shuffled = epoch_order(n, True, config.seed)
                Xt, yt = Xt[shuffled], yt[shuffled]
        net = model[fixed:]
    extra = (lambda: conditioning.penalty(model[fixed], scale2, wd)) if run.whiten and wd > 0 else None
    # whitened least squares, full batch: the Hessian is the known diagonal hdiag, so each step's gradient says exactly
    # how far J(θ) is from its optimum; stop on that instead of waiting for two flat epochs
    gap_stop = run.whiten and task == "regression" and full_local and config.scale and run.momentum == 0
    near, last_gap = False, None

    history: list[dict] = []
    start_epoch, best_loss, best_epoch, bad_epochs = 0, math.inf, 0, 0
    best_state = None
    if resume:
        if checkpoint_path is None or not Path(checkpoint_path).exists():
            raise InputError(f"resume: no checkpoint at {checkpoint_path}")
        ck = load_checkpoint(checkpoint_path)
        if ck.get("config") != config.to_dict() or ck.get("data_sha256") != dataset.sha256:
            raise InputError(f"{checkpoint_path}: checkpoint was made with other settings or other data; cannot resume")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if sched is not None and ck.get("scheduler"):
            sched.load_state_dict(ck["scheduler"])
        start_epoch, history = int(ck["epoch"]), list(ck["history"])
        best_loss, best_epoch, bad_epochs = float(ck["best_loss"]), int(ck["best_epoch"]), int(ck["bad_epochs"])
        best_state = ck.get("best_model")

    def state(epoch: int, done: bool) -> dict:
        return {
            "format": "aiaas-checkpoint/1",
            "config": config.to_dict(),
            "spec": spec.to_dict(),
            "schema": schema.to_dict(),
            "data_sha256": dataset.sha256,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else {},
            "epoch": epoch,
            "history": history,
            "best_loss": best_loss,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "best_model": best_state,
            "done": done,
        }

    show = rank == 0 and (sys.stderr.isatty() if config.progress is None else bool(config.progress))
    t0 = time.perf_counter()
    stopped_early = converged = False
    bar = tqdm(range(start_epoch, config.epochs), disable=not show, desc="train", unit="epoch", leave=False)
    net.train()
    for epoch in bar:
        order = epoch_order(n, shuffle=bs < n, seed=config.seed + epoch) if not local else None
        starts = (epoch_order(math.ceil(n / bs), True, config.seed + epoch) * bs).tolist() if local else range(0, n, bs)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for i in starts:
            # The same global batch as one process; each rank takes every world-th row of it. Under DDP (which
            # averages the ranks' gradients) each rank's loss is its rows' summed loss × world / batch rows, so the
            # step equals one process's for any row count and batch size, uneven shards included.
            batch = order[i : i + bs] if order is not None else range(i, min(i + bs, n))
            if full_local:  # one process, full batch: the rows themselves, not a gathered copy of them every epoch
                xb, yb = Xt, yt
            elif local:  # views: no gather a step
                xb, yb = Xt[i : i + bs], yt[i : i + bs]
            else:
                idx = batch[rank::world]
                xb, yb = Xt[idx].to(device), yt[idx].to(device)
            opt.zero_grad(set_to_none=True)
            if world == 1:
                loss = crit(net(xb), yb)
                rows_loss = loss.detach().double() * xb.shape[0]
            else:
                summed = crit_sum(net(xb), yb)
                loss = summed * (world / len(batch))
                rows_loss = summed.detach().double()
            if extra is not None:
                loss = loss + extra()
            loss.backward()
            if gap_stop:  # an upper bound on the gap after this step: J(θ) falls every step at the rate 1/L
                last_gap = conditioning.step_gap(net[0], hdiag)
                near = last_gap <= run.tol * abs(float(loss.detach()))
            opt.step()
            total += rows_loss
        if world > 1:
            dist.all_reduce(total)  # the epoch's training loss over every rank's rows
        if sched is not None:
            sched.step()
        row = {"epoch": epoch + 1, "train_loss": float(total) / n}
        if Xv is not None:
            with torch.no_grad():
                model.eval()
                row["val_loss"] = float(crit((net if local else model)(Xv), yv))  # the whole validation split on every rank: same value
                model.train()
        history.append(row)
        if run.halve:
            for group in opt.param_groups:
                group["lr"] = conditioning.rate(lr, (epoch + 1) * len(starts), len(starts))
        watched = row.get("val_loss", row["train_loss"])
        if not math.isfinite(watched):
            raise InputError(f"training diverged at epoch {epoch + 1} (loss {watched}); lower the learning rate")
        if watched < best_loss:
            best_loss, best_epoch, bad_epochs = watched, epoch + 1, 0
            if config.patience is not None:
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        if show:
            bar.set_postfix(loss=f"{watched:.4g}")
        if rank == 0 and checkpoint_path is not None and config.checkpoint_every and (epoch + 1) % config.checkpoint_every == 0:
            save_checkpoint(state(epoch + 1, False), checkpoint_path)
        if config.patience is not None and bad_epochs >= config.patience:
            stopped_early = True
            break
        converged = near or conditioning.converged([h["train_loss"] for h in history], run.tol)
        if converged:
            break
    bar.close()
    epochs_run = len(history)
    if config.patience is not None and best_state is not None:
        model.load_state_dict(best_state)
    model = model.cpu().eval()
    if rank == 0 and checkpoint_path is not None:
        save_checkpoint(state(epochs_run, True), checkpoint_path)
    if local and device.type == "cpu":  # the rows are already through the fixed layers: only the trained ones run
        metrics = {"train": scores(net(Xt), yt, task)}
        if Xv is not None:
            metrics["validation"] = scores(net(Xv), yv, task)
    else:
        metrics = {"train": evaluate(model, train_ds.X, train_ds.y, task)}
        if val_ds is not None:
            metrics["validation"] = evaluate(model, val_ds.X, val_ds.y, task)
    eval_ds = val_ds if val_ds is not None else train_ds
    notes = training_warnings(history, train_ds, val_ds, metrics["validation" if val_ds is not None else "train"], stopped_early)
    if config.model != "mlp" and not stopped_early:  # the reference check: how far from the optimum it stopped
        if last_gap is not None and config.patience is None:  # measured at the last step, and J only fell since
            gap = last_gap
        else:
            Zt, Yt = (Xt.cpu(), yt.cpu()) if local else (model[:fixed](torch.from_numpy(train_ds.X)), torch.from_numpy(train_ds.y))
            gap = conditioning.optimality_gap(model[fixed:], Zt, Yt, task, extra, diag=hdiag if task == "regression" else None)
        notes += [n for n in [conditioning.gap_warning(gap, task, train_ds.y, metrics["train"], config.lr is not None, wd > 0)] if n]
    if rank == 0 and not quiet:
        for msg in notes:
            warnings.warn(msg, TrainingWarning, stacklevel=2)
    return TrainResult(
        model=model,
        spec=spec,
        config=config,
        schema=schema,
        history=history,
        metrics=metrics,
        epochs_run=epochs_run,
        best_epoch=best_epoch or epochs_run,
        stopped_early=stopped_early,
        seconds=time.perf_counter() - t0,
        data={
            "source": dataset.source,
            "sha256": dataset.sha256,
            "rows": len(dataset),
            "train_rows": len(train_ds),
            "validation_rows": 0 if val_ds is None else len(val_ds),
            "warnings": list(dataset.warnings),
            **dataset_lineage(dataset),
        },
        eval_X=eval_ds.X[:4096],
        eval_y=eval_ds.y[:4096],
        checkpoint=state(epochs_run, True),
        rank=rank,
        world_size=world,
        backend=backend,
        warnings=notes,
        solver=conditioning.record(run, lr, opt.param_groups[0]["lr"], epochs_run, converged),
    )
