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

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        assert base is not None
        b = tensors[0]
        if b.size == 0:
            return b
        scores = importance(b, base)
        keep = scores >= fence(scores)
        return (base + (b - base) * keep).astype(b.dtype)
