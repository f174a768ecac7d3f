"""TorchServe process control: write an instance's config, start it, wait until its workers are READY, stop it.

Each instance lives in its own home directory (default ``.aiaas``)::

    HOME/config.properties   effective TorchServe config (base config + per-instance overrides)
    HOME/log4j2.xml          quiet log config (INFO, access log off unless asked)
    HOME/key_file.json       token keys, written by TorchServe into its working directory (= HOME)
    HOME/logs/               console.log, ts_log.log, model_log.log, ...
    HOME/tmp/                TMPDIR (TorchServe's pid file) and Java's tmpdir (worker sockets, unpacked models); 0700
    HOME/store/              checked copies of the archives being served (TorchServe's model store); 0700
    HOME/server.json         ServerInfo of the running instance, read by stop(), status() and the client

Separate homes make instances independent: TorchServe allows one instance per TMPDIR and writes its key file
into its working directory. We never call ``torchserve --stop``: it stops whichever instance the pid file in
``$TMPDIR`` names and deletes ``key_file.json`` in the caller's directory; we signal our own pid instead.

Archives are checked here, by the installed package, before TorchServe starts (`archive.verify_archive`: every
member against the card, and the card's signature when $AIAAS_SIGNING_KEY is set); TorchServe then loads the
checked copies in HOME/store. The signing key never reaches TorchServe or its workers, which run archive code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import httpx
import psutil

from .errors import InputError
from .handlers.aiaas_contract import REFUSAL_MARK, file_name_problem

__all__ = [
    "TorchServeError",
    "ServerArgumentError",
    "ServerInfo",
    "Ports",
    "DEFAULT_PORTS",
    "DEFAULT_CONFIG",
    "find_java",
    "find_torchserve",
    "start",
    "wait_until_ready",
    "stop",
    "status",
    "read_keys",
    "load_info",
    "scale",
    "set_default",
]

JAVA_INSTALL_HINT = "install it with `apt-get install openjdk-17-jre-headless` (or set JAVA_HOME to a JDK/JRE 11+)"
_MODEL_SERVER_CLASS = "org.pytorch.serve.ModelServer"
_INFO_FILE = "server.json"
_KEY_FILE = "key_file.json"
_CHECKED_STORE = "store"  # HOME/store: the checked copies TorchServe loads
_POLL_S = 0.25
_SCANNED_LOGS = ("console.log", "ts_log.log", "model_log.log")  # appended across runs of the same home

# Built-in base config, identical in effect to the repository's config.properties (a test checks this).
DEFAULT_CONFIG = """\
inference_address=http://127.0.0.1:8080
management_address=http://127.0.0.1:8081
metrics_address=http://127.0.0.1:8082
grpc_inference_address=127.0.0.1
grpc_management_address=127.0.0.1
grpc_inference_port=7070
grpc_management_port=7071
disable_token_authorization=false
enable_model_api=false
allowed_urls=file://.*
install_py_dep_per_model=false
enable_envvars_config=false
use_env_allowed_urls=false
metrics_mode=prometheus
disable_system_metrics=true
default_workers_per_model=1
default_response_timeout=120
default_startup_timeout=120
model_store=model_store
"""

# Quiet log4j2 config: TorchServe's bundled one logs org.pytorch.serve at DEBUG (~30 lines per request).
_LOG4J2_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by aiaas_torch.server: INFO logs, access log {access_state}, console gets warnings only. -->
<Configuration>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="%d{{ISO8601}} [%-5p] %t %c - %m%n"/>
    </Console>
{appenders}
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="{access_level}" additivity="false"><AppenderRef ref="access_log"/></Logger>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Logger name="MODEL_LOG" level="info" additivity="false">
      <!-- The worker prints this once per batch (thousands of lines a second under load). -->
      <RegexFilter regex="Backend received inference at.*" onMatch="DENY" onMismatch="NEUTRAL"/>
      <AppenderRef ref="model_log"/>
    </Logger>
    <Logger name="MODEL_METRICS" level="info" additivity="false"><AppenderRef ref="model_metrics"/></Logger>
    <Logger name="TS_METRICS" level="info" additivity="false"><AppenderRef ref="ts_metrics"/></Logger>
    <!-- Per-request INFO chatter ("Sending response for jobId", worker metric echo lines). -->
    <Logger name="org.pytorch.serve.wlm.BatchAggregator" level="warn"/>
    <Logger name="org.pytorch.serve.wlm.WorkerLifeCycle" level="warn"/>
    <Logger name="org.pytorch.serve.wlm.WorkerThread" level="warn"/><!-- "Backend response time", per batch -->
    <Logger name="org.pytorch.serve" level="info" additivity="false">
      <AppenderRef ref="ts_log"/>
      <AppenderRef ref="STDOUT" level="warn"/>
    </Logger>
    <Root level="warn">
      <AppenderRef ref="STDOUT"/>
      <AppenderRef ref="ts_log"/>
    </Root>
  </Loggers>
</Configuration>
"""
_ROLLING_FILE = """\
    <RollingFile name="{name}" fileName="${{env:LOG_LOCATION:-logs}}/{name}.log"
                 filePattern="${{env:LOG_LOCATION:-logs}}/{name}.%d{{dd-MMM}}.log.gz">
      <PatternLayout pattern="{pattern}"/>
      <Policies><SizeBasedTriggeringPolicy size="100 MB"/><TimeBasedTriggeringPolicy/></Policies>
      <DefaultRolloverStrategy max="5"/>
    </RollingFile>"""


