"""MedMNIST npz: official splits, grey/RGB, multi-class and multi-label targets."""

import os
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from datafakes import write_medmnist

from mergelab.data import DatasetError, DatasetNotFoundError, ImageSpec, as_tensors, load_dataset


def test_pathmnist_rgb_official_splits_pixels_labels(tmp_path: Path) -> None:
    arrays = write_medmnist(tmp_path / "pathmnist.npz", sizes=(30, 10, 12))
    d = load_dataset(f"medmnist:{tmp_path / 'pathmnist.npz'}")
    info = d.info
    assert (info.name, info.num_classes, info.channels, info.image_size) == (
        "pathmnist", 9, 3, (28, 28))  # fmt: skip
    assert not info.multilabel
    assert [d.size(s) for s in ("train", "val", "test")] == [30, 10, 12]
    for split in ("train", "val", "test"):
        xs, ys = as_tensors(d.split(split, ImageSpec(3, 28, normalize=False)))
        expected = torch.from_numpy(arrays[f"{split}_images"]).permute(0, 3, 1, 2) / 255.0
        assert torch.allclose(xs, expected, atol=1e-6)
        assert ys.dtype == torch.int64
        assert ys.tolist() == arrays[f"{split}_labels"][:, 0].tolist()
    train = arrays["train_images"].reshape(-1, 3) / 255.0
    np.testing.assert_allclose(info.mean, train.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(info.std, train.std(axis=0), atol=1e-5)


def test_grey_dermamnist_by_folder_and_flavour(tmp_path: Path) -> None:
    arrays = write_medmnist(tmp_path / "dermamnist.npz", rgb=False, n_classes=5)
    write_medmnist(tmp_path / "pathmnist.npz")
    d = load_dataset(f"dermamnist:{tmp_path}")
    assert d.info.channels == 1 and d.info.num_classes == 7  # published count, not max+1
    x, y = d.split("test", ImageSpec(1, 28, normalize=False))[4]
    assert torch.allclose(x[0], torch.from_numpy(arrays["test_images"][4]) / 255.0)
    assert int(y) == int(arrays["test_labels"][4, 0])
    x3, _ = d.split("test", ImageSpec(3, 56))[4]
    assert x3.shape == (3, 56, 56)


def test_chestmnist_multilabel_targets(tmp_path: Path) -> None:
    arrays = write_medmnist(tmp_path / "chestmnist.npz", rgb=False, num_labels=14)
    d = load_dataset(f"chestmnist:{tmp_path / 'chestmnist.npz'}")
    assert d.info.multilabel and d.info.num_classes == 14
    _, ys = as_tensors(d.split("val"))
    assert ys.dtype == torch.float32 and ys.shape == (10, 14)
    assert np.array_equal(ys.numpy(), arrays["val_labels"].astype(np.float32))


def test_medmnist_folder_with_one_npz(tmp_path: Path) -> None:
    write_medmnist(tmp_path / "bloodmnist.npz", n_classes=8)
    d = load_dataset(f"medmnist:{tmp_path}")
    assert d.info.name == "bloodmnist" and d.info.num_classes == 8


def test_out_of_range_labels_are_named_not_new_classes(tmp_path: Path) -> None:
    path = tmp_path / "bloodmnist.npz"
    arrays = write_medmnist(path, n_classes=8)
    arrays["val_labels"][[1, 4]] = [[8], [11]]
    np.savez(path, **arrays)
    with pytest.raises(DatasetError) as err:
        load_dataset(f"medmnist:{path}")
    assert str(err.value) == (
        f"{path}: val_labels holds out-of-range values [8, 11] "
        "(2 of 10; allowed: class ids 0-7 for bloodmnist)"
    )


def test_multilabel_values_must_be_zero_or_one(tmp_path: Path) -> None:
    path = tmp_path / "chestmnist.npz"
    arrays = write_medmnist(path, rgb=False, num_labels=14)
    arrays["test_labels"][0, 3] = 2
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=r"test_labels holds out-of-range values \[2\]"):
        load_dataset(f"medmnist:{path}")


def test_float_labels_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pathmnist.npz"
    arrays = write_medmnist(path)
    arrays["train_labels"] = arrays["train_labels"] + 0.5
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match="train_labels must be integer class ids, got float64"):
        load_dataset(f"medmnist:{path}")


def test_garbage_and_lying_npz_are_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "pathmnist.npz"
    path.write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(DatasetError, match=r"pathmnist\.npz: not a readable \.npz archive"):
        load_dataset(f"medmnist:{path}")
    arrays = write_medmnist(path)
    huge = np.lib.format.header_data_from_array_1_0(arrays["train_images"])
    huge["shape"] = (80_000, 28, 28, 3, 330)  # about 58 GiB claimed
    with zipfile.ZipFile(path, "w") as z:
        for name, value in arrays.items():
            with z.open(f"{name}.npy", "w") as fh:
                if name == "train_images":
                    np.lib.format.write_array_header_1_0(fh, huge)
                    fh.write(value.tobytes())
                else:
                    np.lib.format.write_array(fh, value)
    with pytest.raises(DatasetError, match=r"array 'train_images' claims \d+ bytes"):
        load_dataset(f"medmnist:{path}")


def test_missing_key_is_named(tmp_path: Path) -> None:
    arrays = write_medmnist(tmp_path / "x.npz")
    del arrays["val_labels"]
    np.savez(tmp_path / "pathmnist.npz", **arrays)
    with pytest.raises(DatasetError, match="val_labels"):
        load_dataset(f"pathmnist:{tmp_path / 'pathmnist.npz'}")


def test_missing_file_is_named(tmp_path: Path) -> None:
    write_medmnist(tmp_path / "dermamnist.npz")
    with pytest.raises(DatasetNotFoundError, match=r"pathmnist\.npz"):
        load_dataset(f"pathmnist:{tmp_path}")
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset(f"medmnist:{tmp_path / 'nope.npz'}")


def test_object_arrays_are_not_unpickled(tmp_path: Path) -> None:
    arrays = write_medmnist(tmp_path / "x.npz")
    arrays["train_labels"] = np.array([object()] * 30, dtype=object)
    np.savez(tmp_path / "pathmnist.npz", **arrays)
    with pytest.raises(DatasetError, match="'train_labels' holds Python objects; refused"):
        load_dataset(f"medmnist:{tmp_path / 'pathmnist.npz'}")


def test_a_fifo_is_refused_without_reading_it(tmp_path: Path) -> None:
    fifo = tmp_path / "pathmnist.npz"
    os.mkfifo(fifo)
    signal.alarm(10)  # opening a FIFO for reading would block until a writer appears
    try:
        with pytest.raises(DatasetError, match=r"pathmnist\.npz: a FIFO"):
            load_dataset(f"pathmnist:{tmp_path}")
    finally:
        signal.alarm(0)
