"""The handler's own cost per row, in process: decode (bytes → JSON) + check + forward + encode, without TorchServe.

A batch of 16 requests of one row of 10 features each (what a worker gets under load with batchSize 16), and one
request of 16 rows, goes through `TabularHandler.handle` with a minimal stand-in for TorchServe's context, for a
regression and a classifier card on a small MLP (10-16-k) as the float-eager candidate serves it
(`programs.rebuild_sequential`). Each step is then timed alone on the same batch: decode (`read`: headers and the
JSON parse), check (the batch hook `check_batch`: the one-pass check of every request's rows), forward (`_forward`:
stack → predict → split), encode (the batch hook `answer_batch`: every answer's JSON). Repeats alternate
between the cards; medians (or, with --stat min, minimums) are printed.

    .venv/bin/python benchmarks/handler_cost.py            # ≈ 30 s: 16 requests × 1 row, 1 request × 16 rows, 1 × 1 after idle
    .venv/bin/python benchmarks/handler_cost.py --requests 4 --rows 4
    .venv/bin/python benchmarks/handler_cost.py --baseline /tmp/old/handlers   # also another copy's handler files, alternating
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import statistics
import sys
import time
import types

import torch

from aiaas_torch.handlers import aiaas_contract as contract
from aiaas_torch.handlers import integrity, json_body, programs, protocols
from aiaas_torch.handlers.tabular_handler import TabularHandler

GOAL_US = 5.0  # issue 17: handler cost per row at batch 16 × 10 features


class _Metrics:
    """TorchServe's metrics object, doing nothing (its cost is TorchServe's)."""

    def add_counter(self, *a, **k):
        """Return None."""

    def add_time(self, *a, **k):
        """Return None."""


class _Context:
    """The part of TorchServe's Context the handler calls, as plain dict writes."""

    def __init__(self, headers: list):
        self.headers, self.metrics = headers, _Metrics()
        self.status, self.out_headers, self.types = {}, {}, {}

    def get_all_request_header(self, idx):
        """Return request idx's headers."""
        return self.headers[idx]

    def get_request_header(self, idx, name):
        """Return one header of request idx."""
        return self.headers[idx].get(name)

    def set_response_content_type(self, idx, value):
        """Record the content type of request idx."""
        self.types[idx] = value

    def set_response_status(self, code, phrase, idx=0):
        """Record the status of request idx."""
        self.status[idx] = code

    def set_response_header(self, idx, name, value):
        """Record a response header of request idx."""
        self.out_headers[(idx, name)] = value


def _code(directory: str | None) -> types.SimpleNamespace:
    """Return the handler modules (contract, protocols, TabularHandler) of this checkout, or of the handler files in
    `directory` (a copy of another version's handlers/), imported as a package of their own."""
    if directory is None:
        return types.SimpleNamespace(contract=contract, protocols=protocols, programs=programs, TabularHandler=TabularHandler)
    if not os.path.isfile(os.path.join(directory, "tabular_handler.py")):
        raise SystemExit(f"--baseline: {directory} holds no tabular_handler.py")
    name = "_baseline_handlers"
    package = types.ModuleType(name)
    package.__path__ = [os.path.abspath(directory)]
    sys.modules[name] = package
    modules = {m: importlib.import_module(f"{name}.{m}") for m in ("aiaas_contract", "protocols", "programs", "tabular_handler")}
    return types.SimpleNamespace(contract=modules["aiaas_contract"], protocols=modules["protocols"], programs=modules["programs"],
                                 TabularHandler=modules["tabular_handler"].TabularHandler)  # fmt: skip


def _handler(width: int, classes: list | None, code: types.SimpleNamespace | None = None) -> TabularHandler:
    """Return a handler (of `code`, default this checkout's) set up as initialize() would, on an in-memory 10-16-k MLP."""
    feats = [{"name": f"f{j}", "kind": "numeric", "min": -3.0, "max": 3.0, "mean": 0.0} for j in range(width)]
    output = {"target": "y", "task": "classification" if classes else "regression", "classes": classes}
    code = code or _code(None)
    h = code.TabularHandler()
    h.card = {"input": {"features": feats, "max_rows": 1000}, "output": output, "files": {}}
    h.max_rows, h.device, h.model_name, h.model_version = 1000, "cpu", "m", "1.0"
    torch.manual_seed(0)
    layers = [["linear", width, 16], ["relu"], ["linear", 16, len(classes) if classes else 1]]
    state = torch.nn.Sequential(torch.nn.Linear(width, 16), torch.nn.ReLU(), torch.nn.Linear(16, layers[-1][2])).state_dict()
    h.model = code.programs.rebuild_sequential(layers, state)  # what a worker serves for the float-eager candidate
    h.initialized = True
    return h


