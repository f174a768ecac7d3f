"""Issue 23 finding 7: a refused body costs the worker memory in proportion to its size, whatever its format.

One TorchServe (module scope) serves a 3-feature tabular model and an imported Linear(3, 1) (a tensor card), one
worker each, batchSize 1. For every request format the handler takes, a body of a few MB that it must refuse (over
max_rows, or data that does not fit its declared shape) is sent, and the worker's peak RSS (VmHWM in
/proc/PID/status, reset to the current RSS before each body by writing 5 to /proc/PID/clear_refs) may grow by at
most PARSE + K × the body. PARSE is the JSON parse, which no check can avoid, measured here with tracemalloc on the
handler's own `decode_body` (orjson builds a document of ~16 bytes per value, then one Python object per list and
per value: 10-23× the body for these bodies). K = 3 holds the bytes the worker keeps beside the parsed value (the
body as received, and the handler's one translated copy that looks for long integers) plus a body's worth of
allocator slack. The per-row expansion this test guards against costs far more: TF Serving's named columns expanded
into one dict per row before max_rows was checked cost ~200 bytes per 6-byte row of JSON (~30× the body; a 6.5 MB
body grew a worker by 670 MB). The allocator may reuse memory an earlier body freed, so a figure can only be lower
than the body's true cost: the bound never fails for that reason.
"""

from __future__ import annotations

import json
import sys
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from aiaas_torch import serving as server
from aiaas_torch.archive import ServingConfig, package
from aiaas_torch.handlers.aiaas_contract import decode_body
from aiaas_torch.importer import import_model

from rel_helpers import keys, own_worker_pid, report, running

pytestmark = [pytest.mark.serving, pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")]

K = 3  # the module docstring says why
ROWS = 400_000  # 40× the default max_rows (10,000); every body below is 2-6 MB, under TorchServe's 6.5 MB cap
ROW = [1, 2, 3]  # integers: the parse makes no object per value (small ints are shared), what an expansion adds shows


@dataclass
class Mem:
    home: Path
    info: server.ServerInfo


@pytest.fixture(scope="module")
def mem(runs, tmp_path_factory) -> Mem:
    """Yield a TorchServe serving `tab` (the shared 3-feature run) and `tens` (an imported Linear(3, 1)), 1 worker each."""
    root = tmp_path_factory.mktemp("mem")
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 1).eval()
    calib = torch.randn(64, 3)
    tens = import_model(lin, calib[:2], root / "tens", calibration={"input": calib.numpy()}, compile="never").run_dir
    store = root / "store"
    one = ServingConfig(workers=1, batch_size=1, max_batch_delay_ms=0)
    archives = {"tab": package(runs.lin, "tab", "1.0", store, serving=one).path,
                "tens": package(tens, "tens", "1.0", store, serving=one).path}  # fmt: skip
    home = root / "home"
    with running(home, store, archives) as info:
        yield Mem(home, info)


def _j(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def v2_answer(name: str, shape: list, data) -> bytes:
    return _j({"inputs": [{"name": name, "shape": shape, "datatype": "FP32", "data": data}]})


def _binary(name: str, shape: list, values: int | None = None) -> tuple:
    """Return (body, its binary header value) of an Open Inference binary-extension body of FP32 zeros."""
    size = 4 * (values or shape[0] * shape[1])
    head = _j({"inputs": [{"name": name, "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": size}}]})
    return head + bytes(size), str(len(head))


