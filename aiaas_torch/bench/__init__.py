"""Load testing served models: throughput, latency percentiles, errors and CPU, as JSON, a table and a plot.

Imports point one way: `engine` (one process's connections; stdlib only) ← `loadgen` (Target, measure) ← `served`
(start a server, measure it, stop it); `cpu` (the machine and its CPU) and `report` (the results) serve them.

    report = bench_run_dir("runs/origin", {"default": ServingConfig(), "latency": ServingConfig.profile("latency")})
    print(report.table()); report.save("bench.json"); plot(report, "bench.png")
"""

from .cpu import machine_info, wait_quiet
from .loadgen import DEFAULT_CONCURRENCY, LOOPBACK_HOSTS, Target, measure, percentile
from .report import BenchReport, ConfigResult, LevelResult, plot
from .served import (bench_run_dir, bench_served, card_body, configs_from_args, generator_ceiling, measure_warmed,
                     package_with_handler, parse_config, serve_trivial, served_target, wait_port)  # fmt: skip

__all__ = [
    "Target",
    "LevelResult",
    "ConfigResult",
    "BenchReport",
    "measure",
    "measure_warmed",
    "bench_served",
    "bench_run_dir",
    "generator_ceiling",
    "serve_trivial",
    "package_with_handler",
    "plot",
    "wait_quiet",
    "DEFAULT_CONCURRENCY",
    "LOOPBACK_HOSTS",
    "card_body",
    "configs_from_args",
    "machine_info",
    "parse_config",
    "percentile",
    "served_target",
    "wait_port",
]
