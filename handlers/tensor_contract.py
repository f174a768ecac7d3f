"""The tensor contract of imported models: a card's named input tensors (dtype, shape with batch -1, range), their
checks on v2 and `instances` bodies, and the answers in the body's format. A tabular card is one instance of it (one
float32 [-1, F] input); its row forms live in aiaas_contract.py, which dispatches here for tensor cards.

Stdlib only (numpy when present); shipped in every .mar beside the handler.
"""

from __future__ import annotations

import heapq

try:  # installed package (tests, aiaas predict --local)
    from . import batch_checks
    from .contract_common import FLOAT32_MAX, V2_NUMERIC_TYPES, finite_float, json_number, ContractError, is_tabular, NonFiniteLiteral, check_names, ParsedRequest, clip_text, flatten_values, quoted, refuse_non_finite, show_value, some_of, v2_answer
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    import batch_checks
    from contract_common import FLOAT32_MAX, V2_NUMERIC_TYPES, finite_float, json_number, ContractError, is_tabular, NonFiniteLiteral, check_names, ParsedRequest, clip_text, flatten_values, quoted, refuse_non_finite, show_value, some_of, v2_answer

# A dtype's v2 name, whether it holds integers, and its range; integers sent to a float input must be exact in it.
DTYPES = {
    "float16": ("FP16", False, 65504.0, 2**11),
    "float32": ("FP32", False, FLOAT32_MAX, 2**24),
    "float64": ("FP64", False, 1.7976931348623157e308, 2**53),
    "int8": ("INT8", True, -(2**7), 2**7 - 1),
    "int16": ("INT16", True, -(2**15), 2**15 - 1),
    "int32": ("INT32", True, -(2**31), 2**31 - 1),
    "int64": ("INT64", True, -(2**63), 2**63 - 1),
    "uint8": ("UINT8", True, 0, 2**8 - 1),
}
BATCH = -1  # how a card writes the dynamic batch dimension of a shape


def input_tensors(card: dict) -> list:
    """Return the card's inputs as [{name, dtype, shape, min, max}]; a tabular card's is one float32 [-1, F] input."""
    inp = card["input"]
    if not is_tabular(card):
        return inp["tensors"]
    feats = inp["features"]
    return [{"name": inp.get("tensor_name", "input"), "dtype": "float32", "shape": [BATCH, len(feats)],
             "min": min(f["min"] for f in feats), "max": max(f["max"] for f in feats), "features": [f["name"] for f in feats]}]  # fmt: skip


def output_tensors(card: dict) -> list:
    """Return the card's outputs as [{name, dtype, shape}]; a tabular card's is one float32 [-1, width] output."""
    out = card["output"]
    if "tensors" in out:
        return out["tensors"]
    width = out.get("width") or (len(out["classes"]) if out.get("classes") else 1)
    return [{"name": out.get("target") or "output", "dtype": "float32", "shape": [BATCH, width]}]


def check_tensor_specs(specs, where: str, ranged: bool) -> None:
    """Raise ValueError naming the field when a card's tensor list is malformed (used by card.check_card)."""
    if not isinstance(specs, list) or not specs:
        raise ValueError(f"{where}: must be a non-empty list of {{name, dtype, shape}}")
    names = set()
    for i, t in enumerate(specs):
        at = f"{where}[{i}]"
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
            raise ValueError(f"{at}: must be an object with a non-empty string 'name'")
        if t["name"] in names:
            raise ValueError(f"{at}: name {t['name']!r} is used twice")
        names.add(t["name"])
        if t.get("dtype") not in DTYPES:
            raise ValueError(f"{at}.dtype: {show_value(t.get('dtype'))} is not one of {sorted(DTYPES)}")
        shape = t.get("shape")
        if not (isinstance(shape, list) and shape and shape[0] == BATCH
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape[1:])):  # fmt: skip
            raise ValueError(f"{at}.shape: {show_value(shape, 60)} must be [{BATCH}, d1, d2, ...] ({BATCH}: the batch dimension)")
        for k in ("min", "max") if ranged else ():
            if not isinstance(t.get(k), (int, float)) or isinstance(t.get(k), bool):
                raise ValueError(f"{at}.{k}: must be a number (the range seen in the calibration samples)")


def _fmt_shape(shape) -> str:
    """Return a shape for a message, the batch dimension as N."""
    return "[" + ", ".join("N" if d == BATCH else str(d) for d in shape) + "]"


def _tensor_value(v, spec: dict, where: str, integral: bool = False):
    """Return one value converted for an input of spec's dtype, or raise ContractError (lossy or unsafe values refused)."""
    dtype = spec["dtype"]
    _, is_int, a, b = DTYPES[dtype]
    json_number(v, where)
    if isinstance(v, float) and (integral or is_int) and not v.is_integer():
        raise ContractError(f"{where}: {v!r} is not an integer ({'its datatype' if integral else dtype + ' input'} takes integers)")
    if is_int:
        if not a <= v <= b:
            raise ContractError(f"{where}: {clip_text(str(v))} is outside the {dtype} range [{a}, {b}]")
        return int(v)
    if isinstance(v, int) and abs(v) > b:
        raise ContractError(f"{where}: the integer {clip_text(str(v))} cannot be represented exactly in {dtype}")
    return finite_float(v, where, dtype, a)


