"""The allow-list check of an untrusted torch.export .pt2 file, and the canonical copy torch is given to read.

Torch-and-stdlib only: shipped inside every .mar beside the handler, and used by the importer (aiaas import)
and by the worker before torch.export.load. torch.export.load is no safe parser: it unpickles sample inputs
(falling back to a full unpickle), weights stored with use_pickle and the legacy layout's files, sympifies
(evaluates) symbolic-shape strings, execs guard code when module() is built and called, looks members up
ignoring case, and builds AOTInductor packages with a compiler named in JSON. So torch never opens the file
itself: `canonical_bytes` checks every member against what torch 2.13's torch.export.save writes (names,
JSON schema with types, strings torch evaluates against strict grammars) and returns a rebuilt archive of
the checked members only, with empty sample inputs (`SAMPLE_INPUTS`), no guard code and a fixed serialization
id: the same bytes for the same program, whatever the source file carried there.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import io
import json
import os
import re
import types
import typing
import zipfile

import torch

MODEL_JSON = "models/model.json"
SAMPLE_INPUTS_MEMBER = "data/sample_inputs/model.pt"
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
SAMPLE_INPUTS = b""  # what the canonical copy holds as sample inputs: torch reads empty bytes as "none" (no unpickling)
SAMPLE_INPUTS_SHA256 = hashlib.sha256(SAMPLE_INPUTS).hexdigest()
SERIALIZATION_ID = b"0" * 40  # torch.export.save writes a random one; a fixed one keeps archives byte-reproducible
# every member torch.export.save writes, with the content allowed (None: checked by its own rule below)
FIXED = {
    "archive_format": re.compile(rb"pt2"),
    "archive_version": re.compile(rb"0"),
    ".data/version": re.compile(rb"[0-9]{1,3}\n?"),
    "byteorder": re.compile(rb"little"),
    ".data/serialization_id": re.compile(rb"[0-9]{1,64}"),
    MODEL_JSON: None,
    SAMPLE_INPUTS_MEMBER: None,
    WEIGHTS_CONFIG: None,
    CONSTANTS_CONFIG: None,
}
PAYLOAD = {WEIGHTS_CONFIG: ("data/weights/", re.compile(r"weight_[0-9]{1,9}")),
           CONSTANTS_CONFIG: ("data/constants/", re.compile(r"tensor_[0-9]{1,9}"))}  # fmt: skip
ROOT_RE = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
MAX_MEMBERS = 100_000

# symbolic expressions as torch writes them (sympy srepr): calls of these names on symbol names and number
# literals, keyword arguments of these assumptions; no attribute, subscript, operator, string or other name
SYMPY_CALLS = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod", "Eq", "Ne",
    "StrictLessThan", "LessThan", "StrictGreaterThan", "GreaterThan", "Equality", "Unequality", "And", "Or", "Not",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift",
    "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "TruncToFloat", "TruncToInt", "RoundToInt",
    "RoundDecimal", "ToFloat", "Identity",
})  # fmt: skip
SYMPY_KEYWORDS = frozenset({"positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "precision"})
SYMPY_VALUES = frozenset({"True", "False", "true", "false", "oo", "zoo", "nan"})
SYMBOL_RE = re.compile(r"[a-z]{1,8}[0-9]{1,9}")
_SYMPY_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z]+)|'(?P<sym>[a-z]{1,8}[0-9]{1,9})'|'(?P<float>-?[0-9.]+(?:e[-+]?[0-9]+)?)'"
                          r"|(?P<num>-?[0-9]{1,40})|(?P<punct>[(),=]))")  # fmt: skip
# guard code as torch writes it: comparisons of input sizes and integers
_GUARD_TOKEN = re.compile(r"\s*(?:L\['[A-Za-z_][A-Za-z0-9_]{0,99}'\]\.size\(\)\[[0-9]{1,3}\]|[0-9]{1,20}"
                          r"|==|!=|<=|>=|<|>|\+|-|\*|//|%|\(|\))")  # fmt: skip
# graph node targets: ATen operators, Python's arithmetic on sizes and symbolic-shape helpers; nothing else
TARGET_RE = re.compile(r"torch\.ops\.aten\.[A-Za-z0-9_]{1,80}\.[A-Za-z0-9_]{1,40}|_operator\.(?:getitem|add|sub|mul|floordiv|"
                       r"truediv|mod|neg|pow|eq|ne|lt|le|gt|ge|and_|or_|not_)|torch\.sym_(?:int|float|max|min|not|ite|sqrt|sum)"
                       r"|math\.(?:ceil|floor|trunc|sqrt)")  # fmt: skip
INPUT_KINDS = ("parameter", "buffer", "tensor_constant", "user_input")
REFUSED_ARGS = ("as_custom_obj", "as_graph", "as_operator", "as_optional_tensors")
TREESPEC_TYPES = (None, "builtins.tuple", "builtins.list", "builtins.dict")


class Refused(ValueError):
    """A .pt2 file that is not what torch.export.save writes, or that would run code; the message names member and field."""


def _refuse(member: str, field: str, why: str):
    """Raise Refused for `field` of `member`."""
    raise Refused(f"member {member!r}, {field}: {why}" if field else f"member {member!r}: {why}")


def _schema():
    """Return torch's export serialization schema module (the dataclasses torch reads the JSON into)."""
    from torch._export.serde import schema

    return schema


