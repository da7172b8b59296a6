"""The pairwise mergeability metrics against hand computations on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mergelab.analysis.mergeability import (
    compare_activations,
    effective_rank,
    interaction_overlap,
    layer_metrics,
    layer_spectra,
    loss_barrier,
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


def test_layer_metrics_identical_and_orthogonal_matrices() -> None:
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    p, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    s = np.array([5.0, 4.0, 3.0])
    a = q[:, :3] @ np.diag(s) @ p[:, :3].T
    b = q[:, 3:6] @ np.diag(s) @ p[:, 3:6].T  # orthogonal left and right spaces
    same = layer_metrics(
        *(layer_spectra(m, subspace_k=3, full=True) for m in (a, a.copy())), spectrum_k=3
    )
    for name in ("left_subspace_overlap", "right_subspace_overlap_top", "interaction_overlap_top"):
        assert same[name] == pytest.approx(1.0)
    assert same["singular_value_overlap"] == pytest.approx(1.0)
    assert same["right_subspace_overlap_bottom"] == pytest.approx(1.0)
    other = layer_metrics(
        *(layer_spectra(m, subspace_k=3, full=True) for m in (a, b)), spectrum_k=3
    )
    for name in ("left_subspace_overlap", "right_subspace_overlap_top", "interaction_overlap_top"):
        assert other[name] == pytest.approx(0.0, abs=1e-12)
    assert other["singular_value_overlap"] == pytest.approx(1.0)  # same spectrum


def test_randomized_top_k_overlaps_match_the_full_svd() -> None:
    """On matrices with a spectral drop after 10 values, the randomized SVD's top-10 metrics
    are within 1e-6 of the full SVD's (the randomized path is taken: 2 * 110 < 260)."""
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
    full = layer_metrics(*(layer_spectra(x, spectrum_k=10, full=True) for x in (a, b)), 10)
    fast_a, fast_b = (layer_spectra(x, spectrum_k=10, full=False) for x in (a, b))
    assert fast_a.v_bottom is None
    fast = layer_metrics(fast_a, fast_b, 10)
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
