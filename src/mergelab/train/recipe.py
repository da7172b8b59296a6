"""Ingredient recipes: N models to merge, from one shared start or from N seeded inits.

```yaml
dataset: mnist5k
arch: mlp
n_models: 10
mode: shared            # shared: pretrain once, then N fine-tunes; independent: N inits
seed: 0
pretrain: {epochs: 2, lr: 0.05, train_fraction: 0.5}
train: {epochs: 2, batch_size: 64, schedule: cosine}
lrs: [0.05, 0.1, 0.02]  # cycled over the N runs (overrides train.lr)
augment: [true, false]  # cycled (overrides train.augment)
```
Every run is a ``TrainConfig`` cached by its hash, so an interrupted recipe resumes where it
stopped and a finished one costs nothing to "make" again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mergelab.train.config import TrainConfig, TrainSettings
from mergelab.yamlfile import read_mapping, validate

__all__ = ["IngredientRecipe", "make_ingredients"]

# Offsets that keep init seeds and data-order seeds of all runs of a recipe apart.
_RUN_SEED = 1
_DATA_SEED = 10_000


class IngredientRecipe(BaseModel):
    """How to make the N ingredients of a merging experiment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = "digits"
    split_seed: int = 0
    arch: str = "mlp"
    model_kwargs: dict[str, Any] = {}
    in_chans: int | None = None
    img_size: int | None = None
    n_models: int = Field(10, ge=1)
    mode: Literal["shared", "independent"] = "shared"
    seed: int = 0
    pretrain: TrainSettings | None = None
    """shared mode: the common start (None: all fine-tunes start from one seeded init)."""
    train: TrainSettings = TrainSettings()
    """Each ingredient's run: the fine-tune (shared) or the whole training (independent)."""
    lrs: tuple[float, ...] | None = None
    """Learning rates cycled over the runs; None = ``train.lr`` for all."""
    augment: tuple[bool, ...] | None = None
    """Augmentation on/off cycled over the runs; None = ``train.augment`` for all."""

    @model_validator(mode="after")
    def _check(self) -> IngredientRecipe:
        if self.mode == "independent" and self.pretrain is not None:
            raise ValueError("mode 'independent' trains from fresh inits: drop 'pretrain'")
        if self.lrs is not None and (not self.lrs or any(lr <= 0 for lr in self.lrs)):
            raise ValueError(f"lrs must be a non-empty list of positive numbers, got {self.lrs}")
        if self.augment is not None and not self.augment:
            raise ValueError("augment must be a non-empty list of true/false")
        return self

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> IngredientRecipe:
        """Read and validate a recipe file; problems become a ``MergeError`` naming fields."""
        path = Path(path)
        return validate(cls, read_mapping(path, "training recipe"), path, "training recipe")

    def _base(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split_seed": self.split_seed,
            "arch": self.arch,
            "model_kwargs": dict(self.model_kwargs),
            "in_chans": self.in_chans,
            "img_size": self.img_size,
        }

    def start_config(self) -> TrainConfig | None:
        """The shared start (pre-training, or a 0-step run that saves the seeded init);
        None in independent mode."""
        if self.mode == "independent":
            return None
        settings = self.pretrain.model_dump() if self.pretrain is not None else {"steps": 0}
        return TrainConfig(
            **self._base(), **settings, seed=self.seed, data_seed=self.seed + _DATA_SEED
        )

    def ingredient_configs(self) -> list[TrainConfig]:
        """The N runs, in order: seed, data order, lr and augmentation per run."""
        start = self.start_config()
        init = start.config_hash() if start is not None else None
        settings = self.train.model_dump()
        configs = []
        for i in range(self.n_models):
            run = dict(settings)
            if self.lrs is not None:
                run["lr"] = self.lrs[i % len(self.lrs)]
            if self.augment is not None:
                run["augment"] = self.augment[i % len(self.augment)]
            configs.append(
                TrainConfig(
                    **self._base(),
                    **run,
                    seed=self.seed + _RUN_SEED + i,
                    data_seed=self.seed + _DATA_SEED + _RUN_SEED + i,
                    init=init,
                )
            )
        return configs


def make_ingredients(
    recipe: IngredientRecipe,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    progress: bool = True,
    threads: int | None = 1,
) -> list[Path]:
    """Train (or reuse) every run of ``recipe``; returns the N ingredient checkpoints.

    The shared start, when there is one, is trained first; it is
    ``start_checkpoint(recipe, cache_dir)`` afterwards. Finished runs are reused, so an
    interrupted call picks up where it stopped. ``threads``: see ``train_model``.
    """
    from mergelab.train.trainer import train_model

    start = recipe.start_config()
    if start is not None:
        train_model(
            start,
            cache_dir=cache_dir,
            device=device,
            progress=progress,
            threads=threads,
            desc=f"{recipe.arch} start",
        )
    configs = recipe.ingredient_configs()
    return [
        train_model(
            cfg,
            cache_dir=cache_dir,
            device=device,
            progress=progress,
            threads=threads,
            desc=f"{recipe.arch} {i + 1}/{len(configs)}",
        )
        for i, cfg in enumerate(configs)
    ]


def start_checkpoint(
    recipe: IngredientRecipe, cache_dir: str | os.PathLike[str] | None = None
) -> Path | None:
    """Path of the recipe's shared start in the cache (None in independent mode)."""
    from mergelab.train.trainer import checkpoint_path, default_train_cache

    start = recipe.start_config()
    if start is None:
        return None
    return checkpoint_path(start, cache_dir if cache_dir is not None else default_train_cache())
