"""Rows of a CSV or JSON file, read in chunks and checked against a model card's feature names (files.py predicts them).

Input formats, told apart by the first characters of the file (never by its extension):
- CSV with a header row naming the model's features (any order; the model's target column and the columns training
  excluded as row ids are ignored, the `id` column is carried through, any other column is refused), one record per line;
- JSON Lines: one row per line, an array of values in feature order or an object {feature: value, ...};
- a JSON array of such rows (`[[...], ...]` or `[{...}, ...]`), read incrementally.

Cells are handed over as the model's input contract expects them: numbers as numbers, a blank cell as null, other
text as a string; each row keeps its LINE number for error messages. Memory is bounded: one chunk at a time.

Fast paths: a chunk of CSV lines that numpy parses as finite numbers within float32 comes as one array; with
arrays=False (a server parses the rows), a chunk of plain numerals that are exactly the features in card order comes
as the lines' own text, unparsed. Any other chunk comes cell by cell.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import parsechild
from .csvread import csv_header
from .errors import InputError

FORMATS = ("csv", "jsonl", "json-array")
LOCAL_CHUNK_ROWS = 50_000
# a CSV file this large is parsed in a second process (parsechild) while this one loads the model; a smaller one here
# (starting the process costs ~0.1-0.2 s)
PARSE_PROCESS_BYTES = 16 << 20
_JSON_BLOCK = 1 << 20  # characters read at a time from a JSON array


@dataclass
class Chunk:
    """Consecutive rows of a file: each row's line number, its id, and the rows as values or as parsed numbers."""

    lines: list[int]
    ids: list | None
    rows: list | None = None  # general path: one list (values in feature order) or object per row
    text: list[str] | None = None  # server fast path: the CSV lines as read, plain numerals, the features in card order
    array: object = None  # fast path: float64 (float32 from the parser process) numpy array, rows × features, finite and within float32
    cells: object = None  # text without array: a function returning `rows`, read cell by cell (the general path)


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

    def __init__(self, path, card: dict, id_column: str | None = None, chunk_rows: int = LOCAL_CHUNK_ROWS,
                 arrays: bool = True, parse_process_bytes: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: file not found" if not self.path.exists() else f"{self.path}: not a regular file")
        if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
            raise InputError(f"chunk_rows: {chunk_rows!r} must be an integer ≥ 1")
        self.features = [f["name"] for f in card["input"]["features"]]
        self.target = card["output"].get("target")
        self.excluded = set(card.get("data", {}).get("excluded_columns", {}))  # training's id columns: ignored like the target
        self.id_column = id_column
        self.chunk_rows = chunk_rows
        # False: a chunk of plain numerals in card order comes as its text alone, for a reader that hands the text on
        # (a server parses it anyway); numpy would parse every number here a second time
        self.arrays = arrays
        self.format = _sniff(self.path)
        self.size = self.path.stat().st_size
        self.done = 0  # characters read so far (progress)
        # arrays only: a server parses the rows itself; None: PARSE_PROCESS_BYTES (tests set a small value)
        self.parse_process_bytes = PARSE_PROCESS_BYTES if parse_process_bytes is None else parse_process_bytes
        self.parser: parsechild.Parser | None = None
        self.parser_peak_rss_mb: float | None = None  # the parser process's own peak RSS, once it ended
        self._f = None
        self._layout = None

    def start(self) -> "RowReader":
        """Return self after opening the file, checking a CSV header and starting the parser process for a large CSV.

        Iterating starts it too; call it first to have the file parsed while something slow (a model load) runs.
        """
        if self._f is not None:
            return self
        self._f = open(self.path, encoding="utf-8-sig", newline="")
        self.done = 0
        try:
            if self.format == "csv":
                self._layout = self._header(self._f)
                self._header_done = self.done
                line, cols, id_col, width, raw = self._layout
                if self.arrays and self.size >= self.parse_process_bytes:
                    self.parser = parsechild.start(self.path, line, line + 1, self.chunk_rows, cols, id_col, width, raw)
        except UnicodeDecodeError as e:
            self.close()
            raise self._not_utf8(e) from None
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """End the parser process (if any) and close the file; iterating again starts over."""
        self.close_parser()
        if self._f is not None:
            self._f.close()
            self._f = None

    def close_parser(self) -> None:
        """End the parser process, if any, keeping its peak RSS."""
        if self.parser is not None:
            self.parser.close()
            self.parser_peak_rss_mb = self.parser.peak_rss_mb
            self.parser = None

    def _not_utf8(self, e: UnicodeDecodeError) -> InputError:
        """Return the error for text that is not UTF-8."""
        return InputError(f"{self.path}: not UTF-8 text (byte {e.start} of a block read after about {self.done:,} characters)")

    def __iter__(self) -> Iterator[Chunk]:
        """Yield the file's rows chunk by chunk."""
        self.start()
        try:
            if self.format == "csv":
                yield from self._csv(self._f)
            else:
                yield from self._json(self._f)
        except UnicodeDecodeError as e:
            raise self._not_utf8(e) from None
        finally:
            self.close()

    # -------------------------------------------------------------------------------------------- CSV

    def _header(self, f) -> tuple:
        """Return (header line, feature columns, id column, field count, raw) after reading and checking the header."""
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
        known = set(self.features) | {self.target, self.id_column} | self.excluded
        extra = [h for h in header if h not in known]
        if extra:
            raise InputError(f"{self.path}, line {line}: column(s) {extra[:5]} are not features of the model ({self.features[:20]}); "
                             "drop them, or name one with --id to carry it through")
        cols = [header.index(n) for n in self.features]
        id_col = header.index(self.id_column) if self.id_column is not None else None
        width = len(header)
        raw = cols == list(range(width))  # the lines are exactly the feature values, in card order
        return line, cols, id_col, width, raw

    def _csv(self, f) -> Iterator[Chunk]:
        """Yield the chunks of a CSV file with a header row (read by start)."""
        line, cols, id_col, width, raw = self._layout
        if self.parser is not None:
            resume = yield from self._parsed(cols, id_col, width)
            if resume is None:
                return
            self.done = self._header_done
            for _ in range(resume - 1 - line):  # the parser stopped before the end: read on from its line here
                self.done += len(f.readline())
            line = resume - 1
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
        lines, numbers = parsechild.nonblank(lines, numbers)  # blank lines hold no row (e.g. at the end of the file)
        if raw and not self.arrays and lines and _numerals(lines, width):
            return Chunk(numbers, parsechild.ids_of(lines, id_col), text=lines, cells=functools.partial(self._cells, lines, numbers, cols, id_col, width))
        parsed = parsechild.plain_numbers(lines, cols, id_col, width, raw)
        if parsed is not None:
            return Chunk(numbers, parsed[1], array=parsed[0])
        return self._cells(lines, numbers, cols, id_col, width)

    def _parsed(self, cols: list[int], id_col, width: int):
        """Yield the chunks the parser process sends; returns None at the end of the file, or the line to read on from."""
        for kind, line, done, numbers, data, ids in self.parser:
            if kind == parsechild.END:
                self.done = done
                return None
            if kind == parsechild.REREAD:
                self.close_parser()
                return line
            self.done = done
            if kind == parsechild.NUMBERS:
                yield Chunk(numbers, ids, array=data)
            else:  # not plain numbers: read here cell by cell, so each message is the general path's
                yield self._cells(list(io.StringIO(data, newline="")), numbers, cols, id_col, width)
        return None

    def _cells(self, lines: list[str], numbers: list[int], cols: list[int], id_col, width: int) -> Chunk:
        """Return one chunk of non-blank CSV lines read cell by cell (the general path: errors name the line)."""
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
                    v = {k: x for k, x in v.items() if k not in (self.id_column, self.target) and k not in self.excluded}
                elif ids is not None:
                    raise InputError(f"{self.path}, line {n}: --id {self.id_column!r} needs object rows ({{\"{self.id_column}\": ..., features...}})")
                rows.append(v)
                numbers.append(n)
            yield Chunk(numbers, ids, rows=rows)


_NUMERAL_CHARS = b"0123456789+-.eE, \t\r\n"


def _numerals(lines: list[str], width: int) -> bool:
    """Return whether every line holds `width` comma-separated cells made only of numeral characters.

    Such a line, put between brackets, is a JSON array whose numbers read exactly as the cells would (JSON's numbers
    are a subset of Python's), or else no JSON at all; no quote, bracket, brace or letter (true, null, NaN) can
    change a body's structure or meaning. Two C passes over the text, instead of numpy parsing every number.
    """
    text = "".join(lines)
    if not text.isascii() or text.encode("ascii").translate(None, _NUMERAL_CHARS):
        return False
    return all(ln.count(",") == width - 1 for ln in lines)


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
