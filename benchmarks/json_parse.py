"""Request-body parsing in the handler: `json_body.decode_body` with json only vs with orjson (issue 17).

In-process, no server: each body is parsed by the real `decode_body`, once with the module's orjson removed (what a
worker without orjson does) and once with it (its 64-bit integer check included), in alternating repeats; prints the
host (CPU, ISA class, cores, load) first, then the median µs per body of each, of the integer check alone (part of
the orjson column) and the speed-up. Bodies: 16 rows × 10
features and 1,000 rows × 20 features of random normal numbers, as `json.dumps` writes them (17 significant digits).

    .venv/bin/python benchmarks/json_parse.py [--repeats 21]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from aiaas_torch import bench
from aiaas_torch.handlers import json_body
from aiaas_torch.handlers import integrity

SHAPES = [(16, 10), (1000, 20)]


def body(rows: int, features: int, seed: int = 0) -> bytes:
    """Return an {"instances": rows} body of random normal numbers as JSON bytes."""
    rng = random.Random(seed)
    return json.dumps({"instances": [[rng.gauss(0, 1) for _ in range(features)] for _ in range(rows)]}).encode()


def per_body_us(data: bytes, parser, loops: int) -> float:
    """Return the mean µs of one decode_body(data) over `loops` calls with json_body.orjson set to `parser`."""
    saved, json_body.orjson = json_body.orjson, parser
    try:
        start = time.perf_counter()
        for _ in range(loops):
            json_body.decode_body(data)
        return (time.perf_counter() - start) / loops * 1e6
    finally:
        json_body.orjson = saved


def check_us(data: bytes, loops: int) -> float:
    """Return the mean µs of decode_body's 64-bit integer check alone (the part of its orjson path that is not orjson)."""
    start = time.perf_counter()
    for _ in range(loops):
        json_body.has_long_integer(data)
    return (time.perf_counter() - start) / loops * 1e6


def main() -> None:
    """Print the host and the json vs orjson table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=21, help="alternating repeats per parser (the median is shown)")
    a = p.parse_args()
    host = bench.machine_info()
    isa = integrity.isa_class(integrity.cpu_flags())
    print(f"host: {host['cpu']}, {host['cores']} cores, ISA class {isa}, load {host['loadavg_1min']}, python {host['python']}")
    if json_body.orjson is None:
        raise SystemExit("orjson is not installed here: nothing to compare")
    print(f"orjson {json_body.orjson.__version__}; median of {a.repeats} alternating repeats, µs per body")
    print(f"{'body':>12} {'bytes':>9} {'json':>10} {'orjson':>10} {'(int check)':>14} {'speed-up':>9}")
    for rows, features in SHAPES:
        data = body(rows, features)
        assert json_body.decode_body(data) == json.loads(data)
        loops = max(1, 200_000 // len(data))
        times: dict = {"json": [], "orjson": [], "check": []}
        for _ in range(a.repeats):
            times["json"].append(per_body_us(data, None, loops))
            times["orjson"].append(per_body_us(data, json_body.orjson, loops))
            times["check"].append(check_us(data, loops))
        j, o, c = (statistics.median(times[k]) for k in ("json", "orjson", "check"))
        print(f"{f'{rows} × {features}':>12} {len(data):>9,} {j:>10.1f} {o:>10.1f} {c:>14.1f} {j / o:>8.1f}×")


if __name__ == "__main__":
    main()
