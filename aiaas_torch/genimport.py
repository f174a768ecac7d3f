"""Generation models: a Hugging Face causal-LM directory → a generation run directory (the HF files + a card).

The directory is untrusted. Its file names are checked against an allow-list before anything opens a file (pickled
weights, code, links and unknown files refused by name, textimport.check_directory); the allowed files are copied
into the staging directory and everything after reads the copies, so what was checked is what ships. config.json
and tokenizer_config.json are plain JSON (``auto_map`` / ``trust_remote_code`` refused); the weights are read by
the worker's own reader (handlers/decoder_weights.py: safetensors only, every tensor name and shape checked); the
chat template compiles only in the Jinja sandbox (handlers/chat_template.py). When ``transformers`` is installed, a
gate compares our decoder's greedy tokens with ``generate(do_sample=False)`` on three prompts and refuses a model
they disagree on; the card records the result (or that the gate was skipped).

``quantize="int8-weight"`` ships the same files and records in the card that the worker quantizes every matrix and
the head to int8 at load (handlers/decoders.py); the import first runs the generation gate (aiaas_torch/gengate.py:
float decoder against the int8 one, both loaded from the staged files) on the prompts of a calibration text file
(one per line, `read_prompt_lines`) or the gate's built-in set, and refuses a model that fails it unless forced.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from . import _quiet, gengate, rundir
from .atomic import staging_dir
from .card import SCHEMA_VERSION
from .errors import InputError
from .handlers import chat_template, decoder_weights
from .handlers.decoders import Decoder, load_decoder
from .handlers.generation import Engine, GenerationDefaults, SamplingParams
from .handlers.integrity import sha256_file
from .textimport import build_model, check_directory, json_object, package_version

ALLOWED = re.compile(r"config\.json|generation_config\.json|tokenizer\.json|tokenizer_config\.json|chat_template\.jinja|"
                     r"special_tokens_map\.json|added_tokens\.json|vocab\.json|merges\.txt|tokenizer\.model|"
                     r"model\.safetensors|model-[0-9]{5}-of-[0-9]{5}\.safetensors|model\.safetensors\.index\.json|"
                     r"README\.md|LICENSE(\.md|\.txt)?|\.gitattributes")  # fmt: skip
SHIPPED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
           "model.safetensors.index.json")
ROLES = {"config.json": "config", "generation_config.json": "config", "tokenizer_config.json": "config",
         "model.safetensors.index.json": "config",
         "tokenizer.json": "tokenizer", "chat_template.jinja": "template"}
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
SLOTS, MAX_QUEUE = 16, 64
GATE_PROMPTS = ("The model card travels with the model", "serving starts TorchServe", "a short one")
GATE_TOKENS = 16
MAX_LAYERS = 1024  # far above any released decoder; a config claiming more is refused before its tensor list is built
MAX_CONTEXT = 1 << 21
TIE_MARGIN = 1e-4  # a step whose reference top-1/top-2 margin is below this × max |logit| is a tie, not a disagreement
TEMPLATE_PROBE = [{"role": "user", "content": "Hello"}]
SCHEMES = ("none", "int8-weight")  # the card's quantization.scheme values a generation worker loads
PROMPTS_MAX_BYTES = 1 << 20  # a calibration prompts file: at most 1 MiB, 1,000 non-empty lines
PROMPTS_MAX_LINES = 1000
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


def check_shard_index(staging: Path, names: list) -> None:
    """Raise InputError unless model.safetensors.index.json (when present) maps tensors only to the directory's shards."""
    if "model.safetensors.index.json" not in names:
        return
    path = staging / "model.safetensors.index.json"
    weight_map = json_object(path).get("weight_map")
    shards = {n for n in names if n.endswith(".safetensors")}
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v in shards for v in weight_map.values()):
        bad = next((v for v in weight_map.values() if v not in shards), None) if isinstance(weight_map, dict) else None
        raise InputError(f"model.safetensors.index.json: 'weight_map' must map tensor names to this directory's "
                         f"*.safetensors files (it names {str(bad)[:80]!r})")


def architecture(cfg: dict) -> str | None:
    """Return the class name config.json's "architectures" lists first, or None."""
    archs = cfg.get("architectures")
    return archs[0][:200] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None


