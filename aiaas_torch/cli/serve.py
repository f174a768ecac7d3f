"""`aiaas serve start|stop|status|token`: control a local TorchServe (stop, status and token import no torch)."""

from __future__ import annotations

import sys
import warnings

from .common import (EXIT_FAILURE, Default, Parser, UsageError, add_home_option, finite_float, no_server_message, print_json,
                     renamed, running_home, server_home, show, warn)  # fmt: skip

START = "aiaas_torch.serving.control:start_server"


def add_parser(sub) -> None:
    """Add the serve sub-parser (start, stop, status, token) to `sub`; returns None."""
    s = sub.add_parser("serve", help="start, stop or inspect a local TorchServe", description="Control a local TorchServe (127.0.0.1 only, token auth on).")
    ss = s.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    ss.required = True
    st = ss.add_parser("start", help="start TorchServe and wait until every model's workers are READY",
                       description="Start TorchServe in HOME with the model store; returns when every model's workers are READY. "
                                   "Every archive is checked against its card first (and its signature when $AIAAS_SIGNING_KEY "
                                   "is set; deploys to this server then need it too); one that fails, or has no card, stops "
                                   "the start with exit code 2. HOME is made 0700; another user's or a group/other-writable "
                                   "one is refused.")
    add_home_option(st, creates=True)
    st.add_argument("--model-store", default=Default(START, "model_store"), metavar="DIR",
                    help="folder of the archives `aiaas package` wrote (default %(default)s)")
    st.add_argument("--models", nargs="+", metavar="NAME=FILE.mar",
                    help="archives to load, each under the name clients call; FILE is a name in the model store or a path "
                         "(default: every .mar in the store)")
    st.add_argument("--free-ports", action="store_true", help="pick every port free at start (default 8080-8082, 7070-7071, 9000)")
    st.add_argument("--config", default=None, metavar="FILE",
                    help="base config.properties (default ./config.properties); the security settings (loopback, token "
                         "auth, model API off, no registration by URL, an empty workflow store, no per-model pip installs, no TS_* overrides) are "
                         "forced whatever it says, with a warning naming each key it tried to change")
    st.add_argument("--trust-config-key", action="append", default=[], metavar="KEY",
                    choices=["plugins_path", "vmargs", "system_metrics_cmd"],
                    help="keep this key of --config (plugins_path: jars on the Java frontend's classpath; vmargs: JVM "
                         "flags; system_metrics_cmd: a command the frontend runs); dropped with a warning otherwise")
    st.add_argument("--allow-deploy", action="store_true",
                    help="turn TorchServe's model API on, fenced to the archives `aiaas deploy` checked into HOME/store, "
                         "so that versions can be deployed, rolled back and retired live (off by default)")
    renamed(st, "--timeout", st.add_argument("--ready-timeout", type=finite_float, default=Default(START, "ready_timeout"),
                                             metavar="S", help="seconds to wait until every model's workers are READY "
                                                               "(default %(default)s)"))
    st.add_argument("--access-log", action="store_true", help="turn TorchServe's access log back on")
    st.add_argument("--oip", action="store_true",
                    help="also start the Open Inference gateway (full v2 protocol, truthful readiness; needs aiaas-torch[oip])")
    show(st.add_argument("--oip-port", type=int, default=None, metavar="PORT",
                         help="the gateway's port on 127.0.0.1 (default %(port)s; a free one with --free-ports)"),
         port=Default("aiaas_torch.serving.control:DEFAULT_GATEWAY_PORT"))
    st.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops the server")
    st.add_argument("--json", action="store_true", help="print the URLs and key file as JSON")
    sp = ss.add_parser("stop", help="stop the TorchServe of HOME and wait until it is gone", description="Stop HOME's TorchServe by pid and wait until the Java process is gone.")
    add_home_option(sp)
    sp.add_argument("--json", action="store_true", help="print {stopped: bool} as JSON")
    su = ss.add_parser("status", help="show URLs, key file and worker states", description="Show HOME's TorchServe: URLs, key file, each model's versions and worker states.")
    add_home_option(su)
    su.add_argument("--json", action="store_true", help="print the status as JSON")
    tk = ss.add_parser("token", help="print a current inference token, for curl and other clients",
                       description="Print HOME's current inference token and nothing else (renewed through TorchServe's "
                                   "token API when it expires within a minute), for clients that cannot read the key "
                                   "file: curl -H \"Authorization: Bearer $(aiaas serve token)\" ...")
    add_home_option(tk)
    s.set_defaults(run=run)


def run(a) -> int:
    """Start, stop or show a local TorchServe; returns the exit code."""
    from .. import serving as server
    from ..serving.home import find_home

    if a.action == "token":
        from ..serving.home import load_info
        from ..serving.tokens import current_key

        print(current_key(load_info(running_home(a))))
        return 0
    found = find_home(a.home)
    home = server_home(a, creates=True)  # stop and status of a home that does not exist find nothing running
    if a.action == "start":
        models = a.models
        if a.oip_port is not None and (not a.oip or not 0 < a.oip_port < 65536):
            raise UsageError(f"--oip-port {a.oip_port}: expected a port 1-65535, with --oip")
        if models:
            for m in models:
                if "=" not in m or not m.split("=", 1)[0] or not m.endswith(".mar"):
                    raise UsageError(f"--models {m!r}: expected NAME=FILE.mar")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", server.SecuritySettingWarning)
            try:
                info = server.start_server(home, a.model_store, models, a.free_ports, a.config, a.ready_timeout,
                                    access_log=a.access_log, trust_config_keys=a.trust_config_key,
                                    allow_deploy=a.allow_deploy, oip=a.oip, gateway_port=a.oip_port)
            finally:
                for w in caught:
                    warn(str(w.message))
        st = server.server_status(home)
        if a.json:
            print_json(st)
        else:
            print(f"TorchServe ready (pid {info.pid}): inference {info.inference_url}, management {info.management_url}, "
                  f"metrics {info.metrics_url}; tokens in {info.key_file}")
            if info.gateway_url:
                print(f"Open Inference gateway (pid {info.gateway_pid}): {info.gateway_url}")
            for name, versions in st.get("models", {}).items():
                for v in versions:
                    states = [w.get("status") for w in v.get("workers", [])]
                    print(f"  {name} v{v.get('version')}: workers {states}")
        if a.foreground:
            _stay_attached(home, info.pid)
        return 0
    if a.action == "stop":
        stopped = server.stop_server(home)
        if a.json:
            print_json({"stopped": stopped})
        else:
            print("TorchServe stopped" if stopped else f"no TorchServe was running from {found.where()}")
        return 0
    st = server.server_status(home)
    if a.json:
        print_json(st)
    elif not st.get("running"):
        print(no_server_message(found))
    else:
        print(f"TorchServe pid {st['pid']}: inference {st['inference_url']}, management {st['management_url']}, metrics {st['metrics_url']}")
        print(f"  key file {st['key_file']}")
        for name, versions in st.get("models", {}).items():
            for v in versions:
                print(f"  {name} v{v.get('version')}: " + ", ".join(f"{w.get('id')}:{w.get('status')}" for w in v.get("workers", [])))
    return 0 if st.get("running") or a.json else EXIT_FAILURE


def _stay_attached(home: str, pid: int) -> None:
    """Block while the server lives; Ctrl-C or SIGTERM stops it. Returns None."""
    import signal
    import threading

    import psutil

    from .. import serving as server

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("serving in the foreground; Ctrl-C stops the server", file=sys.stderr)
    try:
        while not stop.wait(1.0) and psutil.pid_exists(pid):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop_server(home)
