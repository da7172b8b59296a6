"""MedMNIST npz: official splits, grey/RGB, multi-class and multi-label targets."""

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
    write_medmnist(tmp_path / "bloodmnist.npz")
    d = load_dataset(f"medmnist:{tmp_path}")
    assert d.info.name == "bloodmnist" and d.info.num_classes == 9  # labels reach 8


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
    with pytest.raises(DatasetError, match="cannot read arrays"):
        load_dataset(f"medmnist:{tmp_path / 'pathmnist.npz'}")
