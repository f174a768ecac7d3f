"""Reading a request body: its Content-Type, and its bytes parsed into JSON once (orjson where it gives json's own value).

Stdlib only (orjson when present); shipped in every .mar beside the handler. The body is parsed here and nowhere else:
protocols.py (wire formats) and aiaas_contract.py (the rows' checks) take the value this gives. NaN and Infinity
literals, which Python's json accepts, become `NonFiniteLiteral` markers that the value checks refuse by name.
"""

from __future__ import annotations

import json

try:  # a C JSON parser, several times faster than json on request bodies; a worker without it parses with json
    import orjson
except ImportError:  # pragma: no cover
    orjson = None

try:  # installed package (tests, aiaas predict --local)
    from .contract_common import ContractError, NonFiniteLiteral, UnsupportedMediaType, clip_text
except ImportError:  # inside a TorchServe worker: the model directory is on sys.path
    from contract_common import ContractError, NonFiniteLiteral, UnsupportedMediaType, clip_text

# orjson reads an integer literal of over 64 bits as a float, where json keeps it an int (which int dtypes and the
# messages need): a body holding 19 digits in a row that follow neither a digit nor a '.' (an integer literal, an
# exponent or text) takes json's path. One C pass: digits become '1', '.' stays, every other byte becomes '0'.
_DIGIT_CLASSES = bytes(0x31 if 0x30 <= b <= 0x39 else 0x2E if b == 0x2E else 0x30 for b in range(256))
_LONG_INTEGER = b"0" + b"1" * 19


def has_long_integer(body: bytes) -> bool:
    """Return True when a bytes body may hold an integer literal of 19 digits or more (orjson would read a float)."""
    classes = body.translate(_DIGIT_CLASSES)
    return classes.find(_LONG_INTEGER) >= 0 or classes.startswith(_LONG_INTEGER[1:])


def _orjson_value(body: bytes):
    """Return orjson's value of a bytes body where it is json's own, else None (None is then json's to decide)."""
    if has_long_integer(body):
        return None
    try:
        return orjson.loads(body)
    except Exception:  # any refusal (NaN/Infinity, 1e400, not UTF-8, a BOM, bad JSON, deep nesting): json decides
        return None


def decode_body(body):
    """Return the JSON value of a request body given as bytes, str, or already-decoded JSON; any failure is a ContractError.

    A bytes body goes through orjson first where it gives json's own value; every body orjson refuses goes through
    json, whose value or message stands. One difference remains: nesting of about 990-1,024 levels, which json
    refuses deep in a call stack ("nested too deeply"), reaches the contract's own checks (still a 400 naming it).
    """
    if orjson is not None and isinstance(body, (bytes, bytearray)):
        value = _orjson_value(body)
        if value is not None:
            return value
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ContractError(f"body: not UTF-8 text (byte {e.start})") from None
    if isinstance(body, str):
        if not body.strip():
            raise ContractError("body: empty; expected JSON such as {\"instances\": [[...]]}")
        try:
            return json.loads(body, parse_constant=NonFiniteLiteral)
        except RecursionError:
            raise ContractError("body: JSON nested too deeply") from None
        except json.JSONDecodeError as e:
            raise ContractError(f"body: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        except ValueError as e:  # valid JSON that Python refuses, e.g. an integer literal of over 4,300 digits
            raise ContractError(f"body: cannot be read ({str(e).split(';')[0][:200]})") from None
    return body


_USUAL_JSON_TYPES = {"application/json", "application/json; charset=utf-8", "application/json;charset=utf-8"}


def check_content_type(value) -> None:
    """Raise UnsupportedMediaType unless a request's Content-Type is JSON (application/json, */*+json) in UTF-8, or absent."""
    if value is None or (type(value) is str and value in _USUAL_JSON_TYPES):  # what nearly every request sends: no parsing
        return
    media, *params = [part.strip().lower() for part in str(value).split(";")]
    charsets = [p.split("=", 1)[1].strip().strip('"') for p in params if p.startswith("charset=")]
    if any(c not in ("utf-8", "utf8") for c in charsets):
        raise UnsupportedMediaType(f"Content-Type: charset {clip_text(charsets[0])!r} is not supported; send JSON in UTF-8")
    if media in ("", "application/json") or (media.startswith("application/") and media.endswith("+json")):
        return
    raise UnsupportedMediaType(
        f"Content-Type: {str(value)[:80]!r} is not supported; send the JSON body with Content-Type: application/json"
    )
