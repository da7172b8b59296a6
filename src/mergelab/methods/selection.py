"""Exact top-k selection by magnitude over data too large to sort, read in chunks.

TIES and Breadcrumbs keep the k largest |delta| of a tensor (or of a whole model). Sorting
32M values takes seconds and a whole model does not fit in memory, so the k-th largest value
is found in two cheap passes: a strided sample estimates it, and one pass counts the values
above a bracket around the estimate and gathers the few inside it with their positions; an
exact selection among those gives the threshold, and their positions the tie-break. Ties at
the threshold are broken by position (earliest kept), so exactly k elements survive, as with
a sort. Several k (Breadcrumbs' keep and drop) share the passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

# (global position of the chunk's first element, |values| of the chunk, 1-D)
ChunkStream = Callable[[], Iterable[tuple[int, np.ndarray]]]

SAMPLE_SIZE = 1 << 16
KEEP_ALL_TIES = 1 << 62
BLOCK = 1 << 17  # bracket pass granularity: its masks stay in cache and are reused


@dataclass(frozen=True)
class Cutoff:
    """Keep ``|x| > value``, and ``|x| == value`` at global positions ``<= last_tie`` (or,
    with ``ties``, at those positions)."""

    value: float
    last_tie: int
    ties: np.ndarray | None = field(default=None, compare=False)
    """Sorted global positions of the ties kept, where they are not the earliest: torch's
    sort order (``--compat mergekit``, :func:`torch_order_cutoffs`)."""

    @classmethod
    def keep_all(cls) -> Cutoff:
        return cls(-math.inf, KEEP_ALL_TIES)

    @classmethod
    def keep_none(cls) -> Cutoff:
        return cls(math.inf, -1)

    def mask(self, magnitudes: np.ndarray, start: int) -> np.ndarray:
        """Boolean keep-mask of a chunk of ``|x|`` starting at global position ``start``."""
        if self.ties is not None:
            keep = magnitudes > self.value
            lo, hi = np.searchsorted(self.ties, [start, start + magnitudes.size])
            keep[self.ties[lo:hi] - start] = True
            return keep
        if start + magnitudes.size - 1 <= self.last_tie:  # every tie in the chunk is kept
            return magnitudes >= self.value
        keep = magnitudes > self.value
        if start <= self.last_tie:  # the chunk holds the last kept tie
            ties = np.flatnonzero(magnitudes[: self.last_tie - start + 1] == self.value)
            keep[ties] = True
        return keep


def _sample(stream: ChunkStream, total: int) -> np.ndarray:
    stride = max(1, total // SAMPLE_SIZE)
    parts = [values[(-start) % stride :: stride] for start, values in stream()]
    return np.concatenate(parts)


def _gather(
    stream: ChunkStream, brackets: list[tuple[float, float]]
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """One pass: per bracket (lo, hi), the count of values above hi and the values inside
    [lo, hi] with their global positions, in stream order."""
    above = [0] * len(brackets)
    values_in: list[list[np.ndarray]] = [[] for _ in brackets]
    where_in: list[list[np.ndarray]] = [[] for _ in brackets]
    gt = np.empty(BLOCK, dtype=bool)
    ge = np.empty(BLOCK, dtype=bool)
    for start, values in stream():
        for lo_block in range(0, values.size, BLOCK):
            block = values[lo_block : lo_block + BLOCK]
            over, inside = gt[: block.size], ge[: block.size]
            for j, (lo, hi) in enumerate(brackets):
                np.greater(block, hi, out=over)
                above[j] += int(np.count_nonzero(over))
                np.greater_equal(block, lo, out=inside)
                np.logical_xor(inside, over, out=inside)  # lo <= x <= hi (hi >= lo)
                found = np.flatnonzero(inside)
                if found.size:
                    values_in[j].append(block[found])
                    where_in[j].append(found + (start + lo_block))
    empty_values = np.empty(0)
    empty_where = np.empty(0, dtype=np.int64)
    return [
        (
            above[j],
            np.concatenate(values_in[j]) if values_in[j] else empty_values,
            np.concatenate(where_in[j]) if where_in[j] else empty_where,
        )
        for j in range(len(brackets))
    ]


def _exact(k: int, above: int, candidates: np.ndarray, positions: np.ndarray) -> Cutoff:
    """The cutoff keeping k values: ``above`` of them above every candidate, the rest the
    largest candidates (ties at the threshold: earliest positions first)."""
    position = candidates.size - (k - above)
    value = np.partition(candidates, position)[position].item()
    greater = above + int(np.count_nonzero(candidates > value))
    tied = candidates == value
    need = k - greater
    if need == int(np.count_nonzero(tied)):
        return Cutoff(value, KEEP_ALL_TIES)
    return Cutoff(value, int(positions[tied][need - 1]))


def top_k_cutoffs(stream: ChunkStream, ks: Sequence[int], total: int) -> list[Cutoff]:
    """For each k in ``ks``, the cutoff keeping exactly the ``k`` largest of ``total``
    magnitudes in ``stream`` (one sampling pass and one gathering pass for all of them)."""
    found: dict[int, Cutoff] = {}
    pending: list[int] = []
    for j, k in enumerate(ks):
        if k <= 0:
            found[j] = Cutoff.keep_none()
        elif k >= total:
            found[j] = Cutoff.keep_all()
        else:
            pending.append(j)
    if pending:
        sample = _sample(stream, total)
        m = sample.size
        tries: dict[int, list[tuple[int, int]]] = {}
        for j in pending:
            k = ks[j]
            rank = k * m / total  # expected rank of the threshold in the sample, from the top
            margin = 6 * math.sqrt(m * (k / total) * (1 - k / total)) + 16
            tries[j] = [
                (math.floor(rank - widen * margin), math.ceil(rank + widen * margin))
                for widen in (1, 16)
            ] + [(-1, m)]  # the last bracket spans everything
        # Ascending positions m-1-r of the descending ranks r: one partition finds them all.
        ranks = sorted(
            {m - 1 - r for j in pending for pair in tries[j] for r in pair if 0 <= r < m}
        )
        ordered = np.partition(sample, ranks) if ranks else sample

        def at(r: int, missing: float) -> float:
            return missing if not 0 <= r < m else ordered[m - 1 - r].item()

        for attempt in range(3):
            brackets = [
                (at(tries[j][attempt][1], -math.inf), at(tries[j][attempt][0], math.inf))
                for j in pending
            ]
            gathered = _gather(stream, brackets)
            unresolved = []
            for j, (above, candidates, positions) in zip(pending, gathered, strict=True):
                if above < ks[j] <= above + candidates.size:
                    found[j] = _exact(ks[j], above, candidates, positions)
                else:
                    unresolved.append(j)
            pending = unresolved
            if not pending:
                break
        else:  # pragma: no cover - the last bracket spans everything
            raise AssertionError("top-k bracket failed")
    return [found[j] for j in range(len(ks))]


def torch_order_cutoffs(
    magnitudes: np.ndarray, ks: Sequence[int], descending: bool
) -> list[Cutoff]:
    """mergekit's selections, ties at the threshold included: the positions of the ``k``
    largest of ``magnitudes`` (one tensor, flat) as ``torch.argsort`` orders them, descending
    (``magnitude``: ``argsort(w, descending=True)[:k]``) or ascending (``magnitude_outliers``:
    ``sort(w).indices[n - k:]``). torch's sort does not keep ties in position order, and in
    float16/bfloat16 ties are common, so ``--compat mergekit`` asks torch itself."""
    import torch

    ordered, order = torch.sort(torch.from_numpy(magnitudes), descending=descending)
    values, positions = ordered.numpy(), order.numpy()
    n = magnitudes.size
    cutoffs = []
    for k in ks:
        if k <= 0:
            cutoffs.append(Cutoff.keep_none())
            continue
        if k >= n:
            cutoffs.append(Cutoff.keep_all())
            continue
        # The kept k are a run of the sorted values; the smallest of them, the threshold,
        # is at its end (descending) or start (ascending), and its ties are beside it.
        if descending:
            value = values[k - 1]
            first = int(np.searchsorted(-values[:k], -value, side="left"))
            ties = positions[first:k]
        else:
            value = values[n - k]
            last = n - k + int(np.searchsorted(values[n - k :], value, side="right"))
            ties = positions[n - k : last]
        cutoffs.append(Cutoff(value.item(), -1, np.sort(ties)))
    return cutoffs
