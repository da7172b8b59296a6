"""SCE: select, calculate, erase (Wan et al. 2024, FuseChat-2.0, arXiv:2408.07990).

Per tensor, on the task vectors tau_i = theta_i - theta_base. Source: the paper and
mergekit's ``sce``, whose defaults these are.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from mergelab.methods.as_torch import on_torch
from mergelab.methods.base import MergeMethod, MethodParams, TensorContext, register


class SceParams(MethodParams):
    select_topk: float = Field(1.0, ge=0.0, le=1.0)
    """Share of the elements kept, those whose task vectors vary most between the models
    (1: all)."""


@register
class Sce(MergeMethod):
    """select: with select_topk < 1, keep in every tau_i only the k = int(nnz(v) *
    select_topk) elements of largest variance v = Var_i(tau_i) (population variance over
    the models; nnz(v) its nonzero count; ties in position order);
    calculate: w_i = mean(tau_i^2) / sum_j mean(tau_j^2) (1/n when that sum is below 1e-6);
    erase: m_i = [sign(tau_i) == sign(sum_j tau_j)] (a zero sum counts as +);
    theta = theta_base + sum_i w_i m_i tau_i / max(sum_i w_i m_i, 1e-6), per element.
    """

    name = "sce"
    summary = "select high-variance elements, weight models by energy, erase sign conflicts"
    reference = "https://arxiv.org/abs/2408.07990"
    Params = SceParams
    params: SceParams
    base_policy = "required"
    elementwise = False

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        assert base is not None
        if ctx.rounding is not None:
            return _as_mergekit(tensors, base, self.params.select_topk, ctx)
        n = tensors.shape[0]
        tv = (tensors - base).reshape(n, -1)
        density = self.params.select_topk
        if density < 1:
            var = tv.var(axis=0)
            k = int(np.count_nonzero(var) * density) if density > 0 else 0
            keep = np.zeros(var.shape, dtype=bool)
            if k > 0:
                keep[np.argsort(-np.abs(var), kind="stable")[:k]] = True
            tv = tv * keep
        vote = tv.sum(axis=0)
        elected = np.where(vote >= 0, 1, -1).astype(tv.dtype)
        erase = np.sign(tv) == elected
        energy = (tv.astype(np.float64) ** 2).mean(axis=1) if tv.shape[1] else np.zeros(n)
        total = float(energy.sum())
        w = np.full(n, 1.0 / n) if abs(total) < 1e-6 else energy / total
        weights = w.astype(tv.dtype)[:, None] * erase
        merged = (tv * weights).sum(axis=0)
        merged /= np.maximum(weights.sum(axis=0), np.asarray(1e-6, dtype=tv.dtype))
        return (base.reshape(-1) + merged).reshape(base.shape)


def _as_mergekit(
    tensors: np.ndarray, base: np.ndarray, density: float, ctx: TensorContext
) -> np.ndarray:
    """``--compat mergekit``: the same steps in mergekit's float16/bfloat16 compute dtype,
    each result rounded (``r``); the variance and the top-k by torch, whose order among
    equal variances (common in those dtypes) decides which elements are kept."""
    import torch

    from mergelab.io.dtypes import to_torch

    r = ctx.round
    n = tensors.shape[0]
    tv = r(tensors - base).reshape(n, -1)
    if density < 1:
        keep = np.zeros(tv.shape[1], dtype=bool)
        var = on_torch(lambda v: torch.var(v, dim=0, unbiased=False), tv, ctx)
        k = int(np.count_nonzero(var) * density) if density > 0 else 0
        if k > 0:
            low = torch.from_numpy(np.abs(var)).to(to_torch(ctx.rounding))
            keep[torch.topk(low, k=k, largest=True).indices.numpy()] = True
        tv = tv * keep
    elected = np.where(tv.sum(axis=0) >= 0, 1, -1).astype(tv.dtype)
    erase = np.sign(tv) == elected
    squares = r(tv * tv)
    energy = on_torch(lambda v: v.mean(dim=1), squares, ctx) if tv.shape[1] else np.zeros(n)
    total = float(on_torch(lambda v: v.sum().reshape(1), energy, ctx)[0])
    w = np.full(n, 1 / n, tv.dtype) if abs(total) < 1e-6 else r(energy / np.float32(total))
    weights = r(w)[:, None] * erase
    merged = r(r(tv * weights).sum(axis=0))
    floor = r(np.array([1e-6], dtype=tv.dtype))
    merged = r(merged / np.maximum(r(weights.sum(axis=0)), floor))
    return (base.reshape(-1) + merged).reshape(base.shape)
