"""Text models served by the session's real TorchServe (tests/integration/conftest.py): a BERT classifier and a
RoBERTa encoder imported from Hugging Face directories built in the test, answering texts as transformers' own eager
model does; a text over the maximum refused alone in its batch; OpenAI's embeddings API through the `openai` SDK."""

from __future__ import annotations

import base64
import concurrent.futures
import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

import textmodels as tm
from aiaas_torch import serving as server
from aiaas_torch.archive import verify_archive
from aiaas_torch.client import Client

pytestmark = [pytest.mark.serving, pytest.mark.slow]


@dataclass
class TextServed:
    dirs: dict
    archives: dict
    home: Path
    info: server.ServerInfo
    token: str


@pytest.fixture(scope="module")
def text_served(served, text_dirs) -> TextServed:
    """Return the session's TorchServe (tests/integration/conftest.py), which serves the BERT classifier as cls
    (batching, 50 ms delay) and the RoBERTa encoder as emb, names no other model of the session takes."""
    with Client(home=served.home) as c:
        token = c.token
    archives = {"cls": served.archives["cls-1.0"], "emb": served.archives["emb-1.0"]}
    return TextServed(text_dirs, archives, served.home, served.info, token)


def _post(s: TextServed, path: str, body, timeout: float = 60) -> httpx.Response:
    """Return the answer of a POST of a JSON body to the inference API."""
    return httpx.post(f"{s.info.inference_url}{path}", content=body if isinstance(body, bytes) else json.dumps(body),
                      headers={"Authorization": f"Bearer {s.token}", "Content-Type": "application/json"}, timeout=timeout)  # fmt: skip


def test_archive_ships_the_tokenizer_under_the_cards_hashes(text_served):
    card = verify_archive(text_served.archives["cls"])
    assert card["files"]["tokenizer.json"]["role"] == "tokenizer"
    assert card["files"]["text_handler.py"]["role"] == "handler"
    assert "text_contract.py" in card["files"]


def test_served_labels_equal_transformers_on_mixed_lengths(text_served):
    ref = tm.reference(text_served.dirs["bert_cls"], tm.TEXTS)
    r = _post(text_served, "/predictions/cls", {"instances": tm.TEXTS})
    assert r.status_code == 200, r.text
    ans = r.json()
    assert ans["predictions"] == [ans["classes"][k] for k in ref.argmax(1)]
    np.testing.assert_allclose(ans["probabilities"], ref, atol=1e-5)


def test_open_inference_v2_route_takes_bytes_texts(text_served):
    ref = tm.reference(text_served.dirs["bert_cls"], tm.TEXTS)
    body = {"inputs": [{"name": "text", "shape": [5], "datatype": "BYTES", "data": tm.TEXTS}]}
    r = _post(text_served, "/v2/models/cls/infer", body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    np.testing.assert_allclose(np.reshape(out["probabilities"]["data"], (5, 3)), ref, atol=1e-5)
    bad = _post(text_served, "/v2/models/cls/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "INT64", "data": [1]}]})
    assert bad.status_code == 400 and "BYTES" in bad.json()["error"]


def test_a_text_over_the_maximum_is_refused_alone_in_its_batch(text_served):
    long_text = " ".join(["serving the model card"] * 30)
    ref = tm.reference(text_served.dirs["bert_cls"], tm.TEXTS)

    def send(i: int) -> httpx.Response:
        return _post(text_served, "/predictions/cls", {"instances": [long_text if i == 3 else tm.TEXTS[i % 5]]})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # one batch of 8 (50 ms delay)
        answers = list(pool.map(send, range(8)))
    bad = answers[3]
    assert bad.status_code == 400
    assert "tokens, more than this model's maximum of 48" in bad.json()["message"] and "truncate" in bad.json()["message"]
    for i, r in enumerate(answers):
        if i != 3:
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(r.json()["probabilities"][0], ref[i % 5], atol=1e-5)
    r = _post(text_served, "/predictions/cls", {"instances": [long_text], "truncate": True})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1


def test_served_embeddings_and_bad_bodies(text_served):
    ref = tm.reference(text_served.dirs["roberta_emb"], tm.TEXTS)
    r = _post(text_served, "/predictions/emb", {"instances": tm.TEXTS})
    assert r.status_code == 200, r.text
    emb = np.array(r.json()["embeddings"])
    cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999
    for body, status, match in ((b"{nope", 400, "not valid JSON"), ({"instances": [1]}, 400, "is not a text"),
                                ({"instances": [{"text": "a", "text_pair": "b"}]}, 400, "single texts")):  # fmt: skip
        r = _post(text_served, "/predictions/emb", body)
        assert r.status_code == status and match in r.json()["message"], r.text


def test_serve_status_json_reports_the_openai_base_url(text_served, capsys):
    from aiaas_torch.cli import main

    assert main(["serve", "status", "--json", "--home", str(text_served.home)]) == 0
    models = json.loads(capsys.readouterr().out)["models"]
    assert models["emb"][0]["openai_base_url"] == f"{text_served.info.inference_url}/predictions/emb/1.0/v1"
    assert "openai_base_url" not in models["cls"][0]  # a classifier has no embeddings to serve


def test_openai_sdk_embeddings(text_served):
    import openai

    base = server.server_status(text_served.home)["models"]["emb"][0]["openai_base_url"]
    client = openai.OpenAI(base_url=base, api_key=text_served.token, max_retries=0, timeout=60)
    ref = tm.reference(text_served.dirs["roberta_emb"], tm.TEXTS)
    res = client.embeddings.create(model="emb", input=tm.TEXTS)  # the SDK asks for base64 and decodes it
    emb = np.array([d.embedding for d in res.data])
    assert [d.index for d in res.data] == list(range(len(tm.TEXTS)))
    cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999
    from transformers import AutoTokenizer

    n = sum(len(ids) for ids in AutoTokenizer.from_pretrained(str(text_served.dirs["roberta_emb"]))(tm.TEXTS)["input_ids"])
    assert res.usage.prompt_tokens == res.usage.total_tokens == n
    one = client.embeddings.create(model="emb", input=tm.TEXTS[1], encoding_format="float")
    np.testing.assert_allclose(one.data[0].embedding, emb[1], atol=1e-5)
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="emb", input=[" ".join(["serving"] * 80)])
    err = e.value.body
    assert err["type"] == "invalid_request_error" and "tokens, more than this model's maximum of 64" in err["message"]
    assert err["param"] == "input"
    raw = _post(text_served, "/predictions/emb/1.0/v1/embeddings", {"model": "emb", "input": "a", "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert vec.shape == (48,) and raw["object"] == "list" and raw["model"] == "emb"
    bad = _post(text_served, "/predictions/emb/1.0/v1/embeddings", {"model": "emb", "input": [1, 2]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
    none = _post(text_served, "/predictions/emb/1.0/v1/nothing", {"model": "emb", "input": "a"})
    assert none.status_code == 404 and "error" in none.json()


def test_aiaas_bench_loads_a_text_model_with_a_text_body(text_served, capsys):
    from aiaas_torch.cli import main

    assert main(["bench", "--model", "emb", "--home", str(text_served.home), "--concurrency", "2", "--duration", "2",
                 "--warmup", "0.5", "--no-progress", "--json"]) == 0  # fmt: skip
    level = json.loads(capsys.readouterr().out)["results"][0]["levels"][0]
    assert level["errors"] == 0 and level["rps"] > 0
