"""Whole-file prediction: rows streamed from a CSV or JSON file in chunks, predicted in this process or by a
server, written to a CSV file in input order.

Input formats, told apart by the first characters of the file (never by its extension):
- CSV with a header row naming the model's features (any order; the model's target column is ignored, the `id`
  column is carried through, any other column is refused), one record per line;
- JSON Lines: one row per line, an array of values in feature order or an object {feature: value, ...};
- a JSON array of such rows (`[[...], ...]` or `[{...}, ...]`), read incrementally.

Every row goes through the model's input contract (handlers/aiaas_contract.py), here for a run directory or in the
server's handler, so a file is checked exactly as a request is; its errors name the file and the LINE of the row.
Cells are handed over as the contract expects them: numbers as numbers, a blank cell as null, other text as a
string. Memory is bounded: at most a few chunks are held at once, whatever the file's size.

Fast path: a chunk of CSV lines that numpy parses as finite numbers goes to the model as one array (local), or
as the lines' own text inside the JSON body (server); any other chunk takes the general path, cell by cell.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import csv
import gc
import itertools
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .data import FLOAT32_MAX, csv_header
from .errors import InputError
from .handlers import aiaas_contract as contract

FORMATS = ("csv", "jsonl", "json-array")
LOCAL_CHUNK_ROWS = 50_000
SERVER_CHUNK_ROWS = 1_000
_JSON_BLOCK = 1 << 20  # characters read at a time from a JSON array
_INDEX = re.compile(r"^(?:instances|rows)\[(\d+)\]")
_UNSAFE_IN_JSON = re.compile(r'[\[\]{}"]')  # would change the structure of a body built from raw lines


@dataclass
class Chunk:
    """Consecutive rows of a file: each row's line number, its id, and the rows as values or as parsed numbers."""

    lines: list[int]
    ids: list | None
    rows: list | None = None  # general path: one list (values in feature order) or object per row
    text: list[str] | None = None  # fast path: the CSV lines as read, when every column is a feature in card order
    array: object = None  # fast path: float64 numpy array, rows × features, finite and within float32


@dataclass
class FileReport:
    """What predict_file did: rows predicted, the input format, where the answers went, and how long it took."""

    rows: int
    format: str
    out: str
    seconds: float


