"""Lay out a .mar for KServe's TorchServe runtime: config/config.properties + model-store/ + an InferenceService.

KServe mounts the storage at /mnt/models and starts TorchServe with
`--model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties`; inference is on 8085.
KServe's wrapper sends no TorchServe token, so inside the pod token authorization is OFF: the config binds
TorchServe to the pod's loopback (Knative's queue-proxy reaches it there), and deploy/kserve/networkpolicy.yaml
limits who can reach the pod at all. Our handler speaks KServe v1 (`{"instances"}`) and Open Inference v2 bodies
itself, so TorchServe's request envelopes stay off (its KServe envelope takes only the first request of a batch).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from .archive import verify_archive
from .atomic import staging_dir, swap_into_place
from .errors import InputError
from .serving.config import WIRE_SETTINGS

MOUNT = "/mnt/models"
INFERENCE_PORT = 8085
DEFAULT_IMAGE = "aiaas-torch:0.1.0"
IMAGE_METRICS_CONFIG = "/home/model-server/metrics.yaml"  # where deploy/Dockerfile puts handlers/metrics.yaml
SERVICE_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass
class KServeTree:
    """The laid-out tree: its root, the config and manifest paths, and the model name and version."""

    root: Path
    config: Path
    manifest: Path
    model_name: str
    model_version: str


def kserve_config(name: str, version: str, mar_name: str, serving: dict) -> dict:
    """Return the TorchServe properties for the pod (ordered), with the model_snapshot KServe's runtime expects."""
    snapshot = {
        "name": "startup.cfg",
        "modelCount": 1,
        "models": {
            name: {
                version: {
                    "defaultVersion": True,
                    "marName": mar_name,
                    "minWorkers": int(serving.get("minWorkers", 1)),
                    "maxWorkers": int(serving.get("maxWorkers", 1)),
                    "batchSize": int(serving.get("batchSize", 1)),
                    "maxBatchDelay": int(serving.get("maxBatchDelay", 1)),
                    "responseTimeout": int(serving.get("responseTimeout", 30)),
                }
            }
        },
    }
    return {
        "inference_address": f"http://127.0.0.1:{INFERENCE_PORT}",
        "management_address": "http://127.0.0.1:8081",
        "metrics_address": "http://127.0.0.1:8082",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": "7070",
        "grpc_management_port": "7071",
        "disable_token_authorization": "true",
        "enable_model_api": "false",
        "install_py_dep_per_model": "false",
        "enable_envvars_config": "false",
        "metrics_mode": "prometheus",
        "disable_system_metrics": "true",
        **WIRE_SETTINGS,  # the handler parses each body once, itself
        "metrics_config": IMAGE_METRICS_CONFIG,
        "model_store": f"{MOUNT}/model-store",
        "load_models": "all",
        "model_snapshot": json.dumps(snapshot, separators=(",", ":")),
    }


def inference_service(service: str, storage_uri: str, image: str) -> dict:
    """Return the InferenceService manifest (serving.kserve.io/v1beta1, predictor pytorch with our image)."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": service, "labels": {"app.kubernetes.io/part-of": "aiaas-torch"}},
        "spec": {
            "predictor": {
                "pytorch": {
                    "storageUri": storage_uri,
                    "image": image,
                    "protocolVersion": "v1",
                    "ports": [{"containerPort": INFERENCE_PORT, "protocol": "TCP"}],
                    "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
                    "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
                }
            }
        },
    }


def export_kserve(mar: str | os.PathLike, out: str | os.PathLike, storage_uri: str | None = None,
                  image: str = DEFAULT_IMAGE, service: str | None = None) -> KServeTree:
    """Write OUT/{config/config.properties, model-store/NAME-V.mar, inferenceservice.yaml} atomically; returns the KServeTree."""
    mar = Path(mar)
    if not mar.is_file():
        raise InputError(f"{mar}: archive not found")
    card = verify_archive(mar)
    serving = card.get("serving") or {}
    name, version = serving.get("name"), serving.get("version")
    if not name or not version:
        raise InputError(f"{mar}: the card has no serving name/version; build it with `aiaas package`")
    service = service or name.lower().replace("_", "-")
    if not SERVICE_NAME_RE.match(service) or len(service) > 63:
        raise InputError(f"service: {service!r} is not a valid Kubernetes name (lowercase letters, digits, '-')")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--out {out}: exists and is not empty")
    storage_uri = storage_uri or f"pvc://aiaas-models/{service}"
    with staging_dir(out) as staging:
        (staging / "config").mkdir()
        (staging / "model-store").mkdir()
        shutil.copy2(mar, staging / "model-store" / mar.name)
        props = kserve_config(name, version, mar.name, serving)
        (staging / "config" / "config.properties").write_text(
            "# TorchServe config for KServe (written by `aiaas export-kserve`).\n"
            "# Token authorization is OFF because KServe's wrapper sends no TorchServe token: TorchServe binds the\n"
            "# pod's loopback only, and deploy/kserve/networkpolicy.yaml limits who reaches the pod.\n"
            + "".join(f"{k}={v}\n" for k, v in props.items())
        )
        (staging / "inferenceservice.yaml").write_text(yaml.safe_dump(inference_service(service, storage_uri, image), sort_keys=False))
        swap_into_place(staging, out, lambda d: False)  # an empty --out folder is replaced; a full one was refused above
    return KServeTree(out, out / "config" / "config.properties", out / "inferenceservice.yaml", name, version)