class TorchServeError(RuntimeError):
    """TorchServe could not be found, started, made ready, or reached; the message says why."""


class ServerArgumentError(TorchServeError, InputError):
    """A bad argument to start (no such store, archive or config file), found before anything was started."""


@dataclass(frozen=True)
class Ports:
    """The TCP ports of one TorchServe instance (worker 'ports' are Unix socket names under HOME/tmp)."""

    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071
    initial_worker: int = 9000

    def tcp(self) -> dict[str, int]:
        """Return {setting name: port} for every TCP port the instance listens on."""
        return {
            "inference": self.inference,
            "management": self.management,
            "metrics": self.metrics,
            "grpc_inference": self.grpc_inference,
            "grpc_management": self.grpc_management,
        }


DEFAULT_PORTS = Ports()


@dataclass
class ServerInfo:
    """A started TorchServe instance, persisted as HOME/server.json."""

    home: Path
    pid: int  # the Java ModelServer process
    inference_url: str
    management_url: str
    metrics_url: str
    key_file: Path
    model_store: Path
    pgid: int = 0  # process group of the launcher, Java and its workers (start_new_session)
    create_time: float = 0.0  # of the Java process; guards against a recycled pid
    listen_ports: tuple[int, ...] = ()  # every TCP port the instance must hold (HTTP and gRPC)
    log_offsets: dict[str, int] = field(default_factory=dict)  # log sizes at start: older lines are another run's

    def to_json(self) -> str:
        """Return this info as a JSON document."""
        data = asdict(self)
        for key in ("home", "key_file", "model_store"):
            data[key] = str(data[key])
        data["listen_ports"] = list(self.listen_ports)
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ServerInfo":
        """Return the ServerInfo stored in a JSON document."""
        data = json.loads(text)
        for key in ("home", "key_file", "model_store"):
            data[key] = Path(data[key])
        data["listen_ports"] = tuple(data.get("listen_ports", ()))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


# Launchers started by this process, kept so stop() can reap them (no zombie left behind).
_launchers: dict[int, subprocess.Popen] = {}


# --------------------------------------------------------------------------------------------- executables


