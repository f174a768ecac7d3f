"""The default solver of the linear and logistic models: whitening, a learning rate from the data, the convergence stop
and the optimality check that says when a fit stopped short.

With no --lr given, `train` whitens the standardized features (z = s B with B = A·diag(1/sqrt(λ + weight decay)) from the
eigen-decomposition Σ = A diag(λ) Aᵀ of the training covariance; small eigenvalues floored, numerically null ones — a
full set of one-hot columns — dropped), so that the Hessian of J(θ) is at most the identity in every direction, and
runs torch.optim.SGD at the rate 1/L (L: the largest curvature, known from the spectrum). Least squares is then the
identity's problem: full-batch steps without momentum reach it in a few epochs (each step is nearly a Newton step).
The logistic model's curvature varies with its predictions: momentum 0.9, full batch up to 8192 rows, else batches of
4096 (a twentieth of the rows when more) with the rate halved every epoch after a first 100 steps (`rate`). Both stop
once two epochs in a row change J(θ) by less than `tol` relative; least squares in full batch stops as soon as a step's
gradient puts J(θ) within `tol` of its optimum (`step_gap`: the whitened Hessian is a known diagonal), which saves the
two epochs the J-change rule needs to see it flatten. The whitening is a Rotate layer with basis B, so
`fold_preprocessing` merges it into the first Linear like the PCA rotation.
Weight decay keeps its meaning (an L2 penalty on the weights and bias in standardized units): it is added to the loss
with the whitening's per-component factor instead of SGD's own weight_decay, which would act in whitened units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

AUTO_BATCH = 4096  # per-step overhead dominates below ~1024 rows a batch; 4096 keeps the step count low ...
AUTO_STEPS = 20  # ... and big tables take batches of a twentieth of their rows: whitened, a batch that size is plenty
FULL_BATCH = 8192  # up to this many training rows: full batch (deterministic, no noise to average away)
AUTO_MOMENTUM = 0.9  # the logistic model's; least squares, whitened, needs none
AUTO_TOL = 1e-7  # stop when an epoch changes J(θ) by less than this, relative
FLOOR = 1e-6  # eigenvalues below FLOOR·λmax are raised to it (near-collinear columns) ...
NULL = 1e-9  # ... and below NULL·λmax the direction carries no data (rounding of an exact linear dependence): dropped
WARM_STEPS = 100  # constant rate for this many steps (0.949^100 ≈ 5e-3) ...
HALVE_STEPS = 25  # ... then halved at least this many steps apart: SGD's batch noise falls with the rate
GAP_WARN = 1e-3  # optimality gap that earns a warning: R² points (regression), log-loss (classification)
CURVATURE = {"regression": 1.0, "classification": 0.5}  # bound on the loss's second derivative in the model's output


def loss_fn(task: str, reduction: str = "mean"):
    """Return the training loss: J(θ) = 1/(2m) Σ (h − y)² for regression, cross-entropy for classes (mean, or sum
    over the rows with reduction="sum")."""
    reduce = torch.mean if reduction == "mean" else torch.sum
    if task == "regression":
        return lambda out, y: 0.5 * reduce((out[:, 0] - y) ** 2)
    return lambda out, y: nn.functional.cross_entropy(out, y, reduction=reduction)


@dataclass
class Plan:
    """The solver settings one run uses, after the automatic choices (explicit settings win)."""

    lr: float | None  # None: chosen from the spectrum once it is known
    momentum: float
    batch_size: int
    tol: float  # 0: run every epoch
    whiten: bool
    halve: bool  # lower the rate as `rate` says


WHITENING = "whitening (PCA basis scaled by 1/sqrt(eigenvalue)), folded into the first Linear"


def whitens(config) -> bool:
    """Return whether `config` trains with the automatic solver, whitened: a linear or logistic model with no lr given."""
    return config.lr is None and config.model != "mlp"


def plan(config, rows: int) -> Plan:
    """Return the Plan of `config` for `rows` training rows: automatic unless `config.lr` is given (then the classic
    fixed-rate SGD: full batch, momentum 0, every epoch), each explicitly given setting overriding its automatic value."""
    auto = whitens(config)
    batched = auto and config.model == "logistic" and rows > FULL_BATCH
    bs = min(config.batch_size or (max(AUTO_BATCH, -(-rows // AUTO_STEPS)) if batched else rows), rows)
    momentum = config.momentum if config.momentum is not None else (AUTO_MOMENTUM if auto and config.model == "logistic" else 0.0)
    tol = config.tol if config.tol is not None else (AUTO_TOL if auto else 0.0)
    lr = config.lr if config.lr is not None else (None if auto else 0.01)
    return Plan(lr, momentum, bs, tol, auto, auto and bs < rows and config.lr_schedule == "none")


def record(run: Plan, lr: float, lr_final: float, epochs_run: int, converged: bool) -> dict:
    """Return what a run's solver actually used, for the card (its settings keep None for "automatic"): the starting
    and final rate, momentum, batch size, whitening, tol, the epochs run and whether it stopped on tol."""
    return {"whitened": run.whiten, "lr": float(lr), "lr_final": float(lr_final),
            "lr_halved_each_epoch": run.halve, "momentum": float(run.momentum), "batch_size": int(run.batch_size),
            "tol": float(run.tol), "epochs_run": int(epochs_run), "stopped_on_tol": bool(converged)}  # fmt: skip


def moments(X: np.ndarray, chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Return (mean, covariance) of the float32 rows X in float64, from one pass: the rows, shifted by the first chunk's
    mean (so that a large offset does not cancel digits) and with a column of ones beside them (whose products are the
    sums), are multiplied into one Gram matrix a chunk at a time through a reused float64 buffer (no copy of X)."""
    Xt = torch.from_numpy(np.ascontiguousarray(X, np.float32))
    n, d = Xt.shape
    shift = Xt[:chunk].double().mean(0) if n else torch.zeros(d, dtype=torch.float64)
    gram = torch.zeros((d + 1, d + 1), dtype=torch.float64)
    buf = torch.ones((min(chunk, max(n, 1)), d + 1), dtype=torch.float64)
    for i in range(0, n, chunk):
        c = buf[: min(chunk, n - i)]
        c[:, :d].copy_(Xt[i : i + chunk]).sub_(shift)  # (torch.sub with out= and mixed types is 3× slower)
        gram.addmm_(c.T, c)
    m = gram[:d, d] / max(1, n)
    cov = gram[:d, :d] / max(1, n) - torch.outer(m, m)
    return (shift + m).numpy(), cov.numpy()


