"""Quantize a folded float model: int8 (torchao, per-row, batch-invariant) on the layers it can pay on, pow2, or none.

`QuantConfig` chooses the scheme ("auto", the default, builds the int8 model and lets the export measure whether
it serves: see optimize.py; "int8", "pow2" and "int8-weight" force it); `quantize` returns the quantized model and a `QuantReport` that gives every
Linear layer a decision and its reason, the weight bytes before/after, the error against the float model on
held-out rows, and whether the accuracy gate passed: regression on relative RMSE, classification on label agreement with float
(accuracy before/after and the probability error recorded beside it). A failed gate refuses a forced scheme unless
`force`; under "auto" the optimization drops the int8 program instead (`gate_failure`, one copy).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn

from . import _quiet, int8_weights
from .errors import InputError, check_choice, check_int, check_number
from .models import linear_layers

SCHEMES = ("auto", "int8", "pow2", "int8-weight", "none")
FORCED_SCHEMES = ("int8", "pow2", "int8-weight")  # the schemes that force a quantized program (a failed gate refuses them)
DEFAULT_MIN_WEIGHTS = 16384  # below about 16K weights int8 cannot pay here (per-call overhead; measured)


class QuantGateError(InputError):
    """The quantized model's answers drift from float's beyond the task's accuracy gate (see `gate_failure`)."""

    def __init__(self, report: "QuantReport"):
        self.report = report
        super().__init__(f"quantization gate failed: {gate_failure(report)}; {_GATE_WAYS[report.task]}")


# How to get past a refusal, named for Python callers (QuantConfig fields) and CLI users (options) alike.
_GATE_WAYS = {
    "regression": "keep float (scheme 'none', --quantize none), raise the gate (gate_max_rel_rmse=F, --gate F) "
                  "or export it anyway (force=True, --force)",
    "classification": "keep float (scheme 'none', --quantize none), lower the gate (gate_min_label_agreement=F, "
                      "--gate F) or export it anyway (force=True, --force)",
}


@dataclass
class QuantConfig:
    """Which scheme, which layers (by weight count), and the accuracy gate of each task.

    Regression is gated on the relative RMSE of the outputs against float; classification on label agreement with
    float (logits can move by several percent while every label stays the same: only the labels are served).
    """

    # int8 where measurement on this host says it pays; "int8"/"pow2" force, "none" never; "int8-weight": int8
    # weights, float activations (int8_weights.py: for layers whose cost is reading their weights, as in decoding)
    scheme: str = "auto"
    min_weights: int = DEFAULT_MIN_WEIGHTS  # 0 forces int8 on every Linear
    gate_max_rel_rmse: float = 0.02  # regression
    force: bool = False
    gate_min_label_agreement: float = 0.99  # classification: share of held-out rows whose argmax matches float's

    def validate(self) -> "QuantConfig":
        """Return self after checking every field, raising InputError naming the bad one."""
        check_choice("scheme", self.scheme, SCHEMES)
        check_int("min_weights", self.min_weights, 0)
        check_number("gate_max_rel_rmse", self.gate_max_rel_rmse)
        a = self.gate_min_label_agreement
        if not isinstance(a, (int, float)) or isinstance(a, bool) or not 0.0 <= a <= 1.0:
            raise InputError(f"gate_min_label_agreement: {a!r} must be a fraction in [0, 1]")
        return self

    def with_gate(self, task: str, value: float | None) -> "QuantConfig":
        """Return a copy whose `task` gate is `value` (the CLI's --gate), or self when value is None."""
        if value is None:
            return self
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
        if task == "classification" and ok and value > 1:
            ok = False
        if not ok:  # named as the user wrote it, not as the field it sets
            meaning = ("a fraction in [0, 1]: the share of held-out labels int8 must keep (e.g. 0.99)" if task == "classification"
                       else "a relative RMSE against float ≥ 0 (e.g. 0.02 for 2 %)")
            raise InputError(f"gate (--gate): {value!r} must be {meaning} for a {task} model")
        return replace(self, **{GATE_FIELDS[task]: value})


GATE_FIELDS = {"regression": "gate_max_rel_rmse", "classification": "gate_min_label_agreement"}


