"""RAM: Reinforced Agent Merging, and its tensor-local variant RAM+ (mergekit's ``ram``,
``ramplus_tl``; arXiv:2601.13572 as mergekit cites it).

On the task vectors tau_i = theta_i - theta_base, an element *contributes* when |tau_i| >
epsilon. Where one model alone contributes its value is taken whole; where several do,
their contributions are averaged (not summed, as task arithmetic would). RAM+ also scales
each model's unique contributions up by 1 + r * min(rho_i, alpha), rho_i = (the model's
shared contributions) / (its unique ones), counted over the tensor.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from mergelab.methods.base import MergeMethod, MethodParams, TensorContext, register


class RamParams(MethodParams):
    epsilon: float = Field(1e-5, ge=0.0)
    """|tau| above this counts as a contribution."""


class RamPlusParams(RamParams):
    r: float = Field(0.1, ge=0.0)
    """Strength of the boost of unique contributions."""
    alpha: float = Field(0.2, ge=0.0)
    """Cap on the shared/unique ratio rho."""


def _parts(tensors: np.ndarray, base: np.ndarray, epsilon: float, ctx: TensorContext):
    tau = ctx.round(tensors - base)  # rounded where mergekit's compute dtype rounds it
    on = np.abs(tau) > epsilon
    count = on.sum(axis=0)
    return np.where(on, tau, 0), on, count


def _shared(tau: np.ndarray, count: np.ndarray, ctx: TensorContext) -> np.ndarray:
    """Each model's share of the elements it shares: tau / count (rounded, mergekit's
    ``tv * overlap / count`` in its compute dtype), 0 where it contributes alone."""
    return np.where(count > 1, ctx.round(tau / np.maximum(count, 1).astype(tau.dtype)), 0)


@register
class Ram(MergeMethod):
    """theta = theta_base + sum_i c_i tau_i, c_i = [|tau_i| > eps] / max(1, #{j: |tau_j| >
    eps}) per element: a lone contribution whole, shared ones averaged."""

    name = "ram"
    summary = "task vectors: lone contributions whole, shared ones averaged"
    reference = "https://arxiv.org/abs/2601.13572"
    Params = RamParams
    params: RamParams
    base_policy = "required"

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        assert base is not None
        tau, _, count = _parts(tensors, base, self.params.epsilon, ctx)
        if ctx.rounding is not None:  # mergekit: lone and shared parts summed over models
            merged = ctx.round(np.where(count == 1, tau, _shared(tau, count, ctx)).sum(axis=0))
            return base + merged
        return base + tau.sum(axis=0) / np.maximum(count, 1).astype(tau.dtype)


@register
class RamPlusTL(MergeMethod):
    """RAM, with model i's unique contributions scaled by lambda_i = 1 + r * clip(rho_i, 0,
    alpha), rho_i = #shared_i / max(#unique_i, eps), counted over the whole tensor."""

    name = "ramplus_tl"
    summary = "RAM with each model's unique contributions boosted by its overlap ratio"
    reference = "https://arxiv.org/abs/2601.13572"
    Params = RamPlusParams
    params: RamPlusParams
    base_policy = "required"
    elementwise = False
    mergekit_result_dtype = "F32"  # its lambda is float32: torch promotes the result

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        assert base is not None
        p = self.params
        tau, on, count = _parts(tensors, base, p.epsilon, ctx)
        n = tensors.shape[0]
        flat_on = on.reshape(n, -1)
        shared = (flat_on & (count.reshape(-1) > 1)).sum(axis=1)
        unique = (flat_on & (count.reshape(-1) == 1)).sum(axis=1)
        rho = shared / np.maximum(unique, p.epsilon)
        lam = (1 + p.r * np.clip(rho, 0, p.alpha)).reshape(-1, *[1] * base.ndim)
        lone = count == 1
        if ctx.rounding is not None:
            # mergekit: lambda in float32, so the lone part (and the result) is float32;
            # the shared part stays in the compute dtype.
            f32 = np.float32
            rho32 = shared.astype(f32) / np.maximum(unique, p.epsilon).astype(f32)
            lam32 = f32(1) + f32(p.r) * np.clip(rho32, f32(0), f32(p.alpha))
            lone_part = np.where(lone, tau * lam32.reshape(lam.shape), 0)
            return base + (lone_part + _shared(tau, count, ctx)).sum(axis=0)
        merged = np.where(lone, (tau * lam).sum(axis=0), tau.sum(axis=0) / np.maximum(count, 1))
        return (base + merged).astype(tensors.dtype)
