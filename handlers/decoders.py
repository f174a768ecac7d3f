"""Our own plain-PyTorch decoders (Llama/Mistral, Qwen2, Gemma, GPT-2) and their KV cache, for iteration-level batching.

One forward serves every architecture: `DecoderSpec` (handlers/decoder_weights.py) says which norm, positions,
activation and biases a model uses, and the weights arrive in one canonical layout (fused q/k/v, fused gate/up,
[out, in] matrices). A step is a flat batch: each sequence brings its new tokens (a whole prompt when it joins,
one token when it decodes), the position of its first new token and its slot in the `KVCache`
``[layers, slots, kv_heads, max_len, head_dim]``. Linear layers run on the flat tokens (no padding); only attention
groups them: the decoding sequences (one new token each) in one call, each prompt part in its own, with explicit
per-row causal (and sliding-window) masks, so sequences of different lengths and ages share one forward and no
sequence is padded to another's length. float32 throughout.

Weights are float32, or int8 with one scale per output row when built with ``weights="int8-weight"`` (or after
`Decoder.quantize_weights`): every canonical matrix (q/k/v, o, gate/up, down) and the output head run through
handlers/int8_matmul.py's `Int8WeightLinear`, a quarter of float's bytes read per token. The head is quantized
too because it is the largest single matrix a step reads (136 M of a 0.5 B model's weights when the vocabulary is
152 K). With tied embeddings the embedding rows are read from that same int8 matrix (one copy, dequantized row by
row); an untied embedding table stays float32 (a step reads one row per token of it, so its size costs memory,
not time). Norms, positions and the KV cache stay float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

try:  # installed package (tests, the library)
    from .decoder_weights import DecoderError, DecoderSpec, read_config, read_spec, read_tensors
    from .int8_matmul import Int8WeightLinear, quantize_weight
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    from decoder_weights import DecoderError, DecoderSpec, read_config, read_spec, read_tensors
    from int8_matmul import Int8WeightLinear, quantize_weight

__all__ = ["AttentionGroup", "Decoder", "DecoderError", "KVCache", "StepBatch", "WEIGHTS", "load_decoder"]

WEIGHTS = ("float", "int8-weight")  # the weight forms a Decoder runs (the card's quantization.scheme for generation)
MATRICES = (("qkv_w", "qkv_b"), ("o_w", "o_b"), ("up_w", "up_b"), ("down_w", "down_b"))  # a layer's (weight, bias)


class KVCache:
    """Preallocated keys and values of every slot, ``[layers, slots, kv_heads, max_len, head_dim]``, and its free slots."""

    def __init__(self, spec: DecoderSpec, slots: int, max_len: int):
        if slots < 1 or max_len < 2:
            raise ValueError(f"a KV cache needs at least 1 slot and 2 positions, got slots={slots} max_len={max_len}")
        shape = (spec.layers, slots, spec.kv_heads, max_len, spec.head_dim)
        self.k, self.v = torch.zeros(shape), torch.zeros(shape)
        self.slots, self.max_len = slots, max_len
        self.free = list(range(slots - 1, -1, -1))

    def take(self) -> int | None:
        """Return a free slot (lowest first), or None when every slot is in use."""
        return self.free.pop() if self.free else None

    def give(self, slot: int) -> None:
        """Return `slot` to the free list (its stale keys are masked out, never read, by the next sequence)."""
        if slot in self.free or not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is not in use")
        self.free.append(slot)
        self.free.sort(reverse=True)

    @property
    def nbytes(self) -> int:
        """Return the bytes the cache holds (keys and values)."""
        return 2 * self.k.numel() * self.k.element_size()


@dataclass
class AttentionGroup:
    """Sequences whose attention runs in one call: a run of single-token (decoding) sequences, or one prompt part."""

    start: int  # the group's tokens are tokens[start:end] of the step, `width` per sequence
    end: int
    width: int
    slots: torch.Tensor  # [G] the sequences' KV-cache slots
    first: int | None  # the first slot when the slots are consecutive (keys are then read as a view, not copied)
    query_pos: torch.Tensor  # [G, width]
    keys: int  # L, how many cache positions attention reads

    def mask(self, window: int | None) -> torch.Tensor:
        """Return the boolean attention mask [G, 1, width, L]: causal per row, within `window` positions when given."""
        kpos = torch.arange(self.keys)[None, None, :]
        q = self.query_pos[:, :, None]
        allowed = kpos <= q
        if window is not None:
            allowed &= kpos > q - window
        return allowed[:, None]


@dataclass
class StepBatch:
    """One forward's inputs: flat tokens with their positions and slots, and how attention groups them (no padding)."""

    tokens: torch.Tensor  # [T] token ids, the sequences' new tokens one after another
    positions: torch.Tensor  # [T]
    token_slots: torch.Tensor  # [T]
    last: torch.Tensor  # [B] flat index of each sequence's last new token (its logits are returned)
    groups: list  # [AttentionGroup], covering tokens[0:T] in order

    @classmethod
    def build(cls, seqs: list[tuple[int, int, list[int]]]) -> "StepBatch":
        """Return the batch of sequences given as (slot, position of the first new token, new token ids).

        Consecutive single-token sequences share one attention call; a sequence with several new tokens (a prompt)
        has its own, so no sequence is padded to another's length.
        """
        tokens, positions, slots, last, runs = [], [], [], [], []
        for slot, start, new in seqs:
            if len(new) == 1 and runs and runs[-1][0] == 1:
                runs[-1][1].append((slot, start, len(tokens)))
            else:
                runs.append((len(new), [(slot, start, len(tokens))]))
            tokens += new
            positions += range(start, start + len(new))
            slots += [slot] * len(new)
            last.append(len(tokens) - 1)
        groups = []
        for width, members in runs:
            g_slots = [m[0] for m in members]
            consecutive = g_slots == list(range(g_slots[0], g_slots[0] + len(g_slots)))
            query_pos = torch.tensor([[st + j for j in range(width)] for _, st, _ in members], dtype=torch.long)
            groups.append(AttentionGroup(members[0][2], members[-1][2] + width, width, torch.tensor(g_slots),
                                         g_slots[0] if consecutive else None, query_pos, int(query_pos.max()) + 1))
        as_long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
        return cls(as_long(tokens), as_long(positions), as_long(slots), as_long(last), groups)


