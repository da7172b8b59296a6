"""Test helpers: tiny datasets written in the exact published on-disk layouts."""

import csv
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image


@dataclass
class Written:
    """What a writer put on disk: the folder, and per split the images and labels."""

    root: Path
    images: dict[str, list[np.ndarray]] = field(default_factory=dict)  # HxW or HxWx3 uint8
    labels: dict[str, list[object]] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)


CIFAR10_NAMES = [
    b"airplane", b"automobile", b"bird", b"cat", b"deer",
    b"dog", b"frog", b"horse", b"ship", b"truck",
]  # fmt: skip


def write_cifar10(
    parent: Path, *, per_batch: int = 8, n_test: int = 10, protocol: int = 2, seed: int = 0
) -> tuple[Path, dict[str, np.ndarray]]:
    """``parent/cifar-10-batches-py`` with real dict pickles (bytes keys, like the originals)."""
    rng = np.random.default_rng(seed)
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = [], []
    for b in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(per_batch) + b) % 10]
        batch = {
            b"batch_label": f"training batch {b} of 5".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{b}_{i}.png".encode() for i in range(per_batch)],
        }
        with open(folder / f"data_batch_{b}", "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        train_x.append(data)
        train_y.extend(labels)
    test_x = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    test_y = [i % 10 for i in range(n_test)]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(
            {
                b"batch_label": b"testing batch 1 of 1",
                b"labels": test_y,
                b"data": test_x,
                b"filenames": [b"t.png"] * n_test,
            },
            f,
            protocol=protocol,
        )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {b"num_cases_per_batch": per_batch, b"label_names": CIFAR10_NAMES, b"num_vis": 3072},
            f,
            protocol=protocol,
        )
    arrays = {
        "train_x": np.concatenate(train_x),
        "train_y": np.asarray(train_y),
        "test_x": test_x,
        "test_y": np.asarray(test_y),
    }
    return folder, arrays


