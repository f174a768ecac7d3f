"""The `aiaas` command: train | quantize | package | serve | predict | demo.

Every bad input ends with exit code 2 and one line on stderr naming the problem (no traceback, nothing
written); `--json` on any command prints one JSON document on stdout for scripts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILURE = 1


class UsageError(Exception):
    """A bad argument or input: exit code 2 with a one-line message."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message):  # noqa: D401 - argparse API
        """Print one line naming the problem and exit with code 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _int_list(text: str) -> tuple[int, ...]:
    """Return "64,64" as (64, 64)."""
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r} must list positive integers, e.g. 64,64")
    return vals


def _finite(text: str) -> float:
    """Return text as a finite float."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `aiaas` command with every subcommand."""
    p = _Parser(prog="aiaas", description="AI as a service on PyTorch: train → quantize → package → serve → predict.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"aiaas-torch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train on a CSV, quantize, export a run directory",
                       description="Train a model with torch.optim.SGD on a CSV, then (by default) quantize and export "
                                   "the run directory: model card model.json, model.pt2, model_float.pt2, checkpoint.pt.")
    t.add_argument("data", metavar="DATA.csv", help="CSV file with a header row and numeric feature columns")
    t.add_argument("--target", required=True, metavar="COL", help="name of the target column")
    t.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write (replaced atomically)")
    t.add_argument("--task", choices=["auto", "regression", "classification"], default="auto",
                   help="target kind (default: auto — strings or few distinct integers are classes)")
    t.add_argument("--model", choices=["linear", "logistic", "mlp"], default=None,
                   help="model kind (default: linear for regression, logistic for classification)")
    t.add_argument("--hidden", type=_int_list, default=(64, 64), metavar="64,64", help="MLP hidden sizes (default 64,64)")
    t.add_argument("--epochs", type=int, default=1000, help="epochs (default 1000)")
    t.add_argument("--lr", type=_finite, default=0.01, help="SGD learning rate (default 0.01)")
    t.add_argument("--momentum", type=_finite, default=0.0, help="SGD momentum (default 0)")
    t.add_argument("--weight-decay", type=_finite, default=0.0, help="SGD weight decay (default 0)")
    t.add_argument("--batch-size", type=int, default=None, metavar="N", help="mini-batch size (default: full batch)")
    t.add_argument("--seed", type=int, default=0, help="seed for init, shuffling and the split (default 0)")
    t.add_argument("--val-fraction", type=_finite, default=0.2, metavar="F", help="validation share in [0, 1) (default 0.2)")
    t.add_argument("--patience", type=int, default=None, metavar="N", help="early stopping after N epochs without a better validation loss")
    t.add_argument("--lr-schedule", choices=["none", "cosine", "step"], default="none", help="learning-rate schedule (default none)")
    t.add_argument("--rotate", action="store_true", help="rotate standardized features into their PCA basis (AᵀA = I checked)")
    t.add_argument("--checkpoint-every", type=int, default=0, metavar="N", help="also checkpoint every N epochs (default: only at the end)")
    t.add_argument("--resume", action="store_true", help="resume from RUN_DIR's checkpoint (same data and settings)")
    t.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu", help="train on cpu (default), cuda, or cuda when available")
    t.add_argument("--distributed", action="store_true",
                   help="train with DistributedDataParallel: relaunches this command under torchrun on this machine "
                        "(gloo on CPU, nccl on CUDA); only rank 0 writes RUN_DIR. For several machines, run it under "
                        "torchrun yourself (see README)")
    t.add_argument("--nproc-per-node", type=int, default=None, metavar="N",
                   help="processes for --distributed (default: the CUDA device count with --device cuda, else 2)")
    _quant_args(t, "--quantize")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (it is off anyway when stderr is not a terminal)")
    t.add_argument("--json", action="store_true", help="print the model card as JSON")

    q = sub.add_parser("quantize", help="re-quantize and re-export an existing run directory",
                       description="Re-quantize RUN_DIR's trained model from its checkpoint and re-export the run directory atomically.")
    q.add_argument("run_dir", metavar="RUN_DIR")
    _quant_args(q, "--scheme")
    q.add_argument("--json", action="store_true", help="print the quantization report as JSON")

    k = sub.add_parser("package", help="build NAME-VERSION.mar for TorchServe from a run directory",
                       description="Build MODEL_STORE/NAME-VERSION.mar (handler, model files, card, model-config.yaml), "
                                   "byte-identical for the same run directory, verified against the card after writing.")
    k.add_argument("run_dir", metavar="RUN_DIR")
    k.add_argument("--name", required=True, help="model name (letters, digits, '_')")
    k.add_argument("--version", default="1.0", help="model version (default 1.0)")
    k.add_argument("--model-store", default="model_store", metavar="DIR", help="where the archive goes (default model_store)")
    k.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                   help="auto: TorchServe gives a worker a GPU exactly when the host has one (default)")
    k.add_argument("--profile", choices=["throughput", "latency"], default="throughput",
                   help="serving defaults: throughput (batching) or latency (batch 1)")
    k.add_argument("--workers", type=int, default=None, help="workers per model (default from the profile)")
    k.add_argument("--batch-size", type=int, default=None, help="TorchServe batchSize (default from the profile)")
    k.add_argument("--max-batch-delay", type=int, default=None, metavar="MS", help="TorchServe maxBatchDelay in ms")
    k.add_argument("--response-timeout", type=int, default=None, metavar="S", help="TorchServe responseTimeout in s")
    k.add_argument("--max-rows", type=int, default=None, help="most rows per request (default: the card's, 10000)")
    k.add_argument("--sign", action="store_true",
                   help="sign the card with HMAC-SHA256 using $AIAAS_SIGNING_KEY (a key kept outside the archive)")
    k.add_argument("--json", action="store_true", help="print the archive's path, name, version and SHA-256 as JSON")

    s = sub.add_parser("serve", help="start, stop or inspect a local TorchServe", description="Control a local TorchServe (127.0.0.1 only, token auth on).")
    ss = s.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    ss.required = True
    st = ss.add_parser("start", help="start TorchServe and wait until every model's workers are READY",
                       description="Start TorchServe in HOME with the model store; returns when every model's workers are READY.")
    _home(st)
    st.add_argument("--model-store", default="model_store", metavar="DIR", help="model store (default model_store)")
    st.add_argument("--models", nargs="+", metavar="NAME=FILE.mar", help="archives to load (default: every .mar in the store)")
    st.add_argument("--free-ports", action="store_true", help="pick every port free at start (default 8080-8082, 7070-7071, 9000)")
    st.add_argument("--config", default=None, metavar="FILE", help="base config.properties (default ./config.properties)")
    st.add_argument("--timeout", type=_finite, default=180.0, help="seconds to wait for READY (default 180)")
    st.add_argument("--access-log", action="store_true", help="turn TorchServe's access log back on")
    st.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops the server")
    st.add_argument("--json", action="store_true", help="print the URLs and key file as JSON")
    sp = ss.add_parser("stop", help="stop the TorchServe of HOME and wait until it is gone", description="Stop HOME's TorchServe by pid and wait until the Java process is gone.")
    _home(sp)
    sp.add_argument("--json", action="store_true", help="print {stopped: bool} as JSON")
    su = ss.add_parser("status", help="show URLs, key file and worker states", description="Show HOME's TorchServe: URLs, key file, each model's versions and worker states.")
    _home(su)
    su.add_argument("--json", action="store_true", help="print the status as JSON")

    pr = sub.add_parser("predict", help="ask a served model (or a local run directory) for predictions",
                        description="Send rows to a served model: `aiaas predict NAME 6 7` sends rows [6] and [7]; "
                                    "`aiaas predict NAME 1,2,3` one row of three features. With --local RUN_DIR no server is used.")
    pr.add_argument("args", nargs="*", metavar="NAME|ROW", help="model name (not with --local), then rows as comma-separated numbers")
    pr.add_argument("--body", default=None, metavar="JSON", help="request body as JSON text (instead of ROWs)")
    pr.add_argument("--file", default=None, metavar="F", help="read the request body from a JSON file")
    pr.add_argument("--local", default=None, metavar="RUN_DIR", help="predict in this process from a run directory")
    pr.add_argument("--version", dest="model_version", default=None, metavar="V", help="model version (default: the default version)")
    _home(pr)
    pr.add_argument("--timeout", type=_finite, default=30.0, help="HTTP timeout in seconds (default 30)")
    pr.add_argument("--json", action="store_true", help="print the answer exactly as received")

    ks = sub.add_parser("export-kserve", help="lay out a .mar for KServe's TorchServe runtime",
                        description="Write OUT/config/config.properties, OUT/model-store/NAME-V.mar and OUT/inferenceservice.yaml "
                                    "for KServe (inference on 8085, token auth off inside the pod: see deploy/kserve/README.md).")
    ks.add_argument("mar", metavar="MAR", help="archive built by `aiaas package`")
    ks.add_argument("--out", required=True, metavar="DIR", help="directory to write (must be new or empty)")
    ks.add_argument("--storage-uri", default=None, metavar="URI", help="where the tree will be uploaded (default pvc://aiaas-models/NAME)")
    ks.add_argument("--image", default="aiaas-torch:0.1.0", help="serving image built from deploy/Dockerfile (default aiaas-torch:0.1.0)")
    ks.add_argument("--service", default=None, metavar="NAME", help="InferenceService name (default: the model name)")
    ks.add_argument("--json", action="store_true", help="print the written paths as JSON")

    b = sub.add_parser("bench", help="load-test a served model, or a run directory under serving configurations",
                       description="Closed-loop HTTP load on 127.0.0.1 (keep-alive, fixed concurrency, warm-up then a timed "
                                   "window): requests/s, p50/p90/p99/max latency, errors and CPU at each concurrency. With RUN_DIR, "
                                   "each --profile/--config is packaged, served, measured and stopped in turn, side by side.")
    b.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="run directory to package and serve per configuration")
    b.add_argument("--model", default=None, metavar="NAME", help="load a model already served from --home instead")
    _home(b)
    b.add_argument("--profile", action="append", choices=["throughput", "latency"], default=None,
                   help="serving profile to measure (repeatable; default throughput)")
    b.add_argument("--config", action="append", default=[], metavar="LABEL:K=V,...",
                   help="extra configuration, e.g. w1b8:workers=1,batch_size=8,max_batch_delay_ms=1 (repeatable)")
    b.add_argument("--noop-handler", default=None, metavar="FILE",
                   help="also serve a no-op handler file (e.g. benchmarks/noop_handler.py) under the first configuration")
    b.add_argument("--concurrency", type=_int_list, default=(1, 8, 32), metavar="1,8,32", help="connections per level (default 1,8,32)")
    b.add_argument("--duration", type=_finite, default=10.0, metavar="S", help="timed window per level in seconds (default 10)")
    b.add_argument("--warmup", type=_finite, default=3.0, metavar="S", help="warm-up per level in seconds (default 3)")
    b.add_argument("--server-warmup", type=_finite, default=10.0, metavar="S",
                   help="with RUN_DIR: load before each new server's first level, not measured (default 10; JIT warm-up)")
    b.add_argument("--timeout", type=_finite, default=10.0, metavar="S", help="per-request timeout, counted as an error (default 10)")
    b.add_argument("--max-requests", type=int, default=2_000_000, metavar="N", help="most requests per level (default 2,000,000)")
    b.add_argument("--processes", type=int, default=1, metavar="N", help="generator processes (default 1)")
    b.add_argument("--body", default=None, metavar="JSON", help="request body (default: one row of the training means)")
    b.add_argument("--ceiling", action="store_true", help="also measure the generator against a trivial server (its own ceiling)")
    b.add_argument("--access-log", action="store_true", help="serve with TorchServe's access log on (off by default)")
    b.add_argument("--out", default=None, metavar="FILE.json", help="write the JSON report here")
    b.add_argument("--plot", default=None, metavar="FILE.png", help="write throughput and p99 vs concurrency (needs matplotlib)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar (it is off anyway when stderr is not a terminal)")
    b.add_argument("--json", action="store_true", help="print the report as JSON")

    d = sub.add_parser("demo", help="run the origin example end to end (y = 2x)",
                       description="Train y = 2x on x = 1..5 with SGD, quantize, package, start TorchServe, predict x = 6 and 7 "
                                   "over HTTP, show the served card and quantization report, and stop the server.")
    d.add_argument("--home", default=".aiaas-demo", metavar="DIR", help="server home for the demo (default .aiaas-demo)")
    d.add_argument("--workdir", default="runs", metavar="DIR", help="where the run directory goes (default runs)")
    d.add_argument("--model-store", default="model_store", metavar="DIR", help="model store (default model_store)")
    d.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    return p


