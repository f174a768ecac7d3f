"""Missing values and text columns: loading, imputation and one-hot inside the model, the card, the request contract."""

from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import pytest
import torch

from aiaas_torch import data, preprocessing
from aiaas_torch.card import IMPUTE_STRATEGIES, check_card, read_card
from aiaas_torch.export import export_run
from aiaas_torch.handlers import aiaas_contract as c
from aiaas_torch.models import Preprocess, fold_preprocessing
from aiaas_torch.quantize import QuantConfig
from aiaas_torch.runs import load_run
from aiaas_torch.train import TrainConfig, train

CITIES = ["Lima", "Oslo", "Rome"]  # sorted: codes 0, 1, 2


def _table(n: int = 240, seed: int = 0) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """Return (CSV text, age, city index, y) of y = age/10 + {Lima: 0, Oslo: 3, Rome: -3}, with blanks in both columns."""
    rng = np.random.default_rng(seed)
    age = rng.normal(40, 10, n).round(1)
    city = rng.integers(0, 3, n)
    y = age / 10 + np.array([0.0, 3.0, -3.0])[city]
    lines = ["age,city,y"]
    for i in range(n):
        a = "" if i % 9 == 4 else ("NA" if i % 13 == 6 else str(age[i]))
        t = "" if i % 11 == 7 else CITIES[city[i]]
        lines.append(f"{a},{t},{y[i]:.4f}")
    return "\n".join(lines) + "\n", age, city, y


@pytest.fixture(scope="module")
def table_csv(tmp_path_factory):
    p = tmp_path_factory.mktemp("prep") / "t.csv"
    p.write_text(_table()[0])
    return p


@pytest.fixture(scope="module")
def table_result(table_csv):
    ds = data.load_csv(table_csv, "y", impute=["age=mean", "city=constant:Oslo"])
    return train(ds, TrainConfig(epochs=200, lr=0.3, progress=False))


@pytest.fixture(scope="module")
def table_run(table_result, tmp_path_factory):
    return export_run(table_result, tmp_path_factory.mktemp("prep") / "run", QuantConfig("none"), compile="never")


def test_blank_without_impute_stays_an_error_naming_line_and_column(table_csv):
    with pytest.raises(ValueError, match=r"line 6, column 'age': empty cell, expected a number"):
        data.load_csv(table_csv, "y")
    with pytest.raises(ValueError, match=r"line 6, column 'age': empty cell"):
        data.load_csv(table_csv, "y", impute="city=mean")  # imputing another column does not cover this one