@dataclass
class LayerDecision:
    """One Linear layer: its shape, what was done to it, and why."""

    name: str
    in_features: int
    out_features: int
    weights: int
    decision: str  # "int8-dynamic" | "int8-weight-only" | "int8-weight" | "pow2" | "float"
    reason: str
    pow2_exponent: int | None = None


_CLASS_FIELDS = ("label_agreement", "accuracy_float", "accuracy_quantized", "max_prob_error", "gate_min_label_agreement")


@dataclass
class QuantReport:
    """Per-layer decisions, sizes, error against float on held-out rows, and the gate's verdict."""

    scheme: str
    min_weights: int
    layers: list[LayerDecision] = field(default_factory=list)
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0
    eval_rows: int = 0
    max_abs_error: float = 0.0
    rel_rmse: float = 0.0  # RMS(q − f) / RMS(f) over the held-out outputs (a classifier's logits: not gated)
    gate_max_rel_rmse: float | None = 0.02  # the regression gate; None for a classifier
    gate_passed: bool = True
    forced: bool = False
    task: str = "regression"
    # classifiers only (None for regression): the figures the gate and the card use
    label_agreement: float | None = None  # share of held-out rows whose argmax matches float's (the gated figure)
    accuracy_float: float | None = None  # against the held-out rows' labels, when they were given
    accuracy_quantized: float | None = None
    max_prob_error: float | None = None  # max over rows and classes of |softmax(q) − softmax(f)|: the worst case
    gate_min_label_agreement: float | None = None  # the classification gate; None for regression

    @property
    def size_ratio(self) -> float:
        """Return weight bytes before ÷ after (1.0 when nothing changed)."""
        return self.weight_bytes_before / max(1, self.weight_bytes_after)

    def to_dict(self) -> dict:
        """Return the report as plain JSON-ready data."""
        d = asdict(self)
        d["size_ratio"] = self.size_ratio
        other = ("gate_max_rel_rmse",) if self.task == "classification" else _CLASS_FIELDS
        for k in other:  # the other task's figures: not measured
            d.pop(k, None)
        return d

    def summary(self) -> str:
        """Return a few human-readable lines: one per layer, then sizes, error and the gate."""
        lines = [f"quantization: scheme={self.scheme}, min_weights={self.min_weights}"]
        for l in self.layers:
            lines.append(f"  {l.name or '<model>'} {l.in_features}→{l.out_features} ({l.weights} weights): {l.decision} — {l.reason}")
        verdict = "passed" if self.gate_passed else "FAILED, forced" if self.forced else "FAILED"
        if not self.gate_passed and self.scheme == "auto" and not self.forced:
            verdict += ": the float program serves"
        if self.task == "classification":
            figures = (f"labels agree {self.label_agreement:.2%} (gate ≥ {self.gate_min_label_agreement:.2%}: {verdict}){_accuracy(self)}, "
                       f"max probability error {self.max_prob_error:.3g}, logits rel RMSE {self.rel_rmse:.3%}")  # fmt: skip
        else:
            figures = (f"max |err| {self.max_abs_error:.3g}, rel RMSE {self.rel_rmse:.3%} "
                       f"(gate ≤ {self.gate_max_rel_rmse:.2%}: {verdict})")  # fmt: skip
        lines.append(f"  weight bytes {self.weight_bytes_before} → {self.weight_bytes_after} ({self.size_ratio:.2f}×); "
                     f"vs float on {self.eval_rows} held-out rows: {figures}")  # fmt: skip
        return "\n".join(lines)


def gate_failure(report: QuantReport) -> str | None:
    """Return why a report's figures fail its task's gate (naming the measured figures), or None when they pass.

    The one gate: `quantize` refuses a forced scheme with it, and the per-host optimization drops an automatic int8
    candidate with it.
    """
    rows = f"{report.eval_rows} held-out rows"
    if report.task == "classification":
        if report.label_agreement >= report.gate_min_label_agreement:
            return None
        return (f"labels agree with float on {report.label_agreement:.2%} of {rows} < {report.gate_min_label_agreement:.2%} "
                f"(max probability error {report.max_prob_error:.3g}{_accuracy(report)})")  # fmt: skip
    if report.rel_rmse <= report.gate_max_rel_rmse:
        return None
    return f"relative RMSE against float {report.rel_rmse:.4%} on {rows} > {report.gate_max_rel_rmse:.2%}"


