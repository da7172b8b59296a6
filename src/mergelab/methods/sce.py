"""SCE: select, calculate, erase (Wan et al. 2024, FuseChat-2.0, arXiv:2408.07990).

Per tensor, on the task vectors tau_i = theta_i - theta_base. Source: the paper and
mergekit's ``sce``, whose defaults these are.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

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
