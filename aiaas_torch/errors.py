"""The one exception type for bad input, raised on purpose with a message naming what is wrong, and the field checks
that raise it (one copy for every settings object's validate()).

`InputError` is a ValueError, so Python callers can catch either; the `aiaas` command turns it (and only it) into
exit code 2 with its one-line message. Any other exception is a bug of ours: exit 1, "internal error", and the
traceback with `--debug`.
"""

from __future__ import annotations

import math


class InputError(ValueError):
    """A bad argument, file or value given to a public entry point; the message names the problem."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type given to a public entry point; also a TypeError."""


def check_int(name: str, value, minimum: int) -> None:
    """Return None if `value` is an integer (not a bool) ≥ minimum, else raise InputError naming the field."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InputError(f"{name}: {value!r} must be an integer ≥ {minimum}")


def check_number(name: str, value, minimum: float = 0.0, positive: bool = False) -> None:
    """Return None if `value` is a finite number ≥ minimum (> 0 with positive=True), else raise InputError."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (positive and value <= 0):
        raise InputError(f"{name}: {value!r} must be a " + ("positive finite number" if positive else f"finite number ≥ {minimum:g}"))


def check_choice(name: str, value, choices) -> None:
    """Return None if `value` is one of `choices`, else raise InputError naming the field and the choices."""
    if value not in choices:
        raise InputError(f"{name}: {value!r} is not one of {tuple(choices)}")
