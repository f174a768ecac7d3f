"""The request contract of text models: JSON bodies of texts → token batches → answers (labels, embeddings, OpenAI).

Shipped in every text archive beside text_handler.py, and used by LocalModel: torch, numpy and `tokenizers` only.
The tokenizer is the archive's tokenizer.json, read by the `tokenizers` library (JSON, no code); its own padding
and truncation settings are switched off, so that what is padded and what is cut is decided here: each batch is
padded to its longest text (at least 2 tokens, the program's smallest sequence), and a text longer than the card's
`max_length` is refused, naming its token count, unless its request asks `"truncate": true`.

Bodies: `{"instances": ["text", ...]}` or `{"instances": [{"text": ..., "text_pair": ...}, ...]}` (pairs for pair
classifiers) → `{"predictions", "probabilities", "classes"}` for a classifier, `{"embeddings"}` for an encoder;
OpenAI's embeddings body (`input`, `model`, `encoding_format`) on the route `v1/embeddings` → OpenAI's answer,
and its errors in OpenAI's shape.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

import numpy as np
import torch

try:  # installed package (tests, aiaas predict --local)
    from . import aiaas_contract as contract
    from . import batch_checks, integrity
    from .contract_common import ContractError, clip_text, show_value
    from .openai_api import OpenAIError, openai_error  # noqa: F401 (text_handler answers in OpenAI's shape through text.)
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    import aiaas_contract as contract
    import batch_checks
    import integrity
    from contract_common import ContractError, clip_text, show_value
    from openai_api import OpenAIError, openai_error  # noqa: F401

TOKENIZER = "tokenizer.json"
OPENAI_EMBEDDINGS = "v1/embeddings"
ENCODINGS = ("float", "base64")
MIN_SEQ = 2  # the exported program's smallest sequence length


def load_tokenizer(path: str):
    """Return the `tokenizers.Tokenizer` of a tokenizer.json with its own padding and truncation switched off."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    tok.no_padding()
    tok.no_truncation()
    return tok


def tokenizer_entry(path: str) -> dict:
    """Return the card's files entry of a tokenizer.json: role, SHA-256, bytes."""
    import os

    return {"role": "tokenizer", "sha256": integrity.sha256_file(path), "bytes": os.path.getsize(path)}


@dataclass
class TextRequest:
    """One checked request: its texts (with their pair texts or None), whether to truncate, and its answer format."""

    items: list
    truncate: bool = False
    fmt: str = "instances"  # or "openai", "v2"
    encoding: str = "float"
    model: str | None = None
    v2_id: str | None = None
    tokens: list = field(default_factory=list)  # per item, filled by TextModel.tokenize


def _text(v, where: str) -> str:
    """Return v when it is a string, else raise ContractError naming `where`."""
    if not isinstance(v, str):
        row = ('; a text model takes {"instances": ["a text", ...]}: one string per instance, not a row of cells '
               "(aiaas predict NAME --body '{\"instances\": [\"...\"]}')") if isinstance(v, list) else ""
        raise ContractError(f"{where}: {show_value(v)} is not a text (a JSON string){row}")
    return v


def _truncate_flag(body: dict, error=ContractError) -> bool:
    """Return the request's "truncate" setting (default false), refusing anything but a boolean."""
    t = body.get("truncate", False)
    if not isinstance(t, bool):
        raise error("truncate: expected true or false, got " + show_value(t))
    return t


