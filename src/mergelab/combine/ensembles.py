"""Output-space and feature-space ensembles, computed from cached outputs (no forward pass).

* Ens Logits: mean of the members' logits (multi-label too: mean logits, then sigmoid).
* Ens Features: mean of the penultimate features, classified by the last layer with its
  parameters averaged over the members (a soup of heads, via ``merge_state_dicts``).
* Ens Features*: mean features through one model's own head (the first model's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from mergelab.engine import merge_state_dicts

__all__ = ["average_heads", "mean_arrays"]


def mean_arrays(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Element-wise mean of same-shape arrays, accumulated in float64, returned as float32."""
    if not arrays:
        raise ValueError("nothing to average")
    total = np.zeros(arrays[0].shape, dtype=np.float64)
    for a in arrays:
        total += a
    return (total / len(arrays)).astype(np.float32)


def average_heads(heads: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform average of head state dicts with the same merge code as every soup."""
    if len(heads) == 1:
        return dict(heads[0])
    return merge_state_dicts("linear", list(heads))