def test_na_marker_without_impute_names_line_column_and_the_option(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,y\n1,2\nNA,3\n4,5\n")
    with pytest.raises(ValueError, match=r"line 3, column 'a': missing value 'NA' .*--impute"):
        data.load_csv(p, "y")


def test_text_column_is_categorical_with_sorted_codes_and_blanks_are_nan(table_csv):
    _, age, city, _ = _table()
    ds = data.load_csv(table_csv, "y", impute="mean")
    f_age, f_city = ds.schema.features
    assert f_city.kind == "categorical" and f_city.categories == CITIES
    assert f_age.kind == "numeric" and f_age.categories is None
    assert np.isnan(ds.X[4, 0]) and np.isnan(ds.X[6, 0]) and np.isnan(ds.X[7, 1])  # "", "NA", "" (data rows 5, 7, 8)
    assert ds.X[0, 1] == city[0] and ds.X[0, 0] == np.float32(age[0])


def test_categorical_flag_forces_a_numeric_looking_column(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("zip,y\n75001,1\n10115,2\n75001,3\n")
    ds = data.load_csv(p, "y", categorical=["zip"], task="regression")
    assert ds.schema.features[0].categories == ["10115", "75001"] and ds.X[:, 0].tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match=r"categorical: 'nope' is not a feature column"):
        data.load_csv(p, "y", categorical=["nope"])


def test_cardinality_limit_names_column_and_count(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("id,y\n" + "".join(f"u{i},{i % 2}\n" for i in range(12)))
    with pytest.raises(ValueError, match=r"column 'id': 12 distinct categories, more than the limit of 10 .*--max-categories"):
        data.load_csv(p, "y", max_categories=10)
    assert len(data.load_csv(p, "y", max_categories=12).schema.features[0].categories) == 12


@pytest.mark.parametrize("spec", ["avg", "age=", "=mean", "constant:", "age=sum"])
def test_bad_impute_specs_are_refused(spec):
    with pytest.raises(ValueError, match="impute"):
        preprocessing.parse_impute([spec])


def test_every_impute_strategy_trains_into_a_card_that_reads_back_and_names_each_strategy(tmp_path):
    # issue 24: data.py and card.py each kept a list of strategy names (data.py's comment said "mode", its list lacked
    # most_frequent, which cards record): now card.IMPUTE_STRATEGIES is the one list, each name can be asked for and
    # each trained card passes the card check
    nums, cats = ["1", "1", "4", "6", "10", "", "2", "4", "1"], ["a", "b", "b", "c", "", "b", "a", "c", "b"]
    asked = {"n_mean": "mean", "n_median": "median", "n_mf": "most_frequent", "n_const": "constant:7",
             "t_mean": "mean", "t_mf": "most_frequent", "t_const": "constant:c"}  # fmt: skip
    lines = [",".join(asked) + ",y"] + [",".join([nums[i]] * 4 + [cats[i]] * 3 + [str(i)]) for i in range(len(nums))]
    p = tmp_path / "d.csv"
    p.write_text("\n".join(lines) + "\n")
    ds = data.load_csv(p, "y", impute=[f"{c}={s}" for c, s in asked.items()])
    result = train(ds, TrainConfig(epochs=2, val_fraction=0.0, progress=False))
    card = read_card(export_run(result, tmp_path / "run", QuantConfig("none"), compile="never").run_dir)
    recorded = {f["name"]: f["impute"] for f in card["input"]["features"]}
    # known numbers 1 1 4 6 10 2 4 1: mean 29/8, median 3, most frequent 1; known texts: b four times, a and c twice
    assert recorded == {"n_mean": {"strategy": "mean", "value": 3.625}, "n_median": {"strategy": "median", "value": 3.0},
                        "n_mf": {"strategy": "most_frequent", "value": 1.0}, "n_const": {"strategy": "constant", "value": 7.0},
                        "t_mean": {"strategy": "most_frequent", "value": "b"}, "t_mf": {"strategy": "most_frequent", "value": "b"},
                        "t_const": {"strategy": "constant", "value": "c"}}  # fmt: skip
    assert {r["strategy"] for r in recorded.values()} == set(IMPUTE_STRATEGIES)  # every name a card takes is written
    assert all(preprocessing.parse_impute(s) == {"*": s} for s in IMPUTE_STRATEGIES)  # and can be asked for


def test_missing_target_is_an_error_naming_the_line(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,y\n1,2\n3,\n4,5\n")
    with pytest.raises(ValueError, match=r"line 3, column 'y': empty target cell"):
        data.load_csv(p, "y", impute="mean")


def test_imputation_values_come_from_the_training_split_only(table_csv, table_result):
    ds = data.load_csv(table_csv, "y", impute=["age=mean", "city=constant:Oslo"])
    train_rows, val_rows = data.split(ds, 0.2, 0)
    age_train = train_rows.X[:, 0]
    want = float(np.mean(age_train[~np.isnan(age_train)], dtype=np.float64))
    everything = float(np.nanmean(ds.X[:, 0], dtype=np.float64))
    assert want != everything  # otherwise this test could not tell the two apart
    f_age, f_city = table_result.schema.features
    assert f_age.impute == {"strategy": "mean", "value": pytest.approx(want)}
    assert f_city.impute == {"strategy": "constant", "value": "Oslo"}


def test_preprocess_layer_imputes_and_one_hot_encodes_unseen_as_zero():
    layer = Preprocess(3, fill=[5.0, 0.0, 1.0], onehot={1: np.array([0.0, 2.0], np.float32)})  # code 1 had no training row
    x = torch.tensor([[1.0, 0.0, 7.0], [math.nan, 2.0, math.nan], [3.0, 1.0, 2.0], [4.0, -1.0, 2.0]])
    out = layer(x)
    assert out.tolist() == [[1, 1, 0, 7], [5, 0, 1, 1], [3, 0, 0, 2], [4, 0, 0, 2]]
    assert layer.out_features == 4


def test_folding_keeps_the_preprocess_layer_in_front(table_result, table_csv):
    ds = data.load_csv(table_csv, "y", impute=["age=mean", "city=constant:Oslo"])
    folded = fold_preprocessing(table_result.model)
    assert isinstance(folded[0], Preprocess) and isinstance(folded[1], torch.nn.Linear)
    x = torch.from_numpy(ds.X)
    with torch.no_grad():
        assert torch.allclose(folded(x), table_result.model(x), atol=1e-4)
        assert torch.isfinite(folded(x)).all()


def test_model_learns_the_categories(table_result):
    assert table_result.metrics["validation"]["r2"] > 0.6  # a tenth of the cities are blanks filled with Oslo


def test_card_records_kind_categories_and_impute(table_run):
    card = json.loads((table_run.run_dir / "model.json").read_text())
    age, city = card["input"]["features"]
    assert age["kind"] == "numeric" and "categories" not in age and age["impute"]["strategy"] == "mean"
    assert city["kind"] == "categorical" and city["categories"] == CITIES
    assert city["impute"] == {"strategy": "constant", "value": "Oslo"}
    assert card["input"]["unseen_category"] == "zero"
    assert set(card["model"]["coefficients"]["weights"]) == {"age", "city=Lima", "city=Oslo", "city=Rome"}


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda f: f.update(kind="text"), "kind"),
        (lambda f: f.update(categories=[]), "categories"),
        (lambda f: f.update(categories=["a", "a"]), "categories"),
        (lambda f: f.update(impute={"strategy": "mode"}), "impute"),
        (lambda f: f.update(impute={"strategy": "constant", "value": 3}), "impute.value"),
    ],
)
def test_check_card_rejects_bad_encoding_fields(table_run, edit, field):
    card = json.loads((table_run.run_dir / "model.json").read_text())
    edit(card["input"]["features"][1])
    with pytest.raises(ValueError, match=re.escape(f"input.features['city'].{field}")):
        check_card(card, "model.json")


