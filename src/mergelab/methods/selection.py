"""Exact top-k selection by magnitude over data too large to sort, read in chunks.

TIES and Breadcrumbs keep the k largest |delta| of a tensor (or of a whole model). Sorting
32M values takes seconds and a whole model does not fit in memory, so the k-th largest value
is found in cheap passes: a strided sample estimates it, one pass counts the values above a
bracket around the estimate and gathers the few inside it, and an exact selection among
those gives the threshold. Ties at the threshold are broken by position (earliest kept), so
exactly k elements survive, as with a sort.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

# (global position of the chunk's first element, |values| of the chunk, 1-D)
ChunkStream = Callable[[], Iterable[tuple[int, np.ndarray]]]

SAMPLE_SIZE = 1 << 16
KEEP_ALL_TIES = 1 << 62


@dataclass(frozen=True)
class Cutoff:
    """Keep ``|x| > value``, and ``|x| == value`` at global positions ``<= last_tie``."""

    value: float
    last_tie: int

    @classmethod
    def keep_all(cls) -> Cutoff:
        return cls(-math.inf, KEEP_ALL_TIES)

    @classmethod
    def keep_none(cls) -> Cutoff:
        return cls(math.inf, -1)

    def mask(self, magnitudes: np.ndarray, start: int) -> np.ndarray:
        """Boolean keep-mask of a chunk of ``|x|`` starting at global position ``start``."""
        if self.last_tie >= KEEP_ALL_TIES:
            return magnitudes >= self.value
        keep = magnitudes > self.value
        if self.last_tie >= 0 and start <= self.last_tie:
            ties = np.flatnonzero(magnitudes == self.value)
            keep[ties[ties + start <= self.last_tie]] = True
        return keep


def _sample(stream: ChunkStream, total: int) -> np.ndarray:
    stride = max(1, total // SAMPLE_SIZE)
    parts = [values[(-start) % stride :: stride] for start, values in stream()]
    return np.concatenate(parts).astype(np.float64)


def top_k_cutoff(stream: ChunkStream, k: int, total: int) -> Cutoff:
    """Cutoff keeping exactly the ``k`` largest of ``total`` magnitudes in ``stream``."""
    if k <= 0:
        return Cutoff.keep_none()
    if k >= total:
        return Cutoff.keep_all()
    sample = _sample(stream, total)
    m = sample.size
    rank = k * m / total  # expected rank of the threshold in the sample, from the top
    margin = 6 * math.sqrt(m * (k / total) * (1 - k / total)) + 16
    brackets = [
        (math.floor(rank - widen * margin), math.ceil(rank + widen * margin)) for widen in (1, 16)
    ]
    # Ascending positions m-1-r of the descending ranks r: one partition finds all four.
    ranks = sorted({m - 1 - r for pair in brackets for r in pair if 0 <= r < m})
    ordered = np.partition(sample, ranks) if ranks else sample

    def at(r: int, missing: float) -> float:
        return missing if not 0 <= r < m else float(ordered[m - 1 - r])

    for hi_rank, lo_rank in [*brackets, (-1, m)]:
        hi, lo = at(hi_rank, math.inf), at(lo_rank, -math.inf)
        above = 0
        inside = []
        for _, values in stream():
            above += int(np.count_nonzero(values > hi))
            inside.append(values[(values >= lo) & (values <= hi)])
        candidates = np.concatenate(inside) if inside else np.empty(0)
        if above < k <= above + candidates.size:
            break
    else:  # pragma: no cover - the last bracket spans everything
        raise AssertionError("top-k bracket failed")
    need_inside = k - above
    position = candidates.size - need_inside
    value = candidates[np.argpartition(candidates, position)[position]].item()
    greater = above + int(np.count_nonzero(candidates > value))
    equal = int(np.count_nonzero(candidates == value))
    need = k - greater
    if need == equal:
        return Cutoff(value, KEEP_ALL_TIES)
    seen = 0
    for start, values in stream():
        where = np.flatnonzero(values == value)
        if seen + where.size >= need:
            return Cutoff(value, start + int(where[need - seen - 1]))
        seen += where.size
    raise AssertionError("tie positions not found")  # pragma: no cover
