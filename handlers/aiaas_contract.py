"""The input contract of a served model, shared by the TorchServe handler and the aiaas library: its one entry.

Torch-free (stdlib, numpy and orjson when present): this file is shipped inside every .mar beside the handler, where
aiaas_torch may be absent. It turns a request body into checked rows (or a `ContractError` naming the row, the feature
and what was expected) and model outputs back into the answer for that body's format. Its parts, one job each:
json_body.py reads a body (Content-Type, the JSON parse), plain_rows.py checks plain rows in one pass,
tabular_rows.py checks every other body value by value (and names what is wrong), tensor_contract.py is the
contract of imported models, contract_common.py what they share; integrity.py and programs.py live beside them.

Every card's input is a list of named tensors (`input_tensors`): name, dtype, shape with the batch dimension
written -1, and the value range seen in training or calibration. A tabular card is one instance of it: one float32
input [-1, F] whose F columns are the named `features`; its row forms below are its way to fill that one input.

Request bodies, one rule each (tabular cards):
- {"instances": [[...], ...]} or {"instances": [{"name": value, ...}, ...]}  → {"predictions": [...], ...}
- {"inputs": [{"name", "shape", "datatype", "data"}]} (Open Inference v2, one [N, features] tensor) → v2 answer
- a bare list of lists is rows; a bare list of numbers is ONE row.
An instances or rows answer carries "warnings" (per row, a list of notes) only when some row has one: a category the
card's vocabulary does not hold (answered with the all-zero encoding, and counted in UnseenCategories).
Tensor cards (imported models, see `parse_tensor_request`): v2 bodies with every named input, or `instances`
whose items are one sample (nested lists of the sample shape) or objects of named inputs.
"""

from __future__ import annotations

try:  # installed package (tests, aiaas predict --local)
    from . import batch_checks
    from .contract_common import (DEFAULT_MAX_ROWS, is_tabular, V2_NUMERIC_TYPES, ContractError, ParsedRequest, UnsupportedMediaType, error_body,
                                  refuse_non_finite, some_of, v2_answer)  # fmt: skip
    from .json_body import check_content_type, decode_body, has_long_integer
    from .plain_rows import check_plain_batch
    from .tabular_rows import count_out_of_range, parse_rows
    from .tensor_contract import (BATCH, DTYPES, answer_tensors, check_tensor_specs, input_tensors, output_tensors,
                                  parse_tensor_request, parse_v2_tensors, warmup_inputs)  # fmt: skip
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    import batch_checks
    from contract_common import (DEFAULT_MAX_ROWS, is_tabular, V2_NUMERIC_TYPES, ContractError, ParsedRequest, UnsupportedMediaType, error_body,
                                 refuse_non_finite, some_of, v2_answer)  # fmt: skip
    from json_body import check_content_type, decode_body, has_long_integer
    from plain_rows import check_plain_batch
    from tabular_rows import count_out_of_range, parse_rows
    from tensor_contract import (BATCH, DTYPES, answer_tensors, check_tensor_specs, input_tensors, output_tensors,
                                 parse_tensor_request, parse_v2_tensors, warmup_inputs)  # fmt: skip

# The contract's one entry for the handler, aiaas_torch and the tests: its own functions, and those of its parts that
# callers use (the body's reading, the one-pass check, the shared error and request, the tensor contract's card helpers).
__all__ = ["DEFAULT_MAX_ROWS", "V2_NUMERIC_TYPES", "ContractError", "UnsupportedMediaType", "ParsedRequest", "error_body", "some_of",
           "has_long_integer", "decode_body", "check_content_type", "parse_request", "check_plain_batch",
           "count_out_of_range", "answer", "BATCH", "DTYPES", "input_tensors", "output_tensors", "check_tensor_specs",
           "parse_v2_tensors", "warmup_inputs"]  # fmt: skip


def parse_request(body, card: dict, max_rows: int | None = None) -> ParsedRequest:
    """Return the checked rows of one request body against the card's input contract, or raise ContractError.

    A tabular body of plain rows is checked in one pass (`check_plain_batch`, a batch of one); any other, or one
    holding a value that pass declines, value by value (`parse_rows`), which names what is wrong."""
    limit = max_rows or card["input"].get("max_rows") or DEFAULT_MAX_ROWS
    value = decode_body(body)
    if not is_tabular(card):
        return parse_tensor_request(value, card, limit)
    return check_plain_batch([value], card, limit)[0] or parse_rows(value, card, limit)


def answer(card: dict, parsed: ParsedRequest, outputs: list, model_name: str, model_version: str) -> dict:
    """Return the JSON answer for one request: `outputs` is the model's output rows for its rows, in order, or
    {output name: per-sample outputs} as the handler's forward returns them."""
    out = card["output"]
    if not is_tabular(card):
        return answer_tensors(card, parsed, outputs, model_name, model_version)
    if isinstance(outputs, dict):
        outputs = outputs[output_tensors(card)[0]["name"]]
    if not isinstance(outputs, batch_checks.Outputs):  # rows from a caller other than the handler's batch forward
        outputs = batch_checks.Outputs(outputs, out["task"] == "classification")
    bad = outputs.first_non_finite()
    if bad is not None:
        refuse_non_finite(None, parsed, "inputs[0].data row", bad)
    if out["task"] == "classification":
        classes = out["classes"]
        probs = outputs.probabilities()
        labels = [classes[k] for k in outputs.best()]
        if parsed.fmt == "v2":
            label_type = "BYTES" if any(isinstance(c, str) for c in classes) else "INT64"
            outs = [
                {"name": "predictions", "shape": [len(labels)], "datatype": label_type, "data": labels},
                {"name": "probabilities", "shape": [len(probs), len(classes)], "datatype": "FP32", "data": [p for row in probs for p in row]},
            ]
            return v2_answer(parsed, outs, model_name, model_version)
        return _noted({"predictions": labels, "probabilities": probs, "classes": classes, "model": model_name, "version": model_version},
                      parsed)  # fmt: skip
    values = outputs.first_column()
    if parsed.fmt == "v2":
        return v2_answer(parsed, [{"name": out["target"], "shape": [len(values)], "datatype": "FP32", "data": values}], model_name, model_version)
    return _noted({"predictions": values, "model": model_name, "version": model_version}, parsed)


def _noted(answer: dict, parsed: ParsedRequest) -> dict:
    """Return the answer with `warnings` (one list per row) after `predictions`'s fields when some row has one."""
    if parsed.warnings:
        answer["warnings"] = parsed.warnings
    return answer
