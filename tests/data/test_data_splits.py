"""Seeded split helpers: exact sizes, coverage, stratification, groups kept whole."""

import numpy as np
import pytest

from mergelab.data import DatasetError, carve_split, group_split, random_split, stratified_split
from mergelab.data.splits import split_counts


@pytest.mark.parametrize("n", [0, 1, 5, 10, 101, 1000])
@pytest.mark.parametrize("fractions", [(0.7, 0.15, 0.15), (0.9, 0.1), (1 / 3, 1 / 3, 1 / 3)])
def test_stratified_split_exact_sizes_and_cover(n: int, fractions: tuple[float, ...]) -> None:
    labels = np.random.default_rng(n).integers(0, 7, n)
    parts = stratified_split(labels, fractions, seed=4)
    assert [len(p) for p in parts] == split_counts(n, fractions)
    assert sum(split_counts(n, fractions)) == n
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))
    assert all(np.array_equal(p, np.sort(p)) for p in parts)


def test_split_counts_largest_remainder() -> None:
    assert split_counts(10, (0.7, 0.15, 0.15)) == [7, 2, 1]
    assert split_counts(1797, (0.7, 0.15, 0.15)) == [1258, 270, 269]
    assert split_counts(3, (0.5, 0.5)) == [2, 1]


def test_stratified_split_keeps_class_proportions() -> None:
    labels = np.repeat(np.arange(4), [100, 200, 40, 60])
    train, val, test = stratified_split(labels, (0.7, 0.15, 0.15), seed=0)
    for part, frac in ((train, 0.7), (val, 0.15), (test, 0.15)):
        counts = np.bincount(labels[part], minlength=4)
        expected = frac * np.array([100, 200, 40, 60])
        assert np.all(np.abs(counts - expected) <= 1.0), (counts, expected)


def test_seed_determines_indices() -> None:
    labels = np.arange(200) % 5
    a = stratified_split(labels, (0.8, 0.2), seed=7)
    b = stratified_split(labels, (0.8, 0.2), seed=7)
    c = stratified_split(labels, (0.8, 0.2), seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])
    r1, r2 = random_split(50, (0.6, 0.4), 1), random_split(50, (0.6, 0.4), 1)
    assert np.array_equal(r1[1], r2[1]) and len(r1[1]) == 20


def test_group_split_never_splits_a_group() -> None:
    groups = [f"p{i // 3}" for i in range(90)]  # 30 patients, 3 images each
    parts = group_split(groups, (0.8, 0.2), seed=0)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(90))
    seen = [{groups[i] for i in p} for p in parts]
    assert not seen[0] & seen[1]
    assert len(parts[1]) == 18  # 18 = 0.2 * 90, reached exactly with groups of 3


def test_carve_split_returns_subsets_of_the_pool() -> None:
    pool = np.arange(100, 160)
    keep, carved = carve_split(pool, 0.25, seed=2, labels=pool % 3)
    assert len(carved) == 15 and len(keep) == 45
    assert set(keep) | set(carved) == set(pool.tolist())
    assert not set(keep) & set(carved)
    assert np.bincount(carved % 3).tolist() == [5, 5, 5]


@pytest.mark.parametrize("fractions", [(0.5, 0.6), (-0.1, 1.1), ()])
def test_bad_fractions_rejected(fractions: tuple[float, ...]) -> None:
    with pytest.raises(DatasetError, match="fractions"):
        stratified_split(np.zeros(10), fractions, seed=0)


def test_carve_fraction_must_be_inside_0_1() -> None:
    with pytest.raises(DatasetError, match="fraction"):
        carve_split(np.arange(10), 1.0, seed=0)
