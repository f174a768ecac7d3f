"""Live updates of a running TorchServe: deploy a version beside the running one, roll back, retire, list versions.

Only a server started with allow_deploy accepts them: its model API is on, fenced to HOME/store
(config.model_control_settings), and nothing reaches HOME/store without passing archive.verify_archive here first,
so TorchServe registers checked bytes only. The switch is TorchServe's set-default: from then on requests to NAME go
to the new version, requests already queued for the old one finish there, and the old version keeps its READY
workers until retired, so a rollback is one set-default call. The order of defaults (what rollback returns to) is
kept in HOME/deploys.json, tied to the running server's pid and start time.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .. import archive
from ..card import CARD, check_card, filled_sample, is_tabular, tensor_text
from ..errors import InputError, check_int, check_number
from .httpclient import MANAGEMENT_S, http_client
from .config import parse_properties
from .errors import ServerArgumentError, TorchServeError
from ..atomic import write_text_atomic
from ..deprecation import renamed_keywords
from .home import CHECKED_STORE, ServerInfo, deploy_key, load_info
from .management import api_call, mgmt_call, register, set_default, unregister
from .pids import is_alive
from .readiness import load_error_since, refusal_since, log_sizes

HISTORY_FILE = "deploys.json"
_POLL_S = 0.1


@dataclass
class ModelVersion:
    """One loaded version of a model: default or not, its workers' states, its checked archive and card summary."""

    name: str
    version: str
    default: bool
    workers: list[str]
    archive: str  # file name in HOME/store
    card: dict = field(default_factory=dict)  # task, target, features, created, signed (empty: no card)


@dataclass
class Deployed:
    """What deploy did: the version made default, the one before it, the smoke request and answer, step timings."""

    name: str
    version: str
    previous: str | None
    archive: Path  # the checked copy TorchServe loaded
    smoke_row: list[float] | dict  # each feature's (min + max) / 2 from the card; a tensor card: {input: sample}
    smoke_answer: dict
    seconds: dict[str, float]  # verify, ready, smoke, switch, total


def deploy(name: str, archive_path: str | os.PathLike, home: str | os.PathLike = ".aiaas",
           workers: int | None = None, ready_timeout: float = 120.0, **old) -> Deployed:  # fmt: skip
    """Return a Deployed once ARCHIVE is a READY version of NAME that answered a smoke request and is NAME's default.

    Refused before anything changes (ServerArgumentError, exit 2): a bad name or argument, a server started without
    allow_deploy, an archive that fails verification (hashes; the signature when the server was started with a key:
    then $AIAAS_SIGNING_KEY here must be that key, see home.deploy_key), one not
    built by aiaas, a version already loaded. Failed after registering (TorchServeError): workers not READY within
    `ready_timeout` seconds (as in start; `timeout`, its old spelling, still works for one release and warns) or refusing to load, a smoke prediction that is not a 200 with one well-formed answer; the version is
    then unregistered and its copy removed, and the previous default never stopped serving.
    """
    started = time.monotonic()
    timeout = renamed_keywords("deploy", old, {"timeout": "ready_timeout"}).get("ready_timeout", ready_timeout)
    if not isinstance(name, str) or not archive.NAME_RE.match(name):
        raise ServerArgumentError(f"name: {name!r} must start with a letter or digit and hold only letters, digits and '_'")
    if workers is not None:
        check_int("workers", workers, 1)
    check_number("ready_timeout", timeout, positive=True)
    info = _running(home)
    store = info.home / CHECKED_STORE
    source = Path(archive_path)
    if not source.is_file():
        raise ServerArgumentError(f"archive {source}: not a file")
    staging = store / f".incoming-{uuid.uuid4().hex}.mar"
    try:
        card = _verify(source, staging, deploy_key(info.home, os.environ.get(archive.SIGNING_KEY_ENV) or None))
        version = card["serving"]["version"]
        seconds = {"verify": time.monotonic() - started}
        with http_client(MANAGEMENT_S) as http:
            loaded = _describe(http, info, name)
            if any(v.get("modelVersion") == version for v in loaded):
                raise ServerArgumentError(f"{name} version {version} is already loaded; retire it first "
                                          f"(aiaas retire {name} {version}) or package the new model as another version")  # fmt: skip
            previous = _default_version(http, info, name) if loaded else None
            file = _free_name(store, f"{name}-{version}.mar")
            os.replace(staging, store / file)
            n = workers if workers is not None else max(1, int(card["serving"].get("minWorkers", 1)))
            offsets = log_sizes(info.home / "logs")
            register(info, name, file, n)
            try:
                t = time.monotonic()
                _wait_version_ready(http, info, name, version, n, t + timeout, timeout, offsets)
                seconds["ready"] = time.monotonic() - t
                t = time.monotonic()
                row, answer = _smoke(http, info, name, version, card)
                seconds["smoke"] = time.monotonic() - t
                t = time.monotonic()
                set_default(info, name, version)
                seconds["switch"] = time.monotonic() - t
            except BaseException as e:
                undone = _undo(info, name, version, store / file, previous)
                if isinstance(e, Exception):
                    raise TorchServeError(f"deploy of {name} {version} failed: {e}; {undone}") from None
                raise
    finally:
        staging.unlink(missing_ok=True)
    _push_history(info, name, version, previous)
    seconds["total"] = time.monotonic() - started
    return Deployed(name, version, previous, store / file, row, answer, {k: round(v, 3) for k, v in seconds.items()})


