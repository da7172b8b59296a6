"""Paired bootstrap intervals for differences the claims use.

A claim compares numbers measured on the same test examples (two methods of one setting,
one method at two model counts, ...). Each number is the mean of a per-example vector
(1 = correct), so any difference of such numbers is the mean of a per-example *contrast*
``d = sum_k w_k v_k``. Resampling the test examples (the same resample for every number
of one dataset: that is what makes it paired) gives the spread of that mean; when a
setting was repeated with several training seeds, each replicate also resamples the seeds.
Several settings are pooled by averaging their contrasts inside every replicate, each
dataset with its own example resample.

Intervals are percentile intervals; every random draw comes from a generator seeded by
the dataset's name, so the same results give the same intervals.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "BOOTSTRAP_REPLICATES",
    "LEVEL",
    "Interval",
    "Unit",
    "example_resamples",
    "pooled_interval",
    "unit_replicates",
]

BOOTSTRAP_REPLICATES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate and its ``level`` percentile interval."""

    estimate: float
    low: float
    high: float
    level: float = LEVEL

    def scaled(self, k: float) -> Interval:
        return Interval(self.estimate * k, self.low * k, self.high * k, self.level)


@dataclass(frozen=True)
class Unit:
    """One setting's contrast: per seed, the per-example contrast vector ``d`` (all seeds
    of a unit share the test set named ``testset``)."""

    testset: str
    contrasts: tuple[np.ndarray, ...]

    @property
    def estimate(self) -> float:
        return float(np.mean([float(np.mean(d)) for d in self.contrasts]))

    @property
    def n_examples(self) -> int:
        return len(self.contrasts[0])


def _seed_of(name: str, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}:{name}".encode()).digest()[:8], "little")


@lru_cache(maxsize=8)
def example_resamples(testset: str, n: int, replicates: int = BOOTSTRAP_REPLICATES) -> np.ndarray:
    """``replicates`` x ``n`` example indices drawn with replacement, seeded by the test
    set's name and size: every contrast on one test set sees the same resamples."""
    rng = np.random.default_rng(_seed_of(f"{testset}/{n}", "examples"))
    out = rng.integers(0, n, size=(replicates, n), dtype=np.int64).astype(np.int32)
    out.setflags(write=False)
    return out


def _resampled_means(d: np.ndarray, idx: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Mean of ``d`` over each row of ``idx``, a few rows at a time (bounded memory)."""
    d = np.asarray(d, dtype=np.float64)
    out = np.empty(len(idx))
    for start in range(0, len(idx), chunk):
        out[start : start + chunk] = d[idx[start : start + chunk]].mean(axis=1)
    return out


def unit_replicates(unit: Unit, replicates: int = BOOTSTRAP_REPLICATES) -> np.ndarray:
    """Bootstrap replicates of ``unit``'s mean contrast (examples resampled; seeds too when
    there are several)."""
    n = unit.n_examples
    if any(len(d) != n for d in unit.contrasts):
        raise ValueError(f"{unit.testset}: contrast vectors of different lengths")
    idx = example_resamples(unit.testset, n, replicates)
    per_seed = np.stack([_resampled_means(d, idx) for d in unit.contrasts])
    if len(unit.contrasts) == 1:
        return per_seed[0]
    s = len(unit.contrasts)
    rng = np.random.default_rng(_seed_of(f"{unit.testset}/{n}/{s}", "seeds"))
    pick = rng.integers(0, s, size=(replicates, s))
    return per_seed[pick, np.arange(replicates)[:, None]].mean(axis=1)


def pooled_interval(
    units: Sequence[Unit], replicates: int = BOOTSTRAP_REPLICATES, level: float = LEVEL
) -> tuple[Interval, list[Interval]]:
    """The interval of the mean contrast over ``units`` (equal weights) and each unit's
    own interval. Units on one test set share example resamples (paired); different test
    sets are resampled independently."""
    if not units:
        raise ValueError("no units to pool")
    reps = [unit_replicates(u, replicates) for u in units]
    alpha = (1.0 - level) / 2.0

    def interval(estimate: float, r: np.ndarray) -> Interval:
        lo, hi = np.quantile(r, [alpha, 1.0 - alpha])
        return Interval(estimate, float(lo), float(hi), level)

    per_unit = [interval(u.estimate, r) for u, r in zip(units, reps, strict=True)]
    pooled = interval(float(np.mean([u.estimate for u in units])), np.mean(reps, axis=0))
    return pooled, per_unit
