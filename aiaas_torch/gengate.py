"""The generation gate: does an int8-weight decoder still choose the float decoder's tokens? (issue 28)

Two figures, both from token ids (the caller tokenizes its calibration texts; a small built-in set is used when none
are given, and the report says so):

  agreement        the float decoder generates greedily `new_tokens` tokens after each prompt; the int8 decoder reads
                   the same prompt and tokens (teacher forcing, so one early difference does not decide the rest) and
                   the figure is the share of those positions where its own greedy choice is the float one's token.
  log-likelihood   the mean log-probability per token (nats) each decoder gives a held-out token sequence; the gate
                   reports int8's minus float's (negative: int8 finds the text less likely).

`generation_gate` returns a `GenerationGateReport`; it passes when agreement ≥ `min_agreement` (default 0.95) and,
when `max_loglik_drop` is given, the log-likelihood falls by no more than that.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .errors import InputError
from .handlers.decoders import Decoder
from .handlers.generation import Engine, SamplingParams

MIN_AGREEMENT = 0.95
NEW_TOKENS = 128
BUILTIN_PROMPTS = 8
BUILTIN_SEED = 28  # the built-in token ids are drawn from this seed: the same set on every host


@dataclass(frozen=True)
class GenerationGateReport:
    """The gate's figures (agreement, log-likelihoods), its thresholds, and whether the int8 decoder passed."""

    agreement: float  # share of teacher-forced positions where int8's greedy token is float's
    positions: int  # how many positions that share is over
    prompts: int
    new_tokens: int
    loglik_float: float  # mean log-probability per held-out token, nats
    loglik_int8: float
    loglik_change: float  # int8 minus float
    heldout_tokens: int
    min_agreement: float
    max_loglik_drop: float | None
    builtin: bool  # True when the built-in prompts (and held-out sequence) were used
    passed: bool

    def as_dict(self) -> dict:
        """Return the report as a plain dict (for the model card)."""
        return asdict(self)

    def summary(self) -> str:
        """Return one line naming the figures and the verdict."""
        verdict = "passed" if self.passed else "FAILED"
        drop = "" if self.max_loglik_drop is None else f", allowed drop {self.max_loglik_drop:.4f}"
        return (f"generation gate {verdict}: greedy-token agreement {self.agreement:.4f} over {self.prompts} prompts × "
                f"{self.new_tokens} tokens (needs ≥ {self.min_agreement}); held-out log-likelihood per token "
                f"{self.loglik_float:.4f} float → {self.loglik_int8:.4f} int8 (change {self.loglik_change:+.4f}{drop})"
                + (" [built-in prompts]" if self.builtin else ""))


def builtin_tokens(vocab: int, count: int = BUILTIN_PROMPTS, seed: int = BUILTIN_SEED) -> list[list[int]]:
    """Return `count` token-id prompts of 4 to 11 tokens drawn from a fixed seed (the built-in calibration set)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (4 + i % 8,), generator=g).tolist() for i in range(count)]


def _check_ids(name: str, seqs: list, vocab: int, least: int) -> None:
    if not isinstance(seqs, (list, tuple)) or not seqs:
        raise InputError(f"{name}: expected a non-empty list of token-id lists, got {type(seqs).__name__}")
    for i, s in enumerate(seqs):
        if not isinstance(s, (list, tuple)) or len(s) < least:
            raise InputError(f"{name}[{i}]: expected a list of at least {least} token ids")
        bad = next((t for t in s if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise InputError(f"{name}[{i}]: {bad!r} is not a token id of this model (0 to {vocab - 1})")


def greedy(decoder: Decoder, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Return each prompt's `new_tokens` greedy tokens (no stop token), the prompts run side by side in one engine."""
    longest = max(len(p) for p in prompts) + new_tokens
    engine = Engine(decoder, slots=len(prompts), context=longest)
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, stop_token_ids=())
    for i, p in enumerate(prompts):
        engine.add(i, list(p), params)
    out = {i: [] for i in range(len(prompts))}
    while engine.running or engine.waiting:
        for rid, step in engine.step().items():
            out[rid] += step.tokens
    return [out[i] for i in range(len(prompts))]


def mean_loglik(decoder: Decoder, tokens: list[int]) -> float:
    """Return the mean log-probability (nats) the decoder gives each token of `tokens` after the ones before it."""
    logp = torch.log_softmax(decoder.score(tokens)[:-1].double(), dim=-1)
    return float(logp.gather(1, torch.tensor(tokens[1:])[:, None]).mean())


def generation_gate(reference: Decoder, candidate: Decoder, prompts: list[list[int]] | None = None,
                    heldout: list[int] | None = None, new_tokens: int = NEW_TOKENS,
                    min_agreement: float = MIN_AGREEMENT, max_loglik_drop: float | None = None) -> GenerationGateReport:
    """Return the gate's report of `candidate` (the int8 decoder) against `reference` (the float one).

    prompts: token-id lists (default: `builtin_tokens`); heldout: one token-id sequence (default: the built-in
    prompts one after another). Raises InputError naming a bad prompt, token id or setting.
    """
    spec = reference.spec
    if candidate.spec != spec:
        raise InputError("candidate: not the same model as the reference (its config differs); quantize the same model")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 1:
        raise InputError(f"new_tokens: expected a whole number ≥ 1, got {new_tokens!r}")
    if isinstance(min_agreement, bool) or not isinstance(min_agreement, (int, float)) or not 0.0 <= min_agreement < float("inf"):
        raise InputError(f"min_agreement: expected a finite share ≥ 0 (0 to 1; above 1 never passes, so the figures are "
                         f"reported and the import refused), got {min_agreement!r}")
    builtin = prompts is None
    prompts = builtin_tokens(spec.vocab) if builtin else prompts
    _check_ids("prompts", prompts, spec.vocab, 1)
    if heldout is None:
        heldout = [t for p in builtin_tokens(spec.vocab, seed=BUILTIN_SEED + 1) for t in p]
    _check_ids("heldout", [heldout], spec.vocab, 2)
    context = spec.max_positions
    if max(len(p) for p in prompts) + new_tokens > context or len(heldout) > context:
        raise InputError(f"prompts + new_tokens (or heldout) exceed the model's context of {context} tokens; "
                         "use shorter prompts or fewer new tokens")
    agree = total = 0
    for p, gen in zip(prompts, greedy(reference, prompts, new_tokens)):
        seq = list(p) + gen
        chosen = candidate.score(seq[:-1])[len(p) - 1:].argmax(-1)
        agree += int((chosen == torch.tensor(gen)).sum())
        total += len(gen)
    ll_ref, ll_cand = mean_loglik(reference, heldout), mean_loglik(candidate, heldout)
    agreement = agree / total
    change = ll_cand - ll_ref
    passed = agreement >= min_agreement and (max_loglik_drop is None or -change <= max_loglik_drop)
    return GenerationGateReport(agreement, total, len(prompts), new_tokens, ll_ref, ll_cand, change, len(heldout),
                                min_agreement, max_loglik_drop, builtin, passed)
