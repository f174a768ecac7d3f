"""OpenAI's completion API on the wire: request bodies checked into a `GenerationRequest`, answers, stream chunks, errors.

Stdlib only; shipped in generation archives (and text archives, for the error shape of /v1/embeddings). Routes are
the path after /predictions/NAME/VERSION/: ``v1/chat/completions``, ``v1/completions``, ``v1/models``. A refused
request raises `OpenAIError` (status, param, code) whose `openai_error` body is OpenAI's
``{"error": {"message", "type", "param", "code"}}``. Streams are server-sent events: one ``data: {chunk}`` per
piece of text, ending ``data: [DONE]``. Parameters OpenAI defines that change the answer but are not implemented here
(``n`` > 1, ``logprobs``, penalties, tools, ``echo``, …) are refused by name rather than silently ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

try:  # installed package (tests, the library)
    from .contract_common import ContractError, clip_text, show_value
    from .json_body import decode_body
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    from contract_common import ContractError, clip_text, show_value
    from json_body import decode_body

CHAT = "v1/chat/completions"
COMPLETIONS = "v1/completions"
MODELS = "v1/models"
ROUTES = (CHAT, COMPLETIONS, MODELS)
DONE = "data: [DONE]\n\n"
MAX_STOPS = 4
MAX_STOP_CHARS = 1000
MAX_MESSAGES = 10_000
MAX_PROMPT_CHARS = 4_000_000  # characters of prompt text read at all (the context bounds the tokens later)
# Accepted at their neutral value only: other values would change the answer in ways this server does not implement.
NEUTRAL = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": False, "echo": False, "best_of": 1,
           "parallel_tool_calls": None, "tool_choice": "none", "suffix": None, "response_format": {"type": "text"},
           "logit_bias": {}, "top_logprobs": None, "tools": []}
IGNORED = {"user", "store", "metadata", "service_tier"}  # bookkeeping fields with no effect on the tokens
COMMON = {"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "seed", "stop", "top_k"}
FIELDS = {CHAT: COMMON | {"messages", "max_completion_tokens"}, COMPLETIONS: COMMON | {"prompt"}}


class OpenAIError(ContractError):
    """A refused OpenAI request: answered in OpenAI's error shape, naming the parameter (and Retry-After on a 429)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status, self.param, self.code, self.retry_after = status, param, code, retry_after


def openai_error(message: str, status: int = 400, param: str | None = None, code: str | None = None) -> dict:
    """Return OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 429:
        kind, code = "requests", code or "rate_limit_exceeded"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class GenerationRequest:
    """One checked chat or completion request; None fields take the model's defaults."""

    route: str
    model: str
    messages: list | None = None  # chat: [{"role": str, "content": str}, ...]
    prompt: str | list | None = None  # completions: text, or token ids
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple = ()

    @property
    def chat(self) -> bool:
        """Return True for a chat completion."""
        return self.route == CHAT


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def _optional(body: dict, key: str, ok, expect: str):
    """Return body[key] (None when absent or null) after checking it with `ok`; raise OpenAIError naming key."""
    v = body.get(key)
    if v is not None and not ok(v):
        raise OpenAIError(f"{key}: {show_value(v)} is not {expect}", key)
    return v


def _content(v, where: str) -> str:
    """Return a message's text: a string, or a list of {"type": "text", "text": str} parts joined."""
    if isinstance(v, str):
        return v
    if isinstance(v, list) and v and all(isinstance(p, dict) for p in v):
        if all(p.get("type") == "text" and isinstance(p.get("text"), str) and set(p) <= {"type", "text"} for p in v):
            return "".join(p["text"] for p in v)
        raise OpenAIError(f"{where}: only text parts ({{\"type\": \"text\", \"text\": \"...\"}}) are supported", "messages")
    raise OpenAIError(f"{where}: {show_value(v)} is not a text (a string or a list of text parts)", "messages")


