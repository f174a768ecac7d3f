"""TorchServe handler for aiaas-torch models (tabular, or imported with a tensor contract); runs inside TorchServe workers and ships in every .mar.

It imports nothing from aiaas_torch (the package may be absent in a worker): the contract check lives in
aiaas_contract.py, shipped beside this file. `initialize` sets the worker up (verify files, pick device and program,
load, warm up); `handle` answers a batch in one structure, a small method per step, as LitServe's LitAPI:

    per request:  read (headers; the body parsed once)  →  check (its rows against the card)
    per batch:    stack (every valid row, one input)  →  predict (ONE forward)  →  split (each request's rows)  →  answer

Two steps have a batch hook, a fast way for the common batch: `check_batch` checks the plain rows of all requests in
one pass, and `answer_batch` writes their JSON answers at once. What a hook leaves (None) takes the per-request step,
`check` or `encode`: the documented fallback, whose messages stand. A subclass that replaces `check` or `encode` and
needs it to see every request sets `batch_lane = False` (no batch hooks then).
"""

from __future__ import annotations

import json
import logging
import operator

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
_ARRAY = operator.attrgetter("array")  # a ParsedRequest's rows as the one-pass check gives them (None: lists only)
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


def _each(context, answers: list, step: str, fn, todo) -> list:
    """Return fn(i) for each index i of `todo` (None elsewhere, and for a request that failed: its answer is then set in
    `answers`, the 4xx of its ContractError or, for a bug of ours, a logged 500 of its own, never the batch's 503)."""
    out = [None] * len(answers)
    for i in todo:
        try:
            out[i] = fn(i)
        except contract.ContractError as e:
            answers[i] = _refuse(context, i, e.status, str(e))
        except Exception:
            answers[i] = _fail(context, i, step, len(answers))
    return out


