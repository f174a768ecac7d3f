"""`aiaas import DIR` of Hugging Face text models, checked against transformers' own eager model: labels and
probabilities of a classifier (single texts and pairs, mixed lengths in one batch), embeddings (cosine ≥ 0.9999)
with the pooling a sentence-transformers directory declares; texts over the maximum; refused directories."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np
import pytest

import textmodels as tm
from aiaas_torch.cli import main
from aiaas_torch.errors import InputError
from aiaas_torch.runs import load_run

pytestmark = pytest.mark.slow


def _cosines(a, b) -> np.ndarray:
    """Return the row-wise cosine similarity of two arrays of embeddings."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_classifier_labels_equal_transformers_on_mixed_lengths(text_dirs, text_runs):
    ref = tm.reference(text_dirs["bert_cls"], tm.TEXTS)
    ans = load_run(text_runs["bert_cls"]).predict({"instances": tm.TEXTS})
    labels = ["negative", "neutral", "positive"]
    assert ans["classes"] == labels
    assert ans["predictions"] == [labels[k] for k in ref.argmax(1)]
    assert len(set(ans["predictions"])) > 1  # the check could fail: the texts do not all get one label
    np.testing.assert_allclose(ans["probabilities"], ref, atol=1e-5)
    alone = load_run(text_runs["bert_cls"]).predict({"instances": [tm.TEXTS[2]]})  # padding never changes an answer
    np.testing.assert_allclose(alone["probabilities"][0], ref[2], atol=1e-5)


def test_pair_classifier_takes_text_pairs(text_dirs, text_runs):
    firsts, seconds = [tm.TEXTS[i] for i in (0, 2, 4)], [tm.TEXTS[i] for i in (2, 4, 0)]
    ref = tm.reference(text_dirs["bert_cls"], firsts, seconds)
    body = {"instances": [{"text": a, "text_pair": b} for a, b in zip(firsts, seconds)]}
    ans = load_run(text_runs["bert_cls"]).predict(body)
    np.testing.assert_allclose(ans["probabilities"], ref, atol=1e-5)
    single = load_run(text_runs["bert_cls"]).predict({"instances": [{"text": firsts[0]}]})
    assert not np.allclose(single["probabilities"][0], ans["probabilities"][0], atol=1e-4)  # the pair text counts


