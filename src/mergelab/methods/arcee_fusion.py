"""Arcee Fusion: take the other model's change only where it matters most.

Source: mergekit's ``arcee_fusion`` (Arcee AI). Per tensor, with a the base and b the
model: importance = |b - a| * KL(softmax(b) || softmax(a)), the KL divergence taken per
row (the last axis; a 1-D tensor is one row) with 1e-8 added to both distributions; the
elements whose importance reaches median + 1.5 * IQR (the upper Tukey fence) take b's
value, the others keep a's. Quantiles are read from the sorted importances at index
floor(q * (n - 1)); mergekit samples a million elements of larger tensors at random,
mergelab sorts them all (deterministic).
"""

from __future__ import annotations

import numpy as np

from mergelab.methods.as_torch import on_torch
from mergelab.methods.base import MergeMethod, TensorContext, register

EPS = 1e-8


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def importance(model: np.ndarray, base: np.ndarray) -> np.ndarray:
    """|model - base| times the row's KL(softmax(model) || softmax(base))."""
    b = model.reshape(1, -1) if model.ndim < 1 else model
    a = base.reshape(b.shape)
    p = _softmax(b.astype(np.float64)) + EPS
    q = _softmax(a.astype(np.float64)) + EPS
    kl = (p * np.log(p / q)).sum(axis=-1, keepdims=True)
    return (np.abs(b.astype(np.float64) - a) * kl).reshape(model.shape)


def fence(scores: np.ndarray) -> float:
    """median + 1.5 * (q3 - q1), quantiles at sorted index floor(q * (n - 1))."""
    s = np.sort(scores.ravel())
    at = [s[int(q * (len(s) - 1))] for q in (0.5, 0.25, 0.75)]
    return float(at[0] + 1.5 * (at[2] - at[1]))


def _importance_as_mergekit(model: np.ndarray, base: np.ndarray, ctx: TensorContext) -> np.ndarray:
    """:func:`importance` as mergekit computes it in a float16/bfloat16 compute dtype: each
    operation in float32, its result rounded (``ctx.round``), as torch does on the CPU."""
    b = model.reshape(1, -1) if model.ndim < 1 else model
    a = base.reshape(b.shape)
    import torch  # its softmax kernel: NumPy's exp and sum differ in the last float32 bit

    def softmax(x: np.ndarray) -> np.ndarray:
        return on_torch(lambda v: torch.softmax(v, dim=-1), x, ctx)

    r = ctx.round
    diff = np.abs(r(b - a))
    p = r(r(softmax(b)) + np.float32(EPS))
    q = r(r(softmax(a)) + np.float32(EPS))
    terms = r(p * on_torch(torch.log, r(p / q), ctx))
    kl = on_torch(lambda v: v.sum(dim=-1, keepdim=True), terms, ctx)
    return r(diff * kl).reshape(model.shape)


def _fence_as_mergekit(scores: np.ndarray, ctx: TensorContext) -> np.float32:
    """:func:`fence` with each operation rounded as in mergekit's compute dtype."""
    s = np.sort(scores.ravel())
    median, q1, q3 = (s[int(q * (len(s) - 1))] for q in (0.5, 0.25, 0.75))
    r = ctx.round
    iqr = r(np.array([q3 - q1], dtype=scores.dtype))
    return r(median + r(iqr * np.float32(1.5)))[0]


@register
class ArceeFusion(MergeMethod):
    """theta = a + (b - a) * [importance >= median + 1.5 IQR] (see the module docstring),
    a the base and b the one model."""

    name = "arcee_fusion"
    summary = "the model's change only where |change| x row KL divergence is an outlier"
    reference = "https://arcee.ai"
    base_policy = "required"
    min_models = 1
    max_models = 1
    elementwise = False
    identical_inputs_give_input = False
    identical_inputs_reason = "only the outlying part of the model's change is taken"

    # mergekit multiplies by a float32 mask, so torch promotes its result to float32: that
    # is the dtype it writes when the recipe names no out_dtype (--compat mergekit).
    mergekit_result_dtype = "F32"

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        assert base is not None
        b = tensors[0]
        if b.size == 0:
            return b
        if ctx.rounding is not None:
            scores = _importance_as_mergekit(b, base, ctx)
            threshold = _fence_as_mergekit(scores, ctx)
            return base + ctx.round(b - base) * (scores >= threshold)
        scores = importance(b, base)
        keep = scores >= fence(scores)
        return (base + (b - base) * keep).astype(b.dtype)
