"""Tiny random causal LMs saved as Hugging Face directories, and `generate`'s greedy tokens as the reference.

Shared by tests/test_decoders.py, tests/test_generation_engine.py and tests/test_genimport.py (through the session
fixture `decoder_dirs` of tests/conftest.py: each kind built once per session). The weights are random (no network);
the initializer range is wide enough that the reference's top-1/top-2 logit margin is healthy at every step, which
the tests assert (`reference` returns the smallest margin; it is computed once per model, prompt and settings).
"""

from __future__ import annotations

import weakref
from pathlib import Path

import torch
import transformers
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()

COMMON = dict(vocab_size=128, initializer_range=0.25)
LLAMA = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256)
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**COMMON, **LLAMA, rope_theta=50000.0, eos_token_id=None, bos_token_id=None),
    "llama_tied": lambda: transformers.LlamaConfig(**COMMON, **LLAMA, tie_word_embeddings=True, eos_token_id=None,
                                                   bos_token_id=None, attention_bias=True),
    "mistral": lambda: transformers.MistralConfig(**COMMON, **LLAMA, sliding_window=4, eos_token_id=None,
                                                  bos_token_id=None),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, **LLAMA, eos_token_id=None, bos_token_id=None),
    "gemma": lambda: transformers.GemmaConfig(**COMMON, **{**LLAMA, "num_key_value_heads": 1}, head_dim=16,
                                              eos_token_id=None, bos_token_id=None, pad_token_id=None),
    "gpt2": lambda: transformers.GPT2Config(**COMMON, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                            eos_token_id=None, bos_token_id=None),
}
PROMPTS = [[5, 17, 99, 3, 64, 21, 8], [42], [7, 7, 100, 12], [90, 4, 33, 61, 2, 19, 77, 31, 55, 10, 6]]


def build(kind: str, directory, seed: int = 0):
    """Return (directory, the transformers model) of a tiny random `kind` model saved with `save_pretrained`."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[kind]()).eval()
    model.save_pretrained(directory)
    return directory, model


_REFERENCES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model: {(prompt, tokens, kwargs): answer}


def _hashable(value):
    """Return `value` (a tensor, list or scalar) as a hashable key of its contents."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


def reference(model, prompt: list[int], new_tokens: int, **generate_kwargs) -> tuple[list[int], float]:
    """Return (`generate`'s greedy tokens after `prompt`, the smallest top-1/top-2 logit margin over its steps);
    `generate` runs once per model, prompt, token count and keyword arguments (the models are never trained)."""
    key = (_hashable(prompt), new_tokens, tuple(sorted((k, _hashable(v)) for k, v in generate_kwargs.items())))
    known = _REFERENCES.setdefault(model, {})
    if key not in known:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), do_sample=False, repetition_penalty=1.0,
                                 max_new_tokens=new_tokens, output_logits=True, return_dict_in_generate=True,
                                 pad_token_id=0, **generate_kwargs)
        margins = [float(t[0] - t[1]) for t in (step[0].topk(2).values for step in out.logits)]
        known[key] = (out.sequences[0, len(prompt):].tolist(), min(margins))
    tokens, margin = known[key]
    return list(tokens), margin


LLAMA_TEMPLATE = ("{{ bos_token }}{% for message in messages %}"
                  "{% if message['role'] == 'system' %}<<SYS>>{{ message['content'] | trim }}<</SYS>>\n"
                  "{% elif message['role'] == 'user' %}[INST] {{ message['content'] | trim }} [/INST]"
                  "{% else %} {{ message['content'] | trim }} {{ eos_token }}{% endif %}{% endfor %}"
                  "{% if add_generation_prompt %} {% endif %}")


def tokenizer(directory, vocab: int = 120, chat_template: str | None = None) -> None:
    """Write a word-level tokenizer (<unk>=0, <s>=1, </s>=2; at most `vocab` tokens, trained on the repository's
    README) with tokenizer_config.json (bos/eos tokens, and `chat_template` when given) into `directory`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from textmodels import corpus

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.train_from_iterator(corpus(), trainers.WordLevelTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(str(directory))


def hf_directory(kind: str, directory, seed: int = 0, chat_template: str | None = LLAMA_TEMPLATE):
    """Return (directory, the transformers model) of a tiny random `kind` causal LM with a tokenizer and chat template,
    as a Hugging Face directory holds them."""
    directory, model = build(kind, directory, seed)
    tokenizer(directory, chat_template=chat_template)
    return directory, model


class DecoderDirs:
    """{kind: (directory, transformers model)} of `hf_directory` models (seed 0) under `root`, each built on first use."""

    def __init__(self, root):
        self.root, self.built = Path(root), {}

    def __getitem__(self, kind: str):
        """Return (directory, transformers model) of `kind`, building it the first time it is asked for."""
        if kind not in self.built:
            self.built[kind] = hf_directory(kind, self.root / kind)
        return self.built[kind]
