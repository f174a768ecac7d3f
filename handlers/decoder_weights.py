"""A Hugging Face causal-LM directory read without transformers: config.json → `DecoderSpec`, *.safetensors → weights.

Inside a TorchServe worker there is no ``transformers``, so the decoder architectures are our own plain-PyTorch code
(handlers/decoders.py). This module maps each supported architecture's tensor names explicitly onto one canonical
layout (fused q/k/v, fused gate/up, [out, in] matrices), checks every shape against the config, and refuses
unknown, missing or extra tensors by name. Weights are read with ``safetensors`` only (never a pickle), the config
is plain JSON, and no code from the directory ever runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

PICKLED = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
ROPE_FAMILY = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "gemma": "gemma"}
SUPPORTED = (*ROPE_FAMILY, "gpt2")
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_fast": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


class DecoderError(ValueError):
    """A model directory this worker cannot run, with a message naming the file, key or tensor at fault."""


@dataclass(frozen=True)
class DecoderSpec:
    """The shape and arithmetic of one decoder, read from config.json (one dataclass for every architecture)."""

    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    inner: int
    norm: str  # "rms" | "layer"
    eps: float
    positions: str  # "rope" | "learned"
    max_positions: int
    activation: str  # "silu" | "gelu_tanh" | "gelu" | "relu"
    gated: bool  # SwiGLU-style gate * up
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    tied: bool
    rope_theta: float = 10000.0
    windows: tuple = ()  # per layer: None (full causal attention) or the sliding-window width
    attn_scales: tuple = ()  # per layer: the softmax scale
    norm_offset: float = 0.0  # Gemma's RMSNorm multiplies by (1 + weight)
    embed_scale: float = 1.0  # Gemma scales the embeddings by sqrt(hidden)
    eos_token_ids: tuple = field(default=())


def _need(config: dict, key: str, kind=int, minimum=1):
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
        raise DecoderError(f"config.json: {key!r} must be a {kind.__name__} ≥ {minimum}, got {value!r}")
    return value


def eos_ids(value, where: str) -> tuple:
    """Return eos_token_id (an int, a list of ints or null, as generation_config.json holds it) as a tuple of ints."""
    if value is None:
        return ()
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items):
        raise DecoderError(f"{where}: eos_token_id must be a token id or a list of token ids, got {value!r}")
    return tuple(items)


def _rope_theta(config: dict) -> float:
    params = config.get("rope_parameters") or {}
    legacy = config.get("rope_scaling")
    kind = params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else None
    if kind != "default" or legacy not in (None, {}) or config.get("partial_rotary_factor", 1.0) != 1.0:
        raise DecoderError(f"config.json: only plain rotary positions are supported (rope_type 'default'), got "
                           f"rope_parameters={params!r} rope_scaling={legacy!r}")
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    if not isinstance(theta, (int, float)) or isinstance(theta, bool) or theta <= 0:
        raise DecoderError(f"config.json: rope_theta must be a positive number, got {theta!r}")
    return float(theta)


def _windows(config: dict, layers: int) -> tuple:
    window = config.get("sliding_window")
    if config.get("model_type") == "qwen2" and not config.get("use_sliding_window", False):
        window = None
    if window is None:
        return (None,) * layers
    window = _need(config, "sliding_window")
    kinds = config.get("layer_types") or ["sliding_attention"] * layers
    if len(kinds) != layers or not set(kinds) <= {"sliding_attention", "full_attention"}:
        raise DecoderError(f"config.json: layer_types must list 'sliding_attention'/'full_attention' for each of the "
                           f"{layers} layers, got {kinds!r}")
    return tuple(window if k == "sliding_attention" else None for k in kinds)


def read_spec(config: dict) -> DecoderSpec:
    """Return the `DecoderSpec` of a parsed config.json, or raise `DecoderError` naming the unsupported key."""
    if not isinstance(config, dict):
        raise DecoderError("config.json: expected a JSON object")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        raise DecoderError(f"config.json: model_type {model_type!r} is not supported here; supported: "
                           f"{', '.join(SUPPORTED)}")
    eos = eos_ids(config.get("eos_token_id"), "config.json")
    if model_type == "gpt2":
        hidden, layers, heads = _need(config, "n_embd"), _need(config, "n_layer"), _need(config, "n_head")
        if hidden % heads:
            raise DecoderError(f"config.json: n_embd {hidden} is not a multiple of n_head {heads}")
        act = config.get("activation_function", "gelu_new")
        scale = 1 / math.sqrt(hidden // heads) if config.get("scale_attn_weights", True) else 1.0
        by_layer = config.get("scale_attn_by_inverse_layer_idx", False)
        if config.get("add_cross_attention"):
            raise DecoderError("config.json: add_cross_attention is not supported (a decoder-only model is expected)")
        return DecoderSpec(model_type, _need(config, "vocab_size"), hidden, layers, heads, heads, hidden // heads,
                           config.get("n_inner") or 4 * hidden, "layer", float(config.get("layer_norm_epsilon", 1e-5)),
                           "learned", _need(config, "n_positions"), _activation(act), False, True, True, True,
                           bool(config.get("tie_word_embeddings", True)), windows=(None,) * layers,
                           attn_scales=tuple(scale / (i + 1 if by_layer else 1) for i in range(layers)),
                           eos_token_ids=eos)
    hidden, layers, heads = _need(config, "hidden_size"), _need(config, "num_hidden_layers"), _need(config, "num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    if not isinstance(kv_heads, int) or heads % kv_heads:
        raise DecoderError(f"config.json: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads!r}")
    if config.get("pretraining_tp", 1) != 1:
        raise DecoderError(f"config.json: pretraining_tp {config.get('pretraining_tp')!r} is not supported (1 only)")
    bias = bool(config.get("attention_bias", False))
    family = ROPE_FAMILY[model_type]
    if config.get("use_bidirectional_attention"):
        raise DecoderError("config.json: use_bidirectional_attention is not supported (causal attention only)")
    gemma = family == "gemma"
    act = config.get("hidden_activation") or config.get("hidden_act", "silu") if gemma else config.get("hidden_act", "silu")
    return DecoderSpec(model_type, _need(config, "vocab_size"), hidden, layers, heads, kv_heads, head_dim,
                       _need(config, "intermediate_size"), "rms", float(config.get("rms_norm_eps", 1e-6)), "rope",
                       _need(config, "max_position_embeddings"), _activation(act), True,
                       bias or family == "qwen2", bias, bool(config.get("mlp_bias", False)),
                       bool(config.get("tie_word_embeddings", gemma)), _rope_theta(config), _windows(config, layers),
                       (1 / math.sqrt(head_dim),) * layers, eos_token_ids=eos, norm_offset=1.0 if gemma else 0.0,
                       embed_scale=hidden ** 0.5 if gemma else 1.0)


def _activation(name) -> str:
    if name not in ACTIVATIONS:
        raise DecoderError(f"config.json: activation {name!r} is not supported; supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def expected_names(spec: DecoderSpec) -> dict[str, tuple]:
    """Return {checkpoint tensor name: shape} that a directory of this spec must hold (lm_head only when untied)."""
    h, q, kv, inner = spec.hidden, spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim, spec.inner
    out = {}
    if spec.model_type == "gpt2":
        out.update({"transformer.wte.weight": (spec.vocab, h), "transformer.wpe.weight": (spec.max_positions, h),
                    "transformer.ln_f.weight": (h,), "transformer.ln_f.bias": (h,)})
        for i in range(spec.layers):
            p = f"transformer.h.{i}."
            out.update({p + "ln_1.weight": (h,), p + "ln_1.bias": (h,), p + "ln_2.weight": (h,), p + "ln_2.bias": (h,),
                        p + "attn.c_attn.weight": (h, 3 * h), p + "attn.c_attn.bias": (3 * h,),
                        p + "attn.c_proj.weight": (h, h), p + "attn.c_proj.bias": (h,),
                        p + "mlp.c_fc.weight": (h, inner), p + "mlp.c_fc.bias": (inner,),
                        p + "mlp.c_proj.weight": (inner, h), p + "mlp.c_proj.bias": (h,)})
        if not spec.tied:
            out["lm_head.weight"] = (spec.vocab, h)
        return out
    out.update({"model.embed_tokens.weight": (spec.vocab, h), "model.norm.weight": (h,)})
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                    p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                    p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                    p + "mlp.gate_proj.weight": (inner, h), p + "mlp.up_proj.weight": (inner, h),
                    p + "mlp.down_proj.weight": (h, inner)})
        if spec.qkv_bias:
            out.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                        p + "self_attn.v_proj.bias": (kv,)})
        if spec.o_bias:
            out[p + "self_attn.o_proj.bias"] = (h,)
        if spec.mlp_bias:
            out.update({p + "mlp.gate_proj.bias": (inner,), p + "mlp.up_proj.bias": (inner,), p + "mlp.down_proj.bias": (h,)})
    if not spec.tied:
        out["lm_head.weight"] = (spec.vocab, h)
    return out


def read_tensors(directory: Path, spec: DecoderSpec) -> dict[str, torch.Tensor]:
    """Return every checkpoint tensor of `directory` as float32, after checking names and shapes against `spec`."""
    from safetensors import SafetensorError, safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLED)
        why = f"; pickled weights are never read ({', '.join(pickled)}): convert them to safetensors" if pickled else ""
        raise DecoderError(f"{directory}: no *.safetensors weights{why}")
    expected = expected_names(spec)
    ignorable = {"lm_head.weight"} if spec.tied else set()  # a tied checkpoint may still carry its (unused) head
    found, tensors = {}, {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    if name in found:
                        raise DecoderError(f"{path.name}: tensor {name!r} is also in {found[name]}")
                    found[name] = path.name
                    if name in ignorable:
                        continue
                    if name not in expected:
                        raise DecoderError(f"{path.name}: unexpected tensor {name!r} for a {spec.model_type} model")
                    shape = tuple(f.get_slice(name).get_shape())
                    if shape != expected[name]:
                        raise DecoderError(f"{path.name}: tensor {name!r} has shape {list(shape)}, the config "
                                           f"implies {list(expected[name])}")
                    tensors[name] = f.get_tensor(name)
        except (SafetensorError, OSError, ValueError) as e:
            if isinstance(e, DecoderError):
                raise
            raise DecoderError(f"{path.name}: not a readable safetensors file ({e})") from None
    missing = sorted(set(expected) - set(tensors))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DecoderError(f"{directory}: missing tensor(s) {', '.join(missing[:3])}{more}")
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise DecoderError(f"{found[name]}: tensor {name!r} has dtype {t.dtype}, a float type is expected")
    return {k: v.to(torch.float32) for k, v in tensors.items()}


def read_config(directory: Path) -> dict:
    """Return config.json of `directory` parsed as plain JSON, or raise `DecoderError` naming the file."""
    path = directory / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DecoderError(f"{path}: cannot read a JSON config ({e})") from None
