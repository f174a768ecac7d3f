"""Loading, schema inference, validation messages, splitting, scaling statistics and the PCA rotation."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from aiaas_torch import data, preprocessing
from aiaas_torch.train import TrainConfig, train


def write(tmp_path, text: str, name: str = "d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


# --- loading and schema inference -------------------------------------------------------------------------


def test_load_csv_reads_features_in_order_with_stats(tmp_path):
    rows = [(1.0, 10.0, 3.5), (2.0, 30.0, 1.5), (4.0, 20.0, 2.0), (5.0, 0.0, 7.25)]
    # the target is in the middle: the features keep the file's order around it
    p = write(tmp_path, "b,y,a\n" + "".join(f"{b},{y},{a}\n" for b, a, y in rows))
    ds = data.load_csv(p, target="y")
    assert ds.schema.feature_names == ["b", "a"]
    assert ds.schema.target == "y"
    assert ds.schema.task == "regression"
    assert ds.schema.classes is None
    X = np.array([[b, a] for b, a, _ in rows])
    np.testing.assert_array_equal(ds.X, X.astype(np.float32))
    np.testing.assert_array_equal(ds.y, np.array([r[2] for r in rows], np.float32))
    assert ds.X.dtype == np.float32 and ds.y.dtype == np.float32
    for j, f in enumerate(ds.schema.features):
        assert f.dtype == "float32"
        assert f.min == X[:, j].min() and f.max == X[:, j].max()
        assert f.mean == pytest.approx(X[:, j].mean(), rel=1e-12)
        assert f.std == pytest.approx(X[:, j].std(), rel=1e-12)
    assert ds.source == str(p)
    assert ds.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert len(ds) == 4


def test_schema_round_trips_through_dict():
    ds = data.from_arrays(np.arange(40.0).reshape(20, 2), ["a", "b"] * 10)
    assert data.Schema.from_dict(ds.schema.to_dict()) == ds.schema


def test_few_distinct_integers_are_classification():
    X = np.arange(100.0).reshape(-1, 1)
    y = np.arange(100) % 3 + 5  # labels 5, 6, 7
    ds = data.from_arrays(X, y)
    assert ds.schema.task == "classification"
    assert ds.schema.classes == [5, 6, 7]
    assert ds.y.dtype == np.int64
    np.testing.assert_array_equal(ds.y, y - 5)  # index into classes


def test_string_labels_are_classification_in_sorted_order(tmp_path):
    p = write(tmp_path, "x,kind\n1,dog\n2,cat\n3,dog\n4,bird\n")
    ds = data.load_csv(p, target="kind")
    assert ds.schema.task == "classification"
    assert ds.schema.classes == ["bird", "cat", "dog"]
    np.testing.assert_array_equal(ds.y, [2, 1, 2, 0])


def test_many_distinct_values_are_regression():
    X = np.arange(50.0).reshape(-1, 1)
    assert data.from_arrays(X, np.arange(50) * 2).schema.task == "regression"  # 50 distinct integers
    assert data.from_arrays(X, np.linspace(0, 1, 50) + 0.01).schema.task == "regression"


def test_explicit_task_overrides_inference():
    X = np.arange(100.0).reshape(-1, 1)
    ds = data.from_arrays(X, np.arange(100) % 2, task="regression")
    assert ds.schema.task == "regression" and ds.y.dtype == np.float32


# --- rejections: each names the file, the line and the column ---------------------------------------------


def test_missing_file(tmp_path):
    p = tmp_path / "nope.csv"
    with pytest.raises(ValueError, match=re.escape(str(p)) + ".*not found"):
        data.load_csv(p, target="y")


def test_empty_file(tmp_path):
    p = write(tmp_path, "\n  \n")
    with pytest.raises(ValueError, match=re.escape(str(p)) + ".*empty file"):
        data.load_csv(p, target="y")


def test_missing_target_column(tmp_path):
    p = write(tmp_path, "a,b\n1,2\n3,4\n")
    with pytest.raises(ValueError, match=re.escape(str(p)) + r".*target column 'y' not found.*\['a', 'b'\]"):
        data.load_csv(p, target="y")


def test_non_numeric_cell_names_file_line_and_column(tmp_path):
    # a blank line before the bad row: the line number is the file's, not the data row's index
    p = write(tmp_path, "a,b,y\n1,2,3\n\n4,five,6\n7,8,9\n")
    with pytest.raises(ValueError) as e:
        data.load_csv(p, target="y")
    msg = str(e.value)
    assert str(p) in msg and "line 4" in msg and "'b'" in msg and "five" in msg


@pytest.mark.parametrize("cell", ["nan", "NaN", "inf", "-inf", "1e400"])
def test_nan_and_inf_features_are_rejected(tmp_path, cell):
    p = write(tmp_path, f"a,b,y\n1,2,3\n4,5,6\n7,{cell},9\n")
    with pytest.raises(ValueError, match=re.escape(str(p)) + r", line 4, column 'b'.*not a finite number"):
        data.load_csv(p, target="y")


def test_nan_target_is_rejected(tmp_path):
    p = write(tmp_path, "a,y\n1,2\n3,nan\n5,6\n")
    with pytest.raises(ValueError, match=re.escape(str(p)) + r", line 3, column 'y'.*not a finite number"):
        data.load_csv(p, target="y")


def test_empty_cell_is_rejected(tmp_path):
    p = write(tmp_path, "a,b,y\n1,2,3\n4,,6\n")
    with pytest.raises(ValueError, match=r"line 3, column 'b'.*empty cell"):
        data.load_csv(p, target="y")


def test_ragged_row(tmp_path):
    p = write(tmp_path, "a,b,y\n1,2,3\n4,5\n7,8,9\n")
    with pytest.raises(ValueError, match=re.escape(str(p)) + r", line 3: 2 fields, expected 3"):
        data.load_csv(p, target="y")


@pytest.mark.parametrize("body", ["", "1,2\n"])
def test_fewer_than_two_rows(tmp_path, body):
    p = write(tmp_path, "a,y\n" + body)
    with pytest.raises(ValueError, match=re.escape(str(p)) + r".*at least 2"):
        data.load_csv(p, target="y")
    with pytest.raises(ValueError, match=r"at least 2"):
        data.from_arrays([[1.0]], [2.0])


def test_duplicate_column_names(tmp_path):
    p = write(tmp_path, "a,y,a\n1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match=re.escape(str(p)) + r", line 1: duplicate column name 'a' \(columns 1 and 3\)"):
        data.load_csv(p, target="y")
    with pytest.raises(ValueError, match=r"feature_names.*duplicate.*'a'"):
        data.from_arrays(np.zeros((3, 2)), [1, 2, 3], feature_names=["a", "a"])


def test_one_class_only_for_classification(tmp_path):
    p = write(tmp_path, "a,y\n1,cat\n2,cat\n3,cat\n")
    with pytest.raises(ValueError, match=re.escape(str(p)) + r", column 'y': one class only \('cat'\)"):
        data.load_csv(p, target="y")
    with pytest.raises(ValueError, match=r"column 'y': one class only"):
        data.from_arrays(np.arange(4.0).reshape(-1, 1), [1, 1, 1, 1], task="classification")


def test_from_arrays_rejections_name_row_and_column():
    X = np.ones((4, 3))
    X[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"X, row 2, column 'b'.*not a finite number"):
        data.from_arrays(X, [1.0, 2, 3, 4], feature_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"y, row 1.*not a finite number"):
        data.from_arrays(np.ones((3, 1)), [1.0, np.inf, 2.0])
    with pytest.raises(ValueError, match=r"y: 2 values for 3 rows"):
        data.from_arrays(np.ones((3, 1)), [1.0, 2.0])
    with pytest.raises(ValueError, match=r"X: not a rectangular array"):
        data.from_arrays([[1, 2], [3]], [1, 2])
    with pytest.raises(ValueError, match=r"task: 'weird'"):
        data.from_arrays(np.ones((3, 1)), [1.0, 2, 3], task="weird")


def test_constant_feature_warns_and_loads(tmp_path):
    p = write(tmp_path, "a,c,y\n1,7,2\n2,7,4\n3,7,6\n")
    with pytest.warns(UserWarning, match=r"column 'c': constant feature"):
        ds = data.load_csv(p, target="y")
    assert ds.schema.feature_names == ["a", "c"]
    assert ds.schema.features[1].std == 0.0
    assert len(ds.warnings) == 1 and "'c'" in ds.warnings[0]
    # training on it still works: the constant column gets std 1, so scaling stays finite
    mean, std = preprocessing.standardize_stats(ds.X)
    assert std[1] == 1.0 and np.isfinite(mean).all()


# --- split, scaling, rotation -----------------------------------------------------------------------------


def _indexed(n: int = 200) -> data.Dataset:
    """A dataset whose first feature is the row index, so a split's rows can be read back."""
    X = np.stack([np.arange(n), np.sin(np.arange(n))], 1)
    return data.from_arrays(X, np.linspace(0, 3, n) ** 2)


