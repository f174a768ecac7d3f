"""`aiaas openapi`: write the OpenAPI 3.1 document of a model's prediction endpoints (no torch imported)."""

from __future__ import annotations

import json
from pathlib import Path

from .common import UsageError, add_home_option


def add_parser(sub) -> None:
    """Add the openapi sub-parser to `sub`; returns None."""
    o = sub.add_parser("openapi", help="write the OpenAPI 3.1 document of a model's endpoints",
                       description="Write an OpenAPI 3.1 document for POST /predictions/NAME, /v1/models/NAME:predict "
                                   "and /v2/models/NAME/infer, with request and answer schemas from the model card "
                                   "(feature names and count, training ranges, class labels), the bearer-token scheme "
                                   "and the JSON error body. TARGET is a run directory, a .mar archive (its members are "
                                   "checked against its card first), or the NAME of a model served from --home.")
    o.add_argument("target", metavar="NAME|ARCHIVE|RUN_DIR", help="served model name, .mar archive, or run directory")
    o.add_argument("--name", default=None, metavar="NAME", help="model name in the paths (default: the served name, the archive's, "
                                                 "or the run directory's folder name)")
    o.add_argument("--out", default=None, metavar="F", help="write the document to this file, atomically (default stdout)")
    add_home_option(o)
    o.set_defaults(run=run)


def run(a) -> int:
    """Write the document; returns the exit code."""
    from ..openapi import describe_target
    from ..atomic import write_text_atomic

    doc = describe_target(a.target, a.home, a.name)
    text = json.dumps(doc, indent=2) + "\n"
    if a.out is None:
        print(text, end="")
        return 0
    out = Path(a.out)
    if out.is_dir() or not out.parent.is_dir():
        raise UsageError(f"--out {out}: " + ("is a directory" if out.is_dir() else f"folder {out.parent} does not exist"))
    write_text_atomic(out, text)
    return 0
