"""The generation engine of a worker: requests join and leave a running batch at every step (iteration-level batching).

`Engine.add` queues a request, `Engine.step` runs one forward over every running sequence (a joining sequence's
prompt is prefilled in the same forward as the others' decode tokens, or in a forward of its own: `prefill`),
returns each sequence's new token and finishes it on a stop token, `max_tokens` or the end of its context, and
`Engine.drop` (or `Engine.sync` with the ids TorchServe still sends) frees a slot at once. Sampling uses one
``torch.Generator`` per request, so a seed gives the same tokens whatever else runs beside it. Stop *strings* are
matched on decoded text by the caller (`StopText`), who then drops the request.

`GenerationDefaults` reads generation_config.json as ``generate`` reads it for the fields honoured here
(``eos_token_id``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``max_new_tokens``); any other field set to
a value that changes ``generate``'s output (a repetition penalty, beams, …) is listed in ``ignored``.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

try:  # installed package (tests, the library)
    from .decoder_weights import eos_ids
    from .decoders import Decoder, StepBatch
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    from decoder_weights import eos_ids
    from decoders import Decoder, StepBatch

HONOURED = ("eos_token_id", "do_sample", "temperature", "top_k", "top_p", "max_new_tokens")
NO_EFFECT = {"bos_token_id", "pad_token_id", "transformers_version", "_from_model_config", "use_cache",
             "output_attentions", "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
             "decoder_start_token_id", "max_length", "cache_implementation"}
NEUTRAL = {"min_length": 0, "num_beams": 1, "repetition_penalty": 1.0, "length_penalty": 1.0, "typical_p": 1.0,
           "no_repeat_ngram_size": 0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "num_return_sequences": 1,
           "early_stopping": False, "encoder_no_repeat_ngram_size": 0, "diversity_penalty": 0.0, "num_beam_groups": 1}


class QueueFull(RuntimeError):
    """The engine's waiting queue is full: the caller answers 429 with Retry-After."""


@dataclass(frozen=True)
class SamplingParams:
    """One request's settings; None takes the model's default (`GenerationDefaults`), temperature 0 is greedy."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop_token_ids: tuple | None = None  # None: the model's eos_token_id

    def check(self) -> None:
        """Raise ValueError naming the first field out of range."""
        whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        if self.max_tokens is not None and (not whole(self.max_tokens) or self.max_tokens < 1):
            raise ValueError(f"max_tokens must be a whole number ≥ 1, got {self.max_tokens!r}")
        if self.temperature is not None and not (isinstance(self.temperature, (int, float)) and 0 <= self.temperature <= 100):
            raise ValueError(f"temperature must be a number from 0 to 100, got {self.temperature!r}")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if self.top_k is not None and (not whole(self.top_k) or self.top_k < 0):
            raise ValueError(f"top_k must be a whole number ≥ 0 (0: off), got {self.top_k!r}")
        if self.seed is not None and (not whole(self.seed) or not 0 <= self.seed < 2 ** 63):
            raise ValueError(f"seed must be a whole number from 0 to 2**63 - 1, got {self.seed!r}")
        stops = self.stop_token_ids
        if stops is not None and (not isinstance(stops, (list, tuple)) or not all(whole(t) and t >= 0 for t in stops)):
            raise ValueError(f"stop_token_ids must be a list of token ids, got {stops!r}")


@dataclass(frozen=True)
class GenerationDefaults:
    """What generation_config.json sets for the honoured fields, with ``generate``'s own defaults elsewhere."""

    eos_token_ids: tuple = ()
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    max_new_tokens: int | None = None
    ignored: tuple = ()  # "name=value" of the fields set that this engine does not apply

    @classmethod
    def from_dict(cls, config: dict, fallback_eos: tuple = ()) -> "GenerationDefaults":
        """Return the defaults of a parsed generation_config.json (`fallback_eos`: config.json's, when it sets none)."""
        if not isinstance(config, dict):
            raise ValueError("generation_config.json: expected a JSON object")
        eos = eos_ids(config["eos_token_id"], "generation_config.json") if "eos_token_id" in config else fallback_eos
        ignored = tuple(f"{k}={v!r}" for k, v in sorted(config.items())
                        if k not in HONOURED and k not in NO_EFFECT and v is not None and NEUTRAL.get(k, object()) != v)
        pick = lambda k, default: default if config.get(k) is None else config[k]  # noqa: E731
        out = cls(eos, bool(pick("do_sample", False)), float(pick("temperature", 1.0)), int(pick("top_k", 50)),
                  float(pick("top_p", 1.0)), pick("max_new_tokens", None), ignored)
        SamplingParams(out.max_new_tokens, out.temperature, out.top_p, out.top_k).check()
        return out

    @classmethod
    def from_directory(cls, directory: str | Path, fallback_eos: tuple = ()) -> "GenerationDefaults":
        """Return the defaults of `directory`/generation_config.json (``generate``'s own when the file is absent)."""
        path = Path(directory) / "generation_config.json"
        if not path.exists():
            return cls(eos_token_ids=fallback_eos)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")), fallback_eos)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from None