def _rows():
    return [
        {"age": 30.0, "city": "Oslo"},
        {"age": None, "city": "Rome"},  # imputed age
        {"age": 50.0, "city": None},  # imputed city (constant Oslo)
        {"age": 50.0, "city": "Paris"},  # unseen: all-zero encoding
    ]


def test_local_answers_follow_the_encoding(table_run, table_result):
    model = load_run(table_run.run_dir)
    ans = model.predict({"instances": _rows()})["predictions"]
    fill = table_result.schema.features[0].impute["value"]
    same = [{"age": 30.0, "city": "Oslo"}, {"age": fill, "city": "Rome"}, {"age": 50.0, "city": "Oslo"}]
    assert ans[:3] == pytest.approx(model.predict({"instances": same})["predictions"], abs=1e-5)
    known = model.predict({"instances": [{"age": 50.0, "city": k} for k in CITIES]})["predictions"]
    assert all(abs(ans[3] - k) > 0.1 for k in known)  # Paris is none of the known cities
    # the exported program agrees with the trained model on the same codes and NaNs
    x = torch.tensor([[30.0, 1.0], [math.nan, 2.0], [50.0, math.nan], [50.0, -1.0]])
    with torch.no_grad():
        eager = table_result.model(x)[:, 0].tolist()
    assert ans == pytest.approx(eager, abs=1e-4)


def test_contract_counts_nulls_and_unseen_categories(table_run):
    card = json.loads((table_run.run_dir / "model.json").read_text())
    parsed = c.parse_request({"instances": _rows()}, card)
    assert parsed.imputed == 2 and parsed.unseen == 1 and parsed.out_of_range == 0
    assert parsed.rows[3][1] == -1.0 and math.isnan(parsed.rows[1][0])


