"""The pairwise mergeability metrics against hand computations on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mergelab.analysis.mergeability import (
    GramPair,
    compare_activations,
    effective_rank,
    interaction_overlap,
    loss_barrier,
    pair_metrics,
    spectrum_overlap,
    stable_rank,
    subspace_overlap,
    task_vector_metrics,
)


def test_orthogonal_task_vectors_of_equal_norm() -> None:
    a = np.array([3.0, 0.0, 0.0, 0.0])
    b = np.array([0.0, 0.0, 3.0, 0.0])
    m = task_vector_metrics(a, b)
    assert m["cosine"] == 0.0
    assert m["angle_deg"] == pytest.approx(90.0)
    assert m["dot"] == 0.0
    assert m["l2_distance"] == pytest.approx(3 * math.sqrt(2))
    assert m["magnitude_ratio"] == 1.0
    # [a; b] has singular values 3, 3: p = (1/2, 1/2), exp(ln 2) = 2.
    assert m["effective_rank"] == pytest.approx(2.0)
    assert m["effective_rank_score"] == pytest.approx(0.0)
    assert m["stable_rank"] == pytest.approx(2.0)
    assert m["spectral_gap"] == pytest.approx(0.0)
    assert m["singular_value_ratio"] == pytest.approx(1.0)


def test_identical_task_vectors() -> None:
    a = np.array([0.3, -1.2, 2.5, 0.7, -0.1])
    m = task_vector_metrics(a, a.copy())
    assert m["cosine"] == 1.0
    assert m["angle_deg"] == 0.0
    assert m["l2_distance"] == 0.0
    assert m["dot"] == pytest.approx(float(a @ a))
    assert m["effective_rank"] == 1.0
    assert m["effective_rank_score"] == 1.0
    assert m["stable_rank"] == 1.0
    assert m["spectral_gap"] == 1.0
    assert m["singular_value_ratio"] == 0.0


def test_scaled_copies() -> None:
    a = np.array([1.0, 2.0, -2.0])  # norm 3
    m = task_vector_metrics(a, 3 * a)
    assert m["magnitude_ratio"] == pytest.approx(1 / 3)
    assert m["cosine"] == pytest.approx(1.0)
    assert m["l2_distance"] == pytest.approx(6.0)
    assert m["dot"] == pytest.approx(27.0)
    assert m["effective_rank"] == pytest.approx(1.0)


def test_effective_and_stable_rank_of_unequal_spectrum() -> None:
    # [a; b] with a = (3, 0), b = (0, 1): singular values 3 and 1.
    m = task_vector_metrics(np.array([3.0, 0.0]), np.array([0.0, 1.0]))
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert m["effective_rank"] == pytest.approx(math.exp(entropy))
    assert m["stable_rank"] == pytest.approx(10 / 9)
    assert m["spectral_gap"] == pytest.approx(2 / 3)
    assert m["singular_value_ratio"] == pytest.approx(1 / 3)
    assert effective_rank(np.array([1.0, 1.0, 1.0])) == pytest.approx(3.0)
    assert stable_rank(np.array([2.0, 1.0, 1.0])) == pytest.approx(6 / 4)


def test_zero_task_vector_has_no_direction() -> None:
    m = task_vector_metrics(np.zeros(3), np.array([1.0, 0.0, 0.0]))
    assert math.isnan(m["cosine"]) and math.isnan(m["angle_deg"])
    assert m["magnitude_ratio"] == 0.0
    assert m["effective_rank"] == 1.0


def test_subspace_overlaps_identical_orthogonal_and_half() -> None:
    eye = np.eye(6)
    q1, q2, q3 = eye[:, :2], eye[:, 2:4], eye[:, [0, 4]]
    rot = np.array([[0.6, -0.8], [0.8, 0.6]])  # the same subspace, another basis
    assert subspace_overlap(q1, q1 @ rot) == pytest.approx(1.0)
    assert interaction_overlap(q1, q1 @ rot) == pytest.approx(1.0)
    assert subspace_overlap(q1, q2) == 0.0
    assert interaction_overlap(q1, q2) == 0.0
    # One shared direction of two: principal cosines (1, 0).
    assert subspace_overlap(q1, q3) == pytest.approx(math.sqrt(1 / 2))
    assert interaction_overlap(q1, q3) == pytest.approx(1 / 2)


def test_spectrum_overlap_by_hand() -> None:
    assert spectrum_overlap(np.array([2.0, 1.0]), np.array([1.0, 2.0])) == pytest.approx(4 / 5)
    # Scale-free, and only the top k values count; the shorter one is zero-padded.
    assert spectrum_overlap(np.array([4.0, 2.0, 1.9]), np.array([2.0, 1.0]), k=2) == (
        pytest.approx(1.0)
    )
    assert spectrum_overlap(np.array([1.0, 1.0]), np.array([1.0])) == pytest.approx(
        1 / math.sqrt(2)
    )


def _full_svd_metrics(a: np.ndarray, b: np.ndarray, k: int, spectrum_k: int) -> dict:
    """The per-layer metrics the plain way: a float64 full SVD of each matrix."""
    ua, sa, vta = np.linalg.svd(a.astype(np.float64), full_matrices=False)
    ub, sb, vtb = np.linalg.svd(b.astype(np.float64), full_matrices=False)
    r = len(sa)

    def rms(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.linalg.norm(x.T @ y) / math.sqrt(x.shape[1]))

    return {
        "singular_value_overlap": float(
            sa[:spectrum_k]
            @ sb[:spectrum_k]
            / np.linalg.norm(sa[:spectrum_k])
            / np.linalg.norm(sb[:spectrum_k])
        ),
        "left_subspace_overlap": rms(ua[:, :k], ub[:, :k]),
        "right_subspace_overlap_top": rms(vta[:k].T, vtb[:k].T),
        "interaction_overlap_top": rms(vta[:k].T, vtb[:k].T) ** 2,
        "right_subspace_overlap_bottom": rms(vta[r - k :].T, vtb[r - k :].T),
        "interaction_overlap_bottom": rms(vta[r - k :].T, vtb[r - k :].T) ** 2,
    }


def _partly_shared(m: int, n: int, s: np.ndarray, seed: int) -> np.ndarray:
    """U diag(s) V^T with U, V random perturbations of one common pair of bases: the
    singular subspaces of two such matrices overlap partly (0.1 .. 0.5 here)."""
    r = len(s)
    common = np.random.default_rng(99)
    cu = np.linalg.qr(common.standard_normal((m, r)))[0]
    cv = np.linalg.qr(common.standard_normal((n, r)))[0]
    g = np.random.default_rng(seed)
    u = np.linalg.qr(cu + 0.5 * g.standard_normal((m, r)))[0]
    v = np.linalg.qr(cv + 0.5 * g.standard_normal((n, r)))[0]
    return (u * s) @ v.T


@pytest.mark.parametrize("shape", [(300, 120), (120, 300)])
@pytest.mark.parametrize("decay", ["power", "geometric"])
def test_gram_metrics_equal_the_full_svd(shape: tuple[int, int], decay: str) -> None:
    """The float64 Gram path (eigh of A^T A, or of A A^T for m < n, where the right vectors
    follow from the cross term) gives every per-layer metric within 1e-8 of a float64 full
    SVD, on spectra like a task vector's: s_i = 1 / i (condition 120) and a geometric decay
    to 1e-4 s_1 (condition 1e4; squared in the Gram: 1e8)."""
    m, n = shape
    r = min(m, n)
    s = 1 / np.arange(1, r + 1) if decay == "power" else np.geomspace(1, 1e-4, r)
    a, b = _partly_shared(m, n, s, 1), _partly_shared(m, n, s * np.linspace(1, 2, r), 2)
    want = _full_svd_metrics(a, b, k=10, spectrum_k=100)
    got, how = pair_metrics(a, b, gram_max=r)
    assert how == "bottom"
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-8), name
    assert 0.1 < want["right_subspace_overlap_bottom"] < 0.5  # partly shared: a real test
    assert 0.1 < want["left_subspace_overlap"] < 0.5
    # Row blocks of any size give the same sums (diagnose streams one chunk at a time).
    pair = GramPair.of(a.astype(np.float32), b.astype(np.float32), block_elements=7 * max(m, n))
    whole = GramPair.of(a.astype(np.float32), b.astype(np.float32))
    np.testing.assert_allclose(pair.ab, whole.ab, rtol=1e-12, atol=1e-15)
    assert pair.rows == whole.rows == max(m, n)


def test_layer_metrics_identical_and_orthogonal_matrices() -> None:
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    p, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    s = np.array([5.0, 4.0, 3.0])
    a = q[:, :3] @ np.diag(s) @ p[:, :3].T
    b = q[:, 3:6] @ np.diag(s) @ p[:, 3:6].T  # orthogonal left and right spaces
    same, how = pair_metrics(a, a.copy(), subspace_k=3, spectrum_k=3)
    for name in ("left_subspace_overlap", "right_subspace_overlap_top", "interaction_overlap_top"):
        assert same[name] == pytest.approx(1.0)
    assert same["singular_value_overlap"] == pytest.approx(1.0)
    # Rank 3 of 8: five zero singular values, more than k = 3, so the bottom-3 right vectors
    # are any 3 of the null space: left out, not a number that depends on LAPACK.
    assert how == "rank_deficient"
    assert "right_subspace_overlap_bottom" not in same
    other, _ = pair_metrics(a, b, subspace_k=3, spectrum_k=3)
    for name in ("left_subspace_overlap", "right_subspace_overlap_top", "interaction_overlap_top"):
        assert other[name] == pytest.approx(0.0, abs=1e-12)
    assert other["singular_value_overlap"] == pytest.approx(1.0)  # same spectrum


def test_rank_deficient_task_vectors() -> None:
    """Null space of dimension <= k (m >= n): the bottom-k subspace (null space and the
    smallest others) is determined, equal to the full SVD's; for m < n a zero among the k
    bottom values leaves the layer out; rank < k trims the top-k to the rank."""
    rng = np.random.default_rng(3)
    r = 40
    s = np.geomspace(1, 1e-2, r)
    a, b = _partly_shared(90, r, s, 1), _partly_shared(90, r, s, 2)
    a = a @ np.diag(np.r_[np.ones(r - 4), np.zeros(4)])  # 4 zero columns: null dim 4 < k
    got, how = pair_metrics(a, b, gram_max=r)
    assert how == "bottom"
    want = _full_svd_metrics(a, b, k=10, spectrum_k=100)
    for name in ("right_subspace_overlap_bottom", "interaction_overlap_bottom"):
        assert got[name] == pytest.approx(want[name], abs=1e-8), name
    # m < n: the right vectors of a zero singular value are arbitrary in a large null space.
    _, how = pair_metrics(a.T.copy(), b.T.copy(), gram_max=r)
    assert how == "rank_deficient"
    # Two rank-2 matrices with the same row and column spaces: top-10 overlaps are those of
    # the two determined directions, 1, not diluted by eight arbitrary ones.
    u = np.linalg.qr(rng.standard_normal((30, 2)))[0]
    v = np.linalg.qr(rng.standard_normal((20, 2)))[0]
    low_a, low_b = u @ np.diag([3.0, 1.0]) @ v.T, u @ np.diag([1.0, 2.0]) @ v.T
    for cap in (20, 0):  # the Gram and the randomized path
        low, how = pair_metrics(low_a, low_b, gram_max=cap)
        assert how == ("rank_deficient" if cap else "over_cap")
        assert low["right_subspace_overlap_top"] == pytest.approx(1.0)
        assert low["left_subspace_overlap"] == pytest.approx(1.0)


def test_randomized_top_k_overlaps_match_the_full_svd() -> None:
    """On matrices with a spectral drop after 10 values, the randomized SVD's top-10 metrics
    (over the Gram cap) are within 1e-6 of the full SVD's (the randomized path is taken:
    2 * 110 < 260)."""
    rng = np.random.default_rng(1)
    m, n = 300, 260
    shared, _ = np.linalg.qr(rng.standard_normal((n, 20)))

    def matrix(seed: int) -> np.ndarray:
        g = np.random.default_rng(seed)
        u, _ = np.linalg.qr(g.standard_normal((m, n)))
        v = np.hstack([shared[:, :5], np.linalg.qr(g.standard_normal((n, n - 5)))[0]])
        v, _ = np.linalg.qr(v)
        s = np.concatenate([np.linspace(20, 10, 10), 0.01 * g.random(n - 10)])
        return (u * s) @ v.T

    a, b = matrix(2), matrix(3)
    full = _full_svd_metrics(a, b, k=10, spectrum_k=10)
    fast, how = pair_metrics(a, b, spectrum_k=10, gram_max=259)
    assert how == "over_cap"
    assert set(fast) == {
        "singular_value_overlap",
        "left_subspace_overlap",
        "right_subspace_overlap_top",
        "interaction_overlap_top",
    }
    for name, value in fast.items():
        assert value == pytest.approx(full[name], abs=1e-6), name
    assert 0.3 < full["right_subspace_overlap_top"] < 0.9  # partly shared: a real test


def test_compare_activations_and_barrier() -> None:
    c = compare_activations(np.array([3.0, 4.0]), np.array([6.0, 8.0]))
    assert c == pytest.approx(
        {"l2_distance": 5.0, "cosine": 1.0, "dot": 50.0, "magnitude_ratio": 0.5}
    )
    # loss(0.5) = 3 against the line's 1.5: barrier 1.5.
    assert loss_barrier(np.array([0, 0.5, 1]), np.array([1.0, 3.0, 2.0])) == 1.5
    assert loss_barrier(np.array([0, 0.5, 1]), np.array([1.0, 1.0, 1.0])) == 0.0
    with pytest.raises(ValueError, match="from 0 to 1"):
        loss_barrier(np.array([0.1, 1.0]), np.array([1.0, 2.0]))
