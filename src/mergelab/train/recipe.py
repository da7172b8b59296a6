"""Ingredient recipes: N models to merge, from one shared start or from N seeded inits.

The default follows "Rethinking Weight-Averaged Model-merging": one pre-trained start,
fine-tuned N times with identical hyperparameters, a fresh randomly initialised head per
run, data order and augmentation draws differing by seed.

```yaml
dataset: mnist5k
arch: cnn
n_models: 10
mode: shared            # shared: one start, then N fine-tunes; independent: N seeded inits
seed: 0
source: null            # dataset the start is pre-trained on (null: `dataset`); its images
                        # are adapted to the target's input (e.g. mnist5k resized to 8x8)
pretrain:               # the shared start ...
  {epochs: 20, lr: 0.05, augment: true, augment_flip: false, train_slice: [0, 0.5]}
# init: start.safetensors   # ... or a local checkpoint as the start (instead of pretrain)
train:                  # every fine-tune, identical hyperparameters
  {epochs: 4, lr: 0.05, augment: true, augment_flip: false, train_slice: [0.5, 1]}
  # patience: 3         # stop on a val plateau (epochs is then the maximum)
head: fresh             # fresh: each fine-tune re-initialises the head (seeded); keep
# lrs: [0.05, 0.1, 0.02]  # variant: cycled over the N runs (overrides train.lr)
# augment: [true, false]  # variant: cycled (overrides train.augment)
```
Every run is a ``TrainConfig`` cached by its hash, so an interrupted recipe resumes where it
stopped and a finished one costs nothing to "make" again. :func:`make_ingredients` trains
one recipe, :func:`mergelab.train.pool.train_recipes` several in one pool of processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mergelab.train.config import TrainConfig, TrainSettings
from mergelab.yamlfile import read_mapping, validate

__all__ = ["IngredientRecipe", "make_ingredients", "start_checkpoint"]

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
    source: str | None = None
    """shared mode: dataset spec the start is pre-trained on (None: ``dataset``). The start
    is built for the target's input: when ``source`` differs from ``dataset``, unset
    ``in_chans``/``img_size`` are taken from ``dataset`` for the start and the fine-tunes.
    Ignored in independent mode."""
    init: str | None = None
    """shared mode: a local checkpoint that is the start, instead of a ``pretrain`` run."""
    pretrain: TrainSettings | None = None
    """shared mode: the common start (None, without ``init``: all fine-tunes start from one
    seeded init)."""
    train: TrainSettings = TrainSettings()
    """Each ingredient's run: the fine-tune (shared) or the whole training (independent)."""
    head: Literal["fresh", "keep"] = "fresh"
    """shared mode: ``fresh`` re-initialises each fine-tune's head (seeded by its run seed;
    a start with another class count then fits); ``keep`` fine-tunes the start's head.
    Ignored in independent mode."""
    lrs: tuple[float, ...] | None = None
    """Variant: learning rates cycled over the runs; None = ``train.lr`` for all."""
    augment: tuple[bool, ...] | None = None
    """Variant: augmentation on/off cycled over the runs; None = ``train.augment`` for all."""

    @model_validator(mode="after")
    def _check(self) -> IngredientRecipe:
        if self.mode == "independent" and self.pretrain is not None:
            raise ValueError("mode 'independent' trains from fresh inits: drop 'pretrain'")
        if self.mode == "independent" and self.init is not None:
            raise ValueError("mode 'independent' trains from fresh inits: drop 'init'")
        if self.init is not None and self.pretrain is not None:
            raise ValueError(
                "give 'init' (a checkpoint that is the start) or 'pretrain' (a run that "
                "makes it), not both"
            )
        if self.init is not None and self.source is not None:
            raise ValueError("'source' is what 'pretrain' trains on; with 'init' drop it")
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

    def _other_source(self) -> bool:
        return (
            self.mode == "shared"
            and self.init is None
            and self.source is not None
            and self.source != self.dataset
        )

    def model_input(self) -> tuple[int | None, int | None]:
        """(in_chans, img_size) of every run: the recipe's, completed from the target
        dataset's info when the start is pre-trained on another ``source``."""
        in_chans, img_size = self.in_chans, self.img_size
        if self._other_source() and (in_chans is None or img_size is None):
            from mergelab.train.trainer import _splits

            info = _splits(self.dataset, self.split_seed).info
            in_chans = info.channels if in_chans is None else in_chans
            img_size = info.image_size[0] if img_size is None else img_size
        return in_chans, img_size

    def _base(self, dataset: str | None = None) -> dict[str, Any]:
        in_chans, img_size = self.model_input()
        return {
            "dataset": dataset or self.dataset,
            "split_seed": self.split_seed,
            "arch": self.arch,
            "model_kwargs": dict(self.model_kwargs),
            "in_chans": in_chans,
            "img_size": img_size,
        }

    def start_config(self) -> TrainConfig | None:
        """The shared start to train (pre-training on ``source``, or a 0-step run that saves
        the seeded init); None in independent mode or when ``init`` is the start."""
        if self.mode == "independent" or self.init is not None:
            return None
        settings = self.pretrain.model_dump() if self.pretrain is not None else {"steps": 0}
        dataset = self.source if self._other_source() else self.dataset
        return TrainConfig(
            **self._base(dataset), **settings, seed=self.seed, data_seed=self.seed + _DATA_SEED
        )

    def start_init(self) -> str | None:
        """What every fine-tune's ``init`` is: the start's config hash, the ``init`` path,
        or None (independent mode)."""
        if self.mode == "independent":
            return None
        if self.init is not None:
            return self.init
        start = self.start_config()
        return start.config_hash() if start is not None else None

    def ingredient_configs(self) -> list[TrainConfig]:
        """The N runs, in order: seed, data order (and lr, augmentation if cycled) per run."""
        init = self.start_init()
        reset = self.mode == "shared" and self.head == "fresh"
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
                    reset_head=reset,
                )
            )
        return configs

    def all_configs(self) -> list[TrainConfig]:
        """Every run to train: the start first (if there is one), then the fine-tunes."""
        start = self.start_config()
        return ([start] if start is not None else []) + self.ingredient_configs()

    def run_labels(self) -> list[str]:
        """Short names of :meth:`all_configs`, for logs and errors."""
        where = f"{self.arch} on {self.dataset}"
        start = self.start_config()
        labels = []
        if start is not None:
            src = f" (from {start.dataset})" if start.dataset != self.dataset else ""
            labels.append(f"{where}, start{src}")
        kind = "run" if self.mode == "shared" else "independent run"
        return labels + [f"{where}, {kind} {i + 1}" for i in range(self.n_models)]


