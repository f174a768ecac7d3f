"""The OpenAPI 3.1 document of a served model's prediction endpoints, built from its model card.

One function maps a card to the JSON Schemas of its requests and answers (`card_schemas`); `document` puts them
on the three paths TorchServe routes to the same handler (`POST /predictions/NAME`, `/v1/models/NAME:predict`,
`/v2/models/NAME/infer`: the handler cannot see the URL, so all three take the same bodies), with the bearer-token
security scheme and the JSON error body of every refusal (handlers/aiaas_contract.error_body). Training ranges and
class labels are documentation (descriptions, examples, enums of answers), never limits on requests: a value
outside the training range is still predicted. Torch-free.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from .card import filled_sample, is_tabular, is_text, read_card, tensor_text
from .errors import InputError
from .handlers import aiaas_contract as contract
from .handlers.contract_common import FLOAT32_MAX  # the contract refuses |x| above it

OPENAPI_VERSION = "3.1.0"
DEFAULT_SERVER = "http://127.0.0.1:8080"


def _feature_schema(feature: dict) -> dict:
    """Return the JSON Schema of one feature's value (a finite float32 number; its training range as documentation)."""
    lo, hi = feature["min"], feature["max"]
    return {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX, "title": feature["name"],
            "description": f"training range [{lo:g}, {hi:g}] (values outside it are predicted too, and counted)",
            "examples": [lo]}


def card_schemas(card: dict) -> dict:
    """Return the named JSON Schemas (components.schemas) of a model's requests and answers, from its card."""
    max_rows = int(card["input"].get("max_rows") or contract.DEFAULT_MAX_ROWS)
    schemas = (_text_schemas(card, max_rows) if is_text(card) else _tabular_schemas(card, max_rows) if is_tabular(card)
               else _tensor_schemas(card, max_rows))  # fmt: skip
    v2_out = {"type": "object", "required": ["name", "shape", "datatype", "data"],
              "properties": {"name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                             "datatype": {"type": "string"}, "data": {"type": "array"}}}
    return {
        **schemas,
        "V2Response": {"type": "object", "required": ["model_name", "model_version", "outputs"],
                       "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"},
                                      "id": {"type": "string"}, "outputs": {"type": "array", "items": v2_out}}},
        "Error": {"type": "object", "required": ["code", "type", "message"],
                  "properties": {"code": {"type": "integer"}, "type": {"type": "string"},
                                 "message": {"type": "string", "description": "what is wrong, naming the row and feature"}},
                  "examples": [contract.error_body("instances[0]: 1 values, expected 2 (a, b)")]},
    }


