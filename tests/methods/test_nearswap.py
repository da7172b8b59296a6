"""NearSwap against mergekit's formula written independently in torch: the same float32
bytes; its one-model rule and required ``t`` as one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergelab.engine import merge_state_dicts
from mergelab.errors import MergeError


def _mergekit_nearswap(base: torch.Tensor, other: torch.Tensor, t: float) -> torch.Tensor:
    absdiff = torch.abs(base - other)
    weight = (t / absdiff.clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * other + (1 - weight) * base


@pytest.mark.parametrize("t", [1e-4, 0.05, 0.7])
def test_equals_mergekits_formula(t):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((64, 33)).astype(np.float32)
    other = base + rng.standard_normal((64, 33)).astype(np.float32) * np.float32(0.1)
    other[0, :5] = base[0, :5]  # equal elements: the distance floor of 1e-6
    got = merge_state_dicts("nearswap", [{"w": other}], {"w": base}, params={"t": t})["w"]
    expected = _mergekit_nearswap(torch.from_numpy(base), torch.from_numpy(other), t).numpy()
    np.testing.assert_array_equal(got, expected)
    near = np.abs(base - other) <= t
    np.testing.assert_array_equal(got[near], other[near])  # close elements are swapped whole


def test_one_model_besides_the_base_and_t_required():
    w = {"w": np.ones(3, dtype=np.float32)}
    with pytest.raises(MergeError, match="nearswap: needs at least 1 and at most 1 models"):
        merge_state_dicts("nearswap", [w, w], w, params={"t": 0.1})
    with pytest.raises(MergeError, match="nearswap: invalid parameter: t: Field required"):
        merge_state_dicts("nearswap", [w], w)
