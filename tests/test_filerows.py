"""Reading the rows of a file (aiaas_torch.filerows.RowReader): the form each chunk of CSV lines comes in.
Whole-file prediction through these chunks: tests/test_predict_file.py and tests/integration/test_predict_file_server.py."""

from __future__ import annotations

import numpy as np
import pytest

from aiaas_torch.errors import InputError
from aiaas_torch.filerows import RowReader

CARD = {"input": {"features": [{"name": "a"}, {"name": "b"}]}, "output": {"target": "y"}}


def _chunks(tmp_path, text: str, **kwargs) -> list:
    src = tmp_path / "rows.csv"
    src.write_text(text)
    return list(RowReader(src, CARD, chunk_rows=10, **kwargs))


def test_for_a_server_plain_numerals_come_as_their_own_text_unparsed_with_the_cells_on_demand(tmp_path):
    (chunk,) = _chunks(tmp_path, "a,b\n1,2\n-3.5e2,+4\n\n5., 6\n", arrays=False)
    assert chunk.text == ["1,2\n", "-3.5e2,+4\n", "5., 6\n"] and chunk.array is None and chunk.rows is None
    assert list(chunk.lines) == [2, 3, 5]
    assert chunk.cells().rows == [[1.0, 2.0], [-350.0, 4.0], [5.0, 6.0]]  # what the server is sent if JSON refuses "5."


def test_in_this_process_plain_numbers_come_as_one_array(tmp_path):
    (chunk,) = _chunks(tmp_path, "a,b\n1,2\n-3.5e2,+4\n")
    assert chunk.text is None and chunk.rows is None
    np.testing.assert_array_equal(chunk.array, [[1, 2], [-350, 4]])


@pytest.mark.parametrize("cell, value", [("null", "null"), ("true", "true"), ("Infinity", float("inf")), ('"2"', 2.0), ("[2]", "[2]"),
                                         ("é", "é")])
def test_a_cell_json_would_read_as_something_else_sends_the_chunk_cell_by_cell(tmp_path, cell, value):
    (chunk,) = _chunks(tmp_path, f"a,b\n1,2\n1,{cell}\n", arrays=False)
    assert chunk.text is None and chunk.array is None
    assert chunk.rows == [[1.0, 2.0], [1.0, value]]


def test_a_line_with_more_fields_than_the_header_is_named_not_read_in_part(tmp_path):
    """numpy reads the feature columns only: it once let a line's extra fields through, predicted from the first."""
    with pytest.raises(InputError, match=r"rows.csv, line 3: 3 fields, expected 2 as in the header"):
        _chunks(tmp_path, "a,b\n1,2\n1,2,3\n")
    with pytest.raises(InputError, match=r"rows.csv, line 3: 3 fields, expected 2 as in the header"):
        _chunks(tmp_path, "a,b\n1,2\n1,2,3\n", arrays=False)


class _Describes:
    """A stand-in for client.Client that only describes one model with this card."""

    def __init__(self, card: dict):
        self.card = card

    def describe(self, name, version=None, customized=True):
        return [{"customizedMetadata": self.card}]


@pytest.mark.parametrize("features, max_rows, rows", [(20, 10_000, 2_500), (1, 10_000, 10_000), (500, 10_000, 100),
                                                      (20, 50, 50), (100_000, 10_000, 1)])
def test_a_request_to_a_server_carries_about_50000_values_within_the_models_max_rows(features, max_rows, rows):
    from aiaas_torch.files import _Remote

    card = {"input": {"features": [{"name": f"f{i}"} for i in range(features)], "max_rows": max_rows}, "output": {"target": "y"}}
    assert _Remote(_Describes(card), "m", None).chunk_rows == rows