@dataclass
class StepOutput:
    """What one step gave a request: its new tokens (none while its prompt is still being read, or at a stop token)."""

    tokens: list
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length"
    stop_token: int | None = None  # the stop token id that ended it (not in `tokens`, as OpenAI leaves stops out)


@dataclass
class _Sequence:
    rid: object
    prompt: list
    greedy: bool
    temperature: float
    top_k: int
    top_p: float
    max_tokens: int
    stop: frozenset
    generator: torch.Generator | None
    slot: int | None = None
    cached: int = 0  # positions of this sequence already in the KV cache
    pending: list = field(default_factory=list)  # tokens to feed next
    generated: list = field(default_factory=list)
    added: float = field(default_factory=time.perf_counter)


@dataclass
class EngineStats:
    """Gauges for the metrics endpoint: sequences, KV-cache use, and the last step's tokens and time."""

    running: int
    waiting: int
    slots_used: int
    slots: int
    kv_tokens_used: int
    kv_tokens: int
    last_prefill_tokens: int
    last_decode_tokens: int
    last_step_s: float


class Engine:
    """Iteration-level batching over a `Decoder`: `add`, `step`, `drop`, `sync`; one KV-cache slot per running request.

    context: the most tokens a sequence holds, prompt and output together (the KV cache keeps context - 1 positions:
    the last token is never fed back). prefill: "mixed" reads a joining prompt in the same forward as the running
    sequences' decode tokens (one pass over the weights), "separate" in a forward of its own. max_prefill_tokens
    bounds the prompt tokens read per step (a long prompt is read in chunks) so running streams keep their pace.
    """

    def __init__(self, decoder: Decoder, slots: int = 16, context: int | None = None,
                 defaults: GenerationDefaults | None = None, queue_limit: int = 64, prefill: str = "mixed",
                 max_prefill_tokens: int | None = None):
        if prefill not in ("mixed", "separate"):
            raise ValueError(f"prefill must be 'mixed' or 'separate', got {prefill!r}")
        context = context or decoder.spec.max_positions
        if context < 2:
            raise ValueError(f"context must be at least 2 tokens (a prompt token and an output token), got {context}")
        self.decoder, self.context, self.prefill, self.queue_limit = decoder, context, prefill, queue_limit
        self.max_prefill_tokens = max_prefill_tokens
        self.defaults = defaults or GenerationDefaults(eos_token_ids=decoder.spec.eos_token_ids)
        self.cache = decoder.new_cache(slots, context - 1)
        self.running: dict = {}
        self.waiting: deque = deque()
        self._last = (0, 0, 0.0)

    def add(self, request_id, prompt_ids: list, params: SamplingParams | None = None) -> None:
        """Queue a request; raises ValueError naming what is wrong (prompt, params, a reused id), or `QueueFull`."""
        params = params or SamplingParams()
        params.check()
        if request_id in self.running or any(s.rid == request_id for s in self.waiting):
            raise ValueError(f"request id {request_id!r} is already running")
        vocab = self.decoder.spec.vocab
        if not isinstance(prompt_ids, (list, tuple)) or not prompt_ids:
            raise ValueError("the prompt must hold at least one token id")
        bad = next((t for t in prompt_ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise ValueError(f"prompt token {bad!r} is not a token id of this model (0 to {vocab - 1})")
        if len(prompt_ids) >= self.context:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; this model's context holds {self.context} "
                             f"tokens, prompt and output together (at most {self.context - 1} prompt tokens)")
        if len(self.waiting) >= self.queue_limit + len(self.cache.free):  # the free slots take the first waiting ones
            raise QueueFull(f"{len(self.running)} requests running and {len(self.waiting)} waiting (the limit)")
        d = self.defaults
        sample = params.temperature != 0 and (params.temperature is not None or d.do_sample)
        stop = d.eos_token_ids if params.stop_token_ids is None else tuple(params.stop_token_ids)
        generator = None
        if sample:
            generator = torch.Generator()
            generator.manual_seed(params.seed if params.seed is not None else int(torch.randint(0, 2 ** 62, ())))
        pick = lambda v, default: default if v is None else v  # noqa: E731
        self.waiting.append(_Sequence(
            request_id, list(prompt_ids), not sample, float(pick(params.temperature, d.temperature)),
            pick(params.top_k, d.top_k), float(pick(params.top_p, d.top_p)),
            pick(params.max_tokens, d.max_new_tokens) or self.context, frozenset(stop), generator))

    def drop(self, request_id) -> bool:
        """Forget a request (a client gone, a stop string matched); return whether it was known. Its slot is free at once."""
        seq = self.running.pop(request_id, None)
        if seq is not None:
            self.cache.give(seq.slot)
            return True
        for s in self.waiting:
            if s.rid == request_id:
                self.waiting.remove(s)
                return True
        return False

    def sync(self, request_ids) -> list:
        """Drop every request not in `request_ids` (TorchServe leaves a disconnected client's id out); return those dropped."""
        keep = set(request_ids)
        gone = [r for r in [*self.running, *(s.rid for s in self.waiting)] if r not in keep]
        for r in gone:
            self.drop(r)
        return gone

    def stats(self) -> EngineStats:
        """Return the engine's gauges now."""
        used = sum(s.cached for s in self.running.values())
        return EngineStats(len(self.running), len(self.waiting), len(self.running), self.cache.slots, used,
                           self.cache.slots * self.cache.max_len, *self._last)

    def step(self) -> dict:
        """Run one forward over every running sequence (admitting waiting ones to free slots); return {id: StepOutput}."""
        started = time.perf_counter()
        while self.waiting and self.cache.free:
            seq = self.waiting.popleft()
            seq.slot, seq.pending = self.cache.take(), list(seq.prompt)
            self.running[seq.rid] = seq
        if not self.running:
            return {}
        budget = self.max_prefill_tokens
        feeds = []  # (sequence, tokens fed now)
        for seq in self.running.values():
            n = len(seq.pending)
            if seq.cached and n == 1 or budget is None:
                feeds.append((seq, seq.pending))
            elif budget > 0:
                feeds.append((seq, seq.pending[:budget]))
                budget -= len(feeds[-1][1])
        joining = [f for f in feeds if len(f[1]) > 1 or not f[0].cached]
        decoding = [f for f in feeds if not (len(f[1]) > 1 or not f[0].cached)]
        groups = [joining, decoding] if self.prefill == "separate" and joining and decoding else [decoding + joining]
        out = {}
        for group in groups:
            logits = self.decoder.forward(self.cache, StepBatch.build([(s.slot, s.cached, t) for s, t in group]))
            for (seq, fed), row in zip(group, logits):
                seq.cached += len(fed)
                seq.pending = seq.pending[len(fed):]
                out[seq.rid] = StepOutput([]) if seq.pending else self._accept(seq, self._choose(seq, row))
        prefill = sum(len(t) for s, t in joining)
        self._last = (prefill, len(decoding), time.perf_counter() - started)
        return out

    def _choose(self, seq: _Sequence, row: torch.Tensor) -> int:
        if seq.greedy:
            return int(row.argmax())
        row = row / max(seq.temperature, 1e-5)
        if 0 < seq.top_k < row.numel():
            row = row.masked_fill(row < row.topk(seq.top_k).values[-1], -math.inf)
        probs = torch.softmax(row, dim=-1)
        if seq.top_p < 1.0:  # keep the smallest set of most likely tokens whose mass reaches top_p (at least one)
            sorted_p, order = probs.sort(descending=True)
            drop = (sorted_p.cumsum(0) - sorted_p) >= seq.top_p
            probs = probs.scatter(0, order, sorted_p.masked_fill(drop, 0.0))
        cdf = probs.to(torch.float64).cumsum(0)
        u = torch.rand((), generator=seq.generator, dtype=torch.float64) * cdf[-1]  # one draw a step, whatever the batch
        return min(int(torch.searchsorted(cdf, u, right=True)), row.numel() - 1)

    def _accept(self, seq: _Sequence, token: int) -> StepOutput:
        if token in seq.stop:
            self.drop(seq.rid)
            return StepOutput([], True, "stop", token)
        seq.generated.append(token)
        seq.pending = [token]
        if len(seq.generated) >= seq.max_tokens or len(seq.prompt) + len(seq.generated) >= self.context:
            self.drop(seq.rid)
            return StepOutput([token], True, "length")
        return StepOutput([token])


class StopText:
    """Stop strings on streamed text: `feed` returns the text safe to send now and whether a stop string appeared."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        """Return (text to send, stopped): text up to a stop string, holding back a tail that may begin one."""
        text = self.held + delta
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return text[:min(hits)], True
        keep = max((n for s in self.stops for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])),
                   default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        """Return the held-back tail at the end of a stream that stopped for another reason."""
        out, self.held = self.held, ""
        return out