def make_ingredients(
    recipe: IngredientRecipe,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    progress: bool = True,
    threads: int | None = 1,
    workers: int = 1,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Train (or reuse) every run of ``recipe``; returns the N ingredient checkpoints.

    The shared start, when there is one, is trained first; it is
    ``start_checkpoint(recipe, cache_dir)`` afterwards. Finished runs are reused, so an
    interrupted call picks up where it stopped. ``workers``: processes training at once
    (1: in this process); ``threads``: see ``train_model``; ``log``: one line per run
    trained (see :func:`mergelab.train.pool.train_runs`).
    """
    from mergelab.train.pool import train_recipes

    return train_recipes(
        [recipe],
        cache_dir=cache_dir,
        device=device,
        workers=workers,
        progress=progress,
        log=log,
        threads=threads,
    )[0]


def start_checkpoint(
    recipe: IngredientRecipe, cache_dir: str | os.PathLike[str] | None = None
) -> Path | None:
    """Path of the recipe's shared start: its run in the cache, or the ``init`` file
    (None in independent mode)."""
    from mergelab.train.trainer import checkpoint_path, default_train_cache

    if recipe.mode == "shared" and recipe.init is not None:
        return Path(recipe.init).expanduser()
    start = recipe.start_config()
    if start is None:
        return None
    return checkpoint_path(start, cache_dir if cache_dir is not None else default_train_cache())
