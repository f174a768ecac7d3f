"""`aiaas deploy|rollback|retire|versions`: change the model behind a live TorchServe (no torch import)."""

from __future__ import annotations

from dataclasses import asdict

from .common import Default, add_home_option, finite_float, print_json, renamed, running_home


def add_parser(sub) -> None:
    """Add the deploy, rollback, retire and versions sub-parsers to `sub`; returns None."""
    d = sub.add_parser("deploy", help="add an archive as a new version of a live model and make it the default",
                       description="Check ARCHIVE (hashes; the signature when the server was started with $AIAAS_SIGNING_KEY: "
                                   "then it must be set here to that same key), copy it into HOME/store, "
                                   "register it beside the running version, wait until its workers are READY, send it one "
                                   "smoke request (each feature's mid-range value; an imported model: each input's calibration mid-range) and make it the default. On any failure the "
                                   "new version is unregistered and the old default keeps serving. Needs a server started with "
                                   "`aiaas serve start --allow-deploy`.")  # fmt: skip
    d.add_argument("name", metavar="NAME", help="the model name clients call")
    d.add_argument("archive", metavar="ARCHIVE", help="a .mar built by `aiaas package` (its version is the manifest's)")
    add_home_option(d)
    d.add_argument("--workers", type=int, default=None, metavar="N", help="workers for the new version (default: the archive's minWorkers)")
    renamed(d, "--timeout", d.add_argument("--ready-timeout", type=finite_float, metavar="S",
                                           default=Default("aiaas_torch.serving.live:deploy", "ready_timeout"),
                                           help="seconds to wait until the new version's workers are READY (default %(default)s)"))
    d.add_argument("--json", action="store_true", help="print what was done as JSON")
    d.set_defaults(run=run, live="deploy")
    r = sub.add_parser("rollback", help="make the previous default version of a model the default again",
                       description="Switch NAME back to the version that was its default before the last deploy (still loaded).")
    r.add_argument("name", metavar="NAME", help="the model name clients call")
    add_home_option(r)
    r.add_argument("--json", action="store_true", help="print {name, from, to} as JSON")
    r.set_defaults(run=run, live="rollback")
    t = sub.add_parser("retire", help="unregister a version that is not the default",
                       description="Unregister VERSION of NAME (never the default) and delete its copy in HOME/store.")
    t.add_argument("name", metavar="NAME", help="the model name clients call")
    t.add_argument("version", metavar="VERSION", help="the version to unregister, as `aiaas versions NAME` lists it")
    add_home_option(t)
    t.add_argument("--json", action="store_true", help="print {name, version, archive} as JSON")
    t.set_defaults(run=run, live="retire")
    v = sub.add_parser("versions", help="list a model's loaded versions, the default, workers and card summaries",
                       description="List NAME's loaded versions: which is the default, worker states, archive, card summary.")
    v.add_argument("name", metavar="NAME", help="the model name clients call")
    add_home_option(v)
    v.add_argument("--json", action="store_true", help="print the versions as JSON")
    v.set_defaults(run=run, live="versions")


def run(a) -> int:
    """Deploy, roll back, retire or list versions on HOME's TorchServe; returns the exit code."""
    from .. import serving as server

    home = running_home(a)
    if a.live == "deploy":
        done = server.deploy(a.name, a.archive, home, a.workers, a.ready_timeout)
        if a.json:
            print_json(asdict(done))
        else:
            before = f" (was {done.previous}; `aiaas rollback {done.name}` switches back)" if done.previous else ""
            print(f"{done.name} {done.version} is the default{before}: READY in {done.seconds['ready']:.1f} s, smoke "
                  f"{'row' if isinstance(done.smoke_row, list) else 'sample'} {done.smoke_row} -> {done.smoke_answer.get('predictions')}, {done.seconds['total']:.1f} s in all")
        return 0
    if a.live == "rollback":
        left, now = server.rollback(a.name, home)
        if a.json:
            print_json({"name": a.name, "from": left, "to": now})
        else:
            print(f"{a.name} {now} is the default again ({left} stays loaded until `aiaas retire {a.name} {left}`)")
        return 0
    if a.live == "retire":
        file = server.retire(a.name, a.version, home)
        if a.json:
            print_json({"name": a.name, "version": a.version, "archive": file})
        else:
            print(f"{a.name} {a.version} retired" + (f"; {file} removed from the store" if file else ""))
        return 0
    found = server.versions(a.name, home)
    if a.json:
        print_json([asdict(v) for v in found])
    else:
        for v in found:
            c = v.card
            on = f"inputs {', '.join(c['inputs'])}" if "inputs" in c else f"{len(c.get('features', []))} feature(s)"
            of = f" of {c['target']!r}" if c.get("target") else ""
            summary = f"{c.get('task')}{of} on {on}, created {c.get('created')}" if c else "no card"
            print(f"{v.name} {v.version}{' (default)' if v.default else ''}: workers {v.workers}; {v.archive or '?'}; {summary}")
    return 0
