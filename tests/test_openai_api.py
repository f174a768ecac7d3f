"""handlers/openai_api.py and handlers/generation_handler.py in-process, driven as TorchServe's continuous batching drives them.

`Frontend` plays the part of TorchServe's ContinuousBatching aggregator with TorchServe's own `ts.context.Context`:
every unfinished request is sent again (headers, no body) until its answer carries no ``ts_stream_next: true``; new
requests join between calls. Hostile bodies first, then answers checked against `transformers`' greedy `generate`.
The live server with the `openai` SDK is tests/integration/test_generation_serving.py.
"""

from __future__ import annotations

import itertools
import json

import pytest
from ts.context import Context, RequestProcessor

from aiaas_torch.handlers import openai_api as api
from aiaas_torch.handlers.generation_handler import GenerationHandler, TextStream
from generation_runs import chat_prompt, reference_text

CHAT, COMPLETIONS = api.CHAT, api.COMPLETIONS
IDS = itertools.count()
PROMPT = "serving starts TorchServe from a home directory and"


# --- request bodies (no model needed) ---------------------------------------------------------------------------------

@pytest.mark.parametrize("route, body, param, words", [
    (CHAT, b"{", None, "not valid JSON"),
    (CHAT, [1], None, "expected a JSON object"),
    (CHAT, {"messages": [{"role": "user", "content": "hi"}]}, "model", "model"),
    (CHAT, {"model": "m"}, "messages", "'messages'"),
    (CHAT, {"model": "m", "messages": []}, "messages", "non-empty list"),
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages", "messages[0].content"),
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
     "messages", "only text parts"),
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi", "tool_calls": []}]}, "messages", "tool_calls"),
    (CHAT, {"model": "m", "messages": [{"content": "hi"}]}, "messages", "messages[0].role"),
    (COMPLETIONS, {"model": "m"}, "prompt", "'prompt'"),
    (COMPLETIONS, {"model": "m", "prompt": ""}, "prompt", "empty"),
    (COMPLETIONS, {"model": "m", "prompt": ["a", "b"]}, "prompt", "one prompt per request"),
    (COMPLETIONS, {"model": "m", "prompt": [1, 999]}, "prompt", "token id 999"),
    (COMPLETIONS, {"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens", "≥ 1"),
    (COMPLETIONS, {"model": "m", "prompt": "x", "max_tokens": True}, "max_tokens", "≥ 1"),
    (COMPLETIONS, {"model": "m", "prompt": "x", "temperature": 3}, "temperature", "0 to 2"),
    (COMPLETIONS, {"model": "m", "prompt": "x", "top_p": 0}, "top_p", "(0, 1]"),
    (COMPLETIONS, {"model": "m", "prompt": "x", "seed": "7"}, "seed", "whole number"),
    (COMPLETIONS, {"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    (COMPLETIONS, {"model": "m", "prompt": "x", "stop": [""]}, "stop", "non-empty strings"),
    (COMPLETIONS, {"model": "m", "prompt": "x", "n": 2}, "n", "not supported"),
    (COMPLETIONS, {"model": "m", "prompt": "x", "logprobs": 3}, "logprobs", "not supported"),
    (COMPLETIONS, {"model": "m", "prompt": "x", "frequency_penalty": 0.5}, "frequency_penalty", "not supported"),
    (COMPLETIONS, {"model": "m", "prompt": "x", "bogus": 1}, "bogus", "unknown parameter"),
    (COMPLETIONS, {"model": "m", "prompt": "x", "stream_options": {"include_usage": True}}, "stream_options", "stream: true"),
    ("v1/embeddings", {"model": "m", "input": "x"}, None, "no route"),
])  # fmt: skip
def test_bad_bodies_are_refused_naming_the_parameter(route, body, param, words):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    with pytest.raises(api.OpenAIError) as e:
        api.parse_request(route, body, vocab=500)
    assert e.value.param == param and words in str(e.value)
    assert e.value.status == (404 if route == "v1/embeddings" else 400)
    err = api.openai_error(str(e.value), e.value.status, e.value.param)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"


def test_a_good_body_reads_as_openai_defines_it():
    body = {"model": "m", "messages": [{"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 3, "max_completion_tokens": 5,
            "temperature": 0, "top_p": 0.5, "seed": -1, "stop": "x", "n": 1, "user": "u"}  # fmt: skip
    req = api.parse_request(CHAT, json.dumps(body), vocab=500)
    assert req.messages == [{"role": "system", "content": "ab"}]
    assert (req.stream, req.include_usage, req.max_tokens, req.temperature, req.top_p, req.stop) == (True, True, 5, 0.0, 0.5, ("x",))
    assert req.seed == 2 ** 63 - 1  # a negative seed maps into the engine's range, the same every time
    assert api.parse_request(COMPLETIONS, {"model": "m", "prompt": [[3, 4]]}, 500).prompt == [3, 4]
    assert api.openai_error("busy", 429)["error"]["code"] == "rate_limit_exceeded"


# --- the handler, driven as TorchServe drives it ----------------------------------------------------------------------

class Frontend:
    """TorchServe's continuous batching in miniature: jobs stay in the batch while their answers say ts_stream_next: true."""

    def __init__(self, handler: GenerationHandler):
        self.handler, self.jobs, self.done = handler, {}, {}

    def submit(self, route: str, body: dict | None, headers: dict | None = None) -> str:
        """Queue a request; return its id."""
        rid = f"req-{next(IDS)}"  # unique across Frontends, as TorchServe's request ids are
        self.jobs[rid] = {"route": route, "body": None if body is None else json.dumps(body).encode(), "sent": False,
                          "headers": headers or {}, "status": None, "parts": [], "type": None, "resp_headers": {}}  # fmt: skip
        return rid

    def step(self, leave: tuple = ()) -> None:
        """One handle() call over every job (those in `leave` have disconnected and are left out, as TorchServe does)."""
        for rid in leave:
            self.jobs.pop(rid)
        ids = list(self.jobs)
        if not ids:
            return
        ctx = Context("tiny", ".", {}, len(ids), None, "0.12.0")
        ctx.request_ids = dict(enumerate(ids))
        ctx.request_processor = [RequestProcessor({"url_path": self.jobs[r]["route"], **self.jobs[r]["headers"]}) for r in ids]
        data = [{} if self.jobs[r]["sent"] else {"body": self.jobs[r]["body"]} for r in ids]
        answers = self.handler.handle(data, ctx)
        assert len(answers) == len(ids)
        for i, rid in enumerate(ids):
            job = self.jobs[rid]
            if not job["sent"]:
                job["status"] = ctx.get_response_status(i)[0]
                job["type"] = ctx.get_response_content_type(i)
                job["resp_headers"] = dict(ctx.get_response_headers(i))
            job["sent"] = True
            job["parts"].append(answers[i])
            # TorchServe's worker: ts_stream_next "true" when stopping_criteria[i](answer) is False
            if ctx.stopping_criteria is None or ctx.stopping_criteria[i](answers[i]) is not False:
                self.done[rid] = self.jobs.pop(rid)

    def run(self) -> dict:
        """Step until every job is answered; return {id: job}."""
        for _ in range(1000):
            if not self.jobs:
                return self.done
            self.step()
        raise AssertionError("requests never finished")


def body_of(job) -> dict:
    return json.loads("".join(job["parts"]))


def events(job) -> list:
    text = "".join(job["parts"])
    assert text.endswith(api.DONE)
    return [json.loads(e[len("data: "):]) for e in text.split("\n\n") if e and e != "data: [DONE]"]


def streamed_text(job) -> str:
    out = []
    for e in events(job):
        for c in e["choices"]:
            out.append(c["delta"].get("content") or "" if "delta" in c else c["text"])
    return "".join(out)


@pytest.fixture(scope="module")
def served(generation_runs):
    """Return (handler, transformers model, tokenizer, Hugging Face directory) of the session's tiny imported llama
    (seed 1, shared with tests/integration/test_generation_serving.py) served in-process (2 slots, 1 waiting)."""
    directory, model, tok, hf = generation_runs["llama", 1]
    handler = GenerationHandler()
    ctx = Context("tiny", str(directory), {"model": {"modelVersion": "1.0"}}, 1, None, "0.12.0",
                  model_yaml_config={"handler": {"slots": 2, "max_queue": 1}})
    handler.initialize(ctx)
    return handler, model, tok, hf


def test_hostile_requests_end_alone_beside_a_good_one(served):
    handler, model, tok, _ = served
    fe = Frontend(handler)
    good = fe.submit(COMPLETIONS, {"model": "tiny", "prompt": PROMPT, "max_tokens": 4})
    bad = {
        fe.submit(COMPLETIONS, None): (400, "body: missing"),
        fe.submit(CHAT, {"model": "tiny", "messages": "hi"}): (400, "messages"),
        fe.submit("v1/nothing", {}): (404, "no route"),
        fe.submit(COMPLETIONS, {"model": "tiny", "prompt": "x"}, {"Content-Type": "text/plain"}): (415, "Content-Type"),
        fe.submit(COMPLETIONS, {"model": "tiny", "prompt": "word " * 300}): (400, "this model's context holds 256 tokens"),
    }
    done = fe.run()
    for rid, (status, words) in bad.items():
        job = done[rid]
        assert job["status"] == status and len(job["parts"]) == 1 and job["type"] == "application/json"
        assert words in body_of(job)["error"]["message"]
    over = body_of(done[list(bad)[-1]])["error"]
    assert over["code"] == "context_length_exceeded" and over["param"] == "prompt"
    assert "the prompt has" in over["message"]  # names the token counts
    want, margin = reference_text(model, tok, tok.encode(PROMPT).ids, 4)
    assert margin >= 1e-3
    assert done[good]["status"] == 200 and body_of(done[good])["choices"][0]["text"] == want
    assert not handler.requests and not handler.engine.running and len(handler.engine.cache.free) == 2


def test_greedy_text_equals_generate_streamed_and_not(served):
    handler, model, tok, _ = served
    fe = Frontend(handler)
    plain = fe.submit(COMPLETIONS, {"model": "tiny", "prompt": PROMPT, "max_tokens": 12, "temperature": 0})
    stream = fe.submit(COMPLETIONS, {"model": "tiny", "prompt": PROMPT, "max_tokens": 12, "stream": True,
                                     "stream_options": {"include_usage": True}})  # fmt: skip
    done = fe.run()
    prompt_ids = tok.encode(PROMPT).ids
    want, margin = reference_text(model, tok, prompt_ids, 12)
    assert margin >= 1e-3
    answer = body_of(done[plain])
    assert answer["object"] == "text_completion" and answer["choices"][0]["text"] == want
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": len(prompt_ids), "completion_tokens": 12, "total_tokens": len(prompt_ids) + 12}
    job = done[stream]
    assert job["type"] == "text/event-stream" and job["status"] == 200 and len(job["parts"]) > 3
    assert streamed_text(job) == want
    evs = events(job)
    assert evs[-2]["choices"][0]["finish_reason"] == "length" and evs[-1]["choices"] == []
    assert evs[-1]["usage"]["completion_tokens"] == 12


def test_chat_renders_the_template_and_matches_generate(served):
    handler, model, tok, hf = served
    fe = Frontend(handler)
    msgs = [{"role": "user", "content": "the model card"}]
    rid = fe.submit(CHAT, {"model": "tiny", "messages": msgs, "max_tokens": 6, "stream": True})
    plain = fe.submit(CHAT, {"model": "tiny", "messages": msgs, "max_tokens": 6})
    done = fe.run()
    ids = tok.encode(chat_prompt(hf, msgs), add_special_tokens=False).ids
    want, margin = reference_text(model, tok, ids, 6)
    assert margin >= 1e-3
    evs = events(done[rid])
    assert evs[0]["object"] == "chat.completion.chunk" and evs[0]["choices"][0]["delta"]["role"] == "assistant"
    assert streamed_text(done[rid]) == want
    answer = body_of(done[plain])
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": want}


def test_stop_strings_cut_the_text_and_finish_with_stop(served):
    handler, model, tok, _ = served
    want, _ = reference_text(model, tok, tok.encode(PROMPT).ids, 12)
    stop = want[5:8]
    assert want.find(stop) == 5
    fe = Frontend(handler)
    a = fe.submit(COMPLETIONS, {"model": "tiny", "prompt": PROMPT, "max_tokens": 12, "stop": [stop, "never!"]})
    b = fe.submit(COMPLETIONS, {"model": "tiny", "prompt": PROMPT, "max_tokens": 12, "stop": stop, "stream": True})
    done = fe.run()
    choice = body_of(done[a])["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == (want[:5], "stop")
    assert streamed_text(done[b]) == want[:5] and events(done[b])[-1]["choices"][0]["finish_reason"] == "stop"
    assert len(handler.engine.cache.free) == 2


def test_a_full_queue_answers_429_with_retry_after_and_a_gone_client_frees_its_slot(served):
    handler, model, tok, _ = served
    fe = Frontend(handler)
    ids = [fe.submit(COMPLETIONS, {"model": "tiny", "prompt": PROMPT, "max_tokens": 30, "stream": True}) for _ in range(4)]
    fe.step()  # 2 slots, 1 waiting, the 4th refused
    refused = fe.done[ids[3]]
    assert refused["status"] == 429 and refused["resp_headers"].get("Retry-After") == "1"
    assert body_of(refused)["error"]["code"] == "rate_limit_exceeded"
    assert len(handler.engine.running) == 2 and len(handler.engine.waiting) == 1
    fe.step(leave=(ids[0],))  # the first client disconnected: its slot goes to the waiting request
    assert ids[0] not in handler.requests and len(handler.engine.running) == 2 and not handler.engine.waiting
    fe.step(leave=(ids[1], ids[2]))  # TorchServe calls the handler again only when a request comes: it frees them then
    late = fe.submit(COMPLETIONS, {"model": "tiny", "prompt": PROMPT, "max_tokens": 2})
    fe.step()
    assert set(handler.requests) == {late} and len(handler.engine.running) == 1
    assert fe.run()[late]["status"] == 200
    assert not handler.requests and handler.engine.cache.free == [1, 0]


def test_models_route_and_seeded_sampling(served):
    handler, _, _, _ = served
    fe = Frontend(handler)
    m = fe.submit(api.MODELS, None)
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 10, "temperature": 1.0, "seed": 123}
    a, b, c = fe.submit(COMPLETIONS, body), fe.submit(COMPLETIONS, body), fe.submit(COMPLETIONS, {**body, "seed": 124})
    done = fe.run()
    assert body_of(done[m])["data"][0]["id"] == "tiny"
    texts = [body_of(done[r])["choices"][0]["text"] for r in (a, b, c)]
    assert texts[0] == texts[1] and texts[0] != texts[2]


def test_a_short_context_ends_with_length(served):
    handler, model, tok, _ = served
    prompt = tok.encode(PROMPT).ids
    for left in (1, 2, 3):
        ids = prompt + [7] * (handler.engine.context - len(prompt) - left)  # `left` positions of context remain
        fe = Frontend(handler)
        rid = fe.submit(COMPLETIONS, {"model": "tiny", "prompt": ids, "max_tokens": 20, "stream": True})
        done = fe.run()
        evs = events(done[rid])
        assert evs[-1]["choices"][0]["finish_reason"] == "length"
        want, _ = reference_text(model, tok, ids, left)
        assert streamed_text(done[rid]) == want


def test_text_stream_holds_back_partial_characters(served):
    _, _, tok, _ = served
    ids = tok.encode("é ü — naïve").ids
    ts = TextStream(tok)
    pieces = [ts.add([t]) for t in ids] + [ts.rest()]
    assert "".join(pieces) == tok.decode(ids) and not any("\ufffd" in p for p in pieces)
