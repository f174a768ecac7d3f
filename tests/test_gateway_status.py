"""v2 model metadata from a card, and TF Serving's model status as the Open Inference gateway answers it, from hand-written management API snapshots
(no server: the routes themselves are tested in tests/integration/test_gateway.py)."""

from __future__ import annotations

import pytest

from aiaas_torch.serving.gateway import tf_serving_state, tf_serving_status, v2_tensors
from aiaas_torch.serving.gateway_guard import allowed


def _version(version: str, min_workers: int, *statuses: str) -> dict:
    """Return one snapshot version with min_workers and one worker per status."""
    workers = [{"id": str(9000 + i), "pid": 100 + i, "status": s} for i, s in enumerate(statuses)]
    return {"version": version, "minWorkers": min_workers, "maxWorkers": max(min_workers, len(statuses)), "workers": workers}


@pytest.mark.parametrize("min_workers, statuses, state", [
    (1, ["READY"], "AVAILABLE"),
    (2, ["READY", "READY", "UNLOADING"], "AVAILABLE"),
    (0, ["READY"], "AVAILABLE"),  # scaling down, its last worker still answers
    (2, ["READY", "UNLOADING"], "LOADING"),  # one of two up
    (1, ["UNLOADING"], "LOADING"),  # starting, or restarting after a crash
    (0, [], "UNAVAILABLE"),  # scaled to zero
    (0, ["UNLOADING"], "UNAVAILABLE"),  # scaled to zero, its worker on the way out
    (1, [], "UNAVAILABLE"),  # asked for, none listed yet
])  # fmt: skip
def test_tf_serving_state_from_workers(min_workers, statuses, state):
    assert tf_serving_state(_version("1.0", min_workers, *statuses)) == state


def test_tf_serving_status_lists_versions_or_names_what_is_missing():
    snap = {"y2x": [_version("1.0", 1, "READY"), _version("2.0", 0)]}
    ok = {"error_code": "OK", "error_message": ""}
    assert tf_serving_status(snap, "y2x", None) == (200, {"model_version_status": [
        {"version": "1.0", "state": "AVAILABLE", "status": ok}, {"version": "2.0", "state": "UNAVAILABLE", "status": ok}]})  # fmt: skip
    assert tf_serving_status(snap, "y2x", "2.0") == (200, {"model_version_status": [{"version": "2.0", "state": "UNAVAILABLE", "status": ok}]})
    assert tf_serving_status(snap, "nope", None) == (404, {"error": "Could not find any versions of model nope"})
    assert tf_serving_status(snap, "nope", "1.0") == (404, {"error": "Could not find any versions of model nope"})
    assert tf_serving_status(snap, "y2x", "1") == (404, {"error": "Could not find version 1 of model y2x"})
    code, body = tf_serving_status({}, "y2x", None)  # the management API did not answer: not a 404 that blames the name
    assert code == 503 and "management API did not answer" in body["error"]


def test_v2_tensors_of_a_tabular_and_of_a_tensor_card():
    tabular = {"input": {"features": [{"name": "a", "min": 0, "max": 1}, {"name": "b", "min": 0, "max": 1}]},
               "output": {"task": "classification", "classes": ["no", "yes"], "target": "t"}}  # fmt: skip
    assert v2_tensors(tabular) == ([{"name": "input", "datatype": "FP32", "shape": [-1, 2]}],
                                   [{"name": "predictions", "datatype": "BYTES", "shape": [-1]},
                                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}])  # fmt: skip
    regression = {"input": tabular["input"], "output": {"task": "regression", "target": "price"}}
    assert v2_tensors(regression)[1] == [{"name": "price", "datatype": "FP32", "shape": [-1]}]
    tensor = {"input": {"tensors": [{"name": "ids", "dtype": "int64", "shape": [-1, 8], "min": 0, "max": 9},
                                    {"name": "img", "dtype": "uint8", "shape": [-1, 1, 4, 4], "min": 0, "max": 255}]},
              "output": {"task": "classification", "classes": [3, 7], "tensors": [{"name": "logits", "dtype": "float32", "shape": [-1, 2]}]}}  # fmt: skip
    assert v2_tensors(tensor) == ([{"name": "ids", "datatype": "INT64", "shape": [-1, 8]},
                                   {"name": "img", "datatype": "UINT8", "shape": [-1, 1, 4, 4]}],
                                  [{"name": "predictions", "datatype": "INT64", "shape": [-1]},
                                   {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
                                   {"name": "logits", "datatype": "FP32", "shape": [-1, 2]}])  # fmt: skip


@pytest.mark.parametrize("method, path, ok", [
    ("GET", "/v2/health/ready", True),
    ("GET", "/v2/models/y2x/versions/2.0/ready", True),
    ("POST", "/v2/models/y2x/infer", True),
    ("POST", "/v1/models/y2x:predict", True),
    ("GET", "/v2/models/y2x/infer", False),  # right path, wrong method
    ("POST", "/v2/repository/models/y2x/unload", False),
    ("POST", "/v2/repository/models/y2x/load", False),
    ("POST", "/v2/repository/index", False),
    ("POST", "/v1/models/y2x:explain", False),
    ("GET", "/v2/models", False),
    ("GET", "/v2/health/ready/", False),
    ("GET", "/v2/models/a/b/ready", False),  # a parameter is one path segment
    ("GET", "/openapi.json", False),
])  # fmt: skip
def test_gateway_route_allow_list(method, path, ok):
    assert allowed(method, path) is ok
