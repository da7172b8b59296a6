"""Helpers shared across the suite: small random checkpoints written in real formats."""

from __future__ import annotations

import numpy as np

SHAPES: dict[str, tuple[int, ...]] = {
    "embed.weight": (11, 6),
    "layer.0.weight": (6, 6),
    "layer.0.bias": (6,),
    "norm.weight": (6,),
    "head.weight": (3, 6),
}


def random_state(seed: int, shapes: dict[str, tuple[int, ...]] = SHAPES, dtype=np.float32) -> dict:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(dtype) for n, s in shapes.items()}


def finetunes(base: dict, n: int, scale: float = 0.1, seed: int = 100) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {k: (v + scale * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in base.items()}
        for _ in range(n)
    ]