def _sniff(path: Path) -> str:
    """Return the format of a rows file ("csv", "jsonl" or "json-array") from its first characters."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if b"\0" in head:
        raise InputError(f"{path}: binary data; expected CSV with a header row, JSON Lines (one row per line) or a JSON array of rows")
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not text:
        raise InputError(f"{path}: empty file; expected CSV with a header row, JSON Lines (one row per line) or a JSON array of rows")
    if text[0] == "{":
        return "jsonl"
    if text[0] == "[":
        return "json-array" if text[1:].lstrip()[:1] in ("[", "{", "") else "jsonl"
    return "csv"


def _cell(text: str):
    """Return a CSV cell as the contract expects it: a number as a float, a blank as None, other text as a string."""
    s = text.strip()
    if not s:
        return None
    try:
        return float(s)
    except ValueError:
        return s


class RowReader:
    """The rows of a CSV or JSON file in chunks (iterate it), checked against a model card's feature names."""

    def __init__(self, path, card: dict, id_column: str | None = None, chunk_rows: int = LOCAL_CHUNK_ROWS):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: file not found" if not self.path.exists() else f"{self.path}: not a regular file")
        if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
            raise InputError(f"chunk_rows: {chunk_rows!r} must be an integer ≥ 1")
        self.features = [f["name"] for f in card["input"]["features"]]
        self.target = card["output"].get("target")
        self.id_column = id_column
        self.chunk_rows = chunk_rows
        self.format = _sniff(self.path)
        self.size = self.path.stat().st_size
        self.done = 0  # characters read so far (progress)

    def __iter__(self) -> Iterator[Chunk]:
        """Yield the file's rows chunk by chunk."""
        with open(self.path, encoding="utf-8-sig", newline="") as f:
            try:
                if self.format == "csv":
                    yield from self._csv(f)
                else:
                    yield from self._json(f)
            except UnicodeDecodeError as e:
                raise InputError(f"{self.path}: not UTF-8 text (byte {e.start} of a block read after about {self.done:,} characters)") from None

    # -------------------------------------------------------------------------------------------- CSV

    def _csv(self, f) -> Iterator[Chunk]:
        """Yield the chunks of a CSV file with a header row."""
        line = 1
        first = f.readline()
        while first and not first.strip():
            line, first = line + 1, f.readline()
        self.done += len(first)
        if not first:
            raise InputError(f"{self.path}: no header row; expected CSV columns named {self.features[:20]}")
        header = csv_header(next(csv.reader([first])), f"{self.path}")
        if all(_cell(h).__class__ is float for h in header):
            raise InputError(f"{self.path}, line {line}: expected a header row naming the features {self.features[:20]}, got numbers")
        missing = [n for n in self.features if n not in header]
        if missing:
            raise InputError(f"{self.path}, line {line}: feature column(s) {missing[:5]} missing; the model needs {self.features[:20]}")
        if self.id_column is not None and self.id_column not in header:
            raise InputError(f"{self.path}, line {line}: no id column {self.id_column!r}; columns are {header[:20]}")
        known = set(self.features) | {self.target, self.id_column}
        extra = [h for h in header if h not in known]
        if extra:
            raise InputError(f"{self.path}, line {line}: column(s) {extra[:5]} are not features of the model ({self.features[:20]}); "
                             "drop them, or name one with --id to carry it through")
        cols = [header.index(n) for n in self.features]
        id_col = header.index(self.id_column) if self.id_column is not None else None
        width = len(header)
        raw = cols == list(range(width))  # the lines are exactly the feature values, in card order
        while True:
            lines = list(itertools.islice(f, self.chunk_rows))
            if not lines:
                return
            self.done += sum(map(len, lines))
            numbers = list(range(line + 1, line + 1 + len(lines)))
            line += len(lines)
            yield self._csv_chunk(lines, numbers, cols, id_col, width, raw)

    def _csv_chunk(self, lines: list[str], numbers: list[int], cols: list[int], id_col, width: int, raw: bool) -> Chunk:
        """Return one chunk of CSV lines: the fast form when every cell is a plain number, else values cell by cell."""
        import numpy as np

        if not all(map(str.strip, lines)):  # blank lines hold no row (e.g. at the end of the file)
            kept = [(n, ln) for n, ln in zip(numbers, lines) if ln.strip()]
            numbers, lines = [n for n, _ in kept], [ln for _, ln in kept]
        if lines and '"' not in "".join(lines):
            try:
                arr = np.loadtxt(lines, delimiter=",", dtype=np.float64, usecols=cols, ndmin=2, comments=None)
                good = arr.shape == (len(lines), len(cols)) and bool(np.isfinite(arr).all()) and float(np.abs(arr).max(initial=0)) <= FLOAT32_MAX
            except ValueError:  # text, blanks, a wrong field count: the general path names the line
                good = False
            if good:
                ids = None
                if id_col is not None:
                    ids = [ln.rstrip("\r\n").split(",")[id_col].strip() for ln in lines]
                    if any(ln.count(",") != width - 1 for ln in lines):
                        good = False
                if good:
                    return Chunk(numbers, ids, text=lines if raw else None, array=arr)
        rows, ids = [], [] if id_col is not None else None
        for n, rec in zip(numbers, _records(lines, self.path, numbers)):
            if len(rec) != width:
                raise InputError(f"{self.path}, line {n}: {len(rec)} fields, expected {width} as in the header")
            rows.append([_cell(rec[j]) for j in cols])
            if ids is not None:
                ids.append(rec[id_col].strip())
        return Chunk(numbers, ids, rows=rows)

    # -------------------------------------------------------------------------------------------- JSON

    def _json(self, f) -> Iterator[Chunk]:
        """Yield the chunks of a JSON Lines file or a JSON array of rows."""
        values = _json_lines(f, self) if self.format == "jsonl" else _json_array(f, self)
        kind = None
        while True:
            batch = list(itertools.islice(values, self.chunk_rows))
            if not batch:
                return
            rows, ids, numbers = [], [] if self.id_column is not None else None, []
            for n, v in batch:
                if not isinstance(v, (list, dict)):
                    raise InputError(f"{self.path}, line {n}: expected a row (an array of values or an object of features), got {type(v).__name__}")
                kind = kind or type(v)
                if type(v) is not kind:
                    raise InputError(f"{self.path}, line {n}: mixes {'object' if kind is dict else 'array'} rows and "
                                     f"{'object' if isinstance(v, dict) else 'array'} rows; use one form")
                if isinstance(v, dict):
                    if ids is not None:
                        if self.id_column not in v:
                            raise InputError(f"{self.path}, line {n}: no id field {self.id_column!r}")
                        ids.append(v[self.id_column])
                    v = {k: x for k, x in v.items() if k not in (self.id_column, self.target)}
                elif ids is not None:
                    raise InputError(f"{self.path}, line {n}: --id {self.id_column!r} needs object rows ({{\"{self.id_column}\": ..., features...}})")
                rows.append(v)
                numbers.append(n)
            yield Chunk(numbers, ids, rows=rows)


