"""Issue 23 finding 1: a hostile .pt2 never runs code. Each crafted program is built here from a benign
torch.export.save output, refused at `aiaas import` (exit 2, the member named) and at worker load (programs.load on a
run directory whose float program was swapped for it), and a marker file proves its payload never ran; where torch
itself would run the payload, the test shows that first. Real programs of several architectures are still accepted
and served equal to eager, and importing a file twice writes byte-identical float programs."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from aiaas_torch.card import CARD
from aiaas_torch.cli import main
from aiaas_torch.handlers import programs, pt2_check

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256 of b"" (our sample inputs)


class Buffers(nn.Module):
    """Two inputs sharing the batch dimension (torch writes guard code for it), a parameter, a buffer and a constant."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("scale", torch.tensor([1.0, 2.0, 3.0]))
        self.offset = torch.tensor([0.5, -0.5, 0.25])  # a tensor constant

    def forward(self, x, y):
        return self.lin(x) * self.scale + self.offset + y.sum(1, keepdim=True), x.sum(1)


class WithString(nn.Module):
    """A program with a constant string input (torch writes it as a constant_input of the signature)."""

    def forward(self, x, mode):
        return x * 2 if mode == "abc" else x


class _Opens:
    """An object whose unpickling creates a file: what a hostile pickle could run instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickled(marker) -> bytes:
    buf = io.BytesIO()
    torch.save(_Opens(marker), buf)
    return buf.getvalue()


def _code(marker) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def _save(ep, path) -> list:
    """Save `ep` at `path`; return its members as [(name, bytes)] in archive order."""
    torch.export.save(ep, str(path))
    with zipfile.ZipFile(path) as z:
        return [(n, z.read(n)) for n in z.namelist()]


def _write(path, items) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in items:
            z.writestr(name, data)


def _edit_json(items, suffix, change) -> list:
    """Return the members with the JSON member ending in `suffix` passed through change(doc) -> doc."""
    return [(n, json.dumps(change(json.loads(d))).encode() if n.endswith(suffix) else d) for n, d in items]


def _first_expr(doc) -> dict:
    """Return the first {"expr_str": ...} of a program JSON (the batch dimension of the first input)."""
    values = doc["graph_module"]["graph"]["tensor_values"]
    return next(s["as_expr"] for v in values.values() for s in v["sizes"] if "as_expr" in s)


def _with(doc, change):
    change(doc)
    return doc


def _sympify_payload(doc, marker):
    e = _first_expr(doc)
    e["expr_str"] += f" + 0*len(str({_code(marker)}))"
    return doc


def _craft(kind: str, items: list, string_items: list, marker) -> list:
    """Return the members of the crafted program of class `kind`, built from benign members."""
    root = items[0][0].split("/")[0]
    if kind == "guards_code":
        return _edit_json(items, "models/model.json", lambda d: _with(d, lambda d: d.__setitem__("guards_code", [_code(marker) + " or True"])))
    if kind == "sympify_expr_str":
        return _edit_json(items, "models/model.json", lambda d: _sympify_payload(d, marker))
    if kind == "range_constraint_string":
        def rc(d):
            d["range_constraints"] = {f"s0 + 0*len(str({_code(marker)}))": v for v in d["range_constraints"].values()}
            return d
        return _edit_json(items, "models/model.json", rc)
    if kind == "case_twin_JSON_model_file":
        edited = _edit_json(items, "models/model.json", lambda d: _sympify_payload(d, marker))
        return [(n.replace("model.json", "model.JSON"), d) for n, d in edited]
    if kind == "MODEL_pt_sample_inputs":
        return [(n.replace("model.pt", "MODEL.pt"), _pickled(marker) if n.endswith("model.pt") else d) for n, d in items]
    if kind == "case_twin_sample_inputs":
        return items + [(f"{root}/data/sample_inputs/MODEL.pt", _pickled(marker))]
    if kind == "top_level_member_legacy_fallback":
        program = dict(items)[f"{root}/models/model.json"]
        return [(n, d) for n, d in items if not n.endswith("/archive_format")] + [
            ("version", b"8.20"), ("serialized_exported_program.json", program), ("serialized_state_dict.json", _pickled(marker)),
            ("serialized_constants.json", _pickled(marker)), ("serialized_example_inputs.pt", b"")]  # fmt: skip
    if kind == "aotinductor_package":
        config = json.dumps({"compiler": f"sh -c 'touch {marker}'"}).encode()
        return items + [(f"{root}/data/aotinductor/model/model_metadata.json", config)]
    if kind == "use_pickle":
        def pickled(d):
            meta = d["config"]["lin.weight"]
            meta["use_pickle"] = True
            return d
        weight = next(n for n, d in items if "/data/weights/weight_" in n)
        return [(n, _pickled(marker) if n == weight else d) for n, d in _edit_json(items, "_weights_config.json", pickled)]
    if kind == "weights_config_not_an_object":
        return [(n, b"[1, 2]" if n.endswith("_weights_config.json") else d) for n, d in items]
    if kind == "deeply_nested_json":
        return [(n, b"[" * 200_000 + b"]" * 200_000 if n.endswith("_weights_config.json") else d) for n, d in items]
    if kind == "constant_string_input":
        payload = f"abc' or {_code(marker)} or '"
        return [(n, d.replace(b'"as_string": "abc"', json.dumps({"as_string": payload})[1:-1].encode()) if n.endswith("model.json") else d)
                for n, d in string_items]  # fmt: skip
    if kind == "duplicate_member_name":
        weight = next(n for n, d in items if "/data/weights/weight_" in n)
        return items + [(weight, _pickled(marker))]
    if kind == "extra_member":
        return items + [(f"{root}/extra/notes.txt", b"hello")]
    if kind == "non_json_model_file":
        return items + [(f"{root}/models/model.py", _code(marker).encode())]
    raise AssertionError(kind)


# class -> (the member the refusal names, a phrase of the refusal)
CASES = {
    "guards_code": ("prog/models/model.json", "guards_code[0]"),
    "sympify_expr_str": ("prog/models/model.json", "expr_str: not a symbolic expression"),
    "range_constraint_string": ("prog/models/model.json", "range_constraints["),
    "case_twin_JSON_model_file": ("prog/models/model.JSON", "not a member torch.export.save writes"),
    "MODEL_pt_sample_inputs": ("prog/data/sample_inputs/MODEL.pt", "not a member torch.export.save writes"),
    "case_twin_sample_inputs": ("prog/data/sample_inputs/MODEL.pt", "case twin of 'prog/data/sample_inputs/model.pt'"),
    "top_level_member_legacy_fallback": ("version", "top-level member"),
    "aotinductor_package": ("prog/data/aotinductor/model/model_metadata.json", "AOTInductor package"),
    "use_pickle": ("prog/data/weights/model_weights_config.json", "use_pickle"),
    "weights_config_not_an_object": ("prog/data/weights/model_weights_config.json", "JSON list, expected an object"),
    "constant_string_input": ("prog/models/model.json", "constant_input inputs are not allowed"),
    "deeply_nested_json": ("prog/data/weights/model_weights_config.json", "JSON nested too deeply"),
    "duplicate_member_name": ("prog/data/weights/weight_0", "duplicate member name"),
    "extra_member": ("prog/extra/notes.txt", "not a member torch.export.save writes"),
    "non_json_model_file": ("prog/models/model.py", "not a member torch.export.save writes"),
}
# the classes whose payload torch.export.load (and module() with its defaults, called) really runs on this torch
DANGEROUS = ("guards_code", "sympify_expr_str", "case_twin_JSON_model_file", "MODEL_pt_sample_inputs",
             "top_level_member_legacy_fallback", "use_pickle", "constant_string_input")  # fmt: skip


@pytest.fixture(scope="module")
def benign(tmp_path_factory):
    """(members of a benign Buffers program, members of a benign WithString program, calibration .npz, run directory)."""
    d = tmp_path_factory.mktemp("benign")
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(Buffers().eval(), (torch.randn(2, 4), torch.randn(2, 2)), dynamic_shapes=({0: batch}, {0: batch}))
    items = _save(ep, d / "prog.pt2")
    sep = torch.export.export(WithString(), (torch.randn(2, 3), "abc"), dynamic_shapes=({0: torch.export.Dim("b")}, None))
    string_items = _save(sep, d / "prog.pt2.tmp")  # same root folder name: "prog"
    (d / "prog.pt2.tmp").unlink()
    string_items = [("prog/" + n.split("/", 1)[1], b) for n, b in string_items]
    np.savez(d / "cal.npz", x=np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32),
             y=np.random.default_rng(1).normal(size=(32, 2)).astype(np.float32))  # fmt: skip
    run = d / "run"
    assert main(["import", str(d / "prog.pt2"), "--out", str(run), "--calibration", str(d / "cal.npz"), "--compile", "never"]) == 0
    return items, string_items, d / "cal.npz", run


@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_crafted_program_is_refused_at_import_and_at_worker_load_and_runs_nothing(kind, benign, tmp_path, capsys):
    items, string_items, cal, run = benign
    marker = tmp_path / "payload-ran"
    crafted = tmp_path / "prog.pt2"
    _write(crafted, _craft(kind, items, string_items, marker))
    member, phrase = CASES[kind]
    capsys.readouterr()
    assert main(["import", str(crafted), "--out", str(tmp_path / "out"), "--calibration", str(cal), "--compile", "never"]) == 2
    err = capsys.readouterr().err
    assert f"member {member!r}" in err and phrase in err, err
    assert not (tmp_path / "out").exists() and not marker.exists()
    worker_dir = tmp_path / "worker"
    shutil.copytree(run, worker_dir)
    shutil.copy(crafted, worker_dir / "model_float.pt2")
    card = json.loads((worker_dir / CARD).read_text())
    with pytest.raises(ValueError) as refused:
        programs.load(card, str(worker_dir), flags=set())
    assert f"member {member!r}" in str(refused.value) and phrase in str(refused.value)
    assert not marker.exists()


@pytest.mark.parametrize("kind", DANGEROUS)
def test_torch_itself_would_run_the_payload(kind, benign, tmp_path):
    """What the check prevents: torch.export.load (and the default module(), called) runs each of these payloads."""
    items, string_items, _, _ = benign
    marker = tmp_path / "payload-ran"
    crafted = tmp_path / "prog.pt2"
    _write(crafted, _craft(kind, items, string_items, marker))
    try:
        ep = torch.export.load(str(crafted))
        if kind == "guards_code":
            ep.module()(torch.randn(3, 4), torch.randn(3, 2))
        elif kind == "constant_string_input":
            ep.module()(torch.randn(3, 3), "zzz")  # any other string: the guard evaluates the payload
    except Exception:
        pass
    assert marker.exists()


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2), 1))


class Block(nn.Module):
    """A small transformer block: int64 token ids, embedding, LayerNorm, self-attention, a pooled head."""

    def __init__(self, vocab=20, d=16, seq=6):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq, d) * 0.1)
        self.ln = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, 2)

    def forward(self, ids):
        h = self.ln(self.emb(ids) + self.pos)
        q, k, v = self.qkv(h).chunk(3, -1)
        a = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out((h + a).mean(1))


class TwoInOut(nn.Module):
    """Two inputs (a float vector, int64 ids) and two outputs (a float [N, 2], an int64 [N])."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, v, ids):
        return self.lin(v) + ids.float().sum(1, keepdim=True), ids.sum(1)