def write_cifar100(
    parent: Path, *, n_train: int = 200, n_test: int = 50, seed: int = 1
) -> tuple[Path, dict[str, np.ndarray]]:
    """``parent/cifar-100-python`` with train/test/meta pickles (fine and coarse labels)."""
    rng = np.random.default_rng(seed)
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    out: dict[str, np.ndarray] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [i % 100 for i in range(n)]
        coarse = [f // 5 for f in fine]
        with open(folder / split, "wb") as f:
            pickle.dump(
                {
                    b"filenames": [b"x.png"] * n,
                    b"batch_label": split.encode(),
                    b"fine_labels": fine,
                    b"coarse_labels": coarse,
                    b"data": data,
                },
                f,
                protocol=2,
            )
        out[f"{split}_x"], out[f"{split}_y"] = data, np.asarray(fine)
        out[f"{split}_coarse"] = np.asarray(coarse)
    with open(folder / "meta", "wb") as f:
        pickle.dump(
            {
                b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
            },
            f,
            protocol=2,
        )
    return folder, out


def write_medmnist(
    path: Path,
    *,
    sizes: tuple[int, int, int] = (30, 10, 12),
    rgb: bool = True,
    num_labels: int | None = None,
    n_classes: int = 9,
    seed: int = 2,
) -> dict[str, np.ndarray]:
    """A MedMNIST-style npz; ``num_labels`` makes NxL multi-label targets (chestmnist)."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        if num_labels is None:
            arrays[f"{split}_labels"] = (np.arange(n) % n_classes).reshape(n, 1).astype(np.uint8)
        else:
            arrays[f"{split}_labels"] = rng.integers(0, 2, size=(n, num_labels)).astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return arrays


def _save(img: np.ndarray, path: Path, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format=fmt)


def write_imagefolder(
    root: Path,
    *,
    classes: tuple[str, ...] = ("cat", "dog", "eel"),
    counts: dict[str, int] | None = None,
    size: int = 12,
    seed: int = 3,
) -> Written:
    """``root/<split>/<class>/*.png`` with random (hence unique) RGB pixels."""
    counts = counts if counts is not None else {"train": 10, "val": 3, "test": 4}
    rng = np.random.default_rng(seed)
    w = Written(root)
    for split, n in counts.items():
        w.images[split], w.labels[split] = [], []
        for k, cls in enumerate(classes):
            for i in range(n):
                img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                _save(img, root / split / cls / f"{cls}_{i}.png")
                w.images[split].append(img)
                w.labels[split].append(k)
    return w


def distinct_colours(n: int) -> list[tuple[int, int, int]]:
    """``n`` solid colours at least 40 levels apart, so JPEG noise cannot confuse them."""
    levels = [20, 60, 100, 140, 180, 220]
    out = [(r, g, b) for r in levels for g in levels for b in levels]
    assert n <= len(out)
    return out[:n]


def write_tinyimagenet(
    parent: Path,
    *,
    wnids: tuple[str, ...] = ("n02", "n01", "n03"),
    per_class: int = 10,
    val_per_class: int = 2,
) -> Written:
    """``parent/tiny-imagenet-200`` with wnids.txt, train/<wnid>/images, val annotations."""
    root = parent / "tiny-imagenet-200"
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colours = iter(distinct_colours(len(wnids) * (per_class + val_per_class)))
    order = sorted(wnids)
    w = Written(root, images={"train": [], "test": []}, labels={"train": [], "test": []})
    for wnid in wnids:
        (root / "train" / wnid / f"{wnid}_boxes.txt").parent.mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(per_class):
            img = np.full((8, 8, 3), next(colours), dtype=np.uint8)
            _save(img, root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", "JPEG")
            w.images["train"].append(img)
            w.labels["train"].append(order.index(wnid))
    lines = []
    k = 0
    for wnid in wnids:
        for _ in range(val_per_class):
            img = np.full((8, 8, 3), next(colours), dtype=np.uint8)
            name = f"val_{k}.JPEG"
            _save(img, root / "val" / "images" / name, "JPEG")
            lines.append(f"{name}\t{wnid}\t0\t0\t7\t7")
            w.images["test"].append(img)
            w.labels["test"].append(order.index(wnid))
            k += 1
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "test" / "images").mkdir(parents=True)  # unlabelled, must be ignored
    _save(np.zeros((8, 8, 3), np.uint8), root / "test" / "images" / "test_0.JPEG", "JPEG")
    return w


# Line 2 of list_attr_celeba.txt, verbatim.
CELEBA_ATTR_LINE = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses "
    "Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache "
    "Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks "
    "Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
)
CELEBA_ATTRS = CELEBA_ATTR_LINE.split()


def write_celeba(
    parent: Path, *, partition: tuple[int, ...] = (0,) * 8 + (1,) * 3 + (2,) * 4, seed: int = 4
) -> Written:
    """``parent/celeba`` in the official layout: jpgs, list_attr_celeba.txt, partitions."""
    rng = np.random.default_rng(seed)
    root = parent / "celeba"
    colours = distinct_colours(len(partition))
    w = Written(
        root,
        images={"train": [], "val": [], "test": []},
        labels={"train": [], "val": [], "test": []},
        names={"train": [], "val": [], "test": []},
    )
    attr_lines = [str(len(partition)), CELEBA_ATTR_LINE]
    part_lines = []
    for i, part in enumerate(partition):
        name = f"{i + 1:06d}.jpg"
        img = np.full((10, 8, 3), colours[i], dtype=np.uint8)  # non-square like 218x178
        _save(img, root / "img_align_celeba" / name, "JPEG")
        values = rng.choice([-1, 1], size=len(CELEBA_ATTRS))
        # Official files pad single digits to align columns: "name  1 -1 ...".
        attr_lines.append(name + " " + " ".join(f"{v:2d}" for v in values))
        part_lines.append(f"{name} {part}")
        split = ("train", "val", "test")[part]
        w.images[split].append(img)
        w.labels[split].append(values)
        w.names[split].append(name)
    (root / "list_attr_celeba.txt").write_text("\n".join(attr_lines) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(part_lines) + "\n")
    return w


CHEST_FINDINGS = [
    "No Finding", "Cardiomegaly|Emphysema", "Effusion", "Hernia", "Mass|Nodule|Pneumonia",
    "No Finding", "Atelectasis|Pleural_Thickening", "Infiltration", "Edema|Fibrosis",
    "Pneumothorax|Consolidation", "No Finding", "Effusion|Infiltration",
]  # fmt: skip


def write_chestxray14(
    root: Path, *, patients: int = 8, per_patient: int = 3, test_patients: int = 2, seed: int = 5
) -> Written:
    """CSV, split lists and grey PNGs under images_00x/images/ like the NIH release."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    w = Written(
        root,
        images={"train_val": [], "test": []},
        labels={"train_val": [], "test": []},
        names={"train_val": [], "test": []},
    )
    rows = []
    k = 0
    for p in range(1, patients + 1):
        for f in range(per_patient):
            name = f"{p:08d}_{f:03d}.png"
            findings = CHEST_FINDINGS[k % len(CHEST_FINDINGS)]
            img = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
            folder = root / f"images_{1 + k % 2:03d}" / "images"
            _save(img, folder / name)
            rows.append([name, findings, f, p, 50, "M", "PA", 16, 16, 0.1, 0.1])
            split = "test" if p > patients - test_patients else "train_val"
            w.images[split].append(img)
            w.labels[split].append(findings)
            w.names[split].append(name)
            k += 1
    with open(root / "Data_Entry_2017.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "Image Index",
                "Finding Labels",
                "Follow-up #",
                "Patient ID",
                "Patient Age",
                "Patient Gender",
                "View Position",
                "OriginalImage[Width",
                "Height]",
                "OriginalImagePixelSpacing[x",
                "y]",
            ]
        )
        writer.writerows(rows)
    (root / "train_val_list.txt").write_text("\n".join(w.names["train_val"]) + "\n")
    (root / "test_list.txt").write_text("\n".join(w.names["test"]) + "\n")
    return w


def as_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    """An un-normalised adapted item (CxHxW in [0, 1]) back to uint8 HxW or HxWx3."""
    arr = np.rint(x.numpy() * 255.0).astype(np.uint8)
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def nearest_colour(img: np.ndarray, colours: list[np.ndarray]) -> int:
    """Index of the solid colour closest to ``img``'s mean colour (JPEG-robust match)."""
    mean = img.reshape(-1, img.shape[-1]).mean(axis=0)
    return int(
        np.argmin([np.abs(mean - c.reshape(-1, c.shape[-1]).mean(axis=0)).max() for c in colours])
    )