def _tabular_schemas(card: dict, max_rows: int) -> dict:
    """Return the request and Prediction schemas of a tabular card: rows of named features."""
    features = card["input"]["features"]
    names = [f["name"] for f in features]
    width = len(features)
    values = [_feature_schema(f) for f in features]
    row = {"type": "array", "prefixItems": values, "items": False, "minItems": width, "maxItems": width,
           "description": f"one row: {width} values in feature order ({', '.join(names[:20])})"}
    named = {"type": "object", "properties": dict(zip(names, values)), "required": names, "additionalProperties": False,
             "description": "one row: an object of features by name"}
    rows = {"anyOf": [{"type": "array", "items": {"$ref": "#/components/schemas/Row"}},
                      {"type": "array", "items": {"$ref": "#/components/schemas/NamedRow"}}],
            "minItems": 1, "maxItems": max_rows, "description": f"1 to {max_rows:,} rows, all positional or all named"}
    datatypes = sorted(contract.V2_NUMERIC_TYPES)
    tensor = {"type": "object", "required": ["name", "shape", "datatype", "data"],
              "properties": {"name": {"type": "string"},
                             "shape": {"type": "array", "prefixItems": [{"type": "integer", "minimum": 1, "maximum": max_rows},
                                                                       {"const": width}], "items": False, "minItems": 2},
                             "datatype": {"enum": datatypes},
                             "data": {"type": "array", "items": {"anyOf": [{"type": "number"}, {"$ref": "#/components/schemas/Row"}]},
                                      "minItems": 1, "description": "N × features values, flat or nested by row"}},
              "description": f"one FP32-like tensor of shape [N, {width}]"}
    out = card["output"]
    classification = out["task"] == "classification"
    classes = out.get("classes") or []
    label = {"enum": classes} if classification else {"type": "number"}
    answer = {"type": "object", "required": ["predictions", "model", "version"],
              "properties": {"predictions": {"type": "array", "items": label},
                             "model": {"type": "string"}, "version": {"type": "string"}}}
    if classification:
        answer["required"] += ["probabilities", "classes"]
        answer["properties"]["probabilities"] = {"type": "array", "items": {"type": "array", "items": {"type": "number"},
                                                                            "minItems": len(classes), "maxItems": len(classes)}}
        answer["properties"]["classes"] = {"const": classes}
        answer["description"] = f"labels of {out.get('target')!r} ({', '.join(map(str, classes))}) and softmax probabilities"
    else:
        answer["description"] = f"predicted {out.get('target')!r}, one number per row"
    if any(f.get("kind") == "categorical" for f in features) and card["input"].get("unseen_category", "zero") == "zero":
        answer["properties"]["warnings"] = {
            "type": "array", "items": {"type": "array", "items": {"type": "string"}},
            "description": "present only when some row has one: per row, a note for each category not seen in training "
                           "(predicted with an all-zero encoding; also counted in the UnseenCategories metric)"}
    return {
        "Row": row,
        "NamedRow": named,
        "InstancesRequest": {"type": "object", "required": ["instances"], "properties": {"instances": rows},
                             "additionalProperties": False},
        "V2Request": {"type": "object", "required": ["inputs"], "additionalProperties": False,
                      "properties": {"id": {"type": "string"},
                                     "inputs": {"type": "array", "items": tensor, "minItems": 1, "maxItems": 1}}},
        "Rows": {"oneOf": [{"$ref": "#/components/schemas/Row"}, rows],
                 "description": "a bare list of rows, or one row"},
        "Prediction": answer,
    }


def _value_schema(dtype: str, bounded: bool = True) -> dict:
    """Return the JSON Schema of one value of a tensor of `dtype` (inputs: within the dtype's range)."""
    _, integral, lo, hi = contract.DTYPES[dtype]
    if not bounded:
        return {"type": "integer" if integral else "number"}
    return {"type": "integer", "minimum": lo, "maximum": hi} if integral else {"type": "number", "minimum": -lo, "maximum": lo}


def _sample_schema(spec: dict, bounded: bool = True) -> dict:
    """Return the JSON Schema of one sample of a tensor: nested lists of its shape without the batch dimension."""
    schema = _value_schema(spec["dtype"], bounded)
    for d in reversed(spec["shape"][1:]):
        schema = {"type": "array", "items": schema, "minItems": d, "maxItems": d}
    return schema


