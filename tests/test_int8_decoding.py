"""int8-weight decoders (handlers/decoders.py with handlers/int8_matmul.py) and the generation gate (aiaas_torch/gengate.py).

The references are written here: the test rounds every checkpoint matrix itself (scale = max|row| / 127) into a
float decoder of the dequantized weights, so the int8 decoder's answers are checked against what its weights stand
for; the logit bounds are derived from the test's own rounding and from bf16's 8-bit mantissa. Tiny random models
come from tests/decoder_models.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from aiaas_torch import gengate
from aiaas_torch.errors import InputError
from aiaas_torch.handlers.decoder_weights import read_config, read_spec
from aiaas_torch.handlers.decoders import Decoder, DecoderError, MATRICES, load_decoder
from aiaas_torch.handlers.int8_matmul import Int8WeightLinear, best_path
from decoder_models import PROMPTS, build

KINDS = ("llama", "llama_tied", "gemma", "gpt2")
FAST = best_path() == "int8pack-bf16"
BF16_UNIT = 2.0 ** -8  # bf16 keeps 8 significant bits: a rounding moves a value by at most half of this, relative


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Return {kind: (spec, checkpoint tensors)} of tiny random models."""
    out = {}
    for kind in (*KINDS, "qwen2"):
        directory, _ = build(kind, tmp_path_factory.mktemp(kind))
        out[kind] = (read_spec(read_config(directory)), load_file(str(directory / "model.safetensors")))
    return out


def own_rounding(tensors: dict, spec) -> tuple[dict, float]:
    """Return (the checkpoint with every matrix the int8 decoder quantizes replaced by round(w / s) · s, the largest
    relative RMS rounding error of one matrix), rounding rows as the canonical [out, in] layout holds them."""
    out, worst = dict(tensors), 0.0
    for name, w in tensors.items():
        untied_embedding = name.endswith(("embed_tokens.weight", "wte.weight")) and not spec.tied
        if w.dim() != 2 or untied_embedding or name.endswith("wpe.weight"):
            continue
        rows = w.t() if spec.model_type == "gpt2" and ".h." in name else w  # GPT-2's Conv1D stores [in, out]
        s = rows.abs().amax(1, keepdim=True) / 127
        r = torch.round(rows / s) * s
        worst = max(worst, float((r - rows).pow(2).mean().sqrt() / rows.pow(2).mean().sqrt()))
        out[name] = (r.t() if rows is not w else r).contiguous()
    return out, worst


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


SEQ = PROMPTS[3] + PROMPTS[0] + [1, 2, 3, 4, 5, 6]


def test_bad_weight_forms_are_refused_by_name(models, tmp_path):
    spec, tensors = models["llama"]
    with pytest.raises(ValueError, match="'int4'.*float.*int8-weight"):
        Decoder(spec, tensors, weights="int4")
    with pytest.raises(DecoderError, match="'fp8'"):
        load_decoder(tmp_path, weights="fp8")
    dec = Decoder(spec, tensors, weights="int8-weight")
    with pytest.raises(ValueError, match="already int8-weight"):
        dec.quantize_weights()


@pytest.mark.parametrize("kind", KINDS)
def test_int8_decoder_is_the_float_decoder_of_its_rounded_weights(models, kind):
    spec, tensors = models[kind]
    rounded, worst = own_rounding(tensors, spec)
    assert worst > 1e-3  # the rounding is real, so agreement below is not float against float
    ref = Decoder(spec, rounded).score(SEQ)
    slow = Decoder(spec, tensors, weights="int8-weight", path="dequantize")
    assert all(isinstance(layer[w], Int8WeightLinear) for layer in slow.layers for w, _ in MATRICES)
    assert isinstance(slow.top["head"], Int8WeightLinear)
    assert (slow.top["embed"] is slow.top["head"]) == spec.tied  # tied: embedding rows from the int8 head
    assert rel(slow.score(SEQ), ref) < 1e-5  # float32 summation order only
    if FAST:
        # bf16 rounds each Linear's input, scale and output: ≤ 3 half-units per Linear, over the 4 per layer + head
        bound = 3 * (BF16_UNIT / 2) * (4 * spec.layers + 1)
        err = rel(Decoder(spec, tensors, weights="int8-weight").score(SEQ), ref)
        assert 0 < err < bound, (err, bound)


