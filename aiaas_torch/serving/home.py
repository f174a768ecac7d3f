"""An instance's home directory: the names of its files, its server.json (ServerInfo), atomic writes into it, and
how the CLI finds it (find_home)."""

from __future__ import annotations

import json
import os
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


HOME_ENV = "AIAAS_HOME"
HOME_DIR = ".aiaas"


@dataclass(frozen=True)
class HomeSearch:
    """Where the CLI looked for a server home and what it found (`path` None: nothing found)."""

    path: Path | None
    source: str  # "--home", "$AIAAS_HOME", "the nearest .aiaas from CWD" or "" (nothing found)
    searched: tuple[Path, ...] = ()  # the directories looked in for a .aiaas, nearest first

    def where(self) -> str:
        """Return how the home was chosen, or where it was looked for, as a phrase for a message."""
        if self.path is not None:
            return f"{self.path} ({self.source})"
        first, parents = self.searched[0], len(self.searched) - 1
        plural = "directory" if parents == 1 else "directories"
        chain = f"{first} and its {parents} parent {plural} up to {self.searched[-1]}" if parents else str(first)
        return f"no {HOME_DIR} directory in {chain}, --home not given, ${HOME_ENV} not set"


def find_home(explicit: str | os.PathLike | None = None, cwd: str | os.PathLike | None = None) -> HomeSearch:
    """Return the HomeSearch for the CLI: `explicit` (--home), else $AIAAS_HOME, else the nearest .aiaas in cwd or a parent.

    Like git finding .git, so that `aiaas predict` in a subdirectory finds the server started one level up.
    """
    if explicit is not None:
        return HomeSearch(Path(explicit).absolute(), "--home")
    env = os.environ.get(HOME_ENV)
    if env:
        return HomeSearch(Path(env).absolute(), f"${HOME_ENV}")
    here = Path(cwd if cwd is not None else os.getcwd()).absolute()
    searched = (here, *here.parents)
    for d in searched:
        if (d / HOME_DIR).is_dir():
            return HomeSearch(d / HOME_DIR, f"the nearest {HOME_DIR} from {here}", searched[: searched.index(d) + 1])
    return HomeSearch(None, "", searched)
