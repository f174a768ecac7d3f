"""handlers/generation.py: iteration-level batching gives each request exactly what `generate` gives it alone.

Sequences of different prompt lengths join a running batch mid-way, prefilled with the others' decode step or in a
forward of their own, or in chunks; a dropped request frees its slot for the next; a short context ends a sequence
with `length`; seeded sampling does not depend on the batch. References come from `transformers`' `generate` on the
same tiny random models (margins asserted ≥ 1e-3 at every step).
"""

from __future__ import annotations

import json
import shutil

import pytest

from aiaas_torch.handlers.decoders import load_decoder
from aiaas_torch.handlers.generation import Engine, GenerationDefaults, QueueFull, SamplingParams, StopText
from decoder_models import PROMPTS, reference

N = 10
KINDS = ["llama", "qwen2", "gpt2"]


@pytest.fixture(scope="module")
def models(decoder_dirs):
    """Return {kind: (directory, model, decoder, {prompt index: reference tokens})} for three architectures (the
    session's tiny models)."""
    out = {}
    for kind in KINDS:
        directory, model = decoder_dirs[kind]
        refs = {}
        for i, prompt in enumerate(PROMPTS):
            refs[i], margin = reference(model, prompt, N)
            assert margin >= 1e-3, f"{kind} prompt {i}: reference margin {margin} too small for an exact comparison"
        out[kind] = (directory, model, load_decoder(directory), refs)
    return out


def run(engine: Engine, joins: dict[int, list], params=None) -> tuple[dict, dict]:
    """Step until idle, adding joins[step] = [(id, prompt)] at that step; return ({id: tokens}, {id: finish_reason})."""
    tokens, reasons, step = {}, {}, 0
    while engine.running or engine.waiting or any(s >= step for s in joins):
        for rid, prompt in joins.get(step, []):
            engine.add(rid, prompt, params or SamplingParams(max_tokens=N))
            tokens[rid] = []
        for rid, out in engine.step().items():
            tokens.setdefault(rid, []).extend(out.tokens)
            if out.finished:
                reasons[rid] = out.finish_reason
        step += 1
    return tokens, reasons


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prefill, chunk", [("mixed", None), ("separate", None), ("mixed", 3)])
def test_mixed_batch_with_late_joiners_equals_generate_alone(models, kind, prefill, chunk):
    _, _, decoder, refs = models[kind]
    engine = Engine(decoder, slots=4, context=64, prefill=prefill, max_prefill_tokens=chunk)
    joins = {0: [(0, PROMPTS[0]), (1, PROMPTS[1])], 2: [(2, PROMPTS[2])], 5: [(3, PROMPTS[3])]}
    tokens, reasons = run(engine, joins)
    assert tokens == {i: refs[i] for i in range(4)}
    assert set(reasons.values()) == {"length"}
    assert engine.cache.free == [3, 2, 1, 0]


def test_more_requests_than_slots_wait_and_reuse_freed_slots(models):
    _, _, decoder, refs = models["llama"]
    engine = Engine(decoder, slots=2, context=64)
    tokens, _ = run(engine, {0: [(i, PROMPTS[i]) for i in range(4)]})
    assert tokens == {i: refs[i] for i in range(4)}


def test_drop_frees_the_slot_and_the_next_sequence_ignores_its_stale_keys(models):
    _, _, decoder, refs = models["qwen2"]
    engine = Engine(decoder, slots=2, context=64)
    engine.add("long", PROMPTS[3], SamplingParams(max_tokens=N))
    engine.add("other", PROMPTS[0], SamplingParams(max_tokens=N))
    for _ in range(4):
        engine.step()
    slot = engine.running["long"].slot
    assert engine.drop("long") and engine.cache.free == [slot]
    assert not engine.drop("long")
    engine.add("short", PROMPTS[1], SamplingParams(max_tokens=N))  # shorter than the stale keys it lands on
    got = []
    while "short" in engine.running or engine.waiting:
        got += engine.step().get("short").tokens
    assert got == refs[1]


def test_sync_drops_the_ids_torchserve_no_longer_sends(models):
    _, _, decoder, _ = models["gpt2"]
    engine = Engine(decoder, slots=2, context=64, queue_limit=4)
    for i in range(3):
        engine.add(i, PROMPTS[i], SamplingParams(max_tokens=N))
    engine.step()
    assert engine.sync([1]) == [0, 2]
    assert list(engine.running) == [1] and not engine.waiting and len(engine.cache.free) == 1


@pytest.mark.parametrize("extra", [1, 2, 3])
def test_a_short_context_ends_with_length(models, extra):
    _, _, decoder, refs = models["llama"]
    prompt = PROMPTS[0]
    engine = Engine(decoder, slots=1, context=len(prompt) + extra)
    assert engine.cache.max_len == len(prompt) + extra - 1
    tokens, reasons = run(engine, {0: [(0, prompt)]})
    assert tokens[0] == refs[0][:extra] and reasons[0] == "length"
    with pytest.raises(ValueError, match=rf"the prompt has {len(prompt) + extra} tokens; this model's context holds "
                                         rf"{len(prompt) + extra} tokens"):
        engine.add(1, prompt + [1] * extra, SamplingParams())


