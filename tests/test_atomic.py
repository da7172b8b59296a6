"""Atomic writes: a reader sees the old file or the whole new one; nothing is left behind."""

from __future__ import annotations

import re
import stat

import numpy as np
import pytest

from mergelab.atomic import atomic_write, atomic_write_text
from mergelab.errors import MergelabError
from mergelab.results import read_outcomes, write_outcomes


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")

    def half(fh):
        fh.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(MergelabError) as info:
        atomic_write(path, half)
    assert str(info.value) == f"{path}: cannot write (No space left on device)"
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_an_error_about_another_file_keeps_that_files_name(tmp_path):
    """A writer copying from a missing source: the source is named, not the target."""
    missing = tmp_path / "cache" / "gone.bin"

    def copy(fh):
        fh.write(missing.read_bytes())

    with pytest.raises(FileNotFoundError) as info:
        atomic_write(tmp_path / "out" / "a.bin", copy)
    assert info.value.filename == str(missing)
    assert list((tmp_path / "out").iterdir()) == []


def test_disk_full_is_one_line_naming_the_file_through_the_cli(tmp_path, monkeypatch, capsys):
    """Every caller gets the file name: here ``mergelab demo`` writing its first config."""
    import os

    from mergelab.cli import main

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert main(["demo", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"mergelab: error: {tmp_path / 'd' / '.mergelab-output'}: cannot write "
        f"(No space left on device)"
    )
    assert not (tmp_path / "d").exists()  # made by the failed command, so removed


def test_new_files_are_readable_by_all(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "a.txt", "é")
    assert path.read_bytes() == "é".encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_outcomes_round_trip_and_a_damaged_file_is_one_error(tmp_path):
    path = tmp_path / "outcomes.npz"
    assert read_outcomes(path) == {}
    write_outcomes({"b": np.array([1, 0], np.uint8), "a": np.ones(3)}, path)
    got = read_outcomes(path)
    assert sorted(got) == ["a", "b"] and got["b"].tolist() == [1, 0]
    path.write_bytes(b"garbage")
    with pytest.raises(
        MergelabError, match=f"^{re.escape(str(path))}: not a readable .npz archive"
    ):
        read_outcomes(path)
