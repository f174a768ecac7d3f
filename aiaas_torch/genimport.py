"""Generation models: a Hugging Face causal-LM directory → a generation run directory (the HF files + a card).

The directory is untrusted. Its file names are checked against an allow-list before anything opens a file (pickled
weights, code, links and unknown files refused by name, textimport.check_directory); the allowed files are copied
into the staging directory and everything after reads the copies, so what was checked is what ships. config.json
and tokenizer_config.json are plain JSON (``auto_map`` / ``trust_remote_code`` refused); the weights are read by
the worker's own reader (handlers/decoder_weights.py: safetensors only, every tensor name and shape checked); the
chat template compiles only in the Jinja sandbox (handlers/chat_template.py). When ``transformers`` is installed, a
gate compares our decoder's greedy tokens with ``generate(do_sample=False)`` on three prompts and refuses a model
they disagree on; the card records the result (or that the gate was skipped).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from . import _quiet, rundir
from .atomic import staging_dir
from .card import SCHEMA_VERSION
from .errors import InputError
from .handlers import chat_template, decoder_weights
from .handlers.decoders import Decoder
from .handlers.generation import Engine, GenerationDefaults, SamplingParams
from .handlers.integrity import sha256_file
from .textimport import check_directory, json_object, package_version

ALLOWED = re.compile(r"config\.json|generation_config\.json|tokenizer\.json|tokenizer_config\.json|chat_template\.jinja|"
                     r"special_tokens_map\.json|added_tokens\.json|vocab\.json|merges\.txt|tokenizer\.model|"
                     r"model\.safetensors|model-[0-9]{5}-of-[0-9]{5}\.safetensors|model\.safetensors\.index\.json|"
                     r"README\.md|LICENSE(\.md|\.txt)?|\.gitattributes")  # fmt: skip
SHIPPED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
ROLES = {"config.json": "config", "generation_config.json": "config", "tokenizer_config.json": "config",
         "tokenizer.json": "tokenizer", "chat_template.jinja": "template"}
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
SLOTS, MAX_QUEUE = 16, 64
GATE_PROMPTS = ("The model card travels with the model", "serving starts TorchServe", "a short one")
GATE_TOKENS = 16
TIE_MARGIN = 1e-4  # a step whose reference top-1/top-2 margin is below this × max |logit| is a tie, not a disagreement
TEMPLATE_PROBE = [{"role": "user", "content": "Hello"}]
GATE_SKIPPED = "the greedy gate was skipped: transformers is not installed (pip install 'aiaas-torch[hf]' to run it)"


@dataclass
class GenerationImport:
    """What `import_generation` wrote: the run directory and its card."""

    run_dir: Path
    card: dict


def is_causal_lm_directory(directory: str | os.PathLike) -> bool:
    """Return True when DIR/config.json (a plain file) names a causal LM: an architecture ending in ForCausalLM or
    LMHeadModel, or, when it lists no architecture, a model_type our decoders run; the importer checks the rest."""
    path = Path(directory) / "config.json"
    if path.is_symlink() or not path.is_file():
        return False
    try:
        cfg = json_object(path)
    except InputError:
        return False
    archs = cfg.get("architectures")
    if isinstance(archs, list) and archs:
        return any(isinstance(a, str) and a.endswith(CAUSAL_SUFFIXES) for a in archs)
    return cfg.get("model_type") in decoder_weights.SUPPORTED


def refuse_remote_code(doc: dict, path: Path) -> None:
    """Raise InputError naming the file when a config asks for code from the directory (auto_map, trust_remote_code)."""
    for key in ("auto_map", "trust_remote_code"):
        if key in doc:
            raise InputError(f"{path}: {key!r} asks for remote code, which is never run; refused (use a model that "
                             f"transformers implements natively)")


def _special_token(value, where: str) -> str | None:
    """Return a tokenizer_config.json special token as the string a chat template sees (str or {content: str})."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str):
        raise InputError(f"{where}: expected a string or {{'content': string}}, got {str(value)[:60]!r}")
    return value


def template_text(staging: Path, names: list, tok_cfg: dict) -> str | None:
    """Return the chat template's text: chat_template.jinja, else tokenizer_config.json's "chat_template" (written out
    to chat_template.jinja); None when the model has none."""
    if "chat_template.jinja" in names:
        try:
            return (staging / "chat_template.jinja").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"chat_template.jinja: not readable UTF-8 text ({str(e)[:200]})") from None
    text = tok_cfg.get("chat_template")
    if text is None:
        return None
    if isinstance(text, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in text if isinstance(t, dict)}
        text = named.get("default")
        if text is None:
            raise InputError(f"tokenizer_config.json: 'chat_template' lists templates {sorted(map(str, named))[:5]} "
                             f"but none named 'default'")
    if not isinstance(text, str):
        raise InputError("tokenizer_config.json: 'chat_template' must be text")
    (staging / "chat_template.jinja").write_text(text, encoding="utf-8")
    return text


