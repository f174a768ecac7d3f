"""The measured results and their presentation: per-level and per-configuration results, the report, JSON, table, plot."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping


@dataclass
class LevelResult:
    """One concurrency level: answers counted in the timed window, their latency and the CPU spent."""

    concurrency: int
    requests: int  # requests finished in the window: successful answers plus errors
    errors: int  # answers with status >= 400, timeouts, broken connections
    error_kinds: dict
    seconds: float  # the timed window
    rps: float  # successful answers / seconds (errors are not throughput); latencies are theirs too
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    generator_cpu_percent: float  # the generator's own processes; 100 = one core busy
    server_cpu_percent: float | None  # the server's process tree, when its pid is known
    machine_cpu_percent: float  # the whole machine; 100 × cores = saturated
    processes: int = 1
    server_cpu_split: dict | None = None  # {"main": the server's own process (TorchServe: Java), "children": its workers}

    def server_cpu_us_per_request(self) -> float | None:
        """Return the server's CPU microseconds per successful answer, or None when its CPU or throughput is unknown."""
        if self.server_cpu_percent is None or not self.rps:
            return None
        return self.server_cpu_percent * 1e4 / self.rps


@dataclass
class ConfigResult:
    """One served configuration and its levels."""

    label: str
    levels: list
    serving: dict | None = None
    ready_seconds: float | None = None
    note: str = ""


@dataclass
class BenchReport:
    """A whole run: machine, settings, each configuration's levels, and ratios asked for."""

    machine: dict
    settings: dict
    results: list
    ratios: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Return the report as JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "BenchReport":
        """Return the report rebuilt from `to_dict` output (e.g. a saved JSON file, to plot it again)."""
        results = [ConfigResult(r["label"], [LevelResult(**lv) for lv in r["levels"]], r.get("serving"), r.get("ready_seconds"),
                                r.get("note", "")) for r in d["results"]]  # fmt: skip
        return cls(dict(d["machine"]), dict(d["settings"]), results, dict(d.get("ratios", {})))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def level(self, label: str, concurrency: int) -> LevelResult | None:
        """Return the result of configuration `label` at `concurrency`, or None."""
        for r in self.results:
            if r.label == label:
                for lv in r.levels:
                    if lv.concurrency == concurrency:
                        return lv
        return None

    def table(self) -> str:
        """Return the results as a Markdown table, one row per configuration and concurrency."""
        head = ("| config | c | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | gen CPU % | server CPU % "
                "| server CPU µs/req | others' CPU % |")  # fmt: skip
        rows = [head, "|" + "---|" * 12]
        for r in self.results:
            for lv in r.levels:
                srv, per_req, others = "–", "–", lv.machine_cpu_percent - lv.generator_cpu_percent
                if lv.server_cpu_percent is not None:
                    srv = f"{lv.server_cpu_percent:.0f}"
                    us = lv.server_cpu_us_per_request()
                    per_req = "–" if us is None else f"{us:.0f}"
                    others -= lv.server_cpu_percent
                rows.append(
                    f"| {r.label} | {lv.concurrency} | {lv.rps:,.0f} | {lv.p50_ms:.2f} | {lv.p90_ms:.2f} | {lv.p99_ms:.2f} | "
                    f"{lv.max_ms:.1f} | {lv.errors} | {lv.generator_cpu_percent:.0f} | {srv} | {per_req} | {max(0.0, others):.0f} |"
                )
        out = "\n".join(rows)
        if self.ratios:
            out += "\n\n" + "\n".join(f"- {k}: {v:.2f}" for k, v in self.ratios.items())
        return out


def plot(report: BenchReport, path: str | os.PathLike, title: str | None = None) -> Path | None:
    """Write a PNG of throughput and p99 latency against concurrency, one line per configuration.

    Returns the path, or None (with a line on stderr) when matplotlib, the optional `plots` extra, is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        import sys

        print("aiaas bench: matplotlib is not installed (pip install 'aiaas-torch[plots]'); no plot written", file=sys.stderr)
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    for r in report.results:
        cs = [lv.concurrency for lv in r.levels]
        ax1.plot(cs, [lv.rps for lv in r.levels], marker="o", label=r.label)
        ax2.plot(cs, [lv.p99_ms for lv in r.levels], marker="o", label=r.label)
    levels = sorted({lv.concurrency for r in report.results for lv in r.levels})
    for ax, ylabel in ((ax1, "requests/s"), (ax2, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrency (connections)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7)
    fig.suptitle(title or f"{report.machine.get('cores')} cores, {report.machine.get('cpu', '')[:40]}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
