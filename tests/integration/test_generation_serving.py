"""Generation models served by one real TorchServe (module scope) and answered through the official `openai` SDK.

Three tiny random causal LMs (llama, qwen2, gpt2) built in the test, packaged and served with TorchServe's continuous
batching. Greedy text equals `transformers`' `generate(do_sample=False)` (the reference margin asserted ≥ 1e-3),
streamed and not; seeded sampling repeats; stop strings and max_tokens hold; a prompt over the context is a 400 in
OpenAI's shape naming the token counts; four streams at once each equal their answer alone; with one slot and no
queue a second request is a 429 with Retry-After, and a client that disconnects mid-stream frees the slot.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from aiaas_torch import serving as server
from aiaas_torch.archive import package, verify_archive
from aiaas_torch.client import Client
from generation_runs import chat_prompt, reference_text, with_settings

pytestmark = [pytest.mark.serving, pytest.mark.slow]
openai = pytest.importorskip("openai")

KINDS = {"llama": {}, "qwen2": dict(slots=1, max_queue=0), "gpt2": {}}  # contexts 256, 256, 64 (their configs)
PROMPTS = ["serving starts TorchServe from a home directory and", "the model card", "tokens",
           "a short one travels with the model"]  # fmt: skip


@dataclass
class GenServed:
    models: dict  # kind: (transformers model, tokenizer, Hugging Face directory)
    home: Path
    info: server.ServerInfo
    token: str
    archive: Path


@pytest.fixture(scope="module")
def gen_served(generation_runs, tmp_path_factory) -> GenServed:
    """Yield a TorchServe serving the session's three tiny models (qwen2 with one slot and no queue); stop it afterwards."""
    root = tmp_path_factory.mktemp("gen_served")
    store, models, archives = root / "store", {}, {}
    for kind, kw in KINDS.items():
        directory, model, tok, hf = generation_runs[kind, 1]  # seed 1: margins ≥ 1e-3 on PROMPTS
        if kw:
            directory = with_settings(directory, root / kind, **kw)
        models[kind] = (model, tok, hf)
        archives[kind] = package(directory, kind, "1.0", store).path
    home = root / "home"
    info = server.start_server(home, store, [f"{k}={a.name}" for k, a in archives.items()], free_ports=True,
                               ready_timeout=180)
    try:
        with Client(home=home) as c:
            token = c.token
        yield GenServed(models, home, info, token, archives["llama"])
    finally:
        server.stop_server(home)


def sdk(s: GenServed, kind: str):
    """Return an `openai` client on the model's openai_base_url as `aiaas serve status --json` reports it."""
    base = server.server_status(s.home)["models"][kind][0]["openai_base_url"]
    assert base == f"{s.info.inference_url}/predictions/{kind}/1.0/v1"
    return openai.OpenAI(base_url=base, api_key=s.token, max_retries=0, timeout=120)


def want(s: GenServed, kind: str, prompt: str, n: int) -> str:
    """Return generate's greedy text of n tokens after the tokenized prompt, asserting the reference margin."""
    model, tok, _ = s.models[kind]
    text, margin = reference_text(model, tok, tok.encode(prompt).ids, n)
    assert margin >= 1e-3, f"{kind}: reference margin {margin} too small for an exact comparison"
    return text


def test_archive_ships_the_handler_and_continuous_batching(gen_served):
    card = verify_archive(gen_served.archive)
    assert card["files"]["generation_handler.py"]["role"] == "handler"
    assert {"decoders.py", "generation.py", "openai_api.py", "chat_template.py", "tokenizer.json"} <= set(card["files"])
    assert card["serving"]["continuousBatching"] is True and card["serving"]["minWorkers"] == 1


@pytest.mark.parametrize("kind", list(KINDS))
def test_greedy_text_equals_generate_streamed_and_not(gen_served, kind):
    client, prompt = sdk(gen_served, kind), PROMPTS[0]
    expect = want(gen_served, kind, prompt, 12)
    r = client.completions.create(model=kind, prompt=prompt, max_tokens=12, temperature=0)
    assert r.choices[0].text == expect and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens == len(gen_served.models[kind][1].encode(prompt).ids)
    pieces = [c.choices[0].text for c in client.completions.create(model=kind, prompt=prompt, max_tokens=12, stream=True)]
    assert "".join(pieces) == expect and len(pieces) > 2


