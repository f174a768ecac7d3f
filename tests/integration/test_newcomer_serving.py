"""Issue 25, "the newcomer's second hour", against the session's real TorchServe: positional CLI rows with text and
empty cells, the `warnings` of an unseen category, and the message a wrong token gets (in process:
tests/test_newcomer_rows.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import httpx
import pytest

from aiaas_torch.cli import main
from aiaas_torch.client import Client, TokenError
from aiaas_torch.runs import load_run
from aiaas_torch.serving import read_keys

pytestmark = pytest.mark.serving

HINT = "token missing or expired: run `aiaas serve token` (or pass --home of the server that issued it)"


def test_cli_rows_with_text_and_an_empty_cell_reach_the_penguins_model(served, capsys):
    # before: exit 2, "row 'Dream,49.0,18.5,196,3700,': expected comma-separated numbers, e.g. 1.5,2,3"
    home = ["--home", str(served.home)]
    assert main(["predict", "penguins", "Dream,49.0,18.5,196,3700,", "Biscoe,,15.0,217,5100,male", *home]) == 0
    local = load_run(served.penguins).predict({"instances": [["Dream", 49.0, 18.5, 196, 3700, None],
                                                             ["Biscoe", None, 15.0, 217, 5100, "male"]]})  # fmt: skip
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == local["predictions"]
    assert main(["predict", "penguins", "Dream,49.0,deep,196,3700,male", *home]) == 2  # the server's 400, one line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "feature 'bill_depth_mm': \"deep\" is not a number" in err, err


def test_an_unseen_category_is_marked_in_the_served_answer_as_locally(served, client):
    rows = [["Dream", 49.0, 18.5, 196, 3700, "male"], ["Atlantis", 39.0, 18.3, 190, 3650, "female"]]
    answer = client.predict("penguins", {"instances": rows})
    # before: no "warnings": "Atlantis" got a confident label and no sign
    assert answer["warnings"] == [[], ["feature 'island': \"Atlantis\" was not seen in training (all-zero encoding)"]]
    assert answer == dict(load_run(served.penguins).predict({"instances": rows}), model="penguins", version="1.0") | {
        "probabilities": answer["probabilities"]}  # the same answer as locally (probabilities: float32 round trips)
    assert "warnings" not in client.predict("penguins", {"instances": rows[:1]})  # the common answer is unchanged


def test_a_wrong_token_says_how_to_get_the_right_one(served, tmp_path, capsys):
    # before: "400 InvalidKeyException: Token Authorization failed. Token either incorrect, expired, or not provided
    # correctly (POST http://127.0.0.1:PORT/predictions/y2x)"
    with Client(inference_url=served.info.inference_url, token="wrong-token", request_timeout=10) as bad:
        with pytest.raises(TokenError) as e:
            bad.predict("y2x", {"instances": [[1.0]]})
    assert e.value.type == "InvalidKeyException" and e.value.message.startswith(HINT)
    assert str(e.value).startswith(f"400 InvalidKeyException: {HINT} (TorchServe: Token Authorization failed.")
    # the CLI with the home of another server (its keys are not this server's): exit 2, one line saying what to do
    before, other = read_keys(served.home), tmp_path / "other"
    other.mkdir()
    info = json.loads((served.home / "server.json").read_text())
    keys = json.loads(Path(info["key_file"]).read_text())
    for entry in keys.values():
        entry["key"] = "not-this-servers-key"
    (other / "key_file.json").write_text(json.dumps(keys))
    (other / "server.json").write_text(json.dumps(dict(info, key_file=str(other / "key_file.json"))))
    assert main(["predict", "y2x", "6", "--home", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"aiaas predict: error: 400 InvalidKeyException: {HINT}"), err
    assert read_keys(served.home) == before  # the server's own keys are untouched (no renewal with a wrong API key)
    if importlib.util.find_spec("kserve") is not None:  # the Open Inference gateway's own refusal says the same
        r = httpx.get(f"{served.info.gateway_url}/v2/models/y2x", headers={"Authorization": "Bearer wrong"}, timeout=10,
                      trust_env=False)  # fmt: skip
        assert r.status_code == 401 and r.json() == {"error": f"{HINT}; send it as Authorization: Bearer TOKEN"}, r.text
