"""The load generator and `aiaas bench`: well-formed output, errors counted, loopback only. No timing assertions."""

from __future__ import annotations

import builtins
import json
import subprocess
import sys
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aiaas_torch import bench, cli
from aiaas_torch.archive import ServingConfig

LEVEL_FIELDS = {"concurrency", "requests", "errors", "error_kinds", "seconds", "rps", "p50_ms", "p90_ms", "p99_ms", "max_ms",
                "mean_ms", "generator_cpu_percent", "server_cpu_percent", "machine_cpu_percent", "processes", "server_cpu_split"}  # fmt: skip


def check_level(lv: dict, concurrency: int) -> None:
    """Assert one level's fields are present, numbers ≥ 0, and the percentiles are ordered."""
    assert set(lv) == LEVEL_FIELDS
    assert lv["concurrency"] == concurrency
    for key in ("requests", "errors", "seconds", "rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms",
                "generator_cpu_percent", "machine_cpu_percent"):  # fmt: skip
        assert isinstance(lv[key], (int, float)) and lv[key] >= 0, (key, lv[key])
    assert lv["p50_ms"] <= lv["p90_ms"] <= lv["p99_ms"] <= lv["max_ms"]
    assert lv["errors"] == sum(lv["error_kinds"].values()) <= lv["requests"]


class _Status(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 handler answering every POST with self.server.status."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 - http.server API
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"code": 400}'
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        """Silence."""


@pytest.fixture()
def status_server():
    """Yield a function that starts a loopback server answering every request with a given status."""
    servers = []

    def start(status: int) -> str:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
        srv.status = status
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/predictions/x"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


# --------------------------------------------------------------------------------------------- no server


def test_target_refuses_anything_but_loopback():
    for url in ("http://10.0.0.1:8080/p", "http://example.com:80/p", "https://127.0.0.1:8080/p", "http://127.0.0.1/p"):
        with pytest.raises(ValueError, match="loopback"):
            bench.Target(url).check()
    assert bench.Target("http://localhost:1/p").check()


def test_request_bytes_is_one_keep_alive_request():
    raw = bench.Target("http://127.0.0.1:8080/predictions/m", b'{"a": 1}', {"Authorization": "Bearer k"}).request_bytes()
    head, body = raw.split(b"\r\n\r\n")
    assert head.startswith(b"POST /predictions/m HTTP/1.1\r\n")
    assert b"Connection: keep-alive" in head and b"Authorization: Bearer k" in head and b"Content-Length: 8" in head
    assert body == b'{"a": 1}'


def test_percentile_nearest_rank():
    values = [float(i) for i in range(1, 101)]
    assert bench.percentile(values, 50) == 50.0 and bench.percentile(values, 99) == 99.0
    assert bench.percentile(values, 100) == 100.0 and bench.percentile([], 50) == 0.0
    assert bench.percentile([3.0, 1.0, 2.0], 50) == 2.0  # any order: one function for the generator and the tests


