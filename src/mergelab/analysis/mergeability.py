"""Pairwise mergeability metrics of "Demystifying Mergeability" (Zhou, Zhao, Yu, Rodola,
arXiv:2601.22285) as pure NumPy functions.

Two fine-tunes A and B of one base give task vectors ``tau_A = A - base`` and
``tau_B = B - base``. The whole-model metrics need only four float64 sums over every
element (``aa = <tau_A, tau_A>``, ``bb``, ``ab`` and ``dd = ||tau_A - tau_B||^2``), so they
are computed from sums that :mod:`mergelab.diagnose` accumulates tensor by tensor; the
stacked 2 x d matrix ``M = [tau_A; tau_B]`` has the Gram matrix ``[[aa, ab], [ab, bb]]``,
whose eigenvalues are the squares of M's two singular values. The per-layer subspace
metrics of a 2-D weight come from the float64 Gram matrices of its two task vectors'
short side (:class:`GramPair`, added row block by row block: no full SVD, and for
m >= n not even the matrices held), or, above a size cap, from a randomized top-k SVD.

Where the paper's definitions are loose, the formula chosen is written in each function's
docstring (and in :data:`DESCRIPTIONS`, which ``mergelab diagnose --json`` writes out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from mergelab.methods.svd import randomized_svd

__all__ = [
    "DESCRIPTIONS",
    "GramPair",
    "GramSums",
    "LayerSpectra",
    "compare_activations",
    "compare_vectors",
    "effective_rank",
    "gram_singular_values",
    "interaction_overlap",
    "layer_metrics",
    "layer_spectra",
    "loss_barrier",
    "mean_metrics",
    "pair_metrics",
    "spectrum_overlap",
    "stable_rank",
    "stacked_metrics",
    "subspace_overlap",
    "task_vector_metrics",
]

DESCRIPTIONS: dict[str, str] = {
    # weights only: the whole model as one vector
    "cosine": "<tau_A, tau_B> / (||tau_A|| ||tau_B||), tau_X = X - base over every float tensor",
    "l2_distance": "||tau_A - tau_B|| (= ||A - B||)",
    "dot": "<tau_A, tau_B>",
    "angle_deg": "arccos(cosine) in degrees, 0..180",
    "magnitude_ratio": "min(||tau_A||, ||tau_B||) / max(||tau_A||, ||tau_B||), 0..1",
    "effective_rank": "exp(-sum p_i log p_i), p_i = s_i / (s_1 + s_2), s = singular values of "
    "the 2 x d matrix [tau_A; tau_B] (Roy & Vetterli 2007); 1 (parallel) .. 2 (orthogonal, "
    "equal norms)",
    "effective_rank_score": "2 - effective_rank; 1 (parallel) .. 0",
    "stable_rank": "(s_1^2 + s_2^2) / s_1^2 = ||M||_F^2 / s_max^2 of M = [tau_A; tau_B]; 1 .. 2",
    "spectral_gap": "(s_1 - s_2) / s_1 of M = [tau_A; tau_B]; 1 (parallel) .. 0",
    "singular_value_ratio": "s_2 / s_1 of M = [tau_A; tau_B]; 0 (parallel) .. 1",
    "layerwise_effective_rank": "effective_rank of [tau_A; tau_B] per float tensor, plain mean "
    "over tensors (tensors where both task vectors are zero are left out)",
    "layerwise_effective_rank_score": "2 - layerwise_effective_rank",
    # weights only: per 2-D weight, averaged over weights
    "singular_value_overlap": "cosine of the top-k singular values of tau_A and tau_B "
    "(k = spectrum_k, fewer where the matrix has fewer), mean over 2-D weights",
    "left_subspace_overlap": "||U_A^T U_B||_F / sqrt(k), U_X the top-k left singular vectors "
    "(k = subspace_k): root mean square cosine of the principal angles, 1 same subspace, "
    "0 orthogonal; mean over 2-D weights",
    "right_subspace_overlap_top": "||V_A^T V_B||_F / sqrt(k) of the top-k right singular "
    "vectors; mean over 2-D weights. Top-k uses k' = min(k, rank A, rank B) vectors (a "
    "singular value below 1e-5 s_1 counts as 0; vectors of 0 are arbitrary)",
    "right_subspace_overlap_bottom": "||V_A^T V_B||_F / sqrt(k) of the k right singular vectors "
    "of the smallest of the min(m, n) singular values, from the eigenvectors of the float64 "
    "Gram matrix of the short side (weights with min(m, n) <= gram_max); mean over those "
    "weights, leaving out the rank-deficient ones where these vectors are not determined "
    "(more than k zero singular values; for m < n, any zero among the k): counted in "
    "layers.bottom_rank_deficient",
    "interaction_overlap_top": "mean of the squared singular values of the interaction matrix "
    "V_A^T V_B (top-k right singular vectors) = mean squared cosine of the principal angles "
    "(per weight the square of right_subspace_overlap_top); mean over 2-D weights",
    "interaction_overlap_bottom": "as interaction_overlap_top with the bottom-k right singular "
    "vectors (the weights of right_subspace_overlap_bottom)",
    # with data
    "activation_l2": "||a_A - a_B||, a_X = model X's output of the chosen layer (default: the "
    "penultimate features) averaged over positions and samples; both models see the same "
    "samples (those of both tasks)",
    "activation_cosine": "<a_A, a_B> / (||a_A|| ||a_B||)",
    "activation_dot": "<a_A, a_B>",
    "activation_magnitude_ratio": "min(||a_A||, ||a_B||) / max(||a_A||, ||a_B||)",
    "encoder_gradient_cosine": "cosine of g_A, g_B; g_X = gradient of the mean loss of model X "
    "on its own task's samples, with its own head, over every parameter but the head's",
    "encoder_gradient_l2": "||g_A - g_B|| of the encoder gradients",
    "encoder_gradient_dot": "<g_A, g_B> of the encoder gradients",
    "input_gradient_cosine": "cosine of h_A, h_B; h_X = mean over model X's samples of "
    "d loss_i / d x_i (one image-shaped vector)",
    "input_gradient_l2": "||h_A - h_B|| of the input gradients",
    "input_gradient_dot": "<h_A, h_B> of the input gradients",
    "loss_barrier": "max over alpha of L(alpha) - ((1 - alpha) L(0) + alpha L(1)), "
    "L(alpha) the loss of (1 - alpha) A + alpha B (see 'barrier' for what is interpolated)",
}


@dataclass
class GramSums:
    """The float64 sums the whole-model metrics need; add tensor by tensor."""

    aa: float = 0.0
    bb: float = 0.0
    ab: float = 0.0
    dd: float = 0.0

    def add(self, tau_a: np.ndarray, tau_b: np.ndarray) -> None:
        a = np.asarray(tau_a, dtype=np.float64).ravel()
        b = np.asarray(tau_b, dtype=np.float64).ravel()
        d = a - b
        self.aa += float(a @ a)
        self.bb += float(b @ b)
        self.ab += float(a @ b)
        self.dd += float(d @ d)

    def __iadd__(self, other: GramSums) -> GramSums:
        self.aa += other.aa
        self.bb += other.bb
        self.ab += other.ab
        self.dd += other.dd
        return self


def compare_vectors(aa: float, bb: float, ab: float, dd: float) -> dict[str, float]:
    """Cosine, L2 distance, dot, angle (degrees) and magnitude ratio of two vectors given
    their sums ``aa = <a, a>``, ``bb``, ``ab`` and ``dd = ||a - b||^2`` (accumulated apart:
    ``aa + bb - 2 ab`` cancels for near-equal vectors). A zero vector has no direction:
    cosine and angle are NaN, and the magnitude ratio is 0 (1 when both are zero)."""
    na, nb = math.sqrt(aa), math.sqrt(bb)
    cosine = ab / (na * nb) if na > 0 and nb > 0 else math.nan
    if not math.isnan(cosine):
        cosine = min(1.0, max(-1.0, cosine))
    big = max(na, nb)
    return {
        "cosine": cosine,
        "l2_distance": math.sqrt(max(dd, 0.0)),
        "dot": ab,
        "angle_deg": math.degrees(math.acos(cosine)) if not math.isnan(cosine) else math.nan,
        "magnitude_ratio": min(na, nb) / big if big > 0 else 1.0,
    }


def gram_singular_values(aa: float, bb: float, ab: float) -> tuple[float, float]:
    """Singular values s_1 >= s_2 of the 2 x d matrix [a; b] from its Gram matrix
    [[aa, ab], [ab, bb]]: s_i^2 are its eigenvalues. The smaller eigenvalue is taken as
    det / lambda_1, which is exactly 0 for identical vectors (no cancellation)."""
    half = (aa + bb) / 2
    lam1 = half + math.hypot((aa - bb) / 2, ab)
    if lam1 <= 0:
        return 0.0, 0.0
    lam2 = max(aa * bb - ab * ab, 0.0) / lam1
    return math.sqrt(lam1), math.sqrt(min(lam2, lam1))


def effective_rank(s: np.ndarray) -> float:
    """Roy & Vetterli's effective rank: exp of the entropy of p_i = s_i / sum(s)
    (0 log 0 = 0); 1 for one non-zero singular value, n for n equal ones; NaN for all-zero."""
    s = np.asarray(s, dtype=np.float64)
    total = s.sum()
    if total <= 0:
        return math.nan
    p = s[s > 0] / total
    return float(math.exp(-(p * np.log(p)).sum()))


def stable_rank(s: np.ndarray) -> float:
    """||M||_F^2 / s_max^2 = sum s_i^2 / max s_i^2; NaN for all-zero."""
    s = np.asarray(s, dtype=np.float64)
    top = s.max() if s.size else 0.0
    return float((s**2).sum() / top**2) if top > 0 else math.nan


def stacked_metrics(aa: float, bb: float, ab: float) -> dict[str, float]:
    """Effective rank (and its score, 2 - rank), stable rank, spectral gap (s_1 - s_2) / s_1
    and singular-value ratio s_2 / s_1 of [tau_A; tau_B], from its Gram sums."""
    s1, s2 = gram_singular_values(aa, bb, ab)
    s = np.array([s1, s2])
    rank = effective_rank(s)
    return {
        "effective_rank": rank,
        "effective_rank_score": 2.0 - rank,
        "stable_rank": stable_rank(s),
        "spectral_gap": (s1 - s2) / s1 if s1 > 0 else math.nan,
        "singular_value_ratio": s2 / s1 if s1 > 0 else math.nan,
    }


def task_vector_metrics(tau_a: np.ndarray, tau_b: np.ndarray) -> dict[str, float]:
    """Every whole-model weight metric of two task vectors held in memory (flattened)."""
    sums = GramSums()
    sums.add(tau_a, tau_b)
    return {
        **compare_vectors(sums.aa, sums.bb, sums.ab, sums.dd),
        **stacked_metrics(sums.aa, sums.bb, sums.ab),
    }


def spectrum_overlap(s_a: np.ndarray, s_b: np.ndarray, k: int = 100) -> float:
    """Cosine similarity of the top-``k`` singular values of two matrices (each sorted in
    decreasing order; the shorter one zero-padded). Scale-free: normalising each spectrum by
    its sum, as the paper's code does, does not change a cosine."""
    a = np.asarray(s_a, dtype=np.float64)[:k]
    b = np.asarray(s_b, dtype=np.float64)[:k]
    n = max(a.size, b.size)
    a, b = np.pad(a, (0, n - a.size)), np.pad(b, (0, n - b.size))
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else math.nan


