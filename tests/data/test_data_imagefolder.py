"""ImageFolder and TinyImageNet layouts: labels, pixels, carved val, named errors."""

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from datafakes import (
    Written,
    as_uint8_hwc,
    nearest_colour,
    write_imagefolder,
    write_tinyimagenet,
)
from PIL import Image

from mergelab.data import (
    DatasetError,
    DatasetNotFoundError,
    DatasetSplits,
    ImageSpec,
    load_dataset,
)
from mergelab.errors import MergelabError

RAW12 = ImageSpec(channels=3, size=12, normalize=False)


def _check_items(
    d: DatasetSplits, split: str, lookup: dict[bytes, int], spec: ImageSpec
) -> set[bytes]:
    """Every item's pixels were written with the label it comes back with."""
    seen = set()
    for img, label in d.split(split, spec):
        key = as_uint8_hwc(img).tobytes()
        assert lookup[key] == int(label)
        seen.add(key)
    return seen


def _lookup(w: Written, *splits: str) -> dict[bytes, int]:
    return {
        img.tobytes(): lab
        for s in splits
        for img, lab in zip(w.images[s], w.labels[s], strict=True)
    }


def test_train_val_test_folders(tmp_path: Path) -> None:
    w = write_imagefolder(tmp_path / "shapes")
    d = load_dataset(f"imagefolder:{tmp_path / 'shapes'}")
    assert d.classes == ("cat", "dog", "eel")
    assert (d.info.name, d.info.num_classes, d.info.channels) == ("shapes", 3, 3)
    assert d.info.image_size == (12, 12)
    assert [d.size(s) for s in ("train", "val", "test")] == [30, 9, 12]
    for split in ("train", "val", "test"):
        lookup = _lookup(w, split)
        assert _check_items(d, split, lookup, RAW12) == set(lookup)


def test_no_val_folder_carves_val_from_train(tmp_path: Path) -> None:
    w = write_imagefolder(tmp_path, counts={"train": 10, "test": 2})
    d = load_dataset("imagefolder", root=tmp_path, seed=1, val_fraction=0.2)
    assert [d.size(s) for s in ("train", "val", "test")] == [24, 6, 6]
    train_lookup = _lookup(w, "train")
    seen = _check_items(d, "train", train_lookup, RAW12)
    seen_val = _check_items(d, "val", train_lookup, RAW12)
    assert not seen & seen_val and seen | seen_val == set(train_lookup)
    assert sorted(d.targets("val").tolist()) == [0, 0, 1, 1, 2, 2]  # stratified
    again = load_dataset("imagefolder", root=tmp_path, seed=1, val_fraction=0.2)
    assert np.array_equal(again.indices("val"), d.indices("val"))


def test_only_val_folder_becomes_test(tmp_path: Path) -> None:
    w = write_imagefolder(tmp_path, counts={"train": 10, "val": 2})
    d = load_dataset(f"imagefolder:{tmp_path}")
    assert [d.size(s) for s in ("train", "val", "test")] == [27, 3, 6]
    lookup = _lookup(w, "val")
    assert _check_items(d, "test", lookup, RAW12) == set(lookup)


def test_grey_images_are_one_channel_and_mixed_sizes_resized(tmp_path: Path) -> None:
    for k, cls in enumerate(("a", "b")):
        for i in range(4):
            folder = tmp_path / "train" / cls
            folder.mkdir(parents=True, exist_ok=True)
            side = 10 if i else 14  # one odd-sized image per class
            Image.fromarray(np.full((side, side), 50 * k + i, np.uint8)).save(folder / f"{i}.png")
    d = load_dataset(f"imagefolder:{tmp_path}", val_fraction=0.25, test_fraction=0.25)
    assert d.info.channels == 1
    assert d.info.image_size == (14, 14)  # first train image
    x, _ = d.split("train")[0]
    assert x.shape == (1, 14, 14)
    for split in ("train", "val", "test"):
        for img, label in d.split(split, ImageSpec(1, 14, normalize=False)):
            value = int(np.rint(float(img.mean()) * 255))
            assert value // 50 == int(label)


def test_missing_train_folder_named(tmp_path: Path) -> None:
    (tmp_path / "val" / "a").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="train/"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_val_class_not_in_train_is_an_error(tmp_path: Path) -> None:
    write_imagefolder(tmp_path, counts={"train": 2, "val": 1})
    shutil.copytree(tmp_path / "val" / "cat", tmp_path / "val" / "zebra")
    with pytest.raises(DatasetError, match="zebra"):
        load_dataset(f"imagefolder:{tmp_path}")


@pytest.mark.parametrize("split", ["train", "val"])
def test_empty_class_folder_is_an_error_not_a_class(tmp_path: Path, split: str) -> None:
    """As torchvision's ImageFolder: a class with no images would be a head output that no
    example ever trains or tests."""
    write_imagefolder(tmp_path, counts={"train": 2, "val": 1})
    for image in (tmp_path / split / "dog").iterdir():
        image.unlink()
    (tmp_path / split / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError) as err:
        load_dataset(f"imagefolder:{tmp_path}")
    assert str(err.value).startswith(f"{tmp_path / split / 'dog'}: class folder holds no images")


def test_tinyimagenet_layout(tmp_path: Path) -> None:
    w = write_tinyimagenet(tmp_path)
    d = load_dataset(f"tinyimagenet:{tmp_path}")
    assert d.classes == ("n01", "n02", "n03")  # sorted wnids
    assert (d.info.num_classes, d.info.channels, d.info.image_size) == (3, 3, (8, 8))
    assert [d.size(s) for s in ("train", "val", "test")] == [27, 3, 6]
    colours = w.images["train"] + w.images["test"]
    labels = w.labels["train"] + w.labels["test"]
    n_train = len(w.images["train"])
    spec = ImageSpec(3, 8, normalize=False)
    for split, allowed in (("train", range(n_train)), ("val", range(n_train)),
                           ("test", range(n_train, len(colours)))):  # fmt: skip
        for img, label in d.split(split, spec):
            j = nearest_colour(as_uint8_hwc(img), colours)
            assert j in allowed and labels[j] == int(label)
    assert sorted(d.targets("test").tolist()) == [0, 0, 1, 1, 2, 2]


def test_tinyimagenet_missing_annotations_named(tmp_path: Path) -> None:
    w = write_tinyimagenet(tmp_path)
    (w.root / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"val_annotations\.txt"):
        load_dataset(f"tinyimagenet:{w.root}")


def test_tinyimagenet_missing_val_image_named(tmp_path: Path) -> None:
    w = write_tinyimagenet(tmp_path)
    (w.root / "val" / "images" / "val_3.JPEG").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"val_3\.JPEG"):
        load_dataset(f"tinyimagenet:{tmp_path}")


def test_tinyimagenet_missing_wnids_named(tmp_path: Path) -> None:
    w = write_tinyimagenet(tmp_path)
    (w.root / "wnids.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"wnids\.txt"):
        load_dataset(f"tinyimagenet:{tmp_path}")


def test_tinyimagenet_fifo_wnids_is_refused_without_reading_it(tmp_path: Path) -> None:
    w = write_tinyimagenet(tmp_path)
    (w.root / "wnids.txt").unlink()
    os.mkfifo(w.root / "wnids.txt")
    signal.alarm(10)  # reading a FIFO would block until a writer appears
    try:
        with pytest.raises(MergelabError, match=r"wnids\.txt: a FIFO"):
            load_dataset(f"tinyimagenet:{tmp_path}")
    finally:
        signal.alarm(0)