def test_generator_child_processes_load_neither_torch_nor_the_package():
    # the generator's child processes run the engine file as a script: it must stand alone, and stay light
    code = ("import runpy, sys; runpy.run_path(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'aiaas_torch', 'numpy')))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, bench.loadgen.ENGINE_SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_parse_config_and_profiles():
    label, cfg = bench.parse_config("w1:workers=1,batch=8,delay=2")
    assert (label, cfg.workers, cfg.batch_size, cfg.max_batch_delay_ms) == ("w1", 1, 8, 2)
    # delay 0 with batching: TorchServe 0.12 would wait its default 100 ms per batch
    for bad in ("noLabel", "x:workers", "x:colour=1", "x:workers=two", "x:workers=0", "x:batch=8,delay=0"):
        with pytest.raises(ValueError):
            bench.parse_config(bad)
    configs = bench.configs_from_args(["throughput", "latency"], ["w1:workers=1"])
    assert list(configs) == ["throughput", "latency", "w1"]
    assert configs["latency"].batch_size == 1
    assert list(bench.configs_from_args(None, [])) == ["throughput"]


def test_measure_trivial_server_is_well_formed():
    with bench.serve_trivial(max_seconds=60) as (url, pid):
        levels = bench.measure(bench.Target(url), (1, 2), duration=0.5, warmup=0.2, server_pids=[pid], progress=False)
    for lv, c in zip(levels, (1, 2)):
        d = asdict(lv)
        check_level(d, c)
        assert d["requests"] > 0 and d["errors"] == 0 and d["server_cpu_percent"] is not None


def test_measure_counts_error_answers(status_server):
    url = status_server(400)
    (lv,) = bench.measure(bench.Target(url), (2,), duration=0.5, warmup=0.1, progress=False)
    check_level(asdict(lv), 2)
    assert lv.requests > 0 and lv.errors == lv.requests and lv.error_kinds == {"400": lv.requests}
    assert lv.rps == 0 and lv.p50_ms == 0  # error answers are neither throughput nor served latency


def test_measure_with_generator_processes(status_server):
    url = status_server(200)
    (lv,) = bench.measure(bench.Target(url), (4,), duration=0.5, warmup=0.2, processes=2, progress=False)
    check_level(asdict(lv), 4)
    assert lv.processes == 2 and lv.requests > 0 and lv.errors == 0


def test_measure_rejects_bad_settings():
    t = bench.Target("http://127.0.0.1:9/p")
    with pytest.raises(ValueError):
        bench.measure(t, (0,), progress=False)
    with pytest.raises(ValueError):
        bench.measure(t, (1,), duration=0, progress=False)


def test_plot_is_skipped_without_matplotlib(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    report = bench.BenchReport({}, {}, [])
    assert bench.plot(report, tmp_path / "x.png") is None
    assert "matplotlib" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_plot_writes_a_small_png(tmp_path):
    pytest.importorskip("matplotlib")
    lv = bench.LevelResult(1, 10, 0, {}, 1.0, 10.0, 1.0, 2.0, 3.0, 4.0, 1.5, 5.0, 50.0, 60.0)
    lv8 = bench.LevelResult(8, 80, 0, {}, 1.0, 80.0, 2.0, 3.0, 4.0, 5.0, 2.5, 5.0, 50.0, 60.0)
    report = bench.BenchReport({"cores": 2, "cpu": "test"}, {}, [bench.ConfigResult("a", [lv, lv8])])
    path = bench.plot(report, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 200_000


def test_cli_usage_errors(capsys):
    assert cli.main(["bench"]) == 2
    assert cli.main(["bench", "run", "--name", "m"]) == 2
    assert cli.main(["bench", "--name", "m", "--home", "/nonexistent-home"]) == 2
    assert cli.main(["bench", "run", "--config", "bad"]) == 2
    assert "error" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- real TorchServe


@pytest.mark.serving
def test_cli_bench_run_dir_against_real_torchserve(origin_run, tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = cli.main(["bench", str(origin_run.run_dir), "--config", "tiny:workers=1,batch_size=2,max_batch_delay_ms=1",
                     "--concurrency", "1,2", "--duration", "1", "--warmup", "0.3", "--server-warmup", "0",
                     "--out", str(out), "--plot", str(png), "--no-progress"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| tiny | 1 |" in printed and "| tiny | 2 |" in printed
    doc = json.loads(out.read_text())
    assert set(doc) == {"machine", "settings", "results", "ratios"}
    assert doc["machine"]["cores"] >= 1 and doc["settings"]["concurrency"] == [1, 2]
    (result,) = doc["results"]
    assert result["label"] == "tiny" and result["serving"]["batch_size"] == 2 and result["ready_seconds"] > 0
    for lv, c in zip(result["levels"], (1, 2)):
        check_level(lv, c)
        assert lv["requests"] > 0 and lv["errors"] == 0 and lv["server_cpu_percent"] >= 0


def test_bench_run_dir_refuses_rounds_below_one(origin_run):
    for rounds in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="rounds"):
            bench.bench_run_dir(origin_run.run_dir, {"x": ServingConfig()}, rounds=rounds)


@pytest.mark.serving
def test_bench_run_dir_in_rounds_reports_the_median_round_of_each_level(origin_run):
    report = bench.bench_run_dir(origin_run.run_dir, {"tiny": ServingConfig(workers=1, batch_size=2, max_batch_delay_ms=1)},
                                 rounds=3, concurrency=(1, 2), duration=0.4, warmup=0.1, server_warmup=0, progress=False)  # fmt: skip
    (result,) = report.results
    by_round = report.settings["req_per_s_by_round"]["tiny"]
    assert report.settings["rounds"] == 3 and report.settings["concurrency"] == [1, 2] and set(by_round) == {"1", "2"}
    for lv, c in zip(result.levels, (1, 2)):
        check_level(asdict(lv), c)
        assert lv.errors == 0 and len(by_round[str(c)]) == 3 and round(lv.rps) == sorted(by_round[str(c)])[1]


@pytest.mark.serving
def test_bench_served_counts_rejected_requests(origin_run, tmp_path):
    from aiaas_torch import serving as server
    from aiaas_torch.archive import package

    store, home = tmp_path / "store", tmp_path / "home"
    mar = package(origin_run.run_dir, "y2x", "1.0", store, serving=ServingConfig(workers=1, batch_size=2, max_batch_delay_ms=1))
    server.start_server(home, store, {"y2x": mar.path.name}, free_ports=True, ready_timeout=180)
    try:
        good = bench.bench_served(home, "y2x", concurrency=(2,), duration=0.5, warmup=0.2, progress=False)
        bad = bench.bench_served(home, "y2x", b'{"instances": [[1, 2]]}', concurrency=(1,), duration=0.5, warmup=0.1, progress=False)
    finally:
        server.stop_server(home)
    (g,) = good.results[0].levels
    (b,) = bad.results[0].levels
    check_level(asdict(g), 2)
    check_level(asdict(b), 1)
    assert g.requests > 0 and g.errors == 0
    assert b.requests > 0 and b.errors == b.requests and set(b.error_kinds) == {"400"}
    assert g.rps > 0 and b.rps == 0  # 400s are not throughput