@pytest.mark.parametrize("kind", KINDS)
def test_int8_logits_are_within_the_bound_of_their_rounding(models, kind):
    spec, tensors = models[kind]
    _, worst = own_rounding(tensors, spec)
    ref = Decoder(spec, tensors).score(SEQ)
    got = Decoder(spec, tensors, weights="int8-weight").score(SEQ)
    # first order: each of the 4·layers + 1 matrices on the path adds at most its relative rounding error (the
    # norms renormalize, ×2 for their gain on a perturbed input), plus bf16's share (above)
    n = 4 * spec.layers + 1
    bound = 2 * n * worst + 3 * (BF16_UNIT / 2) * n
    err = rel(got, ref)
    assert 0 < err < bound, (err, bound)


def test_int8_matrices_hold_a_quarter_of_float_bytes(models):
    spec, tensors = models["llama_tied"]
    f, q = Decoder(spec, tensors), Decoder(spec, tensors, weights="int8-weight")
    float_bytes = sum(layer[w].numel() * 4 for layer in f.layers for w, _ in MATRICES) + f.top["head"].numel() * 4
    int8 = [layer[w] for layer in q.layers for w, _ in MATRICES] + [q.top["head"]]
    assert sum(m.weight_q.numel() * m.weight_q.element_size() for m in int8) == float_bytes // 4  # widths are 16k
    assert q.weight_bytes < 0.35 * f.weight_bytes  # with scales, biases and norms (tiny widths: they weigh more)


def test_greedy_tokens_agree_where_the_float_margin_exceeds_the_error(models):
    for kind in ("llama", "qwen2"):
        spec, tensors = models[kind]
        f, q = Decoder(spec, tensors), Decoder(spec, tensors, weights="int8-weight")
        # the largest logit error, measured on a calibration sequence the checked sequences do not contain
        calib = [(7 * i + 3) % spec.vocab for i in range(40)]
        err = float((f.score(calib) - q.score(calib)).abs().max())
        checked = healthy = 0
        for prompt in PROMPTS:
            gen = gengate.greedy(f, [prompt], 24)[0]
            seq = prompt + gen
            lf, lq = f.score(seq[:-1])[len(prompt) - 1:], q.score(seq[:-1])[len(prompt) - 1:]
            top2 = lf.topk(2).values
            sure = (top2[:, 0] - top2[:, 1]) > 2 * err  # where float's choice cannot flip by that error
            assert torch.equal(lf.argmax(-1), torch.tensor(gen))
            assert torch.equal(lq.argmax(-1)[sure], lf.argmax(-1)[sure]), kind
            checked, healthy = checked + len(gen), healthy + int(sure.sum())
        assert healthy >= checked // 4, (kind, healthy, checked)  # enough healthy positions for the check to bite


def test_a_sequence_gets_the_same_tokens_alone_and_in_a_batch_of_five(models):
    spec, tensors = models["llama"]
    q = Decoder(spec, tensors, weights="int8-weight")
    target = PROMPTS[0]
    others = [PROMPTS[1], PROMPTS[2], PROMPTS[3], [9, 8, 7, 6, 5, 4, 3, 2, 1]]
    alone = gengate.greedy(q, [target], 16)[0]
    for where in (0, 4):
        batch = others[:where] + [target] + others[where:]
        got = gengate.greedy(q, batch, 16)
        assert got[where] == alone, where
        assert len({tuple(t) for t in got}) == 5  # the others really are different sequences, decoded beside it