def _home(p) -> None:
    """Add the --home option."""
    p.add_argument("--home", default=".aiaas", metavar="DIR", help="server home: config, logs, key file, pid (default .aiaas)")


def _quant_args(p, flag: str) -> None:
    """Add the quantization options (`flag` is --quantize or --scheme)."""
    p.add_argument(flag, dest="scheme", choices=["auto", "int8", "pow2", "none"], default="auto",
                   help="auto (int8 where measured faster on this host, default), int8 or pow2 (forced, e.g. for size; "
                        "the measured cost is printed), or none")
    p.add_argument("--min-weights", type=int, default=16384, metavar="N",
                   help="int8 only for Linear layers with at least N weights (default 16384; 0 forces every layer)")
    p.add_argument("--gate", type=_finite, default=0.02, metavar="F",
                   help="refuse the model if relative RMSE against float exceeds F (default 0.02)")
    p.add_argument("--force", action="store_true", help="export even if the accuracy gate fails")
    p.add_argument("--compile", dest="compile", choices=["auto", "always", "never"], default="auto",
                   help="AOTInductor packages: auto (only where the cost model says a compile can pay, then measured; "
                        "default), always (serve a compiled program), never")
    p.add_argument("--no-compile", dest="compile", action="store_const", const="never", help="same as --compile never")


