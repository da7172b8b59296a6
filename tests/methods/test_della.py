"""DELLA: the magnitude-ranked keep probabilities, measured on many draws; the L1 rescale;
density 1 reduces to TIES / task arithmetic; seeded; bad epsilon in one line."""

from __future__ import annotations

import numpy as np
import pytest

from mergelab.engine import merge_state_dicts
from mergelab.errors import MergeError
from mergelab.methods.base import seeded_generator
from mergelab.methods.della import magprune_mask


def test_keep_probability_rises_with_magnitude_rank():
    row = np.arange(1, 11, dtype=np.float64) * np.array([1, -1] * 5)  # |values| 1..10
    rng = seeded_generator(0, "test")
    kept = np.mean([magprune_mask(row, 0.5, 0.2, rng) for _ in range(20000)], axis=0)
    expected = 0.3 + 0.4 * np.arange(10) / 9  # density - eps .. density + eps
    np.testing.assert_allclose(kept, expected, atol=0.015)
    rows = np.tile(row, (3, 1))  # 2-D: ranked within each row
    assert magprune_mask(rows, 0.5, 0.2, rng).shape == (3, 10)


def test_l1_norm_is_restored_and_density_one_is_task_arithmetic():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((8, 50))
    model = base + rng.standard_normal((8, 50))
    got = merge_state_dicts(
        "della_linear", [{"w": model}], {"w": base}, model_params=[{"density": 0.4}]
    )["w"]
    tau, kept = model - base, got - base
    assert np.abs(kept).sum() == pytest.approx(np.abs(tau).sum(), rel=1e-12)
    assert 0.3 < np.mean(kept != 0) < 0.5
    models = [base + rng.standard_normal((8, 50)) for _ in range(3)]
    full = merge_state_dicts("della_linear", [{"w": m} for m in models], {"w": base})["w"]
    ta = merge_state_dicts("task_arithmetic", [{"w": m} for m in models], {"w": base})["w"]
    np.testing.assert_allclose(full, ta, rtol=1e-12)
    della = merge_state_dicts("della", [{"w": m} for m in models], {"w": base})["w"]
    ties = merge_state_dicts(
        "ties", [{"w": m} for m in models], {"w": base}, params={"normalize": True}
    )["w"]
    np.testing.assert_allclose(della, ties, rtol=1e-12)


def test_masks_are_seeded():
    rng = np.random.default_rng(1)
    base = rng.standard_normal(100)
    models = [{"w": base + rng.standard_normal(100)} for _ in range(2)]
    kw = {"model_params": [{"density": 0.5}] * 2}
    a = merge_state_dicts("della", models, {"w": base}, **kw)["w"]
    b = merge_state_dicts("della", models, {"w": base}, **kw)["w"]
    c = merge_state_dicts("della", models, {"w": base}, params={"seed": 7}, **kw)["w"]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_epsilon_outside_the_range_is_one_line():
    w = {"w": np.ones(4)}
    with pytest.raises(MergeError, match=r"della: model 1: density 0.1 \+- epsilon 0.15"):
        merge_state_dicts("della", [w], w, model_params=[{"density": 0.1}])
