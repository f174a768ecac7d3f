"""Generation run directories built in the tests (no network): a tiny random causal LM (tests/decoder_models.CONFIGS,
its vocabulary widened to a byte-level BPE tokenizer trained here on the README), and the card the import side writes
(the generation card contract in the lead's brief), plus `generate`'s greedy text as the independent reference.

Until the import side's `aiaas import` of a generation directory is merged, `write_card` stands in for it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

import torch
import transformers

from decoder_models import CONFIGS, reference
from textmodels import bytelevel_bpe

# A plain chat template (the shape of many Hugging Face templates): every message between markers, then the cue.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(kind: str, directory: Path, context: int = 64, seed: int = 0, chat_template: str | None = CHAT_TEMPLATE):
    """Return (directory, transformers model, tokenizers.Tokenizer) of a tiny `kind` generation run directory with its card."""
    from tokenizers import Tokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bytelevel_bpe(directory)
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    config = CONFIGS[kind]()
    config.vocab_size = tok.get_vocab_size()
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(directory)
    (directory / "generation_config.json").unlink(missing_ok=True)
    if chat_template is not None:
        (directory / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    write_card(directory, kind, model, tok, context)
    return directory, model, tok


def write_card(directory: Path, kind: str, model, tok, context: int) -> dict:
    """Write model.json as the generation card contract lays it out; return the card."""
    roles = {"config.json": "config", "tokenizer.json": "tokenizer", "tokenizer_config.json": "config",
             "chat_template.jinja": "template", "generation_config.json": "config"}
    files = {}
    for p in sorted(directory.iterdir()):
        role = "weights" if p.suffix == ".safetensors" else roles.get(p.name)
        if role:
            files[p.name] = {"role": role, "sha256": _sha(p), "bytes": p.stat().st_size}
    template = directory / "chat_template.jinja"
    cfg = model.config
    card = {
        "schema_version": 1, "created": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc).isoformat(),
        "files": files, "versions": {}, "notes": [], "metrics": {}, "quantization": {"scheme": "none"},
        "input": {"kind": "prompt", "context": context,
                  "tokenizer": {"file": "tokenizer.json", "vocab_size": tok.get_vocab_size(), "sha256": _sha(directory / "tokenizer.json")},
                  "chat_template": {"file": template.name, "sha256": _sha(template)} if template.exists() else None,
                  "bos_token": "<s>", "eos_token": "</s>"},
        "output": {"kind": "tokens", "eos_token_ids": []},
        "model": {"source": "huggingface", "architecture": type(model).__name__, "model_type": cfg.model_type,
                  "parameters": sum(p.numel() for p in model.parameters()), "dtype": "float32",
                  "layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size, "vocab": cfg.vocab_size,
                  "kv_heads": getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
                  "head_dim": cfg.hidden_size // cfg.num_attention_heads},
        "generation": {"defaults": {}, "ignored": [], "slots": 4, "max_queue": 4},
    }  # fmt: skip
    (directory / "model.json").write_text(json.dumps(card, indent=2), encoding="utf-8")
    return card


def reference_text(model, tok, prompt_ids: list[int], new_tokens: int) -> tuple[str, float]:
    """Return (`generate`'s greedy text after `prompt_ids`, the smallest top-1/top-2 logit margin over its steps)."""
    # an explicit mask: `reference` names pad_token_id=0, and generate would otherwise mask the prompt's <s> (id 0)
    ids, margin = reference(model, prompt_ids, new_tokens, attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long))
    return tok.decode(ids, skip_special_tokens=True), margin