def _print_json(obj) -> None:
    """Print one JSON document on stdout."""
    print(json.dumps(obj, indent=2, default=str))


def _warn(msg: str) -> None:
    """Print one warning line on stderr."""
    print(f"aiaas: warning: {msg}", file=sys.stderr)


def cmd_train(a) -> int:
    """Train, quantize and export; returns the exit code."""
    from .data import load_csv
    from .export import CHECKPOINT, export_run
    from .quantize import QuantConfig
    from .train import TrainConfig, check_learnable, finish_distributed, train

    quant = QuantConfig(a.scheme, a.min_weights, a.gate, a.force).validate()
    if a.distributed and "WORLD_SIZE" not in os.environ:
        return _relaunch_under_torchrun(a)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        ds = load_csv(a.data, a.target, a.task)
    check_learnable(ds)  # before the per-column warnings: a refusal is one line
    for w in caught:
        _warn(str(w.message))
    model = a.model or ("linear" if ds.schema.task == "regression" else "logistic")
    cfg = TrainConfig(
        model=model, hidden=a.hidden, epochs=a.epochs, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay,
        batch_size=a.batch_size, seed=a.seed, val_fraction=a.val_fraction, patience=a.patience,
        lr_schedule=a.lr_schedule, rotate=a.rotate, progress=False if a.no_progress else None,
        checkpoint_every=a.checkpoint_every, device=a.device,
    ).validate()
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    # Periodic checkpoints live beside the run directory until export moves the final one inside.
    ckpt = out.with_name(f".{out.name}.{CHECKPOINT}")
    if a.resume and not ckpt.exists() and (out / CHECKPOINT).exists():
        ckpt = out / CHECKPOINT
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
    for n in exported.notes:
        _warn(n)
    if a.json:
        _print_json(exported.card)
        return 0
    _print_train_summary(exported)
    return 0


