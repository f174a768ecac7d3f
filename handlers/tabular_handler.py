"""TorchServe handler for aiaas-torch models (tabular, or imported with a tensor contract); runs inside TorchServe workers and ships in every .mar.

It imports nothing from aiaas_torch (the package may be absent in a worker): the contract check lives in
aiaas_contract.py, shipped beside this file. Four small steps, as in LitServe's LitAPI:
setup (verify files, pick device, load) → decode (check each request against the card) →
predict (ONE forward for all valid rows of the batch) → encode (split answers back, per-request errors).
The common batch (plain JSON rows for a card of numeric features) takes a lane through the same steps: each
request's shape is read alone, its values are checked with the whole batch's in one pass, and the answers are
written at once; anything unusual in it sends its requests through the per-request steps, whose messages stand.
"""

from __future__ import annotations

import json
import logging
import os

import torch

try:  # installed package (tests, aiaas predict --local)
    from . import aiaas_contract as contract
    from . import batch_checks
    from . import integrity
    from . import programs
    from . import protocols
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    import aiaas_contract as contract
    import batch_checks
    import integrity
    import programs
    import protocols

logger = logging.getLogger(__name__)
JSON = "application/json"
INTERNAL = "internal error (a bug of ours, logged by the server)"
_JSON_STRING = "body: expected a JSON object or list, got a JSON string"
_REASONS = {400: "Bad Request", 415: "Unsupported Media Type", 500: "Internal Server Error"}


def _headers(context, idx: int) -> dict:
    """Return request idx's headers as the client named them (read them with protocols.scan or protocols.header)."""
    return context.get_all_request_header(idx) or {}


def _is_describe(data: list, context) -> bool:
    """Return True for TorchServe's describe call: always a batch of its own, one request without a body, so a
    predict request carrying a "describe" header of its own is answered as a prediction."""
    return len(data) == 1 and not data[0] and context.get_request_header(0, "describe") == "True"


def _refuse(context, idx: int, status: int, message: str) -> str:
    """Set request idx's status and return its JSON error body (with Open Inference's "error", which tritonclient reads)."""
    context.set_response_status(status, _REASONS.get(status, "Bad Request"), idx=idx)
    return json.dumps({**contract.error_body(message, status), "error": message}, separators=(",", ":"))


def _fail(context, idx: int, step: str, batch: int) -> str:
    """Log the exception being handled (once, with its traceback) and return request idx's 500 answer."""
    logger.exception("aiaas: %s request %d of a batch of %d failed", step, idx, batch)
    return _refuse(context, idx, 500, f"{INTERNAL} while {step} this request")


def _rows(span: tuple) -> dict:
    """Return {output name: one request's rows} of a (forward outputs, first row, end row) span."""
    flat, start, stop = span
    return {name: v[start:stop] for name, v in flat.items()}