def check_value(value, tp, member: str, field: str) -> None:
    """Return None when JSON `value` has the schema type `tp` (no missing, extra or wrongly typed field); else raise Refused."""
    schema = _schema()
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return check_value(value, args[0], member, field)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return check_value(value, next(a for a in args if a is not type(None)), member, field)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            _refuse(member, field, f"expected an object ({tp.__name__}), got {type(value).__name__}")
        hints = typing.get_type_hints(tp, globalns=vars(schema), include_extras=True)
        if issubclass(tp, schema._Union):
            if len(value) != 1 or next(iter(value)) not in hints:
                _refuse(member, field, f"expected one of {sorted(hints)} ({tp.__name__}), got {sorted(value)[:5]}")
        else:
            required = {f.name for f in dataclasses.fields(tp) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
            extra, missing = set(value) - set(hints), required - set(value)
            if extra or missing:
                _refuse(member, field, f"{tp.__name__}: unknown fields {sorted(extra)[:5]}, missing fields {sorted(missing)}")
        for k, v in value.items():
            check_value(v, hints[k], member, f"{field}.{k}" if field else k)
        return None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if type(value) is not int or value not in {m.value for m in tp}:
            _refuse(member, field, f"{value!r} is not a {tp.__name__}")
    elif origin is list:
        if not isinstance(value, list):
            _refuse(member, field, f"expected a list, got {type(value).__name__}")
        for i, v in enumerate(value):
            check_value(v, args[0], member, f"{field}[{i}]")
    elif origin is dict:
        if not isinstance(value, dict):
            _refuse(member, field, f"expected an object, got {type(value).__name__}")
        for k, v in value.items():
            check_value(v, args[1], member, f"{field}[{k!r}]")
    elif tp is float:
        if type(value) not in (int, float):
            _refuse(member, field, f"expected a number, got {type(value).__name__}")
    elif tp in (int, str, bool):
        if type(value) is not tp:
            _refuse(member, field, f"expected {tp.__name__}, got {type(value).__name__}")
    else:
        _refuse(member, field, f"unsupported schema type {tp!r}")
    return None


def check_sympy(text, member: str, field: str) -> None:
    """Return None when `text` is a symbolic expression in torch's srepr form (the strict grammar above); else raise Refused."""
    if not isinstance(text, str) or len(text) > 4000:
        _refuse(member, field, "expected a symbolic expression string of at most 4000 characters")
    pos, depth, prev = 0, 0, None
    while pos < len(text):
        m = _SYMPY_TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            _refuse(member, field, f"not a symbolic expression torch writes (at {text[pos:pos + 40]!r})")
        name, punct = m.group("name"), m.group("punct")
        if name is not None:
            after = text[m.end():].lstrip()[:1]
            ok = (name in SYMPY_CALLS and after == "(") or (name in SYMPY_KEYWORDS and after == "=") or name in SYMPY_VALUES
            if not ok:
                _refuse(member, field, f"name {name!r} is not allowed in a symbolic expression")
        if punct == "(" and prev != "name":
            _refuse(member, field, "parenthesis that is not a call in a symbolic expression")
        depth += {"(": 1, ")": -1}.get(punct, 0)
        if depth < 0 or depth > 64:
            _refuse(member, field, "unbalanced or too deeply nested symbolic expression")
        prev = "name" if name is not None else "other"
        pos = m.end()
    if depth != 0:
        _refuse(member, field, "unbalanced symbolic expression")


def check_guard(text, member: str, field: str) -> None:
    """Return None when `text` is guard code torch writes (sizes and integers compared); else raise Refused."""
    if not isinstance(text, str) or len(text) > 1000:
        _refuse(member, field, "expected a guard string of at most 1000 characters")
    pos = 0
    while pos < len(text.rstrip()):
        m = _GUARD_TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            _refuse(member, field, f"guard code other than input sizes compared with integers (at {text[pos:pos + 40]!r})")
        pos = m.end()


def _walk_expr_strs(value, member: str, field: str) -> None:
    """Check every "expr_str" under a JSON value against the symbolic-expression grammar."""
    if isinstance(value, dict):
        for k, v in value.items():
            where = f"{field}.{k}" if field else k
            if k == "expr_str":
                check_sympy(v, member, where)
            else:
                _walk_expr_strs(v, member, where)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _walk_expr_strs(v, member, f"{field}[{i}]")


def _check_treespec(text: str, member: str, field: str) -> None:
    """Refuse a pytree spec string holding any container type other than tuple, list and dict."""
    try:
        spec = json.loads(text)
    except ValueError:
        _refuse(member, field, "not a JSON pytree spec")
    stack = [spec[1] if isinstance(spec, list) and len(spec) == 2 else None]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict) or node.get("type") not in TREESPEC_TYPES or not isinstance(node.get("children_spec"), list):
            _refuse(member, field, f"pytree spec node {str(node)[:80]!r}: only tuple, list and dict containers are allowed")
        stack.extend(node["children_spec"])


