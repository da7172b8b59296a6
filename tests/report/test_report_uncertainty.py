"""Paired bootstrap intervals: equal to a plain computation, paired across numbers of one
test set, seeds resampled, and verdict rules on intervals."""

from __future__ import annotations

import numpy as np
import pytest

from mergelab.report.uncertainty import (
    Interval,
    Unit,
    example_resamples,
    pooled_interval,
    unit_replicates,
)
from mergelab.report.verdicts import CONTRADICTED, INCONCLUSIVE, REPRODUCED, combine, judge


def test_replicates_equal_a_plain_loop() -> None:
    rng = np.random.default_rng(3)
    d = rng.integers(-1, 2, size=300).astype(float)
    reps = unit_replicates(Unit("set-a", (d,)), replicates=500)
    idx = example_resamples("set-a", 300, 500)
    plain = [float(np.mean([d[i] for i in row])) for row in idx]
    np.testing.assert_allclose(reps, plain)
    pooled, (single,) = pooled_interval([Unit("set-a", (d,))], replicates=500)
    lo, hi = np.quantile(plain, [0.025, 0.975])
    assert single.low == pytest.approx(lo) and single.high == pytest.approx(hi)
    assert pooled.estimate == pytest.approx(d.mean())


def test_interval_width_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(0)
    a = (rng.random(2000) < 0.8).astype(float)
    b = (rng.random(2000) < 0.7).astype(float)
    d = a - b
    pooled, _ = pooled_interval([Unit("big", (d,))])
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert pooled.high - pooled.low == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert pooled.low < d.mean() < pooled.high


def test_same_test_set_shares_resamples_and_pools_paired() -> None:
    rng = np.random.default_rng(1)
    x = (rng.random(400) < 0.5).astype(float)
    # Two units that are exact opposites on the same examples: their pooled mean is 0 in
    # every replicate (paired), not a wide interval as independent draws would give.
    pooled, per = pooled_interval([Unit("s", (x,)), Unit("s", (-x,))])
    assert pooled.low == pooled.high == 0.0
    assert per[0].low < per[0].high
    np.testing.assert_array_equal(example_resamples("s", 400), example_resamples("s", 400))
    assert not np.array_equal(example_resamples("s", 400), example_resamples("t", 400))


def test_seeds_are_resampled_too() -> None:
    rng = np.random.default_rng(2)
    noise = (rng.random(500) < 0.5).astype(float) - 0.5
    one = Unit("u", (0.1 + noise * 0.01,))
    spread = Unit("u", (0.1 + noise * 0.01, -0.1 + noise * 0.01))
    w_one = np.ptp(np.quantile(unit_replicates(one), [0.025, 0.975]))
    w_two = np.ptp(np.quantile(unit_replicates(spread), [0.025, 0.975]))
    assert w_two > 10 * w_one  # seed-to-seed spread dominates examples' noise


def test_replicates_are_deterministic() -> None:
    d = np.arange(50, dtype=float) % 3 - 1
    np.testing.assert_array_equal(
        unit_replicates(Unit("z", (d,))), unit_replicates(Unit("z", (d,)))
    )


@pytest.mark.parametrize(
    ("iv", "direction", "threshold", "expected"),
    [
        (Interval(2.0, 1.0, 3.0), "greater", 0.0, "supports"),
        (Interval(-2.0, -3.0, -1.0), "greater", 0.0, "contradicts"),
        (Interval(0.5, -1.0, 2.0), "greater", 0.0, "within noise"),
        (Interval(0.0, 0.0, 0.0), "greater", 0.0, "tie"),
        (Interval(-2.0, -3.0, -1.0), "less", 0.0, "supports"),
        (Interval(0.9, 0.8, 0.99), "less", 0.95, "within noise"),
        (Interval(0.3, -0.5, 0.6), "within", 1.0, "supports"),
        (Interval(3.0, 2.0, 4.0), "within", 1.0, "contradicts"),
        (Interval(0.8, 0.2, 1.5), "within", 1.0, "within noise"),
        (None, "greater", 0.0, "no interval"),
    ],
)
def test_judge(iv: Interval | None, direction: str, threshold: float, expected: str) -> None:
    assert judge(iv, direction, threshold) == expected  # type: ignore[arg-type]


def test_combine() -> None:
    assert combine(["supports", "supports"]) == REPRODUCED
    assert combine(["supports", "contradicts"]) == CONTRADICTED
    assert combine(["supports", "within noise"]) == INCONCLUSIVE
    assert combine(["tie"]) == INCONCLUSIVE