class TabularHandler:
    """Serves one aiaas model: checks requests against its model card and runs one forward per batch."""

    def __init__(self):
        self.card: dict = {}
        self.initialized = False
        self._text = None  # (card, name, version, protocols.AnswerText): the common answer's constant parts
        self._specs = None  # (card, programs.io_specs(card)): what every forward reads of the card

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
        problems = integrity.verify_files(self.card, model_dir, roles={"cpu-compiled", "float-program"})
        if problems:
            msg = f"{integrity.REFUSAL_MARK} {self.model_name}: " + "; ".join(problems)
            logger.error(msg)
            raise RuntimeError(msg)
        settings = (getattr(context, "model_yaml_config", None) or {}).get("handler", {}) or {}
        self.max_rows = int(settings.get("max_rows", self.card["input"].get("max_rows", contract.DEFAULT_MAX_ROWS)))
        torch.set_num_threads(int(settings.get("threads", 1)))
        self.device, self.program_files, self.model = self._load(model_dir, props.get("gpu_id"))
        self.predict(contract.warmup_inputs(self.card))  # warm-up
        logger.info("aiaas: %s v%s serving %s on %s", self.model_name, self.model_version, ", ".join(self.program_files), self.device)
        self.initialized = True

    def _load(self, model_dir: str, gpu_id):
        """Return (device, file names, ProgramSet) chosen by programs.choose for this worker's CPU, torch and device."""
        loaded = programs.load(self.card, model_dir, torch.cuda.is_available(), gpu_id, log=logger.warning)
        logger.info("aiaas: %s program choice: %s", self.model_name, loaded.reason)
        return loaded.device, loaded.files, loaded

    def decode(self, request: dict, context, idx: int):
        """Return (ParsedRequest, protocols.Decoded) for request idx of the batch (raises contract.ContractError)."""
        wire = self._wire(request, context, idx)
        return contract.parse_request(wire.body, self.card, self.max_rows), wire

    def _wire(self, request: dict, context, idx: int):
        """Return the protocols.Decoded of request idx: its headers and body read, the body parsed once (raises
        contract.ContractError)."""
        length, content_type = protocols.scan(_headers(context, idx))
        binary = length is not None
        if not binary:  # a binary-extension body is JSON followed by raw tensor bytes, whatever its Content-Type
            contract.check_content_type(content_type)
        if "data" not in request and "body" not in request:  # e.g. TorchServe split a form body into fields
            raise contract.ContractError("body: missing; send the JSON body with Content-Type: application/json")
        body = request.get("data")
        if body is None:
            body = request.get("body")
        # Our config hands the body over as bytes (decode_input_request=false: parsed once, here); a plain TorchServe
        # decodes it first, and then a str is a JSON string already, never to be parsed again.
        if isinstance(body, str) and not binary:
            raise contract.ContractError(_JSON_STRING)
        wire = protocols.decode_with(body, length, self.max_rows)
        if type(wire.body) is str:  # type, not isinstance: a NaN/Infinity marker (a str subclass) keeps its own message
            raise contract.ContractError(_JSON_STRING)
        return wire

    def _read(self, request: dict, context, idx: int, plan) -> tuple:
        """Return (Decoded, ParsedRequest, None) of request idx, or (Decoded, None, plain shape) for a plain JSON body
        of a plain card (`plan`), whose values the batch then checks in one pass (raises contract.ContractError)."""
        wire = self._wire(request, context, idx)
        if plan is not None and wire.wire == "json":
            shape = contract.plain_shape(wire.body, plan, self.max_rows)
            if shape is not None:
                return wire, None, shape
        return wire, contract.parse_request(wire.body, self.card, self.max_rows), None

    def predict(self, inputs: dict) -> dict:
        """Return {output name: per-sample outputs} for {input name: checked samples}, in one forward (the program of its
        batch size); a tabular card's output is a batch_checks.Outputs, what the answers need computed once."""
        specs = self._specs
        if specs is None or specs[0] is not self.card:
            specs = self._specs = (self.card, programs.io_specs(self.card))
        if not contract.is_tabular(self.card) or batch_checks.np is None:
            return programs.run_samples(self.model, self.card, inputs, self.device, specs=specs[1])
        outputs = programs.run_samples(self.model, self.card, inputs, self.device, arrays=True, specs=specs[1])
        classify = self.card["output"]["task"] == "classification"
        return {name: batch_checks.Outputs(a, classify) for name, a in outputs.items()}

    def encode(self, parsed, wire, outputs: list) -> tuple:
        """Return (body, response headers) of one request's answer in the wire format it came in."""
        if wire.wire == "json" and contract.is_tabular(self.card) and not parsed.warnings:  # the common answer: precomputed parts
            rows = next(iter(outputs.values())) if isinstance(outputs, dict) and len(outputs) == 1 else None
            if isinstance(rows, batch_checks.Outputs) and rows.first_non_finite() is None:
                return self._answer_text().text(rows), {}
        return protocols.encode(wire, contract.answer(self.card, parsed, outputs, self.model_name, self.model_version))

    def _plain_plan(self):
        """Return the card's plan for the plain lane, or None (every request then goes through decode): a tensor card,
        a card the plan does not cover, or a subclass or instance that replaced decode."""
        if not contract.is_tabular(self.card) or type(self).decode is not TabularHandler.decode or "decode" in self.__dict__:
            return None
        try:
            return contract.plain_plan(self.card)
        except Exception:  # a bug of ours, or a card beyond the plan: each request's own checks judge it
            logger.exception("aiaas: planning the plain lane of %s failed; checking requests one by one", self.model_name)
            return None

    def _encodes_as_ours(self) -> bool:
        """Return True unless a subclass or the instance replaced encode (then every answer goes through it)."""
        return type(self).encode is TabularHandler.encode and "encode" not in self.__dict__

    def _plain_texts(self, spans: list):
        """Return each request's JSON answer written from precomputed parts (None where it needs encode's general
        path), for a batch whose valid requests all came in plain JSON to a plain card and shared one forward."""
        flat = next((s[0] for s in spans if s is not None), None)
        if flat is None or len(flat) != 1 or any(s is not None and s[0] is not flat for s in spans):  # per-request forwards
            return None
        outputs = next(iter(flat.values()))
        if not isinstance(outputs, batch_checks.Outputs):
            return None
        return self._answer_text().texts(outputs, [None if s is None else s[1:] for s in spans])

    def _answer_text(self):
        """Return the protocols.AnswerText of this card and model, built on first use (and again for a new card)."""
        t = self._text
        if t is None or t[0] is not self.card or t[1] != self.model_name or t[2] != self.model_version:
            t = self._text = (self.card, self.model_name, self.model_version,
                              protocols.AnswerText(self.card, self.model_name, self.model_version))  # fmt: skip
        return t[3]

    def handle(self, data: list, context) -> list:
        """Return exactly one answer per request of the batch; a request's failure (4xx, or 500 for a bug of ours) is its own.

        Nothing one request holds can fail another or raise out of here: TorchServe would answer 503 to the whole batch.
        """
        if _is_describe(data, context):
            return [self.describe_handle()]
        n = len(data)
        answers: list = [None] * n
        parsed: list = [None] * n
        wires: list = [None] * n
        plan = self._plain_plan()
        plain = []  # (index, shape) of plain JSON bodies, whose values are checked below in one pass over the batch
        for i, request in enumerate(data):
            context.set_response_content_type(i, JSON)
            try:
                if plan is None:
                    parsed[i], wires[i] = self.decode(request, context, i)
                    continue
                wires[i], parsed[i], shape = self._read(request, context, i, plan)
                if shape is not None:
                    plain.append((i, shape))
            except contract.ContractError as e:
                answers[i] = _refuse(context, i, e.status, str(e))
            except Exception:  # a bug of ours: this request's 500, not the batch's 503
                answers[i] = _fail(context, i, "reading", n)
        batch, outside = self._check_plain(plain, plan, parsed, wires, answers, context) if plain else (None, 0)
        spans = self._forward_spans(parsed, batch)
        texts = None
        if batch is not None and self._encodes_as_ours():
            try:
                texts = self._plain_texts(spans)
            except Exception:  # a bug of ours: each request is then answered on its own, below
                logger.exception("aiaas: writing the answers of a batch of %d failed; answering them one by one", n)
        for i, p in enumerate(parsed):
            if p is None:
                continue
            if spans[i] is None:  # its forward failed, and _forward_spans logged why
                answers[i] = _refuse(context, i, 500, f"{INTERNAL}: the model failed on this request")
                continue
            if texts is not None and texts[i] is not None:
                answers[i] = texts[i]
                continue
            try:
                answers[i], headers = self.encode(p, wires[i], _rows(spans[i]))
                for name, value in headers.items():
                    context.set_response_header(i, name, value)
            except contract.ContractError as e:  # an output JSON cannot carry (overflow), or a v2 output the model lacks
                answers[i] = _refuse(context, i, e.status, str(e))
            except Exception:
                answers[i] = _fail(context, i, "answering", len(data))
        try:
            ok = [p for p in parsed if p is not None]
            self._metrics(context, sum(len(p.rows) for p, o in zip(parsed, spans) if o is not None), len(parsed) - len(ok),
                          outside + sum(p.out_of_range for p in ok), sum(p.imputed for p in ok), sum(p.unseen for p in ok))  # fmt: skip
        except Exception:  # answers are ready: metrics must not turn them into a 503
            logger.exception("aiaas: recording metrics failed")
        return answers

    def _check_plain(self, plain: list, plan, parsed: list, wires: list, answers: list, context) -> tuple:
        """Check the values of the plain requests ((index, (rows, format)) pairs) in one pass over the batch and fill
        in their parsed rows; returns (those rows as one float32 array when they are all the batch's valid requests,
        the forward's input as it is, else None; how many of their values fall outside the training range). When a
        value fails, each of them takes its own checks, which name it."""
        alone = len(plain) == len(parsed) - sum(a is not None for a in answers)  # no other request shares the forward
        try:
            checked = contract.check_plain_batch([shape for _, shape in plain], plan, alone)
        except Exception:  # a bug of ours: the per-request checks still judge every request
            logger.exception("aiaas: the one-pass check of %d requests failed; checking them one by one", len(plain))
            checked = None
        if checked is not None:
            for (i, _), p in zip(plain, checked[0]):
                parsed[i] = p
            return (checked[1] if alone else None), checked[2]
        for i, _ in plain:
            try:
                parsed[i] = contract.parse_request(wires[i].body, self.card, self.max_rows)
            except contract.ContractError as e:
                answers[i] = _refuse(context, i, e.status, str(e))
            except Exception:
                answers[i] = _fail(context, i, "reading", len(parsed))
        return None, 0

    def _forward(self, parsed: list, batch=None) -> list:
        """Return each request's output rows ({output name: its rows}; None for a request without valid rows or whose
        forward failed)."""
        return [None if s is None else _rows(s) for s in self._forward_spans(parsed, batch)]

    def _forward_spans(self, parsed: list, batch=None) -> list:
        """Return each request's outputs as (the forward's {output name: outputs}, first row, end row), None for a
        request without valid rows or whose forward failed.

        One forward for all valid rows of the batch (`batch`: those rows already stacked, as the one-pass check gives
        them). The rows are checked finite float32 numbers of the right width, so only a bug of ours or the batch as
        a whole (e.g. out of memory) can make it fail; then each request gets its own forward, so that a request that
        fails alone fails alone.
        """
        valid = [p for p in parsed if p is not None]
        try:
            if batch is not None:
                inputs = {next(iter(valid[0].inputs)): batch}
            elif valid and all(p.array is not None for p in valid):  # the one-pass check's arrays: no lists on the way
                inputs = {next(iter(valid[0].inputs)): batch_checks.stack([p.array for p in valid])}
            else:
                inputs = {name: [s for p in valid for s in p.inputs[name]] for name in valid[0].inputs} if valid else {}
            flat = self.predict(inputs) if valid else {}
        except Exception:
            logger.exception("aiaas: the forward of a batch of %d rows failed; retrying request by request", sum(len(p.rows) for p in valid))
            return [self._forward_one(i, p) for i, p in enumerate(parsed)]
        spans, start = [], 0
        for p in parsed:
            if p is None:
                spans.append(None)
                continue
            stop = start + len(p.rows)
            spans.append((flat, start, stop))
            start = stop
        return spans

    def _forward_one(self, idx: int, parsed):
        """Return one request's outputs from a forward of its own as (outputs, 0, rows), or None (logged) when there is none."""
        if parsed is None:
            return None
        try:
            return self.predict(parsed.inputs), 0, len(parsed.rows)
        except Exception:
            logger.exception("aiaas: the forward of request %d (%d rows) failed", idx, len(parsed.rows))
            return None

    def _metrics(self, context, rows: int, rejected: int, out_of_range: int, imputed: int = 0, unseen: int = 0) -> None:
        """Record the non-zero custom metrics declared in handlers/metrics.yaml; returns None.

        Each call is a log line the frontend parses, on the hot path: a clean batch writes one (RowsPredicted), under
        request 0's id (idx) rather than the whole batch's; /metrics sums the counters by model whatever the id.
        """
        m = getattr(context, "metrics", None)
        if m is None:
            return
        for name, value in (("RowsPredicted", rows), ("RequestsRejected", rejected), ("OutOfRangeValues", out_of_range),
                            ("ImputedValues", imputed), ("UnseenCategories", unseen)):  # fmt: skip
            if value:
                m.add_counter(name, value, idx=0)

    def describe_handle(self) -> str:
        """Return the model card as JSON (GET /models/NAME?customized=true shows it)."""
        return json.dumps(self.card)
