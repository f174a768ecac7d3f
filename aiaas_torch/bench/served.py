"""Measuring served models: start a server (TorchServe from a run directory, or the trivial responder), load it, stop it."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Sequence

from ..card import is_tabular, is_text
from ..deprecation import renamed_keywords, warn_renamed
from ..errors import InputError
from ..serving.httpclient import MANAGEMENT_S
from ..serving.ports import free_ports
from .cpu import machine_info
from .loadgen import DEFAULT_CONCURRENCY, ENGINE_SCRIPT, Target, measure
from .report import BenchReport, ConfigResult


def wait_port(port: int, proc=None, timeout: float = 10.0) -> None:
    """Return once 127.0.0.1:port accepts connections; RuntimeError if `proc` (a Popen) exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server process exited (code {proc.returncode}) before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


class serve_trivial:
    """Context manager: a raw asyncio HTTP responder in a child process; yields (URL, pid); stopped on exit."""

    def __init__(self, max_seconds: float = 600.0):
        self.max_seconds = max_seconds
        self.proc = None

    def __enter__(self) -> tuple[str, int]:
        (port,) = free_ports(1)
        self.proc = subprocess.Popen([sys.executable, ENGINE_SCRIPT, "trivial", str(port), str(self.max_seconds)])
        try:
            wait_port(port, self.proc)
        except BaseException:
            self.__exit__()
            raise
        return f"http://127.0.0.1:{port}/predictions/trivial", self.proc.pid

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except Exception:
                self.proc.kill()
                self.proc.wait()


def generator_ceiling(concurrency: Sequence[int] = DEFAULT_CONCURRENCY, duration: float = 5.0, warmup: float = 1.0,
                      processes: int = 1, progress: bool | None = None) -> ConfigResult:  # fmt: skip
    """Return the generator's own ceiling: the same load against the trivial responder (a child process)."""
    with serve_trivial(max_seconds=len(concurrency) * (duration + warmup) + 60) as (url, pid):
        levels = measure(Target(url), concurrency, duration, warmup, processes=processes, server_pids=[pid],
                         progress=progress, label="trivial")  # fmt: skip
    return ConfigResult(f"trivial server ({processes} gen. proc.)", levels, note="raw asyncio responder, one process")


def card_body(card: dict) -> bytes:
    """Return a one-row request body made of each feature's training mean (a tensor card: a v2 body of one sample per
    input, each value its calibration minimum; a text card: one text of about 32 tokens)."""
    if is_text(card):
        return json.dumps({"instances": [" ".join(["the model card travels with the model to the server"] * 3)], "truncate": True}).encode()
    if not is_tabular(card):
        from ..handlers import aiaas_contract as contract

        sample = contract.warmup_inputs(card)
        inputs = [{"name": s["name"], "shape": [1, *s["shape"][1:]], "datatype": contract.DTYPES[s["dtype"]][0],
                   "data": [int(v) if contract.DTYPES[s["dtype"]][1] else v for v in sample[s["name"]][0]]}
                  for s in contract.input_tensors(card)]  # fmt: skip
        return json.dumps({"inputs": inputs}).encode()
    row = [round(float(f.get("mean", 0.0)), 6) for f in card["input"]["features"]]
    return json.dumps({"instances": [row]}).encode()


def served_target(home: str | os.PathLike, name: str, body: bytes | None = None, version: str | None = None) -> Target:
    """Return the Target of the model NAME served by the TorchServe of HOME (URL and token from the home)."""
    from .. import serving as server

    info = server.load_info(home)
    if info is None:
        raise InputError(f"no server recorded in {Path(home) / 'server.json'}; start one with `aiaas serve start`")
    keys = server.read_keys(home)
    if body is None:
        from ..client import Client

        with Client(home=home, request_timeout=MANAGEMENT_S) as c:
            card = c.describe(name, version)[0].get("customizedMetadata")
        body = card_body(card) if isinstance(card, dict) else b'{"instances": [[0.0]]}'
    url = f"{info.inference_url}/predictions/{name}" + (f"/{version}" if version else "")
    return Target(url, body, {"Authorization": f"Bearer {keys['inference']}"})


