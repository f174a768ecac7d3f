"""`aiaas train` and `aiaas quantize`: train, quantize and export a run directory, or re-quantize one."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from ..csvread import DECIMALS, ENCODING, SEPARATORS
from .common import Default, UsageError, finite_float, int_list, print_json, renamed, show, warn

TRAIN, SELECT, QUANT, CSV = "aiaas_torch.train:TrainConfig", "aiaas_torch.select:SelectConfig", "aiaas_torch.quantize:QuantConfig", "aiaas_torch.data:load_csv"


def add_parser(sub) -> None:
    """Add the train and quantize sub-parsers to `sub`; returns None."""
    t = sub.add_parser("train", help="train on a CSV, quantize, export a run directory",
                       description="Train a model with torch.optim.SGD on a CSV, then (by default) quantize and export "
                                   "the run directory: model card model.json, model.pt2, model_float.pt2, checkpoint.pt.")
    t.add_argument("data", metavar="DATA.csv", help="CSV file with a header row, numeric and text (categorical) feature columns")
    t.add_argument("--target", required=True, metavar="COL", help="name of the target column (a row without one is an error; see --drop-missing-target)")
    p = t.add_argument_group("missing values and categories")
    p.add_argument("--impute", action="append", default=[], metavar="[COL=]STRATEGY",
                   help="fill missing cells (empty, NA, N/A, NaN, null, None, ?) with a value fitted on the training split: "
                        "mean, median, constant (0; for a text column: no category) or constant:VALUE; a category column's "
                        "mean/median is its most frequent category. Alone it applies to every column; COL=STRATEGY to one "
                        "(repeat it: --impute age=median --impute city=constant:unknown). Served models then accept null "
                        "for these features. Without it a missing cell is an error naming line and column")
    p.add_argument("--categorical", action="append", default=[], metavar="COL",
                   help="one-hot encode COL even though its values look numeric (a column of mostly text is categorical anyway)")
    p.add_argument("--max-categories", type=int, default=Default("aiaas_torch.data:MAX_CATEGORIES"), metavar="N",
                   help="refuse a categorical column with more than N distinct values (default %(default)s)")
    p.add_argument("--strict", action="store_true",
                   help="the served model answers a category it never saw with 400 (default: the all-zero encoding, "
                        "counted in the UnseenCategories metric); recorded in the card")
    r = t.add_argument_group("reading the file")
    r.add_argument("--sep", default=None, choices=SEPARATORS, metavar="C", type=lambda c: "\t" if c in ("tab", "\\t") else c,
                   help="field separator: , ; | or tab (written tab) (default: sniffed from the header row)")
    r.add_argument("--decimal", default=DECIMALS[0], choices=DECIMALS, metavar="C",
                   help=f"decimal mark of the numbers: . or , as in 3,14 (then the separator is not ,; default {DECIMALS[0]})")
    r.add_argument("--encoding", default=ENCODING, metavar="NAME",
                   help=f"text encoding of the file (default {ENCODING}; a file saved by Excel on Windows is often cp1252)")
    r.add_argument("--drop-missing-target", action="store_true",
                   help="leave out the rows whose target is empty or missing (NA, ?, ...), counted in the output and "
                        "the card (default: such a row is an error naming its line)")
    r.add_argument("--keep", action="append", default=[], metavar="COL",
                   help="keep COL as a feature though it looks like a row id (unique text per row, or 1..N in order; "
                        "such columns are excluded with a warning)")
    r.add_argument("--id", dest="ids", action="append", default=[], metavar="COL",
                   help="COL identifies rows: excluded from the features without a warning (repeatable)")
    t.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write (replaced atomically)")
    show(t.add_argument("--task", choices=["auto", "regression", "classification"], default=None,
                        help="target kind (default %(auto)s: strings or few distinct integers are classes)"),
         auto=Default(CSV, "task"))
    t.add_argument("--model", choices=["linear", "logistic", "mlp"], default=None,
                   help="model kind to train (default: linear for regression, logistic for classification)")
    t.add_argument("--hidden", type=int_list, default=Default(TRAIN, "hidden"), metavar="N,N",
                   help="MLP hidden layer sizes (default %(default)s)")
    show(t.add_argument("--epochs", type=int, default=None, metavar="N",
                        help="most epochs (default %(train)s; linear/logistic stop earlier once converged; with --select: "
                             "the last halving rung's, default %(select)s)"),
         train=Default(TRAIN, "epochs"), select=Default(SELECT, "epochs"))
    t.add_argument("--lr", type=finite_float, default=None, metavar="RATE",
                   help="SGD learning rate. Default for linear/logistic: chosen from the data on whitened features, with a "
                        "stop on convergence; given, training is the classic fixed-rate SGD (full batch, momentum 0, "
                        "every epoch; no whitening). MLP default 0.01")
    t.add_argument("--momentum", type=finite_float, default=None, metavar="M", help="SGD momentum (default 0.9 for the automatic logistic fit, else 0)")
    t.add_argument("--tol", type=finite_float, default=None, metavar="REL",
                   help="stop once an epoch changes J(θ) by less than REL, relative, or (least squares, automatic full batch) once "
                        "J(θ) is within REL of its optimum (default 1e-7 with the automatic rate, else off)")
    t.add_argument("--weight-decay", type=finite_float, default=Default(TRAIN, "weight_decay"), metavar="L2",
                   help="SGD weight decay (default %(default)s)")
    t.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="mini-batch size (default: full batch; the automatic logistic fit above 8192 training rows: "
                        "4096 or a twentieth of the rows)")
    t.add_argument("--seed", type=int, default=Default(TRAIN, "seed"), metavar="N",
                   help="seed for init, shuffling and the split (default %(default)s)")
    t.add_argument("--val-fraction", type=finite_float, default=Default(TRAIN, "val_fraction"), metavar="F",
                   help="validation share in [0, 1) (default %(default)s)")
    t.add_argument("--patience", type=int, default=None, metavar="N", help="early stopping after N epochs without a better validation loss")
    t.add_argument("--lr-schedule", choices=["none", "cosine", "step"], default=Default(TRAIN, "lr_schedule"),
                   help="learning-rate schedule (default %(default)s)")
    t.add_argument("--rotate", action="store_true", help="rotate standardized features into their PCA basis (AᵀA = I checked; with the automatic rate the whitening includes it)")
    t.add_argument("--checkpoint-every", type=int, default=Default(TRAIN, "checkpoint_every"), metavar="N",
                   help="also checkpoint every N epochs (default %(default)s: only at the end)")
    t.add_argument("--resume", action="store_true", help="resume from RUN_DIR's checkpoint (same data and settings)")
    t.add_argument("--device", choices=["cpu", "cuda", "auto"], default=Default(TRAIN, "device"),
                   help="train on cpu, cuda, or auto: cuda when available (default %(default)s)")
    t.add_argument("--distributed", action="store_true",
                   help="train with DistributedDataParallel: relaunches this command under torchrun on this machine "
                        "(gloo on CPU, nccl on CUDA); only rank 0 writes RUN_DIR. For several machines, run it under "
                        "torchrun yourself (see README)")
    t.add_argument("--nproc-per-node", type=int, default=None, metavar="N",
                   help="processes for --distributed (default: the CUDA device count with --device cuda, else 2)")
    s = t.add_argument_group("model selection (--select)")
    show(s.add_argument("--select", action="store_true",
                   help="choose the model: a grid (baseline, L2-regularized linear/logistic, scaling and rotation on/off, "
                        "three MLP sizes, learning rates) scored by k-fold cross-validation on the training split with "
                        "successive halving; the top %(finalists)s are exported and measured as deployed; the best within the budget "
                        "is refitted and written (--model, --hidden, --lr, --weight-decay, --rotate are ignored; --epochs "
                        "sets the last rung's epochs and the refit's)"), finalists=Default(SELECT, "finalists"))
    s.add_argument("--cv", type=int, default=Default(SELECT, "cv"), metavar="K", help="folds (default %(default)s; stratified for classes)")
    s.add_argument("--budget", type=int, default=Default(SELECT, "budget"), metavar="N",
                   help="candidates to try, simplest first (default: the whole grid)")
    s.add_argument("--time-limit", type=finite_float, default=Default(SELECT, "time_limit"), metavar="S",
                   help="start no candidate after S seconds of search (the result may then differ between runs)")
    s.add_argument("--metric", choices=["r2", "neg_rmse", "neg_mae", "accuracy", "neg_log_loss"], default=Default(SELECT, "metric"),
                   help="selection score, higher is better (default r2 for regression, accuracy for classes)")
    s.add_argument("--max-latency-us", type=finite_float, default=Default(SELECT, "max_latency_us"), metavar="U",
                   help="serving budget: µs per row at batch 1 of the program this host would serve")
    s.add_argument("--max-bytes", type=int, default=Default(SELECT, "max_bytes"), metavar="B", help="serving budget: weight bytes of the served program")
    s.add_argument("--plot", default=None, metavar="FILE.png", help="draw the finalists' CV score against latency (needs matplotlib)")
    add_quant_options(t)
    t.add_argument("--no-progress", action="store_true", help="no progress bar (it is off anyway when stderr is not a terminal)")
    t.add_argument("--json", action="store_true", help="print the model card as JSON")
    t.set_defaults(run=run)

    q = sub.add_parser("quantize", help="re-quantize and re-export an existing run directory",
                       description="Re-quantize RUN_DIR's trained model from its checkpoint and re-export the run directory atomically.")
    q.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `aiaas train` (it needs its checkpoint.pt)")
    renamed(q, "--scheme", add_quant_options(q))
    q.add_argument("--json", action="store_true", help="print the quantization report as JSON")
    q.set_defaults(run=run)


def add_quant_options(p):
    """Add the quantization options (train, import, quantize); returns the --quantize option's action."""
    scheme = p.add_argument("--quantize", dest="scheme", choices=["auto", "int8", "pow2", "int8-weight", "none"],
                            default=Default(QUANT, "scheme"),
                            help="auto: int8 where measured faster on this host; int8 or pow2: forced (e.g. for size; the "
                                 "measured cost is printed); int8-weight: int8 weights with float activations (large Linear "
                                 "layers, 0.25x their bytes), forced; none (default %(default)s)")
    p.add_argument("--min-weights", type=int, default=Default(QUANT, "min_weights"), metavar="N",
                   help="int8 only for Linear layers with at least N weights (default %(default)s; 0 forces every layer)")
    show(p.add_argument("--gate", type=finite_float, default=None, metavar="F",
                        help="the task's accuracy gate against float on held-out rows: regression refuses a relative RMSE "
                             "above F (default %(regression)s); classification refuses a label agreement below F (default "
                             "%(classification)s). A forced scheme that fails it is refused; under auto the float program serves"),
         regression=Default(QUANT, "gate_max_rel_rmse"), classification=Default(QUANT, "gate_min_label_agreement"))
    p.add_argument("--force", action="store_true", help="export a forced scheme even if the accuracy gate fails")
    p.add_argument("--compile", dest="compile", choices=["auto", "always", "never"], default=Default(SELECT, "compile"),
                   help="AOTInductor packages: auto (only where the cost model says a compile can pay, then measured), "
                        "always (serve a compiled program), never (default %(default)s)")
    p.add_argument("--no-compile", dest="compile", action="store_const", const="never", help="same as --compile never")
    return scheme