def _relaunch_under_torchrun(a) -> int:
    """Run this same `aiaas train` under torchrun on this machine (loopback rendezvous); returns its exit code."""
    import socket
    import subprocess

    if a.nproc_per_node is not None and a.nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node {a.nproc_per_node}: must be ≥ 1")
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: torch finds no CUDA device here")
        n = a.nproc_per_node or torch.cuda.device_count()
    else:
        n = a.nproc_per_node or 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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


def cmd_quantize(a) -> int:
    """Re-quantize an existing run directory; returns the exit code."""
    from .export import requantize
    from .quantize import QuantConfig

    exported = requantize(a.run_dir, QuantConfig(a.scheme, a.min_weights, a.gate, a.force).validate(), compile=a.compile)
    for n in exported.notes:
        _warn(n)
    if a.json:
        _print_json(exported.report.to_dict())
    else:
        print(exported.report.summary())
        print(exported.optimization_summary())
        print(f"run directory: {exported.run_dir}")
    return 0


def cmd_package(a) -> int:
    """Build the .mar; returns the exit code."""
    from .archive import ServingConfig, package
    from .handlers.aiaas_contract import SIGNING_KEY_ENV

    serving = ServingConfig.profile(a.profile)
    for field, value in (("workers", a.workers), ("batch_size", a.batch_size), ("max_batch_delay_ms", a.max_batch_delay),
                         ("response_timeout_s", a.response_timeout), ("max_rows", a.max_rows)):
        if value is not None:
            setattr(serving, field, value)
    key = None
    if a.sign:
        key = os.environ.get(SIGNING_KEY_ENV)
        if not key:
            raise UsageError(f"--sign needs the signing key in ${SIGNING_KEY_ENV}")
    r = package(a.run_dir, a.name, a.version, a.model_store, a.device, serving.validate(), sign_key=key)
    if a.json:
        _print_json({"path": str(r.path), "name": r.name, "version": r.version, "sha256": r.sha256, "files": r.files})
    else:
        print(f"packaged {r.path} (sha256 {r.sha256[:16]}…, {len(r.files)} files, verified against the card)")
    return 0


