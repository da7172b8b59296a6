"""TIES and Breadcrumbs on tensors spanning several chunks, cache blocks and selection
blocks, with many magnitudes tied at the threshold, equal a plain whole-tensor computation
(stable argsort, loops over models): the fast selection and merge change no value."""

from __future__ import annotations

import numpy as np
import pytest

import mergelab.engine.plan as engine_plan
from mergelab.engine import merge_state_dicts
from mergelab.methods.selection import Cutoff, top_k_cutoffs


def top_k(tau: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest |tau| (earliest position first among equals)."""
    order = np.argsort(-np.abs(tau).ravel(), kind="stable")
    mask = np.zeros(tau.size, dtype=bool)
    mask[order[:k]] = True
    return mask.reshape(tau.shape)


def plain_merge(models, base, weights, density, gamma, outliers, consensus, normalize):
    n = base.size
    taus = []
    for m, w in zip(models, weights, strict=True):
        tau = m - base
        if outliers:  # Breadcrumbs: the `target` values below the `top` largest
            target, top = int(density * n), int(gamma * n)
            bottom = max(0, n - target - top)
            keep = top_k(tau, n - bottom) & ~top_k(tau, max(0, n - bottom - target))
        else:
            keep = top_k(tau, max(1, int(density * n)))
        taus.append(tau * keep * np.float32(w))
    if not consensus:
        return base + sum(taus[1:], taus[0])
    vote = sum(taus[1:], taus[0])
    elected = np.where(vote >= 0, 1, -1).astype(np.float32)
    total = np.zeros_like(base)
    divisor = np.zeros_like(base)
    for tau, w in zip(taus, weights, strict=True):
        agree = tau * elected > 0
        total = total + np.where(agree, tau, 0)
        divisor = divisor + np.where(agree, np.float32(w), 0)
    return base + (total / np.where(divisor == 0, 1, divisor) if normalize else total)


def fixture(seed: int, shape: tuple[int, ...], n: int):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(shape).astype(np.float32)
    # Task vectors on a coarse grid: thousands of equal magnitudes at every threshold.
    models = [(base + np.round(rng.standard_normal(shape) * 20) / 400).astype(np.float32)]
    models += [(base + 0.05 * rng.standard_normal(shape)).astype(np.float32) for _ in range(n - 1)]
    models[-1][: shape[0] // 7] = base[: shape[0] // 7]  # zero task vector rows
    return base, models


@pytest.mark.parametrize("chunk", [None, 150_001])
@pytest.mark.parametrize(
    ("method", "density", "weights"),
    [
        ("ties", 0.5, (1, 1, 1)),
        ("ties", 0.1, (0.5, 2, 1)),
        ("ties", 0.9, (1, 1, 1)),
        ("breadcrumbs", 0.5, (1, 1, 1)),
        ("breadcrumbs_ties", 0.3, (1, 2, 1)),
    ],
)
def test_large_tensors_match_the_plain_computation(chunk, method, density, weights, monkeypatch):
    if chunk is not None:
        monkeypatch.setattr(engine_plan, "CHUNK_ELEMENTS", chunk)
    base, models = fixture(len(method) + int(10 * density), (600, 700), 3)
    per_model = [{"weight": w, "density": density, "gamma": 0.02} for w in weights]
    out = merge_state_dicts(
        method, [{"w": m} for m in models], {"w": base}, model_params=per_model
    )["w"]
    expected = plain_merge(
        models,
        base,
        weights,
        density,
        0.02,
        outliers="breadcrumbs" in method,
        consensus=method != "breadcrumbs",
        normalize=method == "ties",  # TIES divides by the agreeing weight; Breadcrumbs sums
    )
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("chunk", [1000, 333_333, 1 << 20])
def test_top_k_cutoffs_keep_exactly_the_stable_sort_selection(chunk):
    rng = np.random.default_rng(5)
    values = np.abs(np.round(rng.standard_normal(400_000) * 30)).astype(np.float32)  # ties
    values[::6] = 0  # what the strided sample sees misleads the first brackets
    ks = [0, 1, 7, 123_456, 200_000, 399_999, 400_000]

    def stream():
        return [(s, values[s : s + chunk]) for s in range(0, values.size, chunk)]

    cutoffs = top_k_cutoffs(stream, ks, values.size)
    for k, cut in zip(ks, cutoffs, strict=True):
        assert isinstance(cut, Cutoff)
        kept = np.concatenate([cut.mask(part, s) for s, part in stream()])
        np.testing.assert_array_equal(kept, top_k(values, k), err_msg=f"k={k}")
