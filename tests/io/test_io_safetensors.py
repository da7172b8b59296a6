"""The lazy safetensors reader and the streaming writer, against the reference library."""

from __future__ import annotations

import json
import os
import signal
import struct

import numpy as np
import pytest
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as reference_load
from safetensors.numpy import save as reference_save
from safetensors.torch import load_file, save_file

from mergelab.cli import main
from mergelab.errors import MergeError, MergelabError
from mergelab.io import SafetensorsFile, load_state_dict, open_checkpoint, save_state_dict
from mergelab.io.writer import SafetensorsWriter


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(5, 7, generator=g),
        "f16": torch.randn(3, generator=g).half(),
        "bf16": torch.randn(4, 2, generator=g).bfloat16(),
        "f64": torch.randn(2, 2, generator=g).double(),
        "i64": torch.arange(6).reshape(2, 3),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5),
    }


def test_reads_what_the_reference_writer_wrote(tmp_path):
    tensors = sample_tensors()
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path))
    loaded = load_state_dict(path)
    assert set(loaded) == set(tensors)
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype
        assert torch.equal(loaded[name], value), name


def test_partial_reads_are_flat_ranges(tmp_path):
    value = torch.arange(100, dtype=torch.float32).reshape(10, 10)
    path = tmp_path / "x.safetensors"
    save_file({"w": value}, str(path))
    with SafetensorsFile(path) as f:
        np.testing.assert_array_equal(f.read("w", 13, 37), value.flatten()[13:37].numpy())
        assert f.read("w", 5, 5).size == 0
        with pytest.raises(IndexError):
            f.read("w", 90, 101)


def test_the_reference_library_reads_what_we_wrote(tmp_path):
    tensors = sample_tensors()
    path = save_state_dict(tensors, tmp_path / "ours.safetensors", metadata={"who": "me"})
    loaded = load_file(str(path))
    for name, value in tensors.items():
        assert torch.equal(loaded[name], value), name
    assert SafetensorsFile(path).metadata["who"] == "me"


def test_sharded_folder_with_index(tmp_path):
    tensors = {f"t{i}": torch.full((100,), float(i)) for i in range(6)}
    out = tmp_path / "model"
    infos = list(
        SafetensorsFile(save_state_dict(tensors, tmp_path / "a.safetensors")).infos.values()
    )
    writer = SafetensorsWriter(out, infos, max_shard_bytes=900)
    for name, value in tensors.items():
        writer.write(name, 0, value.numpy())
    writer.close()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert set(index["weight_map"]) == set(tensors)
    back = load_state_dict(out)  # the folder, through its index
    assert all(torch.equal(back[n], v) for n, v in tensors.items())
    for shard in shards:  # every shard is a valid file on its own
        assert set(load_file(str(out / shard))) <= set(tensors)


def _write_header(path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_truncated_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"w": torch.randn(64)}, str(path))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(MergeError, match=r"t\.safetensors.*truncated"):
        open_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"abc", "not a safetensors file"),
        (struct.pack("<Q", 10**12) + b"{}", "corrupt or truncated"),
        (struct.pack("<Q", 5) + b"{not json", "corrupt safetensors header"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    ],
)
def test_corrupt_headers_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(MergeError, match=message) as err:
        open_checkpoint(path)
    assert "bad.safetensors" in str(err.value)


