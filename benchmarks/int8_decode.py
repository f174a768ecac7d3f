"""Decode tokens/s of our Decoder with float vs int8-weight matrices, on models of real shape (issue 28).

Each model is built directly as handlers/decoders.py's `Decoder` from random weights (no transformers, no download):
"tied" is Qwen2-0.5B's shape (hidden 896, 24 layers, 14 heads / 2 KV heads, intermediate 4864, vocabulary 151,936,
tied embeddings: the head is 136 M of its 494 M weights), "untied" the same layers with an untied vocabulary of
8,192 (weights mostly Linear layers). Every sequence first reads a short prompt, then decode steps are timed: one
forward of `batch` single tokens. Float and int8 are timed in alternating turns (float, int8, float, …) at each
thread count; the figure is the median step time over the turns, as tokens/s (batch ÷ step time), with the ratio
int8 ÷ float. Also printed: the host line (CPU, ISA flags, L3, load), the read bandwidth (a read-only sum over
512 MiB, median of 5) and the time that bandwidth needs to read the weights once (the bound at batch 1).

    .venv/bin/python benchmarks/int8_decode.py                      # both models, batch 1 and 16, 1 and 2 threads
    .venv/bin/python benchmarks/int8_decode.py --model untied --layers 4 --steps 4   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))
from aiaas_torch.handlers.decoder_weights import DecoderSpec  # noqa: E402
from aiaas_torch.handlers.decoders import Decoder, StepBatch  # noqa: E402
from int8_linear import host_line  # noqa: E402

MODELS = {"tied": dict(vocab=151936, tied=True), "untied": dict(vocab=8192, tied=False)}
PROMPT = 8


def spec_of(vocab: int, tied: bool, layers: int) -> DecoderSpec:
    """Return a Qwen2-0.5B-shaped spec with `vocab` tokens, tied or not, and `layers` layers."""
    return DecoderSpec("qwen2", vocab, 896, layers, 14, 2, 64, 4864, "rms", 1e-6, "rope", 4096, "silu", True, True,
                       False, False, tied, 1e6, (None,) * layers, (64 ** -0.5,) * layers)


def random_tensors(spec: DecoderSpec, seed: int = 0) -> dict:
    """Return checkpoint-named random tensors (std 0.02, norms 1) of a Qwen2 model of `spec`."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g) * 0.02  # noqa: E731
    h, kv = spec.hidden, spec.kv_heads * spec.head_dim
    t = {"model.embed_tokens.weight": rnd(spec.vocab, h), "model.norm.weight": torch.ones(h)}
    if not spec.tied:
        t["lm_head.weight"] = rnd(spec.vocab, h)
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        t |= {p + "input_layernorm.weight": torch.ones(h), p + "post_attention_layernorm.weight": torch.ones(h),
              p + "self_attn.q_proj.weight": rnd(h, h), p + "self_attn.q_proj.bias": rnd(h),
              p + "self_attn.k_proj.weight": rnd(kv, h), p + "self_attn.k_proj.bias": rnd(kv),
              p + "self_attn.v_proj.weight": rnd(kv, h), p + "self_attn.v_proj.bias": rnd(kv),
              p + "self_attn.o_proj.weight": rnd(h, h), p + "mlp.gate_proj.weight": rnd(spec.inner, h),
              p + "mlp.up_proj.weight": rnd(spec.inner, h), p + "mlp.down_proj.weight": rnd(h, spec.inner)}
    return t


def read_bandwidth(threads: int, mib: int = 512) -> float:
    """Return the read bandwidth in GB/s: a read-only sum over `mib` MiB of float32, median of 5."""
    torch.set_num_threads(threads)
    x = torch.ones(mib * 2**20 // 4)
    x.sum()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t)
    return x.numel() * 4 / statistics.median(times) / 1e9


