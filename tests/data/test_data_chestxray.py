"""ChestX-ray14: official lists, multi-hot targets, patient-disjoint carved val."""

from pathlib import Path

import numpy as np
import pytest
import torch
from datafakes import as_uint8_hwc, write_chestxray14

from mergelab.data import CHESTXRAY14_LABELS, DatasetNotFoundError, ImageSpec, load_dataset

LABELS = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
]  # fmt: skip


def _expected(findings: str) -> list[float]:
    present = set(findings.split("|"))
    return [1.0 if name in present else 0.0 for name in LABELS]


def test_splits_targets_and_pixels(tmp_path: Path) -> None:
    w = write_chestxray14(tmp_path / "nih")
    d = load_dataset(f"chestxray14:{tmp_path / 'nih'}", val_fraction=0.2)
    info = d.info
    assert list(CHESTXRAY14_LABELS) == LABELS
    assert (info.num_classes, info.channels, info.multilabel) == (14, 1, True)
    assert info.image_size == (16, 16)
    assert d.size("test") == 6  # test_list.txt, as published
    assert d.size("train") + d.size("val") == 18 and d.size("val") > 0
    pixels = {
        img.tobytes(): (s, f, n)
        for s in ("train_val", "test")
        for img, f, n in zip(w.images[s], w.labels[s], w.names[s], strict=True)
    }
    patients: dict[str, set[str]] = {}
    spec = ImageSpec(1, 16, normalize=False)
    for split in ("train", "val", "test"):
        patients[split] = set()
        for img, target in d.split(split, spec):
            origin, findings, name = pixels[as_uint8_hwc(img).tobytes()]
            assert origin == ("test" if split == "test" else "train_val")
            assert target.dtype == torch.float32 and target.shape == (14,)
            assert target.tolist() == _expected(findings)
            patients[split].add(name[:8])
    assert not patients["train"] & patients["val"]  # val carved by patient
    assert not (patients["train"] | patients["val"]) & patients["test"]


def test_no_finding_is_all_zero(tmp_path: Path) -> None:
    w = write_chestxray14(tmp_path)
    d = load_dataset(f"chestxray14:{tmp_path}")
    test_targets = d.targets("test")
    for row, findings in zip(test_targets, w.labels["test"], strict=True):
        assert (row.sum() == 0) == (findings == "No Finding")
    assert test_targets.dtype == np.float32


def test_missing_test_list_named(tmp_path: Path) -> None:
    write_chestxray14(tmp_path)
    (tmp_path / "test_list.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"test_list\.txt"):
        load_dataset(f"chestxray14:{tmp_path}")


def test_missing_image_named(tmp_path: Path) -> None:
    w = write_chestxray14(tmp_path)
    name = w.names["test"][1]
    next(tmp_path.glob(f"images_*/images/{name}")).unlink()
    with pytest.raises(DatasetNotFoundError, match=name):
        load_dataset(f"chestxray14:{tmp_path}")


def test_seed_changes_val_patients(tmp_path: Path) -> None:
    write_chestxray14(tmp_path, patients=20, test_patients=4)
    a = load_dataset(f"chestxray14:{tmp_path}", seed=0, val_fraction=0.25)
    b = load_dataset(f"chestxray14:{tmp_path}", seed=0, val_fraction=0.25)
    c = load_dataset(f"chestxray14:{tmp_path}", seed=5, val_fraction=0.25)
    assert np.array_equal(a.indices("val"), b.indices("val"))
    assert not np.array_equal(a.indices("val"), c.indices("val"))
    assert a.size("val") == 12  # 0.25 * 48 images, whole patients of 3
