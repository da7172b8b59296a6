"""The embedded multi-task suite: shapes, labels, splits, determinism, tasks that differ."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sk_digits

from mergelab.data import DatasetError, ImageSpec, as_tensors, known_datasets, load_dataset
from mergelab.data.multitask import (
    MULTITASK_SOURCE,
    MULTITASK_TASKS,
    PATCH,
    load_multitask,
    patch_permutation,
    rotation_steps,
    source_half,
)

CLASSES = {
    "mt-source": 10,
    "mt-mnist": 10,
    "mt-digits": 10,
    "mt-rotated": 4,
    "mt-inverted": 10,
    "mt-permuted": 10,
    "mt-parity": 2,
    "mt-magnitude": 2,
}
MNIST_TASKS = [t for t in CLASSES if t != "mt-digits"]


@pytest.fixture(scope="module")
def suite() -> dict:
    return {name: load_dataset(name) for name in CLASSES}


def raw(splits, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, labels) of a split, straight from the source array."""
    part = splits._part(split)
    return part.source.array[part.indices], part.source.targets[part.indices]


def test_at_least_six_tasks_all_registered() -> None:
    assert len(MULTITASK_TASKS) >= 6
    assert MULTITASK_SOURCE not in MULTITASK_TASKS
    assert set(CLASSES) == {MULTITASK_SOURCE, *MULTITASK_TASKS}
    assert set(CLASSES) <= set(known_datasets())


@pytest.mark.parametrize("name", list(CLASSES))
def test_shapes_labels_and_sizes(suite, name: str) -> None:
    d = suite[name]
    info = d.info
    assert (info.name, info.num_classes, info.channels, info.image_size) == (
        name,
        CLASSES[name],
        1,
        (28, 28),
    )
    assert not info.multilabel and len(d.classes) == CLASSES[name]
    sizes = [d.size(s) for s in ("train", "val", "test")]
    assert sizes == ([1258, 270, 269] if name == "mt-digits" else [1750, 750, 750])
    for split in ("train", "test"):
        x, y = as_tensors(d.split(split))
        assert x.shape == (d.size(split), 1, 28, 28) and x.dtype == torch.float32
        assert y.dtype == torch.int64
        counts = torch.bincount(y, minlength=CLASSES[name])
        assert len(counts) == CLASSES[name] and int(counts.min()) > 0  # every class present
        assert torch.isfinite(x).all()


def test_one_normalisation_for_the_whole_suite(suite) -> None:
    stats = {(d.info.mean, d.info.std) for d in suite.values()}
    assert len(stats) == 1
    images, _ = raw(suite[MULTITASK_SOURCE])
    assert suite["mt-mnist"].info.mean[0] == pytest.approx(images.mean() / 255, abs=1e-5)


def test_source_half_is_disjoint_from_every_task(suite) -> None:
    mnist = load_dataset("mnist5k")
    src, task = source_half(0)
    assert len(np.intersect1d(src, task)) == 0
    assert np.array_equal(np.sort(np.concatenate([src, task])), mnist.indices("train"))
    assert np.array_equal(suite[MULTITASK_SOURCE].indices("train"), src)
    for name in MNIST_TASKS:
        d = suite[name]
        if name != MULTITASK_SOURCE:
            assert np.array_equal(d.indices("train"), task)
        for split in ("val", "test"):  # shared with mnist5k, never in a train split
            assert np.array_equal(d.indices(split), mnist.indices(split))
    # the halves are class-stratified: 175 of each digit
    _, y = raw(suite[MULTITASK_SOURCE])
    assert np.bincount(y).tolist() == [175] * 10


def test_split_seed_moves_splits_not_pixels() -> None:
    a, b = load_multitask("mt-permuted", seed=0), load_multitask("mt-permuted", seed=1)
    assert not np.array_equal(a.indices("train"), b.indices("train"))
    assert a._part("train").source.fingerprint() == b._part("train").source.fingerprint()


