"""An instance's home directory: the names of its files, its server.json (ServerInfo), atomic writes into it, and
how the CLI finds it (find_home)."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..archive import SIGNING_KEY_ENV
from ..atomic import private_dir, write_text_atomic
from .errors import ServerArgumentError, TorchServeError

INFO_FILE = "server.json"
POLICY_FILE = "signing.json"  # the signature policy the server was started with (0600; a key fingerprint, never the key)
KEY_FILE = "key_file.json"
CHECKED_STORE = "store"  # HOME/store: the checked copies TorchServe loads
WORKFLOW_STORE = "workflows"  # HOME/workflows: TorchServe's workflow store, kept empty (0700)


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
    gateway_url: str = ""  # the Open Inference gateway (start_server(oip=True)), "" when none runs
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
    A home that exists but is another user's, or writable by group or others, raises ServerArgumentError
    (home_problem): its server.json and key file could have been planted.
    """
    if explicit is not None:
        return _trusted(HomeSearch(Path(explicit).absolute(), "--home"))
    env = os.environ.get(HOME_ENV)
    if env:
        return _trusted(HomeSearch(Path(env).absolute(), f"${HOME_ENV}"))
    here = Path(cwd if cwd is not None else os.getcwd()).absolute()
    searched = (here, *here.parents)
    for d in searched:
        if (d / HOME_DIR).is_dir():
            return _trusted(HomeSearch(d / HOME_DIR, f"the nearest {HOME_DIR} from {here}", searched[: searched.index(d) + 1]))
    return HomeSearch(None, "", searched)


def _trusted(found: HomeSearch) -> HomeSearch:
    """Return `found` when its home does not exist yet or can be trusted, else raise ServerArgumentError."""
    problem = home_problem(found.path) if found.path is not None and found.path.exists() else None
    if problem:
        raise ServerArgumentError(f"refusing the home {found.where()}: {problem}")
    return found


def home_problem(home: Path) -> str | None:
    """Return why an existing home cannot be trusted (not a directory, another user's, writable by group or others),
    or None."""
    st = os.stat(home)
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid != os.geteuid():
        return f"it is owned by {_user(st.st_uid)}, not by you ({_user(os.geteuid())}); use a home of your own"
    if mode & 0o022:
        return f"it is writable by group or others (mode {mode:04o}); `chmod 700 {home}` if its content is yours"
    return None


def _user(uid: int) -> str:
    """Return 'name (uid N)', or 'uid N' when the uid has no name."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def prepare_home(home: Path) -> Path:
    """Return HOME once it is a directory of ours with mode 0700, as is every folder created above it.

    Created with mode 0700 and chmod-ed after (the umask cannot loosen it), so that nobody else can list or read what
    TorchServe writes there (it writes key_file.json 0644 before it chmods it). An existing home readable by others
    is tightened to 0700; one owned by another user or writable by group or others raises ServerArgumentError.
    """
    missing = []
    d = home
    while not os.path.lexists(d):
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        private_dir(d)
    problem = home_problem(home)
    if problem:
        raise ServerArgumentError(f"refusing the home {home}: {problem}")
    os.chmod(home, 0o700)
    return home


def key_fingerprint(key: str) -> str:
    """Return a fingerprint of a signing key: the first 16 hex digits of SHA-256 over a fixed label and the key."""
    return hashlib.sha256(b"aiaas signing key fingerprint\0" + key.encode("utf-8")).hexdigest()[:16]


def write_policy(home: Path, key: str | None) -> Path:
    """Return HOME/signing.json after recording (0600, atomically) whether this start required signatures, and the
    key's fingerprint when it did (never the key)."""
    policy = {"signatures_required": bool(key), "key_fingerprint": key_fingerprint(key) if key else None}
    path = write_text_atomic(home / POLICY_FILE, json.dumps(policy) + "\n")
    os.chmod(path, 0o600)
    return path


def deploy_key(home: Path, shell_key: str | None) -> str | None:
    """Return the key a deploy to HOME's server verifies signatures with: None when the server was started without a
    key (the deploying shell's key is not consulted), else shell_key, which must be the server's key (same fingerprint).

    Raises ServerArgumentError when HOME records no policy, or the server requires signatures and shell_key is
    missing or another key: the server's policy decides, not the deploying shell's environment.
    """
    path = home / POLICY_FILE
    try:
        policy = json.loads(path.read_text())
        required, fingerprint = bool(policy["signatures_required"]), policy["key_fingerprint"]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ServerArgumentError(f"{path} is missing or unreadable ({e}); restart the server to record its signature policy") from None
    if not required:
        return None
    needs = f"the server in {home} was started with a signing key (fingerprint {fingerprint}): only archives signed with it deploy"
    if not shell_key:
        raise ServerArgumentError(f"refusing to deploy: {needs}; set ${SIGNING_KEY_ENV} to that key to check the signature")
    if key_fingerprint(shell_key) != fingerprint:
        raise ServerArgumentError(f"refusing to deploy: {needs}, and ${SIGNING_KEY_ENV} here is another key "
                                  f"(fingerprint {key_fingerprint(shell_key)})")  # fmt: skip
    return shell_key
