"""The `aiaas` command: train | quantize | import | package | export-kserve | serve | deploy | predict | chat | openapi | bench | demo.

Every bad input ends with exit code 2 and one line on stderr naming the problem (no traceback, nothing
written); `--json` on any command prints one JSON document on stdout for scripts. Each command group is one
module here that builds its sub-parser next to the code that runs it and imports torch only when it needs it,
so `--help`, `serve status|stop|token` and a remote `predict` start fast. `aiaas` alone prints the help; options
may come anywhere among a command's arguments (common.Parser); the server home is found by common.server_home.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError
from . import bench, chat, demo, deploy, imports, openapi, package, predict, serve, train
from .common import EXIT_FAILURE, EXIT_USAGE, UsageError, Parser, resolve_defaults

__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "UsageError", "build_parser", "main"]

_GROUPS = (train, imports, package, serve, deploy, predict, chat, openapi, bench, demo)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `aiaas` command with every subcommand."""
    p = Parser(prog="aiaas", description="AI as a service on PyTorch: train → quantize → package → serve → predict.",
               epilog="`aiaas COMMAND --help` shows a command's options. Exit codes: 0 done, 2 bad input or usage (one "
                      "line naming what is wrong), 1 a failure of TorchServe or HTTP, or a bug of ours (--debug).")
    from .. import __version__

    p.add_argument("--version", action="version", version=f"aiaas-torch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for group in _GROUPS:
        group.add_parser(sub)
    return p


def _add_debug(parser: argparse.ArgumentParser) -> None:
    """Add --debug to a parser and every sub-parser below it, so that it is accepted after any command."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on an internal error, print the full traceback")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_debug(sub)


def _failure_types() -> tuple:
    """Return the TorchServe and HTTP client error classes of the modules this process imported.

    Importing them only to catch their errors would cost a command that never talks to a server (e.g. `predict
    --local`) the httpx and serving imports; a module never imported raised nothing.
    """
    found = []
    for module, name in (("aiaas_torch.serving.errors", "TorchServeError"), ("aiaas_torch.client", "ClientError")):
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def main(argv: list[str] | None = None) -> int:
    """Run the `aiaas` command line; returns the process exit code (2 for bad input, 1 for a failure or a bug)."""
    parser = build_parser()
    _add_debug(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # `aiaas` alone: what a newcomer types first deserves the help, not an error
        parser.print_help()
        return 0
    args = resolve_defaults(parser.parse_args(argv))
    args.argv = argv
    try:
        return args.run(args)
    except InputError as e:  # raised on purpose, naming what is wrong
        print(f"aiaas {args.command}: error: {getattr(e, 'cli_message', e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"aiaas {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if isinstance(e, _failure_types()):  # TorchServe or HTTP failed: not a bug of ours
            print(f"aiaas {args.command}: {getattr(e, 'cli_message', e)}", file=sys.stderr)
            return EXIT_FAILURE
        # a bug of ours, not the user's input: say so, traceback on request
        if getattr(args, "debug", False):
            import traceback

            traceback.print_exc()
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"aiaas {args.command}: internal error: {type(e).__name__}: {first} (this is a bug; rerun with --debug "
              "for the traceback)", file=sys.stderr)
        return EXIT_FAILURE