ZERO_RTOL = 1e-5
"""A singular value below ZERO_RTOL * s_1 counts as zero. The float64 Gram matrix resolves
singular values down to about sqrt(max(m, n) * eps) * s_1 (3e-6 s_1 for 32000 rows)."""


def _overlaps(product: np.ndarray) -> tuple[float, float]:
    """(||M||_F / sqrt(k), ||M||_F^2 / k) of the k x k product M = Q_A^T Q_B of two
    orthonormal bases: the root mean square and the mean squared cosine of the principal
    angles (the latter = the mean squared singular value of the interaction matrix M)."""
    k = product.shape[0]
    if k == 0:  # no determined direction (a zero matrix)
        return math.nan, math.nan
    frob2 = float((product**2).sum())
    return min(1.0, math.sqrt(frob2 / k)), min(1.0, frob2 / k)


def subspace_overlap(q_a: np.ndarray, q_b: np.ndarray) -> float:
    """||Q_A^T Q_B||_F / sqrt(k) for two sets of k orthonormal columns: the root mean square
    cosine of the principal angles between the subspaces; 1 for the same subspace, 0 for
    orthogonal ones. (The paper's code divides the left overlap by k instead of sqrt(k),
    which caps it at 1/sqrt(k); sqrt(k) gives both sides the same 0..1 scale.)"""
    return _overlaps(_product(q_a, q_b))[0]


