"""TorchServe's processes by pid: is its Java server alive, and stopping it, its workers and its launcher."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil

from .home import ServerInfo

MODEL_SERVER_CLASS = "org.pytorch.serve.ModelServer"
GATEWAY_MODULE = "aiaas_torch.serving.gateway"  # in the gateway's command line: how stop_server() knows the pid is ours

# Launchers started by this process, kept so terminate() can reap them (no zombie left behind).
launchers: dict[int, subprocess.Popen] = {}


def is_alive(pid: int, create_time: float = 0.0) -> bool:
    """Return True when pid is a live (non-zombie) TorchServe Java process, same one if create_time given."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if create_time and abs(proc.create_time() - create_time) > 1.0:
            return False
        return MODEL_SERVER_CLASS in proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def gateway_alive(info: ServerInfo) -> bool:
    """Return True when the instance's Open Inference gateway process (the same one: create time) is alive."""
    if info.gateway_pid <= 0:
        return False
    try:
        proc = psutil.Process(info.gateway_pid)
        return (proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - info.gateway_create_time) <= 1.0
                and GATEWAY_MODULE in " ".join(proc.cmdline()))  # fmt: skip
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ValueError):
        return False


def stop_gateway(info: ServerInfo, timeout: float) -> None:
    """Stop the instance's gateway (SIGTERM, SIGKILL after timeout) if it runs; returns None."""
    if not gateway_alive(info):
        return
    proc = psutil.Process(info.gateway_pid)
    try:
        proc.terminate()
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(5.0)
    except psutil.NoSuchProcess:
        pass


def inet_connections(proc: psutil.Process) -> list:
    """Return proc's TCP/UDP sockets: psutil >= 6 calls it net_connections, 5.x (kserve's pin, extra `oip`) connections."""
    method = getattr(proc, "net_connections", None) or proc.connections
    return method("inet")


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


def kill_group(pgid: int) -> None:
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
        if any(mark in cmdline for mark in ("torchserve", "model_service_worker", MODEL_SERVER_CLASS)):
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


def _wait_gone(pid: int, create_time: float, timeout: float) -> bool:
    """Return True once the Java process is gone (or a zombie), False if still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(pid, create_time):
            return True
        time.sleep(0.05)
    return not is_alive(pid, create_time)


def terminate(info: ServerInfo, timeout: float) -> None:
    """Stop the Java process (SIGTERM, SIGKILL after timeout), its workers and the launcher."""
    if is_alive(info.pid, info.create_time):
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
    launcher = launchers.pop(info.pid, None)
    if launcher is not None:
        try:
            launcher.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
    else:
        _wait_exited(info.pgid, 5.0)
    kill_group(info.pgid)  # a stuck worker, or a launcher that did not exit
    if launcher is not None:
        launcher.wait()
