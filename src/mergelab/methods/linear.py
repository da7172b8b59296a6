"""Weighted average of the inputs (model soups; Wortsman et al. 2022, arXiv:2203.05482)."""

from __future__ import annotations

import math

import numpy as np

from mergelab.methods.base import MergeMethod, MethodParams, TensorContext, register


class LinearParams(MethodParams):
    normalize: bool = True
    """Divide by the sum of weights (a weighted mean); off gives the weighted sum."""


@register
class Linear(MergeMethod):
    """theta = sum_i w_i theta_i / sum_i w_i  (``normalize=false``: without the division).

    Uniform soup with the default weights of 1. Matches mergekit's ``linear``.
    """

    name = "linear"
    summary = "weighted average of the models (uniform soup by default)"
    reference = "https://arxiv.org/abs/2203.05482"
    Params = LinearParams
    base_policy = "unused"

    def __init__(self, params: LinearParams, per_model: list) -> None:
        super().__init__(params, per_model)
        total = sum(p.weight for p in per_model)
        if params.normalize and abs(total) < 1e-12:
            raise ValueError("linear: the model weights sum to 0; cannot normalise")

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        w = self.weights(tensors)
        if ctx.rounding is not None:
            return self._as_mergekit(tensors, w)
        weighted = bool(np.any(w != 1))
        if weighted:
            np.multiply(tensors, w, out=tensors)
        out = tensors.sum(axis=0)
        if not self.params.normalize:
            return out
        out /= w.sum()
        if math.isfinite(float(out.sum())) or np.isfinite(out).all():
            return out
        # Summing before dividing (as mergekit does, so results match it bit for bit)
        # overflowed: a weighted mean of finite values is finite, so take it in float64.
        values = tensors / w if weighted else tensors
        share = (w / w.sum()).astype(np.float64)
        return (values.astype(np.float64) * share).sum(axis=0).astype(tensors.dtype)

    def _as_mergekit(self, tensors: np.ndarray, w: np.ndarray) -> np.ndarray:
        """``--compat mergekit``: mergekit's float32 accumulation, ``acc.addcmul_(x, w_i)``
        per model (a fused multiply-add: one rounding per model, emulated in float64, where
        x * w_i is exact for float16/bfloat16 x), then the division."""
        acc = np.zeros(tensors.shape[1:], dtype=np.float64)
        for x, c in zip(tensors, w.reshape(-1), strict=True):
            acc += x.astype(np.float64) * float(c)
            acc = acc.astype(np.float32).astype(np.float64)
        out = acc.astype(tensors.dtype)
        if self.params.normalize:
            out /= w.sum()
        return out
