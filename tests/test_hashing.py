"""Content hashes: one definition per kind, equal wherever the same content is hashed."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

from mergelab.errors import MergelabError
from mergelab.hashing import (
    arrays_sha256,
    checkpoint_sha256,
    discard,
    file_sha256,
    state_dict_sha256,
)
from mergelab.io import SafetensorsFile, save_state_dict
from mergelab.io.checkpoint import ArrayCheckpoint


def test_file_hash_is_of_the_bytes_and_follows_a_rewrite(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"one")
    assert file_sha256(path) == hashlib.sha256(b"one").hexdigest()
    path.unlink()
    path.write_bytes(b"two")  # a new file under the old name, same size
    os.utime(path, ns=(1, 1))
    assert file_sha256(path) == hashlib.sha256(b"two").hexdigest()
    with pytest.raises(MergelabError, match="no such file"):
        file_sha256(tmp_path / "missing")


def test_folder_hash_names_its_files(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x").write_bytes(b"1")
    before = file_sha256(tmp_path / "m")
    (tmp_path / "m" / "x").rename(tmp_path / "m" / "y")
    assert file_sha256(tmp_path / "m") != before


def test_checkpoint_hash_is_the_same_in_memory_and_on_disk_and_ignores_metadata(tmp_path):
    state = {
        "w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "h": torch.ones(3, dtype=torch.bfloat16),
        "n": torch.tensor(7),
    }
    path = save_state_dict(state, tmp_path / "a.safetensors", metadata={"note": "x"})
    other = save_state_dict(state, tmp_path / "b.safetensors", metadata={"note": "y"})
    digest = checkpoint_sha256(ArrayCheckpoint(state))
    with SafetensorsFile(path) as a, SafetensorsFile(other) as b:
        assert checkpoint_sha256(a) == checkpoint_sha256(b) == digest
    state["w"][0, 0] = 0.5
    assert checkpoint_sha256(ArrayCheckpoint(state)) != digest
    assert state_dict_sha256(state) != state_dict_sha256({**state, "w": state["w"].T})


def test_array_hash_covers_dtype_and_shape_not_only_bytes():
    a = np.zeros((2, 3), np.float32)
    digest = arrays_sha256({"a": a})
    assert arrays_sha256({"a": a.reshape(3, 2)}) != digest
    assert arrays_sha256({"a": a.view(np.int32)}) != digest
    assert arrays_sha256({"b": a}) != digest
    assert arrays_sha256({"a": a.copy()}) == digest


def test_discard_says_one_line_and_removes(tmp_path, capsys):
    path = tmp_path / "entry.npz"
    path.write_bytes(b"x")
    discard(path, f"{path}: damaged")
    assert capsys.readouterr().err == (
        f"mergelab: warning: {path}: damaged; removed, recomputing it\n"
    )
    assert not path.exists()
    discard(path, "gone already")  # an absent file is no error