def second_moment(mean: np.ndarray, cov: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Return E[z zᵀ] of z = (x − center) / scale for rows x of the given mean and covariance (float64): the
    covariance of the standardized features when center is the mean."""
    c = np.asarray(center, np.float64)
    s = np.asarray(scale, np.float64)
    shift = np.asarray(mean, np.float64) - c
    return (cov + np.outer(shift, shift)) / np.outer(s, s)


def whitening(cov: np.ndarray, weight_decay: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Return (B, scale): the whitening basis B = A·diag(scale) (d × d, float32) of a covariance, and the per-component
    scale (0 for a null direction), so that Bᵀ (Σ + weight_decay·I) B ≤ I."""
    lam, A = np.linalg.eigh(cov)
    lam, A = lam[::-1], A[:, ::-1]  # largest first, like the PCA rotation
    top = max(float(lam[0]), 1e-300)
    scale = np.where(lam > NULL * top, 1.0 / np.sqrt(np.maximum(lam, FLOOR * top) + weight_decay), 0.0)
    return (A * scale).astype(np.float32), scale


def prepare(run: Plan, cov: np.ndarray, task: str, weight_decay: float = 0.0) -> tuple[np.ndarray, float, torch.Tensor, torch.Tensor]:
    """Return (whitening basis, learning rate, squared per-component scale, least squares' Hessian diagonal in whitened
    units: weights then bias) for the second moment `cov` of the standardized training rows (`second_moment`): the
    plan's rate when given, else 1/L."""
    basis, scale = whitening(cov, weight_decay)
    lr = run.lr if run.lr is not None else learning_rate(cov, scale, task, weight_decay)
    lam = np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)
    diag = np.append((lam + weight_decay) * scale**2, 1.0 + weight_decay)  # Bᵀ(Σ + wd·I)B is diagonal; Z is centered
    return basis, lr, torch.as_tensor(scale**2, dtype=torch.float32), torch.as_tensor(diag)


def learning_rate(cov: np.ndarray, scale: np.ndarray, task: str, weight_decay: float = 0.0) -> float:
    """Return 1/L: L is the largest curvature of J(θ) (plus the penalty) in whitened units, bias included."""
    lam = np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)
    c = CURVATURE[task]
    L = max(float(np.max((c * lam + weight_decay) * scale**2)), c + weight_decay)
    return 1.0 / L


def penalty(layer: nn.Linear, scale2: torch.Tensor, weight_decay: float) -> torch.Tensor:
    """Return ½·weight_decay·(‖W Bᵀ‖² + ‖b‖²): the L2 penalty on the standardized-unit weights of a whitened Linear
    (‖W Bᵀ‖² = Σ_i scale_i² ‖W[:, i]‖² as A is orthogonal)."""
    return 0.5 * weight_decay * ((layer.weight**2 * scale2.to(layer.weight.device)).sum() + (layer.bias**2).sum())


