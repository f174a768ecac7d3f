"""TCP ports of an instance: the Ports set, free loopback ports (the one helper for the whole package), clash checks."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from .errors import TorchServeError


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


def free_ports(count: int) -> list[int]:
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


def pick_ports(free: bool) -> Ports:
    """Return the default ports, or free ones chosen now."""
    if not free:
        return DEFAULT_PORTS
    inference, management, metrics, grpc_inference, grpc_management, worker = free_ports(6)
    # Worker "ports" only name Unix sockets under HOME/tmp, so any base is private to this home.
    return Ports(inference, management, metrics, grpc_inference, grpc_management, worker)


def check_port_free(port: int, name: str, remedy: str = "free_ports=True", cli_remedy: str = "--free-ports") -> None:
    """Raise TorchServeError naming the port when something on 127.0.0.1 already holds it (remedy: what to start
    with instead, for Python and for the CLI); returns None."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Netty and uvicorn do: TIME_WAIT is no clash
        s.bind(("127.0.0.1", port))
    except OSError as e:
        clash = f"port {port} on 127.0.0.1 ({name}) is already in use ({e.strerror}); stop what holds it, or start with"
        raise TorchServeError(f"{clash} {remedy}", cli_message=f"{clash} {cli_remedy}") from None
    finally:
        s.close()


def check_ports_free(ports: Ports) -> None:
    """Raise TorchServeError naming the first port on 127.0.0.1 that something else already holds."""
    for name, port in ports.tcp().items():
        check_port_free(port, name)
