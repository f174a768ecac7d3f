"""Is an instance ready: its workers READY and its ports bound, or why not, read from its logs.

Readiness comes from the management API, not /ping: /ping says Healthy while workers crash-loop. The logs under
HOME/logs are appended across runs of the same home, so every scan reads only what this start wrote (the sizes
recorded in ServerInfo.log_offsets).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import httpx
import psutil

from ..handlers.aiaas_contract import some_of
from ..handlers.integrity import REFUSAL_MARK
from .httpclient import PROBE_S, http_client
from .errors import TorchServeError
from .home import ServerInfo
from .management import models_snapshot
from .pids import inet_connections, is_alive

_POLL_S = 0.25
_SCANNED_LOGS = ("console.log", "ts_log.log", "model_log.log")  # appended across runs of the same home


def wait_until_ready(
    info: ServerInfo, models: Iterable[str] | None = None, timeout: float = 120.0
) -> dict[str, list[dict]]:
    """Return the models snapshot once every (or every named) model has minWorkers READY workers.

    Raises TorchServeError when the process dies or the timeout passes, with the last lines of the logs.
    """
    return wait_ready(info, models, time.monotonic() + timeout, timeout)


def wait_ready(
    info: ServerInfo, models: Iterable[str] | None, deadline: float, timeout: float
) -> dict[str, list[dict]]:
    """Return the models snapshot once ready; raise TorchServeError at the deadline (reported as `timeout` s)."""
    expected = list(models) if models is not None else None
    last: dict[str, list[dict]] = {}
    problem = "management API not answering yet"
    with http_client(PROBE_S) as client:
        while True:
            if not is_alive(info.pid, info.create_time):
                reason = death_reason(info.home, info.log_offsets)
                raise TorchServeError(
                    f"TorchServe (pid {info.pid}) died" + (f": {reason}" if reason else "") + "\n"
                    + log_report(info.home, ["console.log", "ts_log.log"], info.log_offsets)
                )
            try:
                last = models_snapshot(client, info)
                unbound = unbound_ports(info)
                if _all_ready(last, expected) and not unbound:
                    return last
                problem = f"ports not bound yet: {unbound}" if unbound else f"workers not READY: {last}"
            except (httpx.HTTPError, TorchServeError, ValueError) as e:
                problem = f"management API: {e}"
            refusal = refusal_since(info.home, info.log_offsets)
            if refusal:  # an integrity refusal is final: restarting workers cannot change a file
                raise TorchServeError(f"{refusal}\n" + log_report(info.home, ["model_log.log"], info.log_offsets))
            if time.monotonic() >= deadline:
                missing = [n for n in expected or [] if n not in last]
                error = load_error_since(info.home, info.log_offsets)
                raise TorchServeError(
                    f"TorchServe models not ready within {timeout:g} s"
                    + (f"; last worker error: {error}" if error else "")
                    + f" ({problem}"
                    + (f"; not registered: {missing}" if missing else "")
                    + ")\n"
                    + log_report(info.home, ["model_log.log", "ts_log.log"], info.log_offsets)
                )
            time.sleep(_POLL_S)


def _all_ready(models: Mapping[str, list[dict]], expected: Iterable[str] | None) -> bool:
    """Return True when every expected model is registered and each version has minWorkers READY workers."""
    if expected is not None and any(name not in models for name in expected):
        return False
    return all(versions_ready(versions) for versions in models.values())


def versions_ready(versions: list[dict]) -> bool:
    """Return True when the snapshot's versions are not none and each has at least max(1, minWorkers) READY workers."""
    return bool(versions) and all(version_ready(v) for v in versions)


def version_ready(version: dict) -> bool:
    """Return True when one snapshot version has at least max(1, minWorkers) READY workers."""
    return sum(w["status"] == "READY" for w in version["workers"]) >= max(1, version["minWorkers"])


def unbound_ports(info: ServerInfo) -> list[int]:
    """Return the instance's ports that its Java process does not listen on (yet).

    TorchServe loads models before it binds its HTTP and gRPC ports, and dies seconds later when one is taken:
    READY workers alone do not prove that the server will stay up.
    """
    if not info.listen_ports:
        return []
    try:
        conns = inet_connections(psutil.Process(info.pid))
    except psutil.AccessDenied:
        return []
    except psutil.Error:
        return list(info.listen_ports)
    bound = {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}
    return [p for p in info.listen_ports if p not in bound]


# --------------------------------------------------------------------------------------------- log scraping


def log_sizes(logs: Path) -> dict[str, int]:
    """Return {log file name: size in bytes} of the logs a start reads, so that only later lines count."""
    sizes = {}
    for name in _SCANNED_LOGS:
        try:
            sizes[name] = (logs / name).stat().st_size
        except FileNotFoundError:
            sizes[name] = 0
    return sizes


def _tail(path: Path, lines: int = 30, since: int = 0) -> str:
    """Return the last lines of a text file written after byte `since`, or a note that it is missing.

    A file shorter than `since` was rotated since: all of it is new.
    """
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(since if since <= end else 0, end - 64 * lines * 4))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return f"(no {path.name})"
    return "\n".join(text.splitlines()[-lines:])


def log_report(home: Path, names: Sequence[str], since: Mapping[str, int], lines: int = 30) -> str:
    """Return the last lines the named logs under HOME/logs got since this start, each under a header."""
    return "\n".join(
        f"--- last lines of {home / 'logs' / n} (this start):\n{_tail(home / 'logs' / n, lines, since.get(n, 0))}" for n in names
    )


def death_reason(home: Path, since: Mapping[str, int]) -> str:
    """Return the telling lines TorchServe logged before dying (bind failure, already running, ...), or ''."""
    marks = ("Failed to bind", "Address already in use", "already running", "not found", "Invalid")
    found: list[str] = []
    for name in ("console.log", "ts_log.log"):
        for line in _tail(home / "logs" / name, 200, since.get(name, 0)).splitlines():
            line = line.strip()
            if any(m in line for m in marks) and line not in found:
                found.append(line)
    return some_of(found, 3, sep="; ")


def refusal_since(home: Path, since: Mapping[str, int], thread: str = "") -> str:
    """Return the handler's "refusing to load" line (a model file's hash mismatch) written since this start, or ''.

    thread: only lines of worker threads whose name holds this (TorchServe names them W-PORT-NAME_VERSION-stdout).
    """
    for line in reversed(_tail(home / "logs" / "model_log.log", 400, since.get("model_log.log", 0)).splitlines()):
        if REFUSAL_MARK in line and thread in line.split(" MODEL_LOG - ", 1)[0]:  # logged by handlers/tabular_handler.py
            return line[line.index(REFUSAL_MARK):].strip()
    return ""


def load_error_since(home: Path, since: Mapping[str, int], thread: str = "") -> str:
    """Return the last exception line a worker (of `thread`, as in refusal_since) wrote to model_log.log since, or ''."""
    for line in reversed(_tail(home / "logs" / "model_log.log", 400, since.get("model_log.log", 0)).splitlines()):
        prefix, sep, text = line.partition("MODEL_LOG - ")
        if not sep:
            prefix, text = "", line
        if thread not in prefix:
            continue
        text = text.strip()
        head, _, rest = text.partition(":")
        # Skip TorchServe's own wrapper ("RuntimeError: 500 - Unknown exception") for the handler's cause.
        if head.endswith(("Error", "Exception")) and " " not in head and not re.match(r"\s*\d{3} - ", rest):
            return text
    return ""
