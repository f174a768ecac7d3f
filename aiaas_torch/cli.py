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
    p.add_argument(flag, dest="scheme", choices=["int8", "pow2", "none"], default="int8",
                   help="int8 (torchao, only where it pays), pow2 (w = q·2^k), or none (default int8)")
    p.add_argument("--min-weights", type=int, default=16384, metavar="N",
                   help="int8 only for Linear layers with at least N weights (default 16384; 0 forces every layer)")
    p.add_argument("--gate", type=_finite, default=0.02, metavar="F",
                   help="refuse the model if relative RMSE against float exceeds F (default 0.02)")
    p.add_argument("--force", action="store_true", help="export even if the accuracy gate fails")
    p.add_argument("--no-compile", action="store_true", help="skip the AOTInductor model.pt2 (serve the float program)")


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
    from .train import TrainConfig, train

    quant = QuantConfig(a.scheme, a.min_weights, a.gate, a.force).validate()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        ds = load_csv(a.data, a.target, a.task)
    for w in caught:
        _warn(str(w.message))
    model = a.model or ("linear" if ds.schema.task == "regression" else "logistic")
    cfg = TrainConfig(
        model=model, hidden=a.hidden, epochs=a.epochs, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay,
        batch_size=a.batch_size, seed=a.seed, val_fraction=a.val_fraction, patience=a.patience,
        lr_schedule=a.lr_schedule, rotate=a.rotate, progress=False if a.no_progress else None,
        checkpoint_every=a.checkpoint_every,
    ).validate()
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    # Periodic checkpoints live beside the run directory until export moves the final one inside.
    ckpt = out.with_name(f".{out.name}.{CHECKPOINT}")
    if a.resume and not ckpt.exists() and (out / CHECKPOINT).exists():
        ckpt = out / CHECKPOINT
    result = train(ds, cfg, checkpoint_path=ckpt if (cfg.checkpoint_every or a.resume) else None, resume=a.resume)
    exported = export_run(result, out, quant, compile=False if a.no_compile else None)
    if ckpt.exists() and ckpt.parent != out:
        ckpt.unlink()
    for n in exported.notes:
        _warn(n)
    if a.json:
        _print_json(exported.card)
        return 0
    _print_train_summary(exported)
    return 0


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
    print(f"run directory: {exported.run_dir}" + (f" (model.pt2 compiled in {exported.compile_seconds:.1f} s)" if exported.compile_seconds else ""))


def cmd_quantize(a) -> int:
    """Re-quantize an existing run directory; returns the exit code."""
    from .export import requantize
    from .quantize import QuantConfig

    exported = requantize(a.run_dir, QuantConfig(a.scheme, a.min_weights, a.gate, a.force).validate(), compile=False if a.no_compile else None)
    if a.json:
        _print_json(exported.report.to_dict())
    else:
        print(exported.report.summary())
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
            import signal
            import time

            try:
                signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
                while server.status(a.home).get("running"):
                    time.sleep(1.0)
            except KeyboardInterrupt:
                pass
            finally:
                server.stop(a.home)
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


def cmd_demo(a) -> int:
    """Run the origin example end to end; returns the exit code."""
    from .demo import run_demo

    summary = run_demo(home=a.home, workdir=a.workdir, model_store=a.model_store, echo=None if a.json else print)
    if a.json:
        _print_json(summary)
    return 0


COMMANDS = {"train": cmd_train, "quantize": cmd_quantize, "package": cmd_package, "serve": cmd_serve, "predict": cmd_predict, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    """Run the `aiaas` command line; returns the process exit code (2 for bad input)."""
    args = build_parser().parse_args(argv)
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
