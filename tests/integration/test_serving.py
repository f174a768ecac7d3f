"""Integration tests against a real TorchServe on 127.0.0.1 serving real .mar archives built by aiaas."""

from __future__ import annotations

import concurrent.futures
import json
import math
import shutil
import subprocess
import sys
import time
import zipfile

import httpx
import numpy as np
import psutil
import pytest

from aiaas_torch import serving as server
from aiaas_torch.client import BadRequest, Client, TokenError
from aiaas_torch.runs import load_run

pytestmark = pytest.mark.serving


def _close(a: float, b: float, rel: float = 1e-5) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-6)


def test_served_predictions_equal_local_predictions(served, client):
    rows = [[0.5], [6.0], [7.0], [100.0]]
    for version, run in (("1.0", served.origin), ("2.0", served.origin_v2)):
        got = client.predict("y2x", {"instances": rows}, version=version)
        want = load_run(run).predict({"instances": rows})
        assert got["model"] == "y2x" and got["version"] == version
        assert all(_close(g, w) for g, w in zip(got["predictions"], want["predictions"])), (got, want)


def test_served_int8_mlp_equals_local_model_under_the_same_batch_composition(served, client):
    """The handler and LocalModel choose their program with the same function: with batchSize 1, a request of N
    rows is one forward of N rows on both sides, so the answers agree within 1e-5 relative. Across batch sizes the
    int8 kernels differ (~3e-3 relative here), so a row alone is compared with a row alone."""
    local = load_run(served.mlp)
    assert local.program_file == "model.pt2" and local.card["optimization"]["plan"][0]["candidate"] == "int8-compiled"
    rows = [[round(float(v), 4) for v in r] for r in np.random.default_rng(1).normal(size=(24, 100))]
    got = client.predict("mlp", {"instances": rows})["predictions"]
    want = local.predict({"instances": rows})["predictions"]
    assert all(_close(g, w) for g, w in zip(got, want)) and len(got) == 24, (got, want)
    alone = [client.predict("mlp", {"instances": [r]})["predictions"][0] for r in rows[:6]]
    assert all(_close(g, local.predict({"instances": [r]})["predictions"][0]) for g, r in zip(alone, rows))
    scale = max(abs(w) for w in want)
    assert max(abs(a - w) for a, w in zip(alone, want)) <= 1e-2 * scale  # batch 1 vs batch 24 kernels: ~3e-3
    flt = load_run(served.mlp, program="float").predict({"instances": rows})["predictions"]
    assert max(abs(g - f) for g, f in zip(got, flt)) > 1e-5 * scale  # int8 really served, not the float program
    log = (served.home / "logs" / "model_log.log").read_text()
    assert "aiaas: mlp program choice: any rows: int8-compiled (model.pt2)" in log  # the worker logs its choice


def test_two_versions_answer_side_by_side(served, client):
    v1 = client.predict("y2x", [6.0], version="1.0")["predictions"][0]
    v2 = client.predict("y2x", [6.0], version="2.0")["predictions"][0]
    assert abs(v1 - 12.0) < 0.05 and abs(v2 - 18.0) < 0.05


def test_concurrent_batch_with_half_bad_requests(served, client):
    token = client.token
    url = f"{served.info.inference_url}/predictions/y2x/1.0"
    bad_bodies = [b"not json", b'{"instances": [[1, 2]]}', b'{"instances": [["six"]]}', b'{"instances": []}',
                  b'{"instances": [{"z": 1}]}', b'[6, 7]', b'{"inputs": 3}', b'{"instances": [[NaN]]}']

    def send(i: int):
        body = json.dumps({"instances": [[float(i)], [i + 0.5]]}).encode() if i % 2 == 0 else bad_bodies[i // 2]
        r = httpx.post(url, content=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, timeout=30, trust_env=False)
        return i, r

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, range(16)))
    for i, r in results:
        if i % 2 == 0:
            assert r.status_code == 200, (i, r.text)
            preds = r.json()["predictions"]
            assert len(preds) == 2 and abs(preds[0] - 2 * i) < 0.05 and abs(preds[1] - (2 * i + 1)) < 0.05
        else:
            assert r.status_code == 400, (i, r.status_code, r.text)
            body = r.json()
            assert body["type"] == "InvalidInput" and body["message"], body
    assert client.ready("y2x")


