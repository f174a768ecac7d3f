"""`aiaas demo`: the origin example (y = 2x) end to end, from training to a prediction over HTTP."""

from __future__ import annotations

from .common import Default, print_json

DEMO = "aiaas_torch.demo:run_demo"


def add_parser(sub) -> None:
    """Add the demo sub-parser to `sub`; returns None."""
    d = sub.add_parser("demo", help="run the origin example end to end (y = 2x)",
                       description="Train y = 2x on x = 1..5 with SGD, quantize, package, start TorchServe, predict x = 6 and 7 "
                                   "over HTTP, show the served card and quantization report, and stop the server.")
    d.add_argument("--home", default=Default(DEMO, "home"), metavar="DIR", help="server home for the demo (default %(default)s)")
    d.add_argument("--workdir", default=Default(DEMO, "workdir"), metavar="DIR",
                   help="where the run directory goes (default %(default)s)")
    d.add_argument("--model-store", default=Default(DEMO, "model_store"), metavar="DIR",
                   help="where the archive goes (default %(default)s)")
    d.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    d.set_defaults(run=run)


def run(a) -> int:
    """Run the origin example end to end; returns the exit code."""
    from ..demo import run_demo

    summary = run_demo(home=a.home, workdir=a.workdir, model_store=a.model_store, echo=None if a.json else print)
    if a.json:
        print_json(summary)
    return 0
