"""The origin example through the Python API: y = 2x on x = 1..5, trained by SGD, exported, answered locally.

Run: .venv/bin/python examples/origin.py [RUN_DIR]   (`make demo` does the same and also serves it over HTTP)
"""

import sys

import numpy as np

import aiaas_torch as ai

x = np.arange(1, 6, dtype=np.float64)
data = ai.from_arrays(x.reshape(-1, 1), 2 * x, feature_names=["x"], target="y")
result = ai.train(data, ai.TrainConfig(model="linear", epochs=1000, lr=0.01, val_fraction=0.0))
print(f"J(θ) after {result.epochs_run} epochs: {result.metrics['train']['J']:.3g}")

exported = ai.export_run(result, sys.argv[1] if len(sys.argv) > 1 else "runs/origin-example", ai.QuantConfig())
print(exported.report.summary())
print(exported.optimization_summary())
coef = exported.card["model"]["coefficients"]
print(f"weight {coef['weights']['x']:.4f}, bias {coef['bias']:.4f} (raw units)")

model = ai.load_run(exported.run_dir)
print("x = 6, 7 →", model.predict({"instances": [[6], [7]]})["predictions"])
