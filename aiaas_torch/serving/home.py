"""An instance's home directory: the names of its files, its server.json (ServerInfo) and atomic writes into it."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import TorchServeError

INFO_FILE = "server.json"
KEY_FILE = "key_file.json"
CHECKED_STORE = "store"  # HOME/store: the checked copies TorchServe loads


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
    gateway_url: str = ""  # the Open Inference gateway (start(oip=True)), "" when none runs
    gateway_pid: int = 0
    gateway_create_time: float = 0.0

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


def info_path(home: Path) -> Path:
    """Return the path of HOME/server.json."""
    return home / INFO_FILE


def load_info(home: str | os.PathLike = ".aiaas") -> ServerInfo | None:
    """Return the ServerInfo recorded in HOME/server.json, or None when there is none."""
    path = info_path(Path(home))
    try:
        return ServerInfo.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError) as e:
        raise TorchServeError(f"{path} is unreadable ({e}); delete it if no server runs") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to path via a temp file in the same directory and os.replace."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
