"""CIFAR-10 and CIFAR-100 from their published python-pickle folders.

Layouts (as extracted from the official tarballs):
``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``cifar-100-python/{train, test, meta}``; each batch is a pickled dict with
b"data" (uint8 Nx3072, channel-major 3x32x32) and b"labels" / b"fine_labels".
The official split has no validation set: val is carved from train, seeded, stratified.
"""

from pathlib import Path
from typing import Any

import numpy as np

from mergelab.data._paths import find_layout_dir
from mergelab.data.dataset import DatasetSplits, SplitPart, make_info, resolve_stats
from mergelab.data.errors import DatasetError
from mergelab.data.safe_pickle import safe_pickle_load
from mergelab.data.sources import ArraySource
from mergelab.data.splits import carve_split

CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")


def read_pickle(path: Path) -> dict[bytes, Any]:
    """One CIFAR pickle as a dict, loaded with the restricted unpickler."""
    with open(path, "rb") as f:
        obj = safe_pickle_load(f, source=str(path))
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    d = read_pickle(path)
    for key in (b"data", label_key):
        if key not in d:
            raise DatasetError(f"{path}: key {key!r} missing (has {sorted(d)})")
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{path}: b'data' must be uint8 Nx3072, got {data.dtype} {data.shape}")
    if len(labels) != len(data):
        raise DatasetError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _names(meta: dict[bytes, Any], key: bytes) -> list[str] | None:
    names = meta.get(key)
    if names is None:
        return None
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _build(
    name: str,
    folder: Path,
    train_parts: list[tuple[np.ndarray, np.ndarray]],
    test: tuple[np.ndarray, np.ndarray],
    classes: list[str] | None,
    default_classes: int,
    *,
    seed: int,
    val_fraction: float,
) -> DatasetSplits:
    images = np.concatenate([p[0] for p in train_parts] + [test[0]])
    labels = np.concatenate([p[1] for p in train_parts] + [test[1]])
    n_train = sum(len(p[1]) for p in train_parts)
    pool = np.arange(n_train, dtype=np.int64)
    train, val = carve_split(pool, val_fraction, seed, labels=labels[:n_train])
    test_idx = np.arange(n_train, len(labels), dtype=np.int64)
    source = ArraySource(images, labels)
    num_classes = len(classes) if classes else max(default_classes, int(labels.max()) + 1)
    if int(labels.max()) >= num_classes or int(labels.min()) < 0:
        raise DatasetError(f"{folder}: labels outside 0..{num_classes - 1}")
    mean, std = resolve_stats(source, train, mean=None, std=None)
    info = make_info(
        name=name,
        num_classes=num_classes,
        channels=3,
        image_size=(32, 32),
        multilabel=False,
        mean=mean,
        std=std,
    )
    parts = {
        "train": SplitPart(source, train),
        "val": SplitPart(source, val),
        "test": SplitPart(source, test_idx),
    }
    return DatasetSplits(info, parts, classes=classes, origin=str(folder))


def load_cifar10(path: str | Path, *, seed: int = 0, val_fraction: float = 0.1) -> DatasetSplits:
    """CIFAR-10 from ``cifar-10-batches-py/`` (or its parent): 50k train (minus val), 10k test."""
    folder = find_layout_dir(
        Path(path), dataset="cifar10", folder_names=("cifar-10-batches-py",), required=CIFAR10_FILES
    )
    train = [_batch(folder / f"data_batch_{i}", b"labels") for i in range(1, 6)]
    test = _batch(folder / "test_batch", b"labels")
    classes = _names(read_pickle(folder / "batches.meta"), b"label_names")
    return _build("cifar10", folder, train, test, classes, 10, seed=seed, val_fraction=val_fraction)


def load_cifar100(
    path: str | Path, *, seed: int = 0, val_fraction: float = 0.1, labels: str = "fine"
) -> DatasetSplits:
    """CIFAR-100 from ``cifar-100-python/`` (or its parent).

    ``labels`` picks "fine" (100 classes) or "coarse" (20 superclasses).
    """
    if labels not in ("fine", "coarse"):
        raise DatasetError(f"cifar100 labels must be 'fine' or 'coarse', got {labels!r}")
    folder = find_layout_dir(
        Path(path), dataset="cifar100", folder_names=("cifar-100-python",), required=CIFAR100_FILES
    )
    key = b"fine_labels" if labels == "fine" else b"coarse_labels"
    train = _batch(folder / "train", key)
    test = _batch(folder / "test", key)
    meta = read_pickle(folder / "meta")
    classes = _names(meta, b"fine_label_names" if labels == "fine" else b"coarse_label_names")
    name = "cifar100" if labels == "fine" else "cifar100-coarse"
    return _build(
        name,
        folder,
        [train],
        test,
        classes,
        100 if labels == "fine" else 20,
        seed=seed,
        val_fraction=val_fraction,
    )