def parse_request(body, card: dict, max_rows: int | None = None) -> TextRequest:
    """Return the TextRequest of an instances body (raises ContractError naming what is wrong)."""
    body = contract.decode_body(body)
    if isinstance(body, dict) and "inputs" in body and "instances" not in body:
        return parse_v2(body, card, max_rows)
    if not isinstance(body, dict) or "instances" not in body:
        raise ContractError('body: expected {"instances": ["text", ...]} (or objects {"text": ..., "text_pair": ...})')
    extra = sorted(set(body) - {"instances", "truncate"})
    if extra:
        raise ContractError(f"body: unknown field {clip_text(str(extra[0]))!r}; expected instances and truncate")
    truncate = _truncate_flag(body)
    inst = body["instances"]
    if not isinstance(inst, list) or not inst:
        raise ContractError("instances: expected a non-empty list of texts")
    limit = max_rows or card["input"].get("max_rows") or contract.DEFAULT_MAX_ROWS
    if len(inst) > limit:
        raise ContractError(f"instances: {len(inst)} texts, more than the limit of {limit} per request")
    pairs = card["input"].get("pairs", False)
    items = []
    for i, v in enumerate(inst):
        if isinstance(v, dict):
            extra = sorted(set(v) - {"text", "text_pair"})
            if extra or "text" not in v:
                raise ContractError(f"instances[{i}]: expected {{\"text\": ...}}" + (' with "text_pair"' if pairs else "")
                                    + (f"; unknown field {clip_text(str(extra[0]))!r}" if extra else "; 'text' missing"))  # fmt: skip
            pair = v.get("text_pair")
            if pair is not None and not pairs:
                raise ContractError(f"instances[{i}].text_pair: this model takes single texts, not pairs")
            items.append((_text(v["text"], f"instances[{i}].text"), None if pair is None else _text(pair, f"instances[{i}].text_pair")))
        else:
            items.append((_text(v, f"instances[{i}]"), None))
    return TextRequest(items, truncate)


def _v2_texts(spec, where: str, limit: int) -> list:
    """Return the texts of one Open Inference v2 BYTES input [N] (or [N, 1]), refusing any other form."""
    if not isinstance(spec, dict):
        raise ContractError(f"{where}: expected a tensor object {{name, shape, datatype, data}}")
    if spec.get("datatype") != "BYTES":
        raise ContractError(f"{where}: datatype {show_value(spec.get('datatype'))}; a text input is BYTES")
    shape, data = spec.get("shape"), spec.get("data")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2 or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            or (len(shape) == 2 and shape[1] != 1)):  # fmt: skip
        raise ContractError(f"{where}: shape {show_value(shape)}; expected [N] (one text per sample)")
    if not isinstance(data, list) or len(data) != shape[0] or not data:
        raise ContractError(f"{where}: data must be a non-empty list of shape[0] = {shape[0]} texts")
    if len(data) > limit:
        raise ContractError(f"{where}: {len(data)} texts, more than the limit of {limit} per request")
    return [_text(v, f"{where}.data[{i}]") for i, v in enumerate(data)]


def parse_v2(body: dict, card: dict, max_rows: int | None = None) -> TextRequest:
    """Return the TextRequest of an Open Inference v2 body: a BYTES input "text" [N] (and "text_pair" [N] for pairs)."""
    inputs = body["inputs"]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise ContractError('inputs: expected Open Inference v2 tensors [{"name": "text", "shape": [N], "datatype": "BYTES", "data": [...]}]')
    byname = {t.get("name"): t for t in inputs}
    allowed = ["text", "text_pair"] if card["input"].get("pairs") else ["text"]
    unknown = [n for n in byname if n not in allowed]
    if unknown or "text" not in byname or len(byname) != len(inputs):
        raise ContractError(f"inputs: expected the input(s) {', '.join(allowed)} (text_pair optional); got "
                            f"{', '.join(clip_text(str(n)) for n in byname)}")  # fmt: skip
    limit = max_rows or card["input"].get("max_rows") or contract.DEFAULT_MAX_ROWS
    texts = _v2_texts(byname["text"], "inputs['text']", limit)
    pairs = _v2_texts(byname["text_pair"], "inputs['text_pair']", limit) if "text_pair" in byname else [None] * len(texts)
    if len(pairs) != len(texts):
        raise ContractError(f"inputs['text_pair']: {len(pairs)} texts for {len(texts)} in 'text'")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise ContractError("parameters: expected an object")
    v2_id = body.get("id")
    if v2_id is not None and not isinstance(v2_id, str):
        raise ContractError("id: expected a string")
    return TextRequest(list(zip(texts, pairs)), _truncate_flag(params), "v2", v2_id=v2_id)