def _records(lines: list[str], path: Path, numbers: list[int]) -> list:
    """Return each (non-blank) CSV line's fields, refusing a quoted field that spans lines."""
    out = []
    for n, ln in zip(numbers, lines):
        try:
            out.append(next(csv.reader([ln], strict=True)))
        except csv.Error as e:
            raise InputError(f"{path}, line {n}: malformed CSV ({e}); put one record per line") from None
    return out


def _json_lines(f, reader: RowReader):
    """Yield (line number, value) for each non-blank line of a JSON Lines file."""
    for n, ln in enumerate(f, 1):
        reader.done += len(ln)
        if not ln.strip():
            continue
        try:
            yield n, json.loads(ln)
        except json.JSONDecodeError as e:
            hint = " (a request body goes in --body, not --file)" if n == 1 and ln.strip() == "{" else ""
            raise InputError(f"{reader.path}, line {n}: not a JSON row ({e.msg} at column {e.colno}); expected one row per line{hint}") from None
        except RecursionError:
            raise InputError(f"{reader.path}, line {n}: JSON nested too deeply") from None


def _json_array(f, reader: RowReader):
    """Yield (line number, value) for each element of a JSON array, reading the file a block at a time."""
    decoder = json.JSONDecoder()
    buf, pos, base_line, eof = "", 0, 1, False

    def more() -> bool:
        nonlocal buf, pos, base_line, eof
        block = f.read(_JSON_BLOCK)
        reader.done += len(block)
        base_line += buf.count("\n", 0, pos)
        buf, pos = buf[pos:] + block, 0
        eof = not block
        return bool(block)

    def skip_ws() -> str:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                pos += 1
            if pos < len(buf) or not more():
                return buf[pos:pos + 1]

    def line() -> int:
        return base_line + buf.count("\n", 0, pos)

    if skip_ws() != "[":
        raise InputError(f"{reader.path}: expected a JSON array of rows")
    pos += 1
    first = True
    while True:
        c = skip_ws()
        if not c:
            raise InputError(f"{reader.path}: the JSON array is not closed (no ']' at the end of the file)")
        if c == "]":
            pos += 1
            if skip_ws():
                raise InputError(f"{reader.path}, line {line()}: text after the end of the JSON array")
            return
        if not first:
            if c != ",":
                raise InputError(f"{reader.path}, line {line()}: expected ',' or ']' between rows of the JSON array")
            pos += 1
            skip_ws()
        first = False
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
                if end == len(buf) and not eof:  # a number may continue in the next block
                    raise json.JSONDecodeError("truncated", buf, end)
                break
            except json.JSONDecodeError as e:
                if eof or not more():
                    if not buf[pos:].strip():
                        raise InputError(f"{reader.path}: the JSON array is not closed (no ']')") from None
                    raise InputError(f"{reader.path}, line {line()}: not a JSON row ({e.msg})") from None
            except RecursionError:
                raise InputError(f"{reader.path}, line {line()}: JSON nested too deeply") from None
        n = line()
        pos = end
        yield n, value


# ------------------------------------------------------------------------------------------------ predictors