def test_pow2_scales_are_exact_for_power_of_two_weights(models):
    spec, tensors = models["llama"]
    g = torch.Generator().manual_seed(3)
    pow2 = {}
    for name, w in tensors.items():  # every value ±2^k, k from -6 to 0, per row: int8 holds them exactly
        k = torch.randint(-6, 1, w.shape, generator=g).float()
        sign = torch.where(torch.rand(w.shape, generator=g) < 0.5, -1.0, 1.0)
        pow2[name] = sign * torch.exp2(k) if w.dim() == 2 else w
    f = Decoder(spec, pow2).score(SEQ)
    q = Decoder(spec, pow2, weights="int8-weight", scheme="pow2", path="dequantize")
    assert torch.equal(q.score(SEQ), f)
    channel = Decoder(spec, pow2, weights="int8-weight", scheme="channel", path="dequantize").score(SEQ)
    assert not torch.equal(channel, f)  # max|row| / 127 is no power of two: the channel scheme rounds them


def test_gate_refuses_bad_prompts_by_name(models):
    spec, tensors = models["llama"]
    f = Decoder(spec, tensors)
    with pytest.raises(InputError, match=r"prompts\[1\]: 128 is not a token id"):
        gengate.generation_gate(f, f, [[1, 2], [128]])
    with pytest.raises(InputError, match="prompts: expected a non-empty list"):
        gengate.generation_gate(f, f, [])
    with pytest.raises(InputError, match=r"heldout\[0\]: expected a list of at least 2"):
        gengate.generation_gate(f, f, [[1]], heldout=[3])
    with pytest.raises(InputError, match="new_tokens"):
        gengate.generation_gate(f, f, [[1]], new_tokens=0)
    with pytest.raises(InputError, match="context of 256 tokens"):
        gengate.generation_gate(f, f, [[1] * 200], new_tokens=100)
    other_spec, other = models["gemma"]
    with pytest.raises(InputError, match="not the same model"):
        gengate.generation_gate(f, Decoder(other_spec, other), [[1]])


def test_gate_refuses_a_broken_quantization_and_accepts_the_real_one(models):
    spec, tensors = models["llama"]
    f = Decoder(spec, tensors)
    real = Decoder(spec, tensors, weights="int8-weight")
    broken = Decoder(spec, tensors, weights="int8-weight")
    for layer in broken.layers:
        for w, _ in MATRICES:
            layer[w].scale.mul_(3)
    # random tiny models have near-flat logits (top-1/top-2 margins of a few hundredths), the hardest case for any
    # rounding: the real quantization agrees on ≈ 0.93 of positions there, the broken one on < 0.5
    ok = gengate.generation_gate(f, real, new_tokens=32, min_agreement=0.85)
    bad = gengate.generation_gate(f, broken, new_tokens=32, min_agreement=0.85)
    assert ok.builtin and ok.prompts == 8 and ok.positions == 8 * 32
    assert ok.passed and ok.agreement >= 0.85, ok.summary()
    assert not bad.passed and bad.agreement < 0.5, bad.summary()
    assert abs(bad.loglik_change) > abs(ok.loglik_change)
    assert "FAILED" in bad.summary() and "0.85" in bad.summary()
    same = gengate.generation_gate(f, f, new_tokens=4, max_loglik_drop=-1.0)  # a log-likelihood rise no model makes
    assert same.agreement == 1.0 and same.loglik_change == 0.0 and not same.passed
    assert math.isfinite(ok.loglik_float) and ok.loglik_float < 0


# ---- aiaas import DIR --quantize int8-weight: the gate at import, the card, the archive and the handler (issue 28) ----

GATE_TOKENS = 8  # new tokens per gate prompt in these tests (the import's default stays 128)


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    """Return a tiny random Llama's Hugging Face directory (word-level tokenizer, chat template)."""
    from decoder_models import hf_directory

    return hf_directory("llama", tmp_path_factory.mktemp("hf-llama"))[0]


