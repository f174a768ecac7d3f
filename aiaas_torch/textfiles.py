"""Whole files for text models: a CSV with a `text` column (and `text_pair` for pair classifiers) read in chunks,
each chunk one `{"instances": [...]}` request, the answers as CSV rows (labels and p_CLASS, or e_0..e_{H-1}).

Torch-free; files.predict_file drives it, locally or through a server, and writes the output atomically.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterator

from .errors import InputError

TEXT, PAIR = "text", "text_pair"
CHUNK_ROWS = 64  # texts per request: one batch of tokens, far below any model's max_rows
_INDEX = re.compile(r"^(?:instances|input)\[(\d+)\]")


def header(card: dict, id_column: str | None) -> list[str]:
    """Return the output CSV's header: the id column, then `prediction` and p_CLASS per class, or e_0..e_{H-1}."""
    out = card["output"]
    head = [id_column] if id_column else []
    if out.get("classes"):
        return head + ["prediction"] + [f"p_{c}" for c in out["classes"]]
    return head + [f"e_{i}" for i in range(int(out["dim"]))]


def chunks(path: str | Path, card: dict, id_column: str | None, chunk_rows: int | None = None) -> Iterator[tuple]:
    """Yield (line numbers, ids, request body) per chunk of a CSV file with a `text` column (InputError naming the
    file and what is wrong: no such column, an unknown column, a blank text)."""
    path = Path(path)
    allowed = {TEXT, id_column} | ({PAIR} if card["input"].get("pairs") else set())
    n = chunk_rows or CHUNK_ROWS
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror})") from None
    with f:
        try:
            reader = csv.DictReader(f)
            names = reader.fieldnames or []
        except (csv.Error, UnicodeDecodeError) as e:
            raise InputError(f"{path}: not a CSV file in UTF-8 ({e})") from None
        if TEXT not in names:
            raise InputError(f"{path}: no '{TEXT}' column (a text model's file is a CSV with a header row naming "
                             f"'{TEXT}'" + (f" and '{PAIR}'" if PAIR in allowed else "") + ")")  # fmt: skip
        if id_column is not None and id_column not in names:
            raise InputError(f"{path}: no column {id_column!r} (--id)")
        extra = [c for c in names if c not in allowed]
        if extra:
            raise InputError(f"{path}: column {extra[0]!r} is not {TEXT!r}" + (f", {PAIR!r}" if PAIR in allowed else "")
                             + " or the --id column")  # fmt: skip
        lines, ids, items = [], [], []
        try:
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise InputError(f"{path}, line {reader.line_num}: {len(names)} columns expected")
                item = {TEXT: row[TEXT]}
                if row.get(PAIR):
                    item[PAIR] = row[PAIR]
                lines.append(reader.line_num)
                ids.append(row[id_column] if id_column else None)
                items.append(item)
                if len(items) == n:
                    yield lines, ids, {"instances": items}
                    lines, ids, items = [], [], []
        except (csv.Error, UnicodeDecodeError) as e:
            raise InputError(f"{path}, line {reader.line_num}: not CSV text in UTF-8 ({e})") from None
        if items:
            yield lines, ids, {"instances": items}


def line_error(message: str, lines: list, path: str | Path) -> InputError:
    """Return a request's error message with its instance index replaced by the file and line."""
    m = _INDEX.match(message)
    if m and int(m.group(1)) < len(lines):
        return InputError(f"{path}, line {lines[int(m.group(1))]}: {message[m.end():].lstrip(' .:')}")
    return InputError(f"{path}: {message}")


def answer_rows(card: dict, answer: dict, ids: list) -> list[list]:
    """Return the CSV rows of one chunk's answer, in order (the id first when there is one)."""
    if card["output"].get("classes"):
        rows = [[p, *probs] for p, probs in zip(answer["predictions"], answer["probabilities"])]
    else:
        rows = [list(e) for e in answer["embeddings"]]
    return [([i] if i is not None else []) + r for i, r in zip(ids, rows)]
