"""Multi-SLERP: barycentric interpolation of several models on a hypersphere.

Source: mergekit's ``multislerp`` (C. Goddard, https://goddard.blog/posts/multislerp-wow-
what-a-cool-idea). Its recipe projects the unit vectors onto the tangent plane at their
normalised weighted mean M/|M| (M = sum_i w_i u_i), averages the projections and maps the
average back with the exponential map. That average is M - (M . M/|M|) M/|M| = 0 for any
inputs, so the result is the normalised weighted mean of the directions; it is computed so
here (with mergekit's eps), to float rounding the same numbers.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from mergelab.errors import MergeError
from mergelab.methods.as_torch import on_torch as torch_kernel
from mergelab.methods.base import MergeMethod, MethodParams, TensorContext, register


class MultiSlerpParams(MethodParams):
    normalize_weights: bool = True
    """Divide the model weights by their sum."""
    eps: float = Field(1e-8, gt=0.0)


@register
class MultiSlerp(MergeMethod):
    """Per tensor, with v_i = theta_i (or theta_i - theta_base with a base), u_i = v_i /
    (|v_i| + eps) and w_i the weights (normalised to sum 1 by default):
    theta = (sum_i w_i |v_i|) * M / |M|,  M = sum_i w_i u_i  (+ theta_base).

    A tensor no model moved (all v_i zero) stays as it is (mergekit refuses it for three
    models or more). When |M| < eps otherwise (opposite directions that cancel): two models
    fall back to the weighted sum of the v_i; more are refused, naming the tensor."""

    name = "multislerp"
    summary = "weighted mean direction on the hypersphere, at the weighted mean norm"
    reference = "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea"
    Params = MultiSlerpParams
    params: MultiSlerpParams
    base_policy = "optional"
    elementwise = False

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        n = tensors.shape[0]
        if n == 1:
            return tensors[0]
        if ctx.rounding is not None and np.any(tensors != (base if base is not None else 0)):
            return self._as_mergekit(tensors, base, ctx)
        v = (tensors - base if base is not None else tensors).reshape(n, -1).astype(np.float64)
        w = np.asarray([p.weight for p in self.per_model], dtype=np.float64)
        if self.params.normalize_weights:
            w = w / w.sum()
        eps = self.params.eps
        norms = np.linalg.norm(v, axis=1)
        mean = (w[:, None] * (v / (norms[:, None] + eps))).sum(axis=0)
        length = float(np.linalg.norm(mean))
        if not np.any(v):  # nothing moved (an empty or untouched tensor): the base
            out = v[0]
        elif length < eps:
            if n != 2:
                raise MergeError(
                    f"multislerp: {ctx.name}: the weighted directions cancel out (opposite "
                    f"tensors with balancing weights); choose other weights"
                )
            out = w[0] * v[0] + w[1] * v[1]
        else:
            out = float(w @ norms) * mean / length
        out = out.reshape(tensors.shape[1:])
        if base is not None:
            out = out + base
        return out.astype(tensors.dtype)

    def _as_mergekit(
        self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext
    ) -> np.ndarray:
        """``--compat mergekit``: mergekit's steps in its float16/bfloat16 compute dtype,
        each result rounded (``r``; norms, sums, cos and sin by torch in float32, as torch
        computes them for those dtypes). In that dtype the tangent-space terms, zero in
        exact arithmetic, are not, so they are computed as mergekit does."""
        import torch

        def on_torch(fn, x: np.ndarray) -> np.ndarray:
            return torch_kernel(fn, x, ctx)

        def norm(x: np.ndarray, axis: int | None = None) -> np.ndarray:
            if axis is None:
                return on_torch(lambda v: torch.linalg.vector_norm(v).reshape(1), x)
            return on_torch(lambda v: torch.linalg.vector_norm(v, dim=axis, keepdim=True), x)

        def total(x: np.ndarray, axis: int) -> np.ndarray:
            return on_torch(lambda v: v.sum(dim=axis, keepdim=axis != 0), x)

        r, f32 = ctx.round, np.float32
        n = tensors.shape[0]
        eps = f32(self.params.eps)
        v = r(tensors - base if base is not None else tensors.copy()).reshape(n, -1)
        w = r(np.asarray([p.weight for p in self.per_model], dtype=f32))
        if self.params.normalize_weights:
            w = r(w / total(w, 0))
        w = w[:, None]
        norms = norm(v, axis=-1)
        unit = r(v / r(norms + eps))
        mean = total(r(unit * w), 0)
        length = norm(mean)
        if length[0] < r(np.array([eps]))[0]:
            if n != 2:
                raise MergeError(
                    f"multislerp: {ctx.name}: the weighted directions cancel out (opposite "
                    f"tensors with balancing weights); choose other weights"
                )
            out = r(r(v[0] * w[0]) + r(v[1] * w[1]))
        else:
            mean = r(mean / length)
            dots = total(r(unit * mean), -1)
            tangent = total(r(r(unit - r(dots * mean)) * w), 0)
            step = r(norm(tangent) + eps)
            along = r(tangent * r(on_torch(torch.sin, step) / step))
            out = r(r(mean * on_torch(torch.cos, step)) + along)
            out = r(out * total(r(norms[:, 0] * w[:, 0]), 0))
        out = out.reshape(tensors.shape[1:])
        return out + base if base is not None else out
