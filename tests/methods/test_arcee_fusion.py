"""Arcee Fusion against its definition computed with scipy: importance = |change| x the
row's KL divergence, kept where it reaches the upper Tukey fence."""

from __future__ import annotations

import numpy as np
from scipy.special import rel_entr, softmax

from mergelab.engine import merge_state_dicts


def test_only_outlying_changes_are_taken():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((6, 8))
    model = base + 0.01 * rng.standard_normal((6, 8))
    model[2, 5] += 3.0
    model[4] += 0.5
    got = merge_state_dicts("arcee_fusion", [{"w": model}], {"w": base})["w"]
    p = softmax(model, axis=-1) + 1e-8
    q = softmax(base, axis=-1) + 1e-8
    score = np.abs(model - base) * rel_entr(p, q).sum(axis=-1, keepdims=True)
    s = np.sort(score.ravel())
    n = len(s) - 1
    fence = s[int(0.5 * n)] + 1.5 * (s[int(0.75 * n)] - s[int(0.25 * n)])
    keep = score >= fence
    np.testing.assert_allclose(got, np.where(keep, model, base), rtol=1e-12)
    assert keep[2, 5] and 0 < keep.sum() < keep.size  # the big change is in, not everything


def test_an_unchanged_model_gives_the_base():
    base = np.random.default_rng(1).standard_normal(7)
    got = merge_state_dicts("arcee_fusion", [{"w": base.copy()}], {"w": base})["w"]
    np.testing.assert_array_equal(got, base)
