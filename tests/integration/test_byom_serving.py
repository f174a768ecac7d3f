"""Bring your own model, served: the imported digits CNN and the token-encoder twin packaged into signed-format
archives and served by the session's real TorchServe (tests/integration/conftest.py builds them before it starts:
its store is fixed when it starts)."""

from __future__ import annotations

import concurrent.futures
import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from aiaas_torch import serving as server
from aiaas_torch.client import Client

pytestmark = pytest.mark.serving


@dataclass
class Byom:
    digits: tuple  # (model, test images, test labels)
    encoder: torch.nn.Module
    home: Path
    info: server.ServerInfo


@pytest.fixture(scope="module")
def byom_served(served, byom_runs) -> Byom:
    """Return the session's TorchServe (tests/integration/conftest.py), which serves the imported digits CNN as digits
    (batching, 50 ms delay) and the token-encoder twin as enc, names no other model of the session takes."""
    return Byom(byom_runs.digits, byom_runs.encoder, served.home, served.info)


def test_served_digits_answer_a_v2_body_with_probabilities_equal_to_eager(byom_served):
    model, Xte, yte = byom_served.digits
    body = {"inputs": [{"name": "image", "shape": [len(yte), 1, 8, 8], "datatype": "FP32", "data": Xte.ravel().tolist()}]}
    with Client(home=byom_served.home, request_timeout=60) as c:
        ans = c.predict("digits", body)
    out = {o["name"]: o for o in ans["outputs"]}
    probs = torch.tensor(out["probabilities"]["data"]).reshape(len(yte), 10)
    with torch.no_grad():
        eager = torch.softmax(model(torch.from_numpy(Xte)), 1)
    assert torch.allclose(probs, eager, rtol=1e-5, atol=1e-6)
    acc = sum(p == str(int(y)) for p, y in zip(out["predictions"]["data"], yte)) / len(yte)
    assert acc >= 0.95
    assert out["output"]["shape"] == [len(yte), 10]


def test_a_mixed_batch_refuses_only_the_request_of_the_wrong_shape(byom_served):
    _, Xte, _ = byom_served.digits
    info = byom_served.info
    with Client(home=byom_served.home) as c:
        token = c.token
    url = f"{info.inference_url}/v2/models/digits/infer"

    def send(i: int):
        if i % 3 == 1:  # 7×7 images
            body = {"inputs": [{"name": "image", "shape": [1, 1, 7, 7], "datatype": "FP32", "data": [0.0] * 49}]}
        else:
            body = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "UINT8", "data": Xte[i].astype(int).ravel().tolist()}]}
        r = httpx.post(url, content=json.dumps(body), headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                       timeout=30, trust_env=False)  # fmt: skip
        return i, r

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(send, range(12)))
    for i, r in results:
        if i % 3 == 1:
            assert r.status_code == 400, (i, r.text)
            msg = r.json()["message"]
            assert "'image'" in msg and "[1, 1, 7, 7]" in msg and "[N, 1, 8, 8]" in msg, msg
        else:
            assert r.status_code == 200, (i, r.text)
            assert r.json()["outputs"][1]["shape"] == [1, 10]


def test_served_token_encoder_takes_int64_ids(byom_served):
    ids = torch.randint(0, 50, (4, 8), generator=torch.Generator().manual_seed(3))
    with Client(home=byom_served.home) as c:
        ans = c.predict("enc", {"inputs": [{"name": "tokens", "shape": [4, 8], "datatype": "INT64", "data": ids.ravel().tolist()}]})
        inst = c.predict("enc", {"instances": ids.tolist()})
    with torch.no_grad():
        want = byom_served.encoder(ids)
    assert torch.allclose(torch.tensor(ans["outputs"][0]["data"]).reshape(4, 3), want, rtol=1e-5, atol=1e-6)
    assert torch.allclose(torch.tensor(inst["predictions"]), want, rtol=1e-5, atol=1e-6)


def test_cli_predicts_npy_files_through_the_server(byom_served, tmp_path):
    import subprocess
    import sys

    import numpy as np

    model, Xte, yte = byom_served.digits
    src, out = tmp_path / "images.npy", tmp_path / "answers.npz"
    np.save(src, Xte[:50])
    cmd = [sys.executable, "-m", "aiaas_torch.cli", "predict", "digits", "--home", str(byom_served.home),
           "--file", str(src), "--out", str(out), "--chunk-rows", "16", "--concurrency", "2"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with np.load(out, allow_pickle=False) as z:
        got = {k: z[k] for k in z.files}
    with torch.no_grad():
        eager = torch.softmax(model(torch.from_numpy(Xte[:50])), 1).numpy()
    np.testing.assert_allclose(got["probabilities"], eager, rtol=1e-5, atol=1e-6)
    assert got["predictions"].tolist() == [str(d) for d in eager.argmax(1)]
    ids = torch.randint(0, 50, (9, 8), generator=torch.Generator().manual_seed(4))
    np.save(tmp_path / "ids.npy", ids.numpy())
    r = subprocess.run(cmd[:4] + ["enc"] + cmd[5:8] + [str(tmp_path / "ids.npy"), "--out", str(tmp_path / "enc.npy")],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        want = byom_served.encoder(ids).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "enc.npy", allow_pickle=False), want, rtol=1e-5, atol=1e-6)
    bad = Xte[:40].copy()
    bad[20, 0, 3, 3] = np.nan  # refused by the server's contract: the message names the chunk's samples
    np.save(src, bad)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "samples 16-31" in r.stderr and "NaN" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    np.save(src, Xte[:3, :, :7, :7])  # 7×7 images: refused before anything is sent
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "[N, 1, 8, 8]" in r.stderr and r.stderr.count("\n") == 1, r.stderr
