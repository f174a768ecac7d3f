"""A model chosen by `select`, packaged and served by a real TorchServe: its leaderboard is in the served card."""

from __future__ import annotations

import pytest

from aiaas_torch.card import read_card

pytestmark = pytest.mark.serving


def test_served_card_of_a_selected_model_holds_its_leaderboard(served, client):
    card = client.describe("selected")[0]["customizedMetadata"]
    local = read_card(served.selected)
    sel = card["selection"]
    assert sel == local["selection"]  # the whole section travelled: leaderboard, choice, how, budget
    assert sel["selected"] is True and sel["metric"] == "accuracy"
    assert [e["rank"] for e in sel["leaderboard"]] == [1, 2, 3]
    assert sum("deployed" in e for e in sel["leaderboard"]) == 2  # the two finalists' deployed figures
    assert card["model"]["spec"]["kind"] == sel["chosen"]["params"]["model"]
    assert card["metrics"]["test"]["accuracy"] == pytest.approx(sel["test_score"])
    out = client.predict("selected", {"instances": [{"a": 2.0, "b": -2.0}, {"a": -2.0, "b": 2.0}]})
    assert out["predictions"] == ["up", "down"]  # the chosen model answers, not only its card
