"""The origin example end to end: y = 2x on x = 1..5 → SGD → quantize → package → TorchServe → HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def run_demo(home: str = ".aiaas-demo", workdir: str = "runs", model_store: str = "model_store", echo=print) -> dict:
    """Run the origin example through every stage and stop the server; returns a summary of what was measured."""
    from . import client as cl
    from . import serving as server
    from .archive import package
    from .data import from_arrays
    from .export import export_run
    from .models import fold_preprocessing
    from .quantize import QuantConfig, quantize
    from .train import TrainConfig, train

    say = echo or (lambda *_: None)
    summary: dict = {}
    x = np.arange(1, 6, dtype=np.float64)
    ds = from_arrays(x.reshape(-1, 1), 2 * x, ["x"], target="y")
    say("1. train: y = 2x on x = 1..5, linear model, SGD lr 0.01, 1000 epochs, full batch (scaling is a layer)")
    result = train(ds, TrainConfig(model="linear", epochs=1000, lr=0.01, val_fraction=0.0, seed=0, progress=False))
    folded = fold_preprocessing(result.model)
    w, b = float(folded[0].weight.detach()[0, 0]), float(folded[0].bias.detach()[0])
    say(f"   J(θ) = {result.metrics['train']['J']:.3g}; in raw units w = {w:.5f}, b = {b:.5f}")
    summary["weight"], summary["bias"] = w, b

    say("2. quantize and choose the served program by measurement (the default policy), export; the report says why")
    t0 = time.perf_counter()
    run_dir = Path(workdir) / "origin"
    exported = export_run(result, run_dir, QuantConfig())
    say("   " + exported.report.summary().replace("\n", "\n   "))
    say("   " + exported.optimization_summary().replace("\n", "\n   "))
    _, pow2 = quantize(folded, QuantConfig("pow2"), result.eval_X)
    say("   the same layer under pow2 (x_q = round(x / 2^k)) for comparison:")
    say("   " + pow2.summary().replace("\n", "\n   "))
    summary["export_seconds"] = round(time.perf_counter() - t0, 1)

    say("3. package the run directory as a TorchServe archive")
    mar = package(run_dir, "y2x", "1.0", model_store)
    say(f"   {mar.path} (sha256 {mar.sha256[:16]}…)")

    say("4. start TorchServe on 127.0.0.1 (token auth on, free ports) and wait until the workers are READY")
    t0 = time.perf_counter()
    info = server.start_server(home, model_store, {"y2x": mar.path.name}, free_ports=True)
    summary["ready_seconds"] = round(time.perf_counter() - t0, 1)
    say(f"   ready in {summary['ready_seconds']} s at {info.inference_url}")
    try:
        with cl.Client(home=home) as c:
            say("5. predict x = 6 and x = 7 over HTTP")
            answer = c.predict("y2x", {"instances": [[6.0], [7.0]]})
            for xi, yi in zip((6, 7), answer["predictions"]):
                say(f"   x = {xi} → {yi:.4f}")
            summary["predictions"] = answer["predictions"]
            card = c.describe("y2x")[0]["customizedMetadata"]
            say("6. the served model card (GET /models/y2x?customized=true)")
            say(f"   input {[f['name'] for f in card['input']['features']]}, output {card['output']['target']} ({card['output']['task']}), "
                f"coefficients {card['model']['coefficients']}")
            say(f"   trained with {card['training']['optimizer']} on data sha256 {card['data']['sha256'][:16]}…, "
                f"torch {card['versions']['torch']}; files: " + ", ".join(f"{n} ({m['role']})" for n, m in card["files"].items()))
            q = card["quantization"]
            say(f"   quantization: {q['scheme']}; " + "; ".join(f"{l['name']}: {l['decision']} — {l['reason']}" for l in q["layers"]))
    finally:
        say("7. stop TorchServe")
        server.stop_server(home)
    return summary
