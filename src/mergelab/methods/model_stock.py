"""Model Stock (Jang et al. 2024): interpolate between the base and the average of the
fine-tuned models with a ratio set by the angle between their task vectors."""

from __future__ import annotations

import numpy as np

from mergelab.methods.base import MergeMethod, MethodParams, TensorContext, register


class ModelStockParams(MethodParams):
    filter_wise: bool = False
    """One ratio per output row instead of one per tensor."""


@register
class ModelStock(MergeMethod):
    """cos = mean over pairs of cos(tau_i, tau_j), t = N cos / (1 + (N - 1) cos),
    theta = t * mean_i theta_i + (1 - t) * theta_base  (t = 0 where 1 + (N-1) cos ~ 0)."""

    name = "model_stock"
    summary = "base-to-average interpolation set by task-vector angles"
    reference = "https://arxiv.org/abs/2403.19522"
    Params = ModelStockParams
    base_policy = "required"
    min_models = 2
    elementwise = False

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        assert base is not None
        n = tensors.shape[0]
        rows = base.shape[0] if self.params.filter_wise and base.ndim >= 1 else 1
        flat_base = base.reshape(rows, -1)
        models = tensors.reshape(n, rows, -1)
        offsets = models - flat_base
        norms = np.linalg.norm(offsets, axis=-1)  # [n, rows]
        cosines = [
            np.clip(
                (offsets[i] * offsets[j]).sum(-1) / np.maximum(norms[i] * norms[j], 1e-6), -1, 1
            )
            for i in range(n)
            for j in range(i + 1, n)
        ]
        cos = np.mean(cosines, axis=0)
        denominator = 1 + (n - 1) * cos
        singular = np.abs(denominator) < 1e-6
        t = np.where(singular, 0.0, n * cos / np.where(singular, 1.0, denominator))
        t = t.astype(tensors.dtype)[:, None]
        return (t * models.mean(0) + (1 - t) * flat_base).reshape(base.shape)
