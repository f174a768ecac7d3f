"""The one-pass check of plain tabular batches agrees with the per-value checks: same rows, same counts, same messages."""

from __future__ import annotations

import json
import math
import random
import zlib

import pytest

from aiaas_torch.handlers import aiaas_contract as c
from aiaas_torch.handlers.aiaas_contract import ContractError

EDGES = [-0.0, 0.0, 0, 1, -7, 3.4e38, -3.4e38, 2**60, -(2**70), 1e-300, 5e-324]


def _card(width: int, rng: random.Random, max_rows: int = 500) -> dict:
    feats = []
    for j in range(width):
        lo = rng.uniform(-5, 5)
        feats.append({"name": f"f{j}", "kind": "numeric", "min": lo, "max": lo + rng.uniform(0, 5), "mean": lo})
    return {"input": {"features": feats, "max_rows": max_rows}, "output": {"target": "y", "task": "regression"}}


def _value(rng: random.Random):
    r = rng.random()
    if r < 0.2:
        return rng.choice(EDGES)
    if r < 0.35:
        return rng.randint(-20, 20)  # ints, many outside the range
    return rng.uniform(-15, 15)  # about half outside the range


def _batch(card: dict, rng: random.Random, n: int) -> list:
    return [[_value(rng) for _ in card["input"]["features"]] for _ in range(n)]


def _same(fast: c.ParsedRequest, slow: c.ParsedRequest) -> None:
    assert fast is not None, "the one-pass check declined a plain batch"
    # repr tells -0.0 from 0.0 and shows every digit
    assert [list(map(repr, r)) for r in fast.rows] == [list(map(repr, r)) for r in slow.rows]
    assert (fast.fmt, fast.out_of_range, fast.imputed, fast.unseen, fast.v2_id) == (slow.fmt, slow.out_of_range, slow.imputed, slow.unseen, slow.v2_id)
    assert list(fast.inputs) == list(slow.inputs) and fast.inputs[next(iter(fast.inputs))] == slow.rows


@pytest.mark.parametrize("seed", range(12))
def test_random_plain_batches_give_the_per_value_rows_and_counts(seed):
    rng = random.Random(seed)
    card = _card(rng.randint(1, 12), rng)
    rows = _batch(card, rng, rng.randint(1, 60))
    names = [f["name"] for f in card["input"]["features"]]
    named = [dict(rng.sample(list(zip(names, r)), len(r))) for r in rows]  # keys in any order
    bodies = [{"instances": rows}, rows, {"instances": named}, rows[0]]
    for body in bodies:
        slow = c._parse_rows(json.loads(json.dumps(body)), card, 500)
        assert slow.out_of_range == sum(1 for r in slow.rows for v, f in zip(r, card["input"]["features"]) if not f["min"] <= v <= f["max"])
        _same(c._fast_parse(json.loads(json.dumps(body)), card, 500), slow)
        _same(c.parse_request(json.dumps(body).encode(), card), slow)


def _same_refusal(body, card: dict, limit: int) -> None:
    """Assert the one-pass check declines the body and parse_request refuses it with the per-value path's own message."""
    with pytest.raises(ContractError) as slow:
        c._parse_rows(body, card, limit)
    assert c._fast_parse(body, card, limit) is None
    with pytest.raises(ContractError) as got:
        c.parse_request(body, card)
    assert str(got.value) == str(slow.value)


BAD = [True, False, c._mark_constant("NaN"), c._mark_constant("-Infinity"), "1.5", None, 3.5e38, -1e39, 10**400,
       float("inf"), [1.0], {"v": 1}]  # fmt: skip


@pytest.mark.parametrize("bad", BAD, ids=repr)
@pytest.mark.parametrize("form", ["instances", "rows", "named"])
def test_one_bad_value_gives_exactly_the_per_value_message(bad, form):
    rng = random.Random(zlib.crc32(f"{bad!r} {form}".encode()))
    card = _card(6, rng)
    rows = _batch(card, rng, 20)
    rows[rng.randrange(20)][rng.randrange(6)] = bad
    names = [f["name"] for f in card["input"]["features"]]
    body = {"instances": [dict(zip(names, r)) for r in rows]} if form == "named" else {"instances": rows} if form == "instances" else rows
    _same_refusal(body, card, 500)


@pytest.mark.parametrize("change", ["short row", "long row", "missing name", "extra name", "too many rows", "mixed forms", "bare scalar row"])
def test_a_malformed_batch_gives_exactly_the_per_value_message(change):
    rng = random.Random(7)
    card = _card(4, rng, max_rows=30)
    rows = _batch(card, rng, 10)
    names = [f["name"] for f in card["input"]["features"]]
    named = [dict(zip(names, r)) for r in rows]
    if change == "short row":
        rows[3] = rows[3][:-1]
    elif change == "long row":
        rows[9].append(1.0)
    elif change == "missing name":
        del named[2]["f1"]
    elif change == "extra name":
        named[5]["f9"] = 1.0
    elif change == "too many rows":
        rows = rows * 4
    elif change == "mixed forms":
        rows[4] = named[4]
    else:
        rows[1] = 2.0
    body = {"instances": named if "name" in change else rows}
    _same_refusal(body, card, 30)


def test_a_card_changed_in_place_is_checked_against_its_new_ranges():
    card = _card(2, random.Random(1))
    body = {"instances": [[100.0, 100.0]]}
    assert c.parse_request(body, card).out_of_range == 2
    card["input"]["features"][0]["max"] = 1000.0
    assert c.parse_request(body, card).out_of_range == 1
    card["input"]["tensor_name"] = "table"
    assert list(c.parse_request(body, card).inputs) == ["table"] == [t["name"] for t in c.input_tensors(card)]
    card["input"]["features"][1]["kind"] = "categorical"
    card["input"]["features"][1]["categories"] = ["a"]
    assert c._fast_parse(body, card, 500) is None


def test_cards_with_categories_or_imputed_features_take_the_per_value_checks():
    rng = random.Random(3)
    for extra in ({"impute": "mean"}, {"kind": "categorical", "categories": ["a", "b"]}):
        card = _card(3, rng)
        card["input"]["features"][1].update(extra)
        assert c._fast_parse({"instances": [[1.0, 0.0, 1.0]]}, card, 500) is None
    assert math.isnan(c.parse_request({"instances": [[1.0, None, 1.0]]}, _imputed(rng)).rows[0][1])


def _imputed(rng):
    card = _card(3, rng)
    card["input"]["features"][1]["impute"] = "mean"
    return card


def test_without_numpy_every_batch_takes_the_per_value_checks(monkeypatch):
    monkeypatch.setattr(c, "np", None)
    card = _card(3, random.Random(5))
    body = {"instances": [[1, -0.0, 2.5]]}
    assert c._fast_parse(body, card, 500) is None
    assert [list(map(repr, r)) for r in c.parse_request(body, card).rows] == [["1.0", "-0.0", "2.5"]]
