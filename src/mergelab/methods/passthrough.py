"""Passthrough: one model's tensors, unchanged or scaled (layer stacking with ``slices``)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from mergelab.methods.base import MergeMethod, ModelParams, TensorContext, register


class PassthroughModelParams(ModelParams):
    scale: float = Field(1.0)
    """Multiplies the tensor (mergekit's ``scale``; with a filter, e.g. 0 on ``o_proj``)."""


@register
class Passthrough(MergeMethod):
    """theta = scale * theta_1: the one model's values (scale 1 by default). With
    ``slices`` (mergekit's frankenmerges), each slice's layers come from its one source
    model, renumbered in order."""

    name = "passthrough"
    summary = "one model's tensors, unchanged or scaled (layer stacking with slices)"
    reference = "https://github.com/arcee-ai/mergekit"
    PerModel = PassthroughModelParams
    per_model: list[PassthroughModelParams]
    base_policy = "unused"
    min_models = 1
    max_models = 1

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        scale = self.per_model[0].scale
        return tensors[0] if scale == 1 else tensors[0] * np.asarray(scale, dtype=tensors.dtype)
