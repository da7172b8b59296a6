"""torch's own kernels, for ``--compat mergekit``: mergekit reduces (sums, norms, softmax,
variance) tensors held in its compute dtype, and torch's float32 accumulation for float16 and
bfloat16 tensors is not NumPy's pairwise summation, nor even torch's own for float32 tensors,
to the last bit. Where a method's result depends on those bits, it asks torch itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mergelab.methods.base import TensorContext


def on_torch(fn: Callable[[Any], Any], x: np.ndarray, ctx: TensorContext) -> np.ndarray:
    """``fn`` applied by torch to ``x`` held in mergekit's compute dtype (``x``'s values are
    already in it, so the conversion is exact), as a float32 array (float64 for float64)."""
    import torch

    from mergelab.io.dtypes import to_torch

    assert ctx.rounding is not None
    values = torch.from_numpy(np.ascontiguousarray(x)).to(to_torch(ctx.rounding))
    out = fn(values)
    return out.to(torch.float64 if ctx.rounding == "F64" else torch.float32).numpy()
