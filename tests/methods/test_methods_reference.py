"""Every method against a plainly written computation on small random state dicts.

The references below loop over models and sort with a stable argsort: they share no code
with the methods (no chunking, no statistics passes, no bracketed selection).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from ckpt_helpers import finetunes, random_state

from mergelab.engine import merge_state_dicts

BASE = random_state(0)
MODELS = finetunes(BASE, 3)
WEIGHTS = [0.5, 1.0, 2.0]
FLOAT = (np.float32, np.float64)


def top_k_mask(tau: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest |tau| (earliest position first among equals)."""
    flat = np.abs(tau).ravel()
    order = np.argsort(-flat, kind="stable")
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[:k]] = True
    return mask.reshape(tau.shape)


def ref_ties(taus, weights, lam, normalize=True):
    taus = [w * t for w, t in zip(weights, taus, strict=True)]
    total = sum(taus)
    out = np.zeros_like(taus[0], dtype=np.float64)
    div = np.zeros_like(out)
    for idx in np.ndindex(out.shape):
        elected = 1.0 if total[idx] >= 0 else -1.0
        for w, t in zip(weights, taus, strict=True):
            if t[idx] != 0 and math.copysign(1.0, t[idx]) == elected:
                out[idx] += t[idx]
                div[idx] += w
    div[div == 0] = 1
    return lam * (out / div if normalize else out)


def assert_close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), b, rtol=tol, atol=tol)


def test_linear_weighted_and_unnormalised():
    out = merge_state_dicts("linear", MODELS, model_params=[{"weight": w} for w in WEIGHTS])
    for name in BASE:
        expected = sum(w * m[name].astype(np.float64) for w, m in zip(WEIGHTS, MODELS, strict=True))
        assert_close(out[name], expected / sum(WEIGHTS))
    raw = merge_state_dicts("linear", MODELS, params={"normalize": False})
    assert_close(raw["head.weight"], sum(m["head.weight"].astype(np.float64) for m in MODELS))


def test_task_arithmetic():
    out = merge_state_dicts(
        "task_arithmetic",
        MODELS,
        BASE,
        params={"lambda": 0.3},
        model_params=[{"weight": w} for w in WEIGHTS],
    )
    for name, b in BASE.items():
        tau = sum(w * (m[name] - b) for w, m in zip(WEIGHTS, MODELS, strict=True))
        assert_close(out[name], b + 0.3 * tau)


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_top_k_per_tensor(density):
    out = merge_state_dicts(
        "ties",
        MODELS,
        BASE,
        params={"density": density, "lambda": 0.7},
        model_params=[{"weight": w} for w in WEIGHTS],
    )
    for name, b in BASE.items():
        taus = []
        for m in MODELS:
            tau = m[name].astype(np.float64) - b
            k = max(1, int(density * tau.size)) if density < 1 else tau.size
            taus.append(tau * top_k_mask(tau, k))
        assert_close(out[name], b + ref_ties(taus, WEIGHTS, 0.7))


def test_ties_top_k_over_the_whole_model():
    out = merge_state_dicts("ties", MODELS, BASE, params={"density": 0.3, "scope": "model"})
    names = list(BASE)
    taus = [
        np.concatenate([(m[n].astype(np.float64) - BASE[n]).ravel() for n in names]) for m in MODELS
    ]
    k = int(0.3 * taus[0].size)
    taus = [t * top_k_mask(t, k) for t in taus]
    merged = np.concatenate([BASE[n].ravel() for n in names]) + ref_ties(taus, [1, 1, 1], 1.0)
    got = np.concatenate([out[n].ravel() for n in names])
    assert_close(got, merged)


def test_ties_sum_without_normalising_and_count_election():
    out = merge_state_dicts("ties", MODELS, BASE, params={"density": 0.5, "normalize": False})
    name, b = "layer.0.weight", BASE["layer.0.weight"]
    taus = [(m[name] - b) * top_k_mask(m[name] - b, int(0.5 * b.size)) for m in MODELS]
    assert_close(out[name], b + ref_ties(taus, [1, 1, 1], 1.0, normalize=False))
    counted = merge_state_dicts("ties", MODELS, BASE, params={"density": 0.5, "consensus": "count"})
    signs = sum(np.sign(t) for t in taus)
    elected = np.where(signs >= 0, 1.0, -1.0)
    agree = [(np.sign(t) == elected) for t in taus]
    num = sum(t * a for t, a in zip(taus, agree, strict=True))
    den = np.maximum(sum(a.astype(float) for a in agree), 1)
    assert_close(counted[name], b + num / den)


def test_ties_keeps_exactly_k_when_magnitudes_tie():
    base = {"w": np.zeros(10, np.float32)}
    model = {"w": np.array([1, -1, 1, 1, 0.5, -1, 2, 1, 0, 1], np.float32)}
    out = merge_state_dicts("ties", [model], base, params={"density": 0.4})
    # k = 4: the 2, then the first three of the seven tied 1s (by position).
    np.testing.assert_array_equal(out["w"], [1, -1, 1, 0, 0, 0, 2, 0, 0, 0])


