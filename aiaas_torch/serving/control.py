"""Start, stop and ask the status of a TorchServe instance in its home directory.

We never call ``torchserve --stop``: it stops whichever instance the pid file in ``$TMPDIR`` names and deletes
``key_file.json`` in the caller's directory; we signal our own pid instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import httpx
import psutil

from .httpclient import PROBE_S, http_client
from .config import TRUSTABLE_KEYS, base_config, effective_config, gateway_env, launcher_env, log4j_config
from .errors import ServerArgumentError, TorchServeError
from ..atomic import private_dir, write_text_atomic
from ..archive import SIGNING_KEY_ENV
from .gateway_guard import IDENTITY_PATH, new_challenge, new_identity_key, proves_identity
from .home import KEY_FILE, WORKFLOW_STORE, ServerInfo, info_path, load_info, prepare_home, write_policy
from .management import models_snapshot
from .pids import GATEWAY_MODULE, MODEL_SERVER_CLASS, gateway_alive, is_alive, kill_group, launchers, stop_gateway, terminate
from .ports import Ports, check_port_free, check_ports_free, free_ports as _free_ports, pick_ports
from .readiness import death_reason, log_report, log_sizes, wait_ready
from .store import add_openai_base_urls, archives_to_load, checked_store
from .tokens import read_keys

DEFAULT_GATEWAY_PORT = 8090
_GATEWAY_REMEDY = ("another gateway_port (or free_ports=True)", "--oip-port PORT or --free-ports")  # Python's, the CLI's
JAVA_INSTALL_HINT = "install it with `apt-get install openjdk-17-jre-headless` (or set JAVA_HOME to a JDK/JRE 11+)"


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


def start_server(
    home: str | os.PathLike = ".aiaas",
    model_store: str | os.PathLike = "model_store",
    models: Mapping[str, str] | Sequence[str] | None = None,
    free_ports: bool = False,
    config: str | os.PathLike | None = None,
    ready_timeout: float = 180.0,
    access_log: bool = False,
    ports: Ports | None = None,
    trust_config_keys: Iterable[str] = (),
    allow_deploy: bool = False,
    oip: bool = False,
    gateway_port: int | None = None,
) -> ServerInfo:
    """Return the ServerInfo of a TorchServe started in HOME once all its models have READY workers.

    models: None loads every .mar in the store (names from each archive's manifest); a dict {name: file.mar}
    or a list of "NAME=FILE.mar" strings loads those under those names (FILE: a name in the store, or a path).
    Ports: 8080/8081/8082 (gRPC 7070/7071), all free ones picked now with free_ports=True, or explicit `ports`.
    Security settings are forced whatever `config` says (SECURITY_SETTINGS, loopback addresses); keys in
    TRUSTABLE_KEYS are dropped from it unless named in `trust_config_keys`. Each override is a SecuritySettingWarning.
    Every archive is checked first (see store.checked_store); with $AIAAS_SIGNING_KEY set only signed ones load,
    and deploys to this server must be signed with that key too (HOME/signing.json records its fingerprint).
    HOME and every folder start creates above it are made 0700 (home.prepare_home).
    allow_deploy: turn the model API on for archives in HOME/store only, so that `deploy` can add versions live.
    Raises ServerArgumentError (bad argument, an archive that fails its check) before anything starts, and
    TorchServeError (Java missing, port taken, process died, not ready in time), then leaving nothing running.
    oip=True also starts the Open Inference gateway (serving.gateway; needs the `oip` extra) on 127.0.0.1:gateway_port
    (8090, or a free port with free_ports=True) once TorchServe is ready; ServerInfo.gateway_url is then its URL. A
    gateway port another process holds is refused before anything starts, and no token goes to the port before the
    process there proves it is the gateway just started (TorchServeError naming the port otherwise).
    """
    unknown = sorted(set(trust_config_keys) - set(TRUSTABLE_KEYS))
    if unknown:
        raise ServerArgumentError(f"trust_config_keys: {unknown} cannot be trusted; only {list(TRUSTABLE_KEYS)} can")
    home = Path(home).resolve()
    store = Path(model_store).resolve()
    find_java()
    torchserve = find_torchserve()
    running = load_info(home)
    if running is not None and is_alive(running.pid, running.create_time):
        runs = f"TorchServe already runs from {home} (pid {running.pid}); stop it first with"
        raise TorchServeError(f"{runs} aiaas_torch.serving.stop_server({str(home)!r})", cli_message=f"{runs} `aiaas serve stop --home {home}`")
    model_args, names = _model_args(models)
    model_args, archives = archives_to_load(store, model_args)
    ports = ports if ports is not None else pick_ports(free_ports)
    base, source = base_config(config)
    check_home_length(home, ports.initial_worker, base.get("use_native_io", "true").strip().lower() != "false")

    prepare_home(home)  # 0700 before TorchServe writes key_file.json into it (0644 until it chmods it)
    key = os.environ.get(SIGNING_KEY_ENV) or None
    checked = checked_store(home, archives, key)
    logs, tmp, workflows = home / "logs", home / "tmp", home / WORKFLOW_STORE
    shutil.rmtree(workflows, ignore_errors=True)  # TorchServe's workflow store: empty, nothing to register
    for d in (logs, tmp, workflows):
        private_dir(d, exist_ok=True)  # tmp: TorchServe unpacks the checked archives here: nobody else may change them
    write_policy(home, key)  # deploy checks signatures by the policy of this start, not the deploying shell's
    info_path(home).unlink(missing_ok=True)
    (home / KEY_FILE).unlink(missing_ok=True)  # TorchServe rewrites it; a stale one would confuse polling

    check_ports_free(ports)
    if oip and (gateway_port is not None or not free_ports):  # a free one is picked once TorchServe holds its own
        _check_gateway_port(gateway_port if gateway_port is not None else DEFAULT_GATEWAY_PORT)
    props = effective_config(base, ports, checked, trust_config_keys, allow_deploy)
    cfg = home / "config.properties"
    write_text_atomic(
        cfg,
        f"# Effective TorchServe config written by aiaas_torch.serving from {source}\n"
        + "".join(f"{k}={v}\n" for k, v in props.items()),
    )
    log_cfg = home / "log4j2.xml"
    write_text_atomic(log_cfg, log4j_config(access_log))

    env = launcher_env(logs, tmp)
    cmd = [
        torchserve, "--start", "--ncs", "--foreground",
        "--ts-config", str(cfg),
        "--model-store", str(checked),
        "--log-config", str(log_cfg),
        "--models", *model_args,
    ]  # fmt: skip
    log_offsets = log_sizes(logs)  # before this start writes a line
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
            key_file=home / KEY_FILE,
            model_store=store,
            pgid=launcher.pid,
            create_time=java.create_time(),
            listen_ports=tuple(ports.tcp().values()),
            log_offsets=log_offsets,
        )
        launchers[info.pid] = launcher
        write_text_atomic(info_path(home), info.to_json())
        wait_ready(info, names, started + ready_timeout, ready_timeout)
        if oip:
            port = gateway_port if gateway_port is not None else (_free_ports(1)[0] if free_ports else DEFAULT_GATEWAY_PORT)
            _start_gateway(info, port, max(started + ready_timeout, time.monotonic() + 30.0))
            write_text_atomic(info_path(home), info.to_json())
        return info
    except BaseException:
        # Never leave a half-started server behind: the caller gets the error, not a process to hunt down.
        if info is not None:
            stop_gateway(info, timeout=5.0)
            terminate(info, timeout=10.0)
        else:
            kill_group(launcher.pid)
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait()
        info_path(home).unlink(missing_ok=True)
        raise


def start_gateway(home: str | os.PathLike = ".aiaas", port: int | None = None, timeout: float = 60.0) -> ServerInfo:
    """Return HOME's ServerInfo after starting an Open Inference gateway in front of its running TorchServe.

    port: 127.0.0.1:port, DEFAULT_GATEWAY_PORT when None, a free one when 0. Raises TorchServeError when no
    TorchServe runs from HOME, a gateway already does, another process holds the port (or answers on it instead of
    the gateway), or the gateway dies or is not ready within timeout
    (then nothing of it is left running; TorchServe keeps running).
    """
    home = Path(home).resolve()
    info = load_info(home)
    if info is None or not is_alive(info.pid, info.create_time):
        raise TorchServeError(f"no TorchServe runs from {home}; start it first")
    if gateway_alive(info):
        raise TorchServeError(f"an Open Inference gateway already runs from {home} ({info.gateway_url})")
    port = DEFAULT_GATEWAY_PORT if port is None else (port or _free_ports(1)[0])
    try:
        _start_gateway(info, port, time.monotonic() + timeout)
    except BaseException:
        stop_gateway(info, timeout=5.0)
        raise
    write_text_atomic(info_path(home), info.to_json())
    return info


def _check_gateway_port(port: int) -> None:
    """Raise TorchServeError naming the gateway's port when another process holds it; returns None."""
    check_port_free(port, "Open Inference gateway", *_GATEWAY_REMEDY)


def _start_gateway(info: ServerInfo, port: int, deadline: float) -> None:
    """Start the Open Inference gateway for info's TorchServe and wait until it answers ready; fills info.gateway_*.

    No token goes to the port before the process there proves it is the gateway started now: it answers a fresh
    challenge with the HMAC of the one-time key handed to it on stdin (gateway_guard)."""
    _check_gateway_port(port)
    log = info.home / "logs" / "gateway.log"
    offset = log.stat().st_size if log.exists() else 0
    identity_key = new_identity_key()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", GATEWAY_MODULE, str(info.home), str(port)], cwd=info.home, stdin=subprocess.PIPE,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=gateway_env(),
        )  # fmt: skip
    try:
        proc.stdin.write(identity_key.hex().encode() + b"\n")
        proc.stdin.close()
    except OSError:
        pass  # it died at once: the loop below reports how
    info.gateway_url, info.gateway_pid = f"http://127.0.0.1:{port}", proc.pid
    info.gateway_create_time = psutil.Process(proc.pid).create_time()
    problem, proven = "not answering yet", False
    with http_client(PROBE_S) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log.read_bytes()[offset:].decode("utf-8", "replace").strip().splitlines()[-15:]
                raise TorchServeError(f"the Open Inference gateway on port {port} exited (code {proc.returncode}):\n" + "\n".join(tail))
            try:
                if not proven:
                    proven = _proven(client, info.gateway_url, identity_key, port)
                    continue
                key = read_keys(info.home)["inference"]
                r = client.get(f"{info.gateway_url}/v2/health/ready", headers={"Authorization": f"Bearer {key}"})
                if r.status_code == 200:
                    return
                problem = f"/v2/health/ready answered {r.status_code}"
            except httpx.HTTPError as e:
                problem = str(e) or type(e).__name__
            time.sleep(0.1)
    raise TorchServeError(f"the Open Inference gateway on port {port} was not ready in time ({problem}); see {log}")