def rollback(name: str, home: str | os.PathLike = ".aiaas") -> tuple[str, str]:
    """Return (version left, version now default) after switching NAME back to the default before the current one.

    The earlier default comes from this server's deploy history; it must still be loaded (not retired).
    """
    info = _running(home)
    with http_client(MANAGEMENT_S) as http:
        loaded = {v.get("modelVersion") for v in _describe(http, info, name)}
        if not loaded:
            raise ServerArgumentError(f"model {name!r} is not loaded")
        current = _default_version(http, info, name)
    stack = [v for v in _history(info).get(name, []) if v in loaded]
    if current in stack:
        stack = stack[: stack.index(current)]
    if not stack:
        raise ServerArgumentError(f"{name}: no earlier default to roll back to (deploys on this server: "
                                  f"{_history(info).get(name, [])}; loaded: {sorted(loaded)})")  # fmt: skip
    target = stack[-1]
    set_default(info, name, target)
    _write_history(info, name, stack)
    return current, target


def retire(name: str, version: str, home: str | os.PathLike = ".aiaas") -> str:
    """Return the retired version's archive file name after unregistering it and deleting its copy in HOME/store.

    The default version cannot be retired: roll back or deploy another first.
    """
    info = _running(home)
    if not isinstance(version, str) or not archive.VERSION_RE.match(version):
        raise ServerArgumentError(f"version: {version!r} must hold only letters, digits, '.' and '_'")
    with http_client(MANAGEMENT_S) as http:
        loaded = {v.get("modelVersion"): v for v in _describe(http, info, name)}
        if version not in loaded:
            raise ServerArgumentError(f"{name} version {version} is not loaded (loaded: {sorted(loaded)})")
        if _default_version(http, info, name) == version:
            raise ServerArgumentError(f"{name} version {version} is the default; roll back or deploy another version first")
    unregister(info, name, version)
    file = _store_file(loaded[version])
    if file:
        (info.home / CHECKED_STORE / file).unlink(missing_ok=True)
    _write_history(info, name, [v for v in _history(info).get(name, []) if v != version])
    return file


def versions(name: str, home: str | os.PathLike = ".aiaas") -> list[ModelVersion]:
    """Return every loaded version of NAME: default or not, worker states, archive and card summary."""
    info = _running(home, need_deploy=False)
    with http_client(MANAGEMENT_S) as http:
        loaded = _describe(http, info, name)
        if not loaded:
            raise ServerArgumentError(f"model {name!r} is not loaded")
        default = _default_version(http, info, name)
    out = []
    for v in loaded:
        file = _store_file(v)
        out.append(ModelVersion(name, v.get("modelVersion"), v.get("modelVersion") == default,
                                [w.get("status") for w in v.get("workers", [])], file,
                                _card_summary(info.home / CHECKED_STORE / file) if file else {}))  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------- steps


