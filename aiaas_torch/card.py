"""The model card (`model.json`) of a run directory: the file names a run directory holds, reading and checking the card.

Torch-free, so that archive checks and the light CLI commands can read a card without importing torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import InputError
from .handlers.contract_common import is_tabular  # the one test of "a tabular card", shared with the handlers

SCHEMA_VERSION = 1
CARD = "model.json"
COMPILED = "model.pt2"
FLOAT_PROGRAM = "model_float.pt2"
CHECKPOINT = "checkpoint.pt"
# The impute strategies, the one list of their names: what `impute=` / `--impute` takes (constant also as
# constant:VALUE) and what a card's feature records (a text column's mean or median is recorded as most_frequent).
IMPUTE_STRATEGIES = ("mean", "median", "most_frequent", "constant")


def read_card(run_dir: str | os.PathLike) -> dict:
    """Return the model card of a run directory, checking it is a card this version understands."""
    p = Path(run_dir) / CARD
    if not p.is_file():
        raise InputError(f"{run_dir}: no {CARD}; not a complete aiaas run directory")
    try:
        card = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not valid JSON ({e})") from None
    check_card(card, str(p))
    return card


def tensor_text(spec: dict) -> str:
    """Return a card's tensor as people read it: `x [N, 2, 3] float32` (N: the batch dimension)."""
    from .handlers.aiaas_contract import BATCH

    return f"{spec['name']} [{', '.join('N' if d == BATCH else str(d) for d in spec['shape'])}] {spec['dtype']}"


def filled_sample(spec: dict, value):
    """Return one sample of a card's tensor: nested lists of its shape without the batch dimension, every entry `value`."""
    for d in reversed(spec["shape"][1:]):
        value = [value] * d
    return value


def check_card(card, where: str) -> None:
    """Raise ValueError naming the field when a model card lacks a field or has one of the wrong type."""
    if not isinstance(card, dict):
        raise InputError(f"{where}: the card must be a JSON object")
    expect = {"schema_version": int, "input": dict, "output": dict, "files": dict, "quantization": dict, "versions": dict}
    for key, typ in expect.items():
        if key not in card:
            raise InputError(f"{where}: field {key!r} missing")
        if not isinstance(card[key], typ) or isinstance(card[key], bool):
            raise InputError(f"{where}: field {key!r} must be {typ.__name__}, got {type(card[key]).__name__}")
    if card["schema_version"] != SCHEMA_VERSION:
        raise InputError(f"{where}: schema_version {card['schema_version']} is not {SCHEMA_VERSION}")
    if card["input"].get("kind") == "text":
        _check_text_card(card, where)
        return
    if is_generation(card):
        _check_generation_card(card, where)
        return
    if not is_tabular(card):
        _check_tensor_card(card, where)
        return
    feats = card["input"].get("features")
    if not isinstance(feats, list) or not feats or not all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in feats):
        raise InputError(f"{where}: field 'input.features' must be a non-empty list of {{name, min, max, ...}}")
    for f in feats:
        for k in ("min", "max"):
            if not isinstance(f.get(k), (int, float)) or isinstance(f.get(k), bool):
                raise InputError(f"{where}: field 'input.features[{f['name']!r}].{k}' must be a number")
        _check_encoding(f, f"{where}: field 'input.features[{f['name']!r}]")
    if card["input"].get("unseen_category", "zero") not in ("zero", "error"):
        raise InputError(f"{where}: field 'input.unseen_category' must be 'zero' or 'error'")
    if not isinstance(card.get("warnings", []), list) or not all(isinstance(w, str) for w in card.get("warnings", [])):
        raise InputError(f"{where}: field 'warnings' must be a list of strings")
    if card["output"].get("task") not in ("regression", "classification"):
        raise InputError(f"{where}: field 'output.task' must be 'regression' or 'classification'")


