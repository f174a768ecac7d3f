"""Text models: a Hugging Face model directory → the same kind of run directory `aiaas import` writes for a program.

The directory is untrusted: its file names are checked against an allow-list before anything opens a file
(pickled weights, code and unknown files refused by name), config.json is read as plain JSON (no `auto_map`,
only the encoder architectures transformers implements natively), and only then does transformers build the
model from config + safetensors (never remote code, never pickle). The model is wrapped (token ids, attention
mask[, token types] → logits, or pooled embeddings) and exported with dynamic batch and sequence dimensions; the
worker gets that program, tokenizer.json and the card (handlers/text_contract.py reads them, without transformers).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from . import _quiet, rundir
from .atomic import staging_dir
from .card import FLOAT_PROGRAM, SCHEMA_VERSION
from .errors import InputError
from .export import ExportResult
from .handlers import pt2_check, text_contract
from .quantize import QuantReport

# model_type → the transformers classes that serve it natively (no remote code)
NATIVE = ("bert", "distilbert", "roberta", "xlm-roberta", "deberta-v2", "modernbert")  # each tested (tests/test_text_import.py)
PICKLED = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack", ".joblib", ".npy", ".npz")
ALLOWED = re.compile(r"config\.json|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|vocab\.txt|vocab\.json|"
                     r"merges\.txt|added_tokens\.json|model\.safetensors|model-[0-9]{5}-of-[0-9]{5}\.safetensors|"
                     r"model\.safetensors\.index\.json|modules\.json|sentence_bert_config\.json|"
                     r"config_sentence_transformers\.json|generation_config\.json|README\.md|\.gitattributes|"
                     r"1_Pooling/config\.json|1_Pooling|2_Normalize")  # fmt: skip
POOLINGS = ("mean", "cls", "max")
MAX_BATCH = 1024
NOT_QUANTIZED = "text models serve the float program: int8 and compiled candidates are not measured for text models yet"


def check_directory(directory: Path, allowed: re.Pattern = ALLOWED) -> list[str]:
    """Return the directory's file names (relative, sorted) after refusing pickled weights, code, links and files
    whose relative name `allowed` does not match (by default the text importer's list)."""
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory")
    names = []
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if p.is_symlink():
            raise InputError(f"{directory / rel}: a symbolic link; refused (copy the file it points to)")
        if p.suffix.lower() in PICKLED:
            raise InputError(f"{directory / rel}: pickled weights ({p.suffix}) are refused, they can run code when loaded; "
                             f"save the model with save_pretrained(..., safe_serialization=True) (safetensors)")  # fmt: skip
        if p.suffix.lower() == ".py":
            raise InputError(f"{directory / rel}: Python code in a model directory is refused (no remote code)")
        if not allowed.fullmatch(rel):
            raise InputError(f"{directory / rel}: not a file of a Hugging Face model directory this importer reads; "
                             f"refused (remove it)")  # fmt: skip
        if p.is_file():
            names.append(rel)
    for need in ("config.json", "tokenizer.json"):
        if need not in names:
            raise InputError(f"{directory / need}: missing (a model directory as save_pretrained writes it)")
    if not any(n.endswith(".safetensors") for n in names):
        raise InputError(f"{directory}: no *.safetensors weights (only safetensors are read)")
    return names


def json_object(path: Path) -> dict:
    """Return a JSON object file's content, refusing anything else with the file named."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable JSON file ({str(e)[:200]})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a JSON object")
    return doc


def read_config(directory: Path) -> dict:
    """Return config.json after refusing remote code (`auto_map`) and architectures outside the native encoder set."""
    path = directory / "config.json"
    cfg = json_object(path)
    if "auto_map" in cfg:
        raise InputError(f"{path}: 'auto_map' asks for remote code, which is never run; refused")
    if cfg.get("model_type") not in NATIVE:
        raise InputError(f"{path}: model_type {str(cfg.get('model_type'))[:60]!r} is not a native encoder this importer "
                         f"supports ({', '.join(NATIVE)})")  # fmt: skip
    for key in ("max_position_embeddings", "pad_token_id", "type_vocab_size", "hidden_size", "num_hidden_layers"):
        v = cfg.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 1 << 20):
            raise InputError(f"{path}: {key!r} must be a whole number from 0 to {1 << 20}, got {str(v)[:40]!r}")
    archs = cfg.get("architectures") or []
    if not isinstance(archs, list) or len(archs) > 1 or not all(isinstance(a, str) for a in archs):
        raise InputError(f"{path}: 'architectures' must list one class name")
    return cfg


def read_pooling(directory: Path, names: list) -> tuple[str, bool]:
    """Return (pooling, normalize) that a sentence-transformers directory declares, or ("mean", False) without one."""
    if "modules.json" not in names:
        return "mean", False
    path = directory / "modules.json"
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable JSON file ({str(e)[:200]})") from None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise InputError(f"{path}: expected a list of modules")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    unknown = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if unknown:
        raise InputError(f"{path}: module {unknown[0][:60]!r} is not supported (Transformer, Pooling, Normalize)")
    pooling = "mean"
    if "Pooling" in kinds:
        pc = directory / "1_Pooling" / "config.json"
        if "1_Pooling/config.json" not in names:
            raise InputError(f"{pc}: missing (modules.json declares a Pooling module)")
        cfg = json_object(pc)
        modes = [m for m, key in (("mean", "pooling_mode_mean_tokens"), ("cls", "pooling_mode_cls_token"),
                                  ("max", "pooling_mode_max_tokens")) if cfg.get(key) is True]  # fmt: skip
        others = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True and k not in
                  ("pooling_mode_mean_tokens", "pooling_mode_cls_token", "pooling_mode_max_tokens")]  # fmt: skip
        if len(modes) != 1 or others:
            raise InputError(f"{pc}: exactly one of mean, cls or max pooling is supported (it declares {modes + others})")
        pooling = modes[0]
    return pooling, "Normalize" in kinds


def max_length(cfg: dict, tok_cfg: dict) -> int:
    """Return the longest token sequence the model takes: its position table (RoBERTa's starts after the pad id),
    or the tokenizer's model_max_length when that is smaller."""
    positions = cfg.get("max_position_embeddings") or 512
    if cfg.get("model_type") in ("roberta", "xlm-roberta"):
        positions -= int(cfg.get("pad_token_id", 1)) + 1
    tok_max = tok_cfg.get("model_max_length")
    if isinstance(tok_max, int) and not isinstance(tok_max, bool) and 2 <= tok_max < positions:
        return tok_max
    return int(positions)


class TextEncoder(nn.Module):
    """A transformers encoder as served: (input_ids, attention_mask[, token_type_ids]) → logits or pooled embeddings."""

    def __init__(self, model: nn.Module, task: str, pooling: str = "mean", normalize: bool = False):
        super().__init__()
        self.model, self.task, self.pooling, self.normalize = model, task, pooling, normalize

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        """Return the classifier's logits [N, K] or the pooled embeddings [N, H] (float32)."""
        kw = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kw["token_type_ids"] = token_type_ids
        out = self.model(**kw)
        if self.task == "classification":
            return out.logits.float()
        h = out.last_hidden_state.float()
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        if self.pooling == "cls":
            e = h[:, 0]
        elif self.pooling == "max":
            e = (h + (m - 1.0) * 1e9).amax(1)
        else:
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(e, dim=-1) if self.normalize else e


def build_model(directory: Path, cfg: dict, task: str):
    """Return the eval-mode transformers model of a checked directory (config + safetensors, no remote code); `task`:
    "classification", "causal-lm" or anything else for the base model."""
    try:
        import transformers
    except ImportError:
        raise InputError("importing a Hugging Face directory needs transformers: pip install 'aiaas-torch[hf]'") from None
    cls = {"classification": transformers.AutoModelForSequenceClassification,
           "causal-lm": transformers.AutoModelForCausalLM}.get(task, transformers.AutoModel)
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # its "Loading weights" bar is noise in aiaas import's output
    try:
        model = cls.from_pretrained(str(directory), trust_remote_code=False, use_safetensors=True, local_files_only=True,
                                    **({"dtype": torch.float32} if task == "causal-lm" else {}))  # what our decoder computes in
    except Exception as e:
        raise InputError(f"{directory}: transformers could not build the model ({type(e).__name__}: {str(e)[:300]})") from None
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    return model.eval()


def token_types(model: nn.Module, cfg: dict, tok_cfg: dict) -> bool:
    """Return True when the model takes token_type_ids with more than one type (BERT-like pair encoders) and the
    tokenizer gives them (tokenizer_config.json's model_input_names, when it lists them, names token_type_ids)."""
    import inspect

    given = tok_cfg.get("model_input_names")
    if isinstance(given, list) and "token_type_ids" not in given:
        return False
    return "token_type_ids" in inspect.signature(model.forward).parameters and int(cfg.get("type_vocab_size") or 0) > 1


def export_encoder(wrapper: TextEncoder, types: bool, max_len: int):
    """Return the torch.export program of `wrapper` with dynamic batch (1..1024) and sequence (2..max_len) dimensions."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    seq = torch.export.Dim("seq", min=2, max=max_len)
    ids = torch.full((2, 8), 3, dtype=torch.long)
    args = (ids, torch.ones_like(ids)) + ((torch.zeros_like(ids),) if types else ())
    with torch.no_grad():
        return torch.export.export(wrapper, args, dynamic_shapes=tuple({0: batch, 1: seq} for _ in args), strict=False)


def import_text(directory: str | os.PathLike, run_dir: str | os.PathLike, *, max_rows: int = 256) -> ExportResult:
    """Write a run directory for a Hugging Face text model directory (classifier or encoder); returns the ExportResult."""
    _quiet.install()
    directory = Path(directory)
    names = check_directory(directory)
    cfg = read_config(directory)
    tok_cfg = json_object(directory / "tokenizer_config.json") if "tokenizer_config.json" in names else {}
    arch = (cfg.get("architectures") or [""])[0]
    task = "classification" if arch.endswith("ForSequenceClassification") else "embedding"
    pooling, normalize = read_pooling(directory, names) if task == "embedding" else (None, False)
    model = build_model(directory, cfg, task)
    types = token_types(model, cfg, tok_cfg)
    max_len = max_length(cfg, tok_cfg)
    wrapper = TextEncoder(model, task, pooling or "mean", normalize).eval()
    try:
        ep = export_encoder(wrapper, types, max_len)
    except Exception as e:
        raise InputError(f"torch.export could not export {arch or cfg['model_type']} ({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None
    labels = None
    if task == "classification":
        id2label = model.config.id2label
        labels = [str(id2label[i]) for i in range(len(id2label))]
    pad_id = cfg.get("pad_token_id")
    pad_id = int(pad_id) if isinstance(pad_id, int) and not isinstance(pad_id, bool) else 0
    width = len(labels) if labels else int(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.dim)
    run_dir = Path(run_dir)
    with staging_dir(run_dir) as staging:
        try:
            pt2_check.save(ep, str(staging / FLOAT_PROGRAM))
        except pt2_check.Refused as e:
            raise InputError(f"the exported program cannot be served: {e}") from None
        shutil.copyfile(directory / "tokenizer.json", staging / text_contract.TOKENIZER)
        tokenizer = text_contract.load_tokenizer(str(staging / text_contract.TOKENIZER))  # the worker's own reader must take it
        inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if types else [])
        card = {
            "schema_version": SCHEMA_VERSION,
            "created": rundir.now(),
            "input": {
                "kind": "text",
                "tensors": [{"name": n, "dtype": "int64", "shape": [-1, -1]} for n in inputs],
                "max_length": max_len,
                "pad_id": pad_id,
                "pairs": bool(types or task == "classification"),
                "max_rows": max_rows,
                "tokenizer": {"file": text_contract.TOKENIZER, "vocab_size": tokenizer.get_vocab_size()},
            },
            "output": {"task": task, "classes": labels, "dim": width,
                       "pooling": pooling, "normalize": normalize,
                       "tensors": [{"name": "logits" if labels else "embedding", "dtype": "float32", "shape": [-1, width]}],
                       "kind": "logits; answers give labels and softmax probabilities" if labels else
                               f"{pooling} pooling over real tokens" + (", L2-normalized" if normalize else "")},  # fmt: skip
            "model": {"source": "huggingface", "architecture": arch or None, "model_type": cfg["model_type"],
                      "parameters": int(sum(p.numel() for p in model.parameters())),
                      "hidden_size": getattr(model.config, "hidden_size", None),
                      "layers": getattr(model.config, "num_hidden_layers", getattr(model.config, "n_layers", None)),
                      "attn_implementation": getattr(model.config, "_attn_implementation", None)},  # fmt: skip
            "import": {"directory_files": names, "batch_dimension": f"dynamic, 1 to {MAX_BATCH}",
                       "sequence_dimension": f"dynamic, 2 to {max_len}"},  # fmt: skip
            "metrics": {},
            "quantization": {"scheme": "none", "not_quantized": NOT_QUANTIZED},
            "optimization": {"candidates": {}, "plan": [{"max_rows": None, "candidate": "float-program", "ranked": ["float-program"]}],
                             "reason": NOT_QUANTIZED},  # fmt: skip
            "files": {**rundir.files_section(staging, {"candidates": {}}, {FLOAT_PROGRAM: {"sample_inputs_sha256": pt2_check.SAMPLE_INPUTS_SHA256}}),
                      text_contract.TOKENIZER: text_contract.tokenizer_entry(str(staging / text_contract.TOKENIZER))},  # fmt: skip
            "versions": {**rundir.versions(), "transformers": package_version("transformers"), "tokenizers": package_version("tokenizers")},
            "notes": [NOT_QUANTIZED],
        }
        rundir.finish(staging, run_dir, card)
    return ExportResult(run_dir, card, QuantReport(scheme="none", min_weights=0), 0.0, [NOT_QUANTIZED])


def package_version(pkg: str):
    """Return an installed package's version, or None."""
    import importlib.metadata

    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None