def check_program(doc: dict, member: str) -> None:
    """Return None when the program JSON `doc` holds nothing torch would evaluate or unpickle; else raise Refused."""
    schema = _schema()
    check_value(doc, schema.ExportedProgram, member, "")
    _walk_expr_strs(doc, member, "")
    for i, g in enumerate(doc.get("guards_code", [])):
        check_guard(g, member, f"guards_code[{i}]")
    for k in doc["range_constraints"]:
        if not SYMBOL_RE.fullmatch(k):
            _refuse(member, f"range_constraints[{k[:60]!r}]", "not a symbol name")
    gm = doc["graph_module"]
    if gm["treespec_namedtuple_fields"]:
        _refuse(member, "graph_module.treespec_namedtuple_fields", "named tuples are not allowed")
    for i, node in enumerate(gm["graph"]["nodes"]):
        where = f"graph_module.graph.nodes[{i}]"
        if not TARGET_RE.fullmatch(node["target"]):
            _refuse(member, f"{where}.target", f"{node['target'][:80]!r} is not an ATen operator or size arithmetic")
        for j, a in enumerate(node["inputs"]):
            kind = next(iter(a["arg"]))
            if kind in REFUSED_ARGS:
                _refuse(member, f"{where}.inputs[{j}].arg", f"{kind} arguments are not allowed")
    for i, spec in enumerate(gm["signature"]["input_specs"]):
        kind = next(iter(spec))
        if kind not in INPUT_KINDS or (kind == "user_input" and next(iter(spec[kind]["arg"])) != "as_tensor"):
            _refuse(member, f"graph_module.signature.input_specs[{i}]", f"{kind} inputs are not allowed (tensors only)")
    for i, spec in enumerate(gm["signature"]["output_specs"]):
        if next(iter(spec)) != "user_output" or next(iter(spec["user_output"]["arg"])) != "as_tensor":
            _refuse(member, f"graph_module.signature.output_specs[{i}]", "only tensor outputs are allowed")
    for i, entry in enumerate(gm["module_call_graph"]):
        sig = entry["signature"]
        if sig is not None:
            _check_treespec(sig["in_spec"], member, f"graph_module.module_call_graph[{i}].signature.in_spec")
            _check_treespec(sig["out_spec"], member, f"graph_module.module_call_graph[{i}].signature.out_spec")


