"""Find the columns of a table that name its rows rather than describe them: a row id as a feature lets a model
memorize the training rows (one coefficient per car name) or read the answer off the row order (rownames 1..N)."""

from __future__ import annotations

import re
import warnings

MIN_ID_ROWS = 20  # fewer rows: a small table's every text column may well be unique, and 1..N proves little
_INTEGER = re.compile(r"^[-+]?\d+$")
# A name that says "row number": R's rownames, pandas' unnamed index, readr's ...1, id, PassengerId, car_id, row_no.
_ID_NAME = re.compile(r"^(rownames?|row([ _.]?(id|names?|nums?|numbers?|no|index))?|ids?|index|idx|no\.?|#|n|obs|"
                      r"unnamed: ?\d+|\.\.\.\d+)$|[ _.\-]id$", re.IGNORECASE)  # fmt: skip
_CAMEL_ID = re.compile(r"[a-z]I[dD]$")  # PassengerId, userID (not "valid", "paid")


def id_reason(name: str, cells: list[str]) -> str | None:
    """Return why a column looks like a row id (text unique to every row; the integers 0..N-1 or 1..N in row order
    under a name such as id, rownames or index), or None when it does not or has fewer than MIN_ID_ROWS rows.

    1..N under another name may be a measured quantity (a day number, a dose): it stays a feature."""
    texts = [c.strip() for c in cells]
    n = len(texts)
    if n < MIN_ID_ROWS or any(not s for s in texts):
        return None
    if all(_INTEGER.match(s) for s in texts):
        first = int(texts[0])
        if (_ID_NAME.search(name) or _CAMEL_ID.search(name)) and first in (0, 1) and all(int(s) == first + i for i, s in enumerate(texts)):
            return f"the integers {first}..{first + n - 1} in row order under an id-like name"
        return None
    numeric = sum(1 for s in texts if _is_number(s))
    if numeric <= n // 2 and len(set(texts)) == n:
        return f"text unique to every one of the {n} rows"
    return None


def _is_number(s: str) -> bool:
    """Return whether `s` reads as a float, with a decimal point or comma (a file read without --decimal ',')."""
    try:
        float(s.replace(",", ".", 1))
    except ValueError:
        return False
    return True


def exclude_ids(header: list[str], rows: list, t: int, ids: list[str], wanted: set, where) -> tuple[dict, list[str]]:
    """Return ({excluded column: why}, warnings): the columns declared in `ids`, and those that look like a row id
    (`id_reason`), apart from the target (column `t`) and the columns `wanted` as features, each with a warning."""
    excluded = {c: "declared an id (--id)" for c in ids}
    notes = []
    for j, name in enumerate(header):
        why = None if j == t or name in wanted or name in excluded else id_reason(name, [row[j] for _, row in rows])
        if why is not None:
            excluded[name] = f"looks like a row id: {why}"
            msg = (f"{where}, column {name!r}: looks like a row id ({why}); excluded from the features "
                   f"(--keep {name} keeps it as a feature, --id {name} excludes it without this warning)")  # fmt: skip
            warnings.warn(msg, UserWarning, stacklevel=3)
            notes.append(msg)
    return excluded, notes
