"""TorchServe handler for generation models (causal LMs): OpenAI's chat and completion API, streamed, batched continuously.

Runs inside a TorchServe worker and imports nothing from aiaas_torch. The archive's model-config turns on TorchServe's
own continuous batching (``continuousBatching: true``), chosen over an in-worker scheduler because it needs no thread
and no socket of ours: the frontend keeps every unfinished request (a job whose last answer carried
``ts_stream_next: true``) in the batch, adds new ones as they arrive (up to ``batchSize``), and calls `handle` again at
once, so ONE `handle` call is ONE engine step (handlers/generation.Engine) over every running sequence. Each call
answers every request of the batch with the text its step produced: server-sent events for ``stream: true``, nothing
until the whole JSON answer for ``stream: false``. A continuing request comes back with its headers but no body
(the frontend caches it); a client that disconnected is left out of the next batch, and `Engine.sync` frees its
slot. The HTTP status is sent with a request's first answer, so a request is checked (body, template, prompt length,
queue) in the call that admits it: those refusals are proper 4xx answers in OpenAI's error shape; a later failure
(a bug of ours) ends that stream with an error event, or a non-streamed answer with an error body.

Queues: the engine runs ``slots`` sequences and holds up to ``max_queue`` waiting ones (ours: a request beyond them is
answered 429 with Retry-After); requests beyond ``batchSize`` wait in TorchServe's own queue (``jobQueueSize``),
which answers 503 when full.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time

import torch
from tokenizers import Tokenizer

try:  # installed package (tests)
    from . import integrity
    from . import openai_api as api
    from .chat_template import TemplateError, compile_template, render
    from .generation import Engine, GenerationDefaults, QueueFull, SamplingParams, StopText
    from .decoders import load_decoder
    from .json_body import check_content_type
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    import integrity
    import openai_api as api
    from chat_template import TemplateError, compile_template, render
    from generation import Engine, GenerationDefaults, QueueFull, SamplingParams, StopText
    from decoders import load_decoder
    from json_body import check_content_type

logger = logging.getLogger(__name__)
ROLES = {"weights", "config", "tokenizer", "template"}
JSON = "application/json"
EVENTS = "text/event-stream"
_REASONS = {400: "Bad Request", 404: "Not Found", 415: "Unsupported Media Type", 429: "Too Many Requests",
            500: "Internal Server Error"}
INTERNAL = "internal error (a bug of ours, logged by the server)"


class TextStream:
    """Token ids to text, piece by piece: `add` returns the new text, held back while it ends in a partial character."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.ids, self.prefix, self.read = tokenizer, [], 0, 0

    def _decode(self, ids: list) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, tokens: list) -> str:
        """Return the text the new tokens complete (decoded after a few earlier tokens, so spacing is as in one decode)."""
        self.ids.extend(tokens)
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before):]
        return ""

    def rest(self) -> str:
        """Return the text still held back (at the end of a stream)."""
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return now[len(before):]


class _Request:
    """One admitted request's state between steps."""

    def __init__(self, req: api.GenerationRequest, key: str, prompt_tokens: int, tokenizer: Tokenizer):
        self.req, self.key, self.prompt_tokens = req, key, prompt_tokens  # key: TorchServe's request id
        self.rid = ("chatcmpl-" if req.chat else "cmpl-") + key  # the id OpenAI's answers carry
        self.created = int(time.time())
        self.text = TextStream(tokenizer)
        self.stop = StopText(list(req.stop))
        self.pieces: list = []
        self.tokens = 0
        self.started = False  # an answer with ts_stream_next: true went out (HTTP status and headers are sent)
        self.admitted, self.first = time.perf_counter(), None  # when it was admitted, when its first token came