def _norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kind: str, eps: float) -> torch.Tensor:
    if kind == "layer":
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _act(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "silu":
        return F.silu(x)
    if kind == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    return F.gelu(x) if kind == "gelu" else F.relu(x)


def _linear(x: torch.Tensor, w, b: torch.Tensor | None) -> torch.Tensor:
    if isinstance(w, Int8WeightLinear):  # its bias is inside it
        return w(x)
    return F.linear(x, w, b)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def canonical(spec: DecoderSpec, t: dict[str, torch.Tensor]) -> tuple[dict, list[dict]]:
    """Return (model-wide tensors, per-layer tensors) in the canonical layout, from checked checkpoint tensors."""
    if spec.model_type == "gpt2":
        top = {"embed": t["transformer.wte.weight"], "pos_embed": t["transformer.wpe.weight"],
               "norm_w": t["transformer.ln_f.weight"], "norm_b": t["transformer.ln_f.bias"]}
        top["head"] = top["embed"] if spec.tied else t["lm_head.weight"]
        layers = []
        for i in range(spec.layers):
            p = f"transformer.h.{i}."
            w = lambda n: t[p + n].t().contiguous()  # noqa: E731  (GPT-2's Conv1D stores [in, out])
            layers.append({"ln1_w": t[p + "ln_1.weight"], "ln1_b": t[p + "ln_1.bias"], "qkv_w": w("attn.c_attn.weight"),
                           "qkv_b": t[p + "attn.c_attn.bias"], "o_w": w("attn.c_proj.weight"), "o_b": t[p + "attn.c_proj.bias"],
                           "ln2_w": t[p + "ln_2.weight"], "ln2_b": t[p + "ln_2.bias"], "up_w": w("mlp.c_fc.weight"),
                           "up_b": t[p + "mlp.c_fc.bias"], "down_w": w("mlp.c_proj.weight"), "down_b": t[p + "mlp.c_proj.bias"]})
        return top, layers
    offset = lambda w: w + spec.norm_offset if spec.norm_offset else w  # noqa: E731  (Gemma: x̂ · (1 + w))
    top = {"embed": t["model.embed_tokens.weight"], "pos_embed": None, "norm_w": offset(t["model.norm.weight"]), "norm_b": None}
    top["head"] = top["embed"] if spec.tied else t["lm_head.weight"]
    layers = []
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        get = lambda n: t.get(p + n)  # noqa: E731
        cat = lambda *names: None if get(names[0]) is None else torch.cat([get(n) for n in names])  # noqa: E731
        layers.append({"ln1_w": offset(get("input_layernorm.weight")), "ln1_b": None,
                       "qkv_w": cat("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
                       "qkv_b": cat("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
                       "o_w": get("self_attn.o_proj.weight"), "o_b": get("self_attn.o_proj.bias"),
                       "ln2_w": offset(get("post_attention_layernorm.weight")), "ln2_b": None,
                       "up_w": cat("mlp.gate_proj.weight", "mlp.up_proj.weight"),
                       "up_b": cat("mlp.gate_proj.bias", "mlp.up_proj.bias"),
                       "down_w": get("mlp.down_proj.weight"), "down_b": get("mlp.down_proj.bias")})
    return top, layers


class Decoder:
    """A causal LM's forward over a `StepBatch`, writing the new keys and values into a `KVCache`."""

    def __init__(self, spec: DecoderSpec, tensors: dict[str, torch.Tensor], weights: str = "float",
                 scheme: str = "channel", path: str | None = None):
        if weights not in WEIGHTS:
            raise ValueError(f"weights: {weights!r} is not a weight form of the decoder; use one of {WEIGHTS}")
        self.spec = spec
        self.weights = "float"
        self.top, self.layers = canonical(spec, tensors)
        half = torch.arange(0, spec.head_dim, 2, dtype=torch.int64).to(torch.float32) / spec.head_dim
        self.inv_freq = 1.0 / (spec.rope_theta ** half)
        if weights == "int8-weight":
            self.quantize_weights(scheme, path)

    def quantize_weights(self, scheme: str = "channel", path: str | None = None) -> "Decoder":
        """Replace every canonical matrix and the head by int8 weights with per-row scales (module docstring); return self.

        scheme: "channel" or "pow2" (handlers/int8_matmul.py); path: the kernel, None for this CPU's best.
        The float matrices are dropped (a caller holding the checkpoint's tensors keeps its own references).
        """
        if self.weights != "float":
            raise ValueError(f"this decoder's weights are already {self.weights}")
        to_int8 = lambda w, b=None: Int8WeightLinear(quantize_weight(w, scheme), b, path)  # noqa: E731
        for layer in self.layers:
            for w, b in MATRICES:
                layer[w], layer[b] = to_int8(layer[w], layer[b]), None
        head = to_int8(self.top["head"])
        if self.top["head"] is self.top["embed"]:
            self.top["embed"] = head  # tied: embedding rows read from the int8 head (one copy)
        self.top["head"] = head
        self.weights = "int8-weight"
        return self

    @property
    def weight_bytes(self) -> int:
        """Return the bytes of the weights (a tied head counted once): what one decode step reads at the least."""
        seen = {id(t): t for d in (self.top, *self.layers) for t in d.values() if t is not None}
        return sum(t.nbytes if isinstance(t, Int8WeightLinear) else t.numel() * t.element_size() for t in seen.values())

    def score(self, tokens: list[int]) -> torch.Tensor:
        """Return the logits [T, vocab] after every token of one sequence (teacher forcing), read in one forward."""
        batch = StepBatch.build([(0, 0, list(tokens))])
        batch.last = torch.arange(len(tokens))
        return self.forward(self.new_cache(1, max(len(tokens), 2)), batch)

    def new_cache(self, slots: int, max_len: int) -> KVCache:
        """Return an empty KV cache of `slots` sequences of up to `max_len` tokens each, checked against the model."""
        if self.spec.positions == "learned" and max_len > self.spec.max_positions:
            raise ValueError(f"max_len {max_len} exceeds the model's {self.spec.max_positions} learned positions")
        return KVCache(self.spec, slots, max_len)

    @torch.inference_mode()
    def forward(self, cache: KVCache, batch: StepBatch) -> torch.Tensor:
        """Return the logits [B, vocab] after each sequence's last new token; writes the new keys/values to `cache`."""
        s, top = self.spec, self.top
        T = len(batch.tokens)
        embed = top["embed"]
        x = embed.rows(batch.tokens) if isinstance(embed, Int8WeightLinear) else F.embedding(batch.tokens, embed)
        if s.embed_scale != 1.0:
            x = x * torch.tensor(s.embed_scale, dtype=x.dtype)
        if s.positions == "learned":
            x = x + F.embedding(batch.positions, top["pos_embed"])
        else:
            freqs = batch.positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
            cos, sin = emb.cos(), emb.sin()
        masks = [{w: g.mask(w) for w in set(s.windows)} for g in batch.groups]
        q_size, kv_size = s.heads * s.head_dim, s.kv_heads * s.head_dim
        for i, layer in enumerate(self.layers):
            h = _norm(x, layer["ln1_w"], layer["ln1_b"], s.norm, s.eps)
            qkv = _linear(h, layer["qkv_w"], layer["qkv_b"])
            q = qkv[:, :q_size].view(T, s.heads, s.head_dim)
            k = qkv[:, q_size:q_size + kv_size].view(T, s.kv_heads, s.head_dim)
            v = qkv[:, q_size + kv_size:].view(T, s.kv_heads, s.head_dim)
            if s.positions == "rope":
                q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            kc, vc = cache.k[i], cache.v[i]
            kc[batch.token_slots, :, batch.positions] = k
            vc[batch.token_slots, :, batch.positions] = v
            parts = []
            for g, g_masks in zip(batch.groups, masks):
                n = len(g.slots)
                if g.first is not None:  # a view, no copy (always so at batch 1)
                    keys, values = kc[g.first:g.first + n, :, :g.keys], vc[g.first:g.first + n, :, :g.keys]
                else:
                    keys, values = kc[g.slots, :, :g.keys], vc[g.slots, :, :g.keys]
                qg = q[g.start:g.end].view(n, g.width, s.heads, s.head_dim).transpose(1, 2)
                att = F.scaled_dot_product_attention(qg, keys, values, attn_mask=g_masks[s.windows[i]],
                                                     scale=s.attn_scales[i], enable_gqa=s.kv_heads != s.heads)
                parts.append(att.transpose(1, 2).reshape(g.end - g.start, q_size))
            att = parts[0] if len(parts) == 1 else torch.cat(parts)
            x = x + _linear(att, layer["o_w"], layer["o_b"])
            h = _norm(x, layer["ln2_w"], layer["ln2_b"], s.norm, s.eps)
            up = _linear(h, layer["up_w"], layer["up_b"])
            if s.gated:
                gate, up = up.chunk(2, dim=-1)
                up = _act(gate, s.activation) * up
            else:
                up = _act(up, s.activation)
            x = x + _linear(up, layer["down_w"], layer["down_b"])
        x = _norm(x.index_select(0, batch.last), top["norm_w"], top["norm_b"], s.norm, s.eps)
        return _linear(x, top["head"], None)


def load_decoder(directory: str | Path, weights: str = "float", scheme: str = "channel") -> Decoder:
    """Return the `Decoder` of a Hugging Face causal-LM directory (config.json + *.safetensors), checked by name.

    weights: "float" or "int8-weight" (the card's quantization.scheme: int8 weights quantized here, at load).
    """
    if weights not in WEIGHTS:
        raise DecoderError(f"weights: {weights!r} is not a weight form of the decoder; use one of {WEIGHTS}")
    directory = Path(directory)
    if not directory.is_dir():
        raise DecoderError(f"{directory}: not a directory")
    spec = read_spec(read_config(directory))
    return Decoder(spec, read_tensors(directory, spec), weights, scheme)