def check_payload_config(doc: dict, config: str, names: set, member: str) -> set:
    """Return the payload members (under the root) a weights or constants `config` names, each a raw tensor in `names`; else raise Refused."""
    check_value(doc, _schema().PayloadConfig, member, "")
    directory, path_re = PAYLOAD[config]
    used = set()
    for fqn, meta in doc["config"].items():
        field = f"config[{fqn[:80]!r}]"
        if meta["use_pickle"]:
            _refuse(member, f"{field}.use_pickle", "pickled weights and constants are not allowed (raw tensors only)")
        if meta["tensor_meta"] is None:
            _refuse(member, f"{field}.tensor_meta", "missing: only tensors are allowed")
        if not path_re.fullmatch(meta["path_name"]) or directory + meta["path_name"] not in names:
            _refuse(member, f"{field}.path_name", f"{meta['path_name'][:80]!r} is not a raw tensor member of this archive")
        if any("as_int" not in s for s in (*meta["tensor_meta"]["sizes"], *meta["tensor_meta"]["strides"])):
            _refuse(member, f"{field}.tensor_meta", "a stored tensor has symbolic sizes or strides")
        used.add(directory + meta["path_name"])
    return used


def _json(data: bytes, member: str) -> dict:
    """Return the JSON object of a member, refusing one that is not strict UTF-8 JSON holding an object."""
    def no_constant(name):
        _refuse(member, "", f"{name} is not JSON")

    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        if isinstance(e, Refused):
            raise
        _refuse(member, "", f"not JSON ({type(e).__name__}: {str(e)[:100]})")
    except RecursionError:
        _refuse(member, "", "JSON nested too deeply")
    if not isinstance(doc, dict):
        _refuse(member, "", f"JSON {type(doc).__name__}, expected an object")
    return doc


def read_members(path_or_bytes) -> tuple:
    """Return (root folder, {member under the root: bytes}) of a .pt2 zip, refusing names torch.export.save never writes."""
    try:
        z = zipfile.ZipFile(io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes)
    except (OSError, zipfile.BadZipFile) as e:
        raise Refused(f"not a zip archive ({type(e).__name__}: {e})") from None
    with z:
        infos = z.infolist()
        if not infos or len(infos) > MAX_MEMBERS:
            raise Refused(f"{len(infos)} members: not a torch.export.save archive")
        seen, roots = {}, set()
        for info in infos:
            name = info.filename
            if name.casefold() in seen:
                what = "duplicate member name" if seen[name.casefold()] == name else f"case twin of {seen[name.casefold()]!r}"
                _refuse(name, "", f"{what} (torch looks members up ignoring case)")
            seen[name.casefold()] = name
            root, sep, rest = name.partition("/")
            if not sep or not rest:
                _refuse(name, "", "directory entry" if sep else "top-level member: torch.export.save writes every member under one root folder")
            roots.add(root)
        if len(roots) != 1 or not ROOT_RE.fullmatch(next(iter(roots))):
            raise Refused(f"root folders {sorted(roots)[:5]}: torch.export.save writes one root folder")
        root = roots.pop()
        members = {}
        for info in infos:
            rest = info.filename[len(root) + 1 :]
            if rest not in FIXED and not any(rest.startswith(d) and r.fullmatch(rest[len(d):]) for d, r in PAYLOAD.values()):
                why = "an AOTInductor package (native code) is not allowed" if rest.startswith("data/aotinductor/") else \
                      "not a member torch.export.save writes"  # fmt: skip
                _refuse(info.filename, "", why)
            try:
                members[rest] = z.read(info)
            except (OSError, zipfile.BadZipFile, RuntimeError, ValueError) as e:
                _refuse(info.filename, "", f"unreadable ({type(e).__name__}: {e})")
    return root, members