def parse_openai(body, card: dict, max_rows: int | None = None) -> TextRequest:
    """Return the TextRequest of an OpenAI embeddings body (raises OpenAIError naming the parameter)."""
    try:
        body = contract.decode_body(body)
    except ContractError as e:
        raise OpenAIError(str(e)) from None
    if card["output"]["task"] != "embedding":
        raise OpenAIError("this model is a classifier; /v1/embeddings serves embedding models", "model", 404)
    if not isinstance(body, dict):
        raise OpenAIError("body: expected a JSON object with 'input' and 'model'")
    if "input" not in body:
        raise OpenAIError("you must provide an 'input' parameter", "input")
    model = body.get("model")
    if not isinstance(model, str):
        raise OpenAIError("model: expected the model's name (a string)", "model")
    enc = body.get("encoding_format", "float")
    if enc is None:
        enc = "float"
    if enc not in ENCODINGS:
        raise OpenAIError(f"encoding_format: {show_value(enc)} is not one of float, base64", "encoding_format")
    dims = body.get("dimensions")
    if dims is not None and dims != card["output"]["dim"]:
        raise OpenAIError(f"dimensions: this model answers {card['output']['dim']} dimensions, not {show_value(dims)}", "dimensions")
    extra = sorted(set(body) - {"input", "model", "encoding_format", "dimensions", "user", "truncate"})
    if extra:
        raise OpenAIError(f"unknown parameter {clip_text(str(extra[0]))!r}", str(extra[0])[:40])
    truncate = _truncate_flag(body, lambda m: OpenAIError(m, "truncate"))
    inp = body["input"]
    texts = [inp] if isinstance(inp, str) else inp
    if not isinstance(texts, list) or not texts:
        raise OpenAIError("input: expected a string or a non-empty list of strings", "input")
    limit = max_rows or card["input"].get("max_rows") or contract.DEFAULT_MAX_ROWS
    if len(texts) > limit:
        raise OpenAIError(f"input: {len(texts)} texts, more than the limit of {limit} per request", "input")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise OpenAIError(f"input[{i}]: {show_value(t)} is not a string (token arrays are not accepted)", "input")
    return TextRequest([(t, None) for t in texts], truncate, "openai", enc, model)


