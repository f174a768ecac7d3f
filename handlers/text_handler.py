"""TorchServe handler for text models (aiaas import of a Hugging Face directory); runs inside TorchServe workers.

Ships in text archives beside text_contract.py and imports nothing from aiaas_torch. Each request of a batch is
read and tokenized alone (a bad body, or a text over the model's maximum, fails that request only), then ONE
forward runs every valid text of the batch, padded to the batch's longest; answers are split back per request.
The route is the path after /predictions/NAME/VERSION/, which TorchServe hands over as the `url_path` header:
empty for our own bodies, `v1/embeddings` for OpenAI's embeddings API (answers and errors in OpenAI's shape).
"""

from __future__ import annotations

import json
import logging

import torch

try:  # installed package (tests)
    from . import integrity, programs, protocols
    from . import text_contract as text
    from .json_body import check_content_type
    from .contract_common import error_body
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    import integrity
    import programs
    import protocols
    import text_contract as text
    from json_body import check_content_type
    from contract_common import error_body

logger = logging.getLogger(__name__)
JSON = "application/json"
ROLES = {"cpu-compiled", "float-program", "tokenizer"}
_REASONS = {400: "Bad Request", 404: "Not Found", 415: "Unsupported Media Type", 500: "Internal Server Error"}


class TextHandler:
    """Serves one text model: tokenizes each request's texts and runs one forward per batch."""

    def __init__(self):
        self.card: dict = {}
        self.initialized = False

    def initialize(self, context) -> None:
        """Check the model files and tokenizer against the card, load the program and tokenizer, warm up; returns None."""
        props = context.system_properties
        model_dir = props.get("model_dir", ".")
        self.model_name = context.model_name
        self.model_version = str((context.manifest or {}).get("model", {}).get("modelVersion", ""))
        self.card = integrity.checked_card(model_dir, self.model_name, ROLES, logger.error)
        settings = (getattr(context, "model_yaml_config", None) or {}).get("handler", {}) or {}
        self.max_rows = int(settings.get("max_rows", self.card["input"]["max_rows"]))
        torch.set_num_threads(int(settings.get("threads", 1)))
        loaded = programs.load(self.card, model_dir, torch.cuda.is_available(), props.get("gpu_id"), log=logger.warning)
        self.model = text.TextModel(self.card, model_dir, loaded)
        self.model.predict(text.warmup_body())
        logger.info("aiaas: %s v%s serving texts with %s on %s", self.model_name, self.model_version, ", ".join(loaded.files), loaded.device)
        self.initialized = True

    def _refuse(self, context, idx: int, status: int, message: str, openai: bool, param=None) -> str:
        """Set request idx's status and return its error body (OpenAI's shape on OpenAI routes, else ours)."""
        context.set_response_status(status, _REASONS.get(status, "Bad Request"), idx=idx)
        body = text.openai_error(message, status, param) if openai else {**error_body(message, status), "error": message}
        return json.dumps(body, separators=(",", ":"))

    def _read(self, request: dict, context, idx: int, route: str):
        """Return request idx's tokenized TextRequest (raises text_contract.ContractError)."""
        _, content_type = protocols.scan(context.get_all_request_header(idx) or {})
        check_content_type(content_type)
        body = request.get("data")
        if body is None:
            body = request.get("body")
        if body is None:
            raise text.ContractError("body: missing; send the JSON body with Content-Type: application/json")
        if route == text.OPENAI_EMBEDDINGS:
            req = text.parse_openai(body, self.card, self.max_rows)
        elif route:
            raise text.OpenAIError(f"no route {route[:60]!r} here; this model answers /predictions/NAME and "
                                   f"/predictions/NAME/VERSION/{text.OPENAI_EMBEDDINGS}", None, 404)  # fmt: skip
        else:
            req = text.parse_request(body, self.card, self.max_rows)
        return self.model.tokenize(req)

    def handle(self, data: list, context) -> list:
        """Return exactly one answer per request; a request's failure (4xx, or 500 for a bug of ours) is its own."""
        if len(data) == 1 and not data[0] and context.get_request_header(0, "describe") == "True":
            return [json.dumps(self.card)]
        n = len(data)
        answers, reqs, routes = [None] * n, [None] * n, [""] * n
        for i, request in enumerate(data):
            context.set_response_content_type(i, JSON)
            routes[i] = str(context.get_request_header(i, "url_path") or "").strip("/")
            openai = routes[i].startswith("v1/")
            try:
                reqs[i] = self._read(request, context, i, routes[i])
            except text.OpenAIError as e:
                answers[i] = self._refuse(context, i, e.status, str(e), True, e.param)
            except text.ContractError as e:
                answers[i] = self._refuse(context, i, e.status, str(e), openai, "input" if openai else None)
            except Exception:
                logger.exception("aiaas: reading request %d of a batch of %d failed", i, n)
                answers[i] = self._refuse(context, i, 500, "internal error (a bug of ours, logged by the server)", openai)
        rows = self._forward(reqs)
        for i, req in enumerate(reqs):
            if req is None:
                continue
            openai = req.fmt == "openai"
            try:
                if rows[i] is None:
                    raise RuntimeError("the forward failed")
                answers[i] = text.dumps(self.model.answer(req, rows[i], self.model_name, self.model_version))
            except Exception:
                logger.exception("aiaas: answering request %d of a batch of %d failed", i, n)
                answers[i] = self._refuse(context, i, 500, "internal error (a bug of ours, logged by the server)", openai)
        try:
            done = sum(len(r.items) for r, a in zip(reqs, rows) if r is not None and a is not None)
            metrics = getattr(context, "metrics", None)
            if metrics is not None and done:
                metrics.add_counter("RowsPredicted", done, idx=0)
            if metrics is not None and reqs.count(None):
                metrics.add_counter("RequestsRejected", reqs.count(None), idx=0)
        except Exception:
            logger.exception("aiaas: recording metrics failed")
        return answers

    def _forward(self, reqs: list) -> list:
        """Return each request's output rows from one forward over every valid text of the batch (None: no rows);
        when the batch's forward fails, each request gets a forward of its own."""
        valid = [r for r in reqs if r is not None]
        if not valid:
            return [None] * len(reqs)
        try:
            out = self.model.forward([t for r in valid for t in r.tokens])
        except Exception:
            logger.exception("aiaas: the forward of a batch of %d texts failed; retrying request by request", sum(len(r.tokens) for r in valid))
            return [self._forward_one(r) for r in reqs]
        rows, start = [], 0
        for r in reqs:
            if r is None:
                rows.append(None)
                continue
            rows.append(out[start : start + len(r.tokens)])
            start += len(r.tokens)
        return rows

    def _forward_one(self, req):
        """Return one request's output rows from a forward of its own, or None (logged) when it fails."""
        if req is None:
            return None
        try:
            return self.model.forward(req.tokens)
        except Exception:
            logger.exception("aiaas: the forward of one request (%d texts) failed", len(req.tokens))
            return None