def _tensor_schemas(card: dict, max_rows: int) -> dict:
    """Return the request and Prediction schemas of a tensor card (an imported model): named input tensors."""
    specs, outs = contract.input_tensors(card), contract.output_tensors(card)
    names = [s["name"] for s in specs]
    samples = {}
    for s in specs:
        samples[s["name"]] = dict(_sample_schema(s), description=f"one sample of {tensor_text(s)}; calibration range "
                                                                 f"[{s['min']:g}, {s['max']:g}] (documentation, not a limit)")  # fmt: skip
    named = {"type": "object", "properties": samples, "required": names, "additionalProperties": False,
             "description": "one sample: an object of every input by name"}
    items = {"anyOf": [{"$ref": "#/components/schemas/Sample"}, {"$ref": "#/components/schemas/NamedSample"}]} if len(specs) == 1 else {"$ref": "#/components/schemas/NamedSample"}
    instances = {"type": "array", "items": items, "minItems": 1, "maxItems": max_rows, "description": f"1 to {max_rows:,} samples"}
    integer_types = sorted(t for t in contract.V2_NUMERIC_TYPES if t.startswith(("INT", "UINT")))
    tensors = [{"type": "object", "required": ["name", "shape", "datatype", "data"],
                "properties": {"name": {"const": s["name"]},
                               "shape": {"type": "array", "prefixItems": [{"type": "integer", "minimum": 1, "maximum": max_rows},
                                                                         *({"const": d} for d in s["shape"][1:])],
                                         "items": False, "minItems": len(s["shape"])},
                               "datatype": {"enum": integer_types if contract.DTYPES[s["dtype"]][1] else sorted(contract.V2_NUMERIC_TYPES)},
                               "data": {"type": "array", "minItems": 1, "description": "N samples' values, flat or nested"}},
                "description": f"input {tensor_text(s)}"} for s in specs]  # fmt: skip
    out = card["output"]
    classes = out.get("classes") or []
    if classes:
        first = outs[0]["name"]
        answer = {"type": "object", "required": ["predictions", "probabilities", "classes", first, "model", "version"],
                  "properties": {"predictions": {"type": "array", "items": {"enum": classes}},
                                 "probabilities": {"type": "array", "items": {"type": "array", "items": {"type": "number"},
                                                                              "minItems": len(classes), "maxItems": len(classes)}},
                                 "classes": {"const": classes}, first: {"type": "array", "items": _sample_schema(outs[0], False)}},
                  "description": f"labels ({', '.join(map(str, classes))}), softmax probabilities and the raw {first!r} output"}  # fmt: skip
    else:
        one = _sample_schema(outs[0], False) if len(outs) == 1 else {
            "type": "object", "required": [o["name"] for o in outs],
            "properties": {o["name"]: _sample_schema(o, False) for o in outs}}  # fmt: skip
        answer = {"type": "object", "required": ["predictions", "model", "version"],
                  "properties": {"predictions": {"type": "array", "items": one}},
                  "description": "one answer per sample: " + ("the output " if len(outs) == 1 else "an object of the outputs ")
                                 + ", ".join(tensor_text(o) for o in outs)}  # fmt: skip
    answer["properties"].update({"model": {"type": "string"}, "version": {"type": "string"}})
    schemas = {"Sample": samples[names[0]]} if len(specs) == 1 else {}
    return {
        **schemas,
        "NamedSample": named,
        "InstancesRequest": {"type": "object", "required": ["instances"], "properties": {"instances": instances},
                             "additionalProperties": False},
        "V2Request": {"type": "object", "required": ["inputs"], "additionalProperties": False,
                      "properties": {"id": {"type": "string"},
                                     "inputs": {"type": "array", "items": {"oneOf": tensors}, "minItems": len(specs),
                                                "maxItems": len(specs), "description": "every input once"}}},
        "Prediction": answer,
    }


def _text_schemas(card: dict, max_rows: int) -> dict:
    """Return the request and Prediction schemas of a text card: texts (or text pairs) in, labels or embeddings out."""
    text = {"type": "string", "description": f"a text of at most {card['input']['max_length']} tokens (or send \"truncate\": true)"}
    item = {"anyOf": [text, {"type": "object", "required": ["text"], "additionalProperties": False,
                             "properties": {"text": text, **({"text_pair": text} if card["input"].get("pairs") else {})}}]}  # fmt: skip
    v2_text = {"type": "object", "required": ["name", "shape", "datatype", "data"],
               "properties": {"name": {"enum": ["text", "text_pair"] if card["input"].get("pairs") else ["text"]},
                              "shape": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2},
                              "datatype": {"const": "BYTES"}, "data": {"type": "array", "items": text, "minItems": 1, "maxItems": max_rows}}}  # fmt: skip
    out, number = card["output"], {"type": "number"}
    if out.get("classes"):
        answer = {"type": "object", "required": ["predictions", "probabilities", "classes", "model", "version"],
                  "properties": {"predictions": {"type": "array", "items": {"enum": out["classes"]}},
                                 "probabilities": {"type": "array", "items": {"type": "array", "items": number}},
                                 "classes": {"const": out["classes"]}},
                  "description": f"labels ({', '.join(out['classes'])}) and softmax probabilities, one per text"}  # fmt: skip
    else:
        answer = {"type": "object", "required": ["embeddings", "model", "version"],
                  "properties": {"embeddings": {"type": "array", "items": {"type": "array", "items": number, "minItems": out["dim"],
                                                                           "maxItems": out["dim"]}}},
                  "description": f"one {out['dim']}-dim embedding per text ({out['kind']})"}  # fmt: skip
    answer["properties"].update({"model": {"type": "string"}, "version": {"type": "string"}})
    return {
        "InstancesRequest": {"type": "object", "required": ["instances"], "additionalProperties": False,
                             "properties": {"instances": {"type": "array", "items": item, "minItems": 1, "maxItems": max_rows},
                                            "truncate": {"type": "boolean"}}},  # fmt: skip
        "V2Request": {"type": "object", "required": ["inputs"], "additionalProperties": False,
                      "properties": {"id": {"type": "string"}, "parameters": {"type": "object"},
                                     "inputs": {"type": "array", "items": v2_text, "minItems": 1, "maxItems": 2}}},
        "Prediction": answer,
    }