def test_split_is_deterministic_by_seed():
    ds = _indexed()
    tr1, va1 = data.split(ds, 0.25, seed=7)
    tr2, va2 = data.split(ds, 0.25, seed=7)
    np.testing.assert_array_equal(tr1.X, tr2.X)
    np.testing.assert_array_equal(va1.X, va2.X)
    _, va3 = data.split(ds, 0.25, seed=8)
    assert not np.array_equal(va1.X[:, 0], va3.X[:, 0])
    # a partition of the rows, with the asked-for size
    tr_rows, va_rows = tr1.X[:, 0].astype(int), va1.X[:, 0].astype(int)
    assert len(va_rows) == 50 and len(tr_rows) == 150
    assert sorted(np.concatenate([tr_rows, va_rows]).tolist()) == list(range(200))
    np.testing.assert_array_equal(tr1.y, ds.y[tr_rows])  # targets travel with their rows


def test_split_without_validation_and_bad_fraction():
    ds = _indexed(10)
    tr, va = data.split(ds, 0.0)
    assert va is None and tr is ds
    _, va = data.split(ds, 0.01)
    assert len(va) == 1  # a positive fraction keeps at least one row
    for bad in (-0.1, 1.0, "0.2"):
        with pytest.raises(ValueError, match="val_fraction"):
            data.split(ds, bad)