def test_chat_streams_the_templated_answer(gen_served):
    client, (model, tok, hf) = sdk(gen_served, "llama"), gen_served.models["llama"]
    msgs = [{"role": "user", "content": "the model card"}]
    ids = tok.encode(chat_prompt(hf, msgs), add_special_tokens=False).ids
    expect, margin = reference_text(model, tok, ids, 8)
    assert margin >= 1e-3
    stream = client.chat.completions.create(model="llama", messages=msgs, max_tokens=8, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expect
    r = client.chat.completions.create(model="llama", messages=msgs, max_tokens=8)
    assert r.choices[0].message.content == expect and r.object == "chat.completion"


def test_seed_stop_and_max_tokens(gen_served):
    client = sdk(gen_served, "gpt2")
    a, b, c = (client.completions.create(model="gpt2", prompt=PROMPTS[1], max_tokens=10, temperature=1.0, seed=s).choices[0].text
               for s in (5, 5, 6))  # fmt: skip
    assert a == b and a != c
    expect = want(gen_served, "gpt2", PROMPTS[0], 12)
    at = next(k for k in range(3, len(expect) - 3) if expect.find(expect[k:k + 3]) == k)  # a stop first seen at `at`
    r = client.completions.create(model="gpt2", prompt=PROMPTS[0], max_tokens=12, stop=[expect[at:at + 3]], temperature=0)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (expect[:at], "stop")
    r = client.completions.create(model="gpt2", prompt=PROMPTS[0], max_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    assert [m.id for m in client.models.list()] == ["gpt2"]


def test_a_prompt_over_the_context_is_a_400_naming_the_counts(gen_served):
    client = sdk(gen_served, "gpt2")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="gpt2", prompt="the model card " * 40, max_tokens=3)
    err = e.value.body
    assert e.value.status_code == 400 and err["code"] == "context_length_exceeded" and err["param"] == "prompt"
    assert "this model's context holds 64 tokens" in err["message"] and "the prompt has" in err["message"]


def test_four_streams_at_once_each_equal_their_answer_alone(gen_served):
    client = sdk(gen_served, "llama")
    expect = [want(gen_served, "llama", p, 16) for p in PROMPTS]

    def one(prompt):
        return "".join(c.choices[0].text for c in client.completions.create(model="llama", prompt=prompt, max_tokens=16,
                                                                             stream=True))  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, PROMPTS)) == expect


def test_a_full_queue_is_a_429_and_a_gone_client_frees_its_slot(gen_served):
    url = f"{gen_served.info.inference_url}/predictions/qwen2/1.0/v1/completions"
    headers = {"Authorization": f"Bearer {gen_served.token}"}
    long = {"model": "qwen2", "prompt": PROMPTS[1], "max_tokens": 250, "stream": True}
    client = sdk(gen_served, "qwen2")
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", url, json=long, headers=headers) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # running: the one slot is taken
            with pytest.raises(openai.RateLimitError) as e:
                client.completions.create(model="qwen2", prompt=PROMPTS[2], max_tokens=2)
            assert e.value.response.headers.get("retry-after") == "1"
            assert e.value.body["code"] == "rate_limit_exceeded"
        # the client is gone after a few events of 250: TorchServe drops its job at the next step ...
    logs = gen_served.home / "logs"
    deadline = time.monotonic() + 60
    while "Connection to client got closed" not in _read(logs / "ts_log.log"):
        assert time.monotonic() < deadline, "TorchServe never saw the client leave"
        time.sleep(0.2)
    # ... and calls the handler again only when a request comes: that call frees the slot before admitting it
    r = client.completions.create(model="qwen2", prompt=PROMPTS[2], max_tokens=2)
    assert r.choices[0].finish_reason == "length"
    assert "left the batch (client gone)" in _read(logs / "model_log.log")


def _read(path: Path) -> str:
    """Return a log file's text ("" while it does not exist)."""
    return path.read_text(errors="replace") if path.exists() else ""


def test_metrics_report_time_to_first_token_and_tokens(gen_served):
    client = sdk(gen_served, "gpt2")
    client.completions.create(model="gpt2", prompt=PROMPTS[1], max_tokens=5, temperature=0)
    with Client(home=gen_served.home) as c:
        text = c.metrics()
    lines = [ln for ln in text.splitlines() if 'ModelName="gpt2"' in ln]
    values = {ln.split("{", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in lines}
    assert values.get("GeneratedTokens", 0) >= 5
    assert values.get("GenerationTimeToFirstToken", -1) > 0 and values.get("GenerationInterTokenLatency", -1) > 0


def test_aiaas_predict_prompt_prints_the_completion(gen_served, capsys):
    from aiaas_torch.cli import main

    expect = want(gen_served, "gpt2", PROMPTS[0], 12)
    capsys.readouterr()
    assert main(["predict", "gpt2", "--prompt", PROMPTS[0], "--max-tokens", "12", "--home", str(gen_served.home)]) == 0
    out = capsys.readouterr()
    assert out.out == expect + "\n" and "--max-tokens N for more" in out.err
    assert main(["predict", "gpt2", "--prompt", "the model card " * 40, "--home", str(gen_served.home)]) == 2
    assert "this model's context holds 64 tokens" in capsys.readouterr().err
    assert main(["predict", "gpt2", "--max-tokens", "3", "--home", str(gen_served.home)]) == 2


def test_aiaas_chat_streams_answers_and_keeps_the_conversation(gen_served, capsys, monkeypatch):
    import io

    from aiaas_torch.cli import main

    model, tok, hf = gen_served.models["llama"]
    turns = ["the model card", "tokens"]
    msgs, expect = [], []
    for t in turns:
        msgs.append({"role": "user", "content": t})
        text, margin = reference_text(model, tok, tok.encode(chat_prompt(hf, msgs), add_special_tokens=False).ids, 6)
        assert margin >= 1e-3
        expect.append(text)
        msgs.append({"role": "assistant", "content": text})
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(t + "\n" for t in turns) + "\n"))
    capsys.readouterr()
    assert main(["chat", "llama", "--max-tokens", "6", "--home", str(gen_served.home)]) == 0
    assert capsys.readouterr().out == "".join(e + "\n" for e in expect)