def bench_served(home: str | os.PathLike, name: str | None = None, body: bytes | None = None, **kwargs) -> BenchReport:
    """Return the report of the model NAME already served by HOME's TorchServe (measure's keyword arguments apply;
    `model=`, the old spelling of name, still works for one release and warns)."""
    from .. import serving as server

    if "model" in kwargs:
        name = renamed_keywords("bench_served", {"model": kwargs.pop("model")}, {"model": "name"})["name"]
    if name is None:
        raise InputError("bench_served: name the served model")
    info = server.load_info(home)
    target = served_target(home, name, body)
    pids = [info.pid] if info is not None else []
    levels = measure(target, server_pids=pids, label=name, **kwargs)
    return BenchReport(machine_info(), _settings(kwargs), [ConfigResult(name, levels)])


def _settings(kwargs: Mapping) -> dict:
    """Return the load settings for the report: the given ones, else measure's own defaults."""
    given = {**{k: p.default for k, p in inspect.signature(measure).parameters.items()}, **kwargs}
    return {"concurrency": list(given["concurrency"]), "duration_s": given["duration"], "warmup_s": given["warmup"],
            "processes": given["processes"], "timeout_s": given.get("timeout", given["request_timeout"]),
            "generator": "raw asyncio HTTP/1.1, keep-alive, closed loop"}  # fmt: skip


def package_with_handler(run_dir, name: str, store, serving, handler_file: str | os.PathLike):
    """Return the PackageResult of the run directory packaged with `serving` and another handler file.

    Used for the no-op baseline: the same archive, config and card, but a handler that answers without a model.
    """
    from ..archive import package

    return package(run_dir, name, "1.0", store, serving=serving, handler=handler_file)


_CONFIG_ALIASES = {"batch": "batch_size", "delay": "max_batch_delay_ms", "max_batch_delay": "max_batch_delay_ms",
                   "response_timeout": "response_timeout_s"}  # fmt: skip
# "timeout" meant the server's response_timeout here and the client's request timeout beside it: an old spelling now
_CONFIG_RENAMED = {"timeout": "response_timeout"}


def parse_config(text: str):
    """Return (label, ServingConfig) from "LABEL:workers=2,batch_size=16,max_batch_delay_ms=0" (ValueError if bad).

    Fields not given keep the throughput profile's values; batch, delay and response_timeout are accepted as short
    names (timeout, the old short name of response_timeout, still works for one release and warns).
    """
    from ..archive import ServingConfig

    label, sep, rest = text.partition(":")
    if not sep or not label.strip():
        raise InputError(f"--config {text!r}: expected LABEL:key=value,... e.g. w1:workers=1,batch_size=8")
    cfg = ServingConfig()
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key in _CONFIG_RENAMED:
            warn_renamed(f"--config key {key}", f"{_CONFIG_RENAMED[key]} (or response_timeout_s)")
            key = _CONFIG_RENAMED[key]
        key = _CONFIG_ALIASES.get(key, key)
        if not eq or key not in ServingConfig.__dataclass_fields__ or key == "max_rows":
            raise InputError(f"--config {text!r}: {item!r} is not key=value with a key among workers, batch_size, "
                             f"max_batch_delay_ms, response_timeout_s, threads")  # fmt: skip
        try:
            setattr(cfg, key, int(value))
        except ValueError:
            raise InputError(f"--config {text!r}: {key} needs an integer, got {value!r}") from None
    return label.strip(), cfg.validate()


def configs_from_args(profiles: Sequence[str] | None, specs: Sequence[str]) -> dict:
    """Return {label: ServingConfig} for the named profiles and LABEL:k=v specs (default: the throughput profile)."""
    from ..archive import ServingConfig

    configs = {p: ServingConfig.profile(p) for p in (profiles or ([] if specs else ["throughput"]))}
    for text in specs:
        label, cfg = parse_config(text)
        if label in configs:
            raise InputError(f"--config {text!r}: label {label!r} used twice")
        configs[label] = cfg
    return configs


def measure_warmed(target: Target, server_warmup: float, **kwargs) -> list:
    """Return measure's LevelResults after `server_warmup` s of unmeasured load at the highest concurrency.

    A fresh server is slow at first (TorchServe's JIT needs 10–15 s); measure's keyword arguments apply.
    """
    _warm(target, server_warmup, kwargs)
    return measure(target, **kwargs)