def run(a) -> int:
    """Run `aiaas train` or `aiaas quantize`; returns the exit code."""
    return _train(a) if a.command == "train" else _quantize(a)


def _train(a) -> int:
    """Train, quantize and export; returns the exit code."""
    from ..data import load_csv
    from ..card import CHECKPOINT
    from ..export import export_run
    from ..quantize import QuantConfig
    from ..distributed import finish_distributed
    from ..train import TrainConfig, TrainingWarning, check_learnable, train

    quant = QuantConfig(a.scheme, a.min_weights, force=a.force).validate()
    if a.distributed and "WORLD_SIZE" not in os.environ:
        return _relaunch_under_torchrun(a)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        ds = load_csv(a.data, a.target, **_given(task=a.task), impute=a.impute, categorical=a.categorical,
                      max_categories=a.max_categories, strict=a.strict, sep=a.sep, decimal=a.decimal,
                      encoding=a.encoding, drop_missing_target=a.drop_missing_target, keep=a.keep, ids=a.ids)  # fmt: skip
    check_learnable(ds)  # before the per-column warnings: a refusal is one line
    quant = quant.with_gate(ds.schema.task, a.gate).validate()
    notes = [str(w.message) for w in caught]  # printed once the settings are checked: a refusal is one line
    if a.select:
        return _select(a, ds, quant, notes)
    for flag in _SELECT_ONLY:
        if flag in a.given and getattr(a, flag) is not None:
            raise UsageError(f"--{flag.replace('_', '-')}: only with --select")
    model = a.model or ("linear" if ds.schema.task == "regression" else "logistic")
    cfg = TrainConfig(
        model=model, hidden=a.hidden, weight_decay=a.weight_decay, batch_size=a.batch_size, seed=a.seed, val_fraction=a.val_fraction, patience=a.patience,
        lr_schedule=a.lr_schedule, rotate=a.rotate, progress=False if a.no_progress else None,
        checkpoint_every=a.checkpoint_every, device=a.device,
        **_given(epochs=a.epochs, lr=a.lr, momentum=a.momentum, tol=a.tol),
    ).validate()
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    # Periodic checkpoints live beside the run directory until export moves the final one inside.
    ckpt = out.with_name(f".{out.name}.{CHECKPOINT}")
    _data_notes(a, ds, notes)
    if a.resume and not ckpt.exists() and (out / CHECKPOINT).exists():
        ckpt = out / CHECKPOINT
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrainingWarning)  # printed below from result.warnings, once, on rank 0
        result = train(ds, cfg, checkpoint_path=ckpt if (cfg.checkpoint_every or a.resume) else None, resume=a.resume)
    if result.rank != 0:  # under torchrun only rank 0 writes the run directory
        finish_distributed()
        return 0
    try:
        exported = export_run(result, out, quant, compile=a.compile)
    finally:
        finish_distributed()
    if ckpt.exists() and ckpt.parent != out:
        ckpt.unlink()
    for n in exported.notes + exported.card["warnings"]:
        warn(n)
    if a.json:
        print_json(exported.card)
        return 0
    _print_train_summary(exported)
    return 0