def rate(lr: float, steps: int, steps_per_epoch: int) -> float:
    """Return the rate after `steps` steps: `lr` for the first WARM_STEPS (momentum contracts every whitened direction
    by ≈ √0.9 a step), then halved every epoch, or every HALVE_STEPS when an epoch has fewer steps than that."""
    return lr * 0.5 ** (max(0, steps - WARM_STEPS) // max(steps_per_epoch, HALVE_STEPS))


def converged(losses: list[float], tol: float) -> bool:
    """Return whether the last two epochs each changed J(θ) by at most `tol` relative (absolute floor: tol·1e-9 of
    the first epoch's J, so that an exact fit whose J falls to rounding stops too)."""
    if tol <= 0 or len(losses) < 3:
        return False
    floor = 1e-9 * abs(losses[0])
    return all(abs(losses[-k - 1] - losses[-k]) <= tol * max(abs(losses[-k]), floor) for k in (1, 2))


def optimality_gap(net: nn.Module, Z: torch.Tensor, y: torch.Tensor, task: str, extra=None, iters: int = 5,
                   chunk: int = 65536, diag: torch.Tensor | None = None) -> float:  # fmt: skip
    """Return an estimate of J(θ) − min J on the rows (Z, y): ½ gᵀ H⁻¹ g, with H's diagonal `diag` when H is known
    diagonal (whitened least squares: exact, one pass), else by conjugate gradients on Hessian-vector products (exact
    for least squares once CG has converged; a lower bound before); `extra()` is the penalty term."""

    crit = loss_fn(task, reduction="sum")
    params = [p for p in net.parameters() if p.requires_grad]
    n = Z.shape[0]

    def objective():
        total = sum(crit(net(Z[i : i + chunk]), y[i : i + chunk]) for i in range(0, n, chunk)) / n
        return total + (extra() if extra is not None else 0.0)

    def flat(ts):
        return torch.cat([t.reshape(-1) for t in ts]).double()

    g_parts = torch.autograd.grad(objective(), params, create_graph=diag is None)
    g = flat(g_parts).detach()
    if diag is not None:
        return diagonal_gap(g, diag)

    def hvp(v):
        vs, k = [], 0
        for p in params:
            vs.append(v[k : k + p.numel()].view_as(p).to(p.dtype))
            k += p.numel()
        return flat(torch.autograd.grad(g_parts, params, grad_outputs=vs, retain_graph=True)).detach()

    x = torch.zeros_like(g)
    r, p = g.clone(), g.clone()
    rr = float(r @ r)
    rr0 = rr
    for _ in range(min(iters, g.numel())):
        if rr <= 1e-12 * rr0:
            break
        Hp = hvp(p)
        pHp = float(p @ Hp)
        if pHp <= 0:
            break
        a = rr / pHp
        x += a * p
        r -= a * Hp
        rr_new = float(r @ r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    gap = 0.5 * float(g @ x)
    return max(0.0, gap) if math.isfinite(gap) else math.inf


def diagonal_gap(g: torch.Tensor, diag: torch.Tensor) -> float:
    """Return ½ gᵀ H⁻¹ g for the gradient g (weights then bias) of a quadratic J(θ) whose Hessian is the diagonal `diag`
    (whitened least squares): exactly J(θ) − min J; null directions (diagonal 0) carry no data and are skipped."""
    g = g.reshape(-1).double().cpu()  # diag lives on the CPU; a CUDA run's gradient comes over (d + 1 numbers)
    keep = diag > 0
    return 0.5 * float((g[keep] ** 2 / diag[keep]).sum())


def step_gap(layer: nn.Linear, diag: torch.Tensor) -> float:
    """Return J(θ) − min J at the point where a full-batch backward pass left its gradients on the whitened
    least-squares `layer` (`diagonal_gap`): the distance to the optimum, known without another pass over the rows."""
    return diagonal_gap(torch.cat([layer.weight.grad.reshape(-1), layer.bias.grad.reshape(-1)]), diag)


def gap_warning(gap: float, task: str, y: np.ndarray, scored: dict, fixed_rate: bool, penalized: bool) -> str | None:
    """Return the TrainingWarning text for an optimality gap too large to ignore, or None; `scored`: the training
    metrics. Unpenalized classes that training separates perfectly have no finite optimum: no warning."""
    fix = ("raise --epochs, or leave --lr unset so that the solver picks its rate and stops on convergence" if fixed_rate
           else "raise --epochs (the solver stops by itself once converged)")  # fmt: skip
    if task == "regression":
        J = scored["J"]
        var = float(np.var(np.asarray(y, np.float64)))
        short = 2.0 * gap / var if var > 0 else 0.0
        if short <= GAP_WARN:
            return None
        return (f"training stopped short of the optimum: J(θ) = {J:.6g} on the training rows is ≈ {gap:.3g} above the "
                f"least-squares optimum on the same features (R² short by ≈ {short:.4f}); {fix}")  # fmt: skip
    J = scored["log_loss"]
    if scored["accuracy"] == 1.0 and not penalized:
        return None
    gap = min(gap, J)  # the optimum's log-loss is at least 0
    if gap <= GAP_WARN:
        return None
    return (f"training stopped short of the optimum: training log-loss {J:.6g} is ≈ {gap:.3g} above the optimum of the "
            f"same penalized model (gradient norm check); {fix}")  # fmt: skip
