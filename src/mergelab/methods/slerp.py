"""Spherical linear interpolation of two models (Shoemake 1985; mergekit's ``slerp``).

The angle needs every element of a parameter, the interpolation only the same element of
both inputs: a tensor-statistics pass accumulates |v0|^2, |v1|^2 and v0.v1 chunk by chunk in
float64, and the merge applies the two coefficients chunk by chunk, so memory follows the
chunk size, not the tensor (as Model Stock does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from mergelab.methods.base import (
    DeltaAccess,
    MergeMethod,
    MethodParams,
    TensorContext,
    TensorStatistics,
    register,
)

DOT_THRESHOLD = 0.9995
MERGEKIT_CHUNK = 1 << 20
EPS = 1e-8


class SlerpParams(MethodParams):
    t: float = Field(0.5, ge=0.0, le=1.0)
    """Interpolation position: 0 gives the first model (the base), 1 the second."""


@dataclass(frozen=True)
class SlerpStats(TensorStatistics):
    """The merged parameter is ``c0 * v0 + c1 * v1``."""

    c0: float
    c1: float


def coefficients(gram: np.ndarray, t: float) -> SlerpStats:
    """Slerp's coefficients from the Gram matrix ``[[v0.v0, v0.v1], [v1.v0, v1.v1]]``:
    sin((1-t) Omega)/sin(Omega) and sin(t Omega)/sin(Omega), Omega the angle between v0
    and v1; (1 - t, t) where they are nearly collinear (|cos Omega| > 0.9995)."""
    n0, n1 = math.sqrt(max(gram[0, 0], 0.0)), math.sqrt(max(gram[1, 1], 0.0))
    n0, n1 = (n0 if n0 > EPS else 1.0), (n1 if n1 > EPS else 1.0)
    dot = min(max(float(gram[0, 1]) / (n0 * n1), -1.0), 1.0)
    if abs(dot) > DOT_THRESHOLD:
        return SlerpStats(1 - t, t)
    omega = math.acos(dot)
    s = math.sin(omega)
    return SlerpStats(math.sin((1 - t) * omega) / s, math.sin(t * omega) / s)


def _blocks(chunks, size: int, swap: bool):
    """``(v0, v1)`` float32 torch rows of consecutive ``size``-element blocks from the
    start of the tensor, from chunks ``(start, values[rows, length])`` of any length
    (rows: the models, then the base; ``swap``: the base is v0)."""
    import torch

    held: list[np.ndarray] = []
    count = 0
    for _, values in chunks:
        held.append(values)
        count += values.shape[1]
        while count >= size:
            joined = np.concatenate(held, axis=1) if len(held) > 1 else held[0]
            block, rest = joined[:, :size], joined[:, size:]
            held, count = ([rest] if rest.shape[1] else []), rest.shape[1]
            yield _pair(torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)), swap)
    if count:
        joined = np.concatenate(held, axis=1) if len(held) > 1 else held[0]
        yield _pair(torch.from_numpy(np.ascontiguousarray(joined, dtype=np.float32)), swap)


def _pair(block, swap: bool):
    return (block[1:2], block[0:1]) if swap else (block[0:1], block[1:2])


def coefficients_as_mergekit(chunks, t: float, swap: bool) -> SlerpStats:
    """:func:`coefficients` as mergekit computes them, in float32 by torch (``--compat
    mergekit``: its inputs are rounded to its compute dtype, the coefficients are not):
    norms of blocks of 2^20 elements combined, then the dot product block by block of the
    normalised vectors, as mergekit's chunked slerp (``chunks``: a callable giving the
    inputs' chunks, read twice; mergekit's blocks are smaller when it batches several
    tensors into one kernel call, which its one-tensor-at-a-time execution does not)."""
    import torch

    parts_a, parts_b = [], []
    for a, b in _blocks(chunks(), MERGEKIT_CHUNK, swap):
        parts_a.append(torch.linalg.vector_norm(a, dim=1, keepdim=True))
        parts_b.append(torch.linalg.vector_norm(b, dim=1, keepdim=True))

    def norm(parts: list) -> torch.Tensor:
        n = torch.linalg.vector_norm(torch.stack(parts), dim=0)
        return torch.where(n > EPS, n, 1)

    na, nb = norm(parts_a), norm(parts_b)
    dots = [
        ((a / na) * (b / nb)).sum(dim=1, keepdim=True)
        for a, b in _blocks(chunks(), MERGEKIT_CHUNK, swap)
    ]
    dot = torch.stack(dots).sum(dim=0).clamp(-1, 1)
    linear = dot.abs() > DOT_THRESHOLD
    theta = torch.acos(torch.where(linear, 0, dot))
    t32 = torch.tensor([[t]], dtype=torch.float32)
    c0 = torch.where(linear, 1 - t32, torch.sin((1 - t32) * theta) / torch.sin(theta))
    c1 = torch.where(linear, t32, torch.sin(t32 * theta) / torch.sin(theta))
    return SlerpStats(c0.item(), c1.item())


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
    params: SlerpParams
    base_policy = "optional"
    min_models = 1
    max_models = 2
    elementwise = True
    whole_tensor_statistics = False

    @property
    def uses_tensor_statistics(self) -> bool:
        return True

    def check_counts(self, n_models: int, has_base: bool) -> None:
        if n_models + has_base != 2:
            raise ValueError(
                f"slerp: needs exactly two inputs (two models, or a base and one model); "
                f"got {n_models} model(s){' and a base' if has_base else ''}"
            )

    def tensor_statistics(self, ctx: TensorContext, deltas: DeltaAccess) -> SlerpStats:
        # The raw inputs, not task vectors: rows are the models, then the base if any.
        if ctx.rounding is not None:
            swap = deltas.n_models == 1  # (model, base): the base is the start point v0
            return coefficients_as_mergekit(deltas.inputs, self.params.t, swap)
        gram = np.zeros((2, 2), dtype=np.float64)
        for _, values in deltas.inputs():
            values = values.astype(np.float64, copy=False)
            gram += values @ values.T
        if deltas.n_models == 1:  # (model, base): the base is the start point v0
            gram = gram[::-1, ::-1]
        return coefficients(gram, self.params.t)

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        assert isinstance(ctx.stats, SlerpStats)
        v0, v1 = (base, tensors[0]) if base is not None else (tensors[0], tensors[1])
        if ctx.rounding is not None:  # float32 coefficients, mergekit's order of operations
            return np.float32(ctx.stats.c0) * v0 + np.float32(ctx.stats.c1) * v1
        return v0 * ctx.stats.c0 + v1 * ctx.stats.c1
