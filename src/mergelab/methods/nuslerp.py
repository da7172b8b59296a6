"""NuSLERP: slerp of two models (or of their task vectors), whole or row by row.

Source: mergekit's ``nuslerp``: the position comes from the models' weights, t = w_2 /
(w_1 + w_2), and the interpolation runs over the flattened tensor (default), each row
(the last axis), or each column (``nuslerp_row_wise``: mergekit's name for slerping along
the first axis).
"""

from __future__ import annotations

import numpy as np

from mergelab.methods.as_torch import on_torch as torch_kernel
from mergelab.methods.base import MergeMethod, MethodParams, TensorContext, register

EPS = 1e-8
NORM_FLOOR = 1e-7


class NuSlerpParams(MethodParams):
    nuslerp_flatten: bool = True
    """Slerp the whole tensor as one vector (false: vector by vector along an axis)."""
    nuslerp_row_wise: bool = False
    """Without flatten: the vectors run along the first axis (true) or the last (false)."""


def nuslerp(t: float, v0: np.ndarray, v1: np.ndarray, axis: int | None) -> np.ndarray:
    """Slerp from v0 (t = 0) to v1 (t = 1) of the vectors along ``axis`` (None: the
    whole arrays): sin((1-t) theta)/sin(theta) v0 + sin(t theta)/sin(theta) v1, and the
    straight line where |sin theta| < 1e-8 (collinear)."""
    shape = v0.shape
    if axis is None:
        a, b = v0.reshape(1, -1), v1.reshape(1, -1)
    else:
        a, b = np.swapaxes(v0, axis, -1), np.swapaxes(v1, axis, -1)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ua = a64 / np.maximum(np.linalg.norm(a64, axis=-1, keepdims=True), NORM_FLOOR)
    ub = b64 / np.maximum(np.linalg.norm(b64, axis=-1, keepdims=True), NORM_FLOOR)
    theta = np.arccos(np.clip((ua * ub).sum(axis=-1, keepdims=True), -1.0, 1.0))
    sin = np.sin(theta)
    colinear = np.abs(sin) < EPS
    safe = np.where(colinear, 1.0, sin)
    out = (np.sin((1 - t) * theta) * a64 + np.sin(t * theta) * b64) / safe
    out = np.where(colinear, (1 - t) * a64 + t * b64, out)
    if axis is not None:
        out = np.swapaxes(out, axis, -1)
    return out.reshape(shape).astype(v0.dtype)


def nuslerp_as_mergekit(
    t: float, v0: np.ndarray, v1: np.ndarray, axis: int | None, ctx: TensorContext
) -> np.ndarray:
    """:func:`nuslerp` as mergekit computes it (``--compat mergekit``): each step's result
    rounded to its compute dtype (``r``), norms, sums, acos and sin by torch on tensors in
    that dtype, reductions over a transposed view where mergekit transposes (torch sums a
    strided axis in another order), and mergekit's collinearity test, 1 - cos^2 <= 1e-16
    in the compute dtype."""
    import torch

    def along(fn, x: np.ndarray) -> np.ndarray:
        """``fn`` reducing the last axis of mergekit's view of ``x``, kept as a length-1
        axis of ``x``'s own layout."""
        if axis in (None, -1):
            return torch_kernel(fn, x, ctx)
        return torch_kernel(lambda v: fn(v.transpose(axis, -1)).transpose(axis, -1), x, ctx)

    def elementwise(fn, x: np.ndarray) -> np.ndarray:
        return torch_kernel(fn, x, ctx)

    r, f32 = ctx.round, np.float32
    shape = v0.shape
    a, b = (v0.reshape(1, -1), v1.reshape(1, -1)) if axis is None else (v0, v1)
    floor = r(np.array([NORM_FLOOR], dtype=f32))

    def unit(x: np.ndarray) -> np.ndarray:
        norm = along(lambda v: torch.linalg.vector_norm(v, dim=-1, keepdim=True), x)
        return r(x / np.maximum(norm, floor))

    cos = np.clip(along(lambda v: v.sum(dim=-1, keepdim=True), r(unit(a) * unit(b))), -1, 1)
    colinear = r(f32(1) - r(cos * cos)) <= r(np.array([EPS**2], dtype=f32))
    theta = elementwise(torch.acos, np.where(colinear, f32(0), cos))
    with np.errstate(divide="ignore", invalid="ignore"):
        start = r(elementwise(torch.sin, r(f32(1 - t) * theta)) * a)
        end = r(elementwise(torch.sin, r(f32(t) * theta)) * b)
        arc = r(r(start + end) / elementwise(torch.sin, theta))
    out = np.where(colinear, r(r(f32(1 - t) * a) + r(f32(t) * b)), arc)
    return out.reshape(shape)


@register
class NuSlerp(MergeMethod):
    """t = w_2 / (w_1 + w_2) (0.5 when the weights sum to about 0); with a base,
    theta = theta_base + slerp_t(tau_1, tau_2), else slerp_t(theta_1, theta_2), over the
    flattened tensor or vector by vector (see the parameters)."""

    name = "nuslerp"
    summary = "slerp of two models or their task vectors, position from their weights"
    reference = "https://github.com/arcee-ai/mergekit"
    Params = NuSlerpParams
    params: NuSlerpParams
    base_policy = "optional"
    min_models = 2
    max_models = 2
    elementwise = False

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        w1, w2 = (p.weight for p in self.per_model)
        t = 0.5 if abs(w1 + w2) < 1e-6 else w2 / (w1 + w2)
        p = self.params
        axis = None if p.nuslerp_flatten or tensors.ndim < 2 else (0 if p.nuslerp_row_wise else -1)
        if ctx.rounding is not None:
            if base is None:
                return nuslerp_as_mergekit(t, tensors[0], tensors[1], axis, ctx)
            v0, v1 = ctx.round(tensors[0] - base), ctx.round(tensors[1] - base)
            return base + nuslerp_as_mergekit(t, v0, v1, axis, ctx)
        if base is None:
            return nuslerp(t, tensors[0], tensors[1], axis)
        return base + nuslerp(t, tensors[0] - base, tensors[1] - base, axis)