def _accuracy(report: QuantReport) -> str:
    """Return ", accuracy A → B" of a classifier's report, or "" when the held-out labels were not given."""
    if report.accuracy_float is None:
        return ""
    return f", accuracy {report.accuracy_float:.4f} → {report.accuracy_quantized:.4f}"


class Pow2Linear(nn.Module):
    """Linear layer whose weights are stored as int8 q with w = q · 2^k (the origin document's x_q = round(x/2^k))."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.exponent = pow2_exponent(float(w.abs().max()))
        q = torch.clamp(torch.round(w / 2.0**self.exponent), -127, 127).to(torch.int8)
        self.register_buffer("weight_q", q)
        self.register_buffer("bias", linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return x Wᵀ + b with W dequantized from int8."""
        return nn.functional.linear(x, self.weight_q.to(x.dtype) * (2.0**self.exponent), self.bias)


def pow2_exponent(max_abs: float) -> int:
    """Return the smallest k such that max_abs / 2^k fits in int8 (≤ 127)."""
    if max_abs == 0.0:
        return 0
    return int(math.ceil(math.log2(max_abs / 127.0)))


def _layer_bytes(m: nn.Module) -> int:
    """Return the bytes of a layer's weights, scales and bias as stored."""
    return sum(t.numel() * t.element_size() for t in _tensors(m))


def _tensors(m: nn.Module):
    """Yield a layer's stored tensors, looking inside torchao's quantized tensor subclasses."""
    for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
        inner = getattr(t, "__tensor_flatten__", None)
        if inner is not None:
            names, _ = t.__tensor_flatten__()
            for n in names:
                yield getattr(t, n)
        else:
            yield t


def _int8_decision(lin: nn.Linear, min_weights: int) -> tuple[str, str]:
    """Return (decision, reason) for the int8 scheme on one Linear."""
    n = lin.weight.numel()
    if min_weights == 0:
        if lin.in_features > 1 and lin.out_features > 1:
            return "int8-dynamic", "forced (min_weights=0)"
        return "int8-weight-only", "forced (min_weights=0); dynamic int8 cannot take a layer with a width of 1"
    if lin.in_features == 1:
        return "float", "in_features == 1: torchao's dynamic int8 path cannot take it"
    if lin.out_features == 1:
        return "float", "out_features == 1: a single output row gains nothing from int8"
    if n < min_weights:
        return "float", f"{n} weights < {min_weights}: int8 only pays from about {min_weights} weights"
    return "int8-dynamic", f"{n} weights ≥ {min_weights}: per-row int8 weights and activations"


def _weight_decision(lin: nn.Linear, min_weights: int) -> tuple[str, str]:
    """Return (decision, reason) for the int8-weight scheme on one Linear."""
    n, how = lin.weight.numel(), f"int8 weights, one scale per output row, float activations ({int8_weights.best_path()} on this CPU)"
    if min_weights == 0:
        return "int8-weight", f"forced (min_weights=0): {how}"
    if n < min_weights:
        return "float", f"{n} weights < {min_weights}: int8 only pays from about {min_weights} weights"
    return "int8-weight", f"{n} weights ≥ {min_weights}: {how}"


