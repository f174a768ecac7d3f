"""Wire encodings the handler speaks besides plain JSON: Open Inference binary tensor data and TF Serving REST bodies.

Torch-and-stdlib only, shipped inside every .mar beside the handler (aiaas_torch may be absent in a worker). It
never checks a value against the model: `decode` turns a request into the body `aiaas_contract.parse_request`
already takes (a v2 dict whose tensors carry `data` lists, or `{"instances": rows}`), and `encode` turns that
contract's answer back into the request's wire format. The handler cannot see the URL, so the body decides:

- header `Inference-Header-Content-Length: N` (any case) → the first N bytes are the v2 JSON header, the rest
  the inputs' raw little-endian bytes in input order (`parameters.binary_data_size` each);
- `{"inputs": [...]}` whose list holds only JSON objects → an Open Inference v2 tensor list;
- `{"inputs": ...}` anything else (an object of named columns, or a bare list) → TF Serving's columnar format;
- everything else (`instances`, bare lists) goes to the contract unchanged.

Binary outputs are sent when the v2 request asks (`parameters.binary_data_output`, or an output's
`parameters.binary_data`), which is tritonclient's default.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

try:  # numpy ships beside torch in every worker we build; without it binary tensors are read with struct
    import numpy as np
except ImportError:  # pragma: no cover
    np = None

try:  # installed package (tests, aiaas predict --local)
    from .contract_common import ContractError
    from .json_body import decode_body
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    from contract_common import ContractError
    from json_body import decode_body

BINARY_HEADER = "Inference-Header-Content-Length"
OCTET_STREAM = "application/octet-stream"
# Open Inference datatype → struct format of one little-endian element (BF16 has none: read as the high half of FP32).
_FORMATS = {"BOOL": "?", "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q", "UINT8": "B", "UINT16": "H",
            "UINT32": "I", "UINT64": "Q", "FP16": "e", "FP32": "f", "FP64": "d"}  # fmt: skip


@dataclass
class Decoded:
    """A request turned into a body for aiaas_contract.parse_request, and how to answer it on the wire."""

    body: object
    wire: str = "json"  # "json" (the contract's own answer) | "v2" | "tfs-columns"
    outputs: list | None = None  # v2: the names asked for, in order (None: all)
    binary: set | frozenset = frozenset()  # v2: names to send as binary data (a set of its own when asked for)
    binary_all: bool = False  # v2: parameters.binary_data_output


def header(headers: dict | None, name: str):
    """Return the value of header `name` from a headers dict whose names may have any case, or None."""
    wanted = name.lower()
    return next((v for k, v in (headers or {}).items() if isinstance(k, str) and k.lower() == wanted), None)


_BINARY_LOWER, _CONTENT_TYPE, _ABSENT = BINARY_HEADER.lower(), "content-type", object()


def scan(headers: dict | None) -> tuple:
    """Return (binary header value, Content-Type value) of a request's headers in one pass, each as `header` finds it
    (the first name of any case), or None where absent."""
    length = ctype = _ABSENT
    for k, v in (headers or {}).items():
        if isinstance(k, str):
            k = k.lower()
            if k == _CONTENT_TYPE:
                if ctype is _ABSENT:
                    ctype = v
            elif k == _BINARY_LOWER and length is _ABSENT:
                length = v
    return None if length is _ABSENT else length, None if ctype is _ABSENT else ctype


def decode(body, headers: dict | None, max_rows: int | None = None) -> Decoded:
    """Return the Decoded form of one request body (bytes, str or decoded JSON) given its headers; raises ContractError."""
    return decode_with(body, header(headers, BINARY_HEADER), max_rows)


def decode_with(body, length, max_rows: int | None = None) -> Decoded:
    """Return the Decoded form of one request body given its binary header's value (None: a JSON body); raises
    ContractError. max_rows: the model's row limit, which TF Serving's named columns are checked against before they
    become rows (None: no limit here; the contract still checks its own)."""
    if length is not None:
        return _v2_request(_split_binary(body, length))
    value = decode_body(body)
    if isinstance(value, dict) and "inputs" in value and "instances" not in value:  # both: the contract refuses it
        if is_v2_tensor_list(value["inputs"]):
            return _v2_request(value)
        return _columns_request(value, max_rows)
    return Decoded(value)


def is_v2_tensor_list(inputs) -> bool:
    """Return True when `inputs` is an Open Inference tensor list: a non-empty list holding only JSON objects."""
    return isinstance(inputs, list) and bool(inputs) and all(isinstance(t, dict) for t in inputs)


def _split_binary(body, length) -> dict:
    """Return the v2 JSON header of a binary-extension body with each binary input turned into a `data` list."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not isinstance(body, (bytes, bytearray)):  # TorchServe decoded it: the body was all JSON, no binary part
        head = body
        if not isinstance(head, dict) or not is_v2_tensor_list(head.get("inputs")):
            raise ContractError("inputs: expected a list of tensor objects {name, shape, datatype, data}")
        return head
    try:
        n = int(str(length).strip())
    except ValueError:
        raise ContractError(f"{BINARY_HEADER}: {str(length)[:40]!r} is not an integer") from None
    if not 0 < n <= len(body):
        raise ContractError(f"{BINARY_HEADER}: {n} is outside the body's {len(body)} bytes")
    head = decode_body(bytes(body[:n]))
    if not isinstance(head, dict):
        raise ContractError(f"body: the first {n} bytes ({BINARY_HEADER}) must be a JSON object")
    inputs = head.get("inputs")
    if not is_v2_tensor_list(inputs):
        raise ContractError("inputs: expected a list of tensor objects {name, shape, datatype, data}")
    rest, offset = memoryview(bytes(body))[n:], 0
    for i, t in enumerate(inputs):
        size = (t.get("parameters") or {}).get("binary_data_size") if isinstance(t.get("parameters"), dict) else None
        if size is None:
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ContractError(f"inputs[{i}].parameters.binary_data_size: {size!r} is not a byte count")
        if offset + size > len(rest):
            raise ContractError(f"inputs[{i}]: binary_data_size {size} runs past the body's end ({len(rest) - offset} bytes left)")
        t = inputs[i] = dict(t, parameters={k: v for k, v in t["parameters"].items() if k != "binary_data_size"})
        t["data"] = _unpack(rest[offset : offset + size], t.get("datatype"), f"inputs[{i}]")  # a view: no copy
        offset += size
    if offset != len(rest):
        raise ContractError(f"body: {len(rest) - offset} bytes after the binary inputs that no binary_data_size accounts for")
    return head


