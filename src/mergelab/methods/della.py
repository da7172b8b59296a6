"""DELLA: drop task-vector elements at random, the smaller ones more often (Deep et al.
2024, arXiv:2406.11617; mergekit's ``della`` and ``della_linear``).

MagPrune: in each row of a task vector (a 1-D tensor is one row), rank the elements by
magnitude; the keep probability rises linearly with the rank from density - epsilon
(smallest) to density + epsilon (largest), so the expected kept share stays ``density``.
The survivors are rescaled to the task vector's L1 norm, then combined as task arithmetic
with TIES's sign election (``della``) or without it (``della_linear``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from mergelab.methods.base import (
    MergeMethod,
    MethodParams,
    ModelParams,
    TensorContext,
    register,
    seeded_generator,
)

L1_EPS = 1e-8


class DellaParams(MethodParams):
    lambda_: float = Field(1.0, alias="lambda")
    """Scale of the combined task vector."""
    normalize: bool = True
    """Divide by the (elected) sum of weights."""
    rescale: bool = True
    """Restore each pruned task vector's L1 norm."""
    consensus: Literal["none", "sum"] = "sum"
    """Sign election by mass (TIES) or none."""
    seed: int = 0
    """Seed of the random masks (with the tensor's name and the model's index)."""


class DellaModelParams(ModelParams):
    density: float = Field(1.0, ge=0.0, le=1.0)
    """Expected share of each row kept."""
    epsilon: float = Field(0.15, ge=0.0, le=1.0)
    """Half-width of the keep probabilities around density."""


def magprune_mask(tau: np.ndarray, density: float, epsilon: float, rng) -> np.ndarray:
    """The kept elements of ``tau`` (rows along the last axis): Bernoulli draws with
    probability (density - eps) + 2 eps (rank - 1) / (n - 1), rank by |value| within the
    row (1 = smallest; position order between equal values)."""
    rows = tau.reshape(1, -1) if tau.ndim < 2 else tau.reshape(-1, tau.shape[-1])
    n = rows.shape[1]
    ranks = np.argsort(np.argsort(np.abs(rows), axis=1, kind="stable"), axis=1, kind="stable")
    spread = ranks / (n - 1) if n > 1 else np.zeros_like(ranks, dtype=np.float64)
    probs = (density - epsilon) + spread * 2 * epsilon
    return (rng.random(rows.shape) < probs).reshape(tau.shape)


class _Della(MergeMethod):
    """Per model: tau_i' = mask_i * tau_i, rescaled by |tau_i|_1 / |tau_i'|_1 (rescale);
    tau_i'' = w_i tau_i'; elect = sign(sum_i tau_i'') (della) and m_i = [sign(tau_i'') ==
    elect]; theta = theta_base + lambda sum_i m_i tau_i'' / sum_i m_i w_i (normalize; a
    divisor below 1e-8 counts as 1). density 1 keeps everything; density - epsilon and
    density + epsilon must lie in (0, 1) otherwise."""

    Params = DellaParams
    PerModel = DellaModelParams
    params: DellaParams
    per_model: list[DellaModelParams]
    base_policy = "required"
    elementwise = False
    reference = "https://arxiv.org/abs/2406.11617"

    def __init__(self, params: DellaParams, per_model: list[DellaModelParams]) -> None:
        super().__init__(params, per_model)
        for i, p in enumerate(per_model):
            if p.density < 1 and not (p.density - p.epsilon > 0 and p.density + p.epsilon < 1):
                raise ValueError(
                    f"{self.name}: model {i + 1}: density {p.density:g} +- epsilon "
                    f"{p.epsilon:g} must lie inside (0, 1)"
                )

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        assert base is not None
        taus = []
        for i, p in enumerate(self.per_model):
            tau = tensors[i] - base
            if p.density < 1:
                rng = seeded_generator(self.params.seed, ctx.name, i)
                pruned = tau * magprune_mask(tau, p.density, p.epsilon, rng)
                if self.params.rescale:
                    before, after = np.abs(tau).sum(), np.abs(pruned).sum()
                    if after > L1_EPS:
                        pruned = pruned * (before / after)
                tau = pruned
            taus.append(tau * p.weight)
        stack = np.stack(taus)
        w = np.array([p.weight for p in self.per_model], dtype=stack.dtype).reshape(
            -1, *[1] * base.ndim
        )
        if self.params.consensus == "sum":
            elected = np.where(stack.sum(axis=0) >= 0, 1, -1)
            keep = np.sign(stack) == elected
        else:
            keep = np.ones(stack.shape, dtype=bool)
        merged = (stack * keep).sum(axis=0)
        if self.params.normalize:
            divisor = (w * keep).sum(axis=0)
            merged = merged / np.where(np.abs(divisor) < 1e-8, 1, divisor)
        return (base + self.params.lambda_ * merged).astype(tensors.dtype)


@register
class Della(_Della):
    __doc__ = _Della.__doc__
    name = "della"
    summary = "magnitude-ranked random drops, L1 rescale, TIES sign election"


@register
class DellaLinear(_Della):
    __doc__ = _Della.__doc__
    name = "della_linear"
    summary = "magnitude-ranked random drops, L1 rescale, task arithmetic (no election)"
    identical_inputs_give_input = False
    identical_inputs_reason = "task vectors add up (normalize=false by default)"

    class Params(DellaParams):
        normalize: bool = False
        consensus: Literal["none", "sum"] = "none"