def _running(home: str | os.PathLike, need_deploy: bool = True) -> ServerInfo:
    """Return the ServerInfo of HOME's live server (started with allow_deploy when need_deploy), else raise."""
    info = load_info(Path(home).resolve())
    if info is None or not is_alive(info.pid, info.create_time):
        raise TorchServeError(f"no TorchServe running from {home}; start one with `aiaas serve start --allow-deploy`")
    if need_deploy:
        try:
            props = parse_properties((info.home / "config.properties").read_text())
        except OSError as e:
            raise TorchServeError(f"cannot read {info.home / 'config.properties'} ({e})") from None
        if props.get("enable_model_api") != "true":
            raise ServerArgumentError(f"the TorchServe of {home} was started without --allow-deploy (model API off); "
                                      "restart it with `aiaas serve start --allow-deploy` to add versions live")  # fmt: skip
    return info


def _verify(source: Path, copy_to: Path, key: str | None) -> dict:
    """Return the card of SOURCE after archive.verify_archive (signature under `key`) wrote its checked bytes to
    copy_to, else raise."""
    try:
        card = archive.verify_archive(source, key, copy_to=copy_to)
    except archive.ForeignArchiveError as e:
        raise ServerArgumentError(f"refusing to deploy: {e} (deploy needs the card for its checks and smoke row)") from None
    except archive.ArchiveError as e:
        raise ServerArgumentError(f"refusing to deploy: {e}") from None
    try:
        check_card(card, f"{source}: {CARD}")
        version = card["serving"]["version"] if isinstance(card.get("serving"), dict) else None
        if not isinstance(version, str) or not archive.VERSION_RE.match(version):
            raise InputError(f"{source}: {CARD}: serving.version {version!r} is missing or not a version")
    except InputError as e:
        raise ServerArgumentError(f"refusing to deploy: {e}") from None
    return card


def _describe(http: httpx.Client, info: ServerInfo, name: str) -> list[dict]:
    """Return TorchServe's description of every version of NAME ([] when NAME is not registered)."""
    r = mgmt_call(http, info, "GET", f"/models/{name}/all")
    if r.status_code == 404:
        return []
    if r.status_code != 200:
        raise TorchServeError(f"GET /models/{name}/all answered {r.status_code}: {r.text[:200]}")
    return r.json()


def _default_version(http: httpx.Client, info: ServerInfo, name: str) -> str:
    """Return NAME's default version (GET /models/NAME describes the default only)."""
    r = mgmt_call(http, info, "GET", f"/models/{name}")
    if r.status_code != 200:
        raise TorchServeError(f"GET /models/{name} answered {r.status_code}: {r.text[:200]}")
    return r.json()[0]["modelVersion"]


def _free_name(store: Path, wanted: str) -> str:
    """Return `wanted`, or wanted with -2, -3, ... before .mar when a file of that name is in the store already."""
    stem, n, file = wanted[: -len(".mar")], 1, wanted
    while (store / file).exists():
        n += 1
        file = f"{stem}-{n}.mar"
    return file


def _wait_version_ready(http: httpx.Client, info: ServerInfo, name: str, version: str, workers: int,
                        deadline: float, timeout: float, offsets: dict) -> None:  # fmt: skip
    """Return once NAME/VERSION has `workers` READY workers; raise TorchServeError on a load failure or the deadline."""
    thread = f"-{name}_{version}-"  # TorchServe's worker threads: W-PORT-NAME_VERSION-stdout
    states: list = []
    while True:
        r = mgmt_call(http, info, "GET", f"/models/{name}/{version}")
        if r.status_code == 200:
            states = [w.get("status") for w in r.json()[0].get("workers", [])]
            if states.count("READY") >= workers:
                return
        refusal = refusal_since(info.home, offsets, thread)
        if refusal:
            raise TorchServeError(refusal)
        error = load_error_since(info.home, offsets, thread)
        if error:
            raise TorchServeError(f"a worker failed to load it: {error}")
        if time.monotonic() >= deadline:
            raise TorchServeError(f"workers not READY within {timeout:g} s (states {states})")
        time.sleep(_POLL_S)


