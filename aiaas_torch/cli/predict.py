"""`aiaas predict`: ask a served model over HTTP (no torch imported) or a local run directory for predictions."""

from __future__ import annotations

import atexit
import csv
import gc
import json
import math
import sys

from .common import Default, UsageError, add_home_option, finite_float, positive_int, print_json, renamed, running_home


def add_parser(sub) -> None:
    """Add the predict sub-parser to `sub`; returns None."""
    pr = sub.add_parser("predict", help="ask a served model (or a local run directory) for predictions",
                        description="Send rows to a served model: `aiaas predict NAME 6 7` sends rows [6] and [7]; "
                                    "`aiaas predict NAME 1,2,3` one row of three features. With --local RUN_DIR no server is used. "
                                    "`--file rows.csv --out predictions.csv` predicts a whole file, streamed in chunks, in input order.")
    pr.add_argument("args", nargs="*", metavar="NAME|ROW", help="model name (not with --local), then rows as comma-separated cells "
                    "(CSV quoting: \"New York\"; a text cell is a category, an empty cell null)")
    pr.add_argument("--body", default=None, metavar="JSON", help="request body as JSON text (instead of ROWs)")
    pr.add_argument("--file", default=None, metavar="F",
                    help="predict every row of this file: CSV with a header row naming the features, JSON Lines "
                         "(one row per line: an array in feature order or an object of features) or a JSON array of "
                         "rows, told apart by content; errors name the line. An imported model (named tensors): an .npy "
                         "of its one input or an .npz of one array per input name (read without unpickling)")
    pr.add_argument("--out", default=None, metavar="F", help="with --file: write the predictions CSV here "
                    "(atomically; default stdout): the --id column, `prediction` (TARGET_pred when a feature is named "
                    "so), and p_CLASS per class for a classifier; "
                    "for an .npy/.npz input an .npz of one array per output (.npy when there is one)")
    pr.add_argument("--id", dest="id_column", default=None, metavar="COLUMN",
                    help="with --file: carry this input column (or object field) through to the output")
    pr.add_argument("--concurrency", type=int, default=4, metavar="N",
                    help="with --file against a server: requests in flight at once (default 4)")
    pr.add_argument("--chunk-rows", type=int, default=None, metavar="N",
                    help="with --file: rows per chunk (default 50000 locally; to a server, 50000 values per request "
                         "within the model's max_rows)")
    pr.add_argument("--prompt", default=None, metavar="TEXT",
                    help="a generation model: the text to complete (its OpenAI /v1/completions route); prints the text")
    pr.add_argument("--max-tokens", type=positive_int, default=None, metavar="N",
                    help="with --prompt: the most tokens to generate (default: the model's)")
    pr.add_argument("--local", default=None, metavar="RUN_DIR", help="predict in this process from a run directory")
    pr.add_argument("--version", dest="model_version", default=None, metavar="V", help="model version (default: the default version)")
    add_home_option(pr)
    renamed(pr, "--timeout", pr.add_argument("--request-timeout", type=finite_float, metavar="S",
                                             default=Default("aiaas_torch.client:Client", "request_timeout"),
                                             help="seconds to wait for each answer from the server (default %(default)s)"))
    pr.add_argument("--json", action="store_true", help="print the answer exactly as received (with --file and --out: the report)")
    pr.set_defaults(run=run)


def run(a) -> int:
    """Predict locally or over HTTP; returns the exit code."""
    if a.prompt is not None:
        return _run_prompt(a)
    if a.max_tokens is not None:
        raise UsageError("--max-tokens goes with --prompt")
    if a.file is not None:
        return _run_file(a)
    if a.out is not None or a.id_column is not None:
        raise UsageError("--out and --id go with --file")
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
        home = running_home(a)
        with cl.Client(home=home, request_timeout=a.request_timeout) as c:
            try:
                answer = c.predict(name, body, version=a.model_version)
            except (cl.BadRequest, cl.NotFound, cl.TokenError) as e:  # the input, the name, or the --home: the user's to fix
                raise UsageError(str(e)) from None
    if a.json:
        print_json(answer)
    else:
        _print_answer(answer)
    return 0