def cmd_serve(a) -> int:
    """Start, stop or show a local TorchServe; returns the exit code."""
    from . import server

    if a.action == "start":
        models = a.models
        if models:
            for m in models:
                if "=" not in m or not m.split("=", 1)[0] or not m.endswith(".mar"):
                    raise UsageError(f"--models {m!r}: expected NAME=FILE.mar")
        info = server.start(a.home, a.model_store, models, a.free_ports, a.config, a.timeout, access_log=a.access_log)
        st = server.status(a.home)
        if a.json:
            _print_json(st)
        else:
            print(f"TorchServe ready (pid {info.pid}): inference {info.inference_url}, management {info.management_url}, "
                  f"metrics {info.metrics_url}; tokens in {info.key_file}")
            for name, versions in st.get("models", {}).items():
                for v in versions:
                    states = [w.get("status") for w in v.get("workers", [])]
                    print(f"  {name} v{v.get('version')}: workers {states}")
        if a.foreground:
            _stay_attached(a.home, info.pid)
        return 0
    if a.action == "stop":
        stopped = server.stop(a.home)
        if a.json:
            _print_json({"stopped": stopped})
        else:
            print("TorchServe stopped" if stopped else f"no TorchServe was running from {a.home}")
        return 0
    st = server.status(a.home)
    if a.json:
        _print_json(st)
    elif not st.get("running"):
        print(f"no TorchServe running from {a.home}")
    else:
        print(f"TorchServe pid {st['pid']}: inference {st['inference_url']}, management {st['management_url']}, metrics {st['metrics_url']}")
        print(f"  key file {st['key_file']}")
        for name, versions in st.get("models", {}).items():
            for v in versions:
                print(f"  {name} v{v.get('version')}: " + ", ".join(f"{w.get('id')}:{w.get('status')}" for w in v.get("workers", [])))
    return 0 if st.get("running") or a.json else EXIT_FAILURE


def _stay_attached(home: str, pid: int) -> None:
    """Block while the server lives; Ctrl-C or SIGTERM stops it. Returns None."""
    import signal
    import threading

    import psutil

    from . import server

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("serving in the foreground; Ctrl-C stops the server", file=sys.stderr)
    try:
        while not stop.wait(1.0) and psutil.pid_exists(pid):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(home)


def _rows_from_args(values: list[str]) -> list[list[float]]:
    """Return ROW arguments ("6", "1,2,3") as rows of numbers."""
    rows = []
    for v in values:
        try:
            row = [float(x) for x in v.split(",")]
        except ValueError:
            raise UsageError(f"row {v!r}: expected comma-separated numbers, e.g. 1.5,2,3") from None
        if not all(math.isfinite(x) for x in row):
            raise UsageError(f"row {v!r}: values must be finite numbers")
        rows.append(row)
    return rows


def _request_body(a, rows_args: list[str]):
    """Return the request body from ROWs, --body or --file (exactly one of them)."""
    given = sum(bool(x) for x in (rows_args, a.body is not None, a.file is not None))
    if given != 1:
        raise UsageError("give the rows as ROW arguments, or --body JSON, or --file F (exactly one)")
    if a.body is not None:
        return a.body
    if a.file is not None:
        p = Path(a.file)
        if not p.is_file():
            raise UsageError(f"--file {p}: file not found")
        return p.read_bytes()
    return {"instances": _rows_from_args(rows_args)}


def cmd_predict(a) -> int:
    """Predict locally or over HTTP; returns the exit code."""
    if a.local:
        from .export import load_run

        body = _request_body(a, a.args)
        answer = load_run(a.local).predict(body)
    else:
        if not a.args:
            raise UsageError("give the model NAME (or --local RUN_DIR)")
        from . import client as cl

        name, rows = a.args[0], a.args[1:]
        body = _request_body(a, rows)
        if isinstance(body, str):
            body = body.encode("utf-8")
        if not (Path(a.home) / "server.json").exists():
            raise UsageError(f"no server found in {a.home} (start one with `aiaas serve start --home {a.home}`)")
        with cl.Client(home=a.home, timeout=a.timeout) as c:
            try:
                answer = c.predict(name, body, version=a.model_version)
            except (cl.BadRequest, cl.NotFound) as e:
                raise UsageError(str(e)) from None
    if a.json:
        _print_json(answer)
    else:
        _print_answer(answer)
    return 0


