"""aiaas-torch: train a tabular model with SGD, quantize it, package it for TorchServe, serve and call it.

The Python API under short names; each stage is its own module (data → train → quantize → export → archive →
serving → client), and `aiaas_torch.cli` is the `aiaas` command. A name's module is imported on first use, so
`import aiaas_torch` costs no torch import until a name that needs torch is used.
"""

__version__ = "0.1.0"

import importlib
import sys
import types

from . import _quiet

_quiet.install()  # before any submodule imports torch: its filters must see torch's and torchao's import noise

# public name → (module, attribute)
_EXPORTS = {
    "PackageResult": ("archive", "PackageResult"), "ServingConfig": ("archive", "ServingConfig"),
    "package": ("archive", "package"), "verify_archive": ("archive", "verify_archive"),
    "Client": ("client", "Client"), "ClientError": ("client", "ClientError"), "ServerError": ("client", "ServerError"),
    "Dataset": ("data", "Dataset"), "from_arrays": ("data", "from_arrays"), "load_csv": ("data", "load_csv"),
    "split": ("data", "split"), "predict_file": ("files", "predict_file"),
    "ExportResult": ("export", "ExportResult"), "import_model": ("importer", "import_model"), "LocalModel": ("runs", "LocalModel"),
    "export_run": ("export", "export_run"),
    "load_run": ("runs", "load_run"), "read_card": ("card", "read_card"), "requantize": ("export", "requantize"),
    "ModelSpec": ("models", "ModelSpec"), "build_model": ("models", "build_model"),
    "fold_preprocessing": ("models", "fold_preprocessing"),
    "QuantConfig": ("quantize", "QuantConfig"), "QuantGateError": ("quantize", "QuantGateError"),
    "QuantReport": ("quantize", "QuantReport"), "quantize": ("quantize", "quantize"),
    "ServerInfo": ("serving", "ServerInfo"), "ServerToken": ("serving.tokens", "ServerToken"), "TorchServeError": ("serving", "TorchServeError"),
    "wait_until_ready": ("serving", "wait_until_ready"), "start_server": ("serving", "start_server"),
    "server_status": ("serving", "server_status"), "stop_server": ("serving", "stop_server"),
    "deploy": ("serving", "deploy"), "rollback": ("serving", "rollback"), "retire": ("serving", "retire"),
    "versions": ("serving", "versions"),
    "SelectConfig": ("select", "SelectConfig"), "SelectResult": ("select", "SelectResult"), "select": ("select", "select"),
    "TrainConfig": ("train", "TrainConfig"), "TrainResult": ("train", "TrainResult"), "train": ("train", "train"),
}
# submodules that `import aiaas_torch` used to load eagerly: still reachable as attributes
_SUBMODULES = ("archive", "card", "client", "data", "errors", "export", "handlers", "models", "runs", "serving")

__all__ = [
    "Client", "ClientError", "Dataset", "ExportResult", "LocalModel", "ModelSpec", "PackageResult", "QuantConfig",
    "QuantGateError", "QuantReport", "SelectConfig", "SelectResult", "ServerError", "ServerInfo", "ServerToken", "TorchServeError", "ServingConfig", "TrainConfig", "TrainResult",
    "build_model", "deploy", "export_run", "fold_preprocessing", "from_arrays", "load_csv", "load_run", "package", "predict_file",
    "quantize", "read_card", "requantize", "retire", "rollback", "select", "server_status", "split", "start_server", "stop_server",
    "train", "verify_archive", "versions", "wait_until_ready",
]


def __getattr__(name: str):
    """Return the public name or submodule `name`, importing its module on first use."""
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """Return the names `dir(aiaas_torch)` always listed: dunders, public names and submodules (loaded or not)."""
    loaded = {n for n, v in globals().items() if isinstance(v, types.ModuleType) and v.__name__.startswith(f"{__name__}.")}
    return sorted({n for n in globals() if n.startswith("__") and n not in ("__getattr__", "__dir__")} | set(__all__) | set(_SUBMODULES) | loaded)


class _Package(types.ModuleType):
    """This package's module type: importing the `train` or `quantize` submodule never hides the function of that name."""

    def __setattr__(self, name: str, value) -> None:
        """Set an attribute, except a submodule binding over a public name of the same name (served by __getattr__)."""
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