_RAGGED = "ragged nested lists (not a rectangular array)"


def _shape_of(value, where: str) -> list:
    """Return the shape nested lists claim by their first items (a number alone has shape []), refusing deep nesting."""
    shape, level = [], value
    while isinstance(level, list):
        shape.append(len(level))
        level = level[0] if level else None
        if len(shape) > 32:
            raise ContractError(f"{where}: nested too deeply")
    return shape


def _sample(value, spec: dict, where: str) -> list:
    """Return one sample of an input as a flat list in its dtype, refusing a shape other than the card's before
    reading its values (a sample far larger than the card's costs no copy)."""
    shape, want = _shape_of(value, where), spec["shape"][1:]
    if shape != want:
        raise ContractError(f"{where}: input {spec['name']!r} expects samples of shape {want} ({_fmt_shape(spec['shape'])} "
                            f"in a batch), received shape {shape}")  # fmt: skip
    flat = flatten_values(value, where, (_prod(want), _RAGGED)) if isinstance(value, list) else [value]
    return [_tensor_value(v, spec, f"{where} value {i}") for i, v in enumerate(flat)]


def parse_tensor_request(value, card: dict, limit: int) -> ParsedRequest:
    """Return the checked inputs of a request body for a tensor card: a v2 body or instances (samples or named objects)."""
    specs = input_tensors(card)
    if isinstance(value, dict) and "instances" in value and "inputs" in value:
        raise ContractError("body: has both 'instances' and 'inputs'; send one")
    if isinstance(value, dict) and "inputs" in value:
        inputs, fmt = parse_v2_tensors(value, specs, limit), "v2"
    elif isinstance(value, dict) and "instances" in value:
        inputs, fmt = _tensor_instances(value["instances"], specs, limit), "instances"
    else:
        shown = f"an object with keys [{some_of(heapq.nsmallest(10, value), 10, show=quoted, total=len(value))}]" if isinstance(value, dict) else type(value).__name__
        raise ContractError(f"body: expected {{\"inputs\": [...]}} (Open Inference v2) or {{\"instances\": [...]}}, got {shown}")
    rid = value.get("id") if fmt == "v2" else None
    parsed = ParsedRequest(inputs[specs[0]["name"]], fmt, inputs=inputs,
                           v2_id=rid if isinstance(rid, str) and not isinstance(rid, NonFiniteLiteral) else None)  # fmt: skip
    parsed.out_of_range = sum(1 for s in specs for sample in inputs[s["name"]] for v in sample if v < s["min"] or v > s["max"])
    return parsed


def _tensor_instances(items, specs: list, limit: int) -> dict:
    """Return {input name: samples} of an instances list: one sample per item (an object of named inputs, or nested
    lists of the sample shape when the card has one input)."""
    if not isinstance(items, list):
        raise ContractError(f"instances: expected a list of samples, got {type(items).__name__}")
    if not items:
        raise ContractError("instances: no samples; send at least one")
    if len(items) > limit:
        raise ContractError(f"instances: {len(items)} samples, more than the limit of {limit} per request")
    names = [s["name"] for s in specs]
    out: dict = {n: [] for n in names}
    for i, item in enumerate(items):
        if isinstance(item, dict):
            check_names(item, names, f"instances[{i}]", "input")
            for s in specs:
                out[s["name"]].append(_sample(item[s["name"]], s, f"instances[{i}].{s['name']}"))
        elif len(specs) == 1:
            out[names[0]].append(_sample(item, specs[0], f"instances[{i}]"))
        else:
            raise ContractError(f"instances[{i}]: the model has {len(specs)} inputs [{some_of(map(repr, names), 20)}]; send an object of named inputs")
    return out


