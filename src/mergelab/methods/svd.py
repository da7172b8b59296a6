"""Merge methods built on the singular value decomposition of (centred) task vectors.

Four methods, each on whole tensors (``elementwise = False``); the low-rank treatment
applies to the tensors in the *low-rank scope* (:func:`matrix_shape`): 2-D weights whose
name matches ``pattern`` and not ``exclude`` (by default embeddings and output heads are
excluded), and, with ``conv=true``, kernels of 3 or more dimensions reshaped to
``[out, in * prod(kernel)]``. Every other tensor (biases, norms, embeddings) is treated as
the papers' code does, said per method.

``cart``     (Choi et al. 2024, "Revisiting Weight Averaging for Model Merging",
             arXiv:2412.12153; Centered Arithmetic with Rank-reduced Task vectors)::

                 theta_avg = sum_t w_t theta_t / sum_t w_t
                 d_t       = theta_t - theta_avg                 (centred task vectors)
                 theta     = theta_avg + lambda * sum_t w'_t SVD_k(d_t),  w'_t = T w_t / sum w

             (w = 1 by default, so w' = 1.) Since sum_t w'_t d_t = 0, at full rank
             theta = theta_avg exactly, whatever lambda. Tensors outside the scope: theta_avg.

``tsv``      TSV-M (Gargiulo et al., CVPR 2025, "Task Singular Vectors: Reducing Task
             Interference in Model Merging", arXiv:2412.00081)::

                 tau_t = w_t (theta_t - theta_base);  U_t S_t V_t^T = SVD_k(tau_t), k = r / T
                 U = [U_1 .. U_T], S = diag(S_1 .. S_T), V = [V_1 .. V_T]
                 U_perp = P_U Q_U^T  where P_U Sigma Q_U^T = SVD(U)   (same for V)
                 theta = theta_base + alpha * U_perp S V_perp^T

             Outside the scope: theta_base + alpha * mean_t tau_t (the authors' code).

``iso_c``    Iso-C (Marczak et al., ICML 2025, "No Task Left Behind: Isotropic Model Merging
             with Common and Task-Specific Subspaces", arXiv:2502.04959)::

                 U S V^T = SVD(sum_t tau_t);  theta = theta_base + alpha * mean(S) U V^T

             Outside the scope: theta_base + alpha * mean_t tau_t (the authors' code).

``iso_cts``  Iso-CTS (same paper): the top ``k_c`` directions of sum_t tau_t (the common
             subspace, k_c ~ common_fraction * r) plus, for each task, the top
             ``s = (r - k_c) / T`` singular directions of its residual
             ``tau_t - U_c U_c^T tau_t``; the concatenated bases are orthogonalised as in TSV
             and every singular value replaced by the mean of the concatenated ones::

                 theta = theta_base + alpha * mean([S_c, S_1 .. S_T]) U_perp V_perp^T

             Outside the scope: theta_base + alpha * mean_t tau_t (the authors' code).

r = min(m, n) of the (reshaped) matrix. ``cart`` and ``tsv`` truncate with a full SVD
(``numpy.linalg.svd``) or a randomized one (:func:`randomized_svd`, Halko, Martinsson and
Tropp 2011), chosen by ``svd``; the Iso methods need every singular value of the summed
task vector, so they always use the full SVD.
"""

from __future__ import annotations

import math
import re
from abc import abstractmethod
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from mergelab.errors import MergeError
from mergelab.methods.base import (
    MergeMethod,
    MethodParams,
    TensorContext,
    register,
    seeded_generator,
)

DEFAULT_EXCLUDE = r"embed|wte|wpe|lm_head|(^|\.)head\.|cls_token|pos_emb"
"""Names never made low rank unless ``exclude`` is overridden: token, position and patch
embeddings, and classifier / language-model heads (task-specific or tied to the vocabulary)."""

SvdSolver = Literal["full", "randomized"]


# -- linear algebra --------------------------------------------------------------------------


