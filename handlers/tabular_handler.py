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
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    import aiaas_contract as contract

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
        """Set up the worker: check model files against the card, choose device and program, load and warm up; returns None."""
        props = context.system_properties
        model_dir = props.get("model_dir", ".")
        self.model_name = context.model_name
        self.model_version = str((context.manifest or {}).get("model", {}).get("modelVersion", ""))
        with open(os.path.join(model_dir, "model.json"), encoding="utf-8") as f:
            self.card = json.load(f)
        # Integrity only (a file damaged since packaging): this code ships inside the archive, so it cannot vouch for
        # the archive; the signature is checked before loading by the installed aiaas_torch (`aiaas serve start`).
        problems = contract.verify_files(self.card, model_dir, roles={"cpu-compiled", "float-program"})
        if problems:
            msg = f"{contract.REFUSAL_MARK} {self.model_name}: " + "; ".join(problems)
            logger.error(msg)
            raise RuntimeError(msg)
        settings = (getattr(context, "model_yaml_config", None) or {}).get("handler", {}) or {}
        self.max_rows = int(settings.get("max_rows", self.card["input"].get("max_rows", contract.DEFAULT_MAX_ROWS)))
        torch.set_num_threads(int(settings.get("threads", 1)))
        self.device, self.program_file, self.model = self._load(model_dir, props.get("gpu_id"))
        self.predict([[f["mean"] for f in self.card["input"]["features"]]])  # warm-up
        logger.info("aiaas: %s v%s serving %s on %s", self.model_name, self.model_version, self.program_file, self.device)
        self.initialized = True

    def _load(self, model_dir: str, gpu_id):
        """Return (device, file name, callable model) chosen by contract.choose_program, falling back to the float program."""
        files = self.card["files"]
        compiled = next((n for n, m in files.items() if m.get("role") == "cpu-compiled"), None)
        same_torch = self.card.get("versions", {}).get("torch") == torch.__version__
        isa_ok = bool(compiled) and same_torch and contract.host_supports(files[compiled].get("isa") or "")
        if compiled and not isa_ok:
            logger.warning(
                "aiaas: not using %s (built with torch %s, ISA %s; worker has torch %s): falling back to the float program",
                compiled, self.card.get("versions", {}).get("torch"), files[compiled].get("isa"), torch.__version__,
            )
        device, name = contract.choose_program(self.card, gpu_id, torch.cuda.is_available(), isa_ok)
        path = os.path.join(model_dir, name)
        if files[name]["role"] == "cpu-compiled":
            try:
                # The ISA was checked against /proc/cpuinfo above; without this, loading compiles and dlopens
                # inductor's ISA probe programs with g++ in a fresh cache (TMPDIR per server home): 1.5–10 s a worker.
                if os.environ.get("TORCHINDUCTOR_VEC_ISA_OK") is None:
                    torch._inductor.config.cpp.vec_isa_ok = True
                return device, name, torch._inductor.aoti_load_package(path)
            except Exception:  # a package that will not load on this host: serve the float program instead
                logger.warning("aiaas: %s failed to load; falling back to the float program", name, exc_info=True)
                device, name = contract.choose_program(self.card, gpu_id, torch.cuda.is_available(), False)
                path = os.path.join(model_dir, name)
        return device, name, torch.export.load(path).module().to(device)

    def decode(self, body):
        """Return the checked ParsedRequest for one request body (raises contract.ContractError)."""
        return contract.parse_request(body, self.card, self.max_rows)

    def predict(self, rows: list) -> list:
        """Return the model's output rows for a list of checked input rows, in one forward."""
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