def _line_error(message: str, chunk: Chunk, path: Path) -> InputError:
    """Return the contract's message for a chunk's request with its row index replaced by the file and line."""
    m = _INDEX.match(message)
    if m and int(m.group(1)) < len(chunk.lines):
        rest = message[m.end():].lstrip(" .:")
        return InputError(f"{path}, line {chunk.lines[int(m.group(1))]}: {rest}")
    return InputError(f"{path}, lines {chunk.lines[0]}-{chunk.lines[-1]}: {message}")


class _Local:
    """Predict chunks with a LocalModel, through the same contract as the server."""

    chunk_rows = LOCAL_CHUNK_ROWS

    def __init__(self, model):
        self.model = model
        self.card = model.card

    def __call__(self, chunk: Chunk, path: Path) -> dict:
        """Return the answer for one chunk."""
        import numpy as np

        if chunk.array is not None:  # already checked: finite numbers within float32, the right width
            out = self.model.forward(np.asarray(chunk.array, dtype=np.float32))
            # A list per output row is a burst of allocations that sets off full garbage collections over every
            # object torch holds (measured: 5x the cost of building the lists); none of these lists form cycles.
            enabled = gc.isenabled()
            gc.disable()
            try:
                return contract.answer(self.card, contract.ParsedRequest([], "instances"), out.tolist(), "local", "local")
            finally:
                if enabled:
                    gc.enable()
        try:
            return self.model.predict({"instances": chunk.rows})
        except contract.ContractError as e:
            raise _line_error(str(e), chunk, path) from None


class _Remote:
    """Predict chunks with a served model over HTTP."""

    def __init__(self, client, name: str, version: str | None):
        self.client, self.name, self.version = client, name, version
        try:
            entry = client.describe(name, version, customized=True)[0]
        except LookupError:
            raise InputError(f"{name}: the server describes no version of it") from None
        card = entry.get("customizedMetadata") if isinstance(entry, dict) else None
        if not isinstance(card, dict) or "input" not in card:
            raise InputError(f"{name}: the server does not show its model card; is it an aiaas archive?")
        self.card = card
        self.chunk_rows = min(SERVER_CHUNK_ROWS, int(card["input"].get("max_rows") or SERVER_CHUNK_ROWS))

    def __call__(self, chunk: Chunk, path: Path) -> dict:
        """Return the answer for one chunk (the raw lines as the body when they are plain numbers)."""
        from . import client as cl

        if chunk.text is not None and not any(_UNSAFE_IN_JSON.search(t) for t in chunk.text):
            body = '{"instances":[[' + "],[".join(t.rstrip("\r\n") for t in chunk.text) + "]]}"
            try:
                return self.client.predict(self.name, body.encode(), version=self.version)
            except cl.BadRequest as e:
                if not e.message.startswith("body:"):  # a row broke the contract: the message names it
                    raise _line_error(e.message, chunk, path) from None
                # numbers CSV accepts but JSON does not ("1.", "+2"): send the parsed values instead
        rows = chunk.rows if chunk.rows is not None else chunk.array.tolist()
        try:
            return self.client.predict(self.name, json.dumps({"instances": rows}).encode(), version=self.version)
        except cl.BadRequest as e:
            raise _line_error(e.message, chunk, path) from None


def _write_answer(f, writer, answer: dict, chunk: Chunk, path: Path) -> int:
    """Write a chunk's answer as CSV rows (id, prediction, probabilities); returns the number of rows."""
    n = len(chunk.lines)
    preds = answer.get("predictions") if isinstance(answer, dict) else None
    if not isinstance(preds, list) or len(preds) != n:
        raise InputError(f"{path}, lines {chunk.lines[0]}-{chunk.lines[-1]}: the model answered "
                         f"{len(preds) if isinstance(preds, list) else 'no'} predictions for {n} rows")
    probs = answer.get("probabilities")
    if chunk.ids is None and not probs:  # numbers only: what csv.writer writes, without a list per row
        f.write("\n".join(map(repr, preds)) + "\n")
        return n
    columns = [] if chunk.ids is None else [[v if isinstance(v, str) else json.dumps(v) for v in chunk.ids]]
    columns.append(preds)
    rows = zip(*columns) if not probs else (tuple(head) + tuple(q) for *head, q in zip(*columns, probs))
    writer.writerows(rows)
    return n