def find_java() -> str:
    """Return the path of the java executable TorchServe will use (JAVA_HOME first, then PATH)."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        java = Path(java_home) / "bin" / "java"
        if java.is_file() and os.access(java, os.X_OK):
            return str(java)
        raise TorchServeError(f"JAVA_HOME={java_home} has no bin/java; fix JAVA_HOME or unset it, or {JAVA_INSTALL_HINT}")
    java = shutil.which("java")
    if java is None:
        raise TorchServeError(f"TorchServe needs Java 11+ and no `java` is on PATH; {JAVA_INSTALL_HINT}")
    return java


def find_torchserve() -> str:
    """Return the path of the torchserve launcher, preferring the one beside this Python interpreter."""
    local = Path(sys.executable).parent / "torchserve"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("torchserve")
    if found is None:
        raise TorchServeError("the `torchserve` command was not found; install it with `pip install torchserve==0.12.0`")
    return found


# --------------------------------------------------------------------------------------------- config


def _parse_properties(text: str) -> dict[str, str]:
    """Return key → value of a Java properties text (``key=value`` or ``key: value``; # and ! comments)."""
    props: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        if cut < 0:
            key, value = line, ""
        else:
            key, value = line[:cut].strip(), line[cut + 1 :].strip()
        props[key] = value
    return props


def _base_config(config: str | os.PathLike | None) -> tuple[dict[str, str], str]:
    """Return the base properties and where they came from."""
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise ServerArgumentError(f"config file not found: {path}")
        return _parse_properties(path.read_text()), str(path.resolve())
    local = Path("config.properties")
    if local.is_file():
        return _parse_properties(local.read_text()), str(local.resolve())
    return _parse_properties(DEFAULT_CONFIG), "built-in defaults"


def _metrics_config() -> Path:
    """Return the absolute path of the packaged metrics.yaml (aiaas_torch.handlers)."""
    import aiaas_torch.handlers as handlers

    path = Path(handlers.__file__).resolve().parent / "metrics.yaml"
    if not path.is_file():
        raise TorchServeError(f"metrics config missing from the installed package: {path}")
    return path


# The security settings every instance runs with, whatever the base config says (a change gets a warning).
SECURITY_SETTINGS = {
    "disable_token_authorization": "false",  # token auth on
    "enable_model_api": "false",  # no registering or unregistering models over HTTP
    "allowed_urls": "file://.*",  # were the model API on: local archives only
    "install_py_dep_per_model": "false",  # no pip installs of a model's requirements at load time
    "enable_envvars_config": "false",  # TS_* environment variables cannot override this config
    "use_env_allowed_urls": "false",  # nor can TS_ALLOWED_URLS
}
# Settings that put code or flags into the Java frontend (plugin jars on its classpath, JVM flags) or make it run a
# command: dropped from a base config unless the caller trusts them by name (`--trust-config-key`).
TRUSTABLE_KEYS = ("plugins_path", "vmargs", "system_metrics_cmd")
# Environment variables TorchServe reads even with enable_envvars_config=false, and the JVM's own flag variables.
_UNTRUSTED_ENV = ("TS_CONFIG_FILE", "TS_OPEN_INFERENCE_PROTOCOL", "TS_MODEL_SERVER_HOME",
                  "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS")  # fmt: skip


class SecuritySettingWarning(UserWarning):
    """A config or environment tried to change a setting that `start` forces; the message names the key."""


def _effective_config(
    base: Mapping[str, str], ports: Ports, model_store: Path, trusted_keys: Iterable[str] = ()
) -> dict[str, str]:
    """Return the base properties with this instance's addresses, paths and the security settings forced.

    Warns (SecuritySettingWarning) for every forced setting the base config sets otherwise and for every dropped
    key that `trusted_keys` does not name.
    """
    from .archive import SIGNING_KEY_ENV  # here, not at module top: `archive` imports torch, status/stop need none

    props = dict(base)
    addresses = {
        "inference_address": f"http://127.0.0.1:{ports.inference}",
        "management_address": f"http://127.0.0.1:{ports.management}",
        "metrics_address": f"http://127.0.0.1:{ports.metrics}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
    }
    for key, value in {**addresses, **SECURITY_SETTINGS}.items():
        given = props.get(key)
        if given is not None and not _same_setting(key, given, value):
            warnings.warn(f"config sets {key}={given}; aiaas serve forces {key}={value}", SecuritySettingWarning, 3)
    props.update(addresses)
    props.update(SECURITY_SETTINGS)
    props.update(
        {
            "grpc_inference_port": str(ports.grpc_inference),
            "grpc_management_port": str(ports.grpc_management),
            "initial_worker_port": str(ports.initial_worker),
            "metrics_config": str(_metrics_config()),
            "model_store": str(model_store),
            "metrics_mode": "prometheus",
        }
    )
    # Workers run code from the archives: the signing key must never reach them, even where a caller's environment
    # holds it (TorchServe gives each worker its own environment minus the names this pattern matches whole).
    hidden = base.get("blacklist_env_vars", "")
    props["blacklist_env_vars"] = f"(?:{hidden})|{SIGNING_KEY_ENV}" if hidden else SIGNING_KEY_ENV
    # These would be passed to the launcher/JVM: our log config and our own store/model list win.
    for key in ("load_models", "model_snapshot"):
        props.pop(key, None)
    trusted = set(trusted_keys)
    for key in TRUSTABLE_KEYS:
        if key in props and key not in trusted:
            warnings.warn(
                f"config sets {key}={props.pop(key)}; ignored (it changes the Java frontend's code, flags or commands): "
                f"pass --trust-config-key {key} to keep it",
                SecuritySettingWarning, 3,
            )  # fmt: skip
    return props


def _same_setting(key: str, given: str, forced: str) -> bool:
    """Return True when a config value means the forced one (booleans case-insensitively, addresses by host)."""
    if forced in ("true", "false"):
        return given.strip().lower() == forced
    if key.endswith("_address") and forced.startswith("http://"):
        return given.strip().startswith("http://127.0.0.1:")
    return given.strip() == forced


def _launcher_env(logs: Path, tmp: Path) -> dict[str, str]:
    """Return the environment for the torchserve launcher: ours, minus the signing key and what would override the
    forced settings, plus the instance's paths."""
    from .archive import SIGNING_KEY_ENV  # here, not at module top: `archive` imports torch, status/stop need none

    env = dict(os.environ)
    env.pop(SIGNING_KEY_ENV, None)  # archives were checked already; nothing TorchServe runs may see the key
    for name in _UNTRUSTED_ENV:
        if env.pop(name, None) is not None and name != "TS_CONFIG_FILE":
            warnings.warn(f"${name} is set; not passed to TorchServe (aiaas serve forces its settings)", SecuritySettingWarning, 3)
    env.update(
        {
            "LOG_LOCATION": str(logs),
            "METRICS_LOCATION": str(logs),
            "TMPDIR": str(tmp),  # the launcher's pid file: one instance per TMPDIR
            "TEMP": str(tmp),  # Java's tmpdir: worker sockets and unpacked archives
        }
    )
    return env


def _write_text_atomic(path: Path, text: str) -> None:
    """Write text to path via a temp file in the same directory and os.replace."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _log4j_config(access_log: bool) -> str:
    """Return the quiet log4j2 XML (access log at INFO only when asked)."""
    plain, full = "%d{ISO8601} - %m%n", "%d{ISO8601} [%-5p] %t %c - %m%n"
    appenders = "\n".join(
        _ROLLING_FILE.format(name=name, pattern=pattern).replace(
            "env:LOG_LOCATION", "env:METRICS_LOCATION" if name.endswith("metrics") else "env:LOG_LOCATION"
        )
        for name, pattern in [
            ("access_log", plain),
            ("model_log", full),
            ("model_metrics", plain),
            ("ts_log", full),
            ("ts_metrics", plain),
        ]
    )
    return _LOG4J2_XML.format(
        appenders=appenders,
        access_level="info" if access_log else "off",
        access_state="on" if access_log else "off",
    )


# --------------------------------------------------------------------------------------------- ports


def _free_ports(count: int) -> list[int]:
    """Return `count` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pick_ports(free_ports: bool) -> Ports:
    """Return the default ports, or free ones chosen now."""
    if not free_ports:
        return DEFAULT_PORTS
    inference, management, metrics, grpc_inference, grpc_management, worker = _free_ports(6)
    # Worker "ports" only name Unix sockets under HOME/tmp, so any base is private to this home.
    return Ports(inference, management, metrics, grpc_inference, grpc_management, worker)


def _check_ports_free(ports: Ports) -> None:
    """Raise TorchServeError naming the first port on 127.0.0.1 that something else already holds."""
    for name, port in ports.tcp().items():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Netty does: TIME_WAIT is no clash
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise TorchServeError(
                f"port {port} on 127.0.0.1 ({name}) is already in use ({e.strerror}); stop what holds it, "
                f"or start with free_ports=True"
            ) from None
        finally:
            s.close()


# --------------------------------------------------------------------------------------------- files & logs


def _info_path(home: Path) -> Path:
    """Return the path of HOME/server.json."""
    return home / _INFO_FILE


def load_info(home: str | os.PathLike = ".aiaas") -> ServerInfo | None:
    """Return the ServerInfo recorded in HOME/server.json, or None when there is none."""
    path = _info_path(Path(home))
    try:
        return ServerInfo.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError) as e:
        raise TorchServeError(f"{path} is unreadable ({e}); delete it if no server runs") from None