def decode_steps(decoder: Decoder, batch: int, steps: int, clock=time.perf_counter) -> list:
    """Return the seconds (of `clock`) of each of `steps` decode steps of `batch` sequences, after their prompts."""
    cache = decoder.new_cache(batch, PROMPT + steps + 1)
    prompts = [[(7 * s + 3 * j) % decoder.spec.vocab for j in range(PROMPT)] for s in range(batch)]
    logits = decoder.forward(cache, StepBatch.build([(s, 0, p) for s, p in enumerate(prompts)]))
    out = []
    for i in range(steps):
        new = logits.argmax(-1).tolist()
        t = clock()
        logits = decoder.forward(cache, StepBatch.build([(s, PROMPT + i, [tok]) for s, tok in enumerate(new)]))
        out.append(clock() - t)
    return out


def run_model(name: str, layers: int, batches: list, threads: list, rounds: int, steps: int, clock=time.perf_counter) -> list:
    """Return one row per (threads, batch) of `name`: float and int8 tokens/s and their ratio, alternating turns."""
    spec = spec_of(**MODELS[name], layers=layers)
    tensors = random_tensors(spec)
    t = time.perf_counter()
    forms = {"float": Decoder(spec, tensors)}
    forms["int8"] = Decoder(spec, tensors, weights="int8-weight")
    build_s = time.perf_counter() - t
    del tensors
    fb, qb = forms["float"].weight_bytes, forms["int8"].weight_bytes
    print(f"\n{name}: vocab {spec.vocab} {'tied' if spec.tied else 'untied'}, {layers} layers; weights float "
          f"{fb / 1e6:.0f} MB, int8 {qb / 1e6:.0f} MB ({qb / fb:.3f}×); built in {build_s:.1f} s; "
          f"int8 path {forms['int8'].top['head'].path}", flush=True)
    rows = []
    for th in threads:
        bw = read_bandwidth(th)
        for b in batches:
            times = {k: [] for k in forms}
            for _ in range(rounds):
                for k, dec in forms.items():
                    torch.set_num_threads(th)
                    times[k] += decode_steps(dec, b, steps, clock)
            f, q = (statistics.median(times[k]) for k in ("float", "int8"))
            row = dict(model=name, threads=th, batch=b, float_tok_s=b / f, int8_tok_s=b / q, ratio=f / q,
                       float_ms=f * 1e3, int8_ms=q * 1e3, read_gb_s=bw, float_read_bound_ms=fb / bw / 1e6,
                       int8_read_bound_ms=qb / bw / 1e6, load=os.getloadavg()[0])
            rows.append(row)
            print(f"  {th} thread{'s' if th > 1 else ' '}, batch {b:2d}: float {row['float_tok_s']:8.2f} tok/s "
                  f"({row['float_ms']:.1f} ms/step), int8 {row['int8_tok_s']:8.2f} tok/s ({row['int8_ms']:.1f} ms/step), "
                  f"int8/float {row['ratio']:.2f}×; read {bw:.1f} GB/s → weights once: float "
                  f"{row['float_read_bound_ms']:.1f} ms, int8 {row['int8_read_bound_ms']:.1f} ms; load {row['load']:.1f}",
                  flush=True)
    return rows


def main(argv=None) -> int:
    """Run the benchmark; print the host line and one line per (model, threads, batch)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=[*MODELS, "both"], default="both", help="which model shape (default both)")
    ap.add_argument("--layers", type=int, default=24, help="decoder layers (default 24, Qwen2-0.5B's)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="sequences decoded together (default 1 16)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads (default 1, the worker's, and 2)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating turns per form (default 3)")
    ap.add_argument("--steps", type=int, default=6, help="decode steps timed per turn (default 6)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: elapsed time; cpu: CPU seconds of the computing thread (1 thread only: less "
                         "disturbed by other jobs on a shared host)")
    ap.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    if min(args.layers, args.rounds, args.steps, *args.batches, *args.threads) < 1:
        print("error: --layers, --rounds, --steps, --batches and --threads must be ≥ 1", file=sys.stderr)
        return 2
    if args.clock == "cpu" and args.threads != [1]:
        print("error: --clock cpu measures the one computing thread; use it with --threads 1", file=sys.stderr)
        return 2
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    print(host_line() + f", clock {args.clock}", flush=True)
    rows = []
    for name in MODELS if args.model == "both" else [args.model]:
        rows += run_model(name, args.layers, args.batches, args.threads, args.rounds, args.steps, clock)
    if args.json:
        args.json.write_text(json.dumps(dict(host=host_line(), rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
