"""Whole-file prediction: the rows of a CSV or JSON file (filerows.RowReader), predicted in this process or by a
server, chunk by chunk, written to a CSV file in input order.

Every row goes through the model's input contract (handlers/aiaas_contract.py), here for a run directory or in the
server's handler, so a file is checked exactly as a request is; its errors name the file and the LINE of the row.
Memory is bounded: at most a few chunks are held at once, whatever the file's size.

Fast path: a chunk that came as one array of plain numbers goes to the model as that array (local); one that came as
plain numerals goes to a server as the lines' own text inside the JSON body; any other chunk takes the general path.
An imported model (a tensor card) predicts .npy/.npz files instead: arrayfiles.py.
"""

from __future__ import annotations

import collections
import contextlib
import concurrent.futures as cf
import csv
import gc
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .atomic import atomic_file
from .card import is_tabular, is_text, read_card
from .errors import InputError
from .filerows import LOCAL_CHUNK_ROWS, Chunk, RowReader
from .handlers import aiaas_contract as contract

# values per request to a server: fewer, larger requests cost the client (and the server) less per row; 50,000
# numbers are 0.5-1 MB of JSON, far below TorchServe's 6.5 MB body limit, whatever the model's width
SERVER_CHUNK_CELLS = 50_000
_INDEX = re.compile(r"^(?:instances|rows)\[(\d+)\]")


@dataclass
class FileReport:
    """What predict_file did: rows predicted, the input format, where the answers went, and how long it took."""

    rows: int
    format: str
    out: str
    seconds: float
    parser_peak_rss_mb: float | None = None  # the parser process's own peak RSS (None: parsed in this process)


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
            except contract.ContractError as e:  # an output the answer refuses (overflow) names its row
                raise _line_error(str(e), chunk, path) from None
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
        rows = max(1, SERVER_CHUNK_CELLS // max(1, len(card["input"].get("features") or ())))
        self.chunk_rows = min(rows, int(card["input"].get("max_rows") or rows))

    def ask(self, body: dict) -> dict:
        """Return the answer to one request body, InputError with the server's message when it refuses it."""
        from . import client as cl

        try:
            return self.client.predict(self.name, json.dumps(body).encode(), version=self.version)
        except cl.BadRequest as e:
            raise InputError(e.message) from None

    def __call__(self, chunk: Chunk, path: Path) -> dict:
        """Return the answer for one chunk (the raw lines as the body when they are plain numbers)."""
        from . import client as cl

        if chunk.text is not None:  # plain numerals (filerows): the lines themselves are the rows of a JSON body
            body = '{"instances":[[' + "],[".join(t.rstrip("\r\n") for t in chunk.text) + "]]}"
            try:
                return self.client.predict(self.name, body.encode(), version=self.version)
            except cl.BadRequest as e:
                if not e.message.startswith("body:"):  # a row broke the contract: the message names it
                    raise _line_error(e.message, chunk, path) from None
                # numbers CSV accepts but JSON does not ("1.", "+2"): send the parsed values instead
        rows = chunk.rows if chunk.rows is not None else chunk.array.tolist() if chunk.array is not None else chunk.cells().rows
        try:
            return self.client.predict(self.name, json.dumps({"instances": rows}).encode(), version=self.version)
        except cl.BadRequest as e:
            raise _line_error(e.message, chunk, path) from None


def _local_ask(model) -> Callable[[], Callable[[dict], dict]]:
    """Return a loader of ask(body): the answer of a LocalModel or a run directory (loaded by the loader), InputError
    for a body the contract refuses."""

    def load() -> Callable[[dict], dict]:
        from .runs import load_run

        local = load_run(model) if isinstance(model, (str, os.PathLike)) else model

        def ask(body: dict) -> dict:
            try:
                return local.predict(body)
            except contract.ContractError as e:
                raise InputError(str(e)) from None

        return ask

    return load


def _arrays(path, out: str, card: dict, load, id_column, chunk_rows, concurrency: int) -> FileReport:
    """Return the FileReport of predicting an .npy/.npz file for a tensor card (arrayfiles.predict_arrays)."""
    if id_column is not None:
        raise InputError(f"--id {id_column}: an array file has no id column; answers keep the order of the samples")
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1):
        raise InputError(f"chunk_rows: {chunk_rows!r} must be an integer ≥ 1")
    from .arrayfiles import predict_arrays  # numpy: imported only for array files

    rows, fmt, seconds = predict_arrays(path, out, card, load, chunk_rows, concurrency)
    return FileReport(rows, fmt, out, seconds)


