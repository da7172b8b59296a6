"""CelebA: official partition, one attribute -> 2 classes, or all 40 as multi-label."""

from pathlib import Path

import numpy as np
import pytest
import torch
from datafakes import CELEBA_ATTRS, Written, as_uint8_hwc, nearest_colour, write_celeba

from mergelab.data import DatasetError, DatasetNotFoundError, ImageSpec, load_dataset


def _colour_index(w: Written) -> tuple[list[np.ndarray], list[tuple[str, np.ndarray]]]:
    """All written images (for colour matching) with their partition and attributes."""
    imgs, meta = [], []
    for s in ("train", "val", "test"):
        imgs += w.images[s]
        meta += [(s, v) for v in w.labels[s]]
    return imgs, meta


@pytest.mark.parametrize("attribute", ["Smiling", "Male"])
def test_official_partition_and_attribute_labels(tmp_path: Path, attribute: str) -> None:
    w = write_celeba(tmp_path)
    d = load_dataset(f"celeba:{tmp_path}:{attribute}")
    info = d.info
    assert (info.num_classes, info.channels, info.multilabel) == (2, 3, False)
    assert info.image_size == (10, 8)  # native H x W, not square
    assert d.classes == (f"not {attribute}", attribute)
    assert [d.size(s) for s in ("train", "val", "test")] == [8, 3, 4]
    col = CELEBA_ATTRS.index(attribute)
    imgs, meta = _colour_index(w)
    for split in ("train", "val", "test"):
        targets = []
        for img, label in d.split(split, None):
            assert img.shape == (3, 10, 8)
            targets.append(int(label))
        expected = [int(v[col] == 1) for v in w.labels[split]]
        assert targets == expected  # file order within each partition
        for img, label in d.split(split, ImageSpec(3, 8, normalize=False)):
            j = nearest_colour(as_uint8_hwc(img), imgs)
            assert meta[j][0] == split and int(meta[j][1][col] == 1) == int(label)


def test_attribute_option_and_all_attributes(tmp_path: Path) -> None:
    w = write_celeba(tmp_path)
    d = load_dataset(f"celeba:{tmp_path / 'celeba'}", attribute="Young")
    col = CELEBA_ATTRS.index("Young")
    assert d.targets("test").tolist() == [int(v[col] == 1) for v in w.labels["test"]]
    multi = load_dataset(f"celeba:{tmp_path}", attribute="all")
    assert multi.info.multilabel and multi.info.num_classes == 40
    _, y = multi.split("val")[2]
    assert y.dtype == torch.float32
    assert y.tolist() == (w.labels["val"][2] == 1).astype(float).tolist()


def test_unknown_attribute_lists_names(tmp_path: Path) -> None:
    write_celeba(tmp_path)
    with pytest.raises(DatasetError, match=r"unknown attribute 'Smiles'.*Smiling"):
        load_dataset(f"celeba:{tmp_path}:Smiles")


def test_missing_partition_file_named(tmp_path: Path) -> None:
    w = write_celeba(tmp_path)
    (w.root / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"list_eval_partition\.txt"):
        load_dataset(f"celeba:{tmp_path}")


def test_missing_image_named(tmp_path: Path) -> None:
    w = write_celeba(tmp_path)
    (w.root / "img_align_celeba" / "000005.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"000005\.jpg"):
        load_dataset(f"celeba:{tmp_path}")
