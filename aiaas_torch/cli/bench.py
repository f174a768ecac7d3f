"""`aiaas bench`: load-test a served model, or a run directory under several serving configurations."""

from __future__ import annotations

import json
from pathlib import Path

from .common import Default, UsageError, add_home_option, finite_float, int_list, print_json, renamed, running_home, warn

MEASURE, RUN_DIR = "aiaas_torch.bench.loadgen:measure", "aiaas_torch.bench.served:bench_run_dir"


def add_parser(sub) -> None:
    """Add the bench sub-parser to `sub`; returns None."""
    b = sub.add_parser("bench", help="load-test a served model, or a run directory under serving configurations",
                       description="Closed-loop HTTP load on 127.0.0.1 (keep-alive, fixed concurrency, warm-up then a timed "
                                   "window): requests/s, p50/p90/p99/max latency, errors and CPU at each concurrency. With RUN_DIR, "
                                   "each --profile/--config is packaged, served, measured and stopped in turn, side by side.")
    b.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="run directory to package and serve per configuration")
    renamed(b, "--model", b.add_argument("--name", default=None, metavar="NAME",
                                         help="instead of RUN_DIR: load the model NAME already served from --home"))
    add_home_option(b)
    b.add_argument("--profile", action="append", choices=["throughput", "latency"], default=None,
                   help="with RUN_DIR: serving profile to measure (repeatable; default throughput)")
    b.add_argument("--config", action="append", default=[], metavar="LABEL:K=V,...",
                   help="with RUN_DIR: extra serving configuration, e.g. w1b8:workers=1,batch_size=8,max_batch_delay_ms=1; "
                        "keys workers, batch_size, max_batch_delay_ms, response_timeout_s, threads (repeatable)")
    b.add_argument("--noop-handler", default=None, metavar="FILE",
                   help="also serve a no-op handler file (e.g. benchmarks/noop_handler.py) under the first configuration")
    b.add_argument("--concurrency", type=int_list, default=Default(MEASURE, "concurrency"), metavar="N,N,...",
                   help="connections per level, one level each (default %(default)s)")
    b.add_argument("--duration", type=finite_float, default=Default(MEASURE, "duration"), metavar="S",
                   help="timed window per level in seconds (default %(default)s)")
    b.add_argument("--warmup", type=finite_float, default=Default(MEASURE, "warmup"), metavar="S",
                   help="warm-up per level in seconds (default %(default)s)")
    b.add_argument("--server-warmup", type=finite_float, default=Default(RUN_DIR, "server_warmup"), metavar="S",
                   help="with RUN_DIR: load before each new server's first level, not measured (default %(default)s; JIT warm-up)")
    renamed(b, "--timeout", b.add_argument("--request-timeout", type=finite_float, default=Default(MEASURE, "request_timeout"),
                                           metavar="S", help="seconds one request may take; a slower one is counted as an "
                                                             "error (default %(default)s)"))
    b.add_argument("--max-requests", type=int, default=Default(MEASURE, "max_requests"), metavar="N",
                   help="most requests per level (default %(default)s)")
    b.add_argument("--processes", type=int, default=Default(MEASURE, "processes"), metavar="N",
                   help="load generator processes (default %(default)s)")
    b.add_argument("--body", default=None, metavar="JSON", help="request body (default: one row of the training means)")
    b.add_argument("--ceiling", action="store_true", help="also measure the generator against a trivial server (its own ceiling)")
    b.add_argument("--access-log", action="store_true", help="serve with TorchServe's access log on (off by default)")
    b.add_argument("--out", default=None, metavar="FILE.json", help="write the JSON report here")
    b.add_argument("--plot", default=None, metavar="FILE.png", help="write throughput and p99 vs concurrency (needs matplotlib)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar (it is off anyway when stderr is not a terminal)")
    b.add_argument("--json", action="store_true", help="print the report as JSON")
    b.set_defaults(run=run)


def run(a) -> int:
    """Load-test a served model or a run directory's serving configurations; returns the exit code."""
    from .. import bench

    if bool(a.run_dir) == bool(a.name):
        raise UsageError("give RUN_DIR (package and serve it) or --name NAME (already served from --home), not both")
    if a.duration <= 0 or a.warmup < 0 or a.request_timeout <= 0 or a.max_requests < 1 or a.processes < 1:
        raise UsageError("--duration and --request-timeout must be > 0, --warmup ≥ 0, --max-requests and --processes ≥ 1")
    body = a.body.encode("utf-8") if a.body is not None else None
    if body is not None:
        try:
            json.loads(body)
        except ValueError as e:
            raise UsageError(f"--body: not valid JSON ({e})") from None
    kw = dict(concurrency=a.concurrency, duration=a.duration, warmup=a.warmup, request_timeout=a.request_timeout,
              max_requests=a.max_requests, processes=a.processes, progress=False if a.no_progress else None)  # fmt: skip
    if a.name:
        home = running_home(a)
        report = bench.bench_served(home, a.name, body, **kw)
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
        warn("no plot: matplotlib (the `plots` extra) is not installed")
    if a.json:
        print_json(report.to_dict())
    else:
        print(report.table())
    return 0
