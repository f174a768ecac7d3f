"""What the Open Inference gateway answers: the routes of the protocols it serves, and nothing else.

KServe's ModelServer mounts more than the gateway means to serve: model repository load and unload (which would
take a model away for anyone holding the inference token), model listings, explain, its own metrics, the OpenAPI
schema. The gateway's middleware answers 404 to every request that is not one of ROUTES (`allowed`) before
KServe's router sees it, so a kserve release that adds routes adds nothing here. Torch- and kserve-free.
"""

from __future__ import annotations

import re

# Open Inference health, server metadata, model metadata and ready, infer (with their /versions/V paths), TF
# Serving's model status and predict: "METHOD /path" as the app's routes name them.
ROUTES = frozenset({
    "GET /v2", "GET /v2/health/live", "GET /v2/health/ready",
    "GET /v2/models/{model_name}", "GET /v2/models/{model_name}/versions/{model_version}",
    "GET /v2/models/{model_name}/ready", "GET /v2/models/{model_name}/versions/{model_version}/ready",
    "POST /v2/models/{model_name}/infer", "POST /v2/models/{model_name}/versions/{model_version}/infer",
    "GET /v1/models/{model_name}", "GET /v1/models/{model_name}/versions/{model_version}",
    "POST /v1/models/{model_name}:predict",
})  # fmt: skip


def _pattern(template: str) -> re.Pattern:
    """Return the regex of one "/path/{param}/..." template, a parameter being one path segment."""
    parts = re.split(r"\{[a-z_]+\}", template)
    return re.compile("^" + "[^/]+".join(re.escape(p) for p in parts) + "$")


_PATTERNS = tuple((r.split(" ", 1)[0], _pattern(r.split(" ", 1)[1])) for r in sorted(ROUTES))


def allowed(method: str, path: str) -> bool:
    """Return True when METHOD path is one of ROUTES (a parameter matching one path segment)."""
    return any(m == method and p.match(path) for m, p in _PATTERNS)