def _messages(v) -> list:
    """Return checked chat messages [{"role", "content"}]."""
    if not isinstance(v, list) or not v:
        raise OpenAIError("messages: expected a non-empty list of {\"role\": ..., \"content\": ...}", "messages")
    if len(v) > MAX_MESSAGES:
        raise OpenAIError(f"messages: {len(v)} messages; at most {MAX_MESSAGES} are read", "messages")
    out, size = [], 0
    for i, m in enumerate(v):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise OpenAIError(f"{where}: {show_value(m)} is not an object with 'role' and 'content'", "messages")
        role = m.get("role")
        if not isinstance(role, str) or not role or len(role) > 64:
            raise OpenAIError(f"{where}.role: {show_value(role)} is not a role such as 'system', 'user' or 'assistant'", "messages")
        extra = sorted(set(m) - {"role", "content", "name"})
        if extra:
            raise OpenAIError(f"{where}: field {clip_text(str(extra[0]))!r} is not supported (tool calls, audio, "
                              f"images are not served here)", "messages")  # fmt: skip
        content = _content(m.get("content"), f"{where}.content")
        size += len(content)
        if size > MAX_PROMPT_CHARS:
            raise OpenAIError(f"messages: over {MAX_PROMPT_CHARS} characters of text", "messages")
        out.append({"role": role, "content": content})
    return out


def _prompt(v, vocab: int):
    """Return a completion prompt: a string, or a list of token ids (one prompt per request)."""
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], (str, list)):
        v = v[0]  # the SDK's one-prompt list
    if isinstance(v, str):
        if not v:
            raise OpenAIError("prompt: empty; send some text", "prompt")
        if len(v) > MAX_PROMPT_CHARS:
            raise OpenAIError(f"prompt: over {MAX_PROMPT_CHARS} characters", "prompt")
        return v
    if isinstance(v, list) and v and all(_whole(t) for t in v):
        bad = next((t for t in v if not 0 <= t < vocab), None)
        if bad is not None:
            raise OpenAIError(f"prompt: token id {bad} is not in this model's vocabulary (0 to {vocab - 1})", "prompt")
        return list(v)
    if isinstance(v, list) and len(v) > 1 and all(isinstance(p, (str, list)) for p in v):
        raise OpenAIError(f"prompt: {len(v)} prompts; send one prompt per request", "prompt")
    raise OpenAIError(f"prompt: {show_value(v)} is not a text or a list of token ids", "prompt")


