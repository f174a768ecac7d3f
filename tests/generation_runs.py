"""Generation run directories built in the tests (no network) through `aiaas import`'s own path (genimport): a tiny
random causal LM (tests/decoder_models.CONFIGS, its vocabulary widened to a byte-level BPE tokenizer trained here on
the README, so streamed text meets partial UTF-8 characters) with a chat template, and `generate`'s greedy text as
the independent reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

from aiaas_torch.genimport import import_generation
from decoder_models import CONFIGS, reference
from textmodels import bytelevel_bpe

# A plain chat template (the shape of many Hugging Face templates): every message between markers, then the cue.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def build(kind: str, root: Path, seed: int = 0, slots: int | None = None, max_queue: int | None = None):
    """Return (run directory, transformers model, tokenizers.Tokenizer, Hugging Face directory) of a tiny `kind` model
    imported with `import_generation`; `slots` / `max_queue` override the card's generation settings."""
    from tokenizers import Tokenizer

    hf = Path(root) / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    bytelevel_bpe(hf)
    cfg_path = hf / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg))
    tok = Tokenizer.from_file(str(hf / "tokenizer.json"))
    config = CONFIGS[kind]()
    config.vocab_size = tok.get_vocab_size()
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(hf)
    run = import_generation(hf, Path(root) / "run").run_dir
    if slots is not None or max_queue is not None:
        card = json.loads((run / "model.json").read_text())
        card["generation"].update({k: v for k, v in (("slots", slots), ("max_queue", max_queue)) if v is not None})
        (run / "model.json").write_text(json.dumps(card))
    return run, model, tok, hf


def reference_text(model, tok, prompt_ids: list[int], new_tokens: int) -> tuple[str, float]:
    """Return (`generate`'s greedy text after `prompt_ids`, the smallest top-1/top-2 logit margin over its steps)."""
    # an explicit mask: `reference` names pad_token_id=0, and generate would otherwise mask the prompt's <s> (id 0)
    ids, margin = reference(model, prompt_ids, new_tokens, attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long))
    return tok.decode(ids, skip_special_tokens=True), margin


def chat_prompt(hf: Path, messages: list) -> str:
    """Return the chat prompt text as `transformers` renders it (apply_chat_template), the independent reference."""
    return transformers.AutoTokenizer.from_pretrained(hf).apply_chat_template(messages, add_generation_prompt=True,
                                                                              tokenize=False)
