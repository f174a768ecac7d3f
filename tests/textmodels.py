"""Tiny Hugging Face model directories built in the tests (no network): random weights written by save_pretrained
(safetensors), tokenizers trained here with `tokenizers` on the repository's README, and transformers' own eager
answers to compare with (the independent reference)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "a short one",
    "the model card travels with the model from training to the handler and to the server",
    "tokens",
    "Open Inference v2 bodies with every named input are converted to the input's dtype, and fractions are refused",
    "serving starts TorchServe from a home directory",
]


def corpus() -> list[str]:
    """Return lines of local text to train a tokenizer on (the README: a few thousand words)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [ln for ln in text.splitlines() if re.search(r"[A-Za-z]{3}", ln)]


def wordpiece(directory: Path, max_length: int | None = None) -> None:
    """Write a WordPiece tokenizer ([PAD]=0, [CLS] text [SEP] pairs with type ids) trained on local text into `directory`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(corpus(), trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])  # fmt: skip
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_length or 10**6,
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])  # fmt: skip
    fast.save_pretrained(str(directory))


def bytelevel_bpe(directory: Path) -> None:
    """Write a byte-level BPE tokenizer (<s>=0, <pad>=1, </s>=2, RoBERTa's template) trained on local text into `directory`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=500, special_tokens=special,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>")  # fmt: skip
    fast.save_pretrained(str(directory))


def build(root: Path) -> dict:
    """Return {name: directory} of the tiny models: a BERT pair classifier, a DistilBERT sentence-transformers encoder
    (cls pooling, normalized) and a RoBERTa encoder (mean pooling, BPE tokenizer)."""
    from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig, DistilBertModel, RobertaConfig,
                              RobertaModel)  # fmt: skip

    torch.manual_seed(0)
    dirs = {}
    d = dirs["bert_cls"] = root / "bert_cls"
    wordpiece(d)
    cfg = BertConfig(vocab_size=400, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=48, pad_token_id=0, id2label={0: "negative", 1: "neutral", 2: "positive"},
                     label2id={"negative": 0, "neutral": 1, "positive": 2})  # fmt: skip
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # random weights answer one label for every text: aim each label at one text's pooled output
        from transformers import AutoTokenizer

        enc = AutoTokenizer.from_pretrained(str(d))(TEXTS, padding=True, return_tensors="pt")
        pooled = model.bert(**enc).pooler_output
        centred = pooled - pooled.mean(0)
        w = centred[[0, 1, 3]] / centred[[0, 1, 3]].norm(dim=1, keepdim=True) * 50
        model.classifier.weight.copy_(w)
        model.classifier.bias.copy_(-(w @ pooled.mean(0)))
    model.save_pretrained(str(d))
    d = dirs["distilbert_st"] = root / "distilbert_st"
    wordpiece(d)
    cfg = DistilBertConfig(vocab_size=400, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64, pad_token_id=0)
    DistilBertModel(cfg).save_pretrained(str(d))
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))  # fmt: skip
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": True,
                                                             "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False}))  # fmt: skip
    (d / "2_Normalize").mkdir()
    d = dirs["roberta_emb"] = root / "roberta_emb"
    bytelevel_bpe(d)
    cfg = RobertaConfig(vocab_size=500, hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=66, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)  # fmt: skip
    RobertaModel(cfg).save_pretrained(str(d))
    return dirs


def more_architectures() -> dict:
    """Return {name: (model class, config)} of tiny XLM-R, DeBERTa-v2 and ModernBERT encoders for the WordPiece tokenizer."""
    from transformers import (DebertaV2Config, DebertaV2Model, ModernBertConfig, ModernBertModel, XLMRobertaConfig,
                              XLMRobertaModel)  # fmt: skip

    size = dict(vocab_size=400, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, pad_token_id=0)
    return {
        "xlm-roberta": (XLMRobertaModel, XLMRobertaConfig(**size, max_position_embeddings=66, type_vocab_size=1)),
        "deberta-v2": (DebertaV2Model, DebertaV2Config(**size, max_position_embeddings=64, type_vocab_size=0, relative_attention=True,
                                                       position_biased_input=False, pos_att_type=["p2c", "c2p"])),
        "modernbert": (ModernBertModel, ModernBertConfig(**size, max_position_embeddings=64, global_attn_every_n_layers=1)),
    }  # fmt: skip


def reference(directory: Path, texts, pairs=None, pooling: str = "mean", normalize: bool = False):
    """Return transformers' own answer on `texts` in one padded batch: softmax probabilities of a classifier, or the
    encoder's hidden states pooled here (mean over real tokens, the first token, or the max over real tokens)."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(directory))
    enc = tok(list(texts), list(pairs) if pairs else None, padding=True, return_tensors="pt")
    cfg = json.loads((directory / "config.json").read_text())
    classify = any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures", []))
    model = (AutoModelForSequenceClassification if classify else AutoModel).from_pretrained(str(directory)).eval()
    with torch.no_grad():
        out = model(**{k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
    if classify:
        return torch.softmax(out.logits.double(), -1).numpy()
    h, m = out.last_hidden_state.double(), enc["attention_mask"].unsqueeze(-1).double()
    if pooling == "cls":
        e = h[:, 0]
    elif pooling == "max":
        e = torch.where(m > 0, h, torch.tensor(float("-inf"), dtype=h.dtype)).amax(1)
    else:
        e = (h * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(e, dim=-1).numpy() if normalize else e.numpy()
