"""The errors and the warning the serving package raises."""

from __future__ import annotations

from ..errors import InputError


class TorchServeError(RuntimeError):
    """TorchServe could not be found, started, made ready, or reached; the message says why.

    `cli_message` is the same message for `aiaas` users where it names a remedy (`--free-ports` where Python's
    says `free_ports=True`); the CLI prints it, Python users see str(error).
    """

    def __init__(self, message: str = "", cli_message: str | None = None):
        super().__init__(message)
        self.cli_message = cli_message or message


class ServerArgumentError(TorchServeError, InputError):
    """A bad argument to start (no such store, archive or config file), found before anything was started."""


class SecuritySettingWarning(UserWarning):
    """A config or environment tried to change a setting that `start` forces; the message names the key."""