@pytest.fixture(scope="module")
def int8_run(hf_llama, tmp_path_factory):
    """Return (run directory, prompts file) of the tiny Llama imported int8-weight, gated on a 3-prompt file."""
    from aiaas_torch.genimport import import_generation

    root = tmp_path_factory.mktemp("int8-run")
    prompts = root / "prompts.txt"
    prompts.write_text("the model card travels with the model\n\n   \nserving starts TorchServe\r\na short one\n",
                       encoding="utf-8")
    done = import_generation(hf_llama, root / "run", quantize="int8-weight", calibration=prompts, gate=0.5,
                             new_tokens=GATE_TOKENS)
    return done.run_dir, prompts


@pytest.mark.parametrize("content, words", [
    (b"\x00\x01\x02prompt\n", "binary data"),
    (b"caf\xe9 au lait\n", "not UTF-8"),
    (b"\n   \n\r\n", "no prompts"),
    (b"a" * ((1 << 20) + 1), "at most 1,048,576"),
    (b"p\n" * 1001, "at most 1,000"),
])
def test_hostile_prompts_files_exit_2_naming_the_file(hf_llama, tmp_path, capsys, content, words):
    from aiaas_torch.cli import main

    bad = tmp_path / "bad-prompts.txt"
    bad.write_bytes(content)
    assert main(["import", str(hf_llama), "--out", str(tmp_path / "run"), "--quantize", "int8-weight",
                 "--calibration", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad-prompts.txt" in err and words in err
    assert not (tmp_path / "run").exists()


def test_schemes_a_causal_lm_does_not_take_are_refused_by_name(hf_llama, tmp_path, capsys):
    from aiaas_torch.cli import main
    from aiaas_torch.genimport import import_generation

    for scheme in ("int8", "pow2"):
        assert main(["import", str(hf_llama), "--out", str(tmp_path / "run"), "--quantize", scheme]) == 2
        err = capsys.readouterr().err
        assert f"--quantize {scheme} is for programs" in err and "int8-weight" in err
    (tmp_path / "p.txt").write_text("hello\n")
    assert main(["import", str(hf_llama), "--out", str(tmp_path / "run"), "--calibration", str(tmp_path / "p.txt"),
                 "--quantize", "none"]) == 2
    assert "go with --quantize int8-weight" in capsys.readouterr().err
    with pytest.raises(InputError, match="'int8' is not a scheme for a causal language model"):
        import_generation(hf_llama, tmp_path / "run", quantize="int8")
    assert not (tmp_path / "run").exists()


def test_a_gate_no_model_reaches_refuses_naming_the_figures(hf_llama, tmp_path, capsys):
    from aiaas_torch.cli import main

    assert main(["import", str(hf_llama), "--out", str(tmp_path / "run"), "--quantize", "int8-weight", "--gate", "1.01"]) == 2
    err = capsys.readouterr().err
    assert "quantization gate failed" in err and "greedy-token agreement" in err and "needs ≥ 1.01" in err
    assert "log-likelihood" in err and "--gate F" in err and "--force" in err and "[built-in prompts]" in err
    assert not (tmp_path / "run").exists()


def test_force_imports_a_failed_gate_and_the_card_says_so(hf_llama, tmp_path):
    from aiaas_torch.card import read_card
    from aiaas_torch.genimport import import_generation

    import_generation(hf_llama, tmp_path / "run", quantize="int8-weight", gate=1.01, force=True, new_tokens=GATE_TOKENS)
    gate = read_card(tmp_path / "run")["quantization"]["gate"]
    assert gate["forced"] is True and gate["passed"] is False and gate["min_agreement"] == 1.01
    assert gate["builtin"] is True and gate["prompts_source"].startswith("built-in")
    assert gate["prompts"] == 8 and gate["new_tokens"] == GATE_TOKENS and gate["positions"] == 8 * GATE_TOKENS
    assert 0.0 <= gate["agreement"] <= 1.0


def test_int8_card_records_the_gate_on_the_prompts_file_and_the_weight_bytes(int8_run, hf_llama):
    from aiaas_torch.card import read_card

    run, prompts = int8_run
    quant = read_card(run)["quantization"]
    gate = quant["gate"]
    assert quant["scheme"] == "int8-weight" and gate["prompts"] == 3 and gate["builtin"] is False  # 2 empty lines skipped
    assert gate["prompts_source"] == "prompts.txt (3 prompts)" and gate["new_tokens"] == GATE_TOKENS
    assert gate["positions"] == 3 * GATE_TOKENS and gate["passed"] == (gate["agreement"] >= 0.5) and gate["forced"] is False
    assert gate["heldout_tokens"] >= 3 and gate["loglik_float"] < 0 and gate["loglik_int8"] < 0
    assert gate["loglik_change"] == pytest.approx(gate["loglik_int8"] - gate["loglik_float"])
    floats = sum(t.numel() * 4 for t in load_file(str(hf_llama / "model.safetensors")).values())  # untied: every tensor
    b = quant["weight_bytes"]
    assert b["float"] == floats and b["int8"] < 0.5 * floats and b["ratio"] == pytest.approx(b["int8"] / floats, abs=1e-4)


def test_archive_ships_the_int8_kernel_and_the_handler_serves_int8_tokens(int8_run, tmp_path):
    import json
    import zipfile

    from tokenizers import Tokenizer
    from ts.context import Context

    from aiaas_torch.archive import package
    from aiaas_torch.handlers.generation_handler import GenerationHandler
    from test_openai_api import COMPLETIONS, Frontend, body_of

    run, _ = int8_run
    mar = package(run, "tiny8", "1.0", tmp_path / "store").path
    with zipfile.ZipFile(mar) as zf:
        names = set(zf.namelist())
        assert {"int8_matmul.py", "decoders.py", "generation_handler.py"} <= names
        zf.extractall(tmp_path / "served")
    handler = GenerationHandler()
    handler.initialize(Context("tiny8", str(tmp_path / "served"), {"model": {"modelVersion": "1.0"}}, 1, None, "0.12.0"))
    assert handler.engine.decoder.weights == "int8-weight"
    tok = Tokenizer.from_file(str(run / "tokenizer.json"))
    prompt = "serving starts TorchServe from a home directory"
    fe = Frontend(handler)
    rid = fe.submit(COMPLETIONS, {"model": "tiny8", "prompt": prompt, "max_tokens": GATE_TOKENS, "temperature": 0})
    answer = body_of(fe.run()[rid])
    direct = gengate.greedy(load_decoder(run, weights="int8-weight"), [tok.encode(prompt).ids], GATE_TOKENS)[0]
    n = answer["usage"]["completion_tokens"]
    assert n >= 1 and (n == GATE_TOKENS or direct[n - 1] in json.loads((run / "model.json").read_text())["output"]["eos_token_ids"])
    assert answer["choices"][0]["text"] == tok.decode(direct[:n], skip_special_tokens=True)


def test_the_handler_refuses_a_card_naming_an_unknown_scheme(int8_run, tmp_path):
    import json
    import shutil

    from ts.context import Context

    from aiaas_torch.handlers.generation_handler import GenerationHandler

    run = tmp_path / "run"
    shutil.copytree(int8_run[0], run)
    card = json.loads((run / "model.json").read_text())
    card["quantization"]["scheme"] = "int4"
    (run / "model.json").write_text(json.dumps(card))
    with pytest.raises(RuntimeError, match="quantization scheme 'int4' is not one this server loads"):
        GenerationHandler().initialize(Context("tiny8", str(run), {"model": {"modelVersion": "1.0"}}, 1, None, "0.12.0"))


def test_an_int8_card_without_its_gate_record_is_refused(int8_run, tmp_path):
    import json
    import shutil

    from aiaas_torch.card import read_card

    run = tmp_path / "run"
    shutil.copytree(int8_run[0], run)
    card = json.loads((run / "model.json").read_text())
    del card["quantization"]["gate"]
    (run / "model.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match="'quantization' of an int8-weight card must hold 'gate'"):
        read_card(run)