def parse_v2_tensors(body: dict, specs: list, limit: int) -> dict:
    """Return {input name: samples} of a decoded Open Inference (v2) body holding every named input once."""
    inputs = body.get("inputs")
    names = [s["name"] for s in specs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise ContractError(f"inputs: expected a list of tensor objects {{name, shape, datatype, data}}, one per input [{some_of(map(repr, names), 20)}]")
    by_name, out, n = {s["name"]: s for s in specs}, {}, None
    for k, t in enumerate(inputs):
        missing = [f for f in ("name", "shape", "datatype", "data") if f not in t]
        if missing:
            raise ContractError(f"inputs[{k}]: missing field(s) {missing}")
        name = t["name"]
        if not isinstance(name, str) or name not in by_name:
            raise ContractError(f"inputs[{k}].name: {show_value(name)} is not an input of this model; expected [{some_of(map(repr, names), 20)}]")
        if name in out:
            raise ContractError(f"inputs[{k}]: input {name!r} sent twice")
        spec, where = by_name[name], f"inputs[{k}] {name!r}"
        dtype = t["datatype"]
        if not isinstance(dtype, str) or dtype not in V2_NUMERIC_TYPES:
            shown = clip_text(repr(dtype)) if isinstance(dtype, str) else show_value(dtype)
            raise ContractError(f"{where}.datatype: {shown} is not a numeric type ({sorted(V2_NUMERIC_TYPES)})")
        integral = dtype.startswith(("INT", "UINT"))
        if DTYPES[spec["dtype"]][1] and not integral:
            raise ContractError(f"{where}: datatype {dtype} cannot fill the {spec['dtype']} input (fractions would be cut); "
                                f"send {DTYPES[spec['dtype']][0]}")  # fmt: skip
        shape = t["shape"]
        if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
            raise ContractError(f"{where}.shape: {show_value(shape, 60)} is not a list of integers")
        if len(shape) != len(spec["shape"]) or shape[1:] != spec["shape"][1:] or shape[0] < 0:
            raise ContractError(f"{where}: shape {clip_text(str(shape), 60)}, expected {_fmt_shape(spec['shape'])}")
        if n is not None and shape[0] != n:
            raise ContractError(f"{where}: {shape[0]} samples, but {next(iter(out))!r} has {n}; every input needs the same batch size")
        n = shape[0]
        if n == 0:
            raise ContractError(f"{where}: no samples; send at least one")
        if n > limit:
            raise ContractError(f"{where}: {n} samples, more than the limit of {limit} per request")
        size = _prod(shape[1:])
        flat = flatten_values(t["data"], f"{where}.data", (n * size, f"{{}} values for shape {shape}"))
        vals = [_tensor_value(v, spec, f"{where}.data[{i}]", integral) for i, v in enumerate(flat)]
        out[name] = [vals[i * size : (i + 1) * size] for i in range(n)]
    missing = [m for m in names if m not in out]
    if missing:
        raise ContractError(f"inputs: missing input(s) [{some_of(map(repr, missing), 5)}]; the model takes [{some_of(map(repr, names), 20)}]")
    return out


def _prod(dims) -> int:
    """Return the product of a list of dimensions (1 for none)."""
    p = 1
    for d in dims:
        p *= d
    return p


def warmup_inputs(card: dict) -> dict:
    """Return {input name: one sample} inside the card's contract (feature means; else each input's minimum)."""
    if is_tabular(card):
        return {input_tensors(card)[0]["name"]: [[f["mean"] for f in card["input"]["features"]]]}
    return {s["name"]: [[s["min"]] * _prod(s["shape"][1:])] for s in input_tensors(card)}


def answer_tensors(card: dict, parsed: ParsedRequest, outputs: dict, model_name: str, model_version: str) -> dict:
    """Return the answer of a tensor card: every named output (v2: one tensor each; instances: `predictions`, one
    object per sample keyed by output name when there are several), with labels and probabilities where the card has labels."""
    specs = output_tensors(card)
    for s in specs:
        if not DTYPES[s["dtype"]][1]:  # float outputs (integers are always finite)
            refuse_non_finite(outputs[s["name"]], parsed, "sample")
    classes = card["output"].get("classes")
    n = len(parsed.rows)
    extra_v2, extra = [], {}
    if classes:  # one output of width len(classes): its logits give labels and softmax probabilities
        probs, best = batch_checks.softmax_rows(outputs[specs[0]["name"]])
        labels = [classes[k] for k in best]
        label_type = "BYTES" if any(isinstance(c, str) for c in classes) else "INT64"
        extra_v2 = [{"name": "predictions", "shape": [n], "datatype": label_type, "data": labels},
                    {"name": "probabilities", "shape": [n, len(classes)], "datatype": "FP32", "data": [p for r in probs for p in r]}]  # fmt: skip
        extra = {"predictions": labels, "probabilities": probs, "classes": classes}
    if parsed.fmt == "v2":
        outs = [{"name": s["name"], "shape": [n, *s["shape"][1:]], "datatype": DTYPES[s["dtype"]][0],
                 "data": flatten_values(outputs[s["name"]], s["name"])} for s in specs]  # fmt: skip
        return v2_answer(parsed, extra_v2 + outs, model_name, model_version)
    if classes:  # as a tabular classifier answers, with the raw output beside
        return {**extra, specs[0]["name"]: outputs[specs[0]["name"]], "model": model_name, "version": model_version}
    if len(specs) == 1:
        preds = outputs[specs[0]["name"]]
    else:
        preds = [{s["name"]: outputs[s["name"]][i] for s in specs} for i in range(n)]
    return {"predictions": preds, "model": model_name, "version": model_version}
