"""Scaling weights by a constant ("Rethinking Weight-Averaged Model-merging", perspective 3).

The paper multiplies every parameter of a model by c (x1 ... x150) and finds that merging
stays more robust than ensembling. "Every parameter" includes BatchNorm statistics, which
is what they did; the other options separate the effect of the weights themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

__all__ = ["FACTORS", "is_scaled", "scale_models", "scale_state_dict"]

FACTORS: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 70, 90, 100, 110, 130, 150)
"""The paper's magnitude factors."""

Tensors = Literal["all", "weights", "no_norm_stats"]
Which = Literal["all", "first", "all_but_first"]

_NORM_STATS = ("running_mean", "running_var")


def _is_float(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return bool(np.issubdtype(value.dtype, np.floating))
    return bool(getattr(value, "is_floating_point", lambda: False)())


def is_scaled(name: str, value: Any, tensors: Tensors = "all") -> bool:
    """Whether ``scale_state_dict(..., tensors=...)`` multiplies this entry.

    "all": every floating tensor (the paper); "weights": only ``*.weight`` with ndim >= 2
    (conv/linear kernels, not norm scales); "no_norm_stats": all floating tensors but
    BatchNorm ``running_mean``/``running_var``. Integer tensors (``num_batches_tracked``)
    are never scaled.
    """
    if not _is_float(value):
        return False
    if tensors == "all":
        return True
    if tensors == "weights":
        return (name == "weight" or name.endswith(".weight")) and len(value.shape) >= 2
    if tensors == "no_norm_stats":
        return not name.endswith(_NORM_STATS)
    raise ValueError(f"tensors must be 'all', 'weights' or 'no_norm_stats', got {tensors!r}")


def scale_state_dict(
    sd: Mapping[str, Any], factor: float, tensors: Tensors = "all"
) -> dict[str, Any]:
    """A new state dict with the selected floating tensors multiplied by ``factor`` (same
    dtype); the rest are passed through untouched (not copied)."""
    if tensors not in ("all", "weights", "no_norm_stats"):
        raise ValueError(f"tensors must be 'all', 'weights' or 'no_norm_stats', got {tensors!r}")
    return {
        name: (value * factor if is_scaled(name, value, tensors) else value)
        for name, value in sd.items()
    }


def scale_models(
    sds: Sequence[Mapping[str, Any]],
    factor: float,
    which: Which = "all",
    tensors: Tensors = "all",
) -> list[dict[str, Any]]:
    """Scale some of several models: "all" of them, only the "first", or "all_but_first"
    (the paper's settings for a merge where one or more ingredients have grown)."""
    if which not in ("all", "first", "all_but_first"):
        raise ValueError(f"which must be 'all', 'first' or 'all_but_first', got {which!r}")
    out = []
    for i, sd in enumerate(sds):
        scaled = which == "all" or (which == "first") == (i == 0)
        out.append(scale_state_dict(sd, factor, tensors) if scaled else dict(sd))
    return out