def _unpack(raw: memoryview, datatype, where: str):
    """Return the elements of one binary tensor (a view of the body's bytes) as a flat numpy array over those bytes
    (a flat list without numpy)."""
    if datatype == "BF16":
        if len(raw) % 2:
            raise ContractError(f"{where}: {len(raw)} bytes is not a whole number of BF16 elements")
        if np is not None:  # a BF16 is the high half of an FP32
            return (np.frombuffer(raw, dtype="<u2").astype("<u4") << 16).view("<f4")
        return [struct.unpack("<f", b"\0\0" + bytes(raw[i : i + 2]))[0] for i in range(0, len(raw), 2)]
    fmt = _FORMATS.get(datatype) if isinstance(datatype, str) else None
    if fmt is None:
        raise ContractError(f"{where}.datatype: {str(datatype)[:40]!r} cannot be sent as binary data here; use one of {sorted(_FORMATS)} or BF16")
    size = struct.calcsize(fmt)
    if len(raw) % size:
        raise ContractError(f"{where}: {len(raw)} bytes is not a whole number of {datatype} elements ({size} bytes each)")
    if np is not None:
        return np.frombuffer(raw, dtype="<" + fmt)
    return list(struct.unpack(f"<{len(raw) // size}{fmt}", raw))


def _v2_request(body: dict) -> Decoded:
    """Return the Decoded v2 request with the outputs it asks for and which of them go back as binary data."""
    params = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
    decoded = Decoded(body, "v2", binary_all=params.get("binary_data_output") is True)
    asked = body.get("outputs")
    if asked is not None:
        if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
            raise ContractError("outputs: expected a list of objects with a 'name'")
        decoded.outputs = [o["name"] for o in asked]
        decoded.binary = {o["name"] for o in asked if isinstance(o.get("parameters"), dict) and o["parameters"].get("binary_data") is True}
    return decoded


