"""`aiaas import DIR` of Hugging Face causal LMs (aiaas_torch/genimport.py) and sandboxed chat templates
(handlers/chat_template.py).

Hostile directories first: pickles, code, remote-code configs, unknown files, links, bad config values, a tensor of
the wrong shape, hostile chat templates — each refused by name before anything runs. Then the card of three
architectures checked against values this test computes from `transformers`' own model and `hashlib`, the chat
template against `apply_chat_template`, and the greedy gate refusing a decoder that reads the weights wrongly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import decoder_models as dm
from aiaas_torch import genimport
from aiaas_torch.card import check_card, is_generation, read_card
from aiaas_torch.cli import main
from aiaas_torch.errors import InputError
from aiaas_torch.genimport import import_generation
from aiaas_torch.handlers import chat_template as ct
from aiaas_torch.handlers.decoders import load_decoder

KINDS = ("llama", "qwen2", "gpt2")


@pytest.fixture(scope="module")
def hf_dirs(decoder_dirs):
    """Return {kind: (directory, transformers model)} of tiny causal LMs with a tokenizer and a Llama-style template
    (built once per session)."""
    return decoder_dirs


@pytest.fixture(scope="module")
def runs(hf_dirs, tmp_path_factory):
    """Return {kind: GenerationImport} of each tiny model imported once."""
    root = tmp_path_factory.mktemp("runs")
    return {k: import_generation(hf_dirs[k][0], root / k) for k in KINDS}


@pytest.fixture
def llama_copy(hf_dirs, tmp_path):
    """Return a fresh copy of the tiny Llama directory that a test may spoil."""
    return shutil.copytree(hf_dirs["llama"][0], tmp_path / "llama")


def _edit_json(path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


# ---- hostile directories: refused by name, before transformers or our decoder opens the weights ----

@pytest.mark.parametrize("name, says", [("pytorch_model.bin", "pickled weights"), ("model.pt", "pickled weights"),
                                        ("extra.ckpt", "pickled weights"), ("modeling_llama.py", "Python code"),
                                        ("notes.txt", "not a file of a Hugging Face model directory"),
                                        ("sub/config.json", "not a file of a Hugging Face model directory")])
def test_files_outside_the_allow_list_are_refused_by_name(llama_copy, tmp_path, name, says):
    (llama_copy / name).parent.mkdir(exist_ok=True)
    (llama_copy / name).write_bytes(b"\x80\x04 not read")
    with pytest.raises(InputError, match=says) as e:
        import_generation(llama_copy, tmp_path / "run")
    assert name.split("/")[0] in str(e.value)
    assert not (tmp_path / "run").exists()


def test_a_symbolic_link_is_refused(llama_copy, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (llama_copy / "generation_config.json").unlink()
    os.symlink(outside, llama_copy / "generation_config.json")
    with pytest.raises(InputError, match="symbolic link"):
        import_generation(llama_copy, tmp_path / "run")


@pytest.mark.parametrize("file, key", [("config.json", "auto_map"), ("tokenizer_config.json", "auto_map"),
                                       ("config.json", "trust_remote_code")])
def test_remote_code_in_a_config_is_refused(llama_copy, tmp_path, file, key):
    _edit_json(llama_copy / file, lambda d: d.__setitem__(key, {"AutoModelForCausalLM": "modeling.Evil"}))
    with pytest.raises(InputError, match=f"{file}: '{key}' asks for remote code"):
        import_generation(llama_copy, tmp_path / "run")


@pytest.mark.parametrize("change, says", [
    (lambda d: d.__setitem__("num_key_value_heads", 3), "not a multiple of num_key_value_heads"),
    (lambda d: d.__setitem__("vocab_size", -5), "'vocab_size' must be a int ≥ 1"),
    (lambda d: d.__setitem__("hidden_act", "os.system"), "activation 'os.system' is not supported"),
    (lambda d: d.__setitem__("rope_scaling", {"rope_type": "yarn", "factor": 4.0}), "only plain rotary positions"),
    (lambda d: d.update(model_type="phi", architectures=["PhiForCausalLM"]), "'phi' is not a causal LM this importer runs; supported: llama"),
    (lambda d: d.__setitem__("num_hidden_layers", 10 ** 9), "'num_hidden_layers' is 1000000000; at most 1024"),
    (lambda d: d.__setitem__("max_position_embeddings", 10 ** 12), "'max_position_embeddings' is 1000000000000; at most 2097152"),
])
def test_bad_config_values_are_refused_naming_the_key(llama_copy, tmp_path, change, says):
    _edit_json(llama_copy / "config.json", change)
    with pytest.raises(InputError, match=says):
        import_generation(llama_copy, tmp_path / "run")


def test_a_phi_directory_goes_to_the_generation_importer_and_is_refused_by_name(llama_copy, tmp_path, capsys):
    _edit_json(llama_copy / "config.json", lambda d: d.update(model_type="phi", architectures=["PhiForCausalLM"]))
    assert genimport.is_causal_lm_directory(llama_copy)
    assert main(["import", str(llama_copy), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "'phi'" in err and "gpt2" in err


def test_a_tensor_of_the_wrong_shape_is_refused_naming_it(llama_copy, tmp_path):
    weights = load_file(llama_copy / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"] = torch.zeros(95, 64)
    save_file(weights, llama_copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"'model.layers.1.mlp.up_proj.weight' has shape \[95, 64\], the config implies \[96, 64\]"):
        import_generation(llama_copy, tmp_path / "run")


def test_an_extra_tensor_is_refused_naming_it(llama_copy, tmp_path):
    weights = load_file(llama_copy / "model.safetensors")
    weights["model.layers.0.backdoor"] = torch.zeros(2)
    save_file(weights, llama_copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match="unexpected tensor 'model.layers.0.backdoor'"):
        import_generation(llama_copy, tmp_path / "run")


def test_a_tokenizer_larger_than_the_embedding_table_is_refused(llama_copy, tmp_path):
    dm.tokenizer(llama_copy, vocab=400)  # the model has 128 embeddings
    with pytest.raises(InputError, match="more than the model's 128 embeddings"):
        import_generation(llama_copy, tmp_path / "run")


def test_a_bad_generation_config_is_refused_naming_the_field(llama_copy, tmp_path):
    _edit_json(llama_copy / "generation_config.json", lambda d: d.__setitem__("top_p", 7))
    with pytest.raises(InputError, match="generation_config.json: top_p must be"):
        import_generation(llama_copy, tmp_path / "run")


HOSTILE_TEMPLATES = {
    "class": "{{ messages.__class__.__mro__[1].__subclasses__() }}",
    "subclasses": "{{ ''.__class__.__base__.__subclasses__()[0]('id') }}",
    "globals": "{{ raise_exception.__globals__['__builtins__']['__import__']('os').system('touch pwned') }}",
    "import": "{% import 'os' as os %}{{ os.system('id') }}",
    "mutation": "{% set x = messages.append({'role': 'user', 'content': 'x'}) %}{{ messages | length }}",
    "output loop": "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
    "string bomb": "{{ 'x' * 10000000000 }}",
    "range bomb": "{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(1000) %}{% endfor %}{% endfor %}{% endfor %}",
    "power": "{{ 10 ** 10000000 }}",
    "syntax": "{% for m in messages %}{{ m.content }",
}


@pytest.mark.parametrize("name", list(HOSTILE_TEMPLATES))
def test_hostile_chat_templates_raise_template_error_and_run_nothing(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    says = {"import": "cannot include, import or extend", "output loop": "output passed", "string bomb": "builds a sequence",
            "range bomb": "loop steps", "power": "power", "syntax": "not valid Jinja"}.get(name, "sandbox forbids")
    with pytest.raises(ct.TemplateError, match=says):
        ct.render(ct.compile_template(HOSTILE_TEMPLATES[name]), [{"role": "user", "content": "hi"}])
    assert os.listdir(tmp_path) == []  # nothing ran: the 'globals' template would have written ./pwned


def test_a_hostile_template_in_a_directory_is_refused_at_import(llama_copy, tmp_path):
    (llama_copy / "chat_template.jinja").write_text(HOSTILE_TEMPLATES["subclasses"])
    with pytest.raises(InputError, match="chat template: the chat template tried something the sandbox forbids"):
        import_generation(llama_copy, tmp_path / "run")


@pytest.mark.parametrize("messages, says", [
    ([], "non-empty list"), ([{"role": "user"}], r"messages\[0\] must be an object with a string 'role'"),
    ([{"role": "user", "content": 5}], "string 'content'"), (["hi"], r"messages\[0\]"),
    ([{"role": "user", "content": "a", "tool_calls": []}], "'tool_calls'")])
def test_messages_that_are_not_role_and_content_are_refused(messages, says):
    with pytest.raises(ct.TemplateError, match=says):
        ct.render(ct.compile_template(dm.LLAMA_TEMPLATE), messages)


def test_a_template_that_outputs_over_a_megabyte_is_cut_off():
    big = "{% for i in range(2000) %}" + "y" * 1000 + "{% endfor %}"  # 2 MB, each piece small
    with pytest.raises(ct.TemplateError, match="output passed"):
        ct.render(ct.compile_template(big), [{"role": "user", "content": "hi"}])
    ok = "{% for i in range(500) %}" + "y" * 1000 + "{% endfor %}"
    assert len(ct.render(ct.compile_template(ok), [{"role": "user", "content": "hi"}])) == 500_000


# ---- what an import writes ----

CHATML = ("{% for message in messages %}{% if message['role'] == 'assistant' %}{% generation %}{{ '<|im_start|>' + "
          "message['content'] + '<|im_end|>\n' }}{% endgeneration %}{% else %}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
          "{% set meta = {'n': messages | length, 'first': messages[0]['content']} %}{{ meta | tojson }}")
CHAT = [{"role": "system", "content": "Be brief. Ünïcode stays."}, {"role": "user", "content": "  What is a card?  "},
        {"role": "assistant", "content": "A file."}, {"role": "user", "content": "And a gate?"}]


@pytest.mark.parametrize("template", [dm.LLAMA_TEMPLATE, CHATML], ids=["llama", "chatml"])
def test_rendered_template_equals_transformers_apply_chat_template(template, tmp_path):
    from transformers import AutoTokenizer

    dm.tokenizer(tmp_path, chat_template=template)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    compiled = ct.compile_template(template)
    for add in (True, False):
        want = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=add)
        got = ct.render(compiled, CHAT, add_generation_prompt=add, bos_token="<s>", eos_token="</s>")
        assert got == want
    assert "[INST] What is a card? [/INST]" in ct.render(ct.compile_template(dm.LLAMA_TEMPLATE), CHAT)


@pytest.mark.parametrize("kind", KINDS)
def test_card_fields_equal_what_transformers_and_hashlib_say(hf_dirs, runs, kind):
    directory, model = hf_dirs[kind]
    run = runs[kind]
    card = read_card(run.run_dir)  # the card on disk passes the card checks
    assert is_generation(card)
    cfg = model.config
    assert card["model"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert card["model"]["architecture"] == type(model).__name__
    assert card["model"]["model_type"] == kind
    assert card["model"]["layers"] == cfg.num_hidden_layers
    assert card["model"]["hidden_size"] == cfg.hidden_size
    assert card["model"]["vocab"] == cfg.vocab_size
    assert card["model"]["head_dim"] == cfg.hidden_size // cfg.num_attention_heads
    assert card["model"]["kv_heads"] == getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    assert card["model"]["dtype"] == "float32"
    assert card["input"]["context"] == cfg.max_position_embeddings
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "generation_config.json"):
        want = hashlib.sha256((directory / name).read_bytes()).hexdigest()
        assert card["files"][name]["sha256"] == want
        assert (run.run_dir / name).read_bytes() == (directory / name).read_bytes()
    assert card["files"]["model.safetensors"]["role"] == "weights"
    assert card["files"]["tokenizer.json"]["role"] == "tokenizer"
    assert card["files"]["chat_template.jinja"]["role"] == "template"
    assert card["input"]["tokenizer"]["sha256"] == hashlib.sha256((directory / "tokenizer.json").read_bytes()).hexdigest()
    assert card["input"]["chat_template"]["sha256"] == hashlib.sha256(dm.LLAMA_TEMPLATE.encode()).hexdigest()
    assert card["input"]["tokenizer"]["vocab_size"] == 120
    assert (card["input"]["bos_token"], card["input"]["eos_token"]) == ("<s>", "</s>")
    assert card["output"] == {"kind": "tokens", "eos_token_ids": []}
    assert card["generation"]["slots"] == 16 and card["generation"]["ignored"] == []
    gate = card["metrics"]["greedy_agreement"]
    assert gate["agree"] is True and gate["tokens_compared"] == 3 * 16
    assert load_decoder(run.run_dir).spec.model_type == kind  # the worker's loader reads the run directory


def test_a_template_inside_tokenizer_config_is_written_out(llama_copy, tmp_path):
    (llama_copy / "chat_template.jinja").unlink()
    _edit_json(llama_copy / "tokenizer_config.json", lambda d: d.__setitem__("chat_template", CHATML))
    card = import_generation(llama_copy, tmp_path / "run").card
    assert (tmp_path / "run" / "chat_template.jinja").read_text() == CHATML
    assert card["input"]["chat_template"]["sha256"] == hashlib.sha256(CHATML.encode()).hexdigest()


def test_without_a_template_the_card_says_none_and_eos_comes_from_generation_config(llama_copy, tmp_path):
    (llama_copy / "chat_template.jinja").unlink()
    _edit_json(llama_copy / "generation_config.json", lambda d: d.update(eos_token_id=[2, 7], repetition_penalty=1.3))
    card = import_generation(llama_copy, tmp_path / "run").card
    assert card["input"]["chat_template"] is None and "chat_template.jinja" not in card["files"]
    assert card["output"]["eos_token_ids"] == [2, 7]
    assert card["generation"]["defaults"]["eos_token_ids"] == [2, 7]
    assert card["generation"]["ignored"] == ["repetition_penalty=1.3"]
    assert any("repetition_penalty" in n for n in card["notes"])


def _read_layers_swapped(monkeypatch) -> None:
    """Make the importer's weight reader hand our decoder layers 0 and 1 swapped (names and shapes all still match)."""
    real = genimport.decoder_weights.read_tensors
    swap = {"model.layers.0.": "model.layers.1.", "model.layers.1.": "model.layers.0."}
    monkeypatch.setattr(genimport.decoder_weights, "read_tensors", lambda d, spec: {
        next((swap[p] + k[len(p):] for p in swap if k.startswith(p)), k): v for k, v in real(d, spec).items()})


