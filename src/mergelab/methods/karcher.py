"""Karcher mean: the Riemannian average of the models' directions, scaled by their mean norm.

Per tensor, each model is a norm times a direction on the unit sphere; the directions are
averaged intrinsically on the sphere (the point minimising the summed squared geodesic
distances: Karcher 1977; Buss & Fillmore 2001 for the fixed-point iteration used here) and
the result is scaled by the models' mean norm. Source: mergekit's ``karcher`` (equal model
weights, ``max_iter`` 10, ``tol`` 1e-5). Computed in float64 (mergekit: the tensors'
dtype), so results agree with mergekit's to float32 rounding, not bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from mergelab.methods.base import MergeMethod, MethodParams, TensorContext, register


class KarcherParams(MethodParams):
    max_iter: int = Field(10, ge=1, le=10_000)
    """Fixed-point steps on the sphere."""
    tol: float = Field(1e-5, gt=0.0)
    """Norms, angles and steps below this count as zero (and end the iteration)."""


def karcher_direction(units: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """The Karcher mean of the unit rows of ``units`` (equal weights), float64.

    Start from the normalised arithmetic mean; each step maps the rows to the tangent
    space at u (log map: theta / sin(theta) * (x - cos(theta) u)), averages them, and moves
    along the average (exp map), until the step is shorter than ``tol``."""
    n = len(units)
    u = units.mean(axis=0)
    norm = float(np.linalg.norm(u))
    u = units[0].copy() if norm < tol else u / norm
    for _ in range(max_iter):
        step = np.zeros_like(u)
        for x in units:
            cos = min(max(float(x @ u), -1.0), 1.0)
            theta = math.acos(cos)
            if theta < tol:
                continue
            step += (theta / math.sin(theta)) / n * (x - cos * u)
        length = float(np.linalg.norm(step))
        if length < tol:
            break
        u = math.cos(length) * u + math.sin(length) * (step / length)
        u_norm = float(np.linalg.norm(u))
        if u_norm > tol:
            u /= u_norm
    return u


@register
class Karcher(MergeMethod):
    """theta = (1/n sum_i |theta_i|) * KarcherMean_i(theta_i / |theta_i|), per tensor.

    Models whose tensor norm is below ``tol`` take no part in the direction (their zero
    norm still counts in the mean norm); all of them below: zeros. Two models give their
    slerp midpoint's direction."""

    name = "karcher"
    summary = "Riemannian (Karcher) mean of the models' directions, scaled by their mean norm"
    reference = "https://en.wikipedia.org/wiki/Karcher_mean"
    Params = KarcherParams
    params: KarcherParams
    elementwise = False

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        n = tensors.shape[0]
        if n == 1:
            return tensors[0]
        if ctx.rounding is not None:
            return self._as_mergekit(tensors, ctx)
        flat = tensors.reshape(n, -1).astype(np.float64)
        norms = np.linalg.norm(flat, axis=1)
        valid = norms > self.params.tol
        if not valid.any():
            return np.zeros_like(tensors[0])
        units = flat[valid] / norms[valid, None]
        u = karcher_direction(units, self.params.max_iter, self.params.tol)
        scale = float(norms.mean())
        return (scale * u).reshape(tensors.shape[1:]).astype(tensors.dtype)

    def _as_mergekit(self, tensors: np.ndarray, ctx: TensorContext) -> np.ndarray:
        """``--compat mergekit``: mergekit's iteration with its unit vectors, mean and
        tangent in the float16/bfloat16 compute dtype and its norms in float32, run by
        torch in those dtypes (each step rounds as mergekit's does)."""
        import torch

        from mergelab.io.dtypes import to_torch

        low = to_torch(ctx.rounding)
        tol, n = self.params.tol, tensors.shape[0]
        xs = [torch.from_numpy(np.ascontiguousarray(x.reshape(-1))).to(low) for x in tensors]
        norms = [torch.linalg.vector_norm(x.float()) for x in xs]
        valid = [i for i in range(n) if norms[i].item() > tol]
        if not valid:
            return np.zeros_like(tensors[0])
        units = [xs[i] / norms[i] for i in valid]
        total = sum(1.0 / n for _ in valid)
        shares = [(1.0 / n) / total for _ in valid]
        mean = torch.zeros_like(units[0])
        for share, unit in zip(shares, units, strict=True):
            mean += share * unit
        length = torch.linalg.vector_norm(mean.float())
        mean = units[0].clone() if length.item() < tol else mean / length
        for _ in range(self.params.max_iter):
            tangent = torch.zeros_like(mean)
            for share, unit in zip(shares, units, strict=True):
                cos = torch.clamp(torch.dot(mean, unit), -1.0, 1.0)
                theta = torch.arccos(cos)
                if theta.item() >= tol:
                    tangent += share * (theta / torch.sin(theta)) * (unit - cos * mean)
            step = torch.linalg.vector_norm(tangent.float())
            if step.item() < tol:
                break
            mean = torch.cos(step) * mean + torch.sin(step) * (tangent / step)
            length = torch.linalg.vector_norm(mean.float())
            if length.item() > tol:
                mean = mean / length
        scale = sum((1.0 / n) * norm for norm in norms)
        out = (scale * mean).float().numpy()
        return out.reshape(tensors.shape[1:])