@pytest.mark.parametrize("name,pooling,normalize", [("distilbert_st", "cls", True), ("roberta_emb", "mean", False)])
def test_embeddings_match_transformers_with_the_declared_pooling(text_dirs, text_runs, name, pooling, normalize):
    run = load_run(text_runs[name])
    assert (run.card["output"]["pooling"], run.card["output"]["normalize"]) == (pooling, normalize)
    ref = tm.reference(text_dirs[name], tm.TEXTS, pooling=pooling, normalize=normalize)
    emb = np.array(run.predict({"instances": tm.TEXTS})["embeddings"])
    assert emb.shape == ref.shape
    assert _cosines(emb, ref).min() >= 0.9999
    other = tm.reference(text_dirs[name], tm.TEXTS, pooling="max" if pooling != "max" else "mean")
    assert _cosines(emb, other).min() < 0.9999  # the pooling matters: another one would fail this test
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_card_records_the_model_and_the_tokenizer(text_dirs, text_runs):
    from transformers import AutoModelForSequenceClassification

    card = load_run(text_runs["bert_cls"]).card
    model = AutoModelForSequenceClassification.from_pretrained(str(text_dirs["bert_cls"]))
    assert card["model"]["architecture"] == "BertForSequenceClassification"
    assert card["model"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert card["input"]["max_length"] == 48  # max_position_embeddings
    assert [t["name"] for t in card["input"]["tensors"]] == ["input_ids", "attention_mask", "token_type_ids"]
    tok = (text_dirs["bert_cls"] / "tokenizer.json").read_bytes()
    assert card["files"]["tokenizer.json"]["sha256"] == hashlib.sha256(tok).hexdigest()
    rob = load_run(text_runs["roberta_emb"]).card
    assert rob["input"]["max_length"] == 64 and rob["input"]["pad_id"] == 1  # RoBERTa's positions start after the pad id
    assert [t["name"] for t in rob["input"]["tensors"]] == ["input_ids", "attention_mask"]
    assert rob["output"]["dim"] == 48


def test_a_text_over_the_maximum_is_refused_naming_its_tokens_unless_truncated(text_dirs, text_runs):
    run = load_run(text_runs["bert_cls"])
    long_text = " ".join(["serving the model card"] * 30)
    n = len(run.text.tokenizer.encode(long_text).ids)
    assert n > 48
    with pytest.raises(InputError, match=rf"instances\[1\]: {n} tokens, more than this model's maximum of 48.*truncate"):
        run.predict({"instances": ["short", long_text]})
    ans = run.predict({"instances": ["short", long_text], "truncate": True})
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    import torch

    tok = AutoTokenizer.from_pretrained(str(text_dirs["bert_cls"]))
    enc = tok(["short", long_text], padding=True, truncation=True, max_length=48, return_tensors="pt")
    model = AutoModelForSequenceClassification.from_pretrained(str(text_dirs["bert_cls"])).eval()
    with torch.no_grad():
        ref = torch.softmax(model(**enc).logits.double(), -1).numpy()
    np.testing.assert_allclose(ans["probabilities"], ref, atol=1e-5)


@pytest.mark.parametrize("body,match", [
    ({"instances": []}, "non-empty list"),
    ({"instances": ["ok", 3]}, r"instances\[1\]: 3 is not a text"),
    # what `aiaas predict NAME "great service"` sent (a row of CSV cells): the message says what a text model takes
    ({"instances": [["great service"]]}, r"instances\[0\]: .* is not a text .*one string per instance, not a row"),
    ({"instances": [{"txt": "a"}]}, r"instances\[0\].*unknown field 'txt'"),
    ({"instances": ["a"], "truncate": "yes"}, "truncate: expected true or false"),
    ({"inputs": ["a"]}, "inputs: expected Open Inference v2 tensors"),
    ({"text": "a"}, "expected {\"instances\""),
    (b"{not json", "not valid JSON"),
])  # fmt: skip
def test_bad_bodies_are_refused_with_a_message(text_runs, body, match):
    with pytest.raises(InputError, match=match):
        load_run(text_runs["bert_cls"]).predict(body)


def test_pairs_refused_for_a_single_text_encoder(text_runs):
    with pytest.raises(InputError, match=r"instances\[0\].text_pair: this model takes single texts"):
        load_run(text_runs["roberta_emb"]).predict({"instances": [{"text": "a", "text_pair": "b"}]})


def _copy(src, tmp_path):
    """Return a copy of a model directory to spoil."""
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("spoil,match", [
    (lambda d: (d / "pytorch_model.bin").write_bytes(b"\x80\x04."), r"pytorch_model\.bin: pickled weights"),
    (lambda d: (d / "training_args.pt").write_bytes(b"\x80\x04."), r"training_args\.pt: pickled weights"),
    (lambda d: (d / "modeling_evil.py").write_text("import os"), r"modeling_evil\.py: Python code"),
    (lambda d: (d / "notes.yaml").write_text("x"), r"notes\.yaml: not a file of a Hugging Face model directory"),
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                                          "auto_map": {"AutoModel": "evil.Model"}})), r"config\.json: 'auto_map'"),
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), "model_type": "gpt2"})),
     r"config\.json: model_type 'gpt2' is not a native encoder"),
    (lambda d: (d / "tokenizer.json").unlink(), r"tokenizer\.json: missing"),
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), "max_position_embeddings": "9e99"})),
     r"config\.json: 'max_position_embeddings' must be a whole number"),
    (lambda d: (d / "config.json").write_text("[1, 2]"), r"config\.json: expected a JSON object"),
    (lambda d: (d / "1_Pooling").mkdir() or (d / "1_Pooling" / "model.bin").write_bytes(b"x"), r"1_Pooling/model\.bin: pickled"),
    (lambda d: (d / "model.safetensors").unlink(), r"no \*\.safetensors weights"),
])  # fmt: skip
def test_unsafe_or_foreign_directories_are_refused_with_exit_2(text_dirs, tmp_path, capsys, spoil, match):
    d = _copy(text_dirs["bert_cls"], tmp_path)
    spoil(d)
    assert main(["import", str(d), "--out", str(tmp_path / "run")]) == 2
    assert __import__("re").search(match, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_cli_imports_a_directory(text_dirs, tmp_path, capsys):
    assert main(["import", str(text_dirs["roberta_emb"]), "--out", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    assert "RobertaModel" in out and "48-dim embeddings" in out and "at most 64 tokens" in out
    assert "Loading weights" not in err, err  # transformers' progress bar was printed into the import's output
    assert load_run(tmp_path / "run").card["output"]["task"] == "embedding"


def test_open_inference_v2_bytes_input(text_dirs, text_runs):
    firsts, seconds = [tm.TEXTS[i] for i in (0, 2, 4)], [tm.TEXTS[i] for i in (2, 4, 0)]
    ref = tm.reference(text_dirs["bert_cls"], firsts, seconds)
    body = {"id": "r1", "inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": firsts},
                                   {"name": "text_pair", "shape": [3], "datatype": "BYTES", "data": seconds}]}  # fmt: skip
    ans = load_run(text_runs["bert_cls"]).predict(body, "cls", "1.0")
    assert ans["id"] == "r1" and ans["model_name"] == "cls"
    out = {o["name"]: o for o in ans["outputs"]}
    assert out["predictions"]["datatype"] == "BYTES" and out["probabilities"]["shape"] == [3, 3]
    np.testing.assert_allclose(np.reshape(out["probabilities"]["data"], (3, 3)), ref, atol=1e-5)
    labels = ["negative", "neutral", "positive"]
    assert out["predictions"]["data"] == [labels[k] for k in ref.argmax(1)]
    emb = load_run(text_runs["roberta_emb"]).predict({"inputs": [{"name": "text", "shape": [5], "datatype": "BYTES", "data": tm.TEXTS}]})
    e = emb["outputs"][0]
    assert e["name"] == "embedding" and e["shape"] == [5, 48]
    ref = tm.reference(text_dirs["roberta_emb"], tm.TEXTS)
    assert _cosines(np.reshape(e["data"], (5, 48)), ref).min() >= 0.9999
    for bad, match in (({"inputs": [{"name": "text", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}, "a text input is BYTES"),
                       ({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]}, r"shape\[0\] = 3"),
                       ({"inputs": [{"name": "words", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}, "expected the input")):  # fmt: skip
        with pytest.raises(InputError, match=match):
            load_run(text_runs["roberta_emb"]).predict(bad)


def test_predict_local_cli_takes_a_text_body(text_runs, capsys):
    assert main(["predict", "--local", str(text_runs["bert_cls"]), "--body", json.dumps({"instances": tm.TEXTS[:2]}), "--json"]) == 0
    ans = json.loads(capsys.readouterr().out)
    assert len(ans["predictions"]) == 2 and len(ans["probabilities"][0]) == 3
    assert main(["predict", "--local", str(text_runs["bert_cls"]), "--body", json.dumps({"instances": [7]})]) == 2
    assert "instances[0]: 7 is not a text" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["bert_cls", "roberta_emb"])
def test_openapi_document_of_a_text_model_validates_and_matches_answers(text_runs, tmp_path, name):
    import jsonschema
    from openapi_spec_validator import validate

    out = tmp_path / "api.json"
    assert main(["openapi", str(text_runs[name]), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    validate(doc)
    schemas = doc["components"]["schemas"]
    resolver = {"$defs": schemas}

    def check(value, schema_name):
        schema = json.loads(json.dumps(schemas[schema_name]).replace("#/components/schemas/", "#/$defs/"))
        jsonschema.validate(value, {**schema, **resolver})

    run = load_run(text_runs[name])
    examples = doc["paths"][f"/predictions/{name}"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    for ex in examples.values():
        ans = run.predict(ex["value"])
        check(ans, "V2Response" if "inputs" in ex["value"] else "Prediction")
    with pytest.raises(jsonschema.ValidationError):  # the schema could fail: a body the contract refuses
        check({"instances": [3]}, "InstancesRequest")


def test_predict_file_with_a_text_column(text_dirs, text_runs, tmp_path, capsys):
    import csv

    src = tmp_path / "texts.csv"
    with open(src, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows([[f"t{i}", t] for i, t in enumerate(tm.TEXTS)])
    out = tmp_path / "answers.csv"
    assert main(["predict", "--local", str(text_runs["roberta_emb"]), "--file", str(src), "--out", str(out), "--id", "id",
                 "--chunk-rows", "2"]) == 0  # fmt: skip
    rows = list(csv.reader(open(out, encoding="utf-8")))
    assert rows[0] == ["id"] + [f"e_{i}" for i in range(48)]
    assert [r[0] for r in rows[1:]] == [f"t{i}" for i in range(5)]
    emb = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert _cosines(emb, tm.reference(text_dirs["roberta_emb"], tm.TEXTS)).min() >= 0.9999
    cls_out = tmp_path / "labels.csv"
    assert main(["predict", "--local", str(text_runs["bert_cls"]), "--file", str(src), "--out", str(cls_out), "--id", "id"]) == 0
    rows = list(csv.reader(open(cls_out, encoding="utf-8")))
    labels = ["negative", "neutral", "positive"]
    assert rows[0] == ["id", "prediction"] + [f"p_{c}" for c in labels]
    assert [r[1] for r in rows[1:]] == [labels[k] for k in tm.reference(text_dirs["bert_cls"], tm.TEXTS).argmax(1)]
    with open(src, "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow(["long", " ".join(["serving the model card"] * 30)])
    bad = tmp_path / "bad.csv"
    assert main(["predict", "--local", str(text_runs["bert_cls"]), "--file", str(src), "--out", str(bad), "--id", "id"]) == 2
    assert re.search(r"texts\.csv, line 7: \d+ tokens, more than this model's maximum of 48", capsys.readouterr().err)
    assert not bad.exists()


def test_bench_default_body_of_a_text_card_is_one_text(text_runs):
    from aiaas_torch.bench import card_body

    run = load_run(text_runs["roberta_emb"])
    ans = run.predict(json.loads(card_body(run.card)))
    assert len(ans["embeddings"]) == 1 and len(ans["embeddings"][0]) == 48


@pytest.mark.parametrize("model_type", ["xlm-roberta", "deberta-v2", "modernbert"])
def test_more_native_encoders_import_and_match_transformers(tmp_path, model_type):
    import torch

    from aiaas_torch.textimport import import_text

    cls, cfg = tm.more_architectures()[model_type]
    d = tmp_path / model_type
    tm.wordpiece(d)
    torch.manual_seed(0)
    cls(cfg).save_pretrained(str(d))
    run = load_run(import_text(d, tmp_path / "run").run_dir)
    assert run.card["model"]["model_type"] == model_type
    emb = np.array(run.predict({"instances": tm.TEXTS})["embeddings"])
    assert _cosines(emb, tm.reference(d, tm.TEXTS)).min() >= 0.9999


def test_the_signature_covers_the_tokenizer(text_runs, tmp_path):
    import zipfile

    from aiaas_torch.archive import ArchiveError, package, verify_archive

    mar = package(text_runs["bert_cls"], "cls", "1.0", tmp_path / "store", sign_key="k" * 32).path
    assert verify_archive(mar, "k" * 32)["files"]["tokenizer.json"]["role"] == "tokenizer"
    bad = tmp_path / "bad.mar"
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info, data.replace(b'"[PAD]"', b'"[PAX]"') if info.filename == "tokenizer.json" else data)
    with pytest.raises(ArchiveError, match="tokenizer.json: SHA-256 does not match the card"):
        verify_archive(bad, "k" * 32)
