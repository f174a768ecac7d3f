"""What every `aiaas` command module shares: exit codes, the one-line-error parser, argument types and output."""

from __future__ import annotations

import argparse
import json
import math
import sys

from ..errors import InputError

EXIT_USAGE = 2
EXIT_FAILURE = 1


class UsageError(InputError):
    """A bad argument or input found by the CLI itself: exit code 2 with a one-line message."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message):  # noqa: D401 - argparse API
        """Print one line naming the problem and exit with code 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _int_list(text: str) -> tuple[int, ...]:
    """Return "64,64" as (64, 64)."""
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r} must list positive integers, e.g. 64,64")
    return vals


def _finite(text: str) -> float:
    """Return text as a finite float."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def _home(p) -> None:
    """Add the --home option."""
    p.add_argument("--home", default=".aiaas", metavar="DIR", help="server home: config, logs, key file, pid (default .aiaas)")


def _print_json(obj) -> None:
    """Print one JSON document on stdout."""
    print(json.dumps(obj, indent=2, default=str))


def _warn(msg: str) -> None:
    """Print one warning line on stderr."""
    print(f"aiaas: warning: {msg}", file=sys.stderr)
