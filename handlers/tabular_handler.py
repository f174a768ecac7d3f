"""TorchServe handler for aiaas-torch tabular models; runs inside TorchServe workers and ships in every .mar.

It imports nothing from aiaas_torch (the package may be absent in a worker): the contract check lives in
aiaas_contract.py, shipped beside this file. Four small steps, as in LitServe's LitAPI:
setup (verify files, pick device, load) → decode (check each request against the card) →
predict (ONE forward for all valid rows of the batch) → encode (split answers back, per-request errors).
"""

from __future__ import annotations

import json
import logging
import os
import time

import torch

try:  # installed package (tests, aiaas predict --local)
    from . import aiaas_contract as contract
    from . import programs
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    import aiaas_contract as contract
    import programs

logger = logging.getLogger(__name__)
JSON = "application/json"
_REASONS = {400: "Bad Request", 415: "Unsupported Media Type"}


def _content_type(context, idx: int):
    """Return request idx's Content-Type header (names are case-insensitive), or None when it has none."""
    headers = context.get_all_request_header(idx) or {}
    return next((v for k, v in headers.items() if isinstance(k, str) and k.lower() == "content-type"), None)


class TabularHandler:
    """Serves one aiaas model: checks requests against its model card and runs one forward per batch."""

    def __init__(self):
        self.card: dict = {}
        self.initialized = False

    def initialize(self, context) -> None:
        """Set up the worker: verify files against the card, choose device and program, load and warm up; returns None."""
        props = context.system_properties
        model_dir = props.get("model_dir", ".")
        self.model_name = context.model_name
        self.model_version = str((context.manifest or {}).get("model", {}).get("modelVersion", ""))
        with open(os.path.join(model_dir, "model.json"), encoding="utf-8") as f:
            self.card = json.load(f)
        problems = contract.verify_files(self.card, model_dir, roles={"cpu-compiled", "float-program"})
        problems += contract.verify_signature(self.card, model_dir, os.environ.get(contract.SIGNING_KEY_ENV))
        if problems:
            msg = f"{contract.REFUSAL_MARK} {self.model_name}: " + "; ".join(problems)
            logger.error(msg)
            raise RuntimeError(msg)
        settings = (getattr(context, "model_yaml_config", None) or {}).get("handler", {}) or {}
        self.max_rows = int(settings.get("max_rows", self.card["input"].get("max_rows", contract.DEFAULT_MAX_ROWS)))
        torch.set_num_threads(int(settings.get("threads", 1)))
        self.device, self.program_files, self.model = self._load(model_dir, props.get("gpu_id"))
        self.predict([[f["mean"] for f in self.card["input"]["features"]]])  # warm-up
        logger.info("aiaas: %s v%s serving %s on %s", self.model_name, self.model_version, ", ".join(self.program_files), self.device)
        self.initialized = True

    def _load(self, model_dir: str, gpu_id):
        """Return (device, file names, ProgramSet) chosen by programs.choose for this worker's CPU, torch and device."""
        loaded = programs.load(self.card, model_dir, torch.cuda.is_available(), gpu_id, log=logger.warning)
        logger.info("aiaas: %s program choice: %s", self.model_name, loaded.reason)
        return loaded.device, loaded.files, loaded

    def decode(self, body):
        """Return the checked ParsedRequest for one request body (raises contract.ContractError)."""
        return contract.parse_request(body, self.card, self.max_rows)

    def predict(self, rows: list) -> list:
        """Return the model's output rows for a list of checked input rows, in one forward (the program of its batch size)."""
        x = torch.tensor(rows, dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            return self.model(x).float().cpu().tolist()

    def encode(self, parsed, outputs: list) -> str:
        """Return the JSON answer for one request."""
        return json.dumps(contract.answer(self.card, parsed, outputs, self.model_name, self.model_version), separators=(",", ":"))

    def handle(self, data: list, context) -> list:
        """Return exactly one answer per request of the batch; a bad request gets 400 and does not fail the others."""
        t0 = time.perf_counter()
        if context.get_request_header(0, "describe") == "True":
            return [self.describe_handle()]
        answers: list = [None] * len(data)
        parsed: list = [None] * len(data)
        for i, request in enumerate(data):
            body = request.get("data") if request.get("data") is not None else request.get("body")
            context.set_response_content_type(i, JSON)
            try:
                contract.check_content_type(_content_type(context, i))
                if "data" not in request and "body" not in request:  # e.g. TorchServe split a form body into fields
                    raise contract.ContractError("body: missing; send the JSON body with Content-Type: application/json")
                if isinstance(body, str):  # TorchServe already decoded the JSON: a string, which must not be parsed again
                    raise contract.ContractError("body: expected a JSON object or list, got a JSON string")
                parsed[i] = self.decode(body)
            except contract.ContractError as e:
                answers[i] = json.dumps(contract.error_body(str(e), e.status), separators=(",", ":"))
                context.set_response_status(e.status, _REASONS.get(e.status, "Bad Request"), idx=i)
        rows = [r for p in parsed if p is not None for r in p.rows]
        outputs = self.predict(rows) if rows else []
        start, out_of_range = 0, 0
        for i, p in enumerate(parsed):
            if p is not None:
                answers[i] = self.encode(p, outputs[start : start + len(p.rows)])
                start += len(p.rows)
                out_of_range += p.out_of_range
        self._metrics(context, len(rows), sum(p is None for p in parsed), out_of_range, t0)
        return answers

    def _metrics(self, context, rows: int, rejected: int, out_of_range: int, t0: float) -> None:
        """Record the custom metrics declared in handlers/metrics.yaml; returns None."""
        m = getattr(context, "metrics", None)
        if m is None:
            return
        m.add_counter("RowsPredicted", rows)
        m.add_counter("RequestsRejected", rejected)
        m.add_counter("OutOfRangeValues", out_of_range)
        m.add_time("AiaasHandlerTime", (time.perf_counter() - t0) * 1000.0)

    def describe_handle(self) -> str:
        """Return the model card as JSON (GET /models/NAME?customized=true shows it)."""
        return json.dumps(self.card)