def _check_encoding(f: dict, where: str) -> None:
    """Raise ValueError naming the field when a feature's kind, categories or impute entry is malformed."""
    kind = f.get("kind", "numeric")
    if kind not in ("numeric", "categorical"):
        raise InputError(f"{where}.kind' must be 'numeric' or 'categorical', got {kind!r}")
    cats = f.get("categories")
    if kind == "categorical":
        if not isinstance(cats, list) or not cats or not all(isinstance(c, str) for c in cats) or len(set(cats)) != len(cats):
            raise InputError(f"{where}.categories' must be a non-empty list of distinct strings")
    elif cats is not None:
        raise InputError(f"{where}.categories' is only for a categorical feature")
    imp = f.get("impute")
    if imp is None:
        return
    if not isinstance(imp, dict) or imp.get("strategy") not in IMPUTE_STRATEGIES or "value" not in imp:
        raise InputError(f"{where}.impute' must be {{strategy: one of {IMPUTE_STRATEGIES}, value}}")
    v = imp["value"]
    ok = (v is None or isinstance(v, str)) if kind == "categorical" else (isinstance(v, (int, float)) and not isinstance(v, bool))
    if not ok:
        raise InputError(f"{where}.impute.value' must be {'a category or null' if kind == 'categorical' else 'a number'}")


def _check_tensor_card(card: dict, where: str) -> None:
    """Raise InputError naming the field when a tensor card's contract (imported models) is malformed."""
    from .handlers.aiaas_contract import check_tensor_specs

    try:
        check_tensor_specs(card["input"].get("tensors"), "input.tensors", ranged=True)
        check_tensor_specs(card["output"].get("tensors"), "output.tensors", ranged=False)
    except ValueError as e:
        raise InputError(f"{where}: field {e}") from None
    out = card["output"]
    if out.get("task") not in ("tensor", "classification"):
        raise InputError(f"{where}: field 'output.task' must be 'tensor' or 'classification' for a tensor card")
    labels = out.get("classes")
    if out["task"] == "classification":
        first = out["tensors"][0]
        if not isinstance(labels, list) or not labels or len(out["tensors"]) != 1 or first["shape"] != [-1, len(labels)]:
            raise InputError(f"{where}: field 'output.classes' must list one label per column of the one output [-1, K] "
                             f"(got {len(labels) if isinstance(labels, list) else labels!r} labels for {len(out['tensors'])} "
                             f"output(s), the first of shape {first['shape']})")  # fmt: skip


def is_text(card: dict) -> bool:
    """Return True when the card is a text model's (texts in, tokenized by the tokenizer the card names)."""
    return isinstance(card.get("input"), dict) and card["input"].get("kind") == "text"


def _check_text_card(card: dict, where: str) -> None:
    """Raise InputError naming the field when a text card (aiaas import of a Hugging Face directory) is malformed."""
    inp, out = card["input"], card["output"]
    if not _whole(inp.get("max_length"), 2) or not _whole(inp.get("pad_id"), 0) or not _whole(inp.get("max_rows"), 1):
        raise InputError(f"{where}: field 'input.max_length', 'input.pad_id' and 'input.max_rows' must be whole numbers")
    tok = inp.get("tokenizer")
    if not isinstance(tok, dict) or not isinstance(tok.get("file"), str) or tok["file"] not in card["files"]:
        raise InputError(f"{where}: field 'input.tokenizer.file' must name a file of the card's files section")
    tensors = inp.get("tensors")
    names = [t.get("name") for t in tensors] if isinstance(tensors, list) and all(isinstance(t, dict) for t in tensors) else None
    if names not in (["input_ids", "attention_mask"], ["input_ids", "attention_mask", "token_type_ids"]):
        raise InputError(f"{where}: field 'input.tensors' must be input_ids, attention_mask[, token_type_ids]")
    if out.get("task") not in ("classification", "embedding") or not _whole(out.get("dim"), 1):
        raise InputError(f"{where}: field 'output.task' must be 'classification' or 'embedding', with 'output.dim'")
    labels = out.get("classes")
    if out["task"] == "classification" and (not isinstance(labels, list) or len(labels) != out["dim"]
                                            or not all(isinstance(c, str) for c in labels)):  # fmt: skip
        raise InputError(f"{where}: field 'output.classes' must list {out['dim']} labels")


