"""`aiaas predict`: ask a served model over HTTP (no torch imported) or a local run directory for predictions."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .common import UsageError, _finite, _home, _print_json, _running_home


def add_parser(sub) -> None:
    """Add the predict sub-parser to `sub`; returns None."""
    pr = sub.add_parser("predict", help="ask a served model (or a local run directory) for predictions",
                        description="Send rows to a served model: `aiaas predict NAME 6 7` sends rows [6] and [7]; "
                                    "`aiaas predict NAME 1,2,3` one row of three features. With --local RUN_DIR no server is used.")
    pr.add_argument("args", nargs="*", metavar="NAME|ROW", help="model name (not with --local), then rows as comma-separated numbers")
    pr.add_argument("--body", default=None, metavar="JSON", help="request body as JSON text (instead of ROWs)")
    pr.add_argument("--file", default=None, metavar="F", help="read the request body from a JSON file")
    pr.add_argument("--local", default=None, metavar="RUN_DIR", help="predict in this process from a run directory")
    pr.add_argument("--version", dest="model_version", default=None, metavar="V", help="model version (default: the default version)")
    _home(pr)
    pr.add_argument("--timeout", type=_finite, default=30.0, help="HTTP timeout in seconds (default 30)")
    pr.add_argument("--json", action="store_true", help="print the answer exactly as received")
    pr.set_defaults(run=run)


def run(a) -> int:
    """Predict locally or over HTTP; returns the exit code."""
    if a.local:
        from ..runs import load_run

        from ..handlers.aiaas_contract import ContractError

        body = _request_body(a, a.args)
        try:
            answer = load_run(a.local).predict(body)
        except ContractError as e:  # the request broke the model's input contract: the user's input
            raise UsageError(str(e)) from None
    else:
        if not a.args:
            raise UsageError("give the model NAME (or --local RUN_DIR)")
        from .. import client as cl

        name, rows = a.args[0], a.args[1:]
        body = _request_body(a, rows)
        if isinstance(body, str):
            body = body.encode("utf-8")
        home = _running_home(a)
        with cl.Client(home=home, timeout=a.timeout) as c:
            try:
                answer = c.predict(name, body, version=a.model_version)
            except (cl.BadRequest, cl.NotFound) as e:
                raise UsageError(str(e)) from None
    if a.json:
        _print_json(answer)
    else:
        _print_answer(answer)
    return 0


def _rows_from_args(values: list[str]) -> list[list[float]]:
    """Return ROW arguments ("6", "1,2,3") as rows of numbers."""
    rows = []
    for v in values:
        try:
            row = [float(x) for x in v.split(",")]
        except ValueError:
            raise UsageError(f"row {v!r}: expected comma-separated numbers, e.g. 1.5,2,3") from None
        if not all(math.isfinite(x) for x in row):
            raise UsageError(f"row {v!r}: values must be finite numbers")
        rows.append(row)
    return rows


def _request_body(a, rows_args: list[str]):
    """Return the request body from ROWs, --body or --file (exactly one of them)."""
    given = sum(bool(x) for x in (rows_args, a.body is not None, a.file is not None))
    if given != 1:
        raise UsageError("give the rows as ROW arguments, or --body JSON, or --file F (exactly one)")
    if a.body is not None:
        return a.body
    if a.file is not None:
        p = Path(a.file)
        if not p.is_file():
            raise UsageError(f"--file {p}: file not found")
        return p.read_bytes()
    return {"instances": _rows_from_args(rows_args)}


def _human(value) -> str:
    """Return a value as people read it: floats (float32 answers) with 7 significant digits, lists element by element."""
    if isinstance(value, float):
        return f"{value:.7g}"
    if isinstance(value, list):
        return "[" + ", ".join(_human(v) for v in value) + "]"
    return str(value)


def _print_answer(answer) -> None:
    """Print predictions one per line (classification: label and probability); --json keeps the full values."""
    if isinstance(answer, dict) and "predictions" in answer:
        probs = answer.get("probabilities")
        for i, p in enumerate(answer["predictions"]):
            print(_human(p) + (f"\t(p={max(probs[i]):.3f})" if probs else ""))
    elif isinstance(answer, dict) and "outputs" in answer:
        for o in answer["outputs"]:
            print(f"{o['name']}: {_human(o['data'])}")
    else:
        print(json.dumps(answer))
