"""`aiaas openapi`: the document of a run directory or an archive, validated, and checked against what the
contract really accepts and answers (the live fuzzing is in tests/integration/test_openapi_fuzz.py)."""

from __future__ import annotations

import json
import re
import zipfile

import jsonschema
import numpy as np
import pytest
from openapi_spec_validator import validate

from aiaas_torch.archive import ServingConfig, package
from aiaas_torch.cli import main
from aiaas_torch.data import from_arrays
from aiaas_torch.export import export_run
from aiaas_torch.handlers import aiaas_contract as contract
from aiaas_torch.openapi import card_schemas, describe_target, document
from aiaas_torch.quantize import QuantConfig
from aiaas_torch.runs import load_run
from aiaas_torch.train import TrainConfig, train


@pytest.fixture(scope="module")
def classes_run(tmp_path_factory):
    """A 3-class logistic model on features a, b (float program only: no compile)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    X = np.array([[0, 0], [4, 0], [0, 4]], dtype=np.float64)[labels] + rng.normal(0, 0.5, (300, 2))
    ds = from_arrays(X, np.array(["ant", "bee", "cat"])[labels], ["a", "b"], target="kind")
    result = train(ds, TrainConfig(model="logistic", epochs=100, lr=0.5, batch_size=64, progress=False))
    return export_run(result, tmp_path_factory.mktemp("oa") / "kinds", QuantConfig("none"), compile=False).run_dir


@pytest.fixture(scope="module")
def line_run(tmp_path_factory):
    """y = 2x + 1 on one feature x in [1, 5]."""
    x = np.arange(1, 6, dtype=np.float64)
    result = train(from_arrays(x.reshape(-1, 1), 2 * x + 1, ["x"], target="y"), TrainConfig(val_fraction=0.0, progress=False))
    return export_run(result, tmp_path_factory.mktemp("oa") / "line", QuantConfig("none"), compile=False).run_dir


def _validator(doc: dict, name: str) -> jsonschema.Draft202012Validator:
    """Return a validator of components.schemas[name], resolving the document's own references."""
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


def test_run_directory_document_is_valid_openapi_31_and_comes_from_the_card(classes_run):
    doc = describe_target(str(classes_run))
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {"/predictions/kinds", "/v1/models/kinds:predict", "/v2/models/kinds/infer"}
    schemas = doc["components"]["schemas"]
    assert [s["title"] for s in schemas["Row"]["prefixItems"]] == ["a", "b"]
    assert schemas["Row"]["minItems"] == schemas["Row"]["maxItems"] == 2
    card = load_run(classes_run).card
    lo, hi = card["input"]["features"][0]["min"], card["input"]["features"][0]["max"]
    assert f"[{lo:g}, {hi:g}]" in schemas["Row"]["prefixItems"][0]["description"]  # the range is documentation only
    assert "maximum" in schemas["Row"]["prefixItems"][0] and schemas["Row"]["prefixItems"][0]["maximum"] > hi * 1e30
    assert schemas["Prediction"]["properties"]["predictions"]["items"] == {"enum": ["ant", "bee", "cat"]}
    assert schemas["InstancesRequest"]["properties"]["instances"]["maxItems"] == 10_000
    assert doc["components"]["securitySchemes"]["bearerToken"] == {**doc["components"]["securitySchemes"]["bearerToken"],
                                                                   "type": "http", "scheme": "bearer"}
    op = doc["paths"]["/predictions/kinds"]["post"]
    assert op["responses"]["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_documented_bodies_are_accepted_and_answers_match_the_documented_schemas(classes_run, line_run):
    for run in (classes_run, line_run):
        doc = describe_target(str(run))
        model = load_run(run)
        request = {"anyOf": [{"$ref": "#/components/schemas/" + n} for n in ("InstancesRequest", "V2Request", "Rows")],
                   "components": doc["components"]}
        for example in doc["paths"][next(iter(doc["paths"]))]["post"]["requestBody"]["content"]["application/json"]["examples"].values():
            jsonschema.Draft202012Validator(request).validate(example["value"])
            got = model.predict(example["value"])
            fmt = "V2Response" if "inputs" in example["value"] else "Prediction"
            _validator(doc, fmt).validate(got)
        with pytest.raises(jsonschema.ValidationError):  # a wrong row width is outside the document too
            jsonschema.Draft202012Validator(request).validate({"instances": [[1.0] * 3]})


def test_error_body_matches_the_documented_error_schema(line_run):
    doc = describe_target(str(line_run))
    try:
        load_run(line_run).predict({"instances": [[1.0, 2.0]]})
    except contract.ContractError as e:
        _validator(doc, "Error").validate(contract.error_body(str(e)))
    _validator(doc, "Error").validate(contract.error_body("boom", 503))
    with pytest.raises(jsonschema.ValidationError):
        _validator(doc, "Error").validate({"message": "no code"})


def test_archive_document_takes_the_served_name_version_and_row_limit(line_run, tmp_path):
    mar = package(line_run, "liner", "2.5", tmp_path / "store", serving=ServingConfig(workers=1, max_rows=64)).path
    doc = describe_target(str(mar))
    validate(doc)
    assert "/predictions/liner" in doc["paths"] and doc["info"]["version"] == "2.5"
    assert doc["components"]["schemas"]["InstancesRequest"]["properties"]["instances"]["maxItems"] == 64
    bad = tmp_path / "bad.mar"  # one member edited: the card no longer matches, and nothing is described
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info, data + b"\n" if info.filename == "model-config.yaml" else data)
    with pytest.raises(ValueError, match="model-config.yaml: SHA-256 does not match"):
        describe_target(str(bad))