class GenerationHandler:
    """Serves one generation model: each `handle` call admits new requests, runs one engine step, answers every request."""

    def __init__(self):
        self.card: dict = {}
        self.requests: dict = {}
        self._more: list = []  # per request of the current batch: None whole answer, False more to come, True last part
        self._gauges_at = 0.0
        self.initialized = False

    def initialize(self, context) -> None:
        """Check the model files against the card, load weights, tokenizer and chat template, build the engine; returns None."""
        model_dir = context.system_properties.get("model_dir", ".")
        self.model_name = context.model_name
        self.card = card = integrity.checked_card(model_dir, self.model_name, ROLES, logger.error)
        inp = card.get("input", {})
        if inp.get("kind") != "prompt":
            raise RuntimeError(f"{self.model_name}: model.json is not a generation card (input.kind {inp.get('kind')!r})")
        settings = (getattr(context, "model_yaml_config", None) or {}).get("handler", {}) or {}
        gen = card.get("generation", {})
        torch.set_num_threads(int(settings.get("threads", 1)))
        self.tokenizer = Tokenizer.from_file(os.path.join(model_dir, inp["tokenizer"]["file"]))
        self.template = None
        if inp.get("chat_template"):
            with open(os.path.join(model_dir, inp["chat_template"]["file"]), encoding="utf-8") as f:
                self.template = compile_template(f.read())
        self.bos, self.eos = inp.get("bos_token") or "", inp.get("eos_token") or ""
        try:
            self.created = int(datetime.datetime.fromisoformat(str(card.get("created"))).timestamp())
        except ValueError:
            self.created = 0
        scheme = card.get("quantization", {}).get("scheme")
        if scheme not in ("none", "int8-weight"):
            raise RuntimeError(f"{self.model_name}: model.json's quantization scheme {str(scheme)[:40]!r} is not one "
                               f"this server loads ('none' or 'int8-weight'); re-import the model with aiaas import")
        decoder = load_decoder(model_dir, weights="int8-weight" if scheme == "int8-weight" else "float")
        defaults = GenerationDefaults.from_directory(model_dir, decoder.spec.eos_token_ids)
        self.engine = Engine(decoder, slots=int(settings.get("slots", gen.get("slots", 16))), context=int(inp["context"]),
                             defaults=defaults, queue_limit=int(settings.get("max_queue", gen.get("max_queue", 64))))
        self.engine.add("warmup", [0], SamplingParams(max_tokens=2))
        while self.engine.running or self.engine.waiting:
            self.engine.step()
        logger.info("aiaas: %s serving generation (%s, context %d, %d slots) with continuous batching", self.model_name,
                    card.get("model", {}).get("architecture"), self.engine.context, self.engine.cache.slots)
        self.initialized = True

    def handle(self, data: list, context) -> list:
        """Return exactly one answer per request of the batch: this step's text for each (a failure is its own)."""
        if len(data) == 1 and not data[0] and context.get_request_header(0, "describe") == "True":
            context.stopping_criteria = None
            return [json.dumps(self.card)]
        n = len(data)
        ids = [str(context.get_request_id(i)) for i in range(n)]
        for rid in self.engine.sync(ids):
            logger.info("aiaas: request %s left the batch (client gone); its slot is free", rid)
        present = set(ids)
        for rid in [r for r in self.requests if r not in present]:
            del self.requests[rid]
        answers: list = [None] * n
        self._more: list = [None] * n
        for i, (rid, request) in enumerate(zip(ids, data)):
            if rid in self.requests:
                continue
            route = str(context.get_request_header(i, "url_path") or "").strip("/")
            try:
                answers[i] = self._admit(rid, route, request, context, i)
            except api.OpenAIError as e:
                answers[i] = self._refuse(context, i, e)
            except Exception:
                logger.exception("aiaas: admitting request %s failed", rid)
                answers[i] = self._refuse(context, i, api.OpenAIError(INTERNAL, None, 500))
        try:
            outputs = self.engine.step() if self.requests else {}
        except Exception:
            logger.exception("aiaas: the step over %d sequences failed; ending them", len(self.engine.running))
            outputs = None
        for i, rid in enumerate(ids):
            if answers[i] is not None:
                continue
            try:
                answers[i] = self._answer(self.requests[rid], outputs, context, i)
            except Exception:
                logger.exception("aiaas: answering request %s failed", rid)
                answers[i] = self._fail(self.requests.get(rid), context, i)
        # TorchServe's worker sets ts_stream_next from stopping_criteria[idx](answer): False "true" (more to come),
        # True "false" (the last part of a stream), None no header (a whole answer); a header set here would be undone
        context.stopping_criteria = [lambda _answer, flag=flag: flag for flag in self._more]
        if n and time.monotonic() - self._gauges_at >= 1.0:  # the engine's gauges at most once a second
            self._gauges_at = time.monotonic()
            st = self.engine.stats()
            self._metric(context, 0, "GenerationSlotsUsed", 100.0 * st.slots_used / max(1, st.slots), "percent")
            self._metric(context, 0, "GenerationKVCacheUsed", 100.0 * st.kv_tokens_used / max(1, st.kv_tokens), "percent")
        return answers

    def _metric(self, context, idx: int, name: str, value: float, unit: str = "ms") -> None:
        """Record one gauge (ms or percent) of request idx, declared in metrics.yaml; a metric never fails a request."""
        try:
            if getattr(context, "metrics", None) is not None:
                add = context.metrics.add_percent if unit == "percent" else context.metrics.add_time
                add(name, round(float(value), 3), idx=idx)
        except Exception:
            logger.exception("aiaas: recording metric %s failed", name)

    def _finished(self, r: _Request, context, idx: int) -> None:
        """Record a finished request's tokens and its mean time between tokens."""
        try:
            if getattr(context, "metrics", None) is not None and r.tokens:
                context.metrics.add_counter("GeneratedTokens", r.tokens, idx=idx)
        except Exception:
            logger.exception("aiaas: recording metric GeneratedTokens failed")
        if r.first is not None and r.tokens > 1:
            self._metric(context, idx, "GenerationInterTokenLatency", 1000 * (time.perf_counter() - r.first) / (r.tokens - 1))

    def _admit(self, rid: str, route: str, request: dict, context, idx: int):
        """Check a new request and queue it in the engine (None: answered by the step); or return a whole answer (models)."""
        body = request.get("data") if request else None
        if body is None and request:
            body = request.get("body")
        if route == api.MODELS:
            context.set_response_content_type(idx, JSON)
            return json.dumps(api.models_body(self.model_name, self.created))
        if route not in (api.CHAT, api.COMPLETIONS):
            raise api.OpenAIError(f"no route {route[:60]!r} here; this model answers /predictions/NAME/VERSION/ followed "
                                  f"by {api.CHAT}, {api.COMPLETIONS} or {api.MODELS}", None, 404)  # fmt: skip
        try:
            check_content_type((context.get_all_request_header(idx) or {}).get("Content-Type"))
        except ValueError as e:
            raise api.OpenAIError(str(e), None, 415) from None
        if body is None:
            raise api.OpenAIError("body: missing; send the JSON body with Content-Type: application/json")
        req = api.parse_request(route, body, self.engine.decoder.spec.vocab)
        if req.chat:
            if self.template is None:
                raise api.OpenAIError(f"this model has no chat template; send a prompt to /{api.COMPLETIONS}", "messages")
            try:
                text = render(self.template, req.messages, add_generation_prompt=True, bos_token=self.bos,
                              eos_token=self.eos)
            except TemplateError as e:
                raise api.OpenAIError(f"messages: {e}", "messages") from None
            prompt = self.tokenizer.encode(text, add_special_tokens=False).ids
        elif isinstance(req.prompt, str):
            prompt = self.tokenizer.encode(req.prompt).ids
        else:
            prompt = req.prompt
        params = SamplingParams(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                                top_k=req.top_k, seed=req.seed)
        try:
            self.engine.add(rid, prompt, params)
        except QueueFull as e:
            raise api.OpenAIError(f"the server is busy: {e}; retry in a second", None, 429, retry_after=1) from None
        except ValueError as e:
            code = "context_length_exceeded" if "context holds" in str(e) else None
            raise api.OpenAIError(str(e), "messages" if req.chat else "prompt", 400, code) from None
        self.requests[rid] = _Request(req, rid, len(prompt), self.tokenizer)
        return None

    def _refuse(self, context, idx: int, e: api.OpenAIError) -> str:
        """Set request idx's status (and Retry-After on a 429) and return its OpenAI error body."""
        context.set_response_content_type(idx, JSON)
        context.set_response_status(e.status, _REASONS.get(e.status, "Bad Request"), idx=idx)
        if e.retry_after is not None:
            context.set_response_header(idx, "Retry-After", str(e.retry_after))
        return json.dumps(api.openai_error(str(e), e.status, e.param, e.code))

    def _answer(self, r: _Request, outputs: dict | None, context, idx: int) -> str:
        """Return this step's answer to an admitted request, ending it when it finished."""
        if outputs is None:
            self.engine.drop(r.key)
            return self._fail(r, context, idx)
        req = r.req
        out = outputs.get(r.key)
        text, finish = "", None
        if out is not None:
            if r.first is None and (out.tokens or out.finished):
                r.first = time.perf_counter()
                self._metric(context, idx, "GenerationTimeToFirstToken", 1000 * (r.first - r.admitted))
            r.tokens += len(out.tokens)
            text, stopped = r.stop.feed(r.text.add(out.tokens))
            if stopped:
                self.engine.drop(r.key)
                finish = "stop"
            elif out.finished:
                more, stopped = r.stop.feed(r.text.rest())
                text += more + ("" if stopped else r.stop.flush())
                finish = "stop" if stopped else out.finish_reason
        events = []
        if req.stream:
            if not r.started:
                events.append(api.sse(api.chunk(req, r.rid, self.model_name, r.created, "", role=True)))
            if text:
                events.append(api.sse(api.chunk(req, r.rid, self.model_name, r.created, text)))
            if finish:
                events.append(api.sse(api.chunk(req, r.rid, self.model_name, r.created, None, finish)))
                if req.include_usage:
                    events.append(api.sse(api.usage_chunk(req, r.rid, self.model_name, r.created, r.prompt_tokens, r.tokens)))
                events.append(api.DONE)
        else:
            r.pieces.append(text)
        if not finish:
            context.set_response_content_type(idx, EVENTS if req.stream else JSON)
            self._more[idx] = False
            r.started = True
            return "".join(events)
        del self.requests[r.key]
        self._end(r, context, idx)
        self._finished(r, context, idx)
        if req.stream:
            return "".join(events)
        return json.dumps(api.answer(req, r.rid, self.model_name, r.created, "".join(r.pieces), finish, r.prompt_tokens,
                                     r.tokens), ensure_ascii=False)

    def _end(self, r: _Request, context, idx: int) -> None:
        """Mark request idx's last answer: ts_stream_next false after a streamed start, else a whole response."""
        context.set_response_content_type(idx, EVENTS if r.req.stream else JSON)
        self._more[idx] = True if r.started else None

    def _fail(self, r: _Request | None, context, idx: int) -> str:
        """End request idx after a failure of ours: an error event (stream started) or a 500 body."""
        err = api.openai_error(INTERNAL, 500)
        if r is None:
            return self._refuse(context, idx, api.OpenAIError(INTERNAL, None, 500))
        self.requests.pop(r.key, None)
        self._end(r, context, idx)
        if not r.started:
            context.set_response_status(500, _REASONS[500], idx=idx)
        if r.req.stream and r.started:
            return api.sse(err) + api.DONE
        return json.dumps(err)


_service = GenerationHandler()


def handle(data, context):
    """TorchServe's entry point: initialize on the first call (data None), then answer each batch; returns the answers."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