class TextModel:
    """A text model's tokenizer and program: texts → one padded forward per batch → per-text output rows."""

    def __init__(self, card: dict, directory: str, program):
        import os

        self.card, self.program = card, program
        inp = card["input"]
        self.max_length, self.pad_id = int(inp["max_length"]), int(inp.get("pad_id", 0))
        self.types = len(inp["tensors"]) > 2
        self.tokenizer = load_tokenizer(os.path.join(directory, inp["tokenizer"]["file"]))
        self.cutter = load_tokenizer(os.path.join(directory, inp["tokenizer"]["file"]))
        self.cutter.enable_truncation(self.max_length)

    def tokenize(self, req: TextRequest) -> TextRequest:
        """Return the request with each text's (ids, type ids) filled in (raises ContractError for a text over the maximum)."""
        batch = [t if p is None else (t, p) for t, p in req.items]
        encs = self.tokenizer.encode_batch(batch)
        tokens = []
        for i, (e, x) in enumerate(zip(encs, batch)):
            n = len(e.ids)
            if n > self.max_length:
                where = {"openai": f"input[{i}]", "v2": f"inputs['text'].data[{i}]"}.get(req.fmt, f"instances[{i}]")
                if not req.truncate:
                    msg = (f"{where}: {n} tokens, more than this model's maximum of {self.max_length}; shorten it, or send "
                           f'"truncate": true to cut it to {self.max_length} tokens')  # fmt: skip
                    raise OpenAIError(msg, "input") if req.fmt == "openai" else ContractError(msg)
                e = self.cutter.encode(*x) if isinstance(x, tuple) else self.cutter.encode(x)
            tokens.append((e.ids, e.type_ids))
        req.tokens = tokens
        return req

    def forward(self, tokens: list) -> np.ndarray:
        """Return the model's float32 output rows for token lists [(ids, type ids)], in one forward padded to the longest."""
        n, width = len(tokens), max(MIN_SEQ, max(len(ids) for ids, _ in tokens))
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for i, (t, tt) in enumerate(tokens):
            ids[i, : len(t)] = t
            mask[i, : len(t)] = 1
            types[i, : len(tt)] = tt
        device = getattr(self.program, "device", "cpu")  # a ProgramSet on a GPU takes its inputs there
        xs = [torch.from_numpy(a).to(device) for a in ([ids, mask, types] if self.types else [ids, mask])]
        with torch.inference_mode():
            out = self.program(*xs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.float().cpu().numpy()

    def answer(self, req: TextRequest, rows: np.ndarray, name: str, version: str) -> dict:
        """Return one request's answer from its output rows: labels and probabilities, embeddings, or OpenAI's list."""
        if not np.isfinite(rows).all():
            raise RuntimeError("the model's output is not finite for this request")
        if req.fmt == "openai":
            data = [{"object": "embedding", "index": i,
                     "embedding": base64.b64encode(r.astype("<f4").tobytes()).decode("ascii") if req.encoding == "base64" else r.tolist()}
                    for i, r in enumerate(rows)]  # fmt: skip
            n = sum(len(ids) for ids, _ in req.tokens)
            return {"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": n, "total_tokens": n}}
        classes = self.card["output"].get("classes")
        if req.fmt == "v2":
            return self._v2_answer(req, rows, name, version)
        if classes:
            probs, best = batch_checks.softmax_rows(rows)
            return {"predictions": [classes[k] for k in best], "probabilities": probs, "classes": classes,
                    "model": name, "version": version}  # fmt: skip
        return {"embeddings": rows.tolist(), "model": name, "version": version}

    def _v2_answer(self, req: TextRequest, rows: np.ndarray, name: str, version: str) -> dict:
        """Return the Open Inference v2 answer: predictions (BYTES) and probabilities (FP32), or embedding (FP32 [N, H])."""
        classes, n = self.card["output"].get("classes"), len(rows)
        if classes:
            probs, best = batch_checks.softmax_rows(rows)
            outs = [{"name": "predictions", "shape": [n], "datatype": "BYTES", "data": [classes[k] for k in best]},
                    {"name": "probabilities", "shape": [n, len(classes)], "datatype": "FP32", "data": [p for r in probs for p in r]}]  # fmt: skip
        else:
            outs = [{"name": "embedding", "shape": [n, int(rows.shape[1])], "datatype": "FP32", "data": rows.ravel().tolist()}]
        answer = {"model_name": name, "model_version": version, "outputs": outs}
        if req.v2_id is not None:
            answer["id"] = req.v2_id
        return answer

    def predict(self, body, name: str = "local", version: str = "local", route: str | None = None) -> dict:
        """Return the answer to one body (instances, or OpenAI's when `route` is v1/embeddings); raises ContractError."""
        req = parse_openai(body, self.card) if route == OPENAI_EMBEDDINGS else parse_request(body, self.card)
        self.tokenize(req)
        return self.answer(req, self.forward(req.tokens), name, version)


def warmup_body() -> dict:
    """Return a request body that warms a text worker up (two texts of different lengths)."""
    return {"instances": ["warm up", "warm up the model with a second, longer text"]}


def dumps(answer: dict) -> str:
    """Return an answer as compact JSON."""
    return json.dumps(answer, separators=(",", ":"))
