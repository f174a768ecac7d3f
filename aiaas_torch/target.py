"""The target column of a CSV: its cells as numbers or labels, with the errors that name the line, and the task
(regression or classification) a target implies when none is asked for."""

from __future__ import annotations

import math
from pathlib import Path

from .csvread import MISSING, decimal_comma_hint
from .errors import InputError
from .handlers.contract_common import FLOAT32_MAX

MAX_CLASSES = 20  # more distinct integer targets than this is a regression


def target_values(cells: list[str], p: Path, lines: list[int], target: str, task: str) -> tuple[list, bool]:
    """Return the target cells as floats when all are numeric (checking they are finite), else as string labels.

    A few non-numbers among numbers is a typo, not a set of labels: that is an error naming the line, unless the
    caller asked for classification.
    """
    values: list = []
    bad: list[tuple[int, str]] = []
    for cell, line in zip(cells, lines):
        try:
            v = float(cell)
        except ValueError:
            bad.append((line, cell))
            continue
        if not math.isfinite(v):
            raise InputError(f"{p}, line {line}, column {target!r}: {cell!r} is not a finite number")
        if abs(v) > FLOAT32_MAX:  # a regression target is float32: it would become inf
            raise InputError(f"{p}, line {line}, column {target!r}: {cell[:40]!r} is too large for float32 (|x| > {FLOAT32_MAX:.7g})")
        values.append(v)
    if not bad:
        return values, True
    if task != "classification" and decimal_comma_hint([c for _, c in bad]):
        raise InputError(f"{p}, column {target!r}: {decimal_comma_hint([c for _, c in bad])}")
    if task == "classification" or (task == "auto" and len(bad) > len(cells) // 2):
        return cells, False
    line, cell = bad[0]
    if cell.lower() in MISSING:
        raise InputError(f"{p}, line {line}, column {target!r}: missing target {cell!r}; a row without a target cannot train: "
                         "leave such rows out with --drop-missing-target (drop_missing_target=True)")  # fmt: skip
    hint = "" if task == "regression" else " (most of the column is numeric; pass task 'classification' if these are labels)"
    raise InputError(f"{p}, line {line}, column {target!r}: non-numeric target {cell[:40]!r}{hint}")


def infer_task(y_values: list, numeric: bool, n: int) -> str:
    """Return "classification" for string labels or few distinct integers, else "regression"."""
    if not numeric:
        return "classification"
    distinct = set(y_values)
    if all(v == int(v) for v in distinct) and len(distinct) <= min(MAX_CLASSES, max(2, n // 10)):
        return "classification"
    return "regression"