def _batch(width: int, requests: int, rows: int, rng: random.Random) -> tuple[list, list]:
    """Return (TorchServe's data list with raw JSON bodies, each request's headers)."""
    data = [{"body": json.dumps({"instances": [[round(rng.gauss(0, 1), 6) for _ in range(width)] for _ in range(rows)]}).encode()}
            for _ in range(requests)]  # fmt: skip
    return data, [{"content-type": "application/json"} for _ in range(requests)]


def _time(fn, repeats: int) -> float:
    """Return the median seconds of fn() over `repeats` runs of 20 calls each."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(20):
            fn()
        out.append((time.perf_counter() - t0) / 20)
    return statistics.median(out)


def _infer(model, x: torch.Tensor) -> torch.Tensor:
    """Return the model's output on x (the bare forward, for the share of `forward` that is the model's)."""
    with torch.inference_mode():
        return model(x)


def _steps(h: TabularHandler, data: list, headers: list, code: types.SimpleNamespace) -> dict:
    """Return {step: callable} timing each step of handle alone on the same batch, with the modules of `code`: the
    plain lane (one-pass check of the batch, answers written at once) where `code` has it, else request by request."""
    checker = code.contract  # this checkout's contract module or the --baseline copy's (its API may be older)
    ctx = _Context(headers)
    plan = checker.plain_plan(h.card) if hasattr(contract, "plain_plan") else None
    if hasattr(h, "check_batch"):  # the batch hooks
        wires = [h.read(r, ctx, i) for i, r in enumerate(data)]
        parsed = h.check_batch(wires)
        outputs = h._forward(parsed)
        steps = {
            "decode": lambda: [h.read(r, ctx, i) for i, r in enumerate(data)],
            "check": lambda: h.check_batch(wires),
            "forward": lambda: h._forward(parsed),
            "encode": lambda: h.answer_batch(parsed, wires, outputs),
        }
    elif plan is not None:  # a handler of the plain lane before the batch hooks (--baseline)
        wires = [h._wire(r, ctx, i) for i, r in enumerate(data)]
        shapes = [checker.plain_shape(w.body, plan, h.max_rows) for w in wires]
        parsed, batch, _ = checker.check_plain_batch(shapes, plan)
        spans = h._forward_spans(parsed, batch)
        steps = {
            "decode": lambda: [h._wire(r, ctx, i) for i, r in enumerate(data)],
            "check": lambda: checker.check_plain_batch([checker.plain_shape(w.body, plan, h.max_rows) for w in wires], plan),
            "forward": lambda: h._forward_spans(parsed, batch),
            "encode": lambda: h._plain_texts(spans),
        }
    else:  # a handler of before the plain lane (--baseline)
        protocols = code.protocols
        wires = [protocols.decode(r["body"], hd) for r, hd in zip(data, headers)]
        parsed = [checker.parse_request(w.body, h.card, h.max_rows) for w in wires]
        outputs = h._forward(parsed)
        steps = {
            "decode": lambda: [protocols.decode(r["body"], hd) for r, hd in zip(data, headers)],
            "check": lambda: [checker.parse_request(w.body, h.card, h.max_rows) for w in wires],
            "forward": lambda: h._forward(parsed),
            "encode": lambda: [h.encode(p, w, o) for p, w, o in zip(parsed, wires, outputs)],
        }
    x = torch.tensor([r for p in parsed for r in p.rows], dtype=torch.float32)
    return {"handle": lambda: h.handle(data, _Context(headers)), **steps, "model": lambda: _infer(h.model, x)}


def measure(requests: int, rows: int, features: int, repeats: int, baseline: str | None = None, stat=statistics.median) -> dict:
    """Return {card: {step: µs per row (`stat` of the repeats)}} for batches of `requests` requests × `rows` rows, cards
    (and, with `baseline`, the baseline's handler files beside this checkout's) alternating."""
    codes = {"": _code(None)} | ({" (baseline)": _code(baseline)} if baseline else {})
    steps = {}
    for card, classes in (("regression", None), ("classifier (3 classes)", ["a", "b", "c"])):
        batch = _batch(features, requests, rows, random.Random(len(card)))  # the same requests for every code
        for tag, code in codes.items():
            steps[card + tag] = _steps(_handler(features, classes, code), *batch, code)
    results = {card: {s: [] for s in STEPS} for card in steps}
    for _ in range(repeats):  # alternate cards and steps, so that drift in the host's load hits all alike
        for card, fns in steps.items():
            for s in STEPS:
                results[card][s].append(_time(fns[s], 1))
    n = requests * rows
    return {card: {s: stat(v) * 1e6 / n for s, v in res.items()} for card, res in results.items()}


STEPS = ["handle", "decode", "check", "forward", "model", "encode"]


def idle_cost(features: int, idle_ms: float, calls: int, baseline: str | None = None) -> dict:
    """Return {card: (µs of thread CPU per handle call back to back, after `idle_ms` of sleep)} for one request of one
    row, and {"model call (<card>)": the same for the bare model call}: a worker at c = 1 waits between requests, and
    its caches go cold meanwhile."""
    codes = {"": _code(None)} | ({" (baseline)": _code(baseline)} if baseline else {})
    out = {}
    for card, classes in (("regression", None), ("classifier (3 classes)", ["a", "b", "c"])):
        data, headers = _batch(features, 1, 1, random.Random(len(card)))
        for tag, code in codes.items():
            h = _handler(features, classes, code)
            out[card + tag] = _hot_and_idle(lambda: h.handle(data, _Context(headers)), idle_ms, calls)
            if not tag:
                x = torch.zeros(1, features)
                out[f"model call ({card})"] = _hot_and_idle(lambda: _infer(h.model, x), idle_ms, calls)
    return out


def _hot_and_idle(fn, idle_ms: float, calls: int) -> tuple:
    """Return (median µs of thread CPU per fn() call back to back, the same with `idle_ms` of sleep between calls)."""
    for _ in range(200):
        fn()
    res = []
    for sleep in (0.0, idle_ms / 1000):
        times = []
        for _ in range(calls):
            t0 = time.thread_time_ns()
            fn()
            times.append(time.thread_time_ns() - t0)
            if sleep:
                time.sleep(sleep)
        res.append(statistics.median(times) / 1000)
    return tuple(res)


def main(argv=None) -> int:
    """Print the host, then each card's per-row cost of handle and of each step; returns 0 when the goal is met, else 1."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, help="requests per batch (default: 16 × 1 row, then 1 × 16 rows)")
    ap.add_argument("--rows", type=int, default=1, help="rows per request (with --requests)")
    ap.add_argument("--features", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=31)
    ap.add_argument("--stat", choices=["median", "min"], default="median", help="of the repeats (min: on a shared, loaded host)")
    ap.add_argument("--baseline", metavar="DIR", help="also time the handler files in DIR (a copy of another version's handlers/)")
    ap.add_argument("--idle-ms", type=float, default=1.0, help="also time one 1-row request after this much idle time (0: skip)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # what a worker runs with (handler setting `threads`, default 1)
    flags = integrity.cpu_flags()
    print(f"host: {integrity.cpu_model_name()}, {os.cpu_count()} cores, vector ISA class {integrity.isa_class(flags)}, "
          f"load {os.getloadavg()[0]:.2f}; torch {torch.__version__}, 1 thread; JSON parser: "
          f"{'orjson ' + json_body.orjson.__version__ if json_body.orjson else 'the stdlib json'}")  # fmt: skip
    shapes = [(args.requests, args.rows)] if args.requests else [(16, 1), (1, 16)]
    ok = True
    for requests, rows in shapes:
        print(f"\nbatch of {requests} request(s) × {rows} row(s) × {args.features} features; µs per row, {args.stat} of {args.repeats} alternating repeats")
        print(f"{'card':>34} | {'handle':>7} | {'decode':>7} {'check':>7} {'forward':>7} {'encode':>7} {'other':>7} | {'model':>7} | parse share")
        stat = statistics.median if args.stat == "median" else min
        for card, med in measure(requests, rows, args.features, args.repeats, args.baseline, stat).items():
            total = med["handle"]
            other = total - sum(med[s] for s in ("decode", "check", "forward", "encode"))
            ok &= total <= GOAL_US if (requests, rows) == (16, 1) and not card.endswith("(baseline)") else True
            print(f"{card:>34} | {total:7.2f} | {med['decode']:7.2f} {med['check']:7.2f} {med['forward']:7.2f} {med['encode']:7.2f} "
                  f"{other:7.2f} | {med['model']:7.2f} | {med['decode'] / total:.0%}")  # fmt: skip
    print(f"\ngoal (16 requests × 1 row): handle ≤ {GOAL_US:g} µs per row: {'met' if ok else 'NOT met'}. decode: headers and "
          "the JSON parse; check: the rows' shape per request and the batch's one-pass value check (a baseline without it: "
          "parse_request per request); forward: one forward, outputs per batch (model: the bare model call, hot); encode: "
          "the answers' JSON; other: handle's own steps (Content-Type, context calls, metrics). Steps are timed alone, hot; "
          "inside handle each runs after the others and costs more (caches), so 'other' is that difference too")  # fmt: skip
    if args.idle_ms > 0:
        print(f"\n1 request × 1 row, µs of thread CPU per handle call (median of 400): back to back, and after {args.idle_ms:g} ms "
              "idle (what a worker at c = 1 sees between requests)")  # fmt: skip
        for card, (hot, cold) in idle_cost(args.features, args.idle_ms, 400, args.baseline).items():
            print(f"{card:>34} | back to back {hot:7.1f} | after idle {cold:7.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