def interaction_overlap(q_a: np.ndarray, q_b: np.ndarray) -> float:
    """Mean of the squared singular values of the interaction matrix Q_A^T Q_B (k x k), the
    squared cosines of the principal angles: ||Q_A^T Q_B||_F^2 / k, in 0..1."""
    return _overlaps(_product(q_a, q_b))[1]


def _product(q_a: np.ndarray, q_b: np.ndarray) -> np.ndarray:
    k = q_a.shape[1]
    if k == 0 or q_b.shape[1] != k:
        raise ValueError(f"need two bases of the same k >= 1 columns, got {q_a.shape}, {q_b.shape}")
    return q_a.T.astype(np.float64) @ q_b.astype(np.float64)


def _rank(s: np.ndarray) -> int:
    """Singular values (decreasing) above ZERO_RTOL * s_1."""
    return int(np.count_nonzero(s > ZERO_RTOL * s[0])) if s.size and s[0] > 0 else 0


class GramPair:
    """A^T A, B^T B and A^T B (float64, n x n) of two m x n matrices (m >= n) added row block
    by row block: all the per-layer metrics need, without holding A or B (memory 3 n^2
    float64 + one block). The Gram matrix squares the condition number, hence float64: the
    k bottom right singular vectors come out accurate to about eps * s_1^2 / (s_(n-k)^2 -
    s_(n-k+1)^2), better than a float32 SVD's eps_32 * s_1 / (s_(n-k) - s_(n-k+1))."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.aa = np.zeros((n, n))
        self.bb = np.zeros((n, n))
        self.ab = np.zeros((n, n))
        self.rows = 0

    def add(self, a_rows: np.ndarray, b_rows: np.ndarray) -> None:
        a = np.asarray(a_rows, dtype=np.float64).reshape(-1, self.n)
        b = np.asarray(b_rows, dtype=np.float64).reshape(-1, self.n)
        self.aa += a.T @ a
        self.bb += b.T @ b
        self.ab += a.T @ b
        self.rows += a.shape[0]

    @classmethod
    def of(cls, a: np.ndarray, b: np.ndarray, block_elements: int = 1 << 20) -> GramPair:
        """The Gram matrices of the short side of two m x n matrices in memory: of A and B
        when m >= n, else of A^T and B^T (blocks of columns, converted block by block)."""
        if a.shape[0] < a.shape[1]:
            a, b = a.T, b.T
        m, n = a.shape
        pair = cls(n)
        step = max(1, block_elements // n)
        for start in range(0, m, step):
            pair.add(a[start : start + step], b[start : start + step])
        return pair

    def metrics(
        self, *, transposed: bool, spectrum_k: int = 100, subspace_k: int = 10
    ) -> tuple[dict[str, float], bool]:
        """(the per-layer metrics, whether the bottom-k ones are determined). ``transposed``:
        the rows added were those of the weights' transposes (m < n), so the Gram side is
        the weights' left side.

        The eigenvectors of A^T A are A's right singular vectors V (eigenvalues s^2); the
        other side's never appear: U_A^T U_B = S_A^-1 V_A^T (A^T B) V_B S_B^-1. Top-k uses
        k' = min(k, rank A, rank B) vectors (those of a zero singular value are arbitrary).
        The bottom-k right subspace (the k smallest of the min(m, n) singular values) is
        left out (second value False) where it is not determined by the weights: when more
        than k singular values are 0 (any basis of the null space would do), or, for m < n,
        when any of the k is 0."""
        # One BLAS thread: LAPACK's eigh of n ~ 1000 gains little from threads, and with
        # more threads than free cores it slows down 50-fold (OpenBLAS, measured).
        with threadpool_limits(limits=1, user_api="blas"):
            la, wa = np.linalg.eigh(self.aa)
            lb, wb = np.linalg.eigh(self.bb)
        sa = np.sqrt(np.clip(la[::-1], 0.0, None))
        sb = np.sqrt(np.clip(lb[::-1], 0.0, None))
        wa, wb = wa[:, ::-1], wb[:, ::-1]
        n = self.n
        out = {"singular_value_overlap": spectrum_overlap(sa, sb, spectrum_k)}
        rank = min(_rank(sa), _rank(sb))
        k = min(subspace_k, rank)
        gram_top = wa[:, :k].T @ wb[:, :k]
        other_top = self._other(wa[:, :k], sa[:k], wb[:, :k], sb[:k])
        right, left = (other_top, gram_top) if transposed else (gram_top, other_top)
        out["left_subspace_overlap"] = _overlaps(left)[0]
        out["right_subspace_overlap_top"], out["interaction_overlap_top"] = _overlaps(right)
        k = min(subspace_k, n)
        bottom = slice(n - k, n)
        # m < n: V = A^T U S^-1, each of the k singular values must be non-zero; m >= n:
        # the eigenvectors themselves, at most k zero singular values.
        determined = rank == n if transposed else (k == n or n - k - 1 < rank)
        if determined:
            if transposed:
                product = self._other(wa[:, bottom], sa[bottom], wb[:, bottom], sb[bottom])
            else:
                product = wa[:, bottom].T @ wb[:, bottom]
            pair = _overlaps(product)
            out["right_subspace_overlap_bottom"], out["interaction_overlap_bottom"] = pair
        return out, determined

    def _other(self, wa: np.ndarray, sa: np.ndarray, wb: np.ndarray, sb: np.ndarray) -> np.ndarray:
        """Q_A^T Q_B of the other side's singular vectors, Q_X = X W_X S_X^-1."""
        return (wa.T @ self.ab @ wb) / sa[:, None] / sb[None, :]


