"""TF Serving's model status as the Open Inference gateway answers it, from hand-written management API snapshots
(no server: the routes themselves are tested in tests/integration/test_gateway.py)."""

from __future__ import annotations

import pytest

from aiaas_torch.serving.gateway import tf_serving_state, tf_serving_status


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
