"""Model-selection benchmark: `select` with the default grid and budget against scikit-learn's RidgeCV /
LogisticRegressionCV (with StandardScaler) on the same train/test split.

Data sets: the project's real ones (examples/diabetes.csv, examples/iris.csv) and a generated 10,000 × 30 one per
task (the size the search-time goal names). Per data set it prints the search's seconds (cross-validation and
halving) and the finalists' seconds (refit, export, deployed measurements) apart, the chosen candidate, its test
score and scikit-learn's, and for the real data sets whether a second run gives the same ranking and choice.
scikit-learn is a benchmark-only requirement (benchmarks/requirements-bench.txt). It prints the host's CPU and
vector ISA class first.

    .venv/bin/python benchmarks/model_select.py --out docs/bench/select.json

Not named select.py: run as a script, its folder comes first on sys.path, and a select.py there would shadow the
standard library's `select` module for every benchmark script in the folder (subprocess imports it).
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from aiaas_torch.data import from_arrays, load_csv, split
from aiaas_torch.handlers import integrity
from aiaas_torch.leaderboard import params_text
from aiaas_torch.select import SelectConfig, select

ROOT = Path(__file__).resolve().parent.parent


def generated(task: str, n: int = 10_000, d: int = 30, seed: int = 0):
    """Return a generated n × d data set: a mostly linear target with one interaction, with noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=d)
    z = X @ w + 0.8 * X[:, 0] * X[:, 1] + rng.normal(scale=1.0, size=n)
    names = [f"x{i}" for i in range(d)]
    if task == "regression":
        return from_arrays(X, z, names, "y", task="regression")
    return from_arrays(X, np.where(z > 0, "pos", "neg"), names, "label", task="classification")


def sklearn_score(ds, cfg: SelectConfig) -> tuple[str, float]:
    """Return (peer name, test R² or accuracy) of RidgeCV / LogisticRegressionCV with StandardScaler on select's split."""
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_ds, test_ds = split(ds, cfg.test_fraction, cfg.seed)
    if ds.schema.task == "regression":
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        name = "RidgeCV"
    else:
        model = make_pipeline(StandardScaler(), LogisticRegressionCV(cv=cfg.cv, max_iter=2000))
        name = "LogisticRegressionCV"
    model.fit(train_ds.X, train_ds.y)
    return name, float(model.score(test_ds.X, test_ds.y))


def run_one(label: str, ds, repeat: bool) -> dict:
    """Return the figures of one data set."""
    cfg = SelectConfig(progress=False)
    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        r = select(ds, cfg, workdir=work)
        total = time.perf_counter() - t0
        r.cleanup()
        same = None
        if repeat:
            r2 = select(ds, cfg, workdir=work)
            r2.cleanup()
            key = lambda res: [(e["rank"], e["params"], e.get("mean"), e.get("std")) for e in res.leaderboard]
            same = key(r) == key(r2) and r.section["chosen"] == r2.section["chosen"]
    peer, peer_score = sklearn_score(ds, cfg)
    chosen = next(e for e in r.leaderboard if e["rank"] == r.section["chosen"]["rank"])
    return {
        "data": label, "rows": len(ds), "features": ds.X.shape[1], "task": ds.schema.task,
        "candidates": r.section["tried"], "search_s": r.section["search_seconds"],
        "finalists_s": round(total - r.section["search_seconds"], 2), "chosen": params_text(chosen["params"]),
        "cv": chosen["mean"], "deployed": chosen["deployed"], "metric": r.section["metric"],
        "test": round(r.section["test_score"], 4), "peer": peer, "peer_test": round(peer_score, 4),
        "delta": round(r.section["test_score"] - peer_score, 4), "same_on_repeat": same,
    }  # fmt: skip


def main() -> None:
    """Run the benchmark and print the table (and write JSON with --out)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--only", default=None, help="comma-separated labels to run (diabetes, iris, gen-regression, gen-classification)")
    a = ap.parse_args()
    sets = {
        "diabetes": (lambda: load_csv(ROOT / "examples/diabetes.csv", "progression"), True),
        "iris": (lambda: load_csv(ROOT / "examples/iris.csv", "species"), True),
        "gen-regression": (lambda: generated("regression"), False),
        "gen-classification": (lambda: generated("classification"), False),
    }
    only = a.only.split(",") if a.only else list(sets)
    rows = []
    host = {"cpu": integrity.cpu_model_name(), "isa_class": integrity.isa_class(integrity.cpu_flags()), "cores": os.cpu_count()}
    print(f"host: {host['cpu']}, {host['cores']} cores, vector ISA class {host['isa_class']}")
    print(f"{'data':20s} {'rows×feat':>10s} {'cands':>5s} {'search s':>8s} {'final s':>7s}  {'chosen':34s} {'test':>7s} {'peer':>7s} {'Δ':>7s} repeat")
    for label in only:
        load, repeat = sets[label]
        row = run_one(label, load(), repeat)
        rows.append(row)
        print(f"{label:20s} {row['rows']:>5d}×{row['features']:<4d} {row['candidates']:>5d} {row['search_s']:>8.1f} {row['finalists_s']:>7.1f}  "
              f"{row['chosen']:34s} {row['test']:>7.4f} {row['peer_test']:>7.4f} {row['delta']:>+7.4f} "
              f"{'-' if row['same_on_repeat'] is None else 'same' if row['same_on_repeat'] else 'DIFFERENT'}", flush=True)  # fmt: skip
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"host": host, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