def _proven(client: httpx.Client, url: str, key: bytes, port: int) -> bool:
    """Return True when the process on the gateway's port answers a fresh challenge as the gateway holding key;
    raise TorchServeError when another process answers there (httpx.HTTPError while nothing answers yet)."""
    challenge = new_challenge()
    r = client.get(url + IDENTITY_PATH, params={"challenge": challenge})  # no token: nothing secret leaves yet
    try:
        answer = r.json()
    except ValueError:
        answer = None
    if proves_identity(r.status_code, answer, key, challenge):
        return True
    clash = (f"port {port} on 127.0.0.1 (Open Inference gateway) is held by another process: it answered, but not as the "
             f"gateway just started (no proof of identity); no token was sent to it. Stop what holds it, or start with")
    raise TorchServeError(f"{clash} {_GATEWAY_REMEDY[0]}", cli_message=f"{clash} {_GATEWAY_REMEDY[1]}")


def _find_java_child(launcher: subprocess.Popen, home: Path, since: Mapping[str, int], timeout: float = 30.0) -> psutil.Process:
    """Return the Java ModelServer process the torchserve launcher started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for child in psutil.Process(launcher.pid).children():
                try:
                    if MODEL_SERVER_CLASS in child.cmdline():
                        return child
                except (psutil.NoSuchProcess, psutil.ZombieProcess):
                    continue
        except psutil.NoSuchProcess:
            pass
        if launcher.poll() is not None:
            reason = death_reason(home, since)
            raise TorchServeError(
                f"torchserve exited (code {launcher.returncode}) before starting Java"
                + (f": {reason}" if reason else "")
                + "\n"
                + log_report(home, ["console.log"], since)
            )
        time.sleep(0.05)
    raise TorchServeError(f"torchserve started no Java process within {timeout:.0f} s\n" + log_report(home, ["console.log"], since))


# With native IO (TorchServe's default) a worker listens on HOME/tmp/.ts.sock.<port>, the port counting up from
# initial_worker_port with every worker started; a Unix socket path holds at most 107 bytes.
_SOCKET_PATH_MAX = 107


def check_home_length(home: Path, initial_worker_port: int = 9000, native_io: bool = True) -> None:
    """Raise ServerArgumentError when HOME is too long for TorchServe's worker sockets (every worker would die on
    bind with "AF_UNIX path too long", seen only when the ready timeout ends), allowing for 999 worker starts;
    returns None. Without native IO (use_native_io=false) workers use TCP and any home will do."""
    longest = len(os.fsencode(home / "tmp" / ".ts.sock.")) + len(str(initial_worker_port + 999))
    if native_io and longest > _SOCKET_PATH_MAX:
        raise ServerArgumentError(
            f"home: {home} is too long for TorchServe's worker sockets, which live in HOME/tmp "
            f"({longest} bytes with the socket's name, at most {_SOCKET_PATH_MAX}); choose a home at most "
            f"{len(os.fsencode(home)) - (longest - _SOCKET_PATH_MAX)} bytes long"
        )


def stop_server(home: str | os.PathLike = ".aiaas", timeout: float = 30.0) -> bool:
    """Return True after stopping the TorchServe of HOME (SIGTERM, then SIGKILL), False if none was running."""
    home = Path(home).resolve()
    info = load_info(home)
    if info is None:
        return False
    was_running = is_alive(info.pid, info.create_time)
    stop_gateway(info, timeout)
    terminate(info, timeout)
    info_path(home).unlink(missing_ok=True)
    return was_running


def server_status(home: str | os.PathLike = ".aiaas") -> dict:
    """Return {running, pid, inference_url, management_url, metrics_url, key_file, models} for HOME's server."""
    info = load_info(Path(home).resolve())
    if info is None:
        return {
            "running": False, "pid": None, "inference_url": None, "management_url": None,
            "metrics_url": None, "key_file": None, "models": {},
        }  # fmt: skip
    running = is_alive(info.pid, info.create_time)
    result = {
        "running": running,
        "pid": info.pid if running else None,
        "inference_url": info.inference_url,
        "management_url": info.management_url,
        "metrics_url": info.metrics_url,
        "key_file": str(info.key_file),
        "models": {},
    }
    if info.gateway_url:
        result["gateway_url"] = info.gateway_url if gateway_alive(info) else None
    if running:
        try:
            with http_client(PROBE_S) as client:
                result["models"] = models_snapshot(client, info)
        except (httpx.HTTPError, TorchServeError, ValueError) as e:
            result["error"] = f"management API: {e}"
        add_openai_base_urls(result["models"], info)
    return result

