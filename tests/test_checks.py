"""``output_folder`` with ``writes``: a user's file of a name mergelab writes is never
replaced, nothing is created by the check, and a failed command leaves no empty folder."""

from __future__ import annotations

import re

import pytest

from mergelab.checks import (
    OUTPUT_MARK,
    claim_output_folder,
    output_folder,
    removed_if_left_empty,
)
from mergelab.errors import MergelabError

WRITES = ("results.csv", "figures/*.png")


def test_a_users_file_of_our_name_is_refused_naming_it_and_the_option(tmp_path):
    (tmp_path / "results.csv").write_text("mine")
    with pytest.raises(MergelabError) as info:
        output_folder(tmp_path, "--out", writes=WRITES)
    assert str(info.value) == (
        f"{tmp_path / 'results.csv'}: not written by mergelab, which would replace it; "
        f"move it away or choose another --out"
    )
    assert (tmp_path / "results.csv").read_text() == "mine"
    assert not (tmp_path / OUTPUT_MARK).exists()


def test_patterns_match_files_in_subfolders(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "holiday.png").write_bytes(b"png")
    with pytest.raises(MergelabError, match=re.escape(str(tmp_path / "figures" / "holiday.png"))):
        output_folder(tmp_path, "--out", writes=WRITES)


def test_other_files_and_files_mergelab_recognises_are_fine(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "results.csv").write_text("ours")
    assert output_folder(tmp_path, writes=WRITES, ours=lambda p: True) == tmp_path
    output_folder(tmp_path, writes=("report.html",))


def test_a_marked_folder_may_have_our_names_replaced(tmp_path):
    (tmp_path / "results.csv").write_text("from an earlier run")
    claim_output_folder(tmp_path, "compare")
    assert (tmp_path / OUTPUT_MARK).read_text() == "# mergelab compare output\n"
    assert output_folder(tmp_path, writes=WRITES) == tmp_path


def test_the_check_creates_nothing_and_claiming_creates_the_folder(tmp_path):
    out = tmp_path / "new" / "deep"
    assert output_folder(out, writes=WRITES) == out
    assert list(tmp_path.iterdir()) == []
    claim_output_folder(out, "study")
    assert (out / OUTPUT_MARK).is_file()


def test_a_folder_under_a_file_or_a_read_only_folder_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(MergelabError, match=r"^--out .*: cannot create it \(.* is a file\)$"):
        output_folder(tmp_path / "f" / "sub", writes=WRITES)
    with pytest.raises(MergelabError, match=r"^--cache-dir .*/f: is a file, not a folder$"):
        output_folder(tmp_path / "f", "--cache-dir", writes=())


def test_without_writes_the_folder_is_created_as_before(tmp_path):
    out = output_folder(tmp_path / "a" / "b")
    assert out.is_dir() and not (out / OUTPUT_MARK).exists()


def test_a_failure_removes_only_the_empty_folders_it_created(tmp_path):
    new, kept = tmp_path / "new" / "deep", tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(KeyboardInterrupt), removed_if_left_empty(new, kept, None):
        claim_output_folder(new, "compare")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    with pytest.raises(RuntimeError), removed_if_left_empty(new):
        claim_output_folder(new, "compare")
        (new / "results.csv").write_text("a result")
        raise RuntimeError
    assert (new / "results.csv").is_file()
