"""TorchServe on this machine: write an instance's config, start it, wait until its workers are READY, stop it.

Modules, one job each (imports point down this list, never up):

    control      start_server, stop_server, server_status (aiaas_torch exports them under these names; start, stop
                 and status are their old spellings), find_java, find_torchserve; start_gateway (the OIP gateway)
    gateway      the Open Inference gateway process: kserve's ModelServer in front of TorchServe (extra `oip`)
    gateway_guard  what the gateway answers (its route allow-list) and its identity proof to the starter
    store        which archives a start loads; each verified (archive.verify_archive) into HOME/store
    readiness    wait_until_ready: workers READY and ports bound, or why not, from the logs
    pids         TorchServe's processes by pid: alive check, stopping the Java server, its workers and launcher
    live         live updates on a server started with allow_deploy: deploy, rollback, retire, versions
    management   the management API with the instance's token: models snapshot, scale, set-default, register
    tokens       key_file.json; `send`, the one request that renews a refused key (also used by aiaas_torch.client)
    httpclient   the one factory of httpx clients (loopback, no proxy) and their named timeouts
    config       base config (config.properties beside it), forced settings, effective config, log4j, environment
    ports        Ports, free loopback ports, clash checks
    home         the home directory's files, server.json (ServerInfo), atomic writes, the CLI's search (find_home)
    errors       TorchServeError, ServerArgumentError, SecuritySettingWarning

Each instance lives in its own home directory (default ``.aiaas``; the CLI also looks at $AIAAS_HOME and the
nearest ``.aiaas`` in a parent directory), mode 0700 and the caller's own (home.prepare_home, find_home)::

    HOME/config.properties   effective TorchServe config (base config + per-instance overrides)
    HOME/log4j2.xml          quiet log config (INFO, access log off unless asked)
    HOME/key_file.json       token keys, written by TorchServe into its working directory (= HOME)
    HOME/logs/               console.log, ts_log.log, model_log.log, ...
    HOME/tmp/                TMPDIR (TorchServe's pid file) and Java's tmpdir (worker sockets, unpacked models); 0700
    HOME/store/              checked copies of the archives being served (TorchServe's model store); 0700
    HOME/workflows/          TorchServe's workflow store, kept empty; 0700 (its workflow API ignores the model API switch)
    HOME/signing.json        the signature policy of this start (key fingerprint, never the key), read by deploy; 0600
    HOME/server.json         ServerInfo of the running instance, read by stop_server(), server_status() and the client
    HOME/deploys.json        the order of a model's defaults set by deploy (what rollback returns to)

Separate homes make instances independent: TorchServe allows one instance per TMPDIR and writes its key file
into its working directory. Nothing here imports torch (`archive`, which `store` uses to check archives, is torch-free).
"""

from __future__ import annotations

from .config import BASE_CONFIG, SECURITY_SETTINGS, TRUSTABLE_KEYS
from .control import DEFAULT_GATEWAY_PORT, find_java, find_torchserve, server_status, start_gateway, start_server, stop_server
from .errors import SecuritySettingWarning, ServerArgumentError, TorchServeError
from .home import ServerInfo, load_info
from .live import Deployed, ModelVersion, deploy, retire, rollback, versions
from .management import scale, set_default
from .ports import DEFAULT_PORTS, Ports, free_ports
from .readiness import wait_until_ready
from .tokens import read_keys

__all__ = [
    "TorchServeError",
    "ServerArgumentError",
    "SecuritySettingWarning",
    "ServerInfo",
    "Ports",
    "DEFAULT_PORTS",
    "BASE_CONFIG",
    "SECURITY_SETTINGS",
    "TRUSTABLE_KEYS",
    "free_ports",
    "find_java",
    "find_torchserve",
    "start_server",
    "start_gateway",
    "DEFAULT_GATEWAY_PORT",
    "wait_until_ready",
    "stop_server",
    "server_status",
    "read_keys",
    "load_info",
    "scale",
    "set_default",
    "Deployed",
    "ModelVersion",
    "deploy",
    "rollback",
    "retire",
    "versions",
]

_RENAMED = {"start": "start_server", "stop": "stop_server", "status": "server_status"}


def __getattr__(name: str):
    """Return an old spelling (start, stop, status) as its new name's function, warning (RenamedWarning)."""
    if name in _RENAMED:
        from ..deprecation import warn_renamed

        warn_renamed(f"aiaas_torch.serving.{name}", f"aiaas_torch.serving.{_RENAMED[name]} (as aiaas_torch.{_RENAMED[name]})")
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
