"""What every `aiaas` command module shares: exit codes, the one-line-error parser, argument types and output."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import math
import re
import sys
from pathlib import Path

from ..errors import InputError

EXIT_USAGE = 2
EXIT_FAILURE = 1


class UsageError(InputError):
    """A bad argument or input found by the CLI itself: exit code 2 with a one-line message."""


# A ROW of numbers is an argument, not an option, even when it starts with a minus: "-1.5,2", "-3e-2".
_NEGATIVE_ROW = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(,-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)*$")


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit code 2, and whose commands take options among positionals."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_ROW  # argparse's own knows only "-1" and "-1.5"
        self._intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        """Return (namespace, extras); a command (a parser without sub-commands) accepts options between its positionals.

        Plain argparse stops filling a positional at the first option, so `predict NAME --json 1,2` leaves 1,2
        unrecognized; parse_intermixed_args parses options first, then the positionals, and `--` still ends options.
        """
        leaf = not any(isinstance(a, argparse._SubParsersAction) for a in self._actions)
        if not leaf or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False

    def error(self, message):  # noqa: D401 - argparse API
        """Print one line naming the problem and exit with code 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")

    def _get_formatter(self):
        """Return the help formatter; a Default in a help text is read from its owner only now, when help is printed."""
        return _Help(prog=self.prog)


class _Help(argparse.HelpFormatter):
    """argparse's formatter with an option's `shown` defaults (see Default) available to its help text."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=32)

    def _expand_help(self, action):
        """Return the help text with %(default)s and the action's `shown` names filled in."""
        shown = getattr(action, "shown", None)
        if shown:
            action = argparse.Namespace(**{**vars(action), **shown})
        return super()._expand_help(action)


class Default:
    """An option's default read from the one place the library keeps it: a dataclass field, a function's parameter, or
    (no name) a module's constant.

    Read on first use (the owner may import torch or httpx): by the help text when help is printed, by Args when a
    command reads an option it was not given.
    """

    def __init__(self, owner: str, name: str | None = None):
        self.owner, self.name = owner, name  # owner: "module:Attribute", e.g. "aiaas_torch.train:TrainConfig"

    @property
    def value(self):
        """Return the default: the dataclass field's (its factory's product), the function parameter's, or the constant."""
        module, attr = self.owner.split(":")
        obj = getattr(importlib.import_module(module), attr)
        if self.name is None:
            return obj
        if dataclasses.is_dataclass(obj):
            (f,) = [f for f in dataclasses.fields(obj) if f.name == self.name]
            return f.default_factory() if f.default is dataclasses.MISSING else f.default
        return inspect.signature(obj).parameters[self.name].default

    def __str__(self) -> str:
        """Return the default as a user types it (64,64 for a tuple, 180 for 180.0)."""
        v = self.value
        if isinstance(v, (tuple, list)):
            return ",".join(map(str, v))
        return f"{v:g}" if isinstance(v, float) else str(v)

    def __repr__(self) -> str:
        """Return where the default is read from."""
        return f"Default({self.owner}{'.' + self.name if self.name else ''})"


class Args(argparse.Namespace):
    """Parsed arguments whose Default values are read when first used: a command pays only for the owners it reads
    (`predict --local` never imports the HTTP client for --request-timeout's default)."""

    def __getattribute__(self, name: str):
        """Return the argument, reading a Default's value in place on first access."""
        value = super().__getattribute__(name)
        if isinstance(value, Default):
            value = value.value
            setattr(self, name, value)
        return value


def resolve_defaults(args: argparse.Namespace) -> Args:
    """Return args as Args (Defaults read on first use); `given` names the options the user gave (not left at a Default)."""
    out = Args(**vars(args))
    out.given = {k for k, v in vars(args).items() if not isinstance(v, Default)}
    return out


def show(action: argparse.Action, **defaults: Default) -> argparse.Action:
    """Return action after naming more defaults its help text shows as %(NAME)s (read only when help is printed)."""
    action.shown = defaults
    return action


class _Renamed(argparse.Action):
    """An old spelling of a renamed option: it acts as the new option does, after a one-line deprecation notice."""

    def __init__(self, option_strings, dest, new: argparse.Action, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        """Print the notice naming the new spelling on stderr, then store the value as the new option would."""
        print(f"aiaas: deprecated: {option_string} is now {self.new.option_strings[0]} "
              "(the old spelling goes in the next release)", file=sys.stderr)  # fmt: skip
        self.new(parser, namespace, values, self.new.option_strings[0])


def renamed(p, old: str, new: argparse.Action) -> None:
    """Keep `old` working as a hidden spelling of the option `new` (see _Renamed); returns None."""
    p.add_argument(old, action=_Renamed, new=new, dest=new.dest, nargs=new.nargs, type=new.type, choices=new.choices,
                   metavar=new.metavar, default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # fmt: skip


def int_list(text: str) -> tuple[int, ...]:
    """Return "64,64" as (64, 64)."""
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r} must list positive integers, e.g. 64,64")
    return vals


def positive_int(text: str) -> int:
    """Return text as a whole number ≥ 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ≥ 1")
    return v


def finite_float(text: str) -> float:
    """Return text as a finite float."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def add_home_option(p, creates: bool = False) -> None:
    """Add the --home option (`creates`: the command makes the home when none is found)."""
    p.add_argument("--home", default=None, metavar="DIR",
                   help="server home: config, logs, key file, pid (default: $AIAAS_HOME, else the nearest .aiaas in this "
                        "or a parent directory" + (", else ./.aiaas)" if creates else ")"))


def server_home(a, creates: bool = False) -> Path:
    """Return the server home of a command: --home, $AIAAS_HOME, the nearest .aiaas, else ./.aiaas when it `creates` one.

    Raises UsageError saying where it looked when nothing is found and the command does not create a home.
    """
    from ..serving.home import HOME_DIR, find_home

    found = find_home(a.home)
    if found.path is None and not creates:
        raise UsageError(no_server_message(found))
    return found.path if found.path is not None else Path(HOME_DIR).absolute()


def no_server_message(found) -> str:
    """Return the "no server" message for a HomeSearch: where it looked, and how to start one or point at one."""
    start = "`aiaas serve start`" if found.path is None else f"`aiaas serve start --home {found.path}`"
    return (f"no TorchServe {'found: ' if found.path is None else 'running from '}{found.where()}; start one with {start}, "
            "or point at a running one with --home DIR or AIAAS_HOME=DIR")


def running_home(a) -> Path:
    """Return the home of the server a command talks to; raises UsageError saying where it looked when none runs there."""
    from ..serving.home import find_home, load_info
    from ..serving.pids import is_alive

    found = find_home(a.home)
    info = load_info(found.path) if found.path is not None else None
    if info is None or not is_alive(info.pid, info.create_time):
        raise UsageError(no_server_message(found))
    return found.path


def print_json(obj) -> None:
    """Print one JSON document on stdout."""
    print(json.dumps(obj, indent=2, default=str))


def warn(msg: str) -> None:
    """Print one warning line on stderr."""
    print(f"aiaas: warning: {msg}", file=sys.stderr)
