"""Fast (no server) checks of the edges the reliability suite found, so `make test-fast` guards them too."""

from __future__ import annotations

import httpx
import pytest

from aiaas_torch import server
from aiaas_torch.client import HTTPStatusError, ServerError, WorkerDied, classify
from aiaas_torch.handlers import aiaas_contract as contract

from rel_helpers import reaping


def _response(status: int, body: bytes | dict | None) -> httpx.Response:
    request = httpx.Request("POST", "http://127.0.0.1:1/predictions/m")
    if isinstance(body, dict):
        return httpx.Response(status, json=body, request=request)
    return httpx.Response(status, content=body or b"", request=request)


@pytest.mark.parametrize("status", [500, 507])
def test_worker_died_is_typed_whatever_5xx_torchserve_uses(status):
    # TorchServe 0.12: 500 when a request outlives responseTimeout, 507 for the batch of a worker that crashed
    err = classify(_response(status, {"code": status, "type": "InternalServerException", "message": "Worker died."}))
    assert type(err) is WorkerDied and err.status == status


def test_other_5xx_stays_a_plain_server_error():
    assert type(classify(_response(507, {"code": 507, "message": "Insufficient storage"}))) is ServerError


def test_413_with_torchserves_empty_body_names_the_limit():
    err = classify(_response(413, None))
    assert type(err) is HTTPStatusError and err.status == 413 and "max_request_size" in err.message


@pytest.mark.parametrize("value", [None, "", "application/json", "application/json; charset=utf-8", "Application/JSON",
                                   "application/vnd.api+json", 'application/json; charset="UTF-8"', "application/json;charset=utf8"])
def test_json_content_types_are_accepted(value):
    contract.check_content_type(value)


@pytest.mark.parametrize("value", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                   "application/octet-stream", "image/png", "text/json+x", "application/json; charset=utf-16",
                                   "application/json; charset=latin-1; x=y", "application/json; charset=utf-8; charset=utf-16"])
def test_other_content_types_are_refused_with_415(value):
    with pytest.raises(contract.UnsupportedMediaType) as e:
        contract.check_content_type(value)
    assert e.value.status == 415 and "Content-Type" in str(e.value) and isinstance(e.value, contract.ContractError)


@pytest.mark.parametrize("pattern, refused", [("AIAAS_.*", True), (".*KEY.*", True), ("(", True), (".*PROXY.*", False), ("", False)])
def test_a_blacklist_that_would_hide_the_signing_key_is_refused(monkeypatch, pattern, refused):
    monkeypatch.setenv(contract.SIGNING_KEY_ENV, "k")
    props = {"blacklist_env_vars": pattern}
    if refused:
        with pytest.raises(server.ServerArgumentError, match="blacklist_env_vars"):
            server._check_signing_key_reaches_workers(props)
    else:
        server._check_signing_key_reaches_workers(props)
    monkeypatch.delenv(contract.SIGNING_KEY_ENV)
    server._check_signing_key_reaches_workers(props)  # no key: nothing to protect


def test_an_archive_missing_from_the_store_fails_at_once_not_after_ready_timeout(tmp_path):
    (tmp_path / "store").mkdir()
    with reaping(tmp_path / "home"), pytest.raises(server.ServerArgumentError, match="'nope-1.0.mar' not found in the model store"):
        server.start(tmp_path / "home", tmp_path / "store", {"nope": "nope-1.0.mar"}, free_ports=True, ready_timeout=30)
    assert not (tmp_path / "home" / "server.json").exists()