def test_cli_writes_the_document_atomically_and_refuses_bad_targets(line_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["openapi", "--help"])
    assert e.value.code == 0 and "NAME|ARCHIVE|RUN_DIR" in capsys.readouterr().out
    out = tmp_path / "api.json"
    assert main(["openapi", str(line_run), "--name", "y2x", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    validate(doc)
    assert "/v2/models/y2x/infer" in doc["paths"]
    assert [p.name for p in tmp_path.iterdir()] == ["api.json"]  # no temporary file left behind
    assert main(["openapi", str(line_run)]) == 0
    assert json.loads(capsys.readouterr().out)["paths"].keys() == {"/predictions/line", "/v1/models/line:predict", "/v2/models/line/infer"}
    assert main(["openapi", str(tmp_path / "nothing.mar")]) == 2
    assert "nothing.mar: file not found" in capsys.readouterr().err
    assert main(["openapi", str(line_run), "--name", "bad name"]) == 2
    assert "'bad name' is not a model name" in capsys.readouterr().err
    assert main(["openapi", "y2x", "--home", str(tmp_path / "nohome")]) == 1
    assert "no server recorded" in capsys.readouterr().err
    assert main(["openapi", str(line_run), "--out", str(tmp_path / "no" / "api.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_schemas_are_built_by_one_function_of_the_card(line_run):
    card = load_run(line_run).card
    assert document(card, "m")["components"]["schemas"] == card_schemas(card)
    with pytest.raises(ValueError, match="not a model name"):
        document(card, "../x")


# --- what the fuzzer found: outputs that overflow float32 were answered 200 with `Infinity` (not JSON) ---------------


def test_outputs_that_overflow_float32_are_refused_naming_the_row(line_run):
    card = load_run(line_run).card
    for fmt, where in (("instances", "instances[1]"), ("v2", "inputs[0].data row 1"), ("rows", "rows[1]")):
        with pytest.raises(contract.ContractError, match="^" + re.escape(f"{where}: the model's output overflows float32")):
            contract.answer(card, contract.ParsedRequest([[1.0], [2.0]], fmt), [[3.0], [float("inf")]], "m", "1")
    # a valid input (finite, within float32) whose prediction 2x + 1 is beyond float32
    with pytest.raises(ValueError, match=r"instances\[0\]: the model's output overflows float32"):
        load_run(line_run).predict({"instances": [[3e38]]})


def test_a_tensor_card_document_is_valid_and_documents_what_the_contract_takes(imported):
    net, cls = imported.two_run, imported.cls_run
    for run in (net, cls):
        doc = describe_target(str(run), name="m")
        validate(doc)
        model = load_run(run)
        request = {"anyOf": [{"$ref": "#/components/schemas/" + n} for n in ("InstancesRequest", "V2Request")],
                   "components": doc["components"]}
        examples = doc["paths"]["/predictions/m"]["post"]["requestBody"]["content"]["application/json"]["examples"]
        assert {"inputs", "instances"} <= {next(iter(e["value"])) for e in examples.values()}, examples
        for example in examples.values():
            jsonschema.Draft202012Validator(request).validate(example["value"])
            got = model.predict(example["value"])
            _validator(doc, "V2Response" if "inputs" in example["value"] else "Prediction").validate(got)
    doc = describe_target(str(net), name="m")
    request = jsonschema.Draft202012Validator({"$ref": "#/components/schemas/InstancesRequest", "components": doc["components"]})
    good = {"x": [[0.5, 1, 2], [3, 4, 5]], "ids": [1, 2, 3, 4]}
    request.validate({"instances": [good]})
    for bad in ({**good, "x": [[0.5, 1, 2]]}, {**good, "ids": [1, 2, 3, 4.5]}, {"x": good["x"]}, {**good, "z": 1}):
        with pytest.raises(jsonschema.ValidationError):  # a wrong shape, a fraction for int64, a missing or extra input
            request.validate({"instances": [bad]})
        with pytest.raises(contract.ContractError):  # and the contract refuses each of them too
            load_run(net).predict({"instances": [bad]})
    assert "x [N, 2, 3] float32" in doc["info"]["description"] and "ids [N, 4] int64" in doc["info"]["description"]
    answer = _validator(doc, "Prediction")
    with pytest.raises(jsonschema.ValidationError):
        answer.validate({"predictions": [{"y": [1.0, 2.0]}], "model": "m", "version": "1"})  # output 'total' missing
    labels = describe_target(str(cls), name="m")["components"]["schemas"]["Prediction"]["properties"]["predictions"]
    assert labels["items"] == {"enum": ["no", "yes"]}


def test_a_folder_whose_name_is_no_model_name_asks_for_name(imported, capsys):
    net = imported.two_run
    assert main(["openapi", str(net)]) == 2
    err = capsys.readouterr().err
    assert "'net-1.0'" in err and "--name" in err and "is not a model name" not in err and err.count("\n") == 1, err
    assert main(["openapi", str(net), "--name", "net"]) == 0
    validate(json.loads(capsys.readouterr().out))
