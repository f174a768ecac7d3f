"""The field's protocols against the session's real TorchServe: Open Inference (tritonclient, a third-party client)
and TF Serving REST bodies (plain httpx), natively, without the gateway."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from aiaas_torch import serving as server

pytestmark = pytest.mark.serving


def _triton(served):
    """Return (tritonclient, a fresh headers dict with the bearer token); tritonclient adds to the dict it is given."""
    url = served.info.inference_url.removeprefix("http://")
    return th.InferenceServerClient(url), {"Authorization": f"Bearer {server.read_keys(served.home)['inference']}"}



def test_native_server_live_and_metadata_with_the_token_and_not_without(served):
    c, h = _triton(served)
    assert c.is_server_live(headers=dict(h)) is True
    meta = c.get_server_metadata(headers=dict(h))
    assert meta["name"] == "Torchserve" and meta["version"]
    assert c.is_server_live() is False  # no token: TorchServe's InvalidKeyException


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_native_infer_json_and_binary_tensors(served, binary, fp32_input):
    c, h = _triton(served)
    result = c.infer("y2x", [fp32_input([[6.0], [7.0]], binary)], headers=dict(h))
    got = result.as_numpy("y").tolist()
    assert got == pytest.approx([12.0, 14.0], rel=1e-3), got
    assert ("binary_data_size" in (result.get_output("y").get("parameters") or {})) is True  # tritonclient asks for binary outputs
    assert result.get_response()["model_version"] == "1.0"


def test_native_infer_of_a_classifier_sends_labels_and_probabilities_as_binary(served, fp32_input):
    c, h = _triton(served)
    rows = [[0.0, 0.0, 0.0, 0.0], [4.0, 4.0, 0.0, 0.0], [0.0, 4.0, 4.0, 4.0]]
    result = c.infer("classes", [fp32_input(rows, True)], headers=dict(h))
    assert [b.decode() for b in result.as_numpy("predictions").tolist()] == ["setosa", "versicolor", "virginica"]
    probs = result.as_numpy("probabilities")
    assert probs.shape == (3, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_native_infer_of_a_wrong_shape_is_a_400_naming_it(served, fp32_input):
    c, h = _triton(served)
    with pytest.raises(InferenceServerException) as e:
        c.infer("y2x", [fp32_input([[6.0, 1.0]], True)], headers=dict(h))
    assert e.value.status() == "400" and "inputs[0].shape" in e.value.message(), e.value


def _tfs(served, body) -> httpx.Response:
    key = server.read_keys(served.home)["inference"]
    return httpx.post(f"{served.info.inference_url}/v1/models/y2x:predict", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=30, trust_env=False)  # fmt: skip


def test_tf_serving_rows_and_columns_on_the_v1_path(served):
    rows = _tfs(served, {"instances": [[6.0], [7.0]]})
    named = _tfs(served, {"inputs": {"x": [6.0, 7.0]}, "signature_name": "serving_default"})
    bare = _tfs(served, {"inputs": [[6.0], [7.0]]})
    assert rows.status_code == 200 and rows.json()["predictions"] == pytest.approx([12.0, 14.0], rel=1e-3), rows.text
    for r in (named, bare):
        assert r.status_code == 200 and r.json() == {"outputs": pytest.approx([12.0, 14.0], rel=1e-3)}, r.text
    bad = _tfs(served, {"inputs": {"x": [6.0, 7.0], "y": [1.0]}})
    assert bad.status_code == 400 and "columns of different lengths" in bad.json()["message"], bad.text