def _text_examples(card: dict) -> tuple[dict, str, str]:
    """Return (request examples, what the model does, what it takes) of a text card."""
    examples = {"texts": {"summary": "texts", "value": {"instances": ["a first text", "a second one"]}},
                "v2": {"summary": "Open Inference BYTES", "value": {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                                                               "data": ["a first text"]}]}}}  # fmt: skip
    out = card["output"]
    what = f"embeds texts ({out['dim']} dimensions, {out['kind']})" if out["task"] == "embedding" else "classifies texts"
    return examples, what, f"texts of at most {card['input']['max_length']} tokens ({card['model'].get('architecture')})"


def _operation(name: str, summary: str, op_id: str, examples: dict, requests: list) -> dict:
    """Return one POST operation taking any of the `requests` body schemas and answering the matching format."""
    ref = "#/components/schemas/"
    error = {"content": {"application/json": {"schema": {"$ref": ref + "Error"}}}}
    return {
        "summary": summary,
        "operationId": op_id,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"anyOf": [{"$ref": ref + r} for r in requests]},
            "examples": examples}}},
        "responses": {
            "200": {"description": "predictions: {predictions, ...} for `instances` and bare rows, an Open Inference "
                                   "answer for `inputs`",
                    "content": {"application/json": {"schema": {"anyOf": [{"$ref": ref + "Prediction"}, {"$ref": ref + "V2Response"}]}}}},
            "400": dict(error, description="a body that breaks the input contract (the message names the row and "
                                           "feature), or a bad, missing or expired token (type InvalidKeyException)"),
            "404": dict(error, description=f"no model {name!r} (or version) on this server"),
            "413": {"description": "a body over the server's max_request_size (no body)"},
            "415": dict(error, description="a Content-Type other than JSON in UTF-8"),
            "503": dict(error, description="no worker can take the request now (queue full, model loading)"),
        },
    }


def document(card: dict, name: str, server_url: str = DEFAULT_SERVER, version: str | None = None) -> dict:
    """Return the OpenAPI 3.1 document of a model's prediction endpoints (native, TF Serving v1, Open Inference v2)."""
    from .archive import NAME_RE

    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InputError(f"name: {name!r} is not a model name (letters, digits, _; not starting with _)")
    schemas = card_schemas(card)
    requests = [r for r in ("InstancesRequest", "V2Request", "Rows") if r in schemas]
    examples, what, source = _text_examples(card) if is_text(card) else _examples(card) if is_tabular(card) else _tensor_examples(card)
    out = card["output"]
    if out["task"] == "classification":
        target = f"{out['target']!r} " if out.get("target") else ""
        what = f"classifies {target}into {len(out.get('classes') or [])} classes"
    bodies = ("`instances` rows, an Open Inference `inputs` tensor, or bare rows" if is_tabular(card)
              else '`{"instances": ["text", ...]}` (objects {text, text_pair} for pairs; "truncate": true cuts long texts), '
                   "or an Open Inference `inputs` body of BYTES texts" if is_text(card)
              else "`instances` samples (nested lists, or objects of named inputs), or an Open Inference `inputs` body")
    paths = {
        f"/predictions/{name}": {"post": _operation(name, "Predict (TorchServe's native path)", "predict", examples, requests)},
        f"/v1/models/{name}:predict": {"post": _operation(name, "Predict (TF Serving REST path)", "predict_v1", examples, requests)},
        f"/v2/models/{name}/infer": {"post": _operation(name, "Predict (Open Inference Protocol path)", "infer_v2", examples, requests)},
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": f"{name} (aiaas-torch model)", "version": version or "default",
                 "description": f"{name} {what} from {source}. Every path takes the same bodies: {bodies}."},
        "servers": [{"url": server_url}],
        "security": [{"bearerToken": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerToken": {"type": "http", "scheme": "bearer",
                                                "description": "the server's inference token (in HOME's key file)"}},
        },
    }


