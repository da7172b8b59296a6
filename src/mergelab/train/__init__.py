"""Recipes that make ingredients: trained models, cached by the hash of their config.

* :class:`TrainConfig` + :func:`train_model` - one run -> ``cache/<hash>.safetensors``
  (rerun = no training; same config = same bytes on the CPU).
* :class:`IngredientRecipe` + :func:`make_ingredients` - N models from one shared start
  (pretrain, then fine-tunes differing in seed, data order, lr, augmentation) or from N
  seeded inits; resumable.
* ``mergelab train RECIPE.yaml --out DIR``: :mod:`mergelab.train_cli`.
"""

from mergelab.train.config import TRAINER_VERSION, TrainConfig, TrainSettings
from mergelab.train.recipe import IngredientRecipe, make_ingredients, start_checkpoint
from mergelab.train.trainer import (
    TrainingError,
    checkpoint_path,
    default_train_cache,
    fit,
    lr_factor,
    read_train_config,
    resolve_device,
    total_steps,
    train_model,
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
    "resolve_device",
    "start_checkpoint",
    "total_steps",
    "train_model",
]
