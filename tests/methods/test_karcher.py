"""The Karcher mean against what defines it: two directions give their geodesic midpoint,
and at the result of three the tangent vectors to the inputs cancel."""

from __future__ import annotations

import numpy as np

from mergelab.engine import merge_state_dicts


def test_two_models_give_the_geodesic_midpoint_at_the_mean_norm():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(50), 3 * rng.standard_normal(50)
    got = merge_state_dicts("karcher", [{"w": a}, {"w": b}])["w"]
    ua, ub = a / np.linalg.norm(a), b / np.linalg.norm(b)
    mid = (ua + ub) / np.linalg.norm(ua + ub)
    expected = (np.linalg.norm(a) + np.linalg.norm(b)) / 2 * mid
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_at_the_mean_the_tangent_vectors_cancel():
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((6, 5)) + 2.0 for _ in range(3)]
    got = merge_state_dicts(
        "karcher", [{"w": x} for x in xs], params={"max_iter": 200, "tol": 1e-12}
    )["w"]
    u = got.ravel() / np.linalg.norm(got)
    total = np.zeros_like(u)
    for x in xs:
        v = x.ravel() / np.linalg.norm(x)
        c = float(np.clip(v @ u, -1, 1))
        theta = np.arccos(c)
        total += theta / np.sin(theta) * (v - c * u)
    assert np.linalg.norm(total) < 1e-9
    norms = [np.linalg.norm(x) for x in xs]
    assert abs(np.linalg.norm(got) - np.mean(norms)) < 1e-9


def test_a_zero_model_counts_in_the_norm_only():
    a = np.array([3.0, 0.0])
    z = np.zeros(2)
    got = merge_state_dicts("karcher", [{"w": a}, {"w": z}])["w"]
    np.testing.assert_allclose(got, [1.5, 0.0])  # a's direction, half its norm
    assert not merge_state_dicts("karcher", [{"w": z}, {"w": z}])["w"].any()
