"""Fast (no server) checks of the edges the reliability suite found, so `make test-fast` guards them too."""

from __future__ import annotations

import re

import httpx
import pytest

from aiaas_torch import serving as server
from aiaas_torch.serving.config import effective_config, launcher_env
from aiaas_torch.archive import SIGNING_KEY_ENV
from aiaas_torch.client import StatusError, ServerError, WorkerDied, classify
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
    assert type(err) is StatusError and err.status == 413 and "max_request_size" in err.message


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


def test_the_key_is_hidden_from_torchserve_and_its_workers_by_config_and_environment(monkeypatch, tmp_path):
    props = effective_config({"blacklist_env_vars": ".*PROXY.*", "enable_envvars_config": "true"}, server.DEFAULT_PORTS, tmp_path)
    pattern = props["blacklist_env_vars"]  # Java's Matcher.matches(): the whole name must match
    assert re.fullmatch(pattern, SIGNING_KEY_ENV) and re.fullmatch(pattern, "HTTP_PROXY") and not re.fullmatch(pattern, "PATH")
    assert props["enable_envvars_config"] == "false"  # else TS_BLACKLIST_ENV_VARS from the environment would win
    assert re.fullmatch(effective_config({}, server.DEFAULT_PORTS, tmp_path)["blacklist_env_vars"], SIGNING_KEY_ENV)
    monkeypatch.setenv(SIGNING_KEY_ENV, "a-secret-key")
    env = launcher_env(tmp_path / "logs", tmp_path / "tmp")
    assert SIGNING_KEY_ENV not in env and "a-secret-key" not in env.values() and env["TMPDIR"] == str(tmp_path / "tmp")


def test_an_archive_missing_from_the_store_fails_at_once_not_after_ready_timeout(tmp_path):
    (tmp_path / "store").mkdir()
    with reaping(tmp_path / "home"), pytest.raises(server.ServerArgumentError, match="'nope-1.0.mar' not found in the model store"):
        server.start_server(tmp_path / "home", tmp_path / "store", {"nope": "nope-1.0.mar"}, free_ports=True, ready_timeout=30)
    assert not (tmp_path / "home" / "server.json").exists()