def test_inconsistent_offsets_and_dtypes_are_refused(tmp_path):
    path = tmp_path / "gap.safetensors"
    _write_header(path, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)
    with pytest.raises(MergeError, match="overlap or leave a gap"):
        open_checkpoint(path)
    _write_header(path, {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8)
    with pytest.raises(MergeError, match=r"'a' header says shape \[3\]"):
        open_checkpoint(path)
    _write_header(path, {"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    with pytest.raises(MergeError, match="'a' has a malformed header entry: unknown dtype 'Q9'"):
        open_checkpoint(path)


def test_missing_path_and_unknown_format(tmp_path):
    with pytest.raises(MergeError, match="no such file"):
        open_checkpoint(tmp_path / "nope.safetensors")
    other = tmp_path / "weights.npy"
    other.write_bytes(b"x")
    with pytest.raises(MergeError, match="unknown checkpoint format"):
        open_checkpoint(other)
    empty = tmp_path / "folder"
    empty.mkdir()
    with pytest.raises(MergeError, match="folder holds no checkpoint"):
        open_checkpoint(empty)


def test_missing_shard_is_named(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}})
    )
    with pytest.raises(MergeError, match=r"shard model-00001-of-00002\.safetensors is missing"):
        open_checkpoint(tmp_path)


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ({**F32_2, "shape": "16"}, "shape must be a list of non-negative integers, got '16'"),
        ({**F32_2, "shape": [2.0]}, r"shape must be .* got \[2\.0\]"),
        ({**F32_2, "shape": [True, 2]}, r"shape must be .* got \[True, 2\]"),
        ({**F32_2, "shape": [-2]}, r"shape must be .* got \[-2\]"),
        ({**F32_2, "shape": [2**64]}, "shape must be a list of non-negative integers"),
        ({**F32_2, "data_offsets": ["0", "8"]}, r"data_offsets must be two non-negative integers"),
        ({**F32_2, "data_offsets": [0, 8, 8]}, r"data_offsets must be two .* got \[0, 8, 8\]"),
        ({**F32_2, "data_offsets": [8, 0]}, r"data_offsets \[8, 0\] end before they begin"),
        ({**F32_2, "dtype": "f32"}, "unknown dtype 'f32'"),
        ({"dtype": "F32", "shape": [2]}, "no 'data_offsets'"),
        (None, "expected an object, got None"),
    ],
)
def test_header_entries_are_checked_as_the_safetensors_library_checks_them(tmp_path, entry, why):
    path = tmp_path / "bad.safetensors"
    _write_header(path, {"w": entry}, b"\0" * 8)
    with pytest.raises(SafetensorError):  # the reference library refuses these bytes too
        reference_load(path.read_bytes())
    with pytest.raises(MergeError, match=rf"bad\.safetensors: tensor 'w' has a malformed .*{why}"):
        SafetensorsFile(path)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"__metadata__": {"n": 1}}', "__metadata__ must map names to strings"),
        (b'{"__metadata__": ""}', "__metadata__ must map names to strings"),
        (b'{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 0]}}', "NaN is not valid"),
        (b'{"\xff": 1}', "codec can't decode"),
    ],
)
def test_header_json_and_metadata_are_checked(tmp_path, raw, message):
    data = struct.pack("<Q", len(raw)) + raw
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(SafetensorError):
        reference_load(data)
    with pytest.raises(
        MergeError, match=rf"bad\.safetensors: corrupt safetensors header.*{message}"
    ):
        SafetensorsFile(path)


def test_a_repeated_tensor_name_is_named_itself(tmp_path):
    a = '"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    b = '"b": {"dtype": "F32", "shape": [1], "data_offsets": [%d, %d]}'
    raw = ("{" + ", ".join([a, b % (4, 8), b % (8, 12)]) + "}").encode()
    path = tmp_path / "dup.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 12)
    with pytest.raises(MergeError) as err:
        SafetensorsFile(path)
    assert str(err.value) == f"{path}: corrupt safetensors header: the name 'b' appears twice"


def test_unsigned_integer_dtypes_are_valid(tmp_path):
    arrays = {
        "u16": np.array([1, 65535], np.uint16),
        "u32": np.array([[7, 2**32 - 1]], np.uint32),
        "u64": np.array([2**64 - 1], np.uint64),
    }
    path = tmp_path / "u.safetensors"
    path.write_bytes(reference_save(arrays))
    with SafetensorsFile(path) as f:
        assert {n: i.dtype for n, i in f.infos.items()} == {
            "u16": "U16",
            "u32": "U32",
            "u64": "U64",
        }
        for name, value in arrays.items():
            np.testing.assert_array_equal(f.read_array(name), value)
    # and they are written back as the library reads them
    back = reference_load(save_state_dict(arrays, tmp_path / "out.safetensors").read_bytes())
    for name, value in arrays.items():
        np.testing.assert_array_equal(back[name], value)


def test_a_valid_dtype_mergelab_cannot_merge_is_named(tmp_path):
    path = tmp_path / "c.safetensors"
    path.write_bytes(reference_save({"z": np.ones(2, np.complex64)}))
    with pytest.raises(MergeError, match=r"tensor 'z' has dtype C64, which mergelab cannot read"):
        SafetensorsFile(path)


def test_a_fifo_is_refused_without_reading_it(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    signal.alarm(10)  # opening a FIFO for reading would block until a writer appears
    try:
        with pytest.raises(MergelabError, match=r"pipe\.safetensors: a FIFO"):
            SafetensorsFile(fifo)
    finally:
        signal.alarm(0)


def test_cli_reports_a_corrupt_header_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.safetensors"
    _write_header(path, {"w": {**F32_2, "shape": [2.9, 3]}}, b"\0" * 8)
    out = tmp_path / "out.safetensors"
    assert (
        main(["merge", "--method", "linear", "--models", str(path), str(path), "--out", str(out)])
        == 2
    )
    err = capsys.readouterr().err
    assert err == (
        f"mergelab: error: {path}: tensor 'w' has a malformed header entry: shape must be a "
        "list of non-negative integers, got [2.9, 3]\n"
    )
    assert not out.exists()