def test_bad_request_names_the_problem_and_client_raises_bad_request(served, client):
    with pytest.raises(BadRequest) as e:
        client.predict("y2x", {"instances": [[1.0, 2.0]]}, version="1.0")
    assert e.value.status == 400 and "expected 1" in e.value.message
    with pytest.raises(BadRequest) as e:
        client.predict("y2x", [6, 7], version="1.0")  # a bare list of numbers is ONE row of 2 values
    assert "2 values, expected 1" in e.value.message


def test_request_without_or_with_wrong_token_is_refused(served):
    url = f"{served.info.inference_url}/predictions/y2x"
    r = httpx.post(url, json={"instances": [[1.0]]}, timeout=10, trust_env=False)
    assert r.status_code in (400, 401) and "InvalidKeyException" in r.text
    with Client(inference_url=served.info.inference_url, token="wrong-token", request_timeout=10) as bad:
        with pytest.raises(TokenError) as e:
            bad.predict("y2x", {"instances": [[1.0]]})
    assert e.value.type == "InvalidKeyException"


def test_customized_describe_returns_the_card(served, client):
    answer = client.describe("y2x", version="1.0")
    card = answer[0]["customizedMetadata"]
    assert card["input"]["features"][0]["name"] == "x"
    assert card["output"]["task"] == "regression"
    assert abs(card["model"]["coefficients"]["weights"]["x"] - 2.0) < 0.01
    assert card["serving"]["name"] == "y2x" and card["serving"]["version"] == "1.0"
    programs = {n for n, m in card["files"].items() if m["role"] in ("cpu-compiled", "float-program")}
    assert programs == {"model.pt2", "model_float.pt2"}
    with zipfile.ZipFile(served.archives["y2x-1.0"]) as zf:  # every other member is listed too
        assert set(card["files"]) == set(zf.namelist()) - {"model.json"}


CUSTOM_COUNTERS = ("RowsPredicted", "RequestsRejected", "OutOfRangeValues", "ImputedValues", "UnseenCategories")


def _counters(client, model: str) -> dict:
    """Return {custom counter: its total over the model's series} as /metrics shows them now."""
    totals = dict.fromkeys(CUSTOM_COUNTERS, 0.0)
    for line in client.metrics().splitlines():
        name = line.split("{", 1)[0]
        if name in totals and f'ModelName="{model}"' in line:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def test_metrics_count_rows_and_rejections(served, client):
    """Only non-zero counters are written, one line per clean batch, under one request's id: /metrics still sums
    every row and rejection of the model."""
    before = _counters(client, "y2x")
    client.predict("y2x", {"instances": [[1000.0], [2.0], [3.0]]}, version="1.0")  # 1000: outside the training range 1..5
    client.predict("y2x", {"instances": [[4.0], [5.0]]}, version="1.0")
    with pytest.raises(BadRequest):
        client.predict("y2x", {"instances": [["x"]]}, version="1.0")
    want = {"RowsPredicted": 5, "RequestsRejected": 1, "OutOfRangeValues": 1, "ImputedValues": 0, "UnseenCategories": 0}
    deadline = time.monotonic() + 10  # the frontend reads the worker's metric lines from its log as they come
    while True:
        after = _counters(client, "y2x")
        got = {k: after[k] - before[k] for k in CUSTOM_COUNTERS}
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == want


def test_a_nan_literal_reaches_the_handler_undecoded(served, client):
    """decode_input_request=false: the worker no longer runs json.loads first (which reads NaN as a float), so the
    handler's one parse names the literal."""
    with pytest.raises(BadRequest) as e:
        client.predict("y2x", b'{"instances": [[NaN]]}', version="1.0")
    assert "NaN is not a valid JSON number" in str(e.value)


