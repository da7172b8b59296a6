"""Multi-SLERP: the weighted mean direction at the weighted mean norm, worked by hand, and
its edge cases (tensors no model moved, directions that cancel)."""

from __future__ import annotations

import numpy as np
import pytest

from mergelab.engine import merge_state_dicts
from mergelab.errors import MergeError


def test_orthogonal_directions_by_hand():
    e1, e2 = np.array([2.0, 0.0, 0.0]), np.array([0.0, 4.0, 0.0])
    got = merge_state_dicts("multislerp", [{"w": e1}, {"w": e2}])["w"]
    # equal weights: direction (1, 1, 0)/sqrt(2), norm (2 + 4)/2 = 3
    np.testing.assert_allclose(got, 3 / np.sqrt(2) * np.array([1.0, 1.0, 0.0]), rtol=1e-7)
    got = merge_state_dicts(
        "multislerp", [{"w": e1}, {"w": e2}], model_params=[{"weight": 3}, {"weight": 1}]
    )["w"]
    # weights 3/4, 1/4: direction (3, 1, 0)/sqrt(10), norm 3/4 * 2 + 1/4 * 4 = 2.5
    np.testing.assert_allclose(got, 2.5 / np.sqrt(10) * np.array([3.0, 1.0, 0.0]), rtol=1e-7)


def test_with_a_base_the_task_vectors_are_interpolated():
    base = np.array([1.0, 1.0, 1.0])
    got = merge_state_dicts(
        "multislerp",
        [{"w": base + np.array([2.0, 0, 0])}, {"w": base + np.array([0, 4.0, 0])}, {"w": base}],
        {"w": base},
    )["w"]
    # the third model did not move: its zero vector adds nothing to the direction and 0
    # to the mean norm: (2 + 4 + 0) / 3 = 2 along (1, 1, 0)/sqrt(2)
    np.testing.assert_allclose(got, base + 2 / np.sqrt(2) * np.array([1, 1, 0]), rtol=1e-7)
    still = merge_state_dicts("multislerp", [{"w": base}] * 3, {"w": base})["w"]
    np.testing.assert_array_equal(still, base)  # no model moved: the base, no error


def test_cancelling_directions():
    a = np.array([1.0, 2.0])
    two = merge_state_dicts("multislerp", [{"w": a}, {"w": -a}])["w"]
    np.testing.assert_allclose(two, [0.0, 0.0], atol=1e-12)  # two: the weighted sum
    with pytest.raises(MergeError, match="multislerp: w: the weighted directions cancel"):
        merge_state_dicts(
            "multislerp",
            [{"w": a}, {"w": -a}, {"w": a}],
            model_params=[{"weight": 1}, {"weight": 2}, {"weight": 1}],
        )
