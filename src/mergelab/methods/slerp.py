"""Spherical linear interpolation of two models (Shoemake 1985; mergekit's ``slerp``)."""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from mergelab.methods.base import MergeMethod, MethodParams, TensorContext, register

DOT_THRESHOLD = 0.9995
EPS = 1e-8


class SlerpParams(MethodParams):
    t: float = Field(0.5, ge=0.0, le=1.0)
    """Interpolation position: 0 gives the first model (the base), 1 the second."""


@register
class Slerp(MergeMethod):
    """Per tensor, with u = v0/|v0|, v = v1/|v1|, Omega = arccos(u.v):
    theta = sin((1-t) Omega)/sin(Omega) v0 + sin(t Omega)/sin(Omega) v1;
    nearly collinear tensors (|u.v| > 0.9995) fall back to (1-t) v0 + t v1.

    Two models without a base, or the base (t = 0) and one model (t = 1).
    """

    name = "slerp"
    summary = "spherical interpolation of two models"
    reference = "https://en.wikipedia.org/wiki/Slerp"
    Params = SlerpParams
    base_policy = "optional"
    min_models = 1
    max_models = 2
    elementwise = False

    def check_counts(self, n_models: int, has_base: bool) -> None:
        if n_models + has_base != 2:
            raise ValueError(
                f"slerp: needs exactly two inputs (two models, or a base and one model); "
                f"got {n_models} model(s){' and a base' if has_base else ''}"
            )

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        if base is not None:  # the base is the start point, the one model the end point
            tensors = np.stack([base, tensors[0]])
        t = self.params.t
        v0, v1 = tensors[0], tensors[1]
        n0 = float(np.linalg.norm(v0.ravel()))
        n1 = float(np.linalg.norm(v1.ravel()))
        n0, n1 = (n0 if n0 > EPS else 1.0), (n1 if n1 > EPS else 1.0)
        dot = float(np.clip(np.vdot(v0 / n0, v1 / n1), -1, 1))
        if abs(dot) > DOT_THRESHOLD:
            return v0 * (1 - t) + v1 * t
        omega = math.acos(dot)
        s = math.sin(omega)
        return v0 * (math.sin((1 - t) * omega) / s) + v1 * (math.sin(t * omega) / s)