def check_sizes(cfg: dict, path: Path) -> None:
    """Raise InputError naming the key when config.json claims more layers or positions than any real decoder (the
    spec reader builds per-layer tables, so a claim of 10^9 layers would exhaust memory before a tensor is read)."""
    for key, limit in (("num_hidden_layers", MAX_LAYERS), ("n_layer", MAX_LAYERS), ("max_position_embeddings", MAX_CONTEXT),
                       ("n_positions", MAX_CONTEXT)):
        v = cfg.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > limit:
            raise InputError(f"{path}: {key!r} is {v}; at most {limit} are read")


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
                                           eos_token_id=list(eos) or None, pad_token_id=eos[0] if eos else 0,
                                           output_logits=True, return_dict_in_generate=True)
    results = []
    for p in prompts:
        with torch.no_grad():
            out = model.generate(torch.tensor([p]), generation_config=config,
                                 attention_mask=torch.ones(1, len(p), dtype=torch.long))
        ties = []
        for step in out.logits:
            top = step[0].float().topk(2).values
            ties.append(float(top[0] - top[1]) / max(float(step[0].abs().max()), 1e-30))
        results.append((out.sequences[0, len(p):].tolist(), ties))
    return results


def greedy_gate(staging: Path, cfg: dict, prompts: list, ours: list, eos: tuple) -> dict:
    """Return the gate's record after comparing our greedy tokens (`ours`, after each of `prompts`) with transformers'
    generate on the staged directory; InputError on a disagreement (at a step whose reference margin is no tie)."""
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
                             f"{cfg['model_type']} decoder reads, refused")  # fmt: skip
    return {"prompts": len(prompts), "new_tokens": GATE_TOKENS, "tokens_compared": compared,
            "agree": True, "stopped_at_ties": ties, "reference": "transformers generate(do_sample=False), float32"}


def read_tokenizer(path: Path, shown: Path, vocab: int):
    """Return the tokenizers.Tokenizer of `path` (named `shown` in messages), refusing one with more tokens than the
    model's `vocab` embeddings."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises its own exception type for a malformed file
        raise InputError(f"{shown}: not a tokenizer the tokenizers library reads ({str(e)[:200]})") from None
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab:
        raise InputError(f"{shown}: {size} tokens, more than the model's {vocab} embeddings; the tokenizer does not "
                         f"belong to these weights")
    return tokenizer


def read_prompt_lines(path: str | os.PathLike) -> list[str]:
    """Return the non-empty lines of a calibration prompts file (UTF-8 text, one prompt per line), refusing a file
    that is missing, binary, not UTF-8, too large, holds too many lines or none; InputError names the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file (--calibration takes a text file, one prompt per line)")
    size = path.stat().st_size
    if size > PROMPTS_MAX_BYTES:
        raise InputError(f"{path}: {size:,} bytes; a prompts file holds at most {PROMPTS_MAX_BYTES:,} (use fewer prompts)")
    with open(path, "rb") as f:
        data = f.read(PROMPTS_MAX_BYTES + 1)
    if len(data) > PROMPTS_MAX_BYTES:
        raise InputError(f"{path}: more than {PROMPTS_MAX_BYTES:,} bytes; use fewer prompts")
    if b"\0" in data:
        raise InputError(f"{path}: binary data; expected UTF-8 text, one prompt per line")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8, one prompt per line") from None
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise InputError(f"{path}: no prompts (every line is empty); write one prompt per line")
    if len(lines) > PROMPTS_MAX_LINES:
        raise InputError(f"{path}: {len(lines):,} prompts; at most {PROMPTS_MAX_LINES:,} are read (use fewer lines)")
    return lines