@dataclass
class LayerSpectra:
    """What the randomized per-layer metrics need from one matrix: its top singular values
    and vectors."""

    s: np.ndarray  # leading singular values (up to max(spectrum_k, subspace_k))
    u: np.ndarray  # top subspace_k left singular vectors, (m, k)
    v: np.ndarray  # top subspace_k right singular vectors, (n, k)


def layer_spectra(
    matrix: np.ndarray, *, spectrum_k: int = 100, subspace_k: int = 10
) -> LayerSpectra:
    """The leading ``max(spectrum_k, subspace_k)`` singular triplets of one task-vector
    matrix by the randomized SVD of :func:`mergelab.methods.svd.randomized_svd` (seeded:
    deterministic), in the matrix's dtype: for weights over the Gram cap."""
    k = min(subspace_k, min(matrix.shape))
    u, s, vt = randomized_svd(matrix, max(spectrum_k, subspace_k))
    return LayerSpectra(s[:spectrum_k], u[:, :k], vt[:k].T)


def layer_metrics(a: LayerSpectra, b: LayerSpectra, spectrum_k: int = 100) -> dict[str, float]:
    """The top-k per-layer metrics of two matrices' spectra (k' = min(k, rank A, rank B))."""
    k = min(a.u.shape[1], _rank(np.asarray(a.s)), _rank(np.asarray(b.s)))
    right = a.v[:, :k].T.astype(np.float64) @ b.v[:, :k]
    left = a.u[:, :k].T.astype(np.float64) @ b.u[:, :k]
    out = {"singular_value_overlap": spectrum_overlap(a.s, b.s, spectrum_k)}
    out["left_subspace_overlap"] = _overlaps(left)[0]
    out["right_subspace_overlap_top"], out["interaction_overlap_top"] = _overlaps(right)
    return out


