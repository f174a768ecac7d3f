"""What the Open Inference gateway answers, and how it proves it is the gateway before anyone sends it a token.

KServe's ModelServer mounts more than the gateway means to serve: model repository load and unload (which would
take a model away for anyone holding the inference token), model listings, explain, its own metrics, the OpenAPI
schema. The gateway's middleware answers 404 to every request that is not one of ROUTES (`allowed`) before
KServe's router sees it, so a kserve release that adds routes adds nothing here. The starter hands the gateway a
one-time random key on its stdin (never argv or the environment) and sends no token to the port until the process
there answers a fresh challenge with HMAC-SHA256(key, challenge) on IDENTITY_PATH, the one route that needs no
token. Torch- and kserve-free: the starter (control.py) imports it too.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

IDENTITY_PATH = "/aiaas/identity"

# Open Inference health, server metadata, model metadata and ready, infer (with their /versions/V paths), TF
# Serving's model status and predict, and the identity proof: "METHOD /path" as the app's routes name them.
ROUTES = frozenset({
    f"GET {IDENTITY_PATH}",
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


def new_identity_key() -> bytes:
    """Return a fresh random key for one gateway start."""
    return secrets.token_bytes(32)


def new_challenge() -> str:
    """Return a fresh random challenge (hex) for one identity probe."""
    return secrets.token_hex(16)


def identity_proof(key: bytes, challenge: str) -> str:
    """Return the hex HMAC-SHA256 of challenge under key: what only the gateway given that key can answer."""
    return hmac.new(key, challenge.encode(), hashlib.sha256).hexdigest()


def proves_identity(answer_status: int, answer_json, key: bytes, challenge: str) -> bool:
    """Return True when an answer to the identity probe is a 200 carrying the right proof for challenge."""
    proof = answer_json.get("proof") if isinstance(answer_json, dict) else None
    return answer_status == 200 and isinstance(proof, str) and hmac.compare_digest(proof, identity_proof(key, challenge))
