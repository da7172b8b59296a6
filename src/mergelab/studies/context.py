"""What every perspective of a study shares: the config, the output folder layout, loaded
datasets, trained ingredients and evaluators, each made once and reused."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mergelab.data import DatasetSplits, ImageSpec, load_dataset
from mergelab.evaluate import Evaluator
from mergelab.io import load_state_dict
from mergelab.studies.config import StudyConfig
from mergelab.train import IngredientRecipe, make_ingredients


@dataclass
class StudyContext:
    config: StudyConfig
    out: Path
    progress: bool = True
    started: float = field(default_factory=time.perf_counter)
    _datasets: dict[str, DatasetSplits] = field(default_factory=dict)
    _ingredients: dict[tuple, list[Path]] = field(default_factory=dict)
    _evaluators: dict[tuple, Evaluator] = field(default_factory=dict)

    @property
    def runs_dir(self) -> Path:
        return self.out / "runs"

    @property
    def cache_dir(self) -> Path:
        return self.out / "cache"

    @property
    def arrays_dir(self) -> Path:
        return self.out / "arrays"

    def log(self, message: str) -> None:
        """One progress line with the time since the study started."""
        if self.progress:
            elapsed = time.perf_counter() - self.started
            print(f"[{elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)

    def dataset(self, spec: str) -> DatasetSplits:
        if spec not in self._datasets:
            self._datasets[spec] = load_dataset(spec, seed=self.config.seed)
        return self._datasets[spec]

    def recipe(
        self,
        dataset: str,
        arch: str,
        *,
        mode: str = "shared",
        n_models: int | None = None,
        image: ImageSpec | None = None,
        seed: int | None = None,
    ) -> IngredientRecipe:
        fields: dict[str, Any] = self.config.training_for(arch, dataset)
        if mode == "independent":
            fields.pop("pretrain", None)
        return IngredientRecipe(
            dataset=dataset,
            split_seed=self.config.seed,
            arch=arch,
            n_models=n_models or self.config.n_models,
            mode=mode,
            seed=self.config.seed if seed is None else seed,
            in_chans=None if image is None else image.channels,
            img_size=None if image is None else image.size,
            **fields,
        )

    def ingredients(self, dataset: str, arch: str, **kwargs: Any) -> list[Path]:
        """Checkpoints of the recipe's ingredients, trained once (cached by config hash)."""
        recipe = self.recipe(dataset, arch, **kwargs)
        key = (recipe.model_dump_json(),)
        if key not in self._ingredients:
            self.log(f"ingredients: {recipe.n_models} x {arch} on {dataset} ({recipe.mode})")
            self._ingredients[key] = make_ingredients(
                recipe, cache_dir=self.runs_dir, device=self.config.device, progress=self.progress
            )
        return self._ingredients[key]

    def state_dicts(self, paths: list[Path]) -> list[dict[str, torch.Tensor]]:
        return [load_state_dict(p) for p in paths]

    def evaluator(self, dataset: str, arch: str, image: ImageSpec | None = None) -> Evaluator:
        key = (dataset, arch, image)
        if key not in self._evaluators:
            self._evaluators[key] = Evaluator(
                self.dataset(dataset),
                arch=arch,
                spec=image,
                batch_size=self.config.batch_size,
                cache_dir=self.cache_dir,
                device=self.config.device,
                progress=False,
            )
        return self._evaluators[key]