def _warm(target: Target, seconds: float, kwargs: Mapping) -> None:
    """Load target for `seconds` at the highest concurrency of measure's keyword arguments, unmeasured; returns None."""
    if seconds > 0:
        top = max(kwargs.get("concurrency", DEFAULT_CONCURRENCY))
        timeouts = {k: v for k, v in kwargs.items() if k in ("request_timeout", "timeout")}
        measure(target, (top,), duration=seconds, warmup=0.0, progress=False, **timeouts)


def bench_run_dir(
    run_dir: str | os.PathLike,
    configs: Mapping[str, object],
    name: str = "bench",
    handlers: Mapping[str, str | os.PathLike] | None = None,
    access_log: bool = False,
    workdir: str | os.PathLike | None = None,
    server_config: str | os.PathLike | None = None,
    server_warmup: float = 10.0,
    rounds: int = 1,
    **kwargs,
) -> BenchReport:
    """Return the report of one run directory served under each {label: ServingConfig}.

    For each configuration: package the run directory (with handlers[label] instead of our handler when given),
    start TorchServe on free loopback ports in a private home, wait for READY, measure, stop. measure's keyword
    arguments apply (concurrency, duration, warmup, processes, ...). Before the first level, each new server gets
    `server_warmup` seconds of load at the highest concurrency (not measured): TorchServe's JIT needs 10–15 s.
    rounds = 1: one server after another. rounds > 1: every server is started first, then each level is measured
    `rounds` times with the servers taking turns, so that a slow spell of a shared host falls on all of them alike;
    each level's result is its round of median throughput, and the report's settings keep every round's req/s.
    """
    from .. import serving as server
    from ..archive import package
    from ..card import read_card

    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise InputError(f"rounds: {rounds!r} must be an integer ≥ 1")
    card = read_card(run_dir)
    body = kwargs.pop("body", None) or card_body(card)
    handlers = dict(handlers or {})
    results, by_round = [], {}
    with tempfile.TemporaryDirectory(prefix="aiaas-bench-", dir=workdir) as root, contextlib.ExitStack() as running:
        started = {}  # label → (Target, TorchServe pid, seconds to READY)
        for i, (label, serving) in enumerate(configs.items()):
            store, home = Path(root) / f"c{i}" / "store", Path(root) / f"c{i}" / "home"
            if label in handlers:
                mar = package_with_handler(run_dir, name, store, serving, handlers[label])
            else:
                mar = package(run_dir, name, "1.0", store, serving=serving)
            t0 = time.perf_counter()
            info = server.start_server(home, store, {name: mar.path.name}, free_ports=True, config=server_config,
                                ready_timeout=180, access_log=access_log)  # fmt: skip
            stop = running.enter_context(contextlib.ExitStack())
            stop.callback(server.stop, home)
            started[label] = (served_target(home, name, body), info.pid, round(time.perf_counter() - t0, 2))
            if rounds == 1:  # measure it now, stop it, then start the next
                levels = measure_warmed(started[label][0], server_warmup, server_pids=[info.pid], label=label, **kwargs)
                stop.close()
                results.append(_config_result(label, levels, serving, started[label][2], handlers))
        if rounds > 1:
            for target, _, _ in started.values():
                _warm(target, server_warmup, kwargs)
            levels = [int(c) for c in kwargs.pop("concurrency", DEFAULT_CONCURRENCY)]
            got = {label: {c: [] for c in levels} for label in configs}
            for _ in range(rounds):
                for c in levels:
                    for label, (target, pid, _) in started.items():
                        got[label][c] += measure(target, (c,), server_pids=[pid], label=label, **kwargs)
            for label, serving in configs.items():
                median = [sorted(got[label][c], key=lambda lv: lv.rps)[(rounds - 1) // 2] for c in levels]
                results.append(_config_result(label, median, serving, started[label][2], handlers))
                by_round[label] = {str(c): [round(lv.rps) for lv in got[label][c]] for c in levels}
            kwargs["concurrency"] = levels
    settings = {**_settings(kwargs), "run_dir": str(run_dir), "server_warmup_s": server_warmup, "rounds": rounds}
    if by_round:
        settings["req_per_s_by_round"] = by_round
    return BenchReport(machine_info(), settings, results)


def _config_result(label: str, levels: list, serving, ready: float, handlers: Mapping) -> ConfigResult:
    """Return the ConfigResult of one served configuration (noting the handler file when it is not ours)."""
    return ConfigResult(label, levels, asdict(serving), ready, note=f"handler {Path(handlers[label]).name}" if label in handlers else "")
