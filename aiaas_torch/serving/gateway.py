"""The Open Inference gateway of `aiaas serve start --oip`: KServe's own model server in front of TorchServe.

TorchServe 0.12 answers only part of the Open Inference Protocol (live, server metadata, infer) and its
/v2/health/ready says true whatever its workers. This process runs the `kserve` package's ModelServer (the REST
data plane KServe's TorchServe runtime uses; optional extra `oip`) with one `kserve.Model` per served model and
version, and adds what KServe leaves out: a server- and model-ready that mean "minWorkers workers READY" (asked of
TorchServe's management API, cached for READY_CACHE_S), model metadata from the card, the `/versions/V` paths,
TF Serving's model status at `GET /v1/models/NAME[/versions/V]` (states: see tf_serving_state), the bearer token
(the instance's inference key, as TorchServe asks for it) and a loopback-only listener.
Inference is forwarded to TorchServe on loopback with the caller's own Authorization header, so TorchServe's
token check stays the one that guards the models. Run as `python -m aiaas_torch.serving.gateway HOME PORT`
(identity key on stdin: gateway_guard); `serving.start_server(..., oip=True)` starts it after TorchServe is ready and
`serving.stop` stops it first. Only gateway_guard.ROUTES answer.
"""

import asyncio
import hmac
import json
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..card import is_tabular
from ..handlers.aiaas_contract import DTYPES, input_tensors, output_tensors
from .httpclient import MANAGEMENT_S, PROBE_S, http_client
from .gateway_guard import IDENTITY_PATH, allowed, identity_proof
from .home import load_info
from .management import mgmt_call, models_snapshot
from .readiness import version_ready, versions_ready
from .tokens import TOKEN_HINT, read_keys

READY_CACHE_S = 0.5  # a probe storm asks the management API at most twice a second
_BINARY_HEADER = "inference-header-content-length"


def _import_kserve():
    """Return the kserve module, or exit with the install hint (the gateway is an optional extra)."""
    try:
        import kserve
    except ImportError:
        sys.exit("aiaas serve start --oip needs the optional `kserve` package: pip install 'aiaas-torch[oip]'")
    return kserve


class Upstream:
    """TorchServe as the gateway sees it: its URLs, keys, one pooled async client and a cached workers snapshot."""

    def __init__(self, home: Path):
        self.info = load_info(home)
        if self.info is None:
            raise SystemExit(f"no TorchServe recorded in {home}/server.json; start it first")
        self.home = home
        self._session = None  # aiohttp's, made in the server's event loop on first use
        self._lock = threading.Lock()
        self._snapshot: tuple[float, dict] = (0.0, {})
        self._keys: tuple[int, bytes] = (-1, b"")

    async def post(self, path: str, body: bytes, headers: dict) -> "Answer":
        """Return TorchServe's answer to POST inference_url + path (aiohttp: a third of httpx's async cost here)."""
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=130.0),
                                                  connector=aiohttp.TCPConnector(limit=256))  # fmt: skip
        async with self._session.post(self.info.inference_url + path, data=body, headers=headers) as r:
            return Answer(r.status, r.headers.get(_BINARY_HEADER), await r.read())

    def fresh_snapshot(self) -> dict | None:
        """Return the cached snapshot while it is under READY_CACHE_S old, else None (no thread, no lock: a read)."""
        at, snap = self._snapshot
        return snap if time.monotonic() - at < READY_CACHE_S else None

    async def current_snapshot(self) -> dict:
        """Return the snapshot: the cached one while fresh, else asked for in a thread (never blocking the event loop)."""
        snap = self.fresh_snapshot()
        return snap if snap is not None else await asyncio.to_thread(self.snapshot)

    def snapshot(self) -> dict:
        """Return TorchServe's models snapshot (management API), at most READY_CACHE_S old; {} when it cannot answer."""
        with self._lock:
            at, snap = self._snapshot
            if time.monotonic() - at < READY_CACHE_S:
                return snap
            try:
                with http_client(PROBE_S) as client:
                    snap = models_snapshot(client, self.info)
            except (httpx.HTTPError, ValueError, OSError):
                snap = {}
            self._snapshot = (time.monotonic(), snap)
            return snap

    def authorized(self, header: str | None) -> bool:
        """Return True when an Authorization header carries the instance's current inference key."""
        stamp = self.info.key_file.stat().st_mtime_ns  # TorchServe rewrites the file when it renews a key
        if stamp != self._keys[0]:
            self._keys = (stamp, f"Bearer {read_keys(self.home)['inference']}".encode())
        return isinstance(header, str) and hmac.compare_digest(header.encode(), self._keys[1])


