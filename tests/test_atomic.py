"""Atomic writes (aiaas_torch.atomic): a file or a directory lands complete or not at all."""

from __future__ import annotations

import json
import os

import pytest

from aiaas_torch.atomic import staging_dir, swap_into_place, write_atomic, write_json_atomic, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "info.json"
    write_text_atomic(target, "old\n")

    def half(f):
        f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, half)
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["info.json"]


def test_json_is_indented_and_refuses_nan_without_touching_the_file(tmp_path):
    target = tmp_path / "card.json"
    write_json_atomic(target, {"a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2]} and target.read_text().endswith("\n")
    with pytest.raises(ValueError):
        write_json_atomic(target, {"a": float("nan")})
    assert json.loads(target.read_text()) == {"a": [1, 2]} and os.listdir(tmp_path) == ["card.json"]


def test_binary_writes(tmp_path):
    target = tmp_path / "b.bin"
    write_atomic(target, lambda f: f.write(b"\x00\xff"), binary=True)
    assert target.read_bytes() == b"\x00\xff"


def test_staging_dir_is_removed_on_failure_and_the_swap_replaces_only_what_it_may(tmp_path):
    target = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with staging_dir(target) as staging:
            (staging / "x").write_text("1")
            raise RuntimeError("crash")
    assert os.listdir(tmp_path) == []
    with staging_dir(target) as staging:
        (staging / "x").write_text("1")
        swap_into_place(staging, target, lambda d: False)  # nothing there yet
    assert (target / "x").read_text() == "1"
    with pytest.raises(ValueError, match="refusing to replace it"):
        with staging_dir(target) as staging:
            swap_into_place(staging, target, lambda d: False)
    assert (target / "x").read_text() == "1" and os.listdir(tmp_path) == ["run"]
    with staging_dir(target) as staging:
        (staging / "y").write_text("2")
        swap_into_place(staging, target, lambda d: (d / "x").exists())
    assert os.listdir(target) == ["y"] and os.listdir(tmp_path) == ["run"]