def read_keys(home: str | os.PathLike = ".aiaas") -> dict[str, str]:
    """Return {"management", "inference", "api"} keys from HOME/key_file.json (a key file path also works)."""
    path = Path(home)
    if path.is_dir():
        path = path / _KEY_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TorchServeError(f"no TorchServe key file at {path}; is the server running with token auth?") from None
    except ValueError as e:
        raise TorchServeError(f"TorchServe key file {path} is not JSON ({e})") from None
    try:
        return {
            "management": data["management"]["key"],
            "inference": data["inference"]["key"],
            "api": data["API"]["key"],
        }
    except (KeyError, TypeError):
        raise TorchServeError(f"unexpected key file layout in {path}: {sorted(data)}") from None


def _log_sizes(logs: Path) -> dict[str, int]:
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


def _log_report(home: Path, names: Sequence[str], since: Mapping[str, int], lines: int = 30) -> str:
    """Return the last lines the named logs under HOME/logs got since this start, each under a header."""
    return "\n".join(
        f"--- last lines of {home / 'logs' / n} (this start):\n{_tail(home / 'logs' / n, lines, since.get(n, 0))}" for n in names
    )


def _death_reason(home: Path, since: Mapping[str, int]) -> str:
    """Return the telling lines TorchServe logged before dying (bind failure, already running, ...), or ''."""
    marks = ("Failed to bind", "Address already in use", "already running", "not found", "Invalid")
    found: list[str] = []
    for name in ("console.log", "ts_log.log"):
        for line in _tail(home / "logs" / name, 200, since.get(name, 0)).splitlines():
            line = line.strip()
            if any(m in line for m in marks) and line not in found:
                found.append(line)
    return "; ".join(found[:3])


def _refusal(home: Path, since: Mapping[str, int]) -> str:
    """Return the handler's "refusing to load" line (a model file's hash mismatch) written since this start, or ''."""
    for line in reversed(_tail(home / "logs" / "model_log.log", 400, since.get("model_log.log", 0)).splitlines()):
        if REFUSAL_MARK in line:  # logged by handlers/tabular_handler.py
            return line[line.index(REFUSAL_MARK):].strip()
    return ""


def _load_error(home: Path, since: Mapping[str, int]) -> str:
    """Return the last exception line a worker wrote to model_log.log since this start (e.g. an import error), or ''."""
    for line in reversed(_tail(home / "logs" / "model_log.log", 400, since.get("model_log.log", 0)).splitlines()):
        text = line.split("MODEL_LOG - ", 1)[-1].strip()
        head, _, rest = text.partition(":")
        # Skip TorchServe's own wrapper ("RuntimeError: 500 - Unknown exception") for the handler's cause.
        if head.endswith(("Error", "Exception")) and " " not in head and not re.match(r"\s*\d{3} - ", rest):
            return text
    return ""


# --------------------------------------------------------------------------------------------- processes


