"""TorchServe's management API, called with the instance's token: the models snapshot, scale, set-default."""

from __future__ import annotations

from typing import Mapping

import httpx

from .errors import TorchServeError
from .home import ServerInfo
from .tokens import RenewalRefused, fresh_key, read_keys


def mgmt_call(
    client: httpx.Client, info: ServerInfo, method: str, path: str, params: Mapping[str, str] | None = None
) -> httpx.Response:
    """Return the response to METHOD management_url + path with the current management key.

    On InvalidKeyException (an expired key) renew the key (tokens.fresh_key) and try once more.
    """
    def send(key: str) -> httpx.Response:
        return client.request(method, info.management_url + path, params=params, headers={"Authorization": f"Bearer {key}"})

    key = read_keys(info.home)["management"]
    r = send(key)
    if r.status_code == 400 and "InvalidKeyException" in r.text:
        try:
            fresh = fresh_key(client, info.home, "management", key, info.management_url, read_keys(info.home)["api"])
        except RenewalRefused:
            return r
        if fresh != key:
            r = send(fresh)
    return r


def models_snapshot(client: httpx.Client, info: ServerInfo) -> dict[str, list[dict]]:
    """Return {model name: [{version, minWorkers, maxWorkers, workers: [{id, pid, status}]}]} from the API."""
    names: list[str] = []
    token = None
    while True:
        page = mgmt_call(client, info, "GET", "/models?limit=100" + (f"&next_page_token={token}" if token else ""))
        page.raise_for_status()
        body = page.json()
        names += [m["modelName"] for m in body.get("models", [])]
        token = body.get("nextPageToken")
        if not token:
            break
    models: dict[str, list[dict]] = {}
    for name in names:
        r = mgmt_call(client, info, "GET", f"/models/{name}/all")
        r.raise_for_status()
        models[name] = [
            {
                "version": v.get("modelVersion"),
                "minWorkers": v.get("minWorkers", 0),
                "maxWorkers": v.get("maxWorkers", 0),
                "workers": [{"id": w.get("id"), "pid": w.get("pid"), "status": w.get("status")} for w in v.get("workers", [])],
            }
            for v in r.json()
        ]
    return models


def _mgmt_put(info: ServerInfo, path: str, params: Mapping[str, str] | None, timeout: float) -> dict:
    """Return the JSON answer of PUT management_url + path; raise TorchServeError on an HTTP error."""
    with httpx.Client(timeout=httpx.Timeout(timeout), trust_env=False) as client:
        try:
            r = mgmt_call(client, info, "PUT", path, params)
        except httpx.HTTPError as e:
            raise TorchServeError(f"PUT {path} failed: {e}") from None
    try:
        body = r.json()
    except ValueError:
        body = {"status": r.text}
    if not isinstance(body, dict):
        body = {"status": body}
    if r.status_code >= 400:
        raise TorchServeError(f"PUT {path} answered {r.status_code}: {body.get('message', body)}")
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
    return _mgmt_put(info, path, params, timeout)


def set_default(info: ServerInfo, name: str, version: str) -> dict:
    """Return TorchServe's status answer after making VERSION the default of model NAME.

    Works with enable_model_api=false (a PUT, which TorchServe 0.12 does not gate).
    """
    return _mgmt_put(info, f"/models/{name}/{version}/set-default", None, 30.0)
