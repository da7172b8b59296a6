"""NearSwap: take the other model's value only where it lies near the base's.

Source: mergekit's ``nearswap`` (after alchemonaut's QuartetAnemoi-70B-t0.0001 recipe,
https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from mergelab.methods.base import MergeMethod, MethodParams, TensorContext, register

MIN_DISTANCE = 1e-6


class NearSwapParams(MethodParams):
    t: float = Field(..., gt=0.0)
    """Distance scale: elements closer than t to the base's take the other model's value."""


@register
class NearSwap(MergeMethod):
    """Per element, with a the base and b the other model:
    w = clip(t / max(|a - b|, 1e-6), 0, 1);  theta = w b + (1 - w) a.

    Where the two models are within t of each other the other model's value is taken
    whole; further apart, less and less of it. Exactly one model besides the base.
    """

    name = "nearswap"
    summary = "the other model's value where it is within t of the base's, less further away"
    reference = "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001"
    Params = NearSwapParams
    params: NearSwapParams
    base_policy = "required"
    min_models = 1
    max_models = 1
    example_params: ClassVar[dict[str, Any]] = {"t": 0.05}
    identical_inputs_give_input = False
    identical_inputs_reason = "elements further than t from the base keep part of the base"

    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        assert base is not None
        b = tensors[0]
        r = ctx.round  # where mergekit rounds in a float16/bfloat16 compute dtype (--compat)
        floor = r(np.asarray([MIN_DISTANCE], dtype=b.dtype))
        distance = np.maximum(r(np.abs(base - b)), floor)
        # t * (1 / d), not t / d: what torch computes for scalar / tensor, so the bytes
        # equal mergekit's.
        t = np.asarray(self.params.t, dtype=b.dtype)
        w = np.clip(r(r(np.reciprocal(distance)) * t), 0, 1)
        return r(w * b) + r(r(1 - w) * base)