def test_breadcrumbs_drops_outliers_and_small_values():
    out = merge_state_dicts(
        "breadcrumbs", MODELS, BASE, params={"density": 0.5, "gamma": 0.1, "lambda": 0.5}
    )
    for name, b in BASE.items():
        tau_sum = 0
        for m in MODELS:
            tau = m[name].astype(np.float64) - b
            n = tau.size
            target, top = int(0.5 * n), int(0.1 * n)
            bottom = max(0, n - target - top)
            order = np.argsort(np.abs(tau).ravel(), kind="stable")  # ascending
            mask = np.zeros(n, bool)
            mask[order[bottom : bottom + target]] = True
            tau_sum = tau_sum + tau * mask.reshape(tau.shape)
        assert_close(out[name], b + 0.5 * tau_sum)


def test_dare_drops_and_rescales_by_inverse_density():
    base = {"w": np.zeros(20000, np.float32)}
    model = {"w": np.full(20000, 0.3, np.float32)}
    out = merge_state_dicts("dare", [model], base, params={"drop_rate": 0.75, "seed": 3})["w"]
    kept = out != 0
    np.testing.assert_allclose(out[kept], 0.3 / 0.25, rtol=1e-6)
    assert abs(kept.mean() - 0.25) < 0.02  # Bernoulli(0.25), 20000 draws: sd 0.003
    again = merge_state_dicts("dare", [model], base, params={"drop_rate": 0.75, "seed": 3})["w"]
    other = merge_state_dicts("dare", [model], base, params={"drop_rate": 0.75, "seed": 4})["w"]
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, other)


def test_dare_norm_rescale_preserves_l1_and_ties_variant_elects_signs():
    base = {"w": np.zeros(5000, np.float32)}
    rng = np.random.default_rng(1)
    model = {"w": rng.standard_normal(5000).astype(np.float32)}
    out = merge_state_dicts("dare", [model], base, params={"density": 0.3, "rescale": "norm"})["w"]
    assert np.abs(out).sum() == pytest.approx(np.abs(model["w"]).sum(), rel=1e-5)
    pos = {"w": np.ones(5000, np.float32)}
    neg = {"w": -np.ones(5000, np.float32) * 0.5}
    both = merge_state_dicts("dare_ties", [pos, neg], base, params={"density": 1.0})["w"]
    np.testing.assert_array_equal(both, np.ones(5000))  # +1 wins the vote, -0.5 is dropped


def test_slerp_against_the_formula():
    a, b = MODELS[0], MODELS[1]
    out = merge_state_dicts("slerp", [a, b], params={"t": 0.3})
    for name in BASE:
        v0, v1 = a[name].astype(np.float64).ravel(), b[name].astype(np.float64).ravel()
        cos = np.clip(v0 @ v1 / np.linalg.norm(v0) / np.linalg.norm(v1), -1, 1)
        if abs(cos) > 0.9995:
            expected = 0.7 * v0 + 0.3 * v1
        else:
            om = np.arccos(cos)
            expected = (np.sin(0.7 * om) * v0 + np.sin(0.3 * om) * v1) / np.sin(om)
        assert_close(out[name].ravel(), expected)
    ends = merge_state_dicts("slerp", [b], a, params={"t": 0.0})
    assert all(np.allclose(ends[n], a[n]) for n in BASE)


def test_model_stock_two_models():
    out = merge_state_dicts("model_stock", MODELS[:2], BASE)
    for name, b in BASE.items():
        d0 = (MODELS[0][name] - b).astype(np.float64).ravel()
        d1 = (MODELS[1][name] - b).astype(np.float64).ravel()
        cos = d0 @ d1 / (np.linalg.norm(d0) * np.linalg.norm(d1))
        t = 2 * cos / (1 + cos)
        avg = (MODELS[0][name] + MODELS[1][name]) / 2
        assert_close(out[name], t * avg + (1 - t) * b)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("linear", {}),
        ("task_arithmetic", {"lambda": 1.0}),
        ("ties", {"density": 1.0}),
        ("dare", {"density": 1.0}),
        ("breadcrumbs", {"density": 1.0}),
        ("model_stock", {}),
        ("slerp", {"t": 0.4}),
    ],
)
def test_merging_identical_models_gives_that_model(method, params):
    model = MODELS[0]
    uses_base = method in ("task_arithmetic", "ties", "dare", "breadcrumbs", "model_stock")
    out = merge_state_dicts(method, [model, model], BASE if uses_base else None, params=params)
    if method in ("task_arithmetic", "dare", "breadcrumbs"):  # identical task vectors add up
        expected = {k: BASE[k] + 2 * (model[k] - BASE[k]) for k in BASE}
    else:
        expected = model
    for name in BASE:
        assert_close(out[name], expected[name])


def test_invariants():
    one = merge_state_dicts("linear", [MODELS[1]])
    assert all(np.array_equal(one[n], MODELS[1][n]) for n in BASE)  # identity
    zero = merge_state_dicts("task_arithmetic", MODELS, BASE, params={"lambda": 0})
    assert all(np.array_equal(zero[n], BASE[n]) for n in BASE)