def check_template(text: str, bos: str | None, eos: str | None) -> None:
    """Raise InputError when the chat template does not compile in the sandbox or fails on a one-message chat."""
    try:
        chat_template.render(chat_template.compile_template(text), TEMPLATE_PROBE, bos_token=bos or "", eos_token=eos or "")
    except chat_template.TemplateError as e:
        raise InputError(f"chat template: {e}") from None


def context_length(spec, tok_cfg: dict) -> int:
    """Return the most tokens (prompt and output) a sequence holds: the model's positions, or the tokenizer's
    model_max_length when that is smaller."""
    tok_max = tok_cfg.get("model_max_length")
    if isinstance(tok_max, int) and not isinstance(tok_max, bool) and 2 <= tok_max < spec.max_positions:
        return tok_max
    return spec.max_positions


def gate_prompts(tokenizer, context: int) -> list[list[int]]:
    """Return the gate's three prompts as token ids (each at least one token, short enough for 16 new tokens)."""
    room = max(1, context - GATE_TOKENS - 1)
    prompts = []
    for text in GATE_PROMPTS:
        ids = tokenizer.encode(text).ids[:room]
        prompts.append(ids or [0])
    return prompts


def greedy_ours(decoder: Decoder, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Return our engine's greedy tokens after each prompt (no stop token: `new_tokens` each)."""
    context = max(len(p) for p in prompts) + new_tokens + 1
    engine = Engine(decoder, slots=len(prompts), context=context)
    for i, p in enumerate(prompts):
        engine.add(i, p, SamplingParams(max_tokens=new_tokens, temperature=0, stop_token_ids=()))
    out = {i: [] for i in range(len(prompts))}
    while engine.running or engine.waiting:
        for rid, step in engine.step().items():
            out[rid] += step.tokens
    return [out[i] for i in range(len(prompts))]


def greedy_reference(model, prompts: list[list[int]], new_tokens: int, eos: tuple) -> list[tuple[list[int], list[float]]]:
    """Return, per prompt, transformers' greedy tokens and each step's tie threshold (top-1/top-2 margin ÷ max |logit|)."""
    import torch
    import transformers

    config = transformers.GenerationConfig(do_sample=False, max_new_tokens=new_tokens, repetition_penalty=1.0,
                                           eos_token_id=list(eos) or None, pad_token_id=eos[0] if eos else 0)
    results = []
    for p in prompts:
        with torch.no_grad():
            out = model.generate(torch.tensor([p]), generation_config=config, output_logits=True,
                                 return_dict_in_generate=True, attention_mask=torch.ones(1, len(p), dtype=torch.long))
        ties = []
        for step in out.logits:
            top = step[0].float().topk(2).values
            ties.append(float(top[0] - top[1]) / max(float(step[0].abs().max()), 1e-30))
        results.append((out.sequences[0, len(p):].tolist(), ties))
    return results


def greedy_gate(staging: Path, cfg: dict, decoder: Decoder, tokenizer, context: int, eos: tuple) -> dict:
    """Return the gate's record after comparing our greedy tokens with transformers' generate; InputError on a
    disagreement (at a step whose reference margin is no tie)."""
    if importlib.util.find_spec("transformers") is None:
        return {"skipped": GATE_SKIPPED}
    from .textimport import build_model

    prompts = gate_prompts(tokenizer, context)
    ours = greedy_ours(decoder, prompts, GATE_TOKENS)
    reference = greedy_reference(build_model(staging, cfg, "causal-lm"), prompts, GATE_TOKENS, eos)
    compared, ties = 0, []
    for i, (mine, (ref, margins)) in enumerate(zip(ours, reference)):
        for step, want in enumerate(ref):
            got = mine[step] if step < len(mine) else None
            if got == want:
                compared += 1
                continue
            if margins[step] < TIE_MARGIN:
                ties.append({"prompt": i, "step": step + 1})
                break
            raise InputError(f"greedy gate: our decoder and transformers disagree on prompt {i + 1} "
                             f"({GATE_PROMPTS[i]!r}) at generated token {step + 1}: ours {got}, transformers {want} "
                             f"(prompt ids {prompts[i][:12]}); the weights or config do not mean what our "
                             f"{decoder.spec.model_type} decoder reads, refused")  # fmt: skip
    return {"prompts": len(prompts), "new_tokens": GATE_TOKENS, "tokens_compared": compared,
            "agree": True, "stopped_at_ties": ties, "reference": "transformers generate(do_sample=False), float32"}


def _file_entry(path: Path, role: str) -> dict:
    """Return a card "files" entry: role, SHA-256, size."""
    return {"role": role, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def import_generation(directory: str | os.PathLike, run_dir: str | os.PathLike) -> GenerationImport:
    """Write a generation run directory for a Hugging Face causal-LM directory; returns what it wrote."""
    _quiet.install()
    directory = Path(directory)
    names = check_directory(directory, ALLOWED)
    if "tokenizer.json" not in names:  # check_directory asks for it too; said here for causal LMs
        raise InputError(f"{directory / 'tokenizer.json'}: missing (the fast tokenizer file save_pretrained writes)")
    run_dir = Path(run_dir)
    with staging_dir(run_dir) as staging:
        shipped = [n for n in names if n in SHIPPED or n.endswith(".safetensors")]
        for n in shipped:
            shutil.copyfile(directory / n, staging / n)
        cfg = json_object(staging / "config.json")
        refuse_remote_code(cfg, directory / "config.json")
        tok_cfg = json_object(staging / "tokenizer_config.json") if "tokenizer_config.json" in names else {}
        refuse_remote_code(tok_cfg, directory / "tokenizer_config.json")
        if cfg.get("model_type") not in decoder_weights.SUPPORTED:
            raise InputError(f"{directory / 'config.json'}: model_type {str(cfg.get('model_type'))[:60]!r} is not a "
                             f"causal LM this importer runs; supported: {', '.join(decoder_weights.SUPPORTED)}")
        try:
            spec = decoder_weights.read_spec(cfg)
            tensors = decoder_weights.read_tensors(staging, spec)
        except decoder_weights.DecoderError as e:
            raise InputError(f"{directory}: {e}") from None
        parameters = int(sum(t.numel() for t in tensors.values()))
        decoder = Decoder(spec, tensors)
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(staging / "tokenizer.json"))
        except Exception as e:  # the tokenizers library raises its own exception type for a malformed file
            raise InputError(f"{directory / 'tokenizer.json'}: not a tokenizer the tokenizers library reads "
                             f"({str(e)[:200]})") from None
        vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        if vocab_size > spec.vocab:
            raise InputError(f"{directory / 'tokenizer.json'}: {vocab_size} tokens, more than the model's {spec.vocab} "
                             f"embeddings; the tokenizer does not belong to these weights")
        bos = _special_token(tok_cfg.get("bos_token"), f"{directory / 'tokenizer_config.json'}: 'bos_token'")
        eos = _special_token(tok_cfg.get("eos_token"), f"{directory / 'tokenizer_config.json'}: 'eos_token'")
        text = template_text(staging, names, tok_cfg)
        if text is not None:
            check_template(text, bos, eos)
        try:
            defaults = GenerationDefaults.from_directory(staging, fallback_eos=spec.eos_token_ids)
        except ValueError as e:
            raise InputError(f"{directory / 'generation_config.json'}: {str(e).split(': ', 1)[-1]}") from None
        context = context_length(spec, tok_cfg)
        gate = greedy_gate(staging, cfg, decoder, tokenizer, context, defaults.eos_token_ids)
        files = {n: _file_entry(staging / n, ROLES.get(n, "weights")) for n in sorted(os.listdir(staging))}
        template = {"file": "chat_template.jinja", "sha256": files["chat_template.jinja"]["sha256"]} if text is not None else None
        notes = [gate["skipped"]] if "skipped" in gate else []
        if defaults.ignored:
            notes.append(f"generation_config.json sets fields the server does not apply: {', '.join(defaults.ignored)}")
        card = {
            "schema_version": SCHEMA_VERSION,
            "created": rundir.now(),
            "input": {"kind": "prompt", "context": context,
                      "tokenizer": {"file": "tokenizer.json", "vocab_size": vocab_size, "sha256": files["tokenizer.json"]["sha256"]},
                      "chat_template": template, "bos_token": bos, "eos_token": eos},  # fmt: skip
            "output": {"kind": "tokens", "eos_token_ids": list(defaults.eos_token_ids)},
            "model": {"source": "huggingface", "architecture": (cfg.get("architectures") or [None])[0],
                      "model_type": spec.model_type, "parameters": parameters, "dtype": "float32", "layers": spec.layers,
                      "hidden_size": spec.hidden, "kv_heads": spec.kv_heads, "head_dim": spec.head_dim,
                      "vocab": spec.vocab},  # fmt: skip
            "generation": {"defaults": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(defaults).items() if k != "ignored"},
                           "ignored": list(defaults.ignored), "slots": SLOTS, "max_queue": MAX_QUEUE},  # fmt: skip
            "import": {"directory_files": names},
            "files": files,
            "versions": {**rundir.versions(), "tokenizers": package_version("tokenizers"),
                         "transformers": package_version("transformers")},
            "metrics": {"greedy_agreement": gate},
            "quantization": {"scheme": "none"},
            "notes": notes,
        }
        rundir.finish(staging, run_dir, card)
    return GenerationImport(run_dir, card)