def _print_answer(answer) -> None:
    """Print predictions one per line (classification: label and probability)."""
    if isinstance(answer, dict) and "predictions" in answer:
        probs = answer.get("probabilities")
        for i, p in enumerate(answer["predictions"]):
            print(f"{p}" + (f"\t(p={max(probs[i]):.3f})" if probs else ""))
    elif isinstance(answer, dict) and "outputs" in answer:
        for o in answer["outputs"]:
            print(f"{o['name']}: {o['data']}")
    else:
        print(json.dumps(answer))


def cmd_export_kserve(a) -> int:
    """Lay out the KServe tree; returns the exit code."""
    from .kserve import export_kserve

    tree = export_kserve(a.mar, a.out, a.storage_uri, a.image, a.service)
    doc = {"root": str(tree.root), "config": str(tree.config), "manifest": str(tree.manifest),
           "model_name": tree.model_name, "model_version": tree.model_version}
    if a.json:
        _print_json(doc)
    else:
        print(f"KServe tree for {tree.model_name} v{tree.model_version} in {tree.root}: upload it to the storageUri in {tree.manifest.name}")
    return 0


def cmd_bench(a) -> int:
    """Load-test a served model or a run directory's serving configurations; returns the exit code."""
    from . import bench

    if bool(a.run_dir) == bool(a.model):
        raise UsageError("give RUN_DIR (package and serve it) or --model NAME (already served from --home), not both")
    if a.duration <= 0 or a.warmup < 0 or a.timeout <= 0 or a.max_requests < 1 or a.processes < 1:
        raise UsageError("--duration and --timeout must be > 0, --warmup ≥ 0, --max-requests and --processes ≥ 1")
    body = a.body.encode("utf-8") if a.body is not None else None
    if body is not None:
        try:
            json.loads(body)
        except ValueError as e:
            raise UsageError(f"--body: not valid JSON ({e})") from None
    kw = dict(concurrency=a.concurrency, duration=a.duration, warmup=a.warmup, timeout=a.timeout,
              max_requests=a.max_requests, processes=a.processes, progress=False if a.no_progress else None)  # fmt: skip
    if a.model:
        if not (Path(a.home) / "server.json").exists():
            raise UsageError(f"no server found in {a.home} (start one with `aiaas serve start --home {a.home}`)")
        report = bench.bench_served(a.home, a.model, body, **kw)
    else:
        configs = bench.configs_from_args(a.profile, a.config)
        handlers = {}
        if a.noop_handler:
            if not Path(a.noop_handler).is_file():
                raise UsageError(f"--noop-handler {a.noop_handler}: file not found")
            configs["no-op"] = next(iter(configs.values()))
            handlers["no-op"] = a.noop_handler
        report = bench.bench_run_dir(a.run_dir, configs, handlers=handlers, access_log=a.access_log, body=body,
                                     server_warmup=max(0.0, a.server_warmup), **kw)
    if a.ceiling:
        report.results.append(bench.generator_ceiling(a.concurrency, a.duration, a.warmup, a.processes, kw["progress"]))
    if a.out:
        report.save(a.out)
    if a.plot and bench.plot(report, a.plot) is None:
        _warn("no plot: matplotlib (the `plots` extra) is not installed")
    if a.json:
        _print_json(report.to_dict())
    else:
        print(report.table())
    return 0


def cmd_demo(a) -> int:
    """Run the origin example end to end; returns the exit code."""
    from .demo import run_demo

    summary = run_demo(home=a.home, workdir=a.workdir, model_store=a.model_store, echo=None if a.json else print)
    if a.json:
        _print_json(summary)
    return 0


COMMANDS = {"train": cmd_train, "quantize": cmd_quantize, "package": cmd_package, "serve": cmd_serve, "predict": cmd_predict,
            "bench": cmd_bench, "export-kserve": cmd_export_kserve, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    """Run the `aiaas` command line; returns the process exit code (2 for bad input)."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from . import client as cl
    from . import server

    try:
        return COMMANDS[args.command](args)
    except (UsageError, ValueError, TypeError) as e:
        print(f"aiaas {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (server.ServerError, cl.ClientError) as e:
        print(f"aiaas {args.command}: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"aiaas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
