"""Model Stock (Jang et al. 2024): interpolate between the base and the average of the
fine-tuned models with a ratio set by the angle between their task vectors.

The angles need every element of a parameter, the interpolation only the same element of
each input: a tensor-statistics pass accumulates the Gram matrix of the task vectors
(``G_ij = <tau_i, tau_j>``, per output row with ``filter_wise``) chunk by chunk in float64,
and the merge itself is elementwise, so memory follows the chunk size, not the tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mergelab.methods.as_torch import on_torch
from mergelab.methods.base import (
    DeltaAccess,
    MergeMethod,
    MethodParams,
    TensorContext,
    TensorStatistics,
    register,
)

NORM_EPS = 1e-6
SINGULAR_EPS = 1e-6


class ModelStockParams(MethodParams):
    filter_wise: bool = False
    """One ratio per output row (a matrix's rows, a conv kernel's output filters) instead
    of one per tensor; a vector (bias, norm) keeps one ratio."""


@dataclass(frozen=True)
class ModelStockStats(TensorStatistics):
    """Interpolation ratio of one parameter: one per row (``filter_wise``) or one in all."""

    ratios: np.ndarray  # float64, [rows]
    row_length: int


def ratios_from_gram(gram: np.ndarray) -> np.ndarray:
    """t per row from Gram matrices ``[rows, n, n]`` of the task vectors:
    cos = mean over pairs i<j of clip(G_ij / max(|tau_i| |tau_j|, eps), -1, 1),
    t = n cos / (1 + (n - 1) cos), and 0 where the denominator is ~0."""
    n = gram.shape[-1]
    norms = np.sqrt(np.maximum(np.diagonal(gram, axis1=-2, axis2=-1), 0))  # [rows, n]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    cosines = [
        np.clip(gram[:, i, j] / np.maximum(norms[:, i] * norms[:, j], NORM_EPS), -1, 1)
        for i, j in pairs
    ]
    cos = np.mean(cosines, axis=0)
    denominator = 1 + (n - 1) * cos
    singular = np.abs(denominator) < SINGULAR_EPS
    return np.where(singular, 0.0, n * cos / np.where(singular, 1.0, denominator))


def _ratios_as_mergekit(taus: list[np.ndarray], ctx: TensorContext) -> np.ndarray:
    """:func:`ratios_from_gram` as mergekit computes it in a float16/bfloat16 compute dtype
    (``--compat mergekit``): each step's result rounded; norms and sums by torch, whose
    float32 accumulation over a row NumPy's pairwise sums do not reproduce bit for bit."""
    import torch

    r = ctx.round
    f32 = np.float32

    def norm(x: np.ndarray) -> np.ndarray:
        return on_torch(lambda v: torch.linalg.vector_norm(v, dim=-1), x, ctx)

    def row_sum(x: np.ndarray) -> np.ndarray:
        return on_torch(lambda v: v.sum(dim=-1), x, ctx)

    floor = r(np.array([NORM_EPS], dtype=f32))
    norms = [norm(t) for t in taus]
    n = len(taus)
    cosines = [
        np.clip(r(row_sum(r(taus[i] * taus[j])) / np.maximum(r(norms[i] * norms[j]), floor)), -1, 1)
        for i in range(n)
        for j in range(i + 1, n)
    ]
    cos = r(np.stack(cosines).mean(axis=0, dtype=f32))
    denominator = r(f32(1) + r(f32(n - 1) * cos))
    singular = np.abs(denominator) < SINGULAR_EPS
    ratio = r(r(f32(n) * cos) / np.where(singular, f32(1), denominator))
    return np.where(singular, f32(0), ratio)


def _row_pieces(start: int, stop: int, row_length: int) -> list[tuple[int, int, int]]:
    """Split the flat range [start, stop) at row boundaries: (first row, lo, hi) pieces that
    are either a part of one row or a run of whole rows (offsets relative to ``start``)."""
    pieces = []
    pos = start
    while pos < stop:
        row, offset = divmod(pos, row_length)
        if offset or stop - pos < row_length:  # part of one row
            end = min(stop, (row + 1) * row_length)
        else:  # whole rows
            end = pos + (stop - pos) // row_length * row_length
        pieces.append((row, pos - start, end - start))
        pos = end
    return pieces