@pytest.mark.parametrize("name", ["mt-rotated", "mt-permuted", "mt-digits"])
def test_deterministic(name: str) -> None:
    a, b = load_dataset(name, seed=3), load_dataset(name, seed=3)
    assert a.key("train") == b.key("train") and a.key("test") == b.key("test")
    xa, ya = as_tensors(a.split("test"))
    xb, yb = as_tensors(b.split("test"))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert np.array_equal(patch_permutation(), patch_permutation())
    assert np.array_equal(rotation_steps(50), rotation_steps(50))


def test_inverted_is_255_minus_plain(suite) -> None:
    plain, y = raw(suite["mt-mnist"], "test")
    inv, yi = raw(suite["mt-inverted"], "test")
    assert np.array_equal(inv.astype(np.int64), 255 - plain.astype(np.int64))
    assert np.array_equal(y, yi)
    assert not torch.allclose(
        as_tensors(suite["mt-inverted"].split("test"))[0],
        as_tensors(suite["mt-mnist"].split("test"))[0],
    )


def test_permuted_moves_every_patch(suite) -> None:
    perm = patch_permutation()
    assert sorted(perm.tolist()) == list(range(16)) and not np.any(perm == np.arange(16))
    plain, y = raw(suite["mt-mnist"], "test")
    shuf, ys = raw(suite["mt-permuted"], "test")
    assert np.array_equal(y, ys)
    g = 28 // PATCH
    for j, p in enumerate(perm):  # grid place j holds original patch p
        r, c, pr, pc = j // g, j % g, p // g, p % g
        assert np.array_equal(
            shuf[:, :, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH],
            plain[:, :, pr * PATCH : (pr + 1) * PATCH, pc * PATCH : (pc + 1) * PATCH],
        )
    assert not np.array_equal(shuf, plain)


def test_rotated_labels_are_quarter_turns(suite) -> None:
    plain, _ = raw(suite["mt-mnist"], "test")
    rot, k = raw(suite["mt-rotated"], "test")
    idx = suite["mt-rotated"].indices("test")
    assert np.array_equal(k, rotation_steps(5000)[idx])
    assert set(np.unique(k).tolist()) == {0, 1, 2, 3}
    for i in range(0, len(idx), 97):
        assert np.array_equal(rot[i], np.rot90(plain[i], int(k[i]), axes=(1, 2)))
    assert np.mean(rot != plain) > 0.05


def test_parity_and_magnitude_relabel_the_digits(suite) -> None:
    _, digit = raw(suite["mt-mnist"])
    images, _ = raw(suite["mt-mnist"])
    for name, expect in (("mt-parity", digit % 2), ("mt-magnitude", (digit >= 5).astype(int))):
        x, y = raw(suite[name])
        assert np.array_equal(x, images) and np.array_equal(y, expect)
    assert suite["mt-parity"].classes == ("even", "odd")
    assert suite["mt-rotated"].classes == ("0", "90", "180", "270")


def test_digits_are_upsampled_sklearn_digits(suite) -> None:
    d = suite["mt-digits"]
    bunch = sk_digits()
    images, y = raw(d, "train")
    idx = d.indices("train")
    assert np.array_equal(y, bunch.target[idx])
    assert images.dtype == np.uint8 and images.shape[1:] == (1, 28, 28)
    # averaging back down to 7x7 blocks follows the 8x8 original closely
    small = torch.from_numpy(images[:, 0].astype(np.float32) / 255).unsqueeze(1)
    down = torch.nn.functional.interpolate(small, size=(8, 8), mode="area")[:, 0].numpy()
    assert np.corrcoef(down.ravel(), bunch.images[idx].ravel() / 16)[0, 1] > 0.95


def test_specs_compose_with_subsets_and_image_specs() -> None:
    sub = load_dataset("mt-parity[1]")
    assert sub.info.num_classes == 1 and sub.size("train") == 875
    x, _ = as_tensors(load_dataset("mt-digits").split("val", ImageSpec(channels=3, size=32)))
    assert x.shape[1:] == (3, 32, 32)


def test_user_errors_are_one_line() -> None:
    with pytest.raises(DatasetError, match="takes no path"):
        load_dataset("mt-inverted:/data")
    with pytest.raises(DatasetError, match="unknown option"):
        load_dataset("mt-inverted", fractions=(0.5, 0.25, 0.25))
    with pytest.raises(DatasetError, match="unknown multi-task dataset"):
        load_multitask("mt-nope")