def test_stop_tokens_from_generation_config_end_as_generate_ends(models, tmp_path):
    src, model, _, refs = models["gpt2"]
    stop = refs[0][4]
    directory = shutil.copytree(src, tmp_path / "m")  # the same weights, a generation_config of its own
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [127, stop], "pad_token_id": 0}))
    want, _ = reference(model, PROMPTS[0], N, eos_token_id=[127, stop])
    assert want[-1] == stop and len(want) < N  # the reference stopped at it
    defaults = GenerationDefaults.from_directory(directory)
    assert defaults.eos_token_ids == (127, stop)
    tokens, reasons = run(Engine(load_decoder(directory), slots=1, context=64, defaults=defaults), {0: [(0, PROMPTS[0])]})
    assert tokens[0] == want[:-1] and reasons[0] == "stop"  # the stop token is reported apart, not in the text


def test_generation_config_fields_read_and_the_ignored_named():
    d = GenerationDefaults.from_dict({"do_sample": True, "temperature": 0.7, "top_p": 0.9, "eos_token_id": 2,
                                      "repetition_penalty": 1.3, "num_beams": 1, "transformers_version": "5"})
    assert (d.do_sample, d.temperature, d.top_p, d.top_k, d.eos_token_ids) == (True, 0.7, 0.9, 50, (2,))
    assert d.ignored == ("repetition_penalty=1.3",)
    with pytest.raises(ValueError, match="top_p must be"):
        GenerationDefaults.from_dict({"top_p": 2})


def test_seeded_sampling_is_reproducible_and_independent_of_neighbours(models):
    _, _, decoder, _ = models["llama"]
    params = SamplingParams(max_tokens=N, temperature=1.5, top_p=0.95, seed=1234)
    alone, _ = run(Engine(decoder, slots=1, context=64), {0: [("s", PROMPTS[0])]}, params)
    again, _ = run(Engine(decoder, slots=1, context=64), {0: [("s", PROMPTS[0])]}, params)
    engine = Engine(decoder, slots=4, context=64)
    engine.add("n1", PROMPTS[3], SamplingParams(max_tokens=N, temperature=1.0, seed=7))
    engine.add("n2", PROMPTS[1], SamplingParams(max_tokens=N))
    engine.step()
    crowded, _ = run(engine, {0: [("s", PROMPTS[0])]}, params)
    other, _ = run(Engine(decoder, slots=1, context=64), {0: [("s", PROMPTS[0])]},
                   SamplingParams(max_tokens=N, temperature=1.5, top_p=0.95, seed=4321))
    assert alone["s"] == again["s"] == crowded["s"]
    assert other["s"] != alone["s"]
    greedy, _ = run(Engine(decoder, slots=1, context=64), {0: [("g", PROMPTS[0])]},
                    SamplingParams(max_tokens=N, temperature=0, seed=99))
    assert greedy["g"] == models["llama"][3][0]


def test_bad_requests_are_refused_with_the_field_named(models):
    _, _, decoder, _ = models["llama"]
    engine = Engine(decoder, slots=1, context=64, queue_limit=1)
    for params, message in [(SamplingParams(max_tokens=0), "max_tokens"), (SamplingParams(temperature=-1), "temperature"),
                            (SamplingParams(top_p=0), "top_p"), (SamplingParams(seed=-3), "seed"),
                            (SamplingParams(max_tokens=True), "max_tokens"), (SamplingParams(stop_token_ids=[1, "x"]), "stop_token_ids")]:
        with pytest.raises(ValueError, match=message):
            engine.add(0, [1], params)
    with pytest.raises(ValueError, match=r"prompt token 128 is not a token id of this model \(0 to 127\)"):
        engine.add(0, [1, 128])
    with pytest.raises(ValueError, match="at least one token"):
        engine.add(0, [])
    engine.add("a", [1])
    with pytest.raises(ValueError, match="already running"):
        engine.add("a", [2])
    engine.step()
    engine.add("b", [1])
    with pytest.raises(QueueFull, match="1 requests running and 1 waiting"):
        engine.add("c", [1])
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.slots, stats.kv_tokens_used) == (1, 1, 1, 1)


def test_stop_text_holds_back_a_possible_stop_and_cuts_at_one():
    stop = StopText(["STOP", "\n\n"])
    assert stop.feed("Hel") == ("Hel", False)
    assert stop.feed("lo ST") == ("lo ", False)  # "ST" may begin STOP
    assert stop.feed("AR") == ("STAR", False)
    assert stop.feed("s S") == ("s ", False)
    assert stop.feed("TOP and more") == ("", True)
    tail = StopText(["END"])
    assert tail.feed("the E") == ("the ", False) and tail.flush() == "E"