def _texts(path, out: str, card: dict, ask, id_column, chunk_rows) -> FileReport:
    """Return the FileReport of predicting a CSV file's `text` column with a text model (textfiles.py), in order."""
    from . import textfiles

    t0, rows = time.perf_counter(), 0
    with _output(out) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(textfiles.header(card, id_column))
        for lines, ids, body in textfiles.chunks(path, card, id_column, chunk_rows):
            try:
                answer = ask(body)
            except InputError as e:
                raise textfiles.line_error(str(e), lines, path) from None
            writer.writerows(textfiles.answer_rows(card, answer, ids))
            rows += len(lines)
    return FileReport(rows, "csv (text)", out, time.perf_counter() - t0)


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
    """Return a FileReport after writing the predictions for every row of a CSV or JSON file, in input order (for an
    imported model: every sample of an .npy/.npz file, written as .npy/.npz; arrayfiles.predict_arrays).

    With a run directory, a large CSV file is parsed in a second process while this one loads the model
    (filerows.PARSE_PROCESS_BYTES).

    model: a LocalModel or a run directory (predicted in this process), or a client.Client with `name` (and
    `version`) of a served model. out: the CSV to write (atomically: nothing is left on error), or None/"-" for
    stdout. Its columns: the id column (with id_column), `prediction` (see prediction_column), and for a classifier
    one `p_CLASS` column per class. concurrency: requests in flight at once (server only). progress: a bar on
    stderr (default: when stderr is a terminal).
    """
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or not 1 <= concurrency <= 64:
        raise InputError(f"concurrency: {concurrency!r} must be an integer from 1 to 64")
    if id_column is not None and (not isinstance(id_column, str) or not id_column.strip()):
        raise InputError(f"id_column: {id_column!r} must be a column name")
    client = sys.modules.get(f"{__package__}.client")  # a Client exists only once its module is imported (httpx)
    out_name = check_output(path, out)
    reader = None
    try:
        if client is not None and isinstance(model, client.Client):
            if not isinstance(name, str) or not name:
                raise InputError("name: give the served model's name with a Client")
            predictor = _Remote(model, name, version)
            if is_text(predictor.card):
                return _texts(path, out_name, predictor.card, predictor.ask, id_column, chunk_rows)
            if not is_tabular(predictor.card):
                return _arrays(path, out_name, predictor.card, lambda: predictor.ask, id_column, chunk_rows, concurrency)
        else:
            if model is None:
                raise InputError("model: give a run directory, a LocalModel, or a Client and name")
            card = read_card(model) if isinstance(model, (str, os.PathLike)) else model.card
            if is_text(card):
                return _texts(path, out_name, card, _local_ask(model)(), id_column, chunk_rows)
            if not is_tabular(card):
                return _arrays(path, out_name, card, _local_ask(model), id_column, chunk_rows, 1)
            if isinstance(model, (str, os.PathLike)):
                # the header checked and a large file parsed (in a second process) while torch loads the model: the
                # process starts before runs (torch) is imported
                reader = RowReader(path, card, id_column, _Local.chunk_rows if chunk_rows is None else chunk_rows)
                reader.start()
                from .runs import load_run

                model = load_run(model)
            predictor = _Local(model)
        card = predictor.card
        if reader is None:
            reader = RowReader(path, card, id_column, predictor.chunk_rows if chunk_rows is None else chunk_rows,
                               arrays=isinstance(predictor, _Local))
        head = ([id_column] if id_column else []) + [prediction_column(card, id_column)]
        head += [f"p_{c}" for c in card["output"].get("classes") or []] if card["output"]["task"] == "classification" else []
        t0 = time.perf_counter()
        with _output(out_name) as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(head)
            rows = _run(reader, predictor, f, writer, concurrency, progress)
        seconds = time.perf_counter() - t0
    finally:
        if reader is not None:
            reader.close()  # the parser process ends with this call, whatever happened
    return FileReport(rows, reader.format, out_name, seconds, reader.parser_peak_rss_mb)

def prediction_column(card: dict, id_column: str | None = None) -> str:
    """Return the predictions column's name: `prediction`, or `TARGET_pred` when an input column may bear that name."""
    # an input column named `prediction` can only be a feature, the target, a column training excluded, or the id
    target = card["output"].get("target") or "target"
    names = {f.get("name") for f in card["input"].get("features") or []}
    names |= {target, id_column} | set(card.get("data", {}).get("excluded_columns", {}))
    return f"{target}_pred" if "prediction" in names else "prediction"


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


def check_output(path, out) -> str:
    """Return the output's name ("-" for stdout), refusing a folder, a missing folder, or the input file itself by any
    spelling (a symlink, ./X, a hard link): writing it would destroy the rows being read."""
    name = "-" if out in (None, "-") else str(out)
    if name == "-":
        return name
    target = Path(name)
    if target.is_dir():
        raise InputError(f"--out {target}: is a directory")
    if not target.parent.is_dir():
        raise InputError(f"--out {target}: folder {target.parent} does not exist")
    if target.exists() and Path(path).exists() and os.path.samefile(path, target):
        raise InputError(f"--out {target}: is the input file {path}; write the predictions to another file")
    return name


@contextlib.contextmanager
def _output(name: str):
    """Yield a text file to write CSV into: stdout for "-", else an atomic file (aiaas_torch.atomic) moved over `name`
    on success only."""
    if name == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    with atomic_file(name, newline="") as f:
        yield f