def _stop(v) -> tuple:
    """Return the stop strings: a string or a list of up to MAX_STOPS non-empty strings."""
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise OpenAIError(f"stop: {show_value(v)} is not a string or a list of non-empty strings", "stop")
    if len(stops) > MAX_STOPS:
        raise OpenAIError(f"stop: {len(stops)} stop strings; at most {MAX_STOPS}", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise OpenAIError(f"stop: a stop string over {MAX_STOP_CHARS} characters", "stop")
    return tuple(stops)


def parse_request(route: str, body, vocab: int) -> GenerationRequest:
    """Return the checked request of a chat or completion body (bytes, str or parsed JSON); raise OpenAIError naming the parameter."""
    if route not in FIELDS:
        raise OpenAIError(f"no route {clip_text(route, 60)!r} here; this model answers /{CHAT}, /{COMPLETIONS} and "
                          f"/{MODELS} under /predictions/NAME/VERSION/", None, 404)  # fmt: skip
    try:
        body = decode_body(body)
    except ContractError as e:
        raise OpenAIError(str(e)) from None
    if not isinstance(body, dict):
        raise OpenAIError("body: expected a JSON object such as {\"model\": ..., " +
                          ("\"messages\": [...]}" if route == CHAT else "\"prompt\": \"...\"}"))
    for key in sorted(body):
        if key in FIELDS[route] or key in IGNORED:
            continue
        if key in NEUTRAL:
            if body[key] is not None and body[key] != NEUTRAL[key]:
                raise OpenAIError(f"{key}: {show_value(body[key])} is not supported here (only {NEUTRAL[key]!r})", key)
            continue
        raise OpenAIError(f"unknown parameter {clip_text(str(key))!r}", clip_text(str(key)))
    model = body.get("model")
    if not isinstance(model, str):
        raise OpenAIError("model: expected the model's name (a string)", "model")
    stream = _optional(body, "stream", lambda v: isinstance(v, bool), "true or false") or False
    options = _optional(body, "stream_options", lambda v: isinstance(v, dict) and set(v) <= {"include_usage"},
                        "an object such as {\"include_usage\": true}") or {}
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise OpenAIError(f"stream_options.include_usage: {show_value(include_usage)} is not true or false", "stream_options")
    if options and not stream:
        raise OpenAIError("stream_options: only allowed with stream: true", "stream_options")
    max_tokens = _optional(body, "max_tokens", lambda v: _whole(v) and v >= 1, "a whole number ≥ 1")
    if route == CHAT:
        mct = _optional(body, "max_completion_tokens", lambda v: _whole(v) and v >= 1, "a whole number ≥ 1")
        max_tokens = mct if mct is not None else max_tokens
    temperature = _optional(body, "temperature", lambda v: _number(v) and 0 <= v <= 2, "a number from 0 to 2")
    top_p = _optional(body, "top_p", lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]")
    top_k = _optional(body, "top_k", lambda v: _whole(v) and v >= 0, "a whole number ≥ 0 (0: off)")
    seed = _optional(body, "seed", lambda v: _whole(v) and -(2 ** 63) <= v < 2 ** 64, "a whole number (64 bits)")
    stop = _stop(body.get("stop"))
    if route == CHAT:
        if "messages" not in body:
            raise OpenAIError("you must provide a 'messages' parameter", "messages")
        messages, prompt = _messages(body["messages"]), None
    else:
        if "prompt" not in body:
            raise OpenAIError("you must provide a 'prompt' parameter", "prompt")
        messages, prompt = None, _prompt(body["prompt"], vocab)
    return GenerationRequest(route, model, messages, prompt, stream, include_usage, max_tokens,
                             None if temperature is None else float(temperature),
                             None if top_p is None else float(top_p), top_k,
                             None if seed is None else seed % 2 ** 63, stop)  # fmt: skip


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """Return OpenAI's usage object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def answer(req: GenerationRequest, rid: str, model: str, created: int, text: str, finish_reason: str,
           prompt_tokens: int, completion_tokens: int) -> dict:
    """Return the whole (non-streamed) answer: a chat.completion or a text_completion."""
    if req.chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish_reason}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        kind = "text_completion"
    return {"id": rid, "object": kind, "created": created, "model": model, "choices": [choice],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(req: GenerationRequest, rid: str, model: str, created: int, text: str | None,
          finish_reason: str | None = None, role: bool = False) -> dict:
    """Return one stream chunk: a piece of text, or (text None) the closing chunk carrying finish_reason."""
    if req.chat:
        delta = {} if text is None else {"content": text}
        if role:
            delta = {"role": "assistant", **delta}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        kind = "text_completion"
    return {"id": rid, "object": kind, "created": created, "model": model, "choices": [choice]}


def usage_chunk(req: GenerationRequest, rid: str, model: str, created: int, prompt_tokens: int,
                completion_tokens: int) -> dict:
    """Return the last chunk of a stream asked for with stream_options.include_usage: no choices, the usage."""
    kind = "chat.completion.chunk" if req.chat else "text_completion"
    return {"id": rid, "object": kind, "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def sse(obj: dict) -> str:
    """Return one server-sent event carrying `obj` as JSON."""
    return "data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n\n"


def models_body(name: str, created: int) -> dict:
    """Return the /v1/models list: this one model."""
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "aiaas"}]}