class TabularHandler:
    """Serves one aiaas model: checks requests against its model card and runs one forward per batch."""

    batch_lane = True  # False: no batch hooks (check_batch, answer_batch); every request takes check and encode

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
        # Integrity only (a file damaged since packaging): this code ships inside the archive, so it cannot vouch for
        # the archive; the signature is checked before loading by the installed aiaas_torch (`aiaas serve start`).
        self.card = integrity.checked_card(model_dir, self.model_name, {"cpu-compiled", "float-program"}, logger.error)
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

    # --- the structure: one answer per request of a batch ---------------------------------------------------------------

    def handle(self, data: list, context) -> list:
        """Return exactly one answer per request of the batch; a request's failure (4xx, or 500 for a bug of ours) is its own.

        Nothing one request holds can fail another or raise out of here: TorchServe would answer 503 to the whole batch.
        """
        if _is_describe(data, context):
            return [self.describe_handle()]
        n = len(data)
        answers: list = [None] * n
        for i in range(n):
            context.set_response_content_type(i, JSON)
        # per request: read → check (check_batch first, where batch_lane)
        wires = _each(context, answers, "reading", lambda i: self.read(data[i], context, i), range(n))
        parsed = self._check_all(wires, context, answers)
        # per batch: stack → predict → split → answer (answer_batch first, where batch_lane; else encode)
        outputs = self._forward(parsed)
        self._answer_all(parsed, wires, outputs, context, answers)
        try:
            ok = [p for p in parsed if p is not None]
            self._metrics(context, sum(len(p.rows) for p, o in zip(parsed, outputs) if o is not None), n - len(ok),
                          sum(p.out_of_range for p in ok), sum(p.imputed for p in ok), sum(p.unseen for p in ok))  # fmt: skip
        except Exception:  # answers are ready: metrics must not turn them into a 503
            logger.exception("aiaas: recording metrics failed")
        return answers

    def _check_all(self, wires: list, context, answers: list) -> list:
        """Return each request's ParsedRequest (None for one not read or refused): check_batch's where it took the
        request, else check's; a bug in check_batch is logged and every request is checked alone."""
        parsed = None
        if self.batch_lane:
            try:
                parsed = self.check_batch(wires)
            except Exception:
                logger.exception("aiaas: the one-pass check of a batch of %d requests failed; checking them one by one", len(wires))
        parsed = parsed or [None] * len(wires)
        rest = [i for i, (w, p) in enumerate(zip(wires, parsed)) if w is not None and p is None]
        if rest:
            checked = _each(context, answers, "reading", lambda i: self.check(wires[i]), rest)
            parsed = [c if p is None else p for p, c in zip(parsed, checked)]
        return parsed

    def _forward(self, parsed: list) -> list:
        """Return each request's outputs ({output name: its rows}; None for a refused request or one whose forward failed).

        One forward for all valid rows of the batch: stack → predict → split. The rows are checked finite float32
        numbers of the right width, so only a bug of ours or the batch as a whole (e.g. out of memory) can make it
        fail; then each request gets its own forward, so that a request that fails alone fails alone.
        """
        valid = [p for p in parsed if p is not None]
        if not valid:
            return [None] * len(parsed)
        try:
            return self.split(self.predict(self.stack(parsed)), parsed)
        except Exception:
            logger.exception("aiaas: the forward of a batch of %d rows failed; retrying request by request", sum(len(p.rows) for p in valid))
            return [self._forward_one(i, p) for i, p in enumerate(parsed)]

    def _forward_one(self, idx: int, parsed):
        """Return one request's outputs from a forward of its own, or None (logged) when there is none."""
        if parsed is None:
            return None
        try:
            return self.split(self.predict(self.stack([parsed])), [parsed])[0]
        except Exception:
            logger.exception("aiaas: the forward of request %d (%d rows) failed", idx, len(parsed.rows))
            return None

    def _answer_all(self, parsed: list, wires: list, outputs: list, context, answers: list) -> None:
        """Set the answer of every checked request: answer_batch's text, else encode's body and headers; a request
        whose forward failed gets its 500. Returns None."""
        texts = None
        if self.batch_lane:
            try:
                texts = self.answer_batch(parsed, wires, outputs)
            except Exception:  # a bug of ours: each request is then answered on its own, below
                logger.exception("aiaas: writing the answers of a batch of %d failed; answering them one by one", len(parsed))
        rest = []
        for i, p in enumerate(parsed):
            if p is None:
                continue
            if outputs[i] is None:  # its forward failed, and _forward logged why
                answers[i] = _refuse(context, i, 500, f"{INTERNAL}: the model failed on this request")
            elif texts is not None and texts[i] is not None:
                answers[i] = texts[i]
            else:
                rest.append(i)
        encoded = _each(context, answers, "answering", lambda i: self.encode(parsed[i], wires[i], outputs[i]), rest)
        for i in rest:
            if encoded[i] is not None:
                answers[i], headers = encoded[i]
                for name, value in headers.items():
                    context.set_response_header(i, name, value)

    # --- per request: read → check ----------------------------------------------------------------------------------

    def read(self, request: dict, context, idx: int):
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

    def check(self, wire):
        """Return the contract.ParsedRequest of one read request (raises contract.ContractError naming what is wrong)."""
        return contract.parse_request(wire.body, self.card, self.max_rows)

    def check_batch(self, wires: list) -> list:
        """Return a ParsedRequest for each read request (None: not read) whose plain rows the one-pass check took, all
        at once (contract.check_plain_batch); None for the others, which `check` then takes one by one."""
        if not contract.is_tabular(self.card):
            return [None] * len(wires)
        return contract.check_plain_batch([None if w is None else w.body for w in wires], self.card, self.max_rows)

    # --- per batch: stack → predict → split → answer -----------------------------------------------------------------

    def stack(self, parsed: list) -> dict:
        """Return {input name: the samples of every checked request (None: refused), in order}, one forward's input:
        the one-pass check's float32 rows as one array when every request has them, else lists."""
        valid = [p for p in parsed if p is not None]
        arrays = list(map(_ARRAY, valid))
        if None not in arrays:
            return {next(iter(valid[0].inputs)): batch_checks.stack(arrays)}
        return {name: [s for p in valid for s in p.inputs[name]] for name in valid[0].inputs}

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

    def split(self, outputs: dict, parsed: list) -> list:
        """Return each request's part of one forward's outputs ({output name: its rows}; None for a refused request)."""
        out, start, items = [], 0, list(outputs.items())
        (one, v), many = items[0], len(items) > 1
        for p in parsed:
            if p is None:
                out.append(None)
                continue
            stop = start + len(p.rows)
            out.append({name: v[start:stop] for name, v in items} if many else {one: v[start:stop]})  # one output: no comprehension's frame
            start = stop
        return out

    def answer_batch(self, parsed: list, wires: list, outputs: list) -> list:
        """Return each request's JSON answer written at once from parts computed once per card and batch
        (protocols.AnswerText), None where `encode` answers it: another wire format, warnings, a tensor card, a row
        that is not finite, a request without outputs."""
        if not contract.is_tabular(self.card):
            return [None] * len(parsed)
        parts = []
        for p, w, o in zip(parsed, wires, outputs):
            rows = next(iter(o.values())) if o is not None and len(o) == 1 and w.wire == "json" and not p.warnings else None
            parts.append(rows if isinstance(rows, batch_checks.Outputs) else None)
        return self._answer_text().texts(parts)

    def encode(self, parsed, wire, outputs: dict) -> tuple:
        """Return (body, response headers) of one request's answer in the wire format it came in."""
        return protocols.encode(wire, contract.answer(self.card, parsed, outputs, self.model_name, self.model_version))

    def _answer_text(self):
        """Return the protocols.AnswerText of this card and model, built on first use (and again for a new card)."""
        t = self._text
        if t is None or t[0] is not self.card or t[1] != self.model_name or t[2] != self.model_version:
            t = self._text = (self.card, self.model_name, self.model_version,
                              protocols.AnswerText(self.card, self.model_name, self.model_version))  # fmt: skip
        return t[3]

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
