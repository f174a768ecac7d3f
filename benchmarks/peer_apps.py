"""The peers of benchmarks/peers.py: the same run directory served by FastAPI + uvicorn and by LitServe.

Both load the model with aiaas_torch.runs.load_run (the compiled package, one torch thread per worker, as our
TorchServe workers do) and answer through the same contract (LocalModel.predict), so only the serving stack
differs. They run from the benchmark venv (.venv-bench), never from the project's own environment.

    AIAAS_RUN_DIR=runs/origin .venv-bench/bin/python -m uvicorn peer_apps:app --app-dir benchmarks --workers 2 ...
    AIAAS_RUN_DIR=runs/origin .venv-bench/bin/python benchmarks/peer_apps.py litserve PORT WORKERS
"""

from __future__ import annotations

import json
import os
import sys

import torch

torch.set_num_threads(1)
RUN_DIR = os.environ.get("AIAAS_RUN_DIR", "")
NAME = os.environ.get("AIAAS_MODEL_NAME", "bench")


def _load():
    """Return the LocalModel of AIAAS_RUN_DIR."""
    from aiaas_torch.runs import load_run

    return load_run(RUN_DIR)


# --------------------------------------------------------------------------------------------- FastAPI + uvicorn
try:
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    app = FastAPI()
    _model = None

    @app.on_event("startup")
    def _startup() -> None:
        """Load the model once per uvicorn worker."""
        global _model
        _model = _load()

    @app.post(f"/predictions/{NAME}")
    async def predict(request: Request) -> Response:
        """Answer one request body through the contract (400 for a bad body)."""
        body = await request.body()
        try:
            answer = _model.predict(body, NAME, "1.0")
        except ValueError as e:
            return Response(json.dumps({"code": 400, "type": "InvalidInput", "message": str(e)}), 400, media_type="application/json")
        return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json")

except ImportError:  # imported outside the benchmark venv
    app = None


# --------------------------------------------------------------------------------------------- LitServe


try:
    import litserve as ls

    class AiaasAPI(ls.LitAPI):
        """LitServe's four methods around LocalModel (module level: LitServe pickles it into its workers)."""

        def setup(self, device):
            """Load the model in each worker."""
            torch.set_num_threads(1)
            self.model = _load()

        def decode_request(self, request):
            """Return the request body as LitServe parsed it (JSON)."""
            return request

        def predict(self, body):
            """Return the contract's answer for one body."""
            return self.model.predict(body, NAME, "1.0")

        def encode_response(self, output):
            """Return the answer as it is (LitServe serializes it)."""
            return output

except ImportError:  # imported outside the benchmark venv
    ls = None


def litserve_main(port: int, workers: int) -> None:
    """Serve the run directory with LitServe on 127.0.0.1:port (its defaults: no batching)."""
    server = ls.LitServer(AiaasAPI(api_path=f"/predictions/{NAME}"), accelerator="cpu", workers_per_device=workers, timeout=30)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    if sys.argv[1:2] == ["litserve"]:
        litserve_main(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit("usage: peer_apps.py litserve PORT WORKERS")