def predict_file(path, out=None, model=None, *, name: str | None = None, version: str | None = None,
                 id_column: str | None = None, concurrency: int = 1, chunk_rows: int | None = None,
                 progress: bool | None = None) -> FileReport:
    """Return a FileReport after writing the predictions for every row of a CSV or JSON file, in input order.

    model: a LocalModel or a run directory (predicted in this process), or a client.Client with `name` (and
    `version`) of a served model. out: the CSV to write (atomically: nothing is left on error), or None/"-" for
    stdout. Its columns: the id column (with id_column), the model's target (the prediction), and for a classifier
    one `p_CLASS` column per class. concurrency: requests in flight at once (server only). progress: a bar on
    stderr (default: when stderr is a terminal).
    """
    from .client import Client

    if isinstance(model, Client):
        if not isinstance(name, str) or not name:
            raise InputError("name: give the served model's name with a Client")
        predictor = _Remote(model, name, version)
    else:
        if model is None:
            raise InputError("model: give a run directory, a LocalModel, or a Client and name")
        if isinstance(model, (str, os.PathLike)):
            from .runs import load_run

            model = load_run(model)
        predictor = _Local(model)
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or not 1 <= concurrency <= 64:
        raise InputError(f"concurrency: {concurrency!r} must be an integer from 1 to 64")
    if id_column is not None and (not isinstance(id_column, str) or not id_column.strip()):
        raise InputError(f"id_column: {id_column!r} must be a column name")
    card = predictor.card
    reader = RowReader(path, card, id_column, predictor.chunk_rows if chunk_rows is None else chunk_rows)
    out_name = "-" if out in (None, "-") else str(out)
    head = ([id_column] if id_column else []) + [card["output"].get("target") or "prediction"]
    head += [f"p_{c}" for c in card["output"].get("classes") or []] if card["output"]["task"] == "classification" else []
    t0 = time.perf_counter()
    with _output(out_name) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(head)
        rows = _run(reader, predictor, f, writer, concurrency, progress)
    return FileReport(rows, reader.format, out_name, time.perf_counter() - t0)


def _run(reader: RowReader, predictor, f, writer, concurrency: int, progress: bool | None) -> int:
    """Return the number of rows predicted, writing each chunk's answers in input order as they complete."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = tqdm(total=reader.size, disable=not show, desc="predict", unit="B", unit_scale=True, leave=False)
    total = 0

    def write(chunk: Chunk, answer: dict) -> None:
        nonlocal total
        total += _write_answer(f, writer, answer, chunk, reader.path)
        bar.update(reader.done - bar.n)
        bar.set_postfix(rows=total, refresh=False)

    try:
        if concurrency == 1:
            for chunk in reader:
                if chunk.lines:
                    write(chunk, predictor(chunk, reader.path))
            return total
        with cf.ThreadPoolExecutor(concurrency) as pool:
            pending: collections.deque = collections.deque()
            try:
                for chunk in reader:
                    if not chunk.lines:
                        continue
                    pending.append((chunk, pool.submit(predictor, chunk, reader.path)))
                    while len(pending) > 2 * concurrency or (pending and pending[0][1].done()):
                        c, fut = pending.popleft()
                        write(c, fut.result())
                while pending:
                    c, fut = pending.popleft()
                    write(c, fut.result())
            finally:
                for _, fut in pending:
                    fut.cancel()
        return total
    finally:
        bar.close()


class _output:
    """A text file to write CSV into: stdout for "-", else a temporary file moved over `name` on success only."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        if self.name == "-":
            return sys.stdout
        target = Path(self.name)
        if target.is_dir():
            raise InputError(f"--out {target}: is a directory")
        if not target.parent.is_dir():
            raise InputError(f"--out {target}: folder {target.parent} does not exist")
        self.tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
        self.f = open(self.tmp, "w", encoding="utf-8", newline="")
        return self.f

    def __exit__(self, kind, *exc) -> None:
        if self.name == "-":
            sys.stdout.flush()
            return
        self.f.close()
        if kind is None:
            os.replace(self.tmp, self.name)
        else:
            self.tmp.unlink(missing_ok=True)
