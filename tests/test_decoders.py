"""handlers/decoders.py and handlers/decoder_weights.py: our plain-PyTorch decoders against `transformers`.

Each architecture is a tiny random model saved with `save_pretrained`; the reference is the same directory loaded
by `transformers` (`generate(do_sample=False)` and its logits). Every reference step's top-1/top-2 margin is asserted
≥ 1e-3, so equal greedy tokens are a real check and not luck. Refusals name the file and the tensor or key.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from aiaas_torch.handlers.decoders import DecoderError, StepBatch, load_decoder
from aiaas_torch.handlers.decoder_weights import read_spec
from aiaas_torch.handlers.generation import Engine, GenerationDefaults, SamplingParams
from decoder_models import CONFIGS, PROMPTS, reference

N = 10


@pytest.fixture(scope="module")
def models(decoder_dirs):
    """Return {kind: (directory, transformers model)} for every architecture the tests cover (built once per session)."""
    return decoder_dirs


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_prefill_and_decode_logits_match_transformers(models, kind):
    directory, model = models[kind]
    prompt = PROMPTS[3]
    with torch.no_grad():
        ref = model(torch.tensor([prompt])).logits[0]
    dec = load_decoder(directory)
    cache = dec.new_cache(2, 32)
    first = dec.forward(cache, StepBatch.build([(1, 0, prompt[:6])]))[0]  # a prompt read in two parts
    rest = [dec.forward(cache, StepBatch.build([(1, 6 + i, [t])]))[0] for i, t in enumerate(prompt[6:])]
    assert torch.allclose(first, ref[5], atol=1e-4, rtol=0)
    assert torch.allclose(torch.stack(rest), ref[6:], atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_greedy_tokens_alone_equal_generate(models, kind):
    directory, model = models[kind]
    engine = Engine(load_decoder(directory), slots=1, context=64, defaults=GenerationDefaults.from_directory(directory))
    for i, prompt in enumerate(PROMPTS):
        want, margin = reference(model, prompt, N)
        assert margin >= 1e-3, f"reference margin {margin} too small for an exact comparison"
        engine.add(i, prompt, SamplingParams(max_tokens=N))
        got = []
        while engine.running or engine.waiting:
            got += engine.step()[i].tokens
        assert got == want


def test_sliding_window_matters_and_is_followed(models):
    """Mistral's window of 4 changes the answer on a long prompt: equal tokens prove the window mask is applied."""
    directory, model = models["mistral"]
    dec = load_decoder(directory)
    assert dec.spec.windows == (4, 4)
    prompt = PROMPTS[3]
    full = dec.forward(dec.new_cache(1, 32), StepBatch.build([(0, 0, prompt)]))[0]
    dec.spec = dec.spec.__class__(**{**dec.spec.__dict__, "windows": (None, None)})
    no_window = dec.forward(dec.new_cache(1, 32), StepBatch.build([(0, 0, prompt)]))[0]
    assert (full - no_window).abs().max() > 1e-2


def test_spec_reads_the_architecture_details(models):
    llama = load_decoder(models["llama"][0]).spec
    assert (llama.kv_heads, llama.heads, llama.rope_theta, llama.tied, llama.qkv_bias) == (2, 4, 50000.0, False, False)
    tied = load_decoder(models["llama_tied"][0])
    assert tied.spec.tied and tied.spec.o_bias and tied.top["head"] is tied.top["embed"]
    qwen = load_decoder(models["qwen2"][0]).spec
    assert qwen.qkv_bias and not qwen.o_bias
    gemma = load_decoder(models["gemma"][0]).spec
    assert (gemma.norm_offset, gemma.embed_scale, gemma.tied, gemma.activation, gemma.head_dim) == (1.0, 8.0, True, "gelu_tanh", 16)
    gpt2 = load_decoder(models["gpt2"][0]).spec
    assert (gpt2.norm, gpt2.positions, gpt2.activation, gpt2.tied) == ("layer", "learned", "gelu_tanh", True)


# ------------------------------------------------------------------------------------------------------ refusals


def _copy(src, dst, tensors=None, config=None):
    dst.mkdir()
    save_file(tensors if tensors is not None else load_file(src / "model.safetensors"), dst / "model.safetensors")
    cfg = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **(config or {})}))
    return dst


