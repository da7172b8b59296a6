"""NuSLERP: slerp of two models (or of their task vectors), whole or row by row.

Source: mergekit's ``nuslerp``: the position comes from the models' weights, t = w_2 /
(w_1 + w_2), and the interpolation runs over the flattened tensor (default), each row
(the last axis), or each column (``nuslerp_row_wise``: mergekit's name for slerping along
the first axis).
"""

from __future__ import annotations

import numpy as np

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
        if base is None:
            return nuslerp(t, tensors[0], tensors[1], axis)
        return base + nuslerp(t, tensors[0] - base, tensors[1] - base, axis)