def _examples(card: dict) -> tuple[dict, str, str]:
    """Return (request examples, what the model does, what it takes) of a tabular card."""
    features = card["input"]["features"]
    first = [f["min"] for f in features]
    examples = {
        "rows": {"summary": "positional rows", "value": {"instances": [first]}},
        "named": {"summary": "named rows", "value": {"instances": [{f["name"]: f["min"] for f in features}]}},
        "v2": {"summary": "Open Inference tensor", "value": {"inputs": [
            {"name": "input-0", "shape": [1, len(features)], "datatype": "FP32", "data": first}]}},
    }
    source = f"{len(features)} features ({', '.join(f['name'] for f in features[:20])})"
    return examples, f"predicts {card['output'].get('target')!r}", source


def _tensor_examples(card: dict) -> tuple[dict, str, str]:
    """Return (request examples, what the model does, what it takes) of a tensor card: one sample, each input at its
    calibration minimum."""
    specs = contract.input_tensors(card)
    sample = {}
    for s in specs:
        sample[s["name"]] = filled_sample(s, int(s["min"]) if contract.DTYPES[s["dtype"]][1] else s["min"])
    v2 = [{"name": n, "shape": [1, *s["shape"][1:]], "datatype": contract.DTYPES[s["dtype"]][0], "data": [v]}
          for (n, v), s in zip(sample.items(), specs)]  # fmt: skip
    examples = {"named": {"summary": "one sample, inputs by name", "value": {"instances": [sample]}},
                "v2": {"summary": "Open Inference tensors", "value": {"inputs": v2}}}
    if len(specs) == 1:
        examples["sample"] = {"summary": "one sample", "value": {"instances": [sample[specs[0]["name"]]]}}
    outs = ", ".join(tensor_text(o) for o in contract.output_tensors(card))
    return examples, f"answers {outs}", "inputs " + ", ".join(tensor_text(s) for s in specs)


def _archive_card(path: Path) -> tuple[dict, str, str | None]:
    """Return (card, model name, version) of a .mar after verifying its members against the card."""
    from .archive import verify_archive

    card = verify_archive(path)
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
            config = zf.read("model-config.yaml").decode() if "model-config.yaml" in zf.namelist() else ""
        model = manifest["model"]
    except (KeyError, ValueError, zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{path}: MAR-INF/MANIFEST.json cannot be read ({e})") from None
    import yaml

    max_rows = ((yaml.safe_load(config) or {}).get("handler") or {}).get("max_rows") if config else None
    if isinstance(max_rows, int) and max_rows > 0:  # what the served handler enforces (package --max-rows)
        card = dict(card, input=dict(card["input"], max_rows=max_rows))
    return card, model.get("modelName"), model.get("modelVersion")


def describe_target(target: str, home: str | os.PathLike = ".aiaas", name: str | None = None) -> dict:
    """Return the OpenAPI document for a run directory, a .mar archive, or the NAME of a model served from HOME."""
    from .archive import NAME_RE

    p = Path(target)
    server_url, version = DEFAULT_SERVER, None
    if p.is_dir():
        card = read_card(p)
        if name is None and not NAME_RE.match(p.name):
            raise InputError(f"{p}: its folder name {p.name!r} cannot be a model name (letters, digits, _); "
                             "pass the name for the paths with --name NAME")  # fmt: skip
        name = name or p.name
    elif p.is_file() or target.endswith(".mar"):
        if not p.is_file():
            raise InputError(f"{p}: file not found")
        card, mar_name, version = _archive_card(p)
        name = name or mar_name
    else:
        from . import client as cl

        with cl.Client(home=home) as c:
            try:
                entries = c.describe(target, customized=True)
            except cl.NotFound:
                raise InputError(f"{target}: no such run directory, archive, or model served from {home}") from None
            card = entries[0].get("customizedMetadata") if entries and isinstance(entries[0], dict) else None
            if not isinstance(card, dict):
                raise InputError(f"{target}: the server does not show its model card; is it an aiaas archive?")
            version = entries[0].get("modelVersion")
            server_url = c.inference_url or server_url
        name = name or target
    return document(card, name, server_url, version)
