"""Live updates against one real TorchServe started with allow_deploy: deploy under load, rollback, retire, refusals.

The module's server serves `lin` 1.0 (y = 2x); `lin` 2.0 (y = 3x) is deployed while 16 clients send requests, so
which version answered is visible in every answer (its value and its "version" field).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from aiaas_torch import serving as server
from aiaas_torch.archive import SIGNING_KEY_ENV, ServingConfig, package
from aiaas_torch.data import from_arrays
from aiaas_torch.export import export_run
from aiaas_torch.quantize import QuantConfig
from aiaas_torch.train import TrainConfig, train

pytestmark = [pytest.mark.serving, pytest.mark.slow]

CLIENTS = 16
THINK_S = 0.02  # each client's pause between requests: 16 clients without one starve the new workers' start on 2 cores
X = 10.0  # the row every load client sends: 1.0 answers ≈ 20, 2.0 answers ≈ 30
FAILING_HANDLER = '''
from tabular_handler import TabularHandler


class FailingHandler(TabularHandler):
    def initialize(self, context):
        raise RuntimeError("deliberately broken model")


_service = FailingHandler()


def handle(data, context):
    if not _service.initialized:
        _service.initialize(context)
    return _service.handle(data, context)
'''


@dataclass
class Live:
    """The module's server and the archives it can be given."""

    home: Path
    store: Path  # where `package` wrote the archives (not the server's HOME/store)
    archives: dict
    info: server.ServerInfo


def _slope_run(root: Path, slope: float) -> Path:
    """Return a run directory of y = slope·x on x = 1..5 (float program only: nothing to compile)."""
    x = np.arange(1, 6, dtype=np.float64)
    result = train(from_arrays(x.reshape(-1, 1), slope * x, ["x"], target="y"), TrainConfig(val_fraction=0.0, progress=False))
    return export_run(result, root / f"y{slope:g}x", QuantConfig("none"), compile=False).run_dir


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Live:
    """Yield a TorchServe started with allow_deploy serving lin 1.0 (y = 2x); stop it afterwards."""
    root = tmp_path_factory.mktemp("live")
    two, three = _slope_run(root, 2.0), _slope_run(root, 3.0)
    store = root / "store"
    cfg = ServingConfig(workers=1, batch_size=8, max_batch_delay_ms=2)
    (root / "failing_handler.py").write_text(FAILING_HANDLER)
    archives = {
        "1.0": package(two, "lin", "1.0", store, serving=cfg).path,
        "2.0": package(three, "lin", "2.0", store, serving=cfg).path,
        "broken": package(three, "lin", "9.0", root / "broken", serving=cfg, handler=root / "failing_handler.py").path,
    }
    home = root / "home"
    info = server.start_server(home, store, {"lin": archives["1.0"].name}, free_ports=True, ready_timeout=180, allow_deploy=True)
    try:
        yield Live(home, store, archives, info)
    finally:
        server.stop_server(home)


def _mgmt(live: Live, method: str, path: str, **kw) -> httpx.Response:
    key = server.read_keys(live.home)["management"]
    return httpx.request(method, live.info.management_url + path, headers={"Authorization": f"Bearer {key}"},
                         timeout=60, trust_env=False, **kw)  # fmt: skip


def _loaded(live: Live) -> dict[str, list[str]]:
    """Return {model: [versions]} as TorchServe lists them now."""
    return {name: sorted(v["version"] for v in versions) for name, versions in server.server_status(live.home)["models"].items()}


def _default(live: Live) -> str:
    return _mgmt(live, "GET", "/models/lin").json()[0]["modelVersion"]


def _ask(live: Live) -> dict:
    key = server.read_keys(live.home)["inference"]
    r = httpx.post(f"{live.info.inference_url}/predictions/lin", json={"instances": [[X]]},
                   headers={"Authorization": f"Bearer {key}"}, timeout=30, trust_env=False)  # fmt: skip
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