def _arch(name):
    """Return (eager module, {input name: calibration samples}) of one architecture."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "conv":
        return Conv().eval(), {"x": torch.randn(32, 1, 8, 8, generator=g)}
    if name == "transformer":
        return Block().eval(), {"ids": torch.randint(0, 20, (32, 6), generator=g)}
    if name == "two_in_out":
        return TwoInOut().eval(), {"v": torch.randn(32, 4, generator=g), "ids": torch.randint(0, 9, (32, 3), generator=g)}
    return Buffers().eval(), {"x": torch.randn(32, 4, generator=g), "y": torch.randn(32, 2, generator=g)}


@pytest.mark.parametrize("name", ["conv", "transformer", "two_in_out", "buffers_and_constants"])
def test_real_programs_are_accepted_and_served_equal_to_eager(name, tmp_path):
    model, cal = _arch(name)
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(model, tuple(t[:2] for t in cal.values()), dynamic_shapes=tuple({0: batch} for _ in cal))
    torch.export.save(ep, str(tmp_path / "prog.pt2"))
    np.savez(tmp_path / "cal.npz", **{k: t.numpy() for k, t in cal.items()})
    out = tmp_path / "run"
    assert main(["import", str(tmp_path / "prog.pt2"), "--out", str(out), "--calibration", str(tmp_path / "cal.npz"), "--compile", "never"]) == 0
    card = json.loads((out / CARD).read_text())
    served = programs.load(card, str(out), flags=set())
    xs = tuple(t[:5] for t in cal.values())
    with torch.no_grad():
        want, got = model(*xs), served(*xs)
    want, got = (want if isinstance(want, tuple) else (want,)), (got if isinstance(got, (tuple, list)) else (got,))
    assert len(want) == len(got)
    for w, o in zip(want, got):
        assert w.dtype == o.dtype and torch.allclose(w, o, rtol=1e-5, atol=1e-6)


def test_importing_a_file_twice_writes_byte_identical_float_programs_with_our_sample_inputs_pinned(benign, tmp_path):
    _, _, cal, _ = benign
    source = tmp_path / "any_name.pt2"
    model, _ = _arch("buffers_and_constants")
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(model, (torch.randn(2, 4), torch.randn(2, 2)), dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(ep, str(source))
    with zipfile.ZipFile(source) as z:
        assert json.loads(z.read("any_name/models/model.json"))["guards_code"], "the source carries guard code"
    for out in ("a", "b"):
        assert main(["import", str(source), "--out", str(tmp_path / out), "--calibration", str(cal), "--compile", "never"]) == 0
    first, second = ((tmp_path / o / "model_float.pt2").read_bytes() for o in ("a", "b"))
    assert first == second
    card = json.loads((tmp_path / "a" / CARD).read_text())
    with zipfile.ZipFile(io.BytesIO(first)) as z:
        sample = z.read("model_float/data/sample_inputs/model.pt")
        program = json.loads(z.read("model_float/models/model.json"))
    assert hashlib.sha256(sample).hexdigest() == EMPTY_SHA256 == card["files"]["model_float.pt2"]["sample_inputs_sha256"]
    assert program["guards_code"] == []


@pytest.mark.parametrize("text", [
    "Symbol('s77', positive=True, integer=True)",
    "Mul(Integer(2), Symbol('s77', positive=True, integer=True))",
    "FloorDiv(Add(Symbol('s0', integer=True, positive=True), Integer(-1)), Integer(2))",
    "Float('1.5', precision=53)",
])  # fmt: skip
def test_symbolic_expressions_torch_writes_pass_the_grammar(text):
    assert pt2_check.check_sympy(text, "m", "expr_str") is None


@pytest.mark.parametrize("text", [
    "__import__('os')", "Symbol('s0').__class__", "Symbol('s0')[0]", "lambda: 0", "Integer(1) + exec('x')",
    "Symbol('s0', positive=True, integer=True, evaluate=exec)", "Symbol(\"s0\")", "(Integer(1))", "s0",
    "Symbol('s0' 'x')", "Integer(1" + ")" * 2,
])  # fmt: skip
def test_anything_else_is_refused_by_the_symbolic_grammar(text):
    with pytest.raises(pt2_check.Refused, match=r"member 'm', expr_str: "):
        pt2_check.check_sympy(text, "m", "expr_str")


@pytest.mark.parametrize("text, ok", [
    ("L['x'].size()[0] == L['y'].size()[0]", True), ("L['x'].size()[0] <= 4096", True),
    ("2*L['x'].size()[0] == L['y'].size()[1]", True), ("L['x'].size()[0] == 1 or __import__('os')", False),
    ("L['x'].shape[0] == 2", False), ("L['x'].size()[0] == L['x'].__class__", False), ("L['x\\''].size()[0] == 1", False),
])  # fmt: skip
def test_guard_code_is_accepted_only_as_size_comparisons(text, ok):
    if ok:
        assert pt2_check.check_guard(text, "m", "guards_code[0]") is None
    else:
        with pytest.raises(pt2_check.Refused, match=r"guards_code\[0\]"):
            pt2_check.check_guard(text, "m", "guards_code[0]")