def check_members(root: str, members: dict) -> dict:
    """Return {member: bytes} of the canonical copy of a checked archive (no guard code, our own sample inputs); else raise Refused."""
    for rest, pattern in FIXED.items():
        if rest not in members:
            _refuse(f"{root}/{rest}", "", "missing: torch.export.save writes it")
        if pattern is not None and not pattern.fullmatch(members[rest]):
            _refuse(f"{root}/{rest}", "", f"content {members[rest][:40]!r} is not what torch.export.save writes")
    program = _json(members[MODEL_JSON], f"{root}/{MODEL_JSON}")
    check_program(program, f"{root}/{MODEL_JSON}")
    used, configs = set(), {}
    for config in PAYLOAD:
        configs[config] = _json(members[config], f"{root}/{config}")
        used |= check_payload_config(configs[config], config, set(members), f"{root}/{config}")
    unused = sorted(n for n in members if n not in FIXED and n not in used)
    if unused:
        _refuse(f"{root}/{unused[0]}", "", "a payload no weights or constants config names")
    program["guards_code"] = []
    out = dict(members)
    for rest, doc in ((MODEL_JSON, program), *configs.items()):  # torch reads the JSON as checked (one parse)
        out[rest] = json.dumps(doc).encode()
    out[SAMPLE_INPUTS_MEMBER] = SAMPLE_INPUTS
    out[".data/serialization_id"] = SERIALIZATION_ID
    return out


def write_canonical(root: str, members: dict) -> bytes:
    """Return the zip bytes of `members` under `root`, in a fixed order with fixed timestamps (byte-reproducible)."""
    order = {n: i for i, n in enumerate(FIXED)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name in sorted(members, key=lambda n: (order.get(n, -1), n)):
            z.writestr(zipfile.ZipInfo(f"{root}/{name}", date_time=(1980, 1, 1, 0, 0, 0)), members[name])
    return buf.getvalue()


def canonical_bytes(path_or_bytes, root: str = "archive") -> bytes:
    """Return the canonical copy of a checked .pt2 file (a path or its bytes) as zip bytes; raise Refused naming member and field."""
    source_root, members = read_members(path_or_bytes)
    try:
        return write_canonical(root, check_members(source_root, members))
    except RecursionError:  # JSON nested deeper than the parser or the schema walk can follow
        raise Refused("a JSON member is nested too deeply") from None


def load(path_or_bytes) -> torch.export.ExportedProgram:
    """Return the ExportedProgram of a checked .pt2 file, read by torch from its canonical copy only."""
    return torch.export.load(io.BytesIO(canonical_bytes(path_or_bytes)))


def save(ep: torch.export.ExportedProgram, path: str) -> None:
    """Write `ep` to `path` as its canonical copy (no guard code, empty sample inputs, fixed serialization id); returns None."""
    saved, ep._guards_code = ep._guards_code, []
    buf = io.BytesIO()
    try:
        torch.export.save(ep, buf)
    finally:
        ep._guards_code = saved
    root = re.sub(r"[^A-Za-z0-9_.\-]", "_", os.path.splitext(os.path.basename(path))[0])[:200] or "archive"  # as torch names it
    data = canonical_bytes(buf.getvalue(), root)
    with open(path, "wb") as f:
        f.write(data)
