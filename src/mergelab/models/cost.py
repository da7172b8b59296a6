"""Model size and compute, for reporting what an ensemble costs compared with a merge."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "count_params"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared/tied parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs (2 x multiply-accumulates) of one eval-mode forward pass for a batch of 1.

    ``input_shape`` is the shape of one sample without the batch dimension, e.g. ``(1, 28, 28)``.
    Counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention).
    """
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros((1, *input_shape), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
