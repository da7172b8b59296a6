"""Recipes that make ingredients: trained models, cached by the hash of their config.

* :class:`TrainConfig` + :func:`train_model` - one run -> ``cache/<hash>.safetensors``
  (rerun = no training; same config = same bytes on the CPU). ``train_slice`` picks a fixed
  class-stratified part of the data, ``patience`` stops on a val plateau and keeps the best
  epoch, ``reset_head`` gives a run a fresh seeded head after loading its ``init``.
* :class:`IngredientRecipe` + :func:`make_ingredients` - N models from one shared start
  (pre-trained, possibly on another ``source`` dataset, or a given ``init`` checkpoint; then
  N fine-tunes with identical hyperparameters, fresh heads, seeds differing) or from N
  seeded inits; resumable. :func:`train_recipes` trains several recipes in one pool.
* :func:`train_runs` - any list of runs in up to ``workers`` processes, starts before the
  runs that depend on them, bytes identical to serial training.
* ``mergelab train RECIPE.yaml --out DIR``: :mod:`mergelab.train_cli`.
"""

from mergelab.train.config import TRAINER_VERSION, TrainConfig, TrainSettings
from mergelab.train.pool import run_label, train_recipes, train_runs
from mergelab.train.recipe import IngredientRecipe, make_ingredients, start_checkpoint
from mergelab.train.trainer import (
    TrainingError,
    checkpoint_path,
    default_train_cache,
    fit,
    lr_factor,
    read_train_config,
    reinit_head,
    resolve_device,
    slice_positions,
    total_steps,
    train_model,
    val_score,
)

__all__ = [
    "TRAINER_VERSION",
    "IngredientRecipe",
    "TrainConfig",
    "TrainSettings",
    "TrainingError",
    "checkpoint_path",
    "default_train_cache",
    "fit",
    "lr_factor",
    "make_ingredients",
    "read_train_config",
    "reinit_head",
    "resolve_device",
    "run_label",
    "slice_positions",
    "start_checkpoint",
    "total_steps",
    "train_model",
    "train_recipes",
    "train_runs",
    "val_score",
]