def test_null_for_a_feature_without_imputation_is_refused_naming_row_and_feature(table_run):
    card = json.loads((table_run.run_dir / "model.json").read_text())
    del card["input"]["features"][0]["impute"]
    with pytest.raises(c.ContractError, match=r"instances\[1\]\.age: null is not a number"):
        c.parse_request({"instances": _rows()}, card)


def test_strict_refuses_an_unseen_category_naming_feature_value_and_known_ones(table_run):
    card = json.loads((table_run.run_dir / "model.json").read_text())
    card["input"]["unseen_category"] = "error"
    with pytest.raises(c.ContractError, match=r'instances\[3\]\.city: unknown category "Paris"; known categories: "Lima", "Oslo", "Rome"$'):
        c.parse_request({"instances": _rows()}, card)
    card["input"]["features"][1]["categories"] = [f"c{i:02d}" for i in range(12)]
    with pytest.raises(c.ContractError, match=r'"c04" … and 7 more$'):
        c.parse_request({"instances": [{"age": 1.0, "city": "Paris"}]}, card)


def test_v2_tensors_are_refused_for_categorical_models(table_run):
    card = json.loads((table_run.run_dir / "model.json").read_text())
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 0.0]}]}
    with pytest.raises(c.ContractError, match=r"categorical feature\(s\) \"city\".*instances"):
        c.parse_request(body, card)


def _coded_result(model: str, hidden=(64, 64)):
    """Return a TrainResult on 3 features (a with 10 % NaN imputed by mean, city a categorical code, b)."""
    rng = np.random.default_rng(1)
    n = 400
    city = rng.integers(0, 3, n).astype(np.float32)
    X = np.stack([rng.normal(0, 1, n), city, rng.normal(0, 1, n)], 1).astype(np.float32)
    y = X[:, 0] - X[:, 2] + np.array([0.0, 2.0, -2.0])[city.astype(int)]
    X[rng.random(n) < 0.1, 0] = np.nan
    ds = data.from_arrays(X, y, ["a", "city", "b"], target="y", impute="a=mean")
    f = ds.schema.features[1]  # from_arrays takes numbers: declare the codes of column 1 a categorical feature
    f.kind, f.categories = "categorical", CITIES
    return train(ds, TrainConfig(model=model, hidden=hidden, epochs=50, lr=0.05, progress=False))


def _probe_rows(result) -> np.ndarray:
    """Return rows: NaN a, the same with a's fitted fill, two unseen codes, a known code."""
    fill = result.schema.features[0].impute["value"]
    return np.array([[np.nan, 0.0, 1.0], [fill, 0.0, 1.0], [0.5, -1.0, 0.3], [0.5, 7.0, 0.3], [0.5, 2.0, 0.3]], np.float32)


def _check_probe(got: np.ndarray) -> None:
    assert np.isfinite(got).all()
    assert got[0].tolist() == got[1].tolist()  # NaN is filled with exactly the fitted value
    assert got[2].tolist() == got[3].tolist()  # two unseen codes: the same all-zero encoding
    assert got[2].tolist() != got[4].tolist()


@pytest.mark.slow
def test_compiled_program_keeps_imputation_and_one_hot_exact(tmp_path):
    """AOTInductor keeps the NaN fill and the code comparison: the compiled package matches eager on such rows."""
    result = _coded_result("linear")
    run = export_run(result, tmp_path / "run", QuantConfig("none"), compile="always")
    model = load_run(run.run_dir, program="compiled")
    assert model.program_file == "model.pt2"
    rows = _probe_rows(result)
    got = model.forward(rows)
    _check_probe(got)
    with torch.no_grad():
        assert np.allclose(got, result.model(torch.from_numpy(rows)).numpy(), atol=1e-4)


