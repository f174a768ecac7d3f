"""Generation run directories built in the tests (no network) through `aiaas import`'s own path (genimport): a tiny
random causal LM (tests/decoder_models.CONFIGS, its vocabulary widened to a byte-level BPE tokenizer trained here on
the README, so streamed text meets partial UTF-8 characters) with a chat template, and `generate`'s greedy text as
the independent reference. The session fixture `generation_runs` (tests/conftest.py) imports each (kind, seed) once
per session: the import's greedy gate against transformers takes seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import transformers

from aiaas_torch.genimport import import_generation
from decoder_models import CONFIGS, reference
from textmodels import bytelevel_bpe

# A plain chat template (the shape of many Hugging Face templates): every message between markers, then the cue.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def build(kind: str, root: Path, seed: int = 0):
    """Return (run directory, transformers model, tokenizers.Tokenizer, Hugging Face directory) of a tiny `kind` model
    imported with `import_generation`."""
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
    return run, model, tok, hf


def with_settings(run: Path, dest: Path, slots: int | None = None, max_queue: int | None = None) -> Path:
    """Return `dest`, a copy of the run directory `run` whose card's generation settings `slots` / `max_queue` are
    overridden (the shared run directory stays as imported)."""
    shutil.copytree(run, dest)
    card = json.loads((dest / "model.json").read_text())
    card["generation"].update({k: v for k, v in (("slots", slots), ("max_queue", max_queue)) if v is not None})
    (dest / "model.json").write_text(json.dumps(card))
    return dest


class GenerationRuns:
    """{(kind, seed): `build`'s tuple} of run directories under `root`, each imported on first use and shared after."""

    def __init__(self, root):
        self.root, self.built = Path(root), {}

    def __getitem__(self, key: tuple[str, int]):
        """Return (run directory, transformers model, tokenizer, Hugging Face directory) of (kind, seed)."""
        if key not in self.built:
            kind, seed = key
            self.built[key] = build(kind, self.root / f"{kind}-{seed}", seed=seed)
        return self.built[key]


def reference_text(model, tok, prompt_ids: list[int], new_tokens: int) -> tuple[str, float]:
    """Return (`generate`'s greedy text after `prompt_ids`, the smallest top-1/top-2 logit margin over its steps)."""
    # an explicit mask: `reference` names pad_token_id=0, and generate would otherwise mask the prompt's <s> (id 0)
    ids, margin = reference(model, prompt_ids, new_tokens, attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long))
    return tok.decode(ids, skip_special_tokens=True), margin


def chat_prompt(hf: Path, messages: list) -> str:
    """Return the chat prompt text as `transformers` renders it (apply_chat_template), the independent reference."""
    return transformers.AutoTokenizer.from_pretrained(hf).apply_chat_template(messages, add_generation_prompt=True,
                                                                              tokenize=False)
