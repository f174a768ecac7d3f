"""The one exception type for bad input: raised on purpose, with a message naming what is wrong.

`InputError` is a ValueError, so Python callers can catch either; the `aiaas` command turns it (and only it) into
exit code 2 with its one-line message. Any other exception is a bug of ours: exit 1, "internal error", and the
traceback with `--debug`.
"""

from __future__ import annotations


class InputError(ValueError):
    """A bad argument, file or value given to a public entry point; the message names the problem."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type given to a public entry point; also a TypeError."""
