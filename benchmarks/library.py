"""Print the model library's figures (issue 2): origin fit over seeds, lstsq gap, MLP int8 size and error, compile time.

Run: .venv/bin/python benchmarks/library.py   (about a minute on 2 cores)
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import torch
from torch import nn

from aiaas_torch.data import from_arrays, split
from aiaas_torch.export import export_run
from aiaas_torch.models import fold_preprocessing
from aiaas_torch.quantize import QuantConfig, quantize
from aiaas_torch.train import TrainConfig, loss_fn, train


def origin() -> None:
    """Print weight/bias/prediction ranges over seeds 0–19, with and without the scaling layer."""
    x = np.arange(1, 6, dtype=np.float32)
    ds = from_arrays(x.reshape(-1, 1), 2 * x, ["x"])
    fits, unscaled_ok = [], 0
    for seed in range(20):
        f = fold_preprocessing(train(ds, TrainConfig(val_fraction=0.0, seed=seed, progress=False)).model)
        with torch.no_grad():
            fits.append((float(f[0].weight), float(f[0].bias), float(f(torch.tensor([[6.0]])))))
        torch.manual_seed(seed)
        lin, X, y = nn.Linear(1, 1), torch.from_numpy(x).reshape(-1, 1), torch.from_numpy(2 * x)
        opt, J = torch.optim.SGD(lin.parameters(), lr=0.01), loss_fn("regression")
        for _ in range(1000):
            opt.zero_grad()
            J(lin(X), y).backward()
            opt.step()
        with torch.no_grad():
            w, b, p = float(lin.weight), float(lin.bias), float(lin(torch.tensor([[6.0]])))
        unscaled_ok += abs(w - 2) <= 0.01 and abs(b) <= 0.05 and abs(p - 12) <= 0.05
    w, b, p = (np.array(v) for v in zip(*fits))
    print(f"origin (seeds 0-19, SGD lr 0.01, 1000 epochs, scaling layer): weight {w.min():.5f}..{w.max():.5f}, "
          f"bias {b.min():+.2e}..{b.max():+.2e}, f(6) {p.min():.5f}..{p.max():.5f}")
    print(f"origin without the scaling layer: {unscaled_ok}/20 seeds within 0.01/0.05/0.05")


def lstsq_gap() -> None:
    """Print the SGD linear model's validation MSE against closed-form least squares on 20,000 × 10."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20_000, 10)) * rng.uniform(0.5, 5, 10) + rng.normal(0, 3, 10)
    y = X @ rng.normal(size=10) + 1.5 + rng.normal(0, 0.5, 20_000)
    ds = from_arrays(X, y)
    cfg = TrainConfig(batch_size=256, lr=0.05, momentum=0.9, epochs=20, lr_schedule="cosine", progress=False)
    t0 = time.perf_counter()
    res = train(ds, cfg)
    secs = time.perf_counter() - t0
    tr, va = split(ds, cfg.val_fraction, cfg.seed)
    design = lambda d: torch.cat([torch.from_numpy(d.X).double(), torch.ones(len(d), 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(design(tr), torch.from_numpy(tr.y).double()[:, None]).solution
    mse_ls = float(torch.mean(((design(va) @ sol)[:, 0] - torch.from_numpy(va.y).double()) ** 2))
    mse_sgd = res.metrics["validation"]["mse"]
    print(f"20,000 x 10 linear: SGD validation MSE {mse_sgd:.5f} vs lstsq {mse_ls:.5f}: gap {100 * (mse_sgd / mse_ls - 1):+.3f} % "
          f"({secs:.2f} s, batch 256, lr 0.05, momentum 0.9, 20 epochs, cosine)")


def mlp_int8() -> None:
    """Print the MLP 100→512→512→1 int8 report and the time to compile its .pt2."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(4000, 100))
    y = np.tanh(X[:, :10].sum(1) / 3) + 0.1 * (X[:, 10:20] ** 2).sum(1) / 10
    res = train(from_arrays(X, y), TrainConfig(model="mlp", hidden=(512, 512), epochs=10, lr=0.01, momentum=0.9, batch_size=128, progress=False))
    _, report = quantize(fold_preprocessing(res.model), QuantConfig("int8"), res.eval_X)
    print(f"MLP 100-512-512-1 int8: weights {report.weight_bytes_before} -> {report.weight_bytes_after} bytes "
          f"({report.size_ratio:.2f}x), rel RMSE vs float {100 * report.rel_rmse:.2f} %")
    with tempfile.TemporaryDirectory() as d:
        e = export_run(res, f"{d}/mlp", QuantConfig("int8"))
        x = np.arange(1, 6, dtype=np.float32)
        o = export_run(train(from_arrays(x.reshape(-1, 1), 2 * x, ["x"]), TrainConfig(val_fraction=0.0, progress=False)), f"{d}/origin",
                       compile="always")  # the default would not compile it: a compile cannot pay there
    print(f"compile model.pt2 (AOTInductor, g++): MLP {e.compile_seconds:.1f} s, origin {o.compile_seconds:.1f} s")


if __name__ == "__main__":
    origin()
    lstsq_gap()
    mlp_int8()