def pair_metrics(
    a: np.ndarray,
    b: np.ndarray,
    *,
    spectrum_k: int = 100,
    subspace_k: int = 10,
    gram_max: int = 1024,
) -> tuple[dict[str, float], str]:
    """The per-layer metrics of two task-vector matrices in memory and how the bottom-k ones
    went: ("bottom", the Gram of the short side, min(m, n) <= gram_max), ("rank_deficient",
    the Gram, bottom-k not determined) or ("over_cap", randomized top-k SVD only)."""
    if min(a.shape) <= gram_max:
        pair = GramPair.of(a, b)
        row, determined = pair.metrics(
            transposed=a.shape[0] < a.shape[1], spectrum_k=spectrum_k, subspace_k=subspace_k
        )
        return row, "bottom" if determined else "rank_deficient"
    spectra = [layer_spectra(x, spectrum_k=spectrum_k, subspace_k=subspace_k) for x in (a, b)]
    return layer_metrics(*spectra, spectrum_k=spectrum_k), "over_cap"


def compare_activations(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """L2 distance, cosine, dot and magnitude ratio of two vectors (activations, gradients)."""
    sums = GramSums()
    sums.add(a, b)
    full = compare_vectors(sums.aa, sums.bb, sums.ab, sums.dd)
    return {k: full[k] for k in ("l2_distance", "cosine", "dot", "magnitude_ratio")}


def loss_barrier(alphas: np.ndarray, losses: np.ndarray) -> float:
    """max over alpha of loss(alpha) - ((1 - alpha) loss(0) + alpha loss(1)): the height of
    the loss above the straight line between the end points (``alphas`` must start at 0
    and end at 1); 0 when the path is convex, e.g. for identical models."""
    alphas = np.asarray(alphas, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if alphas.size < 2 or alphas[0] != 0 or alphas[-1] != 1 or alphas.shape != losses.shape:
        raise ValueError("alphas must run from 0 to 1, one loss per alpha")
    line = (1 - alphas) * losses[0] + alphas * losses[-1]
    return float(np.max(losses - line))


def mean_metrics(rows: list[Mapping[str, float]], names: list[str]) -> dict[str, float]:
    """Plain mean of each named metric over the rows that have it (NaN rows left out)."""
    out = {}
    for name in names:
        values = [r[name] for r in rows if name in r and not math.isnan(r[name])]
        out[name] = float(np.mean(values)) if values else math.nan
    return out