@register
class ModelStock(MergeMethod):
    """cos = mean over pairs of cos(tau_i, tau_j), t = N cos / (1 + (N - 1) cos),
    theta = t * mean_i theta_i + (1 - t) * theta_base  (t = 0 where 1 + (N-1) cos ~ 0)."""

    name = "model_stock"
    summary = "base-to-average interpolation set by task-vector angles"
    reference = "https://arxiv.org/abs/2403.19522"
    Params = ModelStockParams
    params: ModelStockParams
    base_policy = "required"
    min_models = 2
    elementwise = True
    whole_tensor_statistics = False

    @property
    def uses_tensor_statistics(self) -> bool:
        return True

    def mergekit_workspace_bytes(self, numel: int, n_models: int) -> int:
        # every model's whole task vector, and torch's copies of two of them
        return 4 * numel * (n_models + 2)

    def _rows(self, shape: tuple[int, ...], ctx: TensorContext) -> int:
        # A vector (bias, norm) is one row, as in mergekit; a conv kernel's rows are its
        # output filters (mergekit's rows run along the last axis instead: so with
        # --compat mergekit, a [out, in, kh, kw] kernel has out * in * kh rows of kw).
        if not self.params.filter_wise or len(shape) < 2:
            return 1
        return math.prod(shape[:-1]) if ctx.rounding is not None else shape[0]

    def tensor_statistics(self, ctx: TensorContext, deltas: DeltaAccess) -> ModelStockStats:
        assert deltas.chunks is not None
        n = deltas.n_models
        rows = self._rows(ctx.shape, ctx)
        numel = math.prod(ctx.shape)
        row_length = numel // rows if rows else 0
        if ctx.rounding is not None and row_length:
            taus = [deltas.tensor(i).reshape(rows, row_length) for i in range(n)]
            return ModelStockStats(_ratios_as_mergekit(taus, ctx), row_length)
        gram = np.zeros((rows, n, n), dtype=np.float64)
        if row_length:
            for start, values in deltas.chunks():
                values = values.astype(np.float64, copy=False)
                for row, lo, hi in _row_pieces(start, start + values.shape[1], row_length):
                    part = values[:, lo:hi]
                    if rows == 1 or hi - lo <= row_length:  # one row, or part of one
                        gram[row] += part @ part.T
                    else:  # whole rows: one Gram matrix each
                        count = (hi - lo) // row_length
                        stacked = part.reshape(n, count, row_length).transpose(1, 0, 2)
                        gram[row : row + count] += stacked @ stacked.transpose(0, 2, 1)
        return ModelStockStats(ratios_from_gram(gram), max(row_length, 1))

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        assert base is not None and isinstance(ctx.stats, ModelStockStats)
        stats = ctx.stats
        ratios = stats.ratios.astype(tensors.dtype)
        if ratios.size == 1:
            t = ratios.reshape(())
        else:  # one ratio per row: repeat each over its elements in this chunk
            length = tensors.shape[-1]
            first = ctx.start // stats.row_length
            last = (ctx.start + length - 1) // stats.row_length if length else first - 1
            counts = [
                min(ctx.start + length, (row + 1) * stats.row_length)
                - max(ctx.start, row * stats.row_length)
                for row in range(first, last + 1)
            ]
            t = np.repeat(ratios[first : last + 1], counts)
        if ctx.rounding is not None:  # mergekit: sum(ws) / count, each step rounded
            r = ctx.round
            average = tensors[0].copy()
            for x in tensors[1:]:
                r(np.add(average, x, out=average))
            r(np.divide(average, tensors.dtype.type(len(tensors)), out=average))
            return r(t * average) + r(r(1 - t) * base)
        return t * tensors.mean(0) + (1 - t) * base