def _data_notes(a, ds, notes: list[str]) -> None:
    """Print what reading the data found: its warnings on stderr, the rows left out for a missing target (not with
    --json: the card's data section counts them); returns None."""
    for n in notes:
        warn(n)
    if ds.dropped_rows and not a.json and os.environ.get("RANK", "0") == "0":
        shown = ", ".join(map(str, ds.dropped_rows[:10])) + (", …" if len(ds.dropped_rows) > 10 else "")
        print(f"dropped {len(ds.dropped_rows)} row(s) without a target {a.target!r} (--drop-missing-target): line(s) {shown}")


def _given(**options) -> dict:
    """Return the options that were given (not None): the others keep the settings object's own default."""
    return {k: v for k, v in options.items() if v is not None}


_SELECT_ONLY = ("cv", "budget", "time_limit", "metric", "max_latency_us", "max_bytes", "plot")


def _select(a, ds, quant, notes: list[str]) -> int:
    """Search the candidates, write the chosen one's run directory and print the leaderboard; returns the exit code."""
    from ..leaderboard import params_text, plot, table
    from ..select import SelectConfig, select

    if a.distributed or a.resume:
        raise UsageError("--select: cannot be combined with --distributed or --resume")
    cfg = SelectConfig(cv=a.cv, budget=a.budget, time_limit=a.time_limit, metric=a.metric, max_latency_us=a.max_latency_us,
                           max_bytes=a.max_bytes, seed=a.seed, quant=quant, compile=a.compile,
                           progress=False if a.no_progress else None, **_given(epochs=a.epochs))  # fmt: skip
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    _data_notes(a, ds, notes)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = select(ds, cfg, workdir=out.parent)
    try:
        result.save(out)
    finally:
        result.cleanup()
    section = result.section
    for n in result.best.warnings:
        warn(n)
    if a.plot:
        plot(result.leaderboard, a.plot, section["metric"])
    if a.json:
        from ..card import read_card

        print_json(read_card(out))
        return 0
    print(f"model selection: {section['tried']} of {section['candidates']} candidates in {section['search_seconds']:.1f} s; "
          f"metric {section['metric']} (cross-validation mean ± std, higher is better)")  # fmt: skip
    print(table(result.leaderboard))
    for r in section["ruled_out"]:
        print(f"  ruled out by the budget: rank {r['rank']} ({params_text(r['params'])}, CV {r['cv_mean']:.4f}): {r['why']}")
    c = section["chosen"]
    print(f"chosen: rank {c['rank']} ({params_text(c['params'])}); test {section['metric']} {section['test_score']:.4f} "
          f"on {section['test_rows']} held-out rows (scored once, after the choice)")  # fmt: skip
    print(f"run directory: {out}")
    return 0


