"""Read a CSV file's text into numbered records: its encoding, its delimiter (sniffed from the header, or given) and
its decimal mark, with messages that name the line and the option that reads the file as it was written."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .handlers.contract_common import FLOAT32_MAX

SEPARATORS = (",", ";", "\t", "|")  # what the header is sniffed for, in order of preference on a tie
DECIMALS = (".", ",")  # the first is the default
ENCODING = "utf-8"  # the default encoding
# Cells read as missing (compared after strip, case-insensitively). "nan" counts only where imputation is asked for;
# elsewhere it stays the "not a finite number" error it always was.
MISSING = ("", "na", "n/a", "nan", "null", "none", "?")
_DECIMAL_COMMA = re.compile(r"^[-+]?\d*,\d+$")  # "39,1", "-0,5", ",25": a number written with a decimal comma


@dataclass
class CsvText:
    """A CSV file's records: the header's column names, the data records as (line, cells), how it was read."""

    header: list[str]
    rows: list[tuple[int, list[str]]]
    sha256: str
    sep: str
    decimal: str
    encoding: str


def csv_header(row: list[str], where) -> list[str]:
    """Return a CSV header row's column names, stripped, refusing an empty or a duplicate name (line 1 of `where`)."""
    header = [h.strip() for h in row]
    seen: dict[str, int] = {}
    for j, h in enumerate(header):
        if h == "":
            raise InputError(f"{where}, line 1, column {j + 1}: empty column name")
        if h in seen:
            raise InputError(f"{where}, line 1: duplicate column name {h!r} (columns {seen[h] + 1} and {j + 1})")
        seen[h] = j
    return header


def _sep_flag(sep: str) -> str:
    """Return how a separator is written on the command line: --sep ';', or --sep $'\\t' for a tab."""
    return "--sep $'\\t'" if sep == "\t" else f"--sep '{sep}'"


def read_csv_text(p: Path, sep: str | None = None, decimal: str = DECIMALS[0], encoding: str = ENCODING) -> CsvText:
    """Return the records of the CSV file `p` (blank lines skipped), decoded with `encoding`, split at `sep` (None:
    sniffed from the header among , ; tab |), numbers written with `decimal` rewritten with a point."""
    if sep is not None and sep not in SEPARATORS:
        raise InputError(f"sep: {sep!r} is not one of {list(SEPARATORS)}")
    if decimal not in DECIMALS:
        raise InputError(f"decimal: {decimal!r} is not one of {list(DECIMALS)}")
    if decimal == sep:
        raise InputError(f"decimal: {decimal!r} is also the separator; a file with a decimal comma is separated by ';' (--sep ';')")
    try:
        codec = codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise InputError(f"encoding: {encoding!r} is not a text encoding Python knows (e.g. utf-8, cp1252, latin-1)") from None
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig" if codec == "utf-8" else codec)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        hint = ("; a file saved by Excel or on Windows is often cp1252: use --encoding cp1252 (encoding='cp1252')"
                if codec == "utf-8" else "; give its encoding with --encoding")  # fmt: skip
        name = "UTF-8" if codec == "utf-8" else encoding
        raise InputError(f"{p}, line {line}: not {name} text (byte {e.start}, {raw[e.start:e.start + 1]!r}){hint}") from None
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    counts = {s: len(next(csv.reader([first], delimiter=s), [])) for s in SEPARATORS}
    best = max(SEPARATORS, key=lambda s: counts[s])  # the first of the most-splitting ones
    if sep is None:
        sep = best if counts[best] > 1 else ","
        if sep == decimal:
            raise InputError(f"{p}: the header is ','-separated, so the decimal mark cannot be ','; say the separator with --sep")
    elif counts[sep] == 1 and counts[best] > 1:
        raise InputError(f"{p}, line 1: the header is one column {first.strip()[:60]!r} with {sep!r}; "
                         f"this looks {best!r}-separated: use {_sep_flag(best)}")  # fmt: skip
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    rows: list[tuple[int, list[str]]] = []
    start = 1  # the line a record starts on (a quoted field may span lines)
    try:
        for r in reader:
            if any(c.strip() for c in r):
                rows.append((start, r))
            start = reader.line_num + 1
    except csv.Error as e:
        raise InputError(f"{p}, line {reader.line_num}: malformed CSV ({e})") from None
    if not rows:
        raise InputError(f"{p}: empty file, expected a header row and data rows")
    header = csv_header(rows[0][1], p)
    data = rows[1:]
    if decimal != ".":
        data = [(line, [_point(c, decimal) for c in r]) for line, r in data]
    return CsvText(header, data, hashlib.sha256(raw).hexdigest(), sep, decimal, codec)


def _point(cell: str, decimal: str) -> str:
    """Return a cell written with a decimal comma as the same number with a point; any other cell unchanged."""
    s = cell.strip()
    return s.replace(decimal, ".") if _DECIMAL_COMMA.match(s) else cell


def decimal_comma_hint(texts: list[str]) -> str:
    """Return a hint naming --decimal ',' when most of these non-numeric cells are numbers with a decimal comma, else ""."""
    commas = [s for s in texts if _DECIMAL_COMMA.match(s.strip())]
    if not commas or len(commas) * 2 < len(texts):
        return ""
    return f"values such as {commas[0]!r} look like numbers with a decimal comma: use --decimal ',' (decimal=',')"


def rows_with_target(rows: list, width: int, t: int, p, target: str, drop: bool) -> tuple[list, list[int]]:
    """Return (the records that have a target in column `t`, the lines of those that do not), checking each record's
    field count; a record without a target is an error naming --drop-missing-target unless `drop` leaves it out."""
    kept, dropped = [], []
    for line, row in rows:
        if len(row) != width:
            raise InputError(f"{p}, line {line}: {len(row)} fields, expected {width} as in the header")
        cell = row[t].strip()
        if cell == "" or (drop and cell.lower() in MISSING):
            if not drop:
                raise InputError(f"{p}, line {line}, column {target!r}: empty target cell; a row without a target cannot "
                                 "train (--impute fills features only): leave such rows out with --drop-missing-target "
                                 "(drop_missing_target=True)")  # fmt: skip
            dropped.append(line)
            continue
        kept.append((line, row))
    return kept, dropped


def parse_float(text: str, where: str) -> float:
    """Return a cell's text as a finite float within float32's range, or raise InputError naming `where`."""
    s = text.strip()
    if s == "":
        raise InputError(f"{where}: empty cell, expected a number")
    try:
        v = float(s)
    except ValueError:
        raise InputError(f"{where}: non-numeric value {s[:40]!r}, expected a number") from None
    if not math.isfinite(v):
        raise InputError(f"{where}: {s!r} is not a finite number (NaN and inf are not allowed)")
    if abs(v) > FLOAT32_MAX:  # the served contract's bound: what trains, serves
        raise InputError(f"{where}: {s[:40]!r} is too large for float32 (|x| > {FLOAT32_MAX:.7g})")
    return v
