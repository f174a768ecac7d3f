"""aiaas-torch: train a tabular model with SGD, quantize it, package it for TorchServe, serve and call it.

The Python API under short names; each stage is its own module (data → train → quantize → export → archive →
serving → client), and `aiaas_torch.cli` is the `aiaas` command.
"""

__version__ = "0.1.0"

from . import _quiet

_quiet.install()

from .archive import PackageResult, ServingConfig, package, verify_archive  # noqa: E402
from .client import Client, ClientError, ServerError  # noqa: E402
from .data import Dataset, from_arrays, load_csv, split  # noqa: E402
from .export import ExportResult, LocalModel, export_run, load_run, read_card, requantize  # noqa: E402
from .models import ModelSpec, build_model, fold_preprocessing  # noqa: E402
from .quantize import QuantConfig, QuantGateError, QuantReport, quantize  # noqa: E402
from .serving import ServerInfo, TorchServeError, wait_until_ready  # noqa: E402
from .serving import start as start_server  # noqa: E402
from .serving import status as server_status  # noqa: E402
from .serving import stop as stop_server  # noqa: E402
from .train import TrainConfig, TrainResult, train  # noqa: E402

__all__ = [
    "Client", "ClientError", "Dataset", "ExportResult", "LocalModel", "ModelSpec", "PackageResult", "QuantConfig",
    "QuantGateError", "QuantReport", "ServerError", "ServerInfo", "TorchServeError", "ServingConfig", "TrainConfig", "TrainResult",
    "build_model", "export_run", "fold_preprocessing", "from_arrays", "load_csv", "load_run", "package", "quantize",
    "read_card", "requantize", "server_status", "split", "start_server", "stop_server", "train", "verify_archive",
    "wait_until_ready",
]
