"""What every study shares: the config, the output folder layout, loaded datasets, trained
ingredients, evaluators and the per-example outcomes, each made once and reused."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mergelab.data import DatasetSplits, ImageSpec, load_dataset
from mergelab.evaluate import Evaluator
from mergelab.evaluate.source import ModelSource
from mergelab.evaluate.units import OutputsWanted, output_units
from mergelab.executor import Executor, local_executor
from mergelab.io import load_state_dict
from mergelab.results import outcome_key
from mergelab.studies.config import StudyConfig
from mergelab.train import IngredientRecipe

# Replicate seed s trains with base seed s * SEED_STRIDE, so no run of one replicate
# shares an init or data-order seed with a run of another (recipes have < 1000 runs).
SEED_STRIDE = 1000
# Recipe fields that only a shared start has.
_START_FIELDS = ("pretrain", "source", "init", "head")


@dataclass
class StudyContext:
    config: StudyConfig
    out: Path
    progress: bool = True
    workers: int = 1
    executor: Executor | None = None
    """Runs the training runs and ingredient outputs (None: in-process, or ``workers``
    processes)."""
    started: float = field(default_factory=time.perf_counter)
    outcomes: dict[str, np.ndarray] = field(default_factory=dict)
    _datasets: dict[str, DatasetSplits] = field(default_factory=dict)
    _ingredients: dict[str, list[Path]] = field(default_factory=dict)
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
            self._datasets[spec] = load_dataset(spec, seed=self.config.split_seed)
        return self._datasets[spec]

    # -- ingredients -------------------------------------------------------------------------

    def recipe(
        self,
        dataset: str,
        arch: str,
        *,
        seed: int,
        mode: str = "shared",
        n_models: int | None = None,
        image: ImageSpec | None = None,
        **overrides: Any,
    ) -> IngredientRecipe:
        """The ingredient recipe of ``arch`` on ``dataset`` for replicate ``seed``: the
        config's training fields (shared start, fine-tunes), or for ``mode="independent"``
        N seeded inits trained from scratch with ``independent.train`` over ``train``."""
        fields: dict[str, Any] = self.config.training_for(arch, dataset)
        if mode == "independent":
            for key in _START_FIELDS:
                fields.pop(key, None)
            fields["train"] = {**fields.get("train", {}), **self.config.independent.train}
        fields.update(overrides)
        in_chans, img_size = fields.pop("in_chans", None), fields.pop("img_size", None)
        if image is not None:
            in_chans, img_size = image.channels, image.size
        return IngredientRecipe(
            dataset=dataset,
            split_seed=self.config.split_seed,
            arch=arch,
            n_models=n_models or self.config.n_models,
            mode=mode,
            seed=seed * SEED_STRIDE,
            in_chans=in_chans,
            img_size=img_size,
            **fields,
        )

    def image(self, dataset: str, arch: str) -> ImageSpec | None:
        """The input ``arch`` sees on ``dataset`` when the config sets ``in_chans`` or
        ``img_size`` for it (an ImageNet model at 224 px on CIFAR); None: the dataset's."""
        fields = self.config.training_for(arch, dataset)
        if fields.get("in_chans") is None and fields.get("img_size") is None:
            return None
        info = self.dataset(dataset).info
        return ImageSpec(
            channels=fields.get("in_chans") or info.channels,
            size=fields.get("img_size") or info.image_size[0],
        )

    def prepare(self, recipes: Sequence[IngredientRecipe]) -> None:
        """Train every run of ``recipes`` up front, ``workers`` at a time (cached runs cost
        nothing), so the studies then only read checkpoints."""
        from mergelab.train.pool import train_recipes

        todo = list({r.model_dump_json(): r for r in recipes}.values())
        if not todo:
            return
        # Distinct runs, as the run cache counts them (a run shared by recipes is one).
        keys = {c.config_hash() for r in todo for c in r.all_configs()}
        cached = sum((self.runs_dir / f"{k}.safetensors").is_file() for k in keys)
        recipes_text = f"{len(todo)} recipe{'s' * (len(todo) != 1)}"
        if cached == len(keys):
            self.log(f"ingredients: all {len(keys)} training runs cached ({recipes_text})")
        else:
            done = f" ({cached} cached, {len(keys) - cached} to train)" if cached else ""
            where = self.executor.describe() if self.executor else f"{self.workers} worker(s)"
            self.log(f"ingredients: {recipes_text}, {len(keys)} training runs{done}, {where}")
        paths = train_recipes(
            todo,
            cache_dir=self.runs_dir,
            device=self.config.device,
            workers=self.workers,
            progress=self.progress and self.workers == 1,
            log=self.log,
            executor=self.executor,
        )
        for recipe, p in zip(todo, paths, strict=True):
            self._ingredients[recipe.model_dump_json()] = p

    def evaluate_ahead(self, wanted: Sequence[OutputsWanted]) -> None:
        """Compute the outputs the studies will read (each checkpoint on its splits) as
        units of the executor, so they run where the training ran; outputs already cached
        cost nothing. Merged and scaled models, made by the studies as they go, are
        evaluated by the studies themselves."""
        from mergelab.train.pool import wants_gpu

        def cached(want: OutputsWanted, path: Path) -> bool:
            ev = self.evaluator(want.dataset, want.arch, want.image)
            src = ModelSource.of(path)
            files = [ev.cache.path(ev.cache_key(src, s)) for s in want.splits]
            return all(f is not None and f.is_file() for f in files)

        units = output_units(
            wanted,
            split_seed=self.config.split_seed,
            batch_size=self.config.batch_size,
            cache_dir=self.cache_dir,
            device=self.config.device,
            gpus=float(wants_gpu(self.config.device)),
            cached=cached,
        )
        if not units:
            return
        where = self.executor.describe() if self.executor is not None else "in this process"
        self.log(f"outputs: {len(units)} checkpoint(s) to evaluate, {where}")
        count = 0

        def done(unit: Any, value: Any, seconds: float) -> None:
            nonlocal count
            count += 1
            if count == len(units) or count % 20 == 0:
                self.log(f"evaluated {count}/{len(units)}: {unit.label} ({seconds:.1f} s)")

        executor = self.executor or local_executor(1)
        try:
            executor.run(units, log=self.log, on_done=done)
        finally:
            if self.executor is None:
                executor.close()

    def ingredients(self, recipe: IngredientRecipe) -> list[Path]:
        """Checkpoints of ``recipe``'s ingredients (trained now if :meth:`prepare` did not)."""
        key = recipe.model_dump_json()
        if key not in self._ingredients:
            self.prepare([recipe])
        return self._ingredients[key]

    def state_dicts(self, paths: Sequence[Path]) -> list[dict[str, torch.Tensor]]:
        return [load_state_dict(p) for p in paths]

    def evaluator(self, dataset: str, arch: str, image: ImageSpec | None = None) -> Evaluator:
        """The evaluator of ``arch`` on ``dataset`` (input: ``image``, else :meth:`image`)."""
        image = image if image is not None else self.image(dataset, arch)
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

    # -- outcomes ----------------------------------------------------------------------------

    def keep(self, row: dict[str, Any], per_example: np.ndarray | None) -> dict[str, Any]:
        """``row`` with an ``outcome`` name for ``per_example`` (kept for ``outcomes.npz``);
        rows of other splits than test keep none (claims use test only)."""
        if per_example is None or row.get("split") != "test":
            return row
        key = outcome_key(row)
        self.outcomes[key] = per_example
        return {**row, "outcome": key}

    def keep_frame(self, frame: Any, examples: Mapping[int, np.ndarray]) -> Any:
        """:meth:`keep` for the rows of a DataFrame whose index is in ``examples``."""
        frame = frame.copy()
        if "outcome" not in frame.columns:
            frame["outcome"] = ""
        for idx, vec in examples.items():
            row = frame.loc[idx].to_dict()
            kept = self.keep({k: v for k, v in row.items() if k != "outcome"}, vec)
            if "outcome" in kept:
                frame.loc[idx, "outcome"] = kept["outcome"]
        return frame