def _run_prompt(a) -> int:
    """Complete --prompt with a served generation model and print the text (--json: the whole answer); returns the exit code."""
    if a.local or a.file is not None or a.body is not None or len(a.args) != 1:
        raise UsageError("--prompt TEXT goes with one model NAME, and not with --local, --file, --body or rows")
    from .. import client as cl

    with cl.Client(home=running_home(a), request_timeout=a.request_timeout) as c:
        try:
            answer = c.complete(a.args[0], a.prompt, version=a.model_version, max_tokens=a.max_tokens)
        except (cl.BadRequest, cl.NotFound, cl.TokenError) as e:  # the prompt, the name, or the --home: the user's to fix
            raise UsageError(str(e)) from None
    if a.json:
        print_json(answer)
    else:
        choice = answer["choices"][0]
        print(choice["text"])
        if choice.get("finish_reason") == "length":
            print(f"(stopped at {answer['usage']['completion_tokens']} tokens: --max-tokens N for more)", file=sys.stderr)
    return 0


def _run_file(a) -> int:
    """Predict every row of --file into --out, locally or over HTTP; returns the exit code."""
    from ..files import predict_file

    if a.body is not None or (a.args[1:] if not a.local else a.args):
        raise UsageError("--file predicts a whole file: give no ROW arguments and no --body")
    kwargs = dict(id_column=a.id_column, chunk_rows=a.chunk_rows)
    if a.local:  # the run directory itself: the file is parsed while the model loads
        report = predict_file(a.file, a.out, a.local, **kwargs)
        # the interpreter's last garbage collections over torch's objects cost about 1 s at exit (measured); nothing
        # of this command is left for them to finalize (the output is closed), so they skip what exists by then
        atexit.unregister(gc.freeze)
        atexit.register(gc.freeze)
    else:
        if not a.args:
            raise UsageError("give the model NAME (or --local RUN_DIR)")
        from .. import client as cl

        with cl.Client(home=running_home(a), request_timeout=a.request_timeout) as c:
            try:
                report = predict_file(a.file, a.out, c, name=a.args[0], version=a.model_version,
                                      concurrency=a.concurrency, **kwargs)
            except (cl.NotFound, cl.TokenError) as e:
                raise UsageError(str(e)) from None
    if a.json and report.out != "-":
        print_json(vars(report))
    else:
        print(f"aiaas predict: {report.rows:,} rows from {a.file} ({report.format}) -> "
              f"{'stdout' if report.out == '-' else report.out} in {report.seconds:.1f} s", file=sys.stderr)
    return 0


def _cell(text: str):
    """Return one ROW cell as JSON sends it: an integer or a finite number, None for an empty cell, else the text."""
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text  # a category: the model's contract decides whether this feature takes text
    if not math.isfinite(value):
        raise UsageError(f"cell {text!r}: values must be finite numbers (an empty cell sends null)")
    return value


def _rows_from_args(values: list[str]) -> list[list]:
    """Return ROW arguments ("6", "1,2,3", 'Dream,49.0,,"New York"') as rows of cells, read with CSV quoting rules:
    a number is sent as a number, an empty cell as null, any other cell as text."""
    rows = []
    for v in values:
        try:
            records = list(csv.reader([v], skipinitialspace=True, strict=True))
        except csv.Error as e:
            raise UsageError(f"row {v!r}: {e}; write a row as CSV cells, e.g. 1.5,2,\"New York\"") from None
        cells = records[0] if records and records[0] else [""]
        try:
            rows.append([_cell(c) for c in cells])
        except UsageError as e:
            raise UsageError(f"row {v!r}: {e}") from None
    return rows


def _request_body(a, rows_args: list[str]):
    """Return the request body from ROWs or --body (exactly one of them)."""
    given = sum(bool(x) for x in (rows_args, a.body is not None))
    if given != 1:
        raise UsageError("give the rows as ROW arguments, or --body JSON, or --file F (exactly one)")
    if a.body is not None:
        return a.body
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
        for i, notes in enumerate(answer.get("warnings") or []):  # on stderr: stdout stays one prediction per line
            for note in notes:
                print(f"aiaas predict: warning: row {i + 1}: {note}", file=sys.stderr)
    elif isinstance(answer, dict) and "outputs" in answer:
        for o in answer["outputs"]:
            print(f"{o['name']}: {_human(o['data'])}")
    else:
        print(json.dumps(answer))
