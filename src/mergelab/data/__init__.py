"""Datasets with fixed seeded splits, adapted to what each architecture wants.

``load_dataset("cifar10:PATH")`` returns ``DatasetSplits``; ``splits.split("train",
ImageSpec(channels=3, size=32))`` gives a torch Dataset of (image, target) whose images
were adapted in one place (``mergelab.data.transforms``). ``splits.key(...)`` names the
exact split + transform for caching outputs on disk.
"""

from mergelab.data.celeba import load_celeba
from mergelab.data.chestxray import CHESTXRAY14_LABELS, load_chestxray14
from mergelab.data.cifar import load_cifar10, load_cifar100
from mergelab.data.dataset import (
    SPLIT_NAMES,
    DatasetSplits,
    SplitDataset,
    SplitPart,
    as_tensors,
    make_loader,
)
from mergelab.data.embedded import load_digits, load_mnist5k
from mergelab.data.errors import DatasetError, DatasetNotFoundError, UnsafePickleError
from mergelab.data.imagefolder import load_imagefolder, load_tinyimagenet
from mergelab.data.info import DatasetInfo, ImageSpec
from mergelab.data.medmnist import load_medmnist
from mergelab.data.registry import known_datasets, load_dataset, parse_spec
from mergelab.data.safe_pickle import safe_pickle_load
from mergelab.data.splits import carve_split, group_split, random_split, stratified_split
from mergelab.data.transforms import ImageAdapter, adapt_channels, adapt_stats, augment, resize

__all__ = [
    "CHESTXRAY14_LABELS",
    "SPLIT_NAMES",
    "DatasetError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DatasetSplits",
    "ImageAdapter",
    "ImageSpec",
    "SplitDataset",
    "SplitPart",
    "UnsafePickleError",
    "adapt_channels",
    "adapt_stats",
    "as_tensors",
    "augment",
    "carve_split",
    "group_split",
    "known_datasets",
    "load_celeba",
    "load_chestxray14",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_digits",
    "load_imagefolder",
    "load_medmnist",
    "load_mnist5k",
    "load_tinyimagenet",
    "make_loader",
    "parse_spec",
    "random_split",
    "resize",
    "safe_pickle_load",
    "stratified_split",
]