class Load:
    """CLIENTS threads, each with its own httpx client, asking lin for X until stopped; every answer is kept."""

    def __init__(self, live: Live):
        self.url = f"{live.info.inference_url}/predictions/lin"
        self.headers = {"Authorization": f"Bearer {server.read_keys(live.home)['inference']}"}
        self.stop = threading.Event()
        self.results: list[tuple[float, float, int, str, float]] = []  # sent, answered, status, version, value
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def _client(self) -> None:
        with httpx.Client(timeout=30, trust_env=False) as http:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    r = http.post(self.url, json={"instances": [[X]]}, headers=self.headers)
                    status, body = r.status_code, (r.json() if r.status_code == 200 else {})
                except httpx.HTTPError as e:
                    status, body = -1, {"error": repr(e)}
                with self.lock:
                    self.results.append((sent, time.monotonic(), status, body.get("version", ""), (body.get("predictions") or [math.nan])[0]))
                self.stop.wait(THINK_S)

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_deploy_under_load_switches_with_no_failed_request_then_rollback_and_retire(live, monkeypatch):
    assert _default(live) == "1.0"
    # The server was started without a key, so it loads unsigned archives: a key in the deploying shell changes
    # nothing (issue 23, 8a: the server's policy decides, not the deploying shell's environment).
    monkeypatch.setenv(SIGNING_KEY_ENV, "a key this server was never started with")
    with Load(live) as load:
        time.sleep(1.0)
        done = server.deploy("lin", live.archives["2.0"], live.home)
        deployed_at = time.monotonic()
        time.sleep(1.5)
        left, now = server.rollback("lin", live.home)
        rolled_at = time.monotonic()
        time.sleep(1.0)
    print(f"deploy steps (s): {done.seconds}; {len(load.results)} requests")
    assert (done.version, done.previous, left, now) == ("2.0", "1.0", "2.0", "1.0")
    assert done.smoke_row == [3.0] and math.isclose(done.smoke_answer["predictions"][0], 9.0, rel_tol=0.02), done
    failed = [r for r in load.results if r[2] != 200]
    assert not failed, failed[:5]
    assert len(load.results) > 100, len(load.results)
    for sent, _, _, version, value in load.results:
        assert math.isclose(value, {"1.0": 2 * X, "2.0": 3 * X}[version], rel_tol=0.02), (version, value)
    between = [r[3] for r in load.results if deployed_at < r[0] and r[1] < rolled_at - 0.5]
    after = [r[3] for r in load.results if r[0] > rolled_at]
    assert between and set(between) == {"2.0"}, set(between)  # every request sent after deploy returned
    assert after and set(after) == {"1.0"}, set(after)
    assert _loaded(live)["lin"] == ["1.0", "2.0"]  # the old default stayed loaded, so did 2.0 after the rollback

    with pytest.raises(server.ServerArgumentError, match="is the default"):
        server.retire("lin", "1.0", live.home)
    found = {v.version: v for v in server.versions("lin", live.home)}
    assert found["1.0"].default and not found["2.0"].default and found["2.0"].workers == ["READY"]
    assert found["2.0"].card["task"] == "regression" and found["2.0"].card["features"] == ["x"]
    copy = live.home / "store" / found["2.0"].archive
    assert copy.is_file()
    assert server.retire("lin", "2.0", live.home) == copy.name
    assert not copy.exists() and _loaded(live)["lin"] == ["1.0"]
    assert _ask(live)["version"] == "1.0"


def _refused_and_unchanged(live: Live, run) -> str:
    """Run a deploy that must fail; return its message after checking 1.0 still serves and nothing else is loaded."""
    before = sorted(p.name for p in (live.home / "store").iterdir())
    with pytest.raises(server.TorchServeError) as e:
        run()
    assert _loaded(live) == {"lin": ["1.0"]} and _default(live) == "1.0"
    assert _ask(live)["version"] == "1.0"
    assert sorted(p.name for p in (live.home / "store").iterdir()) == before  # no copy left behind
    return str(e.value)


