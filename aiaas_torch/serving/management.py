"""TorchServe's management API, called with the instance's token: the models snapshot, scale, set-default, and
(on a server started with allow_deploy) register and unregister."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import httpx

from .errors import TorchServeError
from .home import ServerInfo
from .httpclient import MANAGEMENT_S, http_client
from .tokens import Keys, send

PAGE_SIZE = 100  # models per page of GET /models


def mgmt_call(
    client: httpx.Client, info: ServerInfo, method: str, path: str, params: Mapping[str, str] | None = None
) -> httpx.Response:
    """Return the response to METHOD management_url + path with the current management key (see api_call)."""
    return api_call(client, info, "management", method, info.management_url + path, params=params)


def api_call(client: httpx.Client, info: ServerInfo, kind: str, method: str, url: str, **request) -> httpx.Response:
    """Return the response to METHOD url with the server's current KIND ("management" or "inference") key, renewed
    once when refused (tokens.send, which the Python client uses too)."""
    return send(client, method, url, kind, Keys.of_server(info), **request)


def model_names(get_page: Callable[[dict[str, str]], Any]) -> list[str]:
    """Return the name of every registered model, in TorchServe's order: get_page(params) answers one page of
    GET /models (its decoded JSON), and the pages are followed by their nextPageToken."""
    names: list[str] = []
    params = {"limit": str(PAGE_SIZE)}
    while True:
        page = get_page(dict(params))
        names += [m["modelName"] for m in page.get("models", [])]
        if not page.get("nextPageToken"):
            return names
        params["next_page_token"] = page["nextPageToken"]


def models_snapshot(client: httpx.Client, info: ServerInfo) -> dict[str, list[dict]]:
    """Return {model name: [{version, modelUrl, minWorkers, maxWorkers, workers: [{id, pid, status}]}]} from the API."""

    def get_page(params: dict[str, str]) -> Any:
        page = mgmt_call(client, info, "GET", "/models", params)
        page.raise_for_status()
        return page.json()

    models: dict[str, list[dict]] = {}
    for name in model_names(get_page):
        r = mgmt_call(client, info, "GET", f"/models/{name}/all")
        r.raise_for_status()
        models[name] = [
            {
                "version": v.get("modelVersion"),
                "modelUrl": v.get("modelUrl"),
                "minWorkers": v.get("minWorkers", 0),
                "maxWorkers": v.get("maxWorkers", 0),
                "workers": [{"id": w.get("id"), "pid": w.get("pid"), "status": w.get("status")} for w in v.get("workers", [])],
            }
            for v in r.json()
        ]
    return models


def _mgmt_send(info: ServerInfo, path: str, params: Mapping[str, str] | None, timeout: float, method: str = "PUT") -> dict:
    """Return the JSON answer of METHOD management_url + path; raise TorchServeError on an HTTP error."""
    with http_client(timeout) as client:
        try:
            r = mgmt_call(client, info, method, path, params)
        except httpx.HTTPError as e:
            raise TorchServeError(f"{method} {path} failed: {e}") from None
    try:
        body = r.json()
    except ValueError:
        body = {"status": r.text}
    if not isinstance(body, dict):
        body = {"status": body}
    if r.status_code >= 400:
        raise TorchServeError(f"{method} {path} answered {r.status_code}: {body.get('message', body)}")
    return body


def scale(
    info: ServerInfo, name: str, min_workers: int, version: str | None = None,
    max_workers: int | None = None, timeout: float = 120.0,
) -> dict:  # fmt: skip
    """Return TorchServe's status answer after scaling NAME[/VERSION] to min_workers, waiting for the workers.

    Works with enable_model_api=false: TorchServe 0.12 gates only register (POST) and unregister (DELETE).
    """
    path = f"/models/{name}" + (f"/{version}" if version else "")
    params = {
        "min_worker": str(min_workers),
        "max_worker": str(max(min_workers, max_workers if max_workers is not None else min_workers)),
        "synchronous": "true",
    }
    return _mgmt_send(info, path, params, timeout)


def set_default(info: ServerInfo, name: str, version: str) -> dict:
    """Return TorchServe's status answer after making VERSION the default of model NAME.

    Works with enable_model_api=false (a PUT, which TorchServe 0.12 does not gate).
    """
    return _mgmt_send(info, f"/models/{name}/{version}/set-default", None, MANAGEMENT_S)


def register(info: ServerInfo, name: str, file: str, workers: int, timeout: float = MANAGEMENT_S) -> dict:
    """Return TorchServe's status answer after registering FILE (a name in its model store) as a version of NAME.

    Asynchronous: the answer comes once the archive is unpacked; its workers start afterwards. Needs a server
    started with allow_deploy (elsewhere TorchServe answers 405).
    """
    params = {"url": file, "model_name": name, "initial_workers": str(workers), "synchronous": "false"}
    return _mgmt_send(info, "/models", params, timeout, method="POST")


def unregister(info: ServerInfo, name: str, version: str, timeout: float = 60.0) -> dict:
    """Return TorchServe's status answer after unregistering VERSION of NAME (never its default version)."""
    return _mgmt_send(info, f"/models/{name}/{version}", None, timeout, method="DELETE")
