"""SCE against its formula written independently in torch (float64), and its selection
and erasure on hand-made task vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergelab.engine import merge_state_dicts


def _sce(base: torch.Tensor, models: list[torch.Tensor], topk: float) -> torch.Tensor:
    tv = torch.stack([m - base for m in models])
    if topk < 1:
        var = tv.var(dim=0, unbiased=False).flatten()
        k = int(torch.count_nonzero(var) * topk)
        keep = torch.zeros_like(var)
        keep[torch.argsort(-var.abs(), stable=True)[:k]] = 1
        tv = tv * keep.view(base.shape)
    elected = torch.where(tv.sum(0) >= 0, 1.0, -1.0).to(tv.dtype)
    agree = (tv.sign() == elected).to(tv.dtype)
    energy = (tv**2).flatten(1).mean(1)
    w = energy / energy.sum()
    weights = w.view(-1, *[1] * base.dim()) * agree
    return base + (tv * weights).sum(0) / weights.sum(0).clamp(min=1e-6)


@pytest.mark.parametrize("topk", [1.0, 0.3])
def test_equals_the_formula(topk):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((20, 9))
    models = [base + s * rng.standard_normal((20, 9)) for s in (0.1, 0.2, 0.05)]
    got = merge_state_dicts(
        "sce",
        [{"w": m} for m in models],
        {"w": base},
        params={"select_topk": topk},
    )["w"]
    expected = _sce(torch.from_numpy(base), [torch.from_numpy(m) for m in models], topk)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-12, atol=1e-12)


def test_selection_and_erasure_by_hand():
    base = np.zeros(4)
    a = np.array([1.0, 2.0, 0.0, -1.0])
    b = np.array([1.0, -4.0, 0.0, 3.0])
    # energy: mean(a^2) = 1.5, mean(b^2) = 6.5 -> w = (0.1875, 0.8125)
    got = merge_state_dicts("sce", [{"w": a}, {"w": b}], {"w": base})["w"]
    # element 1: the vote is -2 -> only b (sign -) survives: -4; element 3: +2 -> b: 3;
    # element 0: both agree: (0.1875 + 0.8125) / 1 = 1; element 2: nothing to merge: 0.
    np.testing.assert_allclose(got, [1.0, -4.0, 0.0, 3.0])
    # select_topk 0.5: var = [0, 9, 0, 4], 2 nonzero -> k = 1: only element 1 is kept.
    got = merge_state_dicts("sce", [{"w": a}, {"w": b}], {"w": base}, params={"select_topk": 0.5})[
        "w"
    ]
    np.testing.assert_allclose(got, [0.0, -4.0, 0.0, 0.0])
