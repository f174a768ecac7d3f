"""Whole-file prediction for imported models (tensor cards): .npy/.npz arrays in, .npy/.npz arrays out.

An .npz holds one array per input name, an .npy the model's one input; an array's first dimension is the sample.
Files are read with allow_pickle=False: an array of Python objects (stored pickled) is refused, never unpickled.
Each chunk of samples goes through the model's input contract as an Open Inference (v2) body, in this process or in
the server's handler, so a file is checked exactly as a request is. The answers are written atomically: an .npz of
one array per output (a classifier adds `predictions`, its labels, and `probabilities`), or an .npy when the model
answers one array. Torch-free: the caller hands in how to ask the model.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import atomic_file
from .card import tensor_text
from .errors import InputError
from .handlers import aiaas_contract as contract

NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", (b"PK\x03\x04", b"PK\x05\x06")
CHUNK_VALUES = 50_000  # values per request, as for rows (files.SERVER_CHUNK_CELLS): 0.5-1 MB of JSON
_FROM_V2 = {v2: name for name, (v2, *_) in contract.DTYPES.items()}


def array_format(path) -> str | None:
    """Return "npy" or "npz" when the file starts as one does (whatever its name), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError:
        return None
    return "npy" if head == NPY_MAGIC else "npz" if head[:4] in ZIP_MAGIC else None


def output_names(card: dict) -> list[str]:
    """Return the names of the arrays the answers give: labels and probabilities first for a classifier, then every output."""
    extra = ["predictions", "probabilities"] if card["output"].get("classes") else []
    return extra + [o["name"] for o in contract.output_tensors(card)]


def _v2_type(name: str, a: np.ndarray, spec: dict, path) -> str:
    """Return the Open Inference datatype of an array's values, refusing one that holds no numbers."""
    v2 = {"f": "FP", "i": "INT", "u": "UINT"}.get(a.dtype.kind, "?") + str(8 * a.dtype.itemsize)
    if v2 not in contract.V2_NUMERIC_TYPES:
        raise InputError(f"{path}: array {name!r} holds {a.dtype} values; the input {tensor_text(spec)} takes numbers")
    return v2


def read_arrays(path, card: dict) -> tuple[str, dict, int]:
    """Return (format, {input name: array}, samples) of an .npy or .npz file checked against the card's inputs."""
    p, specs = Path(path), contract.input_tensors(card)
    names, takes = [s["name"] for s in specs], ", ".join(tensor_text(s) for s in specs)
    if not p.is_file():
        raise InputError(f"{p}: file not found" if not p.exists() else f"{p}: not a regular file")
    fmt = array_format(p)
    if fmt is None:
        raise InputError(f"{p}: the model takes tensors ({takes}): give an .npy or .npz file (one array per input name)")
    try:
        if fmt == "npy":
            if len(specs) != 1:
                raise InputError(f"{p}: one array for a model of {len(specs)} inputs ({takes}); give an .npz of one array per input name")
            arrays = {names[0]: np.load(p, allow_pickle=False)}
        else:
            with np.load(p, allow_pickle=False) as z:
                extra, missing = [n for n in z.files if n not in names], [n for n in names if n not in z.files]
                if extra or missing:
                    what = f"array(s) {extra} not an input" if extra else f"missing input(s) {missing}"
                    raise InputError(f"{p}: {what}; the model takes {takes}")
                arrays = {n: z[n] for n in names}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise InputError(f"{p}: holds an array of Python objects, which only pickle could read; refused (arrays of numbers only)") from None
        raise InputError(f"{p}: not a readable .{fmt} file ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{p}: not a readable .{fmt} file ({type(e).__name__}: {e})") from None
    n = None
    for s in specs:
        a = arrays[s["name"]]
        _v2_type(s["name"], a, s, p)
        if a.ndim != len(s["shape"]) or list(a.shape[1:]) != s["shape"][1:]:
            raise InputError(f"{p}: array {s['name']!r} has shape {list(a.shape)}; the input is {tensor_text(s)}")
        if n is not None and a.shape[0] != n:
            raise InputError(f"{p}: array {s['name']!r} has {a.shape[0]} samples, but {names[0]!r} has {n}")
        n = a.shape[0]
    if not n:
        raise InputError(f"{p}: no samples")
    return fmt, arrays, n


def _answer_arrays(answer: dict, card: dict) -> dict:
    """Return {name: array} of one v2 answer, each array of its datatype (labels as strings or integers)."""
    got = {o["name"]: o for o in answer.get("outputs", [])} if isinstance(answer, dict) else {}
    out = {}
    for name in output_names(card):
        o = got[name]
        dtype = _FROM_V2.get(o["datatype"])
        out[name] = np.asarray(o["data"], dtype=dtype).reshape(o["shape"])
    return out


def predict_arrays(path, out: str, card: dict, load: Callable[[], Callable[[dict], dict]], chunk_rows: int | None = None,
                   concurrency: int = 1) -> tuple[int, str, float]:  # fmt: skip
    """Return (samples, input format, seconds) after writing the model's answers for every sample of an .npy/.npz file.

    load() (called once the file is read and checked) returns ask(body): the answer to one v2 body, InputError with
    the contract's message for a bad one. seconds: from the first request to the written file.
    """
    if out == "-":
        raise InputError("--out: give the .npy or .npz file to write (array answers are not written to stdout)")
    kinds = output_names(card)
    suffix = Path(out).suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise InputError(f"--out {out}: answers to an array file are written as .npy or .npz; name the file so")
    if suffix == ".npy" and len(kinds) != 1:
        raise InputError(f"--out {out}: the model answers {len(kinds)} arrays ({', '.join(kinds)}); write them to an .npz")
    fmt, arrays, n = read_arrays(path, card)
    specs = contract.input_tensors(card)
    width = sum(int(np.prod(s["shape"][1:], dtype=np.int64)) for s in specs) or 1
    limit = int(card["input"].get("max_rows") or contract.DEFAULT_MAX_ROWS)
    rows = min(limit, chunk_rows or max(1, CHUNK_VALUES // width))

    def chunk(i: int) -> dict:
        """Return the answer arrays for samples i to i + rows."""
        body = {"inputs": [{"name": s["name"], "shape": [len(a), *s["shape"][1:]], "datatype": _v2_type(s["name"], a, s, path),
                            "data": a.ravel().tolist()} for s in specs for a in [arrays[s["name"]][i : i + rows]]]}  # fmt: skip
        try:
            return _answer_arrays(ask(body), card)
        except InputError as e:
            raise InputError(f"{path}, samples {i}-{min(i + rows, n) - 1}: {e}") from None

    ask = load()
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(max(1, concurrency)) as pool:
        parts = list(pool.map(chunk, range(0, n, rows)))
    result = {k: np.concatenate([p[k] for p in parts]) for k in kinds}
    with atomic_file(out, binary=True) as f:
        if suffix == ".npy":
            np.save(f, result[kinds[0]], allow_pickle=False)
        else:  # np.savez's own keyword (`file`) could clash with an output's name
            with zipfile.ZipFile(f, "w") as zf:
                for k, v in result.items():
                    with zf.open(f"{k}.npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, v, allow_pickle=False)
    return n, fmt, time.perf_counter() - t0
