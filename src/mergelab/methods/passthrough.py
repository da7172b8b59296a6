"""Passthrough: one model's tensors, unchanged (layer stacking with ``slices``)."""

from __future__ import annotations

import numpy as np

from mergelab.methods.base import MergeMethod, TensorContext, register


@register
class Passthrough(MergeMethod):
    """theta = theta_1: the one model's values. With ``slices`` (mergekit's frankenmerges),
    each slice's layers come from its one source model, renumbered in order."""

    name = "passthrough"
    summary = "one model's tensors unchanged (layer stacking with slices)"
    reference = "https://github.com/arcee-ai/mergekit"
    base_policy = "unused"
    min_models = 1
    max_models = 1

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        return tensors[0]