def _smoke_input(card: dict) -> list[float] | dict:
    """Return what the smoke request sends: each feature's midpoint of its training range (a tabular card), or one
    sample per input filled with its calibration range's midpoint, rounded down for an integer input (a tensor card)."""
    from ..handlers.aiaas_contract import DTYPES, input_tensors

    if is_tabular(card):
        return [(float(f["min"]) + float(f["max"])) / 2 for f in card["input"]["features"]]
    sample = {}
    for s in input_tensors(card):
        mid = (float(s["min"]) + float(s["max"])) / 2
        sample[s["name"]] = filled_sample(s, math.floor(mid) if DTYPES[s["dtype"]][1] else mid)
    return sample


def _finite(value) -> bool:
    """Return True when every number in a (nested) answer is a finite number."""
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _smoke(http: httpx.Client, info: ServerInfo, name: str, version: str, card: dict) -> tuple[list[float] | dict, dict]:
    """Return the input sent to NAME/VERSION and its answer; raise TorchServeError unless it is one well-formed answer.

    The archive records no example, so the input comes from the card's ranges (_smoke_input).
    """
    row = _smoke_input(card)
    r = api_call(http, info, "inference", "POST", f"{info.inference_url}/predictions/{name}/{version}",
                 json={"instances": [row]})  # fmt: skip
    if r.status_code != 200:
        raise TorchServeError(f"the smoke prediction answered {r.status_code}: {r.text[:200]}")
    try:
        answer = r.json()
        preds = answer["predictions"]
        ok = isinstance(preds, list) and len(preds) == 1 and answer.get("version") == version
        if ok and card["output"]["task"] == "classification":
            ok = preds[0] in (card["output"].get("classes") or [])
        elif ok:
            ok = _finite(preds[0])
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise TorchServeError(f"the smoke prediction for {str(row)[:200]} answered {r.text[:200]!r}, not one answer of version {version}")
    return row, answer


def _undo(info: ServerInfo, name: str, version: str, copy: Path, previous: str | None) -> str:
    """Return what undoing a failed deploy did: unregister NAME/VERSION, delete its copy, the previous default kept."""
    try:
        if previous is not None:
            set_default(info, name, previous)  # a no-op unless the switch itself went through
        unregister(info, name, version)
        done = f"{name} {version} unregistered"
    except TorchServeError as e:
        done = f"unregistering {name} {version} failed too ({e})"
    copy.unlink(missing_ok=True)
    return done + (f"; {name} {previous} still serves as the default" if previous else "")


def _store_file(description: dict) -> str:
    """Return the file name in HOME/store that a version was registered from ('' when it is not a plain name)."""
    url = description.get("modelUrl") or ""
    return url if url.endswith(".mar") and "/" not in url and not url.startswith(".") else ""


def _card_summary(path: Path) -> dict:
    """Return {task, target, features (tabular) or inputs (a tensor card), created, signed} from the card inside a
    checked archive ({} if unreadable)."""
    try:
        with zipfile.ZipFile(path) as zf:
            card = json.loads(zf.read(CARD))
        return {
            "task": card["output"]["task"], "target": card["output"].get("target"),
            **({"features": [f["name"] for f in card["input"]["features"]]} if is_tabular(card)
               else {"inputs": [tensor_text(t) for t in card["input"]["tensors"]]}),
            "created": card.get("created"),
            "signed": isinstance(card.get("signature"), dict),
        }  # fmt: skip
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):
        return {}


# --------------------------------------------------------------------------------------------- history


def _history(info: ServerInfo) -> dict[str, list[str]]:
    """Return {name: [defaults, oldest first]} recorded for this very server (another server's history is ignored)."""
    try:
        doc = json.loads((info.home / HISTORY_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("server") != [info.pid, info.create_time]:
        return {}
    models = doc.get("models")
    return models if isinstance(models, dict) else {}


def _write_history(info: ServerInfo, name: str, stack: list[str]) -> None:
    """Record NAME's stack of defaults for this server in HOME/deploys.json (atomically)."""
    models = _history(info)
    models[name] = stack
    write_text_atomic(info.home / HISTORY_FILE, json.dumps({"server": [info.pid, info.create_time], "models": models}) + "\n")


def _push_history(info: ServerInfo, name: str, version: str, previous: str | None) -> None:
    """Record that VERSION replaced PREVIOUS as NAME's default."""
    stack = [v for v in _history(info).get(name, []) if v != version]
    if previous is not None and (not stack or stack[-1] != previous):
        stack = [v for v in stack if v != previous] + [previous]
    _write_history(info, name, stack + [version])
