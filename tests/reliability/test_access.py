"""Promise 7: with the default config the server is reachable from loopback only, by token only, and cannot be
told to fetch models; an expired token is renewed by the client through TorchServe's token API.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import zipfile

import httpx
import openai
import psutil
import pytest

from aiaas_torch import serving as server
from aiaas_torch.cli import main
from aiaas_torch.client import Client
from aiaas_torch.serving.pids import inet_connections
from aiaas_torch.serving.tokens import ServerToken

from rel_helpers import close, keys, stop_instance, workers

pytestmark = [pytest.mark.serving, pytest.mark.slow]

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}
TOKEN_MINUTES = 0.05  # token_expiration_min (TorchServe 0.12 parses a double): 3 s


def _refused_for_token(r: httpx.Response) -> bool:
    """TorchServe 0.12 answers a missing, wrong or expired token with 400 InvalidKeyException."""
    return r.status_code in (400, 401, 403) and "InvalidKeyException" in r.text


def test_every_listening_socket_is_on_loopback_and_workers_listen_on_none(shared):
    java = psutil.Process(shared.info.pid)
    listening = [c for c in inet_connections(java) if c.status == psutil.CONN_LISTEN]
    assert listening, "the Java process listens on nothing?"
    assert all(c.laddr.ip in LOOPBACK for c in listening), [c.laddr for c in listening]
    assert {c.laddr.port for c in listening} <= set(shared.info.listen_ports)  # no stray (JMX, debug) port
    children = java.children(recursive=True)
    assert len(children) >= 3  # lin ×2, hang ×1
    for child in children:  # Python workers talk to Java over Unix sockets under HOME/tmp, not TCP
        assert not [c for c in inet_connections(child) if c.status == psutil.CONN_LISTEN], child.cmdline()
        assert str(shared.home / "tmp") in " ".join(child.cmdline()), child.cmdline()


CREDENTIALS = ["none", "wrong", "empty-bearer", "other-api-key", "api-key"]


def _auth(shared, credential: str, api: str) -> dict:
    k = keys(shared.home)
    other = {"inference": k["management"], "management": k["inference"]}[api]
    value = {"none": None, "wrong": "Bearer not-a-key", "empty-bearer": "Bearer", "other-api-key": f"Bearer {other}",
             "api-key": f"Bearer {k['api']}"}[credential]  # fmt: skip
    return {"Authorization": value} if value is not None else {}


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_inference_without_the_right_token_is_refused(shared, credential):
    r = httpx.post(shared.info.inference_url + "/predictions/lin", json={"instances": [[1, 2, 3]]},
                   headers=_auth(shared, credential, "inference"), timeout=10, trust_env=False)  # fmt: skip
    assert _refused_for_token(r), (r.status_code, r.text)


@pytest.mark.parametrize("credential", CREDENTIALS)
@pytest.mark.parametrize("call", ["GET /models", "GET /models/lin", "PUT /models/lin?min_worker=3"])
def test_management_without_the_right_token_is_refused(shared, credential, call):
    before = workers(shared.info, "lin")
    method, path = call.split(" ")
    r = httpx.request(method, shared.info.management_url + path, headers=_auth(shared, credential, "management"),
                      timeout=10, trust_env=False)  # fmt: skip
    assert _refused_for_token(r), (r.status_code, r.text)
    assert workers(shared.info, "lin") == before


@pytest.mark.parametrize("url", ["{store}/lin-1.0.mar", "lin-1.0.mar", "http://127.0.0.1:9/evil.mar", "file:///etc/passwd"])
def test_registering_a_model_by_url_is_refused_even_with_the_management_token(shared, url):
    url = url.format(store=shared.store)
    headers = {"Authorization": f"Bearer {keys(shared.home)['management']}"}
    before = sorted(m["modelName"] for m in httpx.get(shared.info.management_url + "/models", headers=headers,
                                                      timeout=10, trust_env=False).json()["models"])  # fmt: skip
    r = httpx.post(shared.info.management_url + "/models", params={"url": url, "model_name": "intruder", "initial_workers": "1"},
                   headers=headers, timeout=30, trust_env=False)  # fmt: skip
    assert r.status_code == 405 and r.json()["type"] == "MethodNotAllowedException", (r.status_code, r.text)
    assert json.loads(r.text)["message"]
    after = sorted(m["modelName"] for m in httpx.get(shared.info.management_url + "/models", headers=headers,
                                                     timeout=10, trust_env=False).json()["models"])  # fmt: skip
    assert after == before == ["batch8", "hang", "lin"]


def test_unregistering_a_model_is_refused_even_with_the_management_token(shared):
    before = workers(shared.info, "lin")
    headers = {"Authorization": f"Bearer {keys(shared.home)['management']}"}
    r = httpx.delete(shared.info.management_url + "/models/lin/1.0", headers=headers, timeout=10, trust_env=False)
    assert r.status_code == 405, (r.status_code, r.text)
    assert workers(shared.info, "lin") == before


def _war(path, marker) -> str:
    """Write a workflow archive: a function node whose handler writes `marker` when loaded, and a node serving the
    store's lin-1.0.mar; return its path."""
    manifest = {"createdOn": "01/01/2026 00:00:00", "archiverVersion": "0.2.15",
                "workflow": {"workflowName": "wf", "specFile": "spec.yaml", "handler": "wf_handler.py"}}  # fmt: skip
    with zipfile.ZipFile(path, "w") as war:
        war.writestr("WAR-INF/MANIFEST.json", json.dumps(manifest))
        war.writestr("spec.yaml", "models:\n  min-workers: 1\n  max-workers: 1\n  m:\n    url: lin-1.0.mar\ndag:\n  pre: [m]\n")
        war.writestr("wf_handler.py", f"open({str(marker)!r}, 'w').write('ran')\n\n\ndef pre(data, context):\n    return data\n")
    return str(path)