def test_the_gate_refuses_a_decoder_that_reads_the_layers_swapped(llama_copy, tmp_path, monkeypatch):
    """Swapping two layers in the file would fool both sides alike (transformers reads the same file), so the
    corruption is in what our decoder reads: shapes all match, only the greedy gate can tell."""
    _read_layers_swapped(monkeypatch)
    with pytest.raises(InputError, match=r"greedy gate: our decoder and transformers disagree on prompt 1 .* at generated token \d+"):
        import_generation(llama_copy, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_without_transformers_the_card_says_the_gate_was_skipped(llama_copy, tmp_path, monkeypatch):
    real = genimport.importlib.util.find_spec
    monkeypatch.setattr(genimport.importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    card = import_generation(llama_copy, tmp_path / "run").card
    assert "skipped" in card["metrics"]["greedy_agreement"]
    assert any("gate was skipped" in n for n in card["notes"])


def test_cli_prints_what_a_newcomer_needs(hf_dirs, tmp_path, capsys):
    assert main(["import", str(hf_dirs["gpt2"][0]), "--out", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    assert "deprecated" not in err, err  # transformers' warnings about how the gate calls generate are noise here
    params = sum(p.numel() for p in hf_dirs["gpt2"][1].parameters())
    assert "GPT2LMHeadModel" in out and f"{params:,} parameters" in out and "context 64 tokens" in out
    assert "chat template: yes" in out and "aiaas package" in out
    assert main(["import", str(hf_dirs["gpt2"][0]), "--out", str(tmp_path / "run2"), "--quantize", "int8"]) == 2


def test_card_checks_refuse_a_generation_card_whose_tokenizer_hash_differs(runs):
    card = json.loads(json.dumps(runs["llama"].card))
    check_card(card, "model.json")
    card["input"]["tokenizer"]["sha256"] = "0" * 64
    with pytest.raises(InputError, match="input.tokenizer"):
        check_card(card, "model.json")
    card = json.loads(json.dumps(runs["llama"].card))
    card["output"]["eos_token_ids"] = ["2"]
    with pytest.raises(InputError, match="eos_token_ids"):
        check_card(card, "model.json")


@pytest.mark.parametrize("config, causal", [({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, True),
                                            ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, True),
                                            ({"architectures": ["PhiForCausalLM"], "model_type": "phi"}, True),
                                            ({"model_type": "qwen2"}, True),
                                            ({"architectures": ["BertForSequenceClassification"], "model_type": "gpt2"}, False),
                                            ({"architectures": ["BertModel"], "model_type": "bert"}, False), ([1], False)])
def test_the_cli_sends_causal_lms_to_the_generation_importer(tmp_path, config, causal):
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert genimport.is_causal_lm_directory(tmp_path) is causal


MORE_HOSTILE = {
    "nested loops over a list": ("{% set l = range(1000) | list %}{% for a in l %}{% for b in l %}{% for c in l %}"
                                 "{% endfor %}{% endfor %}{% endfor %}"),
    "doubling with +": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "doubling with ~": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "a wide filter": "{{ 'x' | center(1000000000) }}",
    "a wide method": "{{ 'x'.ljust(1000000000) }}",
    "a wide format": "{{ '%1000000000d' % 1 }}",
    "a huge join": "{% set s = 'y' * 1000000 %}{{ [s, s, s, s] | join }}",
    "a method over a big string in a loop": "{% set s = 'a' * 1000000 %}{% for i in range(5000) %}{% set t = s.replace('a', 'b') %}{% endfor %}",
}


@pytest.mark.parametrize("name", list(MORE_HOSTILE))
def test_templates_that_would_take_minutes_or_gigabytes_are_stopped(name):
    with pytest.raises(ct.TemplateError, match="refused"):
        ct.render(ct.compile_template(MORE_HOSTILE[name]), [{"role": "user", "content": "hi"}])


def test_bounded_templates_still_loop_concatenate_and_format():
    text = ("{% for m in messages %}{{ loop.index ~ ':' ~ m['role'] | upper }}{% if not loop.last %}, {% endif %}{% endfor %}"
            "{% for i in range(3) %}{{ '%02d' % i }}{% endfor %}{{ ' end' + '!' }}")
    got = ct.render(ct.compile_template(text), [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    assert got == "1:USER, 2:ASSISTANT000102 end!"


def test_a_tokenizer_file_the_tokenizers_library_cannot_read_is_refused(llama_copy, tmp_path):
    (llama_copy / "tokenizer.json").write_text('{"model": {"type": "NotAModel"}}')
    with pytest.raises(InputError, match="tokenizer.json: not a tokenizer the tokenizers library reads"):
        import_generation(llama_copy, tmp_path / "run")


def test_a_disagreement_at_a_near_tie_ends_the_comparison_instead_of_refusing(llama_copy, tmp_path, monkeypatch):
    """With the tie threshold raised above every margin, the swapped-layer decoder's first differing token counts as a
    tie: the import passes and the card says where the comparison stopped (the refusal above proves they differ)."""
    _read_layers_swapped(monkeypatch)
    monkeypatch.setattr(genimport, "TIE_MARGIN", 2.0)
    gate = import_generation(llama_copy, tmp_path / "run").card["metrics"]["greedy_agreement"]
    assert gate["stopped_at_ties"] and all(t["step"] >= 1 for t in gate["stopped_at_ties"])
    assert gate["tokens_compared"] < 3 * 16


def test_a_loop_of_slow_comparisons_is_stopped_by_the_time_limit(monkeypatch):
    monkeypatch.setattr(ct, "MAX_SECONDS", 0.2)
    slow = "{% set s = 'a' * 1000000 %}{% for i in range(400000) %}{% if s == s[1:] %}{% endif %}{% endfor %}"
    with pytest.raises(ct.TemplateError, match="ran longer than 0.2 s"):
        ct.render(ct.compile_template(slow), [{"role": "user", "content": "hi"}])


def test_a_sharded_checkpoint_imports_with_every_shard_hashed(hf_dirs, tmp_path):
    directory, model = hf_dirs["llama"]
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(directory / name, sharded / name)
    shards = sorted(p.name for p in sharded.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (sharded / "model.safetensors.index.json").exists()
    card = import_generation(sharded, tmp_path / "run").card
    assert card["model"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert sorted(n for n, f in card["files"].items() if f["role"] == "weights") == shards
    for name in shards:
        assert card["files"][name]["sha256"] == hashlib.sha256((sharded / name).read_bytes()).hexdigest()

    index = sharded / "model.safetensors.index.json"
    _edit_json(index, lambda d: d["weight_map"].__setitem__("model.norm.weight", "../../elsewhere.safetensors"))
    with pytest.raises(InputError, match="weight_map.*'../../elsewhere.safetensors'"):
        import_generation(sharded, tmp_path / "run2")