def _is_alive(pid: int, create_time: float = 0.0) -> bool:
    """Return True when pid is a live (non-zombie) TorchServe Java process, same one if create_time given."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if create_time and abs(proc.create_time() - create_time) > 1.0:
            return False
        return _MODEL_SERVER_CLASS in proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _find_java_child(launcher: subprocess.Popen, home: Path, since: Mapping[str, int], timeout: float = 30.0) -> psutil.Process:
    """Return the Java ModelServer process the torchserve launcher started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for child in psutil.Process(launcher.pid).children():
                try:
                    if _MODEL_SERVER_CLASS in child.cmdline():
                        return child
                except (psutil.NoSuchProcess, psutil.ZombieProcess):
                    continue
        except psutil.NoSuchProcess:
            pass
        if launcher.poll() is not None:
            reason = _death_reason(home, since)
            raise TorchServeError(
                f"torchserve exited (code {launcher.returncode}) before starting Java"
                + (f": {reason}" if reason else "")
                + "\n"
                + _log_report(home, ["console.log"], since)
            )
        time.sleep(0.05)
    raise TorchServeError(f"torchserve started no Java process within {timeout:.0f} s\n" + _log_report(home, ["console.log"], since))


def _group_members(pgid: int) -> list[psutil.Process]:
    """Return the live processes of process group pgid."""
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of a TorchServe process group (launcher, stuck workers) and wait for it."""
    if pgid <= 1 or pgid == os.getpgid(0):
        return
    leftovers = []
    for proc in _group_members(pgid):
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        # Only TorchServe's own processes, in case the group id was recycled.
        if any(mark in cmdline for mark in ("torchserve", "model_service_worker", _MODEL_SERVER_CLASS)):
            leftovers.append(proc)
    for proc in leftovers:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(leftovers, timeout=5.0)


def _wait_exited(pid: int, timeout: float) -> None:
    """Wait up to timeout for pid to exit (a zombie counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.Error:
            return
        time.sleep(0.05)


def _unbound_ports(info: ServerInfo) -> list[int]:
    """Return the instance's ports that its Java process does not listen on (yet).

    TorchServe loads models before it binds its HTTP and gRPC ports, and dies seconds later when one is taken:
    READY workers alone do not prove that the server will stay up.
    """
    if not info.listen_ports:
        return []
    try:
        conns = psutil.Process(info.pid).net_connections("inet")
    except psutil.AccessDenied:
        return []
    except psutil.Error:
        return list(info.listen_ports)
    bound = {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}
    return [p for p in info.listen_ports if p not in bound]


def _wait_gone(pid: int, create_time: float, timeout: float) -> bool:
    """Return True once the Java process is gone (or a zombie), False if still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_alive(pid, create_time):
            return True
        time.sleep(0.05)
    return not _is_alive(pid, create_time)


def _terminate(info: ServerInfo, timeout: float) -> None:
    """Stop the Java process (SIGTERM, SIGKILL after timeout), its workers and the launcher."""
    if _is_alive(info.pid, info.create_time):
        try:
            os.kill(info.pid, signal.SIGTERM)  # Java's shutdown hook stops the Python workers
        except ProcessLookupError:
            pass
        if not _wait_gone(info.pid, info.create_time, timeout):
            try:
                os.kill(info.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone(info.pid, info.create_time, 5.0)
    # The launcher (`torchserve --foreground`) reaps Java and then exits: let it, or Java stays a zombie.
    launcher = _launchers.pop(info.pid, None)
    if launcher is not None:
        try:
            launcher.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
    else:
        _wait_exited(info.pgid, 5.0)
    _kill_group(info.pgid)  # a stuck worker, or a launcher that did not exit
    if launcher is not None:
        launcher.wait()


# --------------------------------------------------------------------------------------------- management API


def _mgmt_call(
    client: httpx.Client, info: ServerInfo, method: str, path: str, params: Mapping[str, str] | None = None
) -> httpx.Response:
    """Return the response to METHOD management_url + path with the current management key.

    The management key expires (token_expiration_min, 60 by default): on InvalidKeyException ask the token
    API (with the API key, which does not expire) for a new one, which TorchServe writes into the key file,
    and try once more.
    """
    def send() -> httpx.Response:
        key = read_keys(info.home)["management"]
        return client.request(method, info.management_url + path, params=params, headers={"Authorization": f"Bearer {key}"})

    r = send()
    if r.status_code == 400 and "InvalidKeyException" in r.text:
        api = read_keys(info.home)["api"]
        renew = client.get(info.management_url + "/token", params={"type": "management"}, headers={"Authorization": f"Bearer {api}"})
        if renew.status_code < 400:
            r = send()
    return r


def _mgmt_get(client: httpx.Client, info: ServerInfo, path: str) -> httpx.Response:
    """Return the response to GET management_url + path, with the current management key."""
    return _mgmt_call(client, info, "GET", path)


def _models_snapshot(client: httpx.Client, info: ServerInfo) -> dict[str, list[dict]]:
    """Return {model name: [{version, minWorkers, maxWorkers, workers: [{id, pid, status}]}]} from the API."""
    names: list[str] = []
    token = None
    while True:
        page = _mgmt_get(client, info, "/models?limit=100" + (f"&next_page_token={token}" if token else ""))
        page.raise_for_status()
        body = page.json()
        names += [m["modelName"] for m in body.get("models", [])]
        token = body.get("nextPageToken")
        if not token:
            break
    models: dict[str, list[dict]] = {}
    for name in names:
        r = _mgmt_get(client, info, f"/models/{name}/all")
        r.raise_for_status()
        models[name] = [
            {
                "version": v.get("modelVersion"),
                "minWorkers": v.get("minWorkers", 0),
                "maxWorkers": v.get("maxWorkers", 0),
                "workers": [{"id": w.get("id"), "pid": w.get("pid"), "status": w.get("status")} for w in v.get("workers", [])],
            }
            for v in r.json()
        ]
    return models


def _all_ready(models: Mapping[str, list[dict]], expected: Iterable[str] | None) -> bool:
    """Return True when every expected model is registered and each version has minWorkers READY workers."""
    if expected is not None and any(name not in models for name in expected):
        return False
    for versions in models.values():
        for v in versions:
            ready = sum(1 for w in v["workers"] if w["status"] == "READY")
            if ready < max(1, v["minWorkers"]):
                return False
    return True


def wait_until_ready(
    info: ServerInfo, models: Iterable[str] | None = None, timeout: float = 120.0
) -> dict[str, list[dict]]:
    """Return the models snapshot once every (or every named) model has minWorkers READY workers.

    Readiness comes from the management API, not /ping: /ping says Healthy while workers crash-loop.
    Raises TorchServeError when the process dies or the timeout passes, with the last lines of the logs.
    """
    return _wait_ready(info, models, time.monotonic() + timeout, timeout)


def _wait_ready(
    info: ServerInfo, models: Iterable[str] | None, deadline: float, timeout: float
) -> dict[str, list[dict]]:
    """Return the models snapshot once ready; raise TorchServeError at the deadline (reported as `timeout` s)."""
    expected = list(models) if models is not None else None
    last: dict[str, list[dict]] = {}
    problem = "management API not answering yet"
    with httpx.Client(timeout=httpx.Timeout(5.0), trust_env=False) as client:
        while True:
            if not _is_alive(info.pid, info.create_time):
                reason = _death_reason(info.home, info.log_offsets)
                raise TorchServeError(
                    f"TorchServe (pid {info.pid}) died" + (f": {reason}" if reason else "") + "\n"
                    + _log_report(info.home, ["console.log", "ts_log.log"], info.log_offsets)
                )
            try:
                last = _models_snapshot(client, info)
                unbound = _unbound_ports(info)
                if _all_ready(last, expected) and not unbound:
                    return last
                problem = f"ports not bound yet: {unbound}" if unbound else f"workers not READY: {last}"
            except (httpx.HTTPError, TorchServeError, ValueError) as e:
                problem = f"management API: {e}"
            refusal = _refusal(info.home, info.log_offsets)
            if refusal:  # an integrity refusal is final: restarting workers cannot change a file
                raise TorchServeError(f"{refusal}\n" + _log_report(info.home, ["model_log.log"], info.log_offsets))
            if time.monotonic() >= deadline:
                missing = [n for n in expected or [] if n not in last]
                error = _load_error(info.home, info.log_offsets)
                raise TorchServeError(
                    f"TorchServe models not ready within {timeout:g} s"
                    + (f"; last worker error: {error}" if error else "")
                    + f" ({problem}"
                    + (f"; not registered: {missing}" if missing else "")
                    + ")\n"
                    + _log_report(info.home, ["model_log.log", "ts_log.log"], info.log_offsets)
                )
            time.sleep(_POLL_S)


# --------------------------------------------------------------------------------------------- public control


def _model_args(models: Mapping[str, str] | Sequence[str] | None) -> tuple[list[str], list[str] | None]:
    """Return the --models arguments and the model names to wait for (None: every registered model)."""
    if models is None:
        return ["all"], None
    if isinstance(models, Mapping):
        pairs = [f"{name}={file}" for name, file in models.items()]
    elif isinstance(models, str):
        pairs = [models]
    else:
        pairs = list(models)
    if not pairs:
        raise TorchServeError("models is empty; pass None to load every .mar in the store")
    names = [p.split("=", 1)[0] for p in pairs if "=" in p]
    return pairs, (names if len(names) == len(pairs) else None)


def start(
    home: str | os.PathLike = ".aiaas",
    model_store: str | os.PathLike = "model_store",
    models: Mapping[str, str] | Sequence[str] | None = None,
    free_ports: bool = False,
    config: str | os.PathLike | None = None,
    ready_timeout: float = 120.0,
    access_log: bool = False,
    ports: Ports | None = None,
    trust_config_keys: Iterable[str] = (),
) -> ServerInfo:
    """Return the ServerInfo of a TorchServe started in HOME once all its models have READY workers.

    models: None loads every .mar in the store (names from each archive's manifest); a dict {name: file.mar}
    or a list of "NAME=FILE.mar" strings loads those under those names.
    Ports: 8080/8081/8082 (gRPC 7070/7071), all free ones picked now with free_ports=True, or explicit `ports`.
    Security settings are forced whatever `config` says (SECURITY_SETTINGS, loopback addresses); keys in
    TRUSTABLE_KEYS are dropped from it unless named in `trust_config_keys`. Each override is a SecuritySettingWarning.
    Every archive is checked first (see _checked_store); with $AIAAS_SIGNING_KEY set only signed ones load.
    Raises ServerArgumentError (bad argument, an archive that fails its check) before anything starts, and
    TorchServeError (Java missing, port taken, process died, not ready in time), then leaving nothing running.
    """
    unknown = sorted(set(trust_config_keys) - set(TRUSTABLE_KEYS))
    if unknown:
        raise ServerArgumentError(f"trust_config_keys: {unknown} cannot be trusted; only {list(TRUSTABLE_KEYS)} can")
    home = Path(home).resolve()
    store = Path(model_store).resolve()
    if not store.is_dir():
        raise ServerArgumentError(f"model store not found: {store}")
    find_java()
    torchserve = find_torchserve()
    running = load_info(home)
    if running is not None and _is_alive(running.pid, running.create_time):
        raise TorchServeError(f"TorchServe already runs from {home} (pid {running.pid}); stop it first")
    model_args, names = _model_args(models)
    archives = _archives_to_load(store, model_args)

    home.mkdir(parents=True, exist_ok=True)
    checked = _checked_store(home, store, archives)
    logs, tmp = home / "logs", home / "tmp"
    for d in (logs, tmp):
        d.mkdir(exist_ok=True)
    os.chmod(tmp, 0o700)  # TorchServe unpacks the checked archives here: nobody else may change them
    _info_path(home).unlink(missing_ok=True)
    (home / _KEY_FILE).unlink(missing_ok=True)  # TorchServe rewrites it; a stale one would confuse polling

    ports = ports if ports is not None else _pick_ports(free_ports)
    _check_ports_free(ports)
    base, source = _base_config(config)
    props = _effective_config(base, ports, checked, trust_config_keys)
    cfg = home / "config.properties"
    _write_text_atomic(
        cfg,
        f"# Effective TorchServe config written by aiaas_torch.server from {source}\n"
        + "".join(f"{k}={v}\n" for k, v in props.items()),
    )
    log_cfg = home / "log4j2.xml"
    _write_text_atomic(log_cfg, _log4j_config(access_log))

    env = _launcher_env(logs, tmp)
    cmd = [
        torchserve, "--start", "--ncs", "--foreground",
        "--ts-config", str(cfg),
        "--model-store", str(checked),
        "--log-config", str(log_cfg),
        "--models", *model_args,
    ]  # fmt: skip
    log_offsets = _log_sizes(logs)  # before this start writes a line
    with open(logs / "console.log", "ab") as console:
        launcher = subprocess.Popen(
            cmd, cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    started = time.monotonic()
    info: ServerInfo | None = None
    try:
        java = _find_java_child(launcher, home, log_offsets)
        info = ServerInfo(
            home=home,
            pid=java.pid,
            inference_url=f"http://127.0.0.1:{ports.inference}",
            management_url=f"http://127.0.0.1:{ports.management}",
            metrics_url=f"http://127.0.0.1:{ports.metrics}",
            key_file=home / _KEY_FILE,
            model_store=store,
            pgid=launcher.pid,
            create_time=java.create_time(),
            listen_ports=tuple(ports.tcp().values()),
            log_offsets=log_offsets,
        )
        _launchers[info.pid] = launcher
        _write_text_atomic(_info_path(home), info.to_json())
        _wait_ready(info, names, started + ready_timeout, ready_timeout)
        return info
    except BaseException:
        # Never leave a half-started server behind: the caller gets the error, not a process to hunt down.
        if info is not None:
            _terminate(info, timeout=10.0)
        else:
            _kill_group(launcher.pid)
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait()
        _info_path(home).unlink(missing_ok=True)
        raise


def _archives_to_load(store: Path, model_args: Sequence[str]) -> list[str]:
    """Return the file names in the store of the archives that --models names ("all": every .mar in it).

    Raises ServerArgumentError for a URL or a path (only plain .mar names in the store can be checked), an
    archive not in the store (else TorchServe waits out ready_timeout for a model that cannot appear), and, with
    "all", an entry TorchServe would load that is not a .mar file (a folder, .model or .tar.gz).
    """
    files: list[str] = []
    if list(model_args) == ["all"]:
        for entry in sorted(store.iterdir()):
            if entry.name.startswith("."):  # TorchServe skips hidden entries; `package` stages in hidden folders
                continue
            if entry.name.endswith(".mar") and entry.is_file():
                files.append(entry.name)
            elif entry.is_dir() or entry.name.endswith((".model", ".tar.gz")):
                raise ServerArgumentError(
                    f"{entry}: TorchServe would load this as a model, but only .mar archives can be checked; "
                    "move it out of the model store"
                )
        return files
    for arg in model_args:
        file = arg.split("=", 1)[-1]
        if "://" in file or file_name_problem(file) or "/" in file:
            raise ServerArgumentError(f"model archive {file!r}: name a .mar file in the model store (not a path or URL)")
        if not (store / file).is_file():
            raise ServerArgumentError(f"model archive {file!r} not found in the model store {store}")
        if file not in files:
            files.append(file)
    return files


def _checked_store(home: Path, store: Path, archives: Sequence[str]) -> Path:
    """Return HOME/store (mode 0700), rebuilt to hold a checked copy of each named archive of the store.

    TorchServe loads these copies, never the store itself: a store others can write to could have a file
    swapped between our check and TorchServe's read. archive.verify_archive writes each copy from the very bytes
    it checked. A readable archive with no card (not built by aiaas) is copied unchecked, unless a key is set.
    Raises ServerArgumentError naming the archive and the member at fault.
    """
    from . import archive  # here, not at module top: it imports torch, which status/stop/predict never need
    from .archive import SIGNING_KEY_ENV

    key = os.environ.get(SIGNING_KEY_ENV) or None
    checked = home / _CHECKED_STORE
    if checked.is_symlink() or checked.is_file():
        checked.unlink()
    elif checked.exists():
        shutil.rmtree(checked)
    checked.mkdir(mode=0o700)
    os.chmod(checked, 0o700)  # mkdir's mode is masked by the umask
    try:
        for file in archives:
            try:
                archive.verify_archive(store / file, key, copy_to=checked / file)
            except archive.ForeignArchiveError as e:
                if key:
                    raise ServerArgumentError(f"refusing to start: {e}; with ${SIGNING_KEY_ENV} set only signed aiaas archives load") from None
                shutil.copyfile(store / file, checked / file)
            except archive.ArchiveError as e:
                raise ServerArgumentError(f"refusing to start: {e}") from None
    except BaseException:
        shutil.rmtree(checked, ignore_errors=True)  # a refused start leaves no copies behind
        raise
    return checked


def stop(home: str | os.PathLike = ".aiaas", timeout: float = 30.0) -> bool:
    """Return True after stopping the TorchServe of HOME (SIGTERM, then SIGKILL), False if none was running."""
    home = Path(home).resolve()
    info = load_info(home)
    if info is None:
        return False
    was_running = _is_alive(info.pid, info.create_time)
    _terminate(info, timeout)
    _info_path(home).unlink(missing_ok=True)
    return was_running


def status(home: str | os.PathLike = ".aiaas") -> dict:
    """Return {running, pid, inference_url, management_url, metrics_url, key_file, models} for HOME's server."""
    info = load_info(Path(home).resolve())
    if info is None:
        return {
            "running": False, "pid": None, "inference_url": None, "management_url": None,
            "metrics_url": None, "key_file": None, "models": {},
        }  # fmt: skip
    running = _is_alive(info.pid, info.create_time)
    result = {
        "running": running,
        "pid": info.pid if running else None,
        "inference_url": info.inference_url,
        "management_url": info.management_url,
        "metrics_url": info.metrics_url,
        "key_file": str(info.key_file),
        "models": {},
    }
    if running:
        try:
            with httpx.Client(timeout=httpx.Timeout(5.0), trust_env=False) as client:
                result["models"] = _models_snapshot(client, info)
        except (httpx.HTTPError, TorchServeError, ValueError) as e:
            result["error"] = f"management API: {e}"
    return result


def _mgmt_put(info: ServerInfo, path: str, params: Mapping[str, str] | None, timeout: float) -> dict:
    """Return the JSON answer of PUT management_url + path; raise TorchServeError on an HTTP error."""
    with httpx.Client(timeout=httpx.Timeout(timeout), trust_env=False) as client:
        try:
            r = _mgmt_call(client, info, "PUT", path, params)
        except httpx.HTTPError as e:
            raise TorchServeError(f"PUT {path} failed: {e}") from None
    try:
        body = r.json()
    except ValueError:
        body = {"status": r.text}
    if not isinstance(body, dict):
        body = {"status": body}
    if r.status_code >= 400:
        raise TorchServeError(f"PUT {path} answered {r.status_code}: {body.get('message', body)}")
    return body


def scale(
    info: ServerInfo, name: str, min_workers: int, version: str | None = None,
    max_workers: int | None = None, timeout: float = 120.0,
) -> dict:  # fmt: skip
    """Return TorchServe's status answer after scaling NAME[/VERSION] to min_workers, waiting for the workers.

    Works with enable_model_api=false: TorchServe 0.12 gates only register (POST) and unregister (DELETE).
    """
    path = f"/models/{name}" + (f"/{version}" if version else "")
    params = {
        "min_worker": str(min_workers),
        "max_worker": str(max(min_workers, max_workers if max_workers is not None else min_workers)),
        "synchronous": "true",
    }
    return _mgmt_put(info, path, params, timeout)


def set_default(info: ServerInfo, name: str, version: str) -> dict:
    """Return TorchServe's status answer after making VERSION the default of model NAME.

    Works with enable_model_api=false (a PUT, which TorchServe 0.12 does not gate).
    """
    return _mgmt_put(info, f"/models/{name}/{version}/set-default", None, 30.0)