def test_standardize_stats_come_from_the_training_split_only():
    ds = _indexed()
    tr, va = data.split(ds, 0.3, seed=3)
    mean, std = preprocessing.standardize_stats(tr.X)
    np.testing.assert_allclose(mean, tr.X.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, tr.X.std(0), rtol=1e-6)
    # what train() puts in the model's scaling layer is exactly this, not the full data's statistics
    res = train(ds, TrainConfig(model="linear", epochs=1, val_fraction=0.3, seed=3, progress=False))
    scale = res.model[0]
    np.testing.assert_array_equal(scale.mean.numpy(), mean)
    np.testing.assert_array_equal(scale.std.numpy(), std)
    full_mean, _ = preprocessing.standardize_stats(ds.X)
    assert not np.allclose(full_mean, mean, rtol=1e-4)


def test_pca_rotation_is_orthogonal_and_sorted():
    rng = np.random.default_rng(0)
    n, d = 500, 6
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))  # correlated features
    mean, std = preprocessing.standardize_stats(X.astype(np.float32))
    Z = (X - mean) / std
    A = preprocessing.pca_rotation(Z)
    assert A.shape == (d, d) and A.dtype == np.float32
    assert np.abs(A.T.astype(np.float64) @ A - np.eye(d)).max() <= 1e-5
    rotated = Z @ A
    var = rotated.var(0)
    assert np.all(np.diff(var) <= 1e-9)  # largest variance first
    cov = np.cov(rotated, rowvar=False)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-4 * var.max()  # decorrelated


def test_a_typo_in_a_numeric_target_is_an_error_naming_the_line(tmp_path):
    p = write(tmp_path, "a,y\n1,2\n2,abc\n3,6\n4,8\n")
    for task in ("auto", "regression"):
        with pytest.raises(ValueError, match=re.escape(str(p)) + r", line 3, column 'y': non-numeric target 'abc'"):
            data.load_csv(p, target="y", task=task)
    assert data.load_csv(p, target="y", task="classification").schema.classes == ["2", "6", "8", "abc"]


def test_line_numbers_count_quoted_fields_that_span_lines(tmp_path):
    p = write(tmp_path, 'a,y\n"1",2\n"3\n",4\n5,x6\n')
    with pytest.raises(ValueError, match=r"line 5, column 'y'"):
        data.load_csv(p, target="y", task="regression")


def test_loading_and_splitting_copy_the_data_at_most_once():
    X = np.random.default_rng(0).normal(size=(1000, 4)).astype(np.float32)
    ds = data.from_arrays(X, X[:, 0] * 2)
    assert np.shares_memory(ds.X, X)  # float32 input is used as it is
    tr, va = data.split(ds, 0.2, seed=1)
    assert not np.shares_memory(tr.X, X)  # the one copy: rows gathered into shuffled order
    assert tr.X.base is not None and tr.X.base is va.X.base  # both parts are views of that one copy
    assert len(tr) == 800 and len(va) == 200
    assert sorted(map(tuple, np.vstack([tr.X, va.X]).tolist())) == sorted(map(tuple, X.tolist()))


def test_values_beyond_float32_are_refused(tmp_path):
    p = write(tmp_path, "a,y\n1,2\n1e39,3\n4,5\n")
    with pytest.raises(ValueError, match=r"line 3, column 'a'.*too large for float32"):
        data.load_csv(p, target="y")
    with pytest.raises(ValueError, match=r"X, row 1, column 'x0'"):
        data.from_arrays(np.array([[1.0], [1e300], [3.0]]), [1, 2, 3])


