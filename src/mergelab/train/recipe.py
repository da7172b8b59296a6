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

import difflib
import functools
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mergelab.errors import ConfigError
from mergelab.train.config import MAX_SEED, MAX_SIDE, TrainConfig, TrainSettings, is_config_hash
from mergelab.yamlfile import one_line, read_mapping, validate

if TYPE_CHECKING:
    from mergelab.data import DatasetInfo

__all__ = [
    "IngredientRecipe",
    "arch_problem",
    "build_problem",
    "dataset_problem",
    "embedded_info",
    "init_problem",
    "make_ingredients",
    "start_checkpoint",
]

# Offsets that keep init seeds and data-order seeds of all runs of a recipe apart.
_RUN_SEED = 1
_DATA_SEED = 10_000
MAX_MODELS = 999
"""Most runs of one recipe: seeds ``seed`` .. ``seed + n_models`` stay below the next
study replicate's (``mergelab.studies.context.SEED_STRIDE`` apart)."""


class IngredientRecipe(BaseModel):
    """How to make the N ingredients of a merging experiment."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    dataset: str = "digits"
    split_seed: int = Field(0, ge=0, le=MAX_SEED)
    arch: str = "mlp"
    model_kwargs: dict[str, Any] = {}
    in_chans: Literal[1, 3] | None = None
    img_size: int | None = Field(None, ge=1, le=MAX_SIDE)
    n_models: int = Field(10, ge=1, le=MAX_MODELS)
    mode: Literal["shared", "independent"] = "shared"
    seed: int = Field(0, ge=0, le=MAX_SEED)
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
        """Read and check a recipe file before anything trains: a bad value, an unknown
        arch or dataset, a missing file or a model that cannot take the dataset's input
        raises one ``ConfigError`` line naming the file and the key."""
        path = Path(path)
        data = read_mapping(path, "training recipe", ConfigError)
        recipe = validate(cls, data, path, "training recipe", ConfigError)
        problems = recipe.problems()
        if problems:
            raise ConfigError(f"{path}: {one_line(problems)}")
        return recipe

    def problems(self) -> list[str]:
        """``key: problem`` for each name that resolves to nothing here (arch, dataset,
        source, init file) and for a model that cannot be built for the dataset's input;
        checked in seconds, reading no on-disk data."""
        out = []
        arch = arch_problem(self.arch)
        if arch is not None:
            out.append(f"arch: {arch}")
        source = self.source if self.mode == "shared" and self.init is None else None
        for key, spec in (("dataset", self.dataset), ("source", source)):
            if spec is None:
                continue
            problem, missing = dataset_problem(spec)
            if problem is None and missing is not None:
                problem = f"{missing} does not exist"
            if problem is not None:
                out.append(f"{key}: {problem}")
        if self.init is not None and self.mode == "shared" and not is_config_hash(self.init):
            init = Path(self.init).expanduser()
            if not init.is_file():
                what = "is a folder" if init.is_dir() else "does not exist"
                out.append(f"init: {self.init} {what}; init is a checkpoint file")
            else:
                problem = init_problem(self.init)
                if problem is not None:
                    out.append(f"init: {problem}")
        if not out:
            out += [f"{key}: {why}" for key, why in self.input_problems(self.split_seed)]
        return out

    def input_problems(self, split_seed: int) -> list[tuple[str, str]]:
        """(key, problem) where the model cannot take the dataset's input or its start's
        head does not fit: checked for datasets that need no files (cheap to read), and
        for any dataset when ``in_chans`` and ``img_size`` are both given."""
        from mergelab.data.errors import DatasetError

        try:
            info = embedded_info(self.dataset, split_seed)
            start = embedded_info(self.source, split_seed) if self._other_source() else None
        except DatasetError as exc:  # a class subset outside the dataset's classes
            key = "source" if self._other_source() and self.source in str(exc) else "dataset"
            return [(key, str(exc))]
        in_chans = self.in_chans or (info.channels if info else None)
        img_size = self.img_size or (info.image_size[0] if info else None)
        if in_chans is None or img_size is None:
            return []
        classes = info.num_classes if info else 2
        problem = build_problem(
            self.arch, self.model_kwargs, num_classes=classes, in_chans=in_chans, img_size=img_size
        )
        if problem is not None:
            key = "model_kwargs" if self.model_kwargs else "arch"
            return [(key, f"{self.arch} cannot be built for {self.dataset}: {problem}")]
        if start and info and self.head == "keep" and start.num_classes != classes:
            return [
                (
                    "head",
                    f"keep fine-tunes the start's head, but {self.source} has "
                    f"{start.num_classes} classes and {self.dataset} {classes} (allowed: fresh)",
                )
            ]
        return []

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


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]}?" if close else ""


def init_problem(init: str) -> str | None:
    """Why the checkpoint file ``init`` cannot be a start (unreadable, or a tensor with NaN
    or infinite values: its runs would train to a NaN loss), or None. Reads the whole file,
    as training would."""
    import torch

    from mergelab.errors import MergelabError
    from mergelab.models.weights import read_checkpoint

    try:
        state = read_checkpoint(Path(init).expanduser())
    except (MergelabError, OSError) as exc:  # the message names the file (io's do)
        return str(exc) if str(Path(init).expanduser()) in str(exc) else f"{init}: {exc}"
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor.float())).sum())
            if bad:
                return (
                    f"{init}: tensor {name!r} has {bad} NaN or infinite value"
                    f"{'s' * (bad > 1)} (allowed: finite values; a start with them trains "
                    "to a NaN loss)"
                )
    return None


def arch_problem(arch: str) -> str | None:
    """Why ``arch`` names no model :func:`mergelab.models.build_model` can build, or None.

    Resolves names only (torchvision's list, ``timm.is_model``); builds nothing."""
    from mergelab.models.builtin import BUILTINS
    from mergelab.models.registry import torchvision_classifiers

    prefix, sep, name = arch.partition(":")
    if sep:
        if prefix in ("tv", "torchvision"):
            known = torchvision_classifiers()
            if name in known:
                return None
            return (
                f"unknown torchvision classifier {name!r}{_suggest(name, known)} "
                "(allowed: torchvision.models.list_models(module=torchvision.models))"
            )
        if prefix == "timm":
            try:
                import timm
            except ImportError:
                return "timm models need timm: pip install 'mergelab[models]'"
            if timm.is_model(name):
                return None
            return f"unknown timm model {name!r} (allowed: timm.list_models())"
        return f"unknown model source {prefix!r} in {arch!r} (allowed: tv:NAME, timm:NAME)"
    if arch in BUILTINS or arch in torchvision_classifiers():
        return None
    try:
        import timm

        if timm.is_model(arch):
            return None
    except ImportError:
        pass
    return (
        f"unknown architecture {arch!r}{_suggest(arch, BUILTINS)} (allowed: "
        f"{', '.join(BUILTINS)}, tv:<torchvision name>, timm:<timm name>)"
    )


def dataset_problem(spec: str) -> tuple[str | None, str | None]:
    """(why ``spec`` names no dataset, or None; the path it reads that is not on this
    machine, or None). Reads no data."""
    from mergelab.data import registry
    from mergelab.data.errors import DatasetError
    from mergelab.data.subset import parse_classes, split_subset

    try:
        base, subset = split_subset(spec)
        if subset is not None:
            parse_classes(subset, spec=spec)
        name, rest = registry.parse_spec(base)
    except DatasetError as exc:
        return str(exc), None
    entry = registry.DATASETS.get(name)
    if entry is None:
        known = registry.known_datasets()
        hint = _suggest(name, known)
        return f"unknown dataset {name!r}{hint} (allowed: {', '.join(known)})", None
    if not entry.needs_path:
        if rest is not None:
            return f"{name} is built in and takes no path (got {rest!r})", None
        return None, None
    if rest is None:
        return f"{name} needs a path: {entry.help}", None
    path = registry._split_celeba_attribute(rest, None)[0] if name == "celeba" else rest
    return None, (None if Path(path).expanduser().exists() else path)


@functools.lru_cache(maxsize=32)
def embedded_info(spec: str | None, split_seed: int) -> DatasetInfo | None:
    """The info of a dataset that needs no files (digits, mnist5k: read in about a
    second), None for others; a bad class subset raises ``DatasetError``."""
    from mergelab.data import load_dataset, registry

    if spec is None or dataset_problem(spec) != (None, None):
        return None
    name = spec.partition("[")[0].partition(":")[0].strip().lower()
    if registry.DATASETS[name].needs_path:
        return None
    return load_dataset(spec, seed=split_seed).info


def build_problem(
    arch: str, model_kwargs: dict[str, Any], *, num_classes: int, in_chans: int, img_size: int
) -> str | None:
    """Why ``arch`` cannot be built for, or cannot run on, a ``in_chans`` x ``img_size``
    image (one line), or None. Built on the meta device (on the CPU where that fails) and
    run on meta tensors: no memory, no compute."""
    return _build_problem(
        arch, json.dumps(model_kwargs, sort_keys=True), num_classes, in_chans, img_size
    )


@functools.lru_cache(maxsize=128)
def _build_problem(
    arch: str, kwargs: str, num_classes: int, in_chans: int, img_size: int
) -> str | None:
    import torch

    from mergelab.models import build_model

    def build() -> torch.nn.Module:
        return build_model(
            arch, num_classes, in_chans=in_chans, img_size=img_size, **json.loads(kwargs)
        )

    shape = f"{in_chans}x{img_size}x{img_size} input"
    try:
        try:
            with torch.device("meta"):
                model = build()
        except Exception:  # some constructors read tensor values: build for real
            model = build().to("meta")
    except Exception as exc:
        return f"{_reason(exc)} (building it for {shape}, {num_classes} classes)"
    try:
        with torch.no_grad():
            model.eval()(torch.empty(2, in_chans, img_size, img_size, device="meta"))
    except NotImplementedError:
        return None  # an operator without a meta kernel: cannot tell here
    except Exception as exc:
        return f"{_reason(exc)} (running it on {shape})"
    return None


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