def v2_tensors(card: dict) -> tuple[list, list]:
    """Return the v2 (inputs, outputs) metadata of a model card: its input tensors (a tabular card's one FP32 [-1, F]
    input) and the tensors its answers carry (labels and probabilities first where the card has classes)."""
    inputs = [{"name": t["name"], "datatype": DTYPES[t["dtype"]][0], "shape": list(t["shape"])} for t in input_tensors(card)]
    out = card["output"]
    labels = []
    if out.get("classes"):
        label = "BYTES" if any(isinstance(c, str) for c in out["classes"]) else "INT64"
        labels = [{"name": "predictions", "datatype": label, "shape": [-1]},
                  {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(out["classes"])]}]  # fmt: skip
    if is_tabular(card):
        return inputs, labels or [{"name": out["target"], "datatype": "FP32", "shape": [-1]}]
    return inputs, labels + [{"name": t["name"], "datatype": DTYPES[t["dtype"]][0], "shape": list(t["shape"])}
                             for t in output_tensors(card)]  # fmt: skip


def tf_serving_state(version: dict) -> str:
    """Return TF Serving's state of one snapshot version: AVAILABLE, LOADING or UNAVAILABLE.

    AVAILABLE: max(1, minWorkers) workers READY (what model ready means). LOADING: workers are asked for
    (minWorkers > 0) and listed, but fewer are READY (starting, or restarting after a crash). UNAVAILABLE: no
    worker asked for (scaled to zero) or none listed yet. Never END: an unregistered version is gone from
    TorchServe's list, so its status is a 404.
    """
    if version_ready(version):
        return "AVAILABLE"
    return "LOADING" if version["minWorkers"] > 0 and version["workers"] else "UNAVAILABLE"


def tf_serving_status(snapshot: dict, name: str, version: str | None) -> tuple[int, dict]:
    """Return (HTTP status, body) of TF Serving's GET /v1/models/NAME[/versions/VERSION] from a models snapshot."""
    if not snapshot:
        return 503, {"error": "no model status: TorchServe's management API did not answer (or lists no models)"}
    versions = snapshot.get(name)
    if not versions:
        return 404, {"error": f"Could not find any versions of model {name}"}
    if version is not None:
        versions = [v for v in versions if v["version"] == version]
        if not versions:
            return 404, {"error": f"Could not find version {version} of model {name}"}
    ok = {"error_code": "OK", "error_message": ""}
    return 200, {"model_version_status": [{"version": v["version"], "state": tf_serving_state(v), "status": ok} for v in versions]}


def build_model_class(kserve):
    """Return the kserve.Model subclass that forwards one TorchServe model version (kserve imported by the caller)."""
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferRequest, InferResponse

    class TorchServeModel(kserve.Model):
        """One TorchServe model version behind KServe's data plane: ready means its workers READY."""

        def __init__(self, upstream: Upstream, name: str, version: str, card: dict, registered_as: str):
            super().__init__(registered_as)
            self.upstream, self.ts_name, self.version, self.card = upstream, name, version, card
            self.inputs, self.outputs = v2_tensors(card)
            self.ready = True  # registered; whether it can answer is healthy()'s question

        async def healthy(self) -> bool:
            """Return True when this version has minWorkers READY workers in TorchServe now."""
            snap = await self.upstream.current_snapshot()
            return versions_ready([v for v in snap.get(self.ts_name, []) if v["version"] == self.version])

        def get_input_types(self) -> list:
            """Return the v2 input tensors of the card."""
            return self.inputs

        def get_output_types(self) -> list:
            """Return the v2 output tensors of the card."""
            return self.outputs

        async def predict(self, payload, headers=None):
            """Return TorchServe's answer to the request: an InferResponse for v2, a dict for v1 bodies."""
            path = f"/predictions/{self.ts_name}/{self.version}"
            sent = {"Authorization": (headers or {}).get("authorization", ""), "Content-Type": "application/json"}
            if isinstance(payload, InferRequest):
                body, json_length = payload.to_rest()
                if json_length is not None:
                    sent[_BINARY_HEADER] = str(json_length)
                r = await self.upstream.post(path, body if isinstance(body, bytes) else json.dumps(body).encode(), sent)
                r.raise_for(InvalidInput)
                got = InferResponse.from_bytes(r.body, int(r.binary)) if r.binary else InferResponse.from_rest(json.loads(r.body))
                # KServe's JSON answer requires an id: the request's, else a fresh one
                return InferResponse(payload.id or str(uuid.uuid4()), self.ts_name, got.outputs, model_version=self.version,
                                     use_binary_outputs=payload.use_binary_outputs, requested_outputs=payload.request_outputs)  # fmt: skip
            r = await self.upstream.post(path, json.dumps(payload).encode(), sent)
            r.raise_for(InvalidInput)
            return json.loads(r.body)

    return TorchServeModel


