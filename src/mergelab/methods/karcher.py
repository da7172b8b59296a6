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
        flat = tensors.reshape(n, -1).astype(np.float64)
        norms = np.linalg.norm(flat, axis=1)
        valid = norms > self.params.tol
        if not valid.any():
            return np.zeros_like(tensors[0])
        units = flat[valid] / norms[valid, None]
        u = karcher_direction(units, self.params.max_iter, self.params.tol)
        scale = float(norms.mean())
        return (scale * u).reshape(tensors.shape[1:]).astype(tensors.dtype)