def test_registering_a_workflow_is_refused_even_with_the_management_token(shared, tmp_path):
    """Issue 23, 8c: TorchServe's workflow API does not look at enable_model_api; with the model API off its URLs
    match nothing (allowed_urls) and its store is an empty folder of the home's."""
    marker = tmp_path / "workflow-code-ran"
    war = _war(tmp_path / "wf.war", marker)
    headers = {"Authorization": f"Bearer {keys(shared.home)['management']}"}
    url = shared.info.management_url
    try:
        for where in (f"file://{war}", "wf.war"):
            r = httpx.post(f"{url}/workflows", params={"url": where}, headers=headers, timeout=120, trust_env=False)
            assert r.status_code == 404, (where, r.status_code, r.text)
            said = r.json()["message"]
            assert ("does not match any allowed URL" if "://" in where else "not found in workflow store") in said, said
        listed = httpx.get(f"{url}/workflows", headers=headers, timeout=10, trust_env=False)
        assert listed.status_code == 200 and listed.json()["workflows"] == [], listed.text
        assert not marker.exists()
        models = httpx.get(f"{url}/models", headers=headers, timeout=10, trust_env=False).json()["models"]
        assert sorted(m["modelName"] for m in models) == ["batch8", "hang", "lin"]
        assert not any((shared.home / "workflows").iterdir())
        assert oct((shared.home / "workflows").stat().st_mode & 0o777) == "0o700"
    finally:  # had it registered: take it out again, so that the shared server serves what the other tests expect
        httpx.delete(f"{url}/workflows/wf", headers=headers, timeout=60, trust_env=False)


def _expiry(home, kind: str) -> dt.datetime:
    """Return when the current `kind` key expires, from key_file.json."""
    doc = json.loads((home / "key_file.json").read_text())
    return dt.datetime.fromisoformat(doc[kind]["expiration time"].replace("Z", "+00:00"))


def _sleep_until_past(when: dt.datetime) -> None:
    while dt.datetime.now(dt.timezone.utc) <= when + dt.timedelta(seconds=0.3):
        time.sleep(0.1)


def test_expired_tokens_are_renewed_by_the_client_and_the_server_control(shared, tmp_path, capsys):
    config = tmp_path / "short-tokens.properties"
    config.write_text(server.BASE_CONFIG.read_text() + f"token_expiration_min={TOKEN_MINUTES}\n")
    home = tmp_path / "home"
    # readiness polling itself outlives a 3 s management key: server.start must renew it to come up at all
    info = server.start_server(home, shared.store, {"lin": shared.archives["lin"].name}, free_ports=True, config=config, ready_timeout=120)
    try:
        assert f"token_expiration_min={TOKEN_MINUTES}" in (home / "config.properties").read_text()
        rows = [[1.0, 2.0, 3.0]]
        want = shared.expect(rows)[0]
        # long-lived clients that are not ours: the openai SDK with a fixed key, and with ServerToken renewing it
        sdk_args = dict(base_url=info.inference_url, max_retries=0, timeout=10)
        fixed = openai.OpenAI(api_key=keys(home)["inference"], http_client=httpx.Client(trust_env=False), **sdk_args)
        renewing = openai.OpenAI(api_key="aiaas", http_client=httpx.Client(auth=ServerToken(home), trust_env=False), **sdk_args)

        def sdk_predict(sdk: openai.OpenAI) -> float:
            answer = sdk.post("/predictions/lin", body={"instances": rows}, cast_to=httpx.Response)
            return answer.json()["predictions"][0]

        assert close(sdk_predict(renewing), want)  # (the fixed key may be past its 3 s already: checked below)
        with Client(home=home, request_timeout=30, retries=0) as c:
            assert close(c.predict("lin", {"instances": rows})["predictions"][0], want)
            old_inference, old_management = c.token, c.management_token
            _sleep_until_past(max(_expiry(home, "inference"), _expiry(home, "management")))
            # the old keys really are expired now
            r = httpx.post(info.inference_url + "/predictions/lin", json={"instances": rows},
                           headers={"Authorization": f"Bearer {old_inference}"}, timeout=10, trust_env=False)  # fmt: skip
            assert _refused_for_token(r), (r.status_code, r.text)
            with pytest.raises(openai.BadRequestError, match="Token Authorization failed"):
                sdk_predict(fixed)  # a fixed key stops working after token_expiration_min ...
            assert close(sdk_predict(renewing), want)  # ... ServerToken renews it and sends the request again
            # the client asks the token API for new keys and its calls succeed
            assert close(c.predict("lin", {"instances": rows})["predictions"][0], want)
            assert c.token != old_inference
            assert c.describe("lin")[0]["modelName"] == "lin"
            assert c.management_token != old_management
        _sleep_until_past(_expiry(home, "inference"))
        expired = keys(home)["inference"]
        assert main(["serve", "token", "--home", str(home)]) == 0  # for curl and scripts: renewed, then printed
        token = capsys.readouterr().out.strip()
        assert token != expired and token == keys(home)["inference"]
        r = httpx.post(info.inference_url + "/predictions/lin", json={"instances": rows},
                       headers={"Authorization": f"Bearer {token}"}, timeout=10, trust_env=False)  # fmt: skip
        assert r.status_code == 200 and close(r.json()["predictions"][0], want), (r.status_code, r.text)
        _sleep_until_past(_expiry(home, "management"))
        st = server.server_status(home)  # server control renews its management key too
        assert st["running"] and "error" not in st and [w["status"] for w in st["models"]["lin"][0]["workers"]] == ["READY", "READY"]
    finally:
        stop_instance(home, info)
