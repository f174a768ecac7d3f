"""A model chosen by `select`, packaged and served by a real TorchServe: its leaderboard is in the served card."""

from __future__ import annotations

import pytest

from aiaas_torch.card import read_card

pytestmark = pytest.mark.serving


def test_served_card_of_a_selected_model_holds_its_leaderboard(served, client):
    card = client.describe("selected")[0]["customizedMetadata"]
    local = read_card(served.selected)
    sel, mine = card["selection"], local["selection"]
    # TorchServe's frontend re-serializes the card and drops members whose value is null (measured: the budget's
    # unset limits arrive as {}), so compare what the leaderboard says, not the section byte for byte
    key = lambda s: [(e["rank"], e["params"], e["status"], e.get("mean"), e.get("scores"), e.get("deployed")) for e in s["leaderboard"]]
    assert key(sel) == key(mine)
    assert (sel["chosen"], sel["how"], sel["test_score"]) == (mine["chosen"], mine["how"], mine["test_score"])
    assert sel["selected"] is True and sel["metric"] == "accuracy"
    assert [e["rank"] for e in sel["leaderboard"]] == [1, 2, 3]
    assert sum("deployed" in e for e in sel["leaderboard"]) == 2  # the two finalists' deployed figures
    assert card["model"]["spec"]["kind"] == sel["chosen"]["params"]["model"]
    assert card["metrics"]["test"]["accuracy"] == pytest.approx(sel["test_score"])
    out = client.predict("selected", {"instances": [{"a": 2.0, "b": -2.0}, {"a": -2.0, "b": 2.0}]})
    assert out["predictions"] == ["up", "down"]  # the chosen model answers, not only its card