def test_a_tampered_archive_is_refused_and_the_old_version_keeps_serving(live, tmp_path):
    bad = tmp_path / "lin-2.0.mar"
    with zipfile.ZipFile(live.archives["2.0"]) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data + b"\n# changed" if item.filename == "model-config.yaml" else data)
    message = _refused_and_unchanged(live, lambda: server.deploy("lin", bad, live.home))
    assert "model-config.yaml" in message and "SHA-256" in message, message
    r = subprocess.run([sys.executable, "-m", "aiaas_torch.cli", "deploy", "lin", str(bad), "--home", str(live.home)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "model-config.yaml" in r.stderr, (r.returncode, r.stderr)


def test_an_archive_whose_workers_fail_to_load_is_unregistered_and_the_old_version_keeps_serving(live):
    message = _refused_and_unchanged(live, lambda: server.deploy("lin", live.archives["broken"], live.home, ready_timeout=60))
    assert "deliberately broken model" in message and "unregistered" in message, message


def test_registering_a_url_outside_the_store_is_refused_by_torchserve(live, tmp_path):
    outside = tmp_path / "lin-7.0.mar"
    shutil.copyfile(live.archives["2.0"], outside)
    for url in [f"file://{outside}", f"file://{live.store}/{live.archives['2.0'].name}", "http://127.0.0.1:9/evil.mar",
                "https://example.com/lin.mar", "file:///etc/passwd"]:  # fmt: skip
        r = _mgmt(live, "POST", "/models", params={"url": url, "model_name": "intruder", "initial_workers": "1"})
        assert r.status_code == 404 and "does not match any allowed URL" in r.json()["message"], (url, r.status_code, r.text)
    assert _loaded(live) == {"lin": ["1.0"]}
    config = (live.home / "config.properties").read_text()
    assert "enable_model_api=true" in config and "allowed_urls=(?-i)file://" in config, config


class _TwoInputs(torch.nn.Module):
    """A tiny model to import: float x [N, 3] and integer counts k [N, 2] → [N, 2]."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x, k):
        return self.lin(x) + k.float()


def test_an_imported_model_deploys_with_a_smoke_sample_from_its_calibration_ranges(live, tmp_path, capsys):
    from aiaas_torch.cli import main
    from aiaas_torch.importer import import_model

    torch.manual_seed(0)
    x, k = torch.rand(20, 3) * 4 + 1, torch.randint(3, 10, (20, 2))
    model = _TwoInputs().eval()
    run = import_model(model, (x[:2], k[:2]), tmp_path / "net", calibration=(x.numpy(), k.numpy()), compile="never").run_dir
    mar = package(run, "net", "1.0", tmp_path / "store", serving=ServingConfig(workers=1)).path
    try:
        r = subprocess.run([sys.executable, "-m", "aiaas_torch.cli", "deploy", "net", str(mar), "--home", str(live.home), "--json"],
                           capture_output=True, text=True, timeout=180)  # fmt: skip
        assert r.returncode == 0, r.stderr
        done = json.loads(r.stdout)
        mid_x = (float(x.min()) + float(x.max())) / 2  # the calibration samples' midpoint, per input
        mid_k = (int(k.min()) + int(k.max())) // 2
        assert done["smoke_row"] == {"x": [mid_x] * 3, "k": [mid_k] * 2}, done["smoke_row"]
        with torch.no_grad():
            want = model(torch.full((1, 3), mid_x), torch.full((1, 2), mid_k))[0].tolist()
        np.testing.assert_allclose(done["smoke_answer"]["predictions"][0], want, rtol=1e-5)
        assert _loaded(live)["net"] == ["1.0"] and _loaded(live)["lin"] == ["1.0"]
        assert main(["versions", "net", "--home", str(live.home)]) == 0
        assert "inputs x [N, 3] float32, k [N, 2] int64" in capsys.readouterr().out
    finally:
        _mgmt(live, "DELETE", "/models/net/1.0")



def test_encoded_traversal_and_case_tricks_in_a_registration_url_are_refused(live, tmp_path):
    """Issue 23, 6: TorchServe matches allowed_urls on the raw URL, then percent-decodes it when it copies the file
    into the store and loads the copy; the fence admits no '%' and matches case-sensitively."""
    store = live.home / "store"
    outside = tmp_path / "lin-7.0.mar"
    shutil.copyfile(live.archives["2.0"], outside)
    up = os.path.relpath(outside.parent, store)  # ../../.. up to tmp_path
    before = sorted(p.name for p in store.iterdir())
    for url in [
        f"file://{store}/" + up.replace(".", "%2e").replace("/", "%2f") + "%2flin-7.0.mar",  # ../ fully encoded
        f"file://{store}/" + up.replace("/", "%2F") + "%2Flin-7.0.mar",  # only the separators encoded (TorchServe: "..")
        f"file://{store}/" + up.replace(".", "%252e").replace("/", "%252f") + "%252flin-7.0.mar",  # double-encoded
        f"file://{str(store).swapcase()}/lin-7.0.mar",  # another folder on a case-sensitive file system
        f"file://{store}/lin-7.0.mar?x=.mar",
    ]:  # fmt: skip
        r = _mgmt(live, "POST", "/models", params={"url": url, "model_name": "intruder", "initial_workers": "1"})
        assert r.status_code == 404, (url, r.status_code, r.text)
        refused = "Relative path is not allowed" if ".." in url else "does not match any allowed URL"
        assert refused in r.json()["message"], (url, r.text)
    assert _loaded(live) == {"lin": ["1.0"]}
    assert sorted(p.name for p in store.iterdir()) == before  # nothing was copied into the store


@dataclass
class Signed:
    """A server started with a signing key, and archives signed with it, with another key, and not at all."""

    home: Path
    archives: dict


KEY, OTHER_KEY = "the server's signing key", "another signing key"


@pytest.fixture(scope="module")
def signed(tmp_path_factory) -> Signed:
    """Yield a TorchServe started with allow_deploy and $AIAAS_SIGNING_KEY set, serving lin 1.0 (signed); stop it after."""
    root = tmp_path_factory.mktemp("signed")
    two, three = _slope_run(root, 2.0), _slope_run(root, 3.0)
    cfg = ServingConfig(workers=1)
    archives = {
        "1.0": package(two, "lin", "1.0", root / "store", serving=cfg, sign_key=KEY).path,
        "2.0": package(three, "lin", "2.0", root / "good", serving=cfg, sign_key=KEY).path,
        "2.0-other-key": package(three, "lin", "2.0", root / "other", serving=cfg, sign_key=OTHER_KEY).path,
        "2.0-unsigned": package(three, "lin", "2.0", root / "unsigned", serving=cfg).path,
    }
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SIGNING_KEY_ENV, KEY)
        server.start_server(home, root / "store", {"lin": archives["1.0"].name}, free_ports=True, ready_timeout=180, allow_deploy=True)
    try:
        yield Signed(home, archives)
    finally:
        server.stop_server(home)


def test_a_server_started_with_a_key_deploys_only_archives_signed_with_it_whatever_the_shell_has(signed, monkeypatch):
    """Issue 23, 8a: a shell without the key, or with another one, cannot deploy to a server started with a key."""
    versions = lambda: sorted(v.version for v in server.versions("lin", signed.home))  # noqa: E731
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    with pytest.raises(server.ServerArgumentError, match="started with a signing key"):
        server.deploy("lin", signed.archives["2.0-unsigned"], signed.home)
    r = subprocess.run([sys.executable, "-m", "aiaas_torch.cli", "deploy", "lin", str(signed.archives["2.0-unsigned"]),
                        "--home", str(signed.home)], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != SIGNING_KEY_ENV})  # fmt: skip
    assert r.returncode == 2 and "started with a signing key" in r.stderr, (r.returncode, r.stderr)
    monkeypatch.setenv(SIGNING_KEY_ENV, OTHER_KEY)
    with pytest.raises(server.ServerArgumentError, match="another key"):
        server.deploy("lin", signed.archives["2.0-other-key"], signed.home)
    monkeypatch.setenv(SIGNING_KEY_ENV, KEY)
    for wrong in ("2.0-unsigned", "2.0-other-key"):
        with pytest.raises(server.ServerArgumentError, match="signature|not signed"):
            server.deploy("lin", signed.archives[wrong], signed.home)
    assert versions() == ["1.0"]
    assert server.deploy("lin", signed.archives["2.0"], signed.home, ready_timeout=120).version == "2.0"
    assert versions() == ["1.0", "2.0"]
    policy = signed.home / "signing.json"
    assert oct(policy.stat().st_mode & 0o777) == "0o600" and KEY not in policy.read_text()