def is_generation(card: dict) -> bool:
    """Return True when the card is a generation model's (prompts in, tokens out: aiaas import of a causal LM)."""
    return isinstance(card.get("input"), dict) and card["input"].get("kind") == "prompt"


def _whole(v, low: int) -> bool:
    """Return True when `v` is an int (not a bool) ≥ `low`."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _hashed_file(entry, files: dict) -> bool:
    """Return True when `entry` is {file, sha256} naming a file of the files section with that hash."""
    return (isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(files.get(entry["file"]), dict)
            and entry.get("sha256") == files[entry["file"]].get("sha256"))


def _check_generation_card(card: dict, where: str) -> None:
    """Raise InputError naming the field when a generation card (aiaas import of a causal LM) is malformed."""
    inp, out, files = card["input"], card["output"], card["files"]
    if not _whole(inp.get("context"), 2):
        raise InputError(f"{where}: field 'input.context' must be a whole number ≥ 2")
    tok = inp.get("tokenizer")
    if not _hashed_file(tok, files) or not _whole(tok.get("vocab_size"), 1):
        raise InputError(f"{where}: field 'input.tokenizer' must be {{file, vocab_size, sha256}} naming a file of the "
                         f"card's files section with the same sha256")
    if inp.get("chat_template") is not None and not _hashed_file(inp["chat_template"], files):
        raise InputError(f"{where}: field 'input.chat_template' must be null or {{file, sha256}} naming a file of the "
                         f"card's files section with the same sha256")
    for key in ("bos_token", "eos_token"):
        if inp.get(key) is not None and not isinstance(inp[key], str):
            raise InputError(f"{where}: field 'input.{key}' must be a string or null")
    eos = out.get("eos_token_ids")
    if out.get("kind") != "tokens" or not isinstance(eos, list) or not all(_whole(t, 0) for t in eos):
        raise InputError(f"{where}: field 'output' must be {{kind: 'tokens', eos_token_ids: [token id, ...]}}")
    model = card.get("model")
    if not isinstance(model, dict) or not all(_whole(model.get(k), 1) for k in
                                              ("parameters", "layers", "hidden_size", "kv_heads", "head_dim", "vocab")):
        raise InputError(f"{where}: field 'model' must give parameters, layers, hidden_size, kv_heads, head_dim and "
                         f"vocab as whole numbers")
    if model.get("dtype") != "float32" or not isinstance(model.get("model_type"), str):
        raise InputError(f"{where}: field 'model.dtype' must be 'float32' and 'model.model_type' a string")
    if tok["vocab_size"] > model["vocab"]:
        raise InputError(f"{where}: field 'input.tokenizer.vocab_size' {tok['vocab_size']} exceeds 'model.vocab' {model['vocab']}")
    gen = card.get("generation")
    if not isinstance(gen, dict) or not isinstance(gen.get("defaults"), dict) or not isinstance(gen.get("ignored"), list) \
            or not _whole(gen.get("slots"), 1) or not _whole(gen.get("max_queue"), 0):
        raise InputError(f"{where}: field 'generation' must be {{defaults: {{...}}, ignored: [...], slots ≥ 1, max_queue ≥ 0}}")
    if not any(isinstance(f, dict) and f.get("role") == "weights" for f in files.values()) or "config.json" not in files:
        raise InputError(f"{where}: field 'files' must list config.json and at least one weights file (*.safetensors)")
    if card["quantization"].get("scheme") not in ("none", "int8-weight"):
        raise InputError(f"{where}: field 'quantization.scheme' must be 'none' or 'int8-weight'")
    quant = card["quantization"]
    if quant["scheme"] == "int8-weight":
        gate = quant.get("gate")
        if not isinstance(gate, dict) or not isinstance(gate.get("passed"), bool) or not isinstance(gate.get("forced"), bool) \
                or not isinstance(gate.get("agreement"), (int, float)) or not isinstance(quant.get("weight_bytes"), dict):
            raise InputError(f"{where}: field 'quantization' of an int8-weight card must hold 'gate' {{agreement, passed, "
                             f"forced, ...}} and 'weight_bytes' (what aiaas import --quantize int8-weight writes)")