def test_v2_tensor_body_gets_v2_answer(served, client):
    body = {"id": "req-1", "inputs": [{"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [6.0, 7.0]}]}
    answer = client.predict("y2x", body, version="1.0")
    assert answer["model_name"] == "y2x" and answer["model_version"] == "1.0" and answer["id"] == "req-1"
    out = answer["outputs"][0]
    assert out["shape"] == [2] and abs(out["data"][0] - 12) < 0.05 and abs(out["data"][1] - 14) < 0.05


def test_classifier_answers_labels_and_probabilities(served, client):
    rows = [{"a": 0, "b": 0, "c": 0, "d": 0}, {"a": 4, "b": 4, "c": 0, "d": 0}, {"a": 0, "b": 4, "c": 4, "d": 4}]
    answer = client.predict("classes", {"instances": rows})
    assert answer["predictions"] == ["setosa", "versicolor", "virginica"]
    assert all(abs(sum(p) - 1.0) < 1e-5 for p in answer["probabilities"])
    local = load_run(served.classes).predict({"instances": rows})
    assert local["predictions"] == answer["predictions"]
    assert all(_close(a, b) for pa, pb in zip(answer["probabilities"], local["probabilities"]) for a, b in zip(pa, pb))


def test_cli_predict_against_the_server(served):
    cmd = [sys.executable, "-m", "aiaas_torch.cli", "predict", "y2x", "6", "7", "--home", str(served.home), "--version", "1.0", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    preds = json.loads(out.stdout)["predictions"]
    assert abs(preds[0] - 12) < 0.05 and abs(preds[1] - 14) < 0.05
    bad = subprocess.run(cmd[:5] + ["six"] + cmd[6:], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "six" in bad.stderr and "Traceback" not in bad.stderr


def _cli_with_import_log(args: list[str]) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `python -X importtime -m aiaas_torch.cli ARGS`; returns the result and the names of the modules it imported."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "aiaas_torch.cli", *args], capture_output=True, text=True, timeout=120)
    modules = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    return r, modules


def test_help_serve_status_stop_and_remote_predict_import_no_torch(served, tmp_path):
    empty = tmp_path / "empty-home"
    empty.mkdir()
    remote = ["predict", "y2x", "6", "7", "--home", str(served.home), "--version", "1.0", "--json"]
    for args, code, needle in [
        (["--help"], 0, "usage: aiaas"),
        (["serve", "status", "--home", str(empty)], 1, f"no TorchServe running from {empty}"),
        (["serve", "stop", "--home", str(empty)], 0, f"no TorchServe was running from {empty}"),
        (["serve", "token", "--home", str(served.home)], 0, server.read_keys(served.home)["inference"]),
        (remote, 0, '"predictions"'),
    ]:
        r, modules = _cli_with_import_log(args)
        assert r.returncode == code and needle in r.stdout, (args, r.returncode, r.stdout, r.stderr[-2000:])
        assert "aiaas_torch" in modules, (args, sorted(modules))  # the probe read the import log
        assert not {m for m in modules if m.split(".")[0] == "torch"}, (args, sorted(m for m in modules if "torch" in m))
    assert [round(p) for p in json.loads(r.stdout)["predictions"]] == [12, 14]
    # the same probe sees torch where a command needs it (a prediction from a local run directory)
    r, modules = _cli_with_import_log(["predict", "--local", str(served.origin), "6", "--json"])
    assert r.returncode == 0 and "torch" in modules, (r.stdout, r.stderr[-2000:])


def _tamper(src, dst, member: str) -> None:
    """Copy a .mar, flipping one byte of `member`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == member:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            zout.writestr(item, data)


def test_tampered_archive_is_refused_in_a_second_instance_and_stop_leaves_no_process(served, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    _tamper(served.archives["y2x-1.0"], store / "y2x-1.0.mar", "model_float.pt2")
    home = tmp_path / "home2"
    with pytest.raises(server.TorchServeError) as e:
        server.start_server(home, store, ["y2x=y2x-1.0.mar"], free_ports=True, ready_timeout=60)
    assert "SHA-256 does not match" in str(e.value)
    assert server.server_status(home).get("running") is False
    # the first instance is untouched and still answers
    with Client(home=served.home) as c:
        assert abs(c.predict("y2x", [6.0], version="1.0")["predictions"][0] - 12) < 0.05


def test_second_instance_runs_beside_the_first_and_stop_leaves_no_process(served, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(served.archives["y2x-2.0"], store)
    home = tmp_path / "home3"
    info = server.start_server(home, store, [f"y2x={served.archives['y2x-2.0'].name}"], free_ports=True, ready_timeout=120)
    try:
        with Client(home=home) as c2, Client(home=served.home) as c1:
            assert abs(c2.predict("y2x", [6.0])["predictions"][0] - 18) < 0.05
            assert abs(c1.predict("y2x", [6.0], version="1.0")["predictions"][0] - 12) < 0.05
        java = psutil.Process(info.pid)
        children = java.children(recursive=True)
    finally:
        assert server.stop_server(home) is True
    assert not psutil.pid_exists(info.pid) or psutil.Process(info.pid).status() == psutil.STATUS_ZOMBIE
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in children)


def test_serve_start_foreground_stops_the_server_on_sigterm(served, tmp_path):
    import signal
    import time

    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(served.archives["y2x-2.0"], store)
    home = tmp_path / "fg"
    # --models NAME=PATH, relative to the current directory, as people type it: a path to an archive is checked and served
    cmd = [sys.executable, "-m", "aiaas_torch.cli", "serve", "start", "--home", str(home), "--model-store", str(store),
           "--models", f"y2x=store/{served.archives['y2x-2.0'].name}", "--free-ports", "--foreground"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = proc.stdout.readline()  # printed once the workers are READY
        assert "TorchServe ready" in line, line + proc.stderr.read()
        pid = server.server_status(home)["pid"]
        with Client(home=home) as c:
            assert abs(c.predict("y2x", [6.0])["predictions"][0] - 18) < 0.05
        time.sleep(1.5)  # still attached: the command has not returned
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            server.stop_server(home)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert server.server_status(home)["running"] is False


def test_the_client_docstring_example_works_against_a_served_model(client):
    """The example in aiaas_torch.client's docstring is a body the contract accepts, answering y = 2x."""
    import ast
    import re

    from aiaas_torch import client as client_module

    (name, body) = re.search(r'client\.predict\("(\w+)", (\{.*?\})\)', client_module.__doc__).groups()
    answer = client.predict(name, ast.literal_eval(body), version="1.0")
    assert answer["predictions"] == pytest.approx([12.0, 14.0], rel=1e-3)


def test_blanks_and_text_columns_served_as_locally_with_metrics(served, client):
    """Strings, nulls and an unseen category: the server answers as the run directory does locally, and counts them."""
    rows = [
        {"island": "Dream", "bill_length_mm": 49.0, "bill_depth_mm": 18.5, "flipper_length_mm": 196, "body_mass_g": 3700, "sex": "male"},
        {"island": "Biscoe", "bill_length_mm": None, "bill_depth_mm": 15.0, "flipper_length_mm": 217, "body_mass_g": 5100, "sex": None},
        {"island": "Atlantis", "bill_length_mm": 39.0, "bill_depth_mm": 18.3, "flipper_length_mm": 190, "body_mass_g": 3650, "sex": "female"},
    ]
    before = client.metrics()  # other tests of the session send nulls and unseen categories to penguins too
    answer = client.predict("penguins", {"instances": rows})
    local = load_run(served.penguins).predict({"instances": rows})
    assert answer["predictions"] == local["predictions"]
    assert answer["predictions"][:2] == ["Chinstrap", "Gentoo"]
    assert all(_close(a, b) for pa, pb in zip(answer["probabilities"], local["probabilities"]) for a, b in zip(pa, pb))
    with pytest.raises(BadRequest, match=r"instances\[0\]\.sex: \[.*\] is not a category"):
        client.predict("penguins", {"instances": [dict(rows[0], sex=["male"])]})
    after = client.metrics()

    def total(text: str, name: str) -> float:
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name) and 'ModelName="penguins"' in l)

    def added(name: str) -> float:
        return total(after, name) - total(before, name)

    assert added("ImputedValues") == 2 and added("UnseenCategories") == 1  # one request carried them: counted once each