FITS = 3.4028e38  # above the 3.4e38 the served contract used to stop at, below float32's largest
BEYOND = 3.4028235e38  # above float32's largest; float32 rounds it down to the largest, not to inf


def _served(values: list, card: dict) -> list:
    """Return the flat values the served contract accepts from a body of `values` in each body form, or the message of
    the first refusal."""
    from aiaas_torch.handlers.aiaas_contract import ContractError, parse_request

    n = len(values)
    bodies = [{"instances": [[v] for v in values]}, [[v] for v in values] * 40,  # the batch path checks 40n rows in one pass
              {"inputs": [{"name": "input", "shape": [n, 1], "datatype": "FP32", "data": values}]}]  # fmt: skip
    out = []
    try:
        for body in bodies:
            out += [x for row in parse_request(json.dumps(body), card).rows for x in row]
    except ContractError as e:
        return [str(e)]
    return out


def test_a_value_float32_holds_trains_and_serves_and_one_beyond_it_is_refused_by_both(tmp_path):
    # issue 24: training took |x| up to float32's largest, the served tabular contract only up to 3.4e38
    import torch

    from aiaas_torch.handlers.contract_common import FLOAT32_MAX
    from aiaas_torch.openapi import card_schemas

    top = float(torch.finfo(torch.float32).max)
    assert FLOAT32_MAX == top and 3.4e38 < FITS < top < BEYOND and float(np.float32(BEYOND)) == top
    p = tmp_path / "d.csv"
    p.write_text(f"a,y\n1,1\n{FITS!r},2\n-{FITS!r},3\n")
    ds = data.load_csv(p, "y")
    assert ds.X[1:, 0].tolist() == [np.float32(FITS), -np.float32(FITS)]
    assert data.from_arrays([[1.0], [FITS]], [1.0, 2.0]).X[1, 0] == np.float32(FITS)
    card = {"input": {"features": [{"name": "a", "kind": "numeric", "min": 1.0, "max": 3.0, "mean": 2.0}]},
            "output": {"target": "y", "task": "regression"}}  # fmt: skip
    assert _served([FITS, -FITS], card) == [FITS, -FITS] * 42
    assert card_schemas(card)["Row"]["prefixItems"][0]["maximum"] == top  # what the OpenAPI document promises

    p.write_text(f"a,y\n1,1\n{BEYOND!r},2\n")
    with pytest.raises(ValueError, match=r"line 3, column 'a': '3.4028235e\+38' is too large for float32"):
        data.load_csv(p, "y")
    with pytest.raises(ValueError, match=r"X, row 1, column 'x0': 3.4028235e\+38 is too large for float32"):
        data.from_arrays([[1.0], [BEYOND]], [1.0, 2.0])
    refused = _served([1.0, BEYOND], card)
    assert len(refused) == 1 and "not a finite float32 number" in refused[0], refused
    tensor_card = {"input": {"tensors": [{"name": "input", "dtype": "float32", "shape": [-1, 1], "min": 1.0, "max": 3.0}]},
                   "output": {"task": "tensor", "tensors": [{"name": "y", "dtype": "float32", "shape": [-1, 1]}]}}  # fmt: skip
    from aiaas_torch.handlers.aiaas_contract import ContractError, parse_request  # an imported model's float32 input

    assert parse_request(json.dumps({"instances": [[FITS], [-FITS]]}), tensor_card).inputs == {"input": [[FITS], [-FITS]]}
    with pytest.raises(ContractError, match=r"instances\[0\] value 0: 3.4028235e\+38 is not a finite float32 number"):
        parse_request(json.dumps({"instances": [[BEYOND]]}), tensor_card)


def test_a_target_beyond_float32_is_refused_where_it_is_read_not_turned_into_inf(tmp_path):
    # a regression target is float32: 1e39 became inf and training failed with "diverged" far from the cause
    p = tmp_path / "d.csv"
    p.write_text(f"a,y\n1,1\n2,{FITS!r}\n3,1e39\n")
    with pytest.raises(ValueError, match=r"line 4, column 'y': '1e39' is too large for float32"):
        data.load_csv(p, "y")
    with pytest.raises(ValueError, match=r"y, row 2: 1e\+39 is too large for float32"):
        data.from_arrays([[1.0], [2.0], [3.0]], [1.0, FITS, 1e39])
    assert data.from_arrays([[1.0], [2.0]], [1.0, FITS], task="regression").y[1] == np.float32(FITS)