FLAT = ROW * ROWS
OVER, OVER_S = f"{ROWS} rows, more than the limit of 10000", f"{ROWS} samples, more than the limit of 10000"
HALF, HALF_S = f"{ROWS // 2} rows, more than the limit of 10000", f"{ROWS // 2} samples, more than the limit of 10000"
# (id, model, body, a fragment the 400's message must hold)
CASES = [
    ("instances-lists", "tab", lambda: _j({"instances": [ROW] * ROWS}), OVER),
    ("instances-named", "tab", lambda: _j({"instances": [dict(zip("abc", ROW))] * (ROWS // 2)}), HALF),
    ("bare-rows", "tab", lambda: _j([ROW] * ROWS), OVER),
    ("bare-one-row", "tab", lambda: _j(FLAT), f"{3 * ROWS} values, expected 3"),
    ("tfs-instances", "tab", lambda: _j({"signature_name": "serving_default", "instances": [ROW] * ROWS}), OVER),
    ("tfs-columns", "tab", lambda: _j({"signature_name": "serving_default", "inputs": {k: [v] * ROWS for k, v in zip("abc", ROW)}}),
     OVER),
    ("tfs-columns-list", "tab", lambda: _j({"inputs": [ROW] * ROWS}), OVER),
    ("v2-flat", "tab", lambda: v2_answer("input", [ROWS, 3], FLAT), OVER),
    ("v2-nested", "tab", lambda: v2_answer("input", [ROWS, 3], [ROW] * ROWS), OVER),
    ("v2-data-longer-than-shape", "tab", lambda: v2_answer("input", [1, 3], FLAT), "for shape [1, 3]"),
    ("v2-nested-data-longer-than-shape", "tab", lambda: v2_answer("input", [1, 3], [ROW] * ROWS), "for shape [1, 3]"),
    ("named-row-of-many-names", "tab", lambda: _j({"instances": [{f"k{i}": 1 for i in range(ROWS)}]}), f"… and {ROWS - 5} more]"),
    ("object-of-many-keys", "tab", lambda: _j({f"k{i}": 1 for i in range(ROWS)}), f"… and {ROWS - 10} more]"),
    ("v2-binary", "tab", lambda: _binary("input", [ROWS, 3]), OVER),
    ("v2-binary-longer-than-shape", "tab", lambda: _binary("input", [1, 3], 3 * ROWS), f"{3 * ROWS} values for shape [1, 3]"),
    ("tensor-instances", "tens", lambda: _j({"instances": [ROW] * ROWS}), OVER_S),
    ("tensor-instances-named", "tens", lambda: _j({"instances": [{"input": ROW}] * (ROWS // 2)}), HALF_S),
    ("tensor-one-huge-sample", "tens", lambda: _j({"instances": [FLAT]}), "expects samples of shape [3]"),
    ("tensor-columns", "tens", lambda: _j({"inputs": {"input": [ROW] * ROWS}}), OVER),
    ("tensor-v2-flat", "tens", lambda: v2_answer("input", [ROWS, 3], FLAT), OVER_S),
    ("tensor-v2-data-longer-than-shape", "tens", lambda: v2_answer("input", [1, 3], FLAT), "for shape [1, 3]"),
]


def _status_kb(pid: int, field: str) -> int:
    """Return a /proc/PID/status field in kB (VmHWM: peak RSS since the last reset, VmRSS: now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _reset_peak(pid: int) -> None:
    """Reset the process's VmHWM to its current RSS (Linux ≥ 4.0; a process of our own user)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    """Collect each case's figures; written to mem_per_request.json (and printed) after the module."""
    out: dict = {}
    yield out
    report(tmp_path_factory.mktemp("mem_report") / "mem_per_request.json", "memory per request", out)


def _parse_cost(body: bytes) -> int:
    """Return the peak bytes the handler's JSON parse of body allocates here (tracemalloc)."""
    tracemalloc.start()
    try:
        value = decode_body(body)
        del value
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_refused_body_grows_the_worker_by_its_parse_and_a_small_multiple_of_its_size(mem, figures, case):
    cid, model, build, needle = case
    body, length = build(), None
    headers = {"Authorization": f"Bearer {keys(mem.home)['inference']}", "Content-Type": "application/json"}
    if isinstance(body, tuple):  # the binary extension: JSON header, then the tensor bytes (the parse is the header's)
        body, length = body
        headers.update({"Inference-Header-Content-Length": length, "Content-Type": "application/octet-stream"})
    assert 2_000_000 < len(body) < 6_553_500, len(body)  # a few MB, under TorchServe's max_request_size
    pid = own_worker_pid(mem.info, model)
    before = _status_kb(pid, "VmRSS")
    _reset_peak(pid)
    r = httpx.post(f"{mem.info.inference_url}/predictions/{model}", content=body, headers=headers, timeout=120, trust_env=False)
    growth = (_status_kb(pid, "VmHWM") - before) * 1024
    parse, mb = _parse_cost(body if length is None else body[: int(length)]), len(body) / 1e6
    figures[cid] = {"body_mb": round(mb, 2), "growth_mb": round(growth / 1e6, 1), "parse_mb": round(parse / 1e6, 1),
                    "growth_x_body": round(growth / len(body), 1), "beyond_parse_x_body": round((growth - parse) / len(body), 1)}  # fmt: skip
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert needle in r.json()["message"], r.json()["message"]
    assert own_worker_pid(mem.info, model) == pid  # the same worker answered and lives on
    assert growth <= parse + K * len(body), (f"{cid}: the worker grew {growth / 1e6:.1f} MB for a {mb:.2f} MB body, "
                                             f"{(growth - parse) / 1e6:.1f} MB beyond parsing it ({(growth - parse) / len(body):.1f}× the body)")  # fmt: skip
