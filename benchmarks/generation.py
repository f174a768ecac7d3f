"""Generation engine benchmark: decode tokens/s at batch 1 and at 16 streams on a ≈0.5 B-parameter random model.

The model has Qwen2-0.5B's shape (hidden 896, 24 layers, 14 heads / 2 KV heads, MLP 4864, vocab 151936, tied
embeddings; 494 M parameters, float32) with random weights built in memory (nothing is downloaded). In the same run
it measures the host's read bandwidth (a read-only sum over 512 MiB, best of several) and reports decode tokens/s
against the host's limit, bandwidth ÷ weight bytes read per token (issue 27's goal: ≥ 0.4× at batch 1; 16 streams
≥ 3.5× one stream), the bare matmuls of one token as a ceiling, the prefill time of a 256-token prompt alone, and
the step time when that prompt joins 15 decoding streams, prefilled in the same forward ("mixed") or in its own
("separate"). Prints the host CPU, ISA and load average first: on a shared box the figures are noisy.

    .venv/bin/python benchmarks/generation.py [--small] [--threads N] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from aiaas_torch.handlers.decoder_weights import expected_names, read_spec
from aiaas_torch.handlers.decoders import Decoder
from aiaas_torch.handlers.generation import Engine, SamplingParams
from aiaas_torch.making import vector_isa

QWEN2_05B = {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
             "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
             "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True, "hidden_act": "silu"}
SMALL = {**QWEN2_05B, "vocab_size": 32000, "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8,
         "num_attention_heads": 8, "num_key_value_heads": 2}


def host() -> dict:
    """Return the host's CPU model, vector ISA, core count, torch threads and load average."""
    name = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return {"cpu": name, "isa": vector_isa(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "load_average": os.getloadavg(), "torch": torch.__version__}


def read_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Return the best read bandwidth in bytes/s of a read-only sum over a `mib` MiB float32 tensor."""
    x = torch.ones(mib * 2 ** 20 // 4)
    x.sum()
    best = min(_timed(lambda: x.sum()) for _ in range(repeats))
    return x.numel() * 4 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def random_decoder(config: dict, seed: int = 0) -> Decoder:
    """Return a `Decoder` of `config`'s shape with random weights (norms at 1), built in memory."""
    spec = read_spec(config)
    g = torch.Generator().manual_seed(seed)
    tensors = {name: (torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=g) * 0.02)
               for name, shape in expected_names(spec).items()}
    return Decoder(spec, tensors)


def matmul_floor(decoder: Decoder, repeats: int = 5) -> float:
    """Return the best time of one token's bare matmuls (every linear layer and the head), the ceiling for decode."""
    x = torch.randn(1, decoder.spec.hidden)

    def once():
        with torch.inference_mode():
            for layer in decoder.layers:
                F.linear(x, layer["qkv_w"])
                F.linear(F.linear(x, layer["up_w"])[:, :decoder.spec.inner], layer["down_w"])
                F.linear(torch.zeros(1, layer["o_w"].shape[1]), layer["o_w"])
            F.linear(x, decoder.top["head"])
    once()
    return min(_timed(once) for _ in range(repeats))


def decode_rate(decoder: Decoder, streams: int, steps: int, prompt_len: int = 16) -> float:
    """Return aggregate decode tokens/s of `streams` greedy sequences (after their prefill and one warm-up step)."""
    engine = Engine(decoder, slots=streams, context=prompt_len + steps + 4)
    g = torch.Generator().manual_seed(1)
    for i in range(streams):
        engine.add(i, torch.randint(0, decoder.spec.vocab, (prompt_len,), generator=g).tolist(), SamplingParams(temperature=0))
    engine.step()
    engine.step()
    t = time.perf_counter()
    for _ in range(steps):
        engine.step()
    return streams * steps / (time.perf_counter() - t)


def join_cost(decoder: Decoder, prefill: str, prompt_len: int = 256, running: int = 15, repeats: int = 3) -> dict:
    """Return the median times of a `prompt_len` prompt alone, and of the step in which it joins `running` decoders."""
    g = torch.Generator().manual_seed(2)
    alone, joined, decode = [], [], []
    for r in range(repeats):
        engine = Engine(decoder, slots=running + 1, context=prompt_len + 16, prefill=prefill)
        prompt = torch.randint(0, decoder.spec.vocab, (prompt_len,), generator=g).tolist()
        engine.add("alone", prompt, SamplingParams(temperature=0, max_tokens=1))
        alone.append(_timed(engine.step))
        for i in range(running):
            engine.add(i, prompt[:16], SamplingParams(temperature=0))
        engine.step()
        decode.append(_timed(engine.step))
        engine.add("new", prompt, SamplingParams(temperature=0))
        joined.append(_timed(engine.step))
    return {"prefill_alone_s": statistics.median(alone), "decode_step_s": statistics.median(decode),
            "join_step_s": statistics.median(joined)}


def main() -> None:
    """Run the benchmark and print (and optionally write) its figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="a ≈50 M-parameter model instead (a quick check)")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = host()
    print(json.dumps(info))
    bandwidth = read_bandwidth()
    decoder = random_decoder(SMALL if args.small else QWEN2_05B)
    weight_bytes = decoder.weight_bytes
    limit = bandwidth / weight_bytes
    print(f"weights {weight_bytes / 2 ** 20:.0f} MiB ({weight_bytes // 4 / 1e6:.0f} M parameters), read bandwidth "
          f"{bandwidth / 1e9:.2f} GB/s → limit {limit:.2f} tokens/s at batch 1")
    floor = matmul_floor(decoder)
    one = decode_rate(decoder, 1, args.steps)
    sixteen = decode_rate(decoder, 16, args.steps)
    joins = {mode: join_cost(decoder, mode) for mode in ("mixed", "separate")}
    report = {"host": info, "read_bandwidth_GBps": bandwidth / 1e9, "weight_bytes": weight_bytes,
              "limit_tokens_per_s": limit, "matmuls_only_tokens_per_s": 1 / floor, "matmuls_only_ratio": 1 / floor / limit,
              "batch1_tokens_per_s": one, "batch1_ratio": one / limit, "streams16_tokens_per_s": sixteen,
              "streams16_over_one": sixteen / one, "join_256_into_15": joins,
              "load_average_after": os.getloadavg()}
    print(f"matmuls alone     {1 / floor:8.2f} tokens/s  ({1 / floor / limit:.2f}× the limit)")
    print(f"decode, batch 1   {one:8.2f} tokens/s  ({one / limit:.2f}× the limit; goal ≥ 0.4×)")
    print(f"decode, 16 streams{sixteen:8.2f} tokens/s  ({sixteen / one:.2f}× one stream; goal ≥ 3.5×)")
    for mode, j in joins.items():
        print(f"256-token prompt, {mode:8s}: alone {j['prefill_alone_s']:.2f} s, a decode step of 15 {j['decode_step_s']:.3f} s, "
              f"the step it joins {j['join_step_s']:.2f} s")
    print(f"load average after: {os.getloadavg()}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