def _relaunch_under_torchrun(a) -> int:
    """Run this same `aiaas train` under torchrun on this machine (loopback rendezvous); returns its exit code."""
    import subprocess

    from ..serving import free_ports

    if a.nproc_per_node is not None and a.nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node {a.nproc_per_node}: must be ≥ 1")
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: torch finds no CUDA device here")
        n = a.nproc_per_node or torch.cuda.device_count()
    else:
        n = a.nproc_per_node or 2
    (port,) = free_ports(1)
    argv = [x for x in a.argv if x != "--distributed"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(n),
           "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "aiaas_torch.cli", *argv]
    env = dict(os.environ)
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: keep gloo's traffic on loopback
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.call(cmd, env=env)


def _print_train_summary(exported) -> None:
    """Print the few lines a user wants after training."""
    card = exported.card
    t = card["training"]
    print(f"trained {card['model']['spec']['kind']} on {card['data']['train_rows']} rows × {len(card['input']['features'])} features "
          f"({card['output']['task']}, target {card['output']['target']!r}) in {t['seconds']:.2f} s, {t['epochs_run']} epochs"
          f"{' (stopped early)' if t['stopped_early'] else ''}")
    for split, m in card["metrics"].items():
        print(f"  {split:10s} " + ", ".join(f"{k}={v:.6g}" for k, v in m.items() if v is not None))
    coef = card["model"].get("coefficients")
    if coef and card["output"]["task"] == "regression":
        print("  coefficients (raw units): " + ", ".join(f"{k}={v:.6g}" for k, v in coef["weights"].items()) + f", bias={coef['bias']:.6g}")
    print(exported.report.summary())
    print(exported.optimization_summary())
    print(f"run directory: {exported.run_dir}" + (f" (compiled in {exported.compile_seconds:.1f} s)" if exported.compile_seconds else ""))


def _quantize(a) -> int:
    """Re-quantize an existing run directory; returns the exit code."""
    from ..card import read_card
    from ..export import requantize
    from ..quantize import QuantConfig

    task = read_card(a.run_dir)["output"]["task"]
    quant = QuantConfig(a.scheme, a.min_weights, force=a.force).with_gate(task, a.gate).validate()
    exported = requantize(a.run_dir, quant, compile=a.compile)
    for n in exported.notes:
        warn(n)
    if a.json:
        print_json(exported.report.to_dict())
    else:
        print(exported.report.summary())
        print(exported.optimization_summary())
        print(f"run directory: {exported.run_dir}")
    return 0
