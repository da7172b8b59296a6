"""Tiny seeded models fine-tuned from one shared start, for tests, demos and benchmarks.

Soups only work for models that share a loss basin, which is what fine-tuning from one
initialisation (here: one short common pre-training run) gives; every model then differs by
its data order and learning rate, as in the model-soups recipe. Everything runs on the CPU
in seconds on the embedded datasets (``digits``, ``mnist5k``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mergelab.data import DatasetSplits, ImageSpec, as_tensors

__all__ = ["train_toy_models"]


def _train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    multilabel: bool,
) -> None:
    """``steps`` of plain SGD (momentum 0.9, constant lr, no weight decay) through the
    trainer of ``mergelab.train``; ``seed`` fixes the batch order."""
    from mergelab.train import TrainConfig, fit

    config = TrainConfig(
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=0.0,
        schedule="constant",
        data_seed=seed,
    )
    fit(model, x, y, config, multilabel=multilabel, progress=False)
    model.eval()


def train_toy_models(
    splits: DatasetSplits,
    *,
    arch: str = "mlp",
    n_models: int = 4,
    steps: int = 60,
    pretrain_steps: int = 60,
    lr: float = 0.05,
    batch_size: int = 64,
    seed: int = 0,
    spec: ImageSpec | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    threads: int | None = 1,
) -> list[dict[str, torch.Tensor]]:
    """``n_models`` state dicts: one common pre-training run of ``pretrain_steps``, then
    ``steps`` of fine-tuning per model with its own seed (data order) and learning rate
    (``lr`` x 0.5 .. 1.5). Deterministic for a given ``seed``.

    ``threads``: torch CPU threads while training (restored after). One is fastest for such
    tiny models, and far faster than several when other processes share the cores.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train_all(
            splits,
            arch=arch,
            n_models=n_models,
            steps=steps,
            pretrain_steps=pretrain_steps,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            spec=spec,
            model_kwargs=model_kwargs,
        )
    finally:
        torch.set_num_threads(previous)


def _train_all(
    splits: DatasetSplits,
    *,
    arch: str,
    n_models: int,
    steps: int,
    pretrain_steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    spec: ImageSpec | None,
    model_kwargs: Mapping[str, Any] | None,
) -> list[dict[str, torch.Tensor]]:
    from mergelab.models import build_model

    info = splits.info
    in_chans = spec.channels if spec is not None else info.channels
    img_size = spec.size if spec is not None else info.image_size[0]
    x, y = as_tensors(splits.split("train", spec))
    torch.manual_seed(seed)
    base = build_model(
        arch, info.num_classes, in_chans=in_chans, img_size=img_size, **dict(model_kwargs or {})
    )
    kw = {"batch_size": batch_size, "multilabel": info.multilabel}
    _train(base, x, y, steps=pretrain_steps, lr=lr, seed=seed, **kw)
    start = {k: v.clone() for k, v in base.state_dict().items()}
    out = []
    for i in range(n_models):
        base.load_state_dict(start)
        scale = 0.5 + (i % 5) / 4.0 if n_models > 1 else 1.0
        _train(base, x, y, steps=steps, lr=lr * scale, seed=seed + 1000 * (i + 1), **kw)
        out.append({k: v.detach().clone() for k, v in base.state_dict().items()})
    return out