class UpstreamError(Exception):
    """TorchServe refused or failed a forwarded request: its status and message go back unchanged."""

    def __init__(self, status: int, message: str):
        self.status, self.message = status, message
        super().__init__(message)


@dataclass
class Answer:
    """TorchServe's answer to a forwarded request: status, its Inference-Header-Content-Length (or None), body."""

    status: int
    binary: str | None
    body: bytes

    def raise_for(self, invalid_input) -> None:
        """Raise for a status >= 400: 400 as KServe's InvalidInput (its 400), anything else as UpstreamError."""
        if self.status < 400:
            return
        text = self.body.decode("utf-8", "replace")
        try:
            body = json.loads(text)
            message = (body.get("error") or body.get("message") or text) if isinstance(body, dict) else text
        except ValueError:
            message = text
        if self.status == 400:
            raise invalid_input(message)
        raise UpstreamError(self.status, message)


def build_server(home: Path, port: int, identity_key: bytes = b""):
    """Return (kserve ModelServer, models) for HOME's TorchServe: NAME@VERSION for every version, NAME for the default.

    Only gateway_guard.ROUTES answer; identity_key (the starter's, b"" for none) answers IDENTITY_PATH."""
    kserve = _import_kserve()
    import kserve.model_server as model_server
    import kserve.protocol.rest.v2_endpoints as v2
    from fastapi import Request, Response
    from fastapi.responses import JSONResponse
    from kserve.errors import InvalidInput
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.rest.v2_datamodels import InferenceRequest

    upstream = Upstream(home)
    model_class = build_model_class(kserve)
    models = []
    with http_client(MANAGEMENT_S) as client:
        for name, versions in upstream.snapshot().items():
            default = mgmt_call(client, upstream.info, "GET", f"/models/{name}").json()[0]["modelVersion"]
            for v in versions:
                r = mgmt_call(client, upstream.info, "GET", f"/models/{name}/{v['version']}", {"customized": "true"})
                r.raise_for_status()
                entry = r.json()[0]
                card = entry["customizedMetadata"]  # the handler's describe answer, JSON that TorchServe may have decoded
                card = json.loads(card) if isinstance(card, str) else card
                models.append(model_class(upstream, name, v["version"], card, f"{name}@{v['version']}"))
                if v["version"] == default:
                    models.append(model_class(upstream, name, v["version"], card, name))

    class WorkersReadyDataPlane(DataPlane):
        """KServe's data plane whose server-ready means every registered model version has its workers READY."""

        async def ready(self) -> bool:
            """Return True when every model is healthy (minWorkers READY in TorchServe)."""
            found = self.model_registry.get_models().values()
            return bool(found) and all(await asyncio.gather(*(m.healthy() for m in found)))

    class VersionedV2Endpoints(v2.V2Endpoints):
        """KServe's v2 endpoints, whose /versions/V paths (501 in KServe) reach the model registered as NAME@V."""

        @staticmethod
        def _registered(name: str, version: str | None) -> str:
            """Return the registry name of NAME (its default version) or NAME@VERSION; unknown ones stay unknown (404)."""
            return f"{name}@{version}" if version else name

        async def model_metadata(self, model_name: str, model_version: str | None = None):
            registered = self._registered(model_name, model_version)
            meta = await super().model_metadata(registered)
            version = self.dataplane.model_registry.get_model(registered).version
            return meta.model_copy(update={"name": model_name, "versions": [version]})

        async def model_ready(self, model_name: str, model_version: str | None = None):
            answer = await super().model_ready(self._registered(model_name, model_version))
            return answer.model_copy(update={"name": model_name})

        async def infer(self, raw_request: Request, raw_response: Response, model_name: str,
                        request_body: InferenceRequest | bytes, model_version: str | None = None):  # fmt: skip
            if isinstance(request_body, bytes) and _BINARY_HEADER not in raw_request.headers:
                # a JSON body sent without Content-Type: application/json (tritonclient's way) reaches us as bytes
                try:
                    request_body = InferenceRequest.model_validate_json(request_body)
                except ValueError as e:
                    raise InvalidInput(f"body: not an Open Inference request ({str(e).splitlines()[0][:200]})") from None
            return await super().infer(raw_request, raw_response, self._registered(model_name, model_version), request_body)

    class LoopbackRESTServer(model_server.RESTServer):
        """KServe's REST server, bound to 127.0.0.1 (KServe binds 0.0.0.0 and has no setting for it)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = "127.0.0.1"

    # KServe builds both by name when the server starts; it offers no other hook for either.
    v2.V2Endpoints = VersionedV2Endpoints
    model_server.RESTServer = LoopbackRESTServer
    server = kserve.ModelServer(http_port=port, enable_grpc=False, workers=1, enable_docs_url=False,
                                enable_latency_logging=False)  # fmt: skip
    server.dataplane = WorkersReadyDataPlane(model_registry=server.registered_models)
    for quiet in ("uvicorn.access", "kserve.trace"):  # lines per request: the bulk of the gateway's CPU time
        logging.getLogger(quiet).setLevel(logging.WARNING)

    class Guard:
        """ASGI middleware: 401 unless the request carries the instance's inference key, as TorchServe asks for it
        (the identity probe excepted), then 404 unless it is one of gateway_guard.ROUTES (KServe mounts more: its
        model repository's load and unload would take models away for any holder of the inference token)."""

        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            if scope["type"] == "http":
                header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
                if scope["path"] != IDENTITY_PATH and not upstream.authorized(header):
                    refusal = {"error": f"{TOKEN_HINT}; send it as Authorization: Bearer TOKEN"}
                    return await JSONResponse(refusal, status_code=401)(scope, receive, send)
                if not allowed(scope["method"], scope["path"]):
                    refusal = {"error": f"{scope['method']} {scope['path'][:200]}: not a route of this gateway"}
                    return await JSONResponse(refusal, status_code=404)(scope, receive, send)
            return await self.app(scope, receive, send)

    model_server.app.add_middleware(Guard)

    async def model_status(model_name: str, model_version: str | None = None):
        """Answer TF Serving's model status (KServe's own GET /v1/models/NAME answers {"name", "ready"})."""
        code, body = tf_serving_status(await upstream.current_snapshot(), model_name, model_version)
        return JSONResponse(body, status_code=code)

    async def identity(challenge: str = ""):
        """Answer the starter's challenge with HMAC(identity key, challenge): proof this is the gateway it started."""
        if not identity_key:
            return JSONResponse({"error": "this gateway was started without an identity key"}, status_code=404)
        if not 16 <= len(challenge) <= 128:
            return JSONResponse({"error": "challenge: expected 16 to 128 characters"}, status_code=400)
        return JSONResponse({"proof": identity_proof(identity_key, challenge)})

    # Routes match in the order they were added and KServe adds its own when the server starts: these answer first.
    model_server.app.add_api_route(IDENTITY_PATH, identity, methods=["GET"])
    model_server.app.add_api_route("/v1/models/{model_name}", model_status, methods=["GET"])
    model_server.app.add_api_route("/v1/models/{model_name}/versions/{model_version}", model_status, methods=["GET"])

    @model_server.app.exception_handler(UpstreamError)
    async def upstream_error(_, exc: UpstreamError):
        """Answer TorchServe's own status and message."""
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    return server, models


def main(argv: list[str] | None = None) -> None:
    """Run the gateway for HOME on 127.0.0.1:PORT until SIGTERM (its identity key, hex, as the first line of stdin)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[1].isdigit():
        sys.exit("usage: python -m aiaas_torch.serving.gateway HOME PORT  (identity key in hex on stdin, optional)")
    del sys.argv[1:]  # kserve parses sys.argv with its own flags when imported
    line = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.readline().strip()
    try:
        key = bytes.fromhex(line)
    except ValueError:
        sys.exit("stdin: expected the identity key in hex")
    server, models = build_server(Path(args[0]).resolve(), int(args[1]), key)
    server.start(models)


if __name__ == "__main__":
    main()