def _columns_request(body: dict, max_rows: int | None) -> Decoded:
    """Return TF Serving's columnar body as contract rows: named columns of equal length (their count checked against
    max_rows before a row is built), or a bare list of rows."""
    unknown = sorted(k for k in body if k not in ("inputs", "signature_name"))
    if unknown:
        raise ContractError(f"body: unexpected key(s) {unknown[:5]} beside TF Serving's 'inputs'")
    inputs = body["inputs"]
    if isinstance(inputs, list):
        return Decoded({"instances": inputs}, "tfs-columns")
    if not isinstance(inputs, dict) or not inputs:
        raise ContractError("inputs: expected a list of tensor objects (Open Inference), an object of named columns or a list of rows (TF Serving)")
    lengths = {}
    for name, column in inputs.items():
        if not isinstance(column, list):
            raise ContractError(f"inputs.{str(name)[:40]}: expected a list of values, one per row, got {type(column).__name__}")
        lengths[name] = len(column)
    if len(set(lengths.values())) > 1:
        raise ContractError(f"inputs: columns of different lengths {dict(list(lengths.items())[:5])}")
    n = next(iter(lengths.values()))
    if max_rows is not None and n > max_rows:  # before one dict per row: a 6.5 MB body grew the worker by 670 MB
        raise ContractError(f"inputs: {n} rows, more than the limit of {max_rows} per request")
    return Decoded({"instances": [{name: column[i] for name, column in inputs.items()} for i in range(n)]}, "tfs-columns")


def encode(decoded: Decoded, answer: dict) -> tuple[bytes | str, dict]:
    """Return (body, response headers) of the contract's `answer` dict in the request's wire format."""
    if decoded.wire == "tfs-columns":
        return _json(_columns_answer(answer)), {}
    if decoded.wire != "v2":
        return _json(answer), {}
    outputs = answer.get("outputs", [])
    if decoded.outputs is not None:
        by_name = {o["name"]: o for o in outputs}
        missing = [n for n in decoded.outputs if n not in by_name]
        if missing:
            raise ContractError(f"outputs: {missing[:5]} not among this model's outputs {sorted(by_name)}")
        outputs = [by_name[n] for n in decoded.outputs]
    binary = [o["name"] for o in outputs if decoded.binary_all or o["name"] in decoded.binary]
    if not binary:
        return _json(dict(answer, outputs=outputs)), {}
    chunks, head_outputs = [], []
    for o in outputs:
        if o["name"] in binary:
            raw = _pack(o["data"], o["datatype"])
            chunks.append(raw)
            o = {k: v for k, v in o.items() if k != "data"}
            o["parameters"] = dict(o.get("parameters") or {}, binary_data_size=len(raw))
        head_outputs.append(o)
    head = _json(dict(answer, outputs=head_outputs)).encode("utf-8")
    return head + b"".join(chunks), {BINARY_HEADER: str(len(head)), "content-type": OCTET_STREAM}


def _pack(data: list, datatype: str) -> bytes:
    """Return a flat list of values as one binary tensor (BYTES: each element as a 4-byte length and its UTF-8)."""
    if datatype == "BYTES":
        parts = [str(v).encode("utf-8") for v in data]
        return b"".join(struct.pack("<I", len(p)) + p for p in parts)
    return struct.pack(f"<{len(data)}{_FORMATS[datatype]}", *data)


def _columns_answer(answer: dict) -> dict:
    """Return TF Serving's columnar answer: `outputs` holds the one output, or an object of named outputs."""
    named = {k: answer[k] for k in ("predictions", "probabilities") if k in answer}
    return {"outputs": named["predictions"] if len(named) == 1 else named}


class AnswerText:
    """A tabular card's JSON answer (instances or bare rows) written from parts computed once per card and model:
    the text `encode` gives for the contract's answer dict, without building the dict."""

    def __init__(self, card: dict, model_name: str, model_version: str):
        out = card["output"]
        tail = f',"model":{_json(model_name)},"version":{_json(model_version)}}}'
        self.labels = [_json(c) for c in out["classes"]] if out["task"] == "classification" else None
        self.tail = f',"classes":{_json(out["classes"])}{tail}' if self.labels is not None else tail

    def text(self, outputs) -> str:
        """Return the JSON answer of one request's finite output rows (a batch_checks.Outputs slice)."""
        return self.texts([outputs])[0]

    def texts(self, parts: list) -> list:
        """Return the JSON answer of each request's output rows (batch_checks.Outputs slices of one batch's outputs, or
        None: then None); a request holding a row that is not finite gets None too (the contract's answer refuses it)."""
        r = float.__repr__  # what json writes for a finite float
        labels, tail, out = self.labels, self.tail, []
        for o in parts:
            if o is None or o.first_non_finite() is not None:
                out.append(None)
            elif labels is None:
                out.append('{"predictions":[' + ",".join(map(r, o.first_column())) + "]" + tail)
            else:
                out.append('{"predictions":[' + ",".join([labels[k] for k in o.best()]) + '],"probabilities":['
                           + ",".join(["[" + ",".join(map(r, p)) + "]" for p in o.probabilities()]) + "]" + tail)  # fmt: skip
        return out


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps with options builds one per call


def _json(value) -> str:
    """Return value as compact JSON."""
    return _COMPACT.encode(value)