def test_pickled_weights_are_never_read(models, tmp_path):
    src = models["llama"][0]
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text((src / "config.json").read_text())
    torch.save(load_file(src / "model.safetensors"), d / "pytorch_model.bin")
    with pytest.raises(DecoderError, match=r"no \*\.safetensors.*pytorch_model\.bin"):
        load_decoder(d)


def test_a_pickle_named_safetensors_is_refused_by_name(models, tmp_path):
    d = _copy(models["llama"][0], tmp_path / "fake")
    torch.save({"x": torch.zeros(2)}, d / "model.safetensors")
    with pytest.raises(DecoderError, match="model.safetensors: not a readable safetensors file"):
        load_decoder(d)


def test_missing_extra_and_misshapen_tensors_are_named(models, tmp_path):
    src = models["qwen2"][0]
    tensors = load_file(src / "model.safetensors")
    missing = {k: v for k, v in tensors.items() if k != "model.layers.1.self_attn.k_proj.bias"}
    with pytest.raises(DecoderError, match=r"missing tensor\(s\) model\.layers\.1\.self_attn\.k_proj\.bias"):
        load_decoder(_copy(src, tmp_path / "missing", missing))
    extra = {**tensors, "model.layers.0.self_attn.rotary.inv_freq": torch.zeros(4)}
    with pytest.raises(DecoderError, match=r"model.safetensors: unexpected tensor 'model\.layers\.0\.self_attn\.rotary"):
        load_decoder(_copy(src, tmp_path / "extra", extra))
    bad = {**tensors, "model.layers.0.mlp.up_proj.weight": torch.zeros(95, 64)}
    with pytest.raises(DecoderError, match=r"'model\.layers\.0\.mlp\.up_proj\.weight' has shape \[95, 64\], the config implies \[96, 64\]"):
        load_decoder(_copy(src, tmp_path / "shape", bad))
    with pytest.raises(DecoderError, match=r"'vocab_size' must be"):
        load_decoder(_copy(src, tmp_path / "cfg", config={"vocab_size": "128"}))


@pytest.mark.parametrize("change, message", [
    ({"model_type": "bert"}, "model_type 'bert' is not supported"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}}, "only plain rotary positions"),
    ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads 3"),
    ({"hidden_act": "quick_gelu"}, "activation 'quick_gelu' is not supported"),
    ({"eos_token_id": "2"}, "eos_token_id must be a token id"),
])
def test_unsupported_configs_are_refused_by_key(models, tmp_path, change, message):
    d = _copy(models["llama"][0], tmp_path / "cfg", config=change)
    with pytest.raises(DecoderError, match=message):
        load_decoder(d)


def test_code_in_the_directory_never_runs(models, tmp_path):
    marker = tmp_path / "ran"
    d = _copy(models["llama"][0], tmp_path / "remote", config={"auto_map": {"AutoModelForCausalLM": "modeling_x.M"}})
    (d / "modeling_x.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    assert load_decoder(d).spec.model_type == "llama"
    assert not marker.exists()


def test_read_spec_refuses_what_is_not_an_object():
    with pytest.raises(DecoderError, match="expected a JSON object"):
        read_spec([1, 2])


def test_attention_groups_never_pad_and_any_slot_order_gives_the_same_logits(models):
    batch = StepBatch.build([(0, 4, [1]), (3, 7, [2]), (1, 0, [5, 6, 7]), (2, 9, [3])])
    assert [(g.width, g.start, g.end, g.first) for g in batch.groups] == [(1, 0, 2, None), (3, 2, 5, 1), (1, 5, 6, 2)]
    assert batch.last.tolist() == [0, 1, 4, 5]
    dec = load_decoder(models["llama"][0])
    prompts = [PROMPTS[0], PROMPTS[2], PROMPTS[3]]
    alone = []
    for p in prompts:
        cache = dec.new_cache(1, 32)
        dec.forward(cache, StepBatch.build([(0, 0, p[:-1])]))
        alone.append(dec.forward(cache, StepBatch.build([(0, len(p) - 1, p[-1:])]))[0])
    cache = dec.new_cache(4, 32)
    slots = [3, 0, 2]  # not consecutive: keys are gathered, not viewed
    dec.forward(cache, StepBatch.build([(s, 0, p[:-1]) for s, p in zip(slots, prompts)]))
    together = dec.forward(cache, StepBatch.build([(s, len(p) - 1, p[-1:]) for s, p in zip(slots, prompts)]))
    assert torch.allclose(together, torch.stack(alone), atol=1e-5, rtol=0)
