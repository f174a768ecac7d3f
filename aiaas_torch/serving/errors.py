"""The errors and the warning the serving package raises."""

from __future__ import annotations

from ..errors import InputError


class TorchServeError(RuntimeError):
    """TorchServe could not be found, started, made ready, or reached; the message says why."""


class ServerArgumentError(TorchServeError, InputError):
    """A bad argument to start (no such store, archive or config file), found before anything was started."""


class SecuritySettingWarning(UserWarning):
    """A config or environment tried to change a setting that `start` forces; the message names the key."""
