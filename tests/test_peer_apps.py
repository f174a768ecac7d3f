"""The LitServe peer of benchmarks/peers.py with its own batching on: one forward per batch, a bad request refused alone.

LitServe lives only in the benchmark venv, so this runs there (the project's venv skips it):
    .venv-bench/bin/python -m pytest -q tests/test_peer_apps.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("litserve", reason="LitServe lives only in .venv-bench (benchmarks/peers.py creates it)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peer_apps  # noqa: E402


@pytest.fixture(scope="module")
def batched_api(origin_result, tmp_path_factory):
    """The batching LitAPI (max 16, 1 ms) set up on the origin model (y = 2x), not compiled, with a forward spy."""
    from aiaas_torch.export import export_run

    run_dir = export_run(origin_result, tmp_path_factory.mktemp("peer") / "origin", compile="never").run_dir
    peer_apps.RUN_DIR = str(run_dir)
    api = peer_apps.litserve_api(16, 1)
    api.setup("cpu")
    real, api.forwards = api.model.programs, []

    def spy(*xs):
        api.forwards.append(int(xs[0].shape[0]))
        return real(*xs)

    api.model.programs = spy
    return api


def _refused(answer) -> str:
    """Return the message of a 400 JSON answer (AssertionError for anything else)."""
    assert getattr(answer, "status_code", None) == 400, answer
    body = json.loads(answer.body)
    assert body["code"] == 400 and body["type"] == "InvalidInput", body
    return body["message"]


def test_litserve_batching_runs_one_forward_and_refuses_a_bad_request_alone(batched_api):
    api = batched_api
    assert (api.max_batch_size, api.batch_timeout) == (16, 0.001)
    bodies = [{"instances": [[1.0], [2.0]]}, {"instances": [["x"]]}, {"instances": [[3.0]]}, {"instances": [[3e38]]}]
    api.forwards.clear()
    answers = api.unbatch(api.predict(api.batch([api.decode_request(b) for b in bodies])))
    assert len(answers) == 4
    assert api.forwards == [4]  # the three well-formed requests' four rows in ONE forward
    assert answers[0]["predictions"] == pytest.approx([2.0, 4.0], abs=0.01)
    assert answers[2]["predictions"] == pytest.approx([6.0], abs=0.01)
    assert (answers[0]["model"], answers[0]["version"]) == (peer_apps.NAME, "1.0")
    assert "instances[0]" in _refused(answers[1]) and "not a number" in _refused(answers[1])
    assert "overflows float32" in _refused(answers[3])  # 2 × 3e38 is past float32: its own 400, after the forward


def test_litserve_batching_of_only_bad_requests_runs_no_forward(batched_api):
    api = batched_api
    api.forwards.clear()
    answers = api.unbatch(api.predict(api.batch([{"nope": 1}, {"instances": [[1.0, 2.0]]}])))
    assert api.forwards == []
    assert "instances" in _refused(answers[0]) and "instances[0]" in _refused(answers[1])
