"""The peers of benchmarks/peers.py: the same run directory served by FastAPI + uvicorn and by LitServe.

Both load the model with aiaas_torch.runs.load_run (the compiled package, one torch thread per worker, as our
TorchServe workers do) and answer through the same contract (LocalModel.predict), so only the serving stack
differs. They run from the benchmark venv (.venv-bench), never from the project's own environment.

    AIAAS_RUN_DIR=runs/origin .venv-bench/bin/python -m uvicorn peer_apps:app --app-dir benchmarks --workers 2 ...
    AIAAS_RUN_DIR=runs/origin .venv-bench/bin/python benchmarks/peer_apps.py litserve PORT WORKERS [MAX_BATCH TIMEOUT_MS]

LitServe runs with its defaults (one request per predict) or, given MAX_BATCH > 1, with its own batching: up to
MAX_BATCH requests collected for at most TIMEOUT_MS, each checked through the contract on its own, ONE forward over
the valid rows, the answers split back (a bad request is refused alone), as our TorchServe handler does.
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

    class AiaasBatchedAPI(AiaasAPI):
        """LitServe with its own batching: `batch` checks each request, `predict` runs one forward, `unbatch` splits."""

        def batch(self, bodies):
            """Return (each request's checked rows or its refusal message, the valid rows' inputs stacked in order)."""
            from aiaas_torch.handlers import aiaas_contract as contract

            parsed = []
            for body in bodies:
                try:
                    parsed.append(contract.parse_request(body, self.model.card))
                except ValueError as e:  # this request's 400; the others still get their forward
                    parsed.append(str(e))
            valid = [p for p in parsed if not isinstance(p, str)]
            inputs = {name: [s for p in valid for s in p.inputs[name]] for name in valid[0].inputs} if valid else {}
            return parsed, inputs

        def predict(self, batch):
            """Return (the batch's checked requests, {output name: per-row outputs} of ONE forward over all valid rows)."""
            from aiaas_torch.handlers import programs

            parsed, inputs = batch
            return parsed, programs.run_samples(self.model.programs, self.model.card, inputs) if inputs else {}

        def unbatch(self, output):
            """Return one answer per request, in order: its contract answer, or a 400 JSON response naming what is wrong."""
            from aiaas_torch.handlers import aiaas_contract as contract

            parsed, flat = output
            answers, start = [], 0
            for p in parsed:
                if isinstance(p, str):
                    answers.append(_refusal(p))
                    continue
                rows = {name: v[start : start + len(p.rows)] for name, v in flat.items()}
                start += len(p.rows)
                try:
                    answers.append(contract.answer(self.model.card, p, rows, NAME, "1.0"))
                except ValueError as e:  # an output JSON cannot carry: this request's 400 alone
                    answers.append(_refusal(str(e)))
            return answers

    def _refusal(message: str):
        """Return the 400 JSON response of a refused request (LitServe passes a Response through as it is)."""
        from fastapi.responses import JSONResponse

        from aiaas_torch.handlers import aiaas_contract as contract

        return JSONResponse(contract.error_body(message, 400), status_code=400)

except ImportError:  # imported outside the benchmark venv
    ls = None


def litserve_api(max_batch: int = 1, timeout_ms: float = 0.0):
    """Return the LitAPI: LitServe's defaults (one request per predict) for max_batch 1, else its batching on."""
    if max_batch == 1:
        return AiaasAPI(api_path=f"/predictions/{NAME}")
    return AiaasBatchedAPI(max_batch_size=max_batch, batch_timeout=timeout_ms / 1000.0, api_path=f"/predictions/{NAME}")


def litserve_main(port: int, workers: int, max_batch: int = 1, timeout_ms: float = 0.0) -> None:
    """Serve the run directory with LitServe on 127.0.0.1:port (see litserve_api for the batching)."""
    server = ls.LitServer(litserve_api(max_batch, timeout_ms), accelerator="cpu", workers_per_device=workers, timeout=30)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    if sys.argv[1:2] == ["litserve"] and len(sys.argv) in (4, 6):
        litserve_main(int(sys.argv[2]), int(sys.argv[3]), *(int(sys.argv[4]), float(sys.argv[5])) if len(sys.argv) == 6 else ())
    else:
        sys.exit("usage: peer_apps.py litserve PORT WORKERS [MAX_BATCH TIMEOUT_MS]")