def _svd(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        return np.linalg.svd(a, full_matrices=False)
    except np.linalg.LinAlgError as exc:
        raise MergeError(f"SVD of a {list(a.shape)} matrix failed ({exc})") from None


def randomized_svd(
    a: np.ndarray,
    k: int,
    *,
    oversample: int = 10,
    power_iters: int = 2,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The leading ``k`` singular triplets of ``a`` by randomized range finding (Halko,
    Martinsson & Tropp 2011, Algorithms 4.4 and 5.1), in ``a``'s dtype.

    A Gaussian sketch of ``k + oversample`` columns, ``power_iters`` subspace iterations
    re-orthonormalised by QR each half step, then an exact SVD of the small projected
    matrix. The error bound is E||A - A_k'|| <= (1 + eps) sigma_{k+1} with eps shrinking
    geometrically in ``power_iters``; on task vectors (fast-decaying spectra) the defaults
    give a rank-k Frobenius error within 1% of the optimal one (tested). Falls back to the
    full SVD when the sketch would cover at least half of min(m, n), where the full one is
    no slower.
    """
    m, n = a.shape
    r = min(m, n)
    k = max(0, min(k, r))
    width = min(k + oversample, r)
    if k == 0:
        return a[:, :0].copy(), np.zeros(0, a.dtype), a[:0, :].copy()
    if 2 * width >= r:
        u, s, vt = _svd(a)
        return u[:, :k], s[:k], vt[:k]
    rng = rng if rng is not None else np.random.default_rng(0)
    transposed = m < n  # sketch the longer side: the QR factors stay [max(m, n), width]
    mat = a.T if transposed else a
    omega = rng.standard_normal((mat.shape[1], width)).astype(a.dtype, copy=False)
    q, _ = np.linalg.qr(mat @ omega)
    for _ in range(power_iters):
        z, _ = np.linalg.qr(mat.T @ q)
        q, _ = np.linalg.qr(mat @ z)
    ub, s, vt = _svd(q.T @ mat)
    u = q @ ub[:, :k]
    s, vt = s[:k], vt[:k]
    if transposed:
        return vt.T.copy(), s, u.T.copy()
    return u, s, vt


def rank_for(r: int, fraction: float) -> int:
    """Rank ``fraction * r``, rounded, at least 1 (for r >= 1) and at most r."""
    return min(r, max(1, round(fraction * r))) if r else 0


def energy_rank(s: np.ndarray, total: float, energy: float) -> int:
    """Smallest k whose leading singular values hold ``energy`` of ``total`` (= ||A||_F^2);
    all of ``s`` when they fall short (a randomized SVD capped below the needed rank)."""
    if total <= 0 or s.size == 0:
        return min(1, s.size)
    cumulative = np.cumsum(s.astype(np.float64) ** 2)
    k = int(np.searchsorted(cumulative, energy * total * (1 - 1e-12))) + 1
    return min(k, s.size)


def orthogonalise(a: np.ndarray) -> np.ndarray:
    """The nearest matrix with orthonormal columns (rows, if wider than tall): P Q^T from
    SVD(a) = P S Q^T, as TSV-M and Iso-CTS do."""
    p, _, qt = _svd(a)
    return p @ qt


def matrix_shape(
    name: str, shape: tuple[int, ...], pattern: str, exclude: str, conv: bool
) -> tuple[int, int] | None:
    """The 2-D shape a tensor takes in the low-rank scope, or None when it is out of it."""
    if exclude and re.search(exclude, name):
        return None
    if not re.search(pattern, name):
        return None
    if len(shape) == 2:
        m, n = shape
    elif conv and len(shape) >= 3:
        m, n = shape[0], math.prod(shape[1:])
    else:
        return None
    return (m, n) if min(m, n) > 0 else None


# -- parameters ------------------------------------------------------------------------------


class ScopeParams(MethodParams):
    pattern: str = "."
    """Regex (searched in the tensor name) of tensors eligible for the low-rank treatment."""
    exclude: str = DEFAULT_EXCLUDE
    """Regex of tensor names kept out of it (default: embeddings and heads); '' excludes none."""
    conv: bool = False
    """Also treat conv kernels [out, in, *k] (3-D and up) as [out, in * prod(k)] matrices."""

    @field_validator("pattern", "exclude")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {value!r} ({exc})") from None
        return value


class TruncationParams(ScopeParams):
    svd: SvdSolver = "full"
    """Truncated SVD by numpy.linalg.svd ("full") or by a randomized range finder."""
    oversample: int = Field(10, ge=0)
    """Randomized SVD: extra sketch columns beyond the rank."""
    power_iters: int = Field(2, ge=0)
    """Randomized SVD: subspace iterations (more is slower and more accurate)."""
    seed: int = Field(0, ge=0)
    """Randomized SVD: seed of the sketches (one stream per tensor name and model)."""


class CartParams(TruncationParams):
    lambda_: float = Field(1.0, alias="lambda")
    """Scale of the summed low-rank centred task vectors."""
    rank: float = Field(0.1, gt=0.0, le=1.0)
    """Rank kept per task vector, as a fraction of min(m, n) (the cap when ``energy`` is set)."""
    energy: float | None = Field(None, gt=0.0, le=1.0)
    """Keep the fewest singular values holding this fraction of ||d_t||_F^2 (at most
    ``rank`` * min(m, n); with svd=full and rank=1 the cap is the full rank)."""


class TsvParams(TruncationParams):
    alpha: float = 1.0
    """Scale of the merged task vector."""
    rank: float | None = Field(None, gt=0.0, le=1.0)
    """Rank per task as a fraction of min(m, n); default 1/T (the paper's choice)."""


class IsoCParams(ScopeParams):
    alpha: float = 1.0
    """Scale of the merged task vector (the paper tunes it on validation data)."""


class IsoCtsParams(IsoCParams):
    common_fraction: float = Field(0.8, ge=0.0, le=1.0)
    """Fraction of min(m, n) given to the common subspace of sum_t tau_t (paper: 0.8)."""


# -- methods ---------------------------------------------------------------------------------


class SvdMerge(MergeMethod):
    """Shared parts: the low-rank scope, per-model weights, truncated SVDs."""

    elementwise = False
    params: ScopeParams

    def workspace_bytes(
        self, name: str, shape: tuple[int, ...], n_models: int, itemsize: int
    ) -> int:
        """SVD workspace for a parameter in the low-rank scope (:meth:`_matrix_values`); one
        outside it only takes the mean path (the mean and its scaled copy)."""
        p = self.params
        matrix = matrix_shape(name, tuple(shape), p.pattern, p.exclude, p.conv)
        if matrix is None:
            return 2 * math.prod(shape) * itemsize
        return self._matrix_values(*matrix, n_models) * itemsize

    @abstractmethod
    def _matrix_values(self, m: int, n: int, n_models: int) -> int:
        """Values allocated beyond the inputs for an m x n matrix in the low-rank scope."""

    def _truncation_values(self, m: int, n: int, k: int) -> int:
        """Workspace of one rank-k truncated SVD, with the solver ``svd`` selects."""
        p = self.params
        if isinstance(p, TruncationParams) and p.svd == "randomized":
            return randomized_svd_values(m, n, k, p.oversample)
        return full_svd_values(m, n)

    def _matrix(self, ctx: TensorContext) -> tuple[int, int] | None:
        p = self.params
        return matrix_shape(ctx.name, tuple(ctx.shape), p.pattern, p.exclude, p.conv)

    def _truncated(
        self, a: np.ndarray, k: int, ctx: TensorContext, index: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = self.params
        assert isinstance(p, TruncationParams)
        if p.svd == "randomized":
            rng = seeded_generator(p.seed, ctx.name, index)
            return randomized_svd(a, k, oversample=p.oversample, power_iters=p.power_iters, rng=rng)
        u, s, vt = _svd(a)
        return u[:, :k], s[:k], vt[:k]

    def _task_vectors(self, tensors: np.ndarray, base: np.ndarray) -> np.ndarray:
        """tau_t = w_t (theta_t - theta_base), in place in ``tensors``."""
        deltas = np.subtract(tensors, base, out=tensors)
        w = self.weights(deltas)
        if np.any(w != 1):
            np.multiply(deltas, w, out=deltas)
        return deltas

    def _mean_update(self, deltas: np.ndarray, base: np.ndarray, alpha: float) -> np.ndarray:
        """theta_base + alpha * mean_t tau_t: the tensors outside the low-rank scope."""
        out = deltas.mean(axis=0)
        out *= out.dtype.type(alpha)
        out += base
        return out

    def _merge_error(self, ctx: TensorContext, exc: MergeError) -> MergeError:
        return MergeError(f"{self.name}: tensor {ctx.name!r}: {exc}")


@register
class Cart(SvdMerge):
    """CART (Choi et al. 2024, arXiv:2412.12153): theta = theta_avg + lambda * sum_t
    SVD_k(theta_t - theta_avg), k = rank * min(m, n) (or by ``energy``), on the low-rank
    scope; every other tensor is theta_avg. The centre is the average, so a base model is
    accepted (as in the paper's ``--base`` examples) but never read: theta_t - theta_avg =
    tau_t - tau_avg for any base. At full rank the result is exactly the weight average,
    whatever lambda."""

    name = "cart"
    summary = "average plus low-rank centred task vectors (CART)"
    reference = "https://arxiv.org/abs/2412.12153"
    Params = CartParams
    base_policy = "ignored"
    base_ignored_reason = (
        "CART centres at the models' average, and theta_t - theta_avg = tau_t - tau_avg "
        "for any base"
    )
    params: CartParams

    def _matrix_values(self, m: int, n: int, n_models: int) -> int:
        p = self.params
        r = min(m, n)
        cap = rank_for(r, p.rank)
        if p.lambda_ == 0 or (cap >= r and p.energy is None):
            return 2 * m * n  # the average, no SVD (see merge)
        # The average, the update and the U S V^T product, plus one truncated SVD at a time.
        return 3 * m * n + self._truncation_values(m, n, cap)

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        n = tensors.shape[0]
        w = self.weights(tensors)
        total = float(w.sum())
        if abs(total) < 1e-12:
            raise MergeError(f"{self.name}: the model weights sum to 0; no average exists")
        if np.any(w != 1):
            average = (tensors * w).sum(axis=0) / tensors.dtype.type(total)
        else:
            average = tensors.mean(axis=0)
        shape = self._matrix(ctx)
        if shape is None or self.params.lambda_ == 0:
            return average
        p = self.params
        m, k_cols = shape
        r = min(m, k_cols)
        cap = rank_for(r, p.rank)
        if cap >= r and p.energy is None:
            return average  # sum_t w'_t d_t = 0: full-rank CART is the average
        centred = np.subtract(tensors, average, out=tensors).reshape(n, m, k_cols)
        update = np.zeros((m, k_cols), dtype=tensors.dtype)
        try:
            for t in range(n):
                d = centred[t]
                u, s, vt = self._truncated(d, cap, ctx, t)
                if p.energy is not None:
                    norm = float(np.vdot(d, d))
                    keep = energy_rank(s, norm, p.energy)
                    u, s, vt = u[:, :keep], s[:keep], vt[:keep]
                scale = n * float(w.reshape(-1)[t]) / total
                u = u * (s * s.dtype.type(scale))
                update += u @ vt
        except MergeError as exc:
            raise self._merge_error(ctx, exc) from None
        update *= update.dtype.type(p.lambda_)
        update = update.reshape(average.shape)
        update += average
        return update


@register
class Tsv(SvdMerge):
    """TSV-M (Gargiulo et al., CVPR 2025, arXiv:2412.00081): per matrix, each task vector
    truncated to rank min(m, n) / T; the concatenated singular vectors orthogonalised
    (U_perp = P Q^T from SVD(U) = P S Q^T, same for V); theta = theta_base + alpha *
    U_perp diag(S_1 .. S_T) V_perp^T. Outside the low-rank scope: theta_base + alpha *
    mean_t tau_t, as in the authors' code."""

    name = "tsv"
    summary = "task singular vectors, orthogonalised across tasks (TSV-M)"
    reference = "https://arxiv.org/abs/2412.00081"
    Params = TsvParams
    base_policy = "required"
    identical_inputs_give_input = False
    identical_inputs_reason = "matrices become rank-min(m, n)/T truncations of the task vector"
    params: TsvParams

    def _matrix_values(self, m: int, n: int, n_models: int) -> int:
        p = self.params
        r = min(m, n)
        k = rank_for(r, p.rank) if p.rank is not None else max(1, r // n_models)
        width = n_models * k  # columns of the concatenated U (rows of V^T)
        # Every task's factors, their concatenation and the orthogonalised bases; the SVD
        # that orthogonalises them; one truncated SVD at a time; the task vectors' product.
        factors = 3 * width * (m + n)
        orthogonalise = max(full_svd_values(m, width), full_svd_values(width, n))
        return 2 * m * n + factors + orthogonalise + self._truncation_values(m, n, k)

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        assert base is not None
        n = tensors.shape[0]
        deltas = self._task_vectors(tensors, base)
        shape = self._matrix(ctx)
        p = self.params
        if shape is None:
            return self._mean_update(deltas, base, p.alpha)
        m, k_cols = shape
        r = min(m, k_cols)
        k = rank_for(r, p.rank) if p.rank is not None else max(1, r // n)
        try:
            us, ss, vts = [], [], []
            for t in range(n):
                u, s, vt = self._truncated(deltas[t].reshape(m, k_cols), k, ctx, t)
                us.append(u)
                ss.append(s)
                vts.append(vt)
            u_perp = orthogonalise(np.concatenate(us, axis=1))
            vt_perp = orthogonalise(np.concatenate(vts, axis=0))
        except MergeError as exc:
            raise self._merge_error(ctx, exc) from None
        s_all = np.concatenate(ss)
        merged = (u_perp * (s_all * s_all.dtype.type(p.alpha))) @ vt_perp
        merged = merged.reshape(base.shape)
        merged += base
        return merged


@register
class IsoC(SvdMerge):
    """Iso-C (Marczak et al., ICML 2025, arXiv:2502.04959): U S V^T = SVD(sum_t tau_t);
    theta = theta_base + alpha * mean(S) U V^T (a flat, isotropic spectrum). Outside the
    low-rank scope: theta_base + alpha * mean_t tau_t, as in the authors' code."""

    name = "iso_c"
    summary = "task-arithmetic sum with an isotropic (flattened) spectrum"
    reference = "https://arxiv.org/abs/2502.04959"
    Params = IsoCParams
    base_policy = "required"
    identical_inputs_give_input = False
    identical_inputs_reason = "each matrix's spectrum is flattened to its mean singular value"
    params: IsoCParams

    def _matrix_values(self, m: int, n: int, n_models: int) -> int:
        # The summed task vector, its full SVD, the product and a temporary.
        return 3 * m * n + full_svd_values(m, n)

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        assert base is not None
        deltas = self._task_vectors(tensors, base)
        shape = self._matrix(ctx)
        if shape is None:
            return self._mean_update(deltas, base, self.params.alpha)
        try:
            u, s, vt = _svd(deltas.sum(axis=0).reshape(shape))
        except MergeError as exc:
            raise self._merge_error(ctx, exc) from None
        iso = s.mean(dtype=np.float64) * self.params.alpha
        u *= u.dtype.type(iso)
        merged = (u @ vt).reshape(base.shape)
        merged += base
        return merged


@register
class IsoCts(SvdMerge):
    """Iso-CTS (Marczak et al., ICML 2025, arXiv:2502.04959): the common subspace (top k_c
    directions of sum_t tau_t, k_c = r - T * round((r - common_fraction * r) / T)) plus the
    top s = (r - k_c) / T directions of each task's residual tau_t - U_c U_c^T tau_t;
    bases orthogonalised (P Q^T); every singular value set to the mean of the concatenated
    ones; theta = theta_base + alpha * that. Outside the low-rank scope: theta_base +
    alpha * mean_t tau_t, as in the authors' code."""

    name = "iso_cts"
    summary = "isotropic merge in common plus task-specific subspaces (Iso-CTS)"
    reference = "https://arxiv.org/abs/2502.04959"
    Params = IsoCtsParams
    base_policy = "required"
    identical_inputs_give_input = False
    identical_inputs_reason = "each matrix's spectrum is flattened to its mean singular value"
    params: IsoCtsParams

    def _matrix_values(self, m: int, n: int, n_models: int) -> int:
        # The sum's SVD and one residual's at a time, the residual, the kept factors and
        # their orthogonalised copies (r columns in all), the product and temporaries.
        r = min(m, n)
        return 4 * m * n + 2 * full_svd_values(m, n) + 2 * r * (m + n)

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        assert base is not None
        n = tensors.shape[0]
        deltas = self._task_vectors(tensors, base)
        shape = self._matrix(ctx)
        p = self.params
        if shape is None:
            return self._mean_update(deltas, base, p.alpha)
        m, k_cols = shape
        r = min(m, k_cols)
        common, per_task = common_split(r, n, p.common_fraction)
        matrices = deltas.reshape(n, m, k_cols)
        try:
            u, s, vt = _svd(matrices.sum(axis=0))
            us, ss, vts = [u[:, :common]], [s[:common]], [vt[:common]]
            if per_task:
                u_c = us[0]
                for t in range(n):
                    residual = matrices[t] - u_c @ (u_c.T @ matrices[t])
                    ut, st, vtt = _svd(residual)
                    us.append(ut[:, :per_task])
                    ss.append(st[:per_task])
                    vts.append(vtt[:per_task])
            u_perp = orthogonalise(np.concatenate(us, axis=1))
            vt_perp = orthogonalise(np.concatenate(vts, axis=0))
        except MergeError as exc:
            raise self._merge_error(ctx, exc) from None
        iso = np.concatenate(ss).mean(dtype=np.float64) * p.alpha
        u_perp *= u_perp.dtype.type(iso)
        merged = (u_perp @ vt_perp).reshape(base.shape)
        merged += base
        return merged


def full_svd_values(m: int, n: int) -> int:
    """Values ``numpy.linalg.svd(a, full_matrices=False)`` allocates for an m x n matrix:
    LAPACK's copy of ``a``, U [m, r], S, V^T [r, n] and gesdd's workspace (~5 r^2)."""
    r = min(m, n)
    return m * n + m * r + r * n + 5 * r * r + 8 * r


def randomized_svd_values(m: int, n: int, k: int, oversample: int) -> int:
    """Values :func:`randomized_svd` allocates for the leading k triplets of an m x n
    matrix (sketch width w = k + oversample; the full SVD's where it falls back to it):
    the Gaussian sketch [short, w]; the range products and QR factors [long, w] (three
    alive at once) and [short, w] (two); the projected [w, short] matrix and its SVD; the
    returned factors and their transposed copies."""
    r = min(m, n)
    k = max(0, min(k, r))
    width = min(k + oversample, r)
    if k == 0:
        return 0
    if 2 * width >= r:
        return full_svd_values(m, n)
    long, short = max(m, n), min(m, n)
    sketches = short * width + 3 * long * width + 2 * short * width
    return sketches + full_svd_values(width, short) + 2 * k * (long + short)


def common_split(r: int, n_tasks: int, fraction: float) -> tuple[int, int]:
    """(k_c, s): common-subspace size and dimensions per task, with k_c + T s = r, as the
    Iso-CTS code splits them (the task-specific total a multiple of T)."""
    common = int(r * fraction)
    specific = round((r - common) / n_tasks) * n_tasks
    specific = min(specific, (r // n_tasks) * n_tasks)  # never more than r
    return r - specific, specific // n_tasks
