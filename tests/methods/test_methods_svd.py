"""SVD-based merges (cart, tsv, iso_c, iso_cts) against plainly written computations."""

from __future__ import annotations

import numpy as np
import pytest

from mergelab.engine import merge_state_dicts
from mergelab.errors import MergeError
from mergelab.methods.svd import common_split, energy_rank, randomized_svd


def plain_low_rank(d: np.ndarray, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(d.astype(np.float64), full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


def models(n=4, seed=0, shapes=None, scale=0.1):
    shapes = shapes or {"blk.attn.weight": (24, 16), "blk.bias": (16,), "embed.weight": (10, 16)}
    rng = np.random.default_rng(seed)
    base = {k: rng.standard_normal(s) for k, s in shapes.items()}
    tasks = [
        {k: v + scale * rng.standard_normal(v.shape) for k, v in base.items()} for _ in range(n)
    ]
    return base, tasks


def test_cart_matches_plain_computation():
    _, tasks = models()
    out = merge_state_dicts("cart", tasks, params={"lambda": 0.7, "rank": 0.25})
    stack = np.stack([t["blk.attn.weight"] for t in tasks])
    avg = stack.mean(0)
    k = round(0.25 * 16)
    expected = avg + 0.7 * sum(plain_low_rank(x - avg, k) for x in stack)
    np.testing.assert_allclose(out["blk.attn.weight"], expected, rtol=1e-12, atol=1e-12)
    # Outside the default scope (1-D; an embedding): the average.
    for name in ("blk.bias", "embed.weight"):
        np.testing.assert_allclose(out[name], np.mean([t[name] for t in tasks], 0), atol=1e-15)


@pytest.mark.parametrize("lam", [0.0, 0.5, 3.0])
def test_cart_at_full_rank_is_the_average(lam):
    _, tasks = models()
    stack = np.stack([t["blk.attn.weight"] for t in tasks])
    avg = stack.mean(0)
    # The identity behind it: centred task vectors sum to zero.
    np.testing.assert_allclose((stack - avg).sum(0), 0, atol=1e-13)
    full = avg + lam * sum(plain_low_rank(x - avg, 16) for x in stack)
    np.testing.assert_allclose(full, avg, atol=1e-12)
    out = merge_state_dicts("cart", tasks, params={"lambda": lam, "rank": 1.0})
    assert np.array_equal(out["blk.attn.weight"], avg)
    # energy=1 keeps every singular value through the SVD path (no shortcut): same result.
    out = merge_state_dicts("cart", tasks, params={"lambda": lam, "rank": 1.0, "energy": 1.0})
    np.testing.assert_allclose(out["blk.attn.weight"], avg, atol=1e-12)


def test_cart_weights_centre_on_the_weighted_average():
    _, tasks = models(n=3)
    w = [1.0, 2.0, 5.0]
    out = merge_state_dicts(
        "cart", tasks, params={"rank": 1.0, "energy": 1.0}, model_params=[{"weight": x} for x in w]
    )
    stack = np.stack([t["blk.attn.weight"] for t in tasks])
    expected = np.tensordot(np.array(w) / sum(w), stack, axes=1)
    np.testing.assert_allclose(out["blk.attn.weight"], expected, atol=1e-12)


def test_tensors_outside_the_pattern_end_at_the_average():
    shapes = {
        "l.attn.weight": (12, 8),
        "l.mlp.weight": (12, 8),
        "embed.weight": (9, 8),
        "l.attn.bias": (8,),
        "conv.attn.weight": (6, 3, 3, 3),
    }
    _, tasks = models(shapes=shapes)
    avg = {k: np.mean([t[k] for t in tasks], 0) for k in shapes}
    out = merge_state_dicts("cart", tasks, params={"pattern": "attn", "rank": 0.25})
    for name in ("l.mlp.weight", "embed.weight", "l.attn.bias", "conv.attn.weight"):
        np.testing.assert_allclose(out[name], avg[name], atol=1e-15, err_msg=name)
    assert not np.allclose(out["l.attn.weight"], avg["l.attn.weight"])
    # conv=true: the kernel as [out, in * kh * kw], low rank like any matrix.
    out = merge_state_dicts("cart", tasks, params={"pattern": "attn", "rank": 0.25, "conv": True})
    flat = np.stack([t["conv.attn.weight"].reshape(6, 27) for t in tasks])
    mean = flat.mean(0)
    expected = mean + sum(plain_low_rank(x - mean, round(0.25 * 6)) for x in flat)
    np.testing.assert_allclose(out["conv.attn.weight"].reshape(6, 27), expected, atol=1e-12)
    # exclude='' lets the embedding in.
    out = merge_state_dicts("cart", tasks, params={"exclude": "", "rank": 0.25})
    assert not np.allclose(out["embed.weight"], avg["embed.weight"])


def test_energy_picks_the_fewest_singular_values():
    s = np.array([3.0, 2.0, 1.0, 0.5])
    total = float((s**2).sum())
    assert energy_rank(s, total, 9 / total) == 1
    assert energy_rank(s, total, 13 / total) == 2
    assert energy_rank(s, total, 13.01 / total) == 3
    assert energy_rank(s, total, 1.0) == 4
    assert energy_rank(s[:2], total, 1.0) == 2  # capped: all it has


def decaying(m, n, rank, seed, noise=1e-3):
    rng = np.random.default_rng(seed)
    left = rng.standard_normal((m, rank)) * np.linspace(1, 0.1, rank)
    return left @ rng.standard_normal((rank, n)) + noise * rng.standard_normal((m, n))


@pytest.mark.parametrize("shape", [(300, 120), (120, 300)])
def test_randomized_svd_within_tolerance_of_full(shape):
    """Stated tolerance: rank-k Frobenius error within 1% of the optimal (full SVD) one and
    the leading singular values within 1e-3 relative, at the defaults (oversample 10,
    2 power iterations), on task-vector-like matrices (low rank plus noise)."""
    a = decaying(*shape, rank=40, seed=1).astype(np.float32)
    k = 20
    u, s, vt = randomized_svd(a, k, rng=np.random.default_rng(0))
    assert u.shape == (shape[0], k) and s.shape == (k,) and vt.shape == (k, shape[1])
    full = np.linalg.svd(a.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(s, full[:k], rtol=1e-3)
    optimal = np.sqrt((full[k:] ** 2).sum())
    error = np.linalg.norm(a - (u * s) @ vt)
    assert error <= 1.01 * optimal
    np.testing.assert_allclose(u.T @ u, np.eye(k), atol=1e-4)


def test_cart_randomized_close_to_full():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((200, 100))
    # Each task moves in 5 directions: centred, rank <= 20 = the rank kept (0.2 * 100).
    tasks = [{"w": base + 0.05 * decaying(200, 100, 5, seed=i)} for i in range(4)]
    full = merge_state_dicts("cart", tasks, params={"rank": 0.2})["w"]
    fast = merge_state_dicts("cart", tasks, params={"rank": 0.2, "svd": "randomized"})["w"]
    avg = np.mean([t["w"] for t in tasks], 0)
    assert np.linalg.norm(fast - full) <= 1e-2 * np.linalg.norm(full - avg)


def test_tsv_matches_plain_computation():
    base, tasks = models(n=4)
    out = merge_state_dicts("tsv", tasks, base, params={"alpha": 0.8})
    taus = [t["blk.attn.weight"] - base["blk.attn.weight"] for t in tasks]
    k = 16 // 4
    us, ss, vts = [], [], []
    for tau in taus:
        u, s, vt = np.linalg.svd(tau, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vts.append(vt[:k])
    p, _, q = np.linalg.svd(np.hstack(us), full_matrices=False)
    u_perp = p @ q
    p, _, q = np.linalg.svd(np.vstack(vts), full_matrices=False)
    vt_perp = p @ q
    expected = base["blk.attn.weight"] + 0.8 * u_perp @ np.diag(np.concatenate(ss)) @ vt_perp
    np.testing.assert_allclose(out["blk.attn.weight"], expected, atol=1e-12)
    mean_tau = np.mean([t["blk.bias"] - base["blk.bias"] for t in tasks], 0)
    np.testing.assert_allclose(out["blk.bias"], base["blk.bias"] + 0.8 * mean_tau, atol=1e-14)


def test_iso_c_flattens_the_spectrum_of_the_sum():
    base, tasks = models(n=3)
    out = merge_state_dicts("iso_c", tasks, base, params={"alpha": 1.3})
    total = sum(t["blk.attn.weight"] - base["blk.attn.weight"] for t in tasks)
    u, s, vt = np.linalg.svd(total, full_matrices=False)
    expected = base["blk.attn.weight"] + 1.3 * s.mean() * u @ vt
    np.testing.assert_allclose(out["blk.attn.weight"], expected, atol=1e-12)
    spectrum = np.linalg.svd(out["blk.attn.weight"] - base["blk.attn.weight"], compute_uv=False)
    np.testing.assert_allclose(spectrum, 1.3 * s.mean(), rtol=1e-10)


def test_iso_cts_matches_plain_computation():
    base, tasks = models(n=3, shapes={"w": (20, 16)})
    out = merge_state_dicts("iso_cts", tasks, base, params={"common_fraction": 0.5})
    taus = [t["w"] - base["w"] for t in tasks]
    common, per = common_split(16, 3, 0.5)
    assert (common, per) == (7, 3) and common + 3 * per == 16
    u, s, vt = np.linalg.svd(sum(taus), full_matrices=False)
    uc = u[:, :common]
    us, ss, vts = [uc], [s[:common]], [vt[:common]]
    for tau in taus:
        ut, st, vtt = np.linalg.svd(tau - uc @ uc.T @ tau, full_matrices=False)
        us.append(ut[:, :per])
        ss.append(st[:per])
        vts.append(vtt[:per])
    p, _, q = np.linalg.svd(np.hstack(us), full_matrices=False)
    u_perp = p @ q
    p, _, q = np.linalg.svd(np.vstack(vts), full_matrices=False)
    vt_perp = p @ q
    expected = base["w"] + np.concatenate(ss).mean() * u_perp @ vt_perp
    np.testing.assert_allclose(out["w"], expected, atol=1e-12)
    # common_fraction=1: no task-specific directions, Iso-C.
    cts = merge_state_dicts("iso_cts", tasks, base, params={"common_fraction": 1.0})
    iso = merge_state_dicts("iso_c", tasks, base)
    np.testing.assert_allclose(cts["w"], iso["w"], atol=1e-12)


def test_float32_inputs_stay_float32_and_finite():
    base, tasks = models(n=3)
    f32 = [{k: v.astype(np.float32) for k, v in t.items()} for t in tasks]
    b32 = {k: v.astype(np.float32) for k, v in base.items()}
    for method in ("cart", "tsv", "iso_c", "iso_cts"):
        out = merge_state_dicts(method, f32, None if method == "cart" else b32)
        for name, value in out.items():
            assert value.dtype == np.float32 and np.isfinite(value).all(), (method, name)


def test_user_errors_are_one_line():
    base, tasks = models(n=2)
    with pytest.raises(
        MergeError, match=r"tensor shapes or kinds differ: blk.bias: model 1 \[16\]"
    ):
        merge_state_dicts("cart", tasks, {**base, "blk.bias": np.zeros(3)})  # checked, not read
    with pytest.raises(MergeError, match="not a regular expression"):
        merge_state_dicts("cart", tasks, params={"pattern": "(unclosed"})
    with pytest.raises(MergeError, match="rank"):
        merge_state_dicts("cart", tasks, params={"rank": 0})
    with pytest.raises(MergeError, match="needs a base model"):
        merge_state_dicts("iso_c", tasks)
