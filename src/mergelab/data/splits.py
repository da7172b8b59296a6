"""Seeded index splits: the same seed gives the same indices on every machine.

Implemented with numpy's PCG64 and plain arithmetic (not sklearn) so the indices, and
with them every cached output keyed on them, do not move when a library changes.
"""

from collections.abc import Sequence

import numpy as np

from mergelab.data.errors import DatasetError

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64)
    if f.ndim != 1 or len(f) < 1 or np.any(f < 0) or not np.isclose(f.sum(), 1.0, atol=1e-6):
        raise DatasetError(f"split fractions must be >= 0 and sum to 1, got {tuple(fractions)}")
    return f / f.sum()


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Integer sizes summing to ``n``, closest to ``n * fractions`` (largest remainder)."""
    f = _check_fractions(fractions)
    exact = f * n
    counts = np.floor(exact).astype(np.int64)
    remainder = n - int(counts.sum())
    # Ties go to the earlier split (train first), stable sort keeps that order.
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:remainder]] += 1
    return [int(c) for c in counts]


def _interleave(n: int, counts: Sequence[int]) -> np.ndarray:
    """Split id for each of ``n`` positions, spread evenly, with exactly ``counts`` of each.

    Greedy largest-credit (as in apportionment): any run of consecutive positions gets
    each split's share within about one, so contiguous class blocks come out stratified.
    """
    rates = np.asarray(counts, dtype=np.float64) / max(n, 1)
    credit = np.zeros(len(counts))
    taken = np.zeros(len(counts), dtype=np.int64)
    out = np.empty(n, dtype=np.int64)
    quota = np.asarray(counts, dtype=np.int64)
    for p in range(n):
        credit += rates
        masked = np.where(taken < quota, credit, -np.inf)
        j = int(np.argmax(masked))
        out[p] = j
        taken[j] += 1
        credit[j] -= 1.0
    return out


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split positions ``0..len(labels)-1`` by ``fractions``, keeping class proportions.

    Returns one sorted int64 index array per fraction; together they cover every
    position once. Sizes are exactly ``split_counts(len(labels), fractions)``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DatasetError(f"stratified_split needs 1-D labels, got shape {labels.shape}")
    n = len(labels)
    counts = split_counts(n, fractions)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    order = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
        or [np.empty(0, dtype=np.int64)]
    )
    which = _interleave(n, counts)
    return [np.sort(order[which == s]).astype(np.int64) for s in range(len(counts))]


def random_split(n: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Plain seeded split (multi-label targets cannot be stratified by one class)."""
    counts = split_counts(n, fractions)
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0, *counts])
    return [np.sort(perm[bounds[i] : bounds[i + 1]]).astype(np.int64) for i in range(len(counts))]


def group_split(
    groups: Sequence[object], fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Seeded split that keeps each group (e.g. a patient) inside one split.

    Groups are shuffled and handed to splits 1, 2, ... until each reaches its target
    size; the rest form split 0. Sizes are close to, not exactly, the fractions.
    """
    keys = np.asarray([str(g) for g in groups])
    n = len(keys)
    counts = split_counts(n, fractions)
    uniq, inverse, sizes = np.unique(keys, return_inverse=True, return_counts=True)
    perm = np.random.default_rng(seed).permutation(len(uniq))
    assign = np.zeros(len(uniq), dtype=np.int64)
    pos = 0
    for s in range(1, len(counts)):
        filled = 0
        while filled < counts[s] and pos < len(perm):
            assign[perm[pos]] = s
            filled += int(sizes[perm[pos]])
            pos += 1
    item_split = assign[inverse]
    return [np.flatnonzero(item_split == s).astype(np.int64) for s in range(len(counts))]


def carve_split(
    indices: np.ndarray,
    fraction: float,
    seed: int,
    *,
    labels: np.ndarray | None = None,
    groups: Sequence[object] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Carve a held-out part (``fraction`` of ``indices``) off a pool, seeded.

    Stratified by ``labels`` (aligned with ``indices``) when given, by ``groups`` when
    given, random otherwise. Returns (kept, carved), both sorted subsets of ``indices``.
    """
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"val/test fraction must be in (0, 1), got {fraction}")
    indices = np.asarray(indices, dtype=np.int64)
    fractions = (1.0 - fraction, fraction)
    if groups is not None:
        keep, carve = group_split(groups, fractions, seed)
    elif labels is not None and np.asarray(labels).ndim == 1:
        keep, carve = stratified_split(np.asarray(labels), fractions, seed)
    else:
        keep, carve = random_split(len(indices), fractions, seed)
    if len(indices) and len(keep) == 0:
        raise DatasetError(
            f"carving {fraction:.0%} of {len(indices)} items left none to keep; "
            "the pool is too small or one group holds most of it"
        )
    return np.sort(indices[keep]), np.sort(indices[carve])
