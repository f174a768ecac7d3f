"""The KServe tree and manifest written by `aiaas export-kserve`, and TorchServe started from that config.

Building the image and running it on Kubernetes need a registry and a cluster this machine cannot reach; here
we check the tree's structure and values, and that TorchServe 0.12 started from the generated config (addresses
moved to free loopback ports, the store moved to the tree) serves KServe v1 and Open Inference v2 bodies
without a token, with the KServe envelope variable set as KServe's controller sets it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from aiaas_torch import serving as server
from aiaas_torch.archive import METRICS_CONFIG, ServingConfig, package
from aiaas_torch.cli import main
from aiaas_torch.data import from_arrays
from aiaas_torch.export import export_run
from aiaas_torch.kserve import INFERENCE_PORT, export_kserve
from aiaas_torch.train import TrainConfig, train


@pytest.fixture(scope="module")
def mar(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kserve")
    x = np.arange(1, 6, dtype=np.float64)
    result = train(from_arrays(x.reshape(-1, 1), 2 * x, ["x"], target="y"), TrainConfig(val_fraction=0.0, progress=False))
    run = export_run(result, root / "run", compile=False).run_dir
    return package(run, "y2x", "3.0", root / "store", serving=ServingConfig(workers=1, batch_size=4)).path


def _props(path: Path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_tree_layout_and_config_values(mar, tmp_path):
    tree = export_kserve(mar, tmp_path / "kserve", storage_uri="gs://bucket/y2x", image="registry.example/aiaas-torch:0.1.0")
    files = sorted(p.relative_to(tree.root).as_posix() for p in tree.root.rglob("*") if p.is_file())
    assert files == ["config/config.properties", "inferenceservice.yaml", f"model-store/{mar.name}"]
    assert (tree.root / "model-store" / mar.name).read_bytes() == mar.read_bytes()
    props = _props(tree.config)
    assert props["inference_address"] == f"http://127.0.0.1:{INFERENCE_PORT}"
    assert all(props[k].startswith("http://127.0.0.1:") for k in ("management_address", "metrics_address"))
    assert props["disable_token_authorization"] == "true" and props["enable_model_api"] == "false"
    assert props["model_store"] == "/mnt/models/model-store" and props["install_py_dep_per_model"] == "false"
    assert props["metrics_config"] == "/home/model-server/metrics.yaml"
    assert "service_envelope" not in props and props["enable_envvars_config"] == "false"
    assert props["decode_input_request"] == "false"  # the handler parses each body once, itself
    snap = json.loads(props["model_snapshot"])
    entry = snap["models"]["y2x"]["3.0"]
    assert snap["modelCount"] == 1 and entry["marName"] == mar.name and entry["defaultVersion"] is True
    assert entry["batchSize"] == 4 and entry["minWorkers"] == 1


def test_inference_service_manifest(mar, tmp_path):
    tree = export_kserve(mar, tmp_path / "k", storage_uri="s3://models/y2x", image="registry.example/aiaas-torch:0.1.0", service="y2x-prod")
    isvc = yaml.safe_load(tree.manifest.read_text())
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert isvc["metadata"]["name"] == "y2x-prod"
    pt = isvc["spec"]["predictor"]["pytorch"]
    assert pt["storageUri"] == "s3://models/y2x" and pt["image"] == "registry.example/aiaas-torch:0.1.0"
    assert pt["ports"] == [{"containerPort": INFERENCE_PORT, "protocol": "TCP"}]
    assert pt["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("kwargs, needle", [({"service": "Bad_Name"}, "Kubernetes name")])
def test_bad_arguments_are_refused_and_nothing_is_written(mar, tmp_path, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        export_kserve(mar, tmp_path / "k", **kwargs)
    assert not (tmp_path / "k").exists() and list(tmp_path.iterdir()) == []


def test_cli_export_kserve(mar, tmp_path, capsys):
    assert main(["export-kserve", str(mar), "--out", str(tmp_path / "k"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model_name"] == "y2x" and Path(doc["manifest"]).is_file()
    assert main(["export-kserve", str(mar), "--out", str(tmp_path / "k")]) == 2  # not empty: refused
    assert "not empty" in capsys.readouterr().err
    assert main(["export-kserve", str(tmp_path / "missing.mar"), "--out", str(tmp_path / "k2")]) == 2


@pytest.mark.serving
def test_torchserve_serves_kserve_bodies_from_the_generated_config(mar, tmp_path):
    tree = export_kserve(mar, tmp_path / "k")
    ports = server.free_ports(6)
    props = _props(tree.config)
    props.update({
        "inference_address": f"http://127.0.0.1:{ports[0]}", "management_address": f"http://127.0.0.1:{ports[1]}",
        "metrics_address": f"http://127.0.0.1:{ports[2]}", "grpc_inference_port": str(ports[3]),
        "grpc_management_port": str(ports[4]), "initial_worker_port": str(ports[5]),
        "model_store": str(tree.root / "model-store"), "metrics_config": str(METRICS_CONFIG),
    })  # fmt: skip
    cfg = tmp_path / "config.properties"
    cfg.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"), TEMP=str(tmp_path / "tmp"), LOG_LOCATION=str(tmp_path / "logs"),
               METRICS_LOCATION=str(tmp_path / "logs"), TS_SERVICE_ENVELOPE="kserve")  # as KServe's controller sets it
    proc = subprocess.Popen([server.find_torchserve(), "--start", "--foreground", "--ts-config", str(cfg), "--model-store", props["model_store"]],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{ports[0]}"
    try:
        with httpx.Client(timeout=10, trust_env=False) as http:
            deadline = time.monotonic() + 120
            while True:
                try:
                    models = http.get(f"http://127.0.0.1:{ports[1]}/models/y2x/all").json()
                    if any(w["status"] == "READY" for v in models for w in v["workers"]):
                        break
                except (httpx.HTTPError, ValueError, KeyError, TypeError):
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, "TorchServe did not come up from the KServe config"
                time.sleep(0.5)
            v1 = http.post(f"{base}/v1/models/y2x:predict", json={"instances": [[6.0], [7.0]]})  # no token: auth is off
            assert v1.status_code == 200, v1.text
            preds = v1.json()["predictions"]
            assert abs(preds[0] - 12) < 0.05 and abs(preds[1] - 14) < 0.05
            v2 = http.post(f"{base}/v2/models/y2x/infer", json={"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [6.0]}]})
            assert v2.status_code == 200, v2.text
            assert abs(v2.json()["outputs"][0]["data"][0] - 12) < 0.05
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_committed_example_tree_is_consistent():
    root = Path(__file__).resolve().parents[2] / "deploy" / "kserve"
    props = _props(root / "config" / "config.properties")
    assert props["inference_address"] == f"http://127.0.0.1:{INFERENCE_PORT}" and props["disable_token_authorization"] == "true"
    assert props["decode_input_request"] == "false"
    snap = json.loads(props["model_snapshot"])
    assert snap["models"]["y2x"]["1.0"]["marName"] == "y2x-1.0.mar"
    assert (root / "model-store").is_dir()
    isvc = yaml.safe_load((root / "inferenceservice.yaml").read_text())
    assert isvc["spec"]["predictor"]["pytorch"]["ports"][0]["containerPort"] == INFERENCE_PORT
    pol = yaml.safe_load((root / "networkpolicy.yaml").read_text())
    assert pol["kind"] == "NetworkPolicy" and pol["spec"]["podSelector"]["matchLabels"] == isvc["metadata"]["labels"]
    dockerfile = (root.parent / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile and "USER model-server" in dockerfile and "constraints.txt" in dockerfile


def test_docker_image_opens_only_the_inference_address(tmp_path):
    """The Dockerfile's own sed expression, applied to the repo's config: management and metrics stay on loopback."""
    import re
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    dockerfile = (repo / "deploy" / "Dockerfile").read_text()
    (expr,) = re.findall(r"sed -e '([^']+)' /tmp/config\.properties", dockerfile)
    out = subprocess.run(["sed", "-e", expr, str(repo / "config.properties")], capture_output=True, text=True, check=True).stdout
    props = dict(line.split("=", 1) for line in out.splitlines() if line and not line.startswith("#") and "=" in line)
    assert props["inference_address"].startswith("http://0.0.0.0:")
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert props["metrics_address"].startswith("http://127.0.0.1:")
    assert props["disable_token_authorization"] == "false" and props["enable_model_api"] == "false"
    assert props["decode_input_request"] == "false"