def gate_plan(tokenizer, lines: list[str] | None, context: int, new_tokens: int) -> tuple[list | None, list | None, int]:
    """Return (prompt token ids or None for the built-in set, held-out ids or None, new tokens): each prompt is
    truncated to the context minus the new tokens (which shrink to half the context when it is shorter)."""
    new_tokens = max(1, min(new_tokens, context // 2))
    if lines is None:
        return None, None, new_tokens
    room = context - new_tokens
    prompts = [tokenizer.encode(ln).ids[:room] for ln in lines]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise InputError("--calibration: no prompt gives a token with this model's tokenizer; write plain text prompts")
    heldout = [t for p in prompts for t in p][:context]  # the log-likelihood text: the prompts one after another
    return prompts, heldout if len(heldout) >= 2 else None, new_tokens


def int8_gate(staging: Path, reference: Decoder, prompts, heldout, new_tokens: int, min_agreement: float,
              force: bool, source: str) -> dict:
    """Return the card's quantization record after gating the int8-weight decoder (loaded from the staged files as the
    worker loads it) against `reference`; InputError naming the figures, --gate and --force when it fails unforced."""
    candidate = load_decoder(staging, weights="int8-weight")
    report = gengate.generation_gate(reference, candidate, prompts, heldout, new_tokens=new_tokens,
                                     min_agreement=min_agreement)
    if not report.passed and not force:
        raise InputError(f"quantization gate failed: {report.summary()}; keep float (--quantize none), lower the gate "
                         f"(--gate F) or import it anyway (--force)")
    floats, int8 = reference.weight_bytes, candidate.weight_bytes
    return {"scheme": "int8-weight",
            "gate": {**report.as_dict(), "prompts_source": source, "forced": bool(force and not report.passed)},
            "weight_bytes": {"float": floats, "int8": int8, "ratio": round(int8 / floats, 4)}}


def _file_entry(path: Path, role: str) -> dict:
    """Return a card "files" entry: role, SHA-256, size."""
    return {"role": role, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def import_generation(directory: str | os.PathLike, run_dir: str | os.PathLike, quantize: str = "none",
                      calibration: str | os.PathLike | None = None, gate: float | None = None, force: bool = False,
                      new_tokens: int = gengate.NEW_TOKENS) -> GenerationImport:
    """Write a generation run directory for a Hugging Face causal-LM directory; returns what it wrote.

    quantize: "none" or "int8-weight" (gated: `calibration` a prompts file or None for the built-in set, `gate` the
    least greedy-token agreement, default gengate.MIN_AGREEMENT, `force` imports a model that fails it, `new_tokens`
    generated per prompt).
    """
    _quiet.install()
    if quantize not in SCHEMES:
        raise InputError(f"quantize: {quantize!r} is not a scheme for a causal language model; use one of {SCHEMES}")
    if quantize == "none" and (calibration is not None or gate is not None or force):
        raise InputError("--calibration, --gate and --force go with --quantize int8-weight for a causal language model")
    lines = read_prompt_lines(calibration) if calibration is not None else None
    directory = Path(directory)
    names = check_directory(directory, ALLOWED)  # config.json, tokenizer.json and a *.safetensors file required
    run_dir = Path(run_dir)
    with staging_dir(run_dir) as staging:
        shipped = [n for n in names if n in SHIPPED or n.endswith(".safetensors")]
        for n in shipped:
            shutil.copyfile(directory / n, staging / n)
        cfg = json_object(staging / "config.json")
        refuse_remote_code(cfg, directory / "config.json")
        tok_cfg = json_object(staging / "tokenizer_config.json") if "tokenizer_config.json" in names else {}
        refuse_remote_code(tok_cfg, directory / "tokenizer_config.json")
        check_shard_index(staging, names)
        if cfg.get("model_type") not in decoder_weights.SUPPORTED:
            raise InputError(f"{directory / 'config.json'}: model_type {str(cfg.get('model_type'))[:60]!r} is not a "
                             f"causal LM this importer runs; supported: {', '.join(decoder_weights.SUPPORTED)}")
        check_sizes(cfg, directory / "config.json")
        try:
            spec = decoder_weights.read_spec(cfg)
            tensors = decoder_weights.read_tensors(staging, spec)
        except decoder_weights.DecoderError as e:
            raise InputError(f"{directory}: {e}") from None
        parameters = int(sum(t.numel() for t in tensors.values()))
        decoder = Decoder(spec, tensors)
        del tensors  # the decoder holds its own (fused) copies
        tokenizer = read_tokenizer(staging / "tokenizer.json", directory / "tokenizer.json", spec.vocab)
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
        quantization = {"scheme": "none"}
        if quantize == "int8-weight":
            prompts, heldout, steps = gate_plan(tokenizer, lines, context, new_tokens)
            source = f"{Path(calibration).name} ({len(prompts)} prompts)" if lines else "built-in (gengate.builtin_tokens)"
            quantization = int8_gate(staging, decoder, prompts, heldout, steps,
                                     gengate.MIN_AGREEMENT if gate is None else gate, force, source)
        gate = {"skipped": GATE_SKIPPED}
        if importlib.util.find_spec("transformers") is not None:
            prompts = gate_prompts(tokenizer, context)
            ours = greedy_ours(decoder, prompts, GATE_TOKENS)
            del decoder  # transformers' copy of the weights is loaded next: never both at once
            gate = greedy_gate(staging, cfg, prompts, ours, defaults.eos_token_ids)
        files = {n: _file_entry(staging / n, ROLES.get(n, "weights")) for n in sorted(os.listdir(staging))}
        template = {"file": "chat_template.jinja", "sha256": files["chat_template.jinja"]["sha256"]} if text is not None else None
        notes = [gate["skipped"]] if "skipped" in gate else []
        if defaults.ignored:
            notes.append(f"generation_config.json sets fields the server does not apply: {', '.join(defaults.ignored)}")
        card = {
            "schema_version": SCHEMA_VERSION,
            "created": rundir.now(),
            "input": {"kind": "prompt", "context": context,
                      "tokenizer": {"file": "tokenizer.json", "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
                                    "sha256": files["tokenizer.json"]["sha256"]},
                      "chat_template": template, "bos_token": bos, "eos_token": eos},  # fmt: skip
            "output": {"kind": "tokens", "eos_token_ids": list(defaults.eos_token_ids)},
            "model": {"source": "huggingface", "architecture": architecture(cfg),
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
            "quantization": quantization,
            "notes": notes,
        }
        rundir.finish(staging, run_dir, card)
    return GenerationImport(run_dir, card)

