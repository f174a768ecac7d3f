"""Text models benchmark (issue 26): a BERT-base-sized encoder (≈ 110 M parameters, random weights) imported from a
Hugging Face directory with `aiaas import DIR`, packaged and served by a real TorchServe, against the same model
run in-process by transformers. Prints the host's CPU and ISA, then the goals side by side:

- served texts/s at c = 16 (32-token texts, one text per request) vs transformers in-process at batch 16;
- served p50 at c = 1 vs one in-process call (batch 1, tokenizer included);
- worker RSS vs the served weights' bytes; `aiaas import` wall time.

infinity-emb (and sentence-transformers behind FastAPI) need packages this host cannot install (no network): that
column is reported as not run. The served side uses one worker with as many torch threads as the in-process side.

    .venv/bin/python benchmarks/text.py --out docs/bench/text.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from aiaas_torch import bench
from aiaas_torch import serving as server
from aiaas_torch.archive import ServingConfig, package
from aiaas_torch.handlers import integrity

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import textmodels  # noqa: E402  (the tokenizer trained on local text, as the tests train it)

SEQ = 32


def build_dir(d: Path, layers: int, hidden: int) -> None:
    """Write a BERT-base-sized BertModel directory (random weights, safetensors) with a locally trained tokenizer."""
    from transformers import BertConfig, BertModel

    textmodels.wordpiece(d)
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                     intermediate_size=4 * hidden, max_position_embeddings=512)  # fmt: skip
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(str(d))


def texts_of(d: Path, n: int) -> list[str]:
    """Return n distinct texts of exactly SEQ tokens (special tokens included) under the directory's tokenizer."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    words = " ".join(textmodels.corpus()).split()
    out, start = [], 0
    while len(out) < n and start < len(words):
        for end in range(start + 1, min(len(words), start + 60)):
            k = len(tok.encode(" ".join(words[start:end])).ids)
            if k == SEQ:
                out.append(" ".join(words[start:end]))
                break
            if k > SEQ:
                break
        start += 7
    return out


def in_process(d: Path, texts: list[str], threads: int, seconds: float) -> dict:
    """Return transformers' in-process figures: texts/s at batch 16 and the median one-text call (tokenizer included)."""
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(str(d))
    model = AutoModel.from_pretrained(str(d)).eval()

    def call(batch):
        enc = tok(batch, padding=True, return_tensors="pt")
        with torch.inference_mode():
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1)

    def timed(batch_size: int) -> list[float]:
        times, t_end, i = [], time.perf_counter() + seconds, 0
        call(texts[:batch_size])
        while time.perf_counter() < t_end or len(times) < 5:
            batch = [texts[(i + j) % len(texts)] for j in range(batch_size)]
            t0 = time.perf_counter()
            call(batch)
            times.append(time.perf_counter() - t0)
            i += batch_size
        return times

    b16, b1 = timed(16), timed(1)
    return {"texts_per_s_batch16": 16 / float(np.median(b16)), "batch16_ms": 1e3 * float(np.median(b16)),
            "one_call_p50_ms": 1e3 * float(np.median(b1)), "calls": [len(b16), len(b1)]}  # fmt: skip


def worker_rss(home: Path, name: str) -> int:
    """Return the resident bytes of the model's worker processes (summed)."""
    st = server.server_status(home)
    pids = [w["pid"] for v in st["models"][name] for w in v["workers"] if w.get("pid")]
    return sum(psutil.Process(int(p)).memory_info().rss for p in pids)


def main() -> int:
    """Run the benchmark and print the goals table; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--threads", type=int, default=2, help="torch threads, in-process and in the one worker (default 2)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per measured level (default 20)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    a = p.parse_args()
    host = bench.machine_info()
    host["isa_class"] = integrity.isa_class(integrity.cpu_flags())
    print(f"host: {host['cpu']}, {host['cores']} cores, ISA class {host['isa_class']}, load {host['loadavg_1min']}")
    with tempfile.TemporaryDirectory(prefix="aiaas-text-bench-") as tmp:
        tmp = Path(tmp)
        d = tmp / "bert"
        build_dir(d, a.layers, a.hidden)
        texts = texts_of(d, 64)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "aiaas_torch.cli", "import", str(d), "--out", str(tmp / "run")], check=True, stdout=subprocess.DEVNULL)
        import_s = time.perf_counter() - t0
        card = json.loads((tmp / "run" / "model.json").read_text())
        params = card["model"]["parameters"]
        local = in_process(d, texts, a.threads, a.duration / 2)
        store, home = tmp / "store", tmp / "home"
        mar = package(tmp / "run", "bert", "1.0", store, serving=ServingConfig(workers=1, batch_size=16, max_batch_delay_ms=5,
                                                                             threads=a.threads, response_timeout_s=120)).path  # fmt: skip
        info = server.start_server(home, store, [f"bert={mar.name}"], free_ports=True, ready_timeout=300)
        try:
            idle_rss = worker_rss(home, "bert")
            body = json.dumps({"instances": [texts[0]]}).encode()
            target = bench.served_target(home, "bert", body)
            levels = bench.measure_warmed(target, 10.0, concurrency=(1, 16), duration=a.duration, warmup=3.0, request_timeout=60.0,
                                          server_pids=[info.pid])  # fmt: skip
            rss = worker_rss(home, "bert")
        finally:
            server.stop_server(home)
    c1, c16 = levels
    weights = 4 * params
    figures = {
        "host": host, "parameters": params, "seq_tokens": SEQ, "threads": a.threads, "import_seconds": import_s,
        "in_process": local, "served": {"c1_p50_ms": c1.p50_ms, "c1_rps": c1.rps, "c16_texts_per_s": c16.rps, "c16_p50_ms": c16.p50_ms,
                                        "errors": c1.errors + c16.errors},
        "worker_rss_bytes": rss, "worker_rss_after_load_bytes": idle_rss, "weights_bytes": weights,
        "infinity_emb": "not run: not installed, and this host has no network to install it (nor sentence-transformers + FastAPI)",
    }  # fmt: skip
    rows = [
        ("served texts/s c=16 ÷ transformers batch 16", f"{c16.rps:.1f} ÷ {local['texts_per_s_batch16']:.1f}",
         c16.rps / local["texts_per_s_batch16"], "≥ 1.0"),
        ("served p50 c=1 ÷ one in-process call", f"{c1.p50_ms:.1f} ms ÷ {local['one_call_p50_ms']:.1f} ms",
         c1.p50_ms / local["one_call_p50_ms"], "≤ 1.3"),
        ("worker RSS ÷ weights bytes", f"{rss / 2**20:.0f} MiB ÷ {weights / 2**20:.0f} MiB", rss / weights,
         "≤ idle worker + 1.3× weights"),
        ("aiaas import seconds", f"{import_s:.1f} s", import_s, "≤ 120"),
        ("vs infinity-emb", "not run (no network here)", float("nan"), "≥ 1.2"),
    ]  # fmt: skip
    print(f"BERT-base-sized encoder: {params:,} parameters, {SEQ}-token texts, {a.threads} torch threads")
    for what, value, ratio, goal in rows:
        print(f"  {what:46s} {value:28s} {ratio:8.2f}   goal {goal}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