def quantize(model: nn.Module, config: QuantConfig | None, eval_X, eval_y=None, task: str | None = None) -> tuple[nn.Module, QuantReport]:
    """Return (quantized copy of the folded float `model`, QuantReport measured on held-out rows `eval_X`).

    task: "regression" or "classification" (None: a model with one output is a regressor, a wider one a classifier);
    eval_y: the held-out rows' labels, for a classifier's accuracy before and after. A failed gate raises
    QuantGateError when the scheme is forced (FORCED_SCHEMES) and `force` is off; under "auto" the report says so
    and the optimization keeps the float program.

    eval_X: an array of rows, or a tuple of tensors (one per input, same batch size) for a model of several inputs.
    """
    config = (config or QuantConfig()).validate()
    float_model = model.eval()
    qmodel = copy.deepcopy(float_model).eval()
    layers = linear_layers(qmodel)
    if task is None:
        task = "regression" if layers[-1][1].out_features == 1 else "classification"
    check_choice("task", task, tuple(GATE_FIELDS))
    classes = task == "classification"
    report = QuantReport(config.scheme, config.min_weights, forced=config.force, task=task,
                         gate_max_rel_rmse=None if classes else float(config.gate_max_rel_rmse),
                         gate_min_label_agreement=float(config.gate_min_label_agreement) if classes else None)  # fmt: skip
    report.weight_bytes_before = sum(_layer_bytes(m) for _, m in layers)

    dynamic, weight_only, int8_weight = set(), set(), set()
    for name, lin in layers:
        d = LayerDecision(name, lin.in_features, lin.out_features, lin.weight.numel(), "float", "")
        if config.scheme == "none":
            d.reason = "scheme 'none'"
        elif config.scheme == "pow2":
            d.decision = "pow2"
            d.pow2_exponent = pow2_exponent(float(lin.weight.detach().abs().max()))
            d.reason = f"w = q·2^{d.pow2_exponent}, q int8 (k chosen from the largest |w|)"
        elif config.scheme == "int8-weight":
            d.decision, d.reason = _weight_decision(lin, config.min_weights)
            if d.decision != "float":
                int8_weight.add(name)
        else:
            d.decision, d.reason = _int8_decision(lin, config.min_weights)
            (dynamic if d.decision == "int8-dynamic" else weight_only if d.decision == "int8-weight-only" else set()).add(name)
        report.layers.append(d)

    if config.scheme == "pow2":
        for name, lin in layers:
            _set_submodule(qmodel, name, Pow2Linear(lin))
    elif int8_weight:
        int8_weights.quantize_linears(qmodel, keep=lambda fqn, m: fqn in int8_weight)
    elif dynamic or weight_only:
        tq = _quiet.import_torchao()
        if dynamic:
            tq.quantize_(qmodel, tq.Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, fqn: fqn in dynamic)
        if weight_only:
            tq.quantize_(qmodel, tq.Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn in weight_only)

    report.weight_bytes_after = sum(_layer_bytes(m) for m in _quantized_layers(qmodel))
    # a tuple holds one tensor per input of a model with several (an imported one), each in its own dtype
    X = tuple(eval_X) if isinstance(eval_X, tuple) else (torch.as_tensor(np.asarray(eval_X, dtype=np.float32)),)
    with torch.no_grad():
        f, q = float_model(*X).double(), qmodel(*X).double()
    X = X[0]
    report.eval_rows = int(X.shape[0])
    report.max_abs_error = float((q - f).abs().max()) if X.shape[0] else 0.0
    denom = float(torch.sqrt(torch.mean(f**2))) if X.shape[0] else 0.0
    num = float(torch.sqrt(torch.mean((q - f) ** 2))) if X.shape[0] else 0.0
    report.rel_rmse = num / denom if denom > 0 else (0.0 if num == 0 else math.inf)
    if classes:
        _class_figures(report, f, q, eval_y)
    report.gate_passed = gate_failure(report) is None
    if not report.gate_passed and not config.force and config.scheme in FORCED_SCHEMES:
        raise QuantGateError(report)
    return qmodel, report


def _class_figures(report: QuantReport, f: torch.Tensor, q: torch.Tensor, eval_y) -> None:
    """Fill a classifier's label agreement, probability error and (with labels) accuracy before/after; returns None."""
    if f.shape[0] == 0:
        report.label_agreement, report.max_prob_error = 1.0, 0.0
        return
    lf, lq = f.argmax(1), q.argmax(1)
    report.label_agreement = float((lf == lq).double().mean())
    report.max_prob_error = float((torch.softmax(q, 1) - torch.softmax(f, 1)).abs().max())
    if eval_y is not None:
        y = torch.as_tensor(np.asarray(eval_y)).long()
        report.accuracy_float = float((lf == y).double().mean())
        report.accuracy_quantized = float((lq == y).double().mean())


def _quantized_layers(model: nn.Module):
    """Yield every Linear, Pow2Linear or Int8WeightLinear of `model`."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, Pow2Linear, int8_weights.Int8WeightLinear)):
            yield m


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted `name` by `new`."""
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)