def test_int8_model_keeps_imputation_and_one_hot_exact():
    """The int8 path quantizes the Linear layers only: the Preprocess layer in front keeps NaN and codes exact."""
    from aiaas_torch.quantize import quantize

    result = _coded_result("mlp", hidden=(128, 128))
    qmodel, report = quantize(fold_preprocessing(result.model), QuantConfig("int8", min_weights=0, force=True), result.eval_X)
    assert any(l.decision.startswith("int8") for l in report.layers)
    assert isinstance(qmodel[0], Preprocess)
    rows = _probe_rows(result)
    with torch.no_grad():
        got = qmodel(torch.from_numpy(rows)).numpy()
        want = result.model(torch.from_numpy(rows)).numpy()
    _check_probe(got)
    assert np.allclose(got, want, atol=0.05 * float(np.abs(want).max()))


def test_handler_adds_the_new_metric_lines_only_when_non_zero():
    from types import SimpleNamespace

    from aiaas_torch.handlers.tabular_handler import TabularHandler

    class Recorder:
        def __init__(self):
            self.counters = []

        def add_counter(self, name, value, idx=None):
            self.counters.append((name, value))

    h, rec = TabularHandler(), Recorder()
    ctx = SimpleNamespace(metrics=rec)
    h._metrics(ctx, 4, 0, 0)
    assert rec.counters == [("RowsPredicted", 4)]
    rec.counters.clear()
    h._metrics(ctx, 4, 0, 0, imputed=3, unseen=0)
    assert rec.counters == [("RowsPredicted", 4), ("ImputedValues", 3)]
    rec.counters.clear()
    h._metrics(ctx, 4, 0, 0, imputed=0, unseen=2)
    assert rec.counters == [("RowsPredicted", 4), ("UnseenCategories", 2)]


def test_selection_fits_preprocessing_per_fold_and_its_baseline_takes_blanks(table_csv, tmp_path):
    from aiaas_torch.select import SelectConfig, select

    ds = data.load_csv(table_csv, "y", impute="mean")
    grid = [{"model": "baseline"}, {"model": "linear", "lr": 0.1}]
    r = select(ds, SelectConfig(cv=2, grid=grid, epochs=20, compile="never", progress=False, halving=False), workdir=tmp_path)
    try:
        scores = {e["params"]["model"]: e["mean"] for e in r.leaderboard}
        assert math.isfinite(scores["baseline"]) and scores["linear"] > scores["baseline"]
        assert r.best.spec.kind == "linear" and isinstance(r.best.model[0], Preprocess)
    finally:
        r.cleanup()
    # the baseline refitted on rows with blanks answers its constant, not NaN
    from aiaas_torch.candidates import fit_candidate as _fit

    fitted = _fit({"model": "baseline"}, ds, 5, 0)
    with torch.no_grad():
        out = fitted.model(torch.from_numpy(ds.X))
    assert torch.isfinite(out).all() and float(out.std()) == 0.0


def test_nan_text_in_a_text_column_is_missing_not_a_category(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("c,y\nx,2\nnan,3\nz,4\n")
    with pytest.raises(ValueError, match=r"line 3, column 'c': missing value 'nan'"):
        data.load_csv(p, "y")
    assert data.load_csv(p, "y", impute="constant").schema.features[0].categories == ["x", "z"]


def test_from_arrays_takes_nan_only_in_imputed_columns():
    X = np.array([[1.0, 2.0], [np.nan, 3.0], [4.0, 5.0]])
    with pytest.raises(ValueError, match=r"X, row 1, column 'a': nan is not a finite number"):
        data.from_arrays(X, [1.0, 2.0, 3.0], ["a", "b"])
    with pytest.raises(ValueError, match=r"X, row 1, column 'a'"):
        data.from_arrays(X, [1.0, 2.0, 3.0], ["a", "b"], impute="b=mean")
    ds = data.from_arrays(X, [1.0, 2.0, 3.0], ["a", "b"], impute="a=median")
    assert ds.schema.features[0].impute == {"strategy": "median"} and ds.schema.features[0].mean == 2.5
    r = train(ds, TrainConfig(epochs=5, val_fraction=0.0, progress=False))
    assert r.schema.features[0].impute == {"strategy": "median", "value": 2.5}
