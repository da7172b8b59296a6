"""Is a study config runnable here? Checked before anything is created or trained.

:func:`check_study` runs first in :func:`mergelab.studies.run_study`: a config that
would fail later (after hours of training on the paper's grid) fails at once, with one
line naming the config field (``arch_training.vit_small.train.lrr``) or the file at
fault, and no output folder. It checks, from the config alone and in well under a second
for the built-in models (a few seconds when torchvision or timm names are resolved):

* every ingredient recipe every study needs builds: the fields of ``training``,
  ``dataset_training.X``, ``arch_training.Y`` and ``independent.train`` are recipe and
  training fields with valid values (an error names the section the bad field came from);
* every arch name resolves (a built-in, ``tv:NAME``, ``timm:NAME`` or a bare
  torchvision/timm name), and every model of every recipe is built once, on the meta
  device, and run on a meta image of its dataset's input (channels, size, classes) where
  that input is known without reading files: the built-in datasets, or a recipe giving
  ``in_chans`` and ``img_size``; ``templates.arch`` is a linear classifier on raw pixels;
* every dataset spec names a known dataset, and its files are there (no on-disk data is
  read; the small built-in datasets are);
* the names that refer to others (``dataset_training`` and ``arch_training`` keys,
  ``templates.kernels_arch``) name a dataset or arch of the study: checked after the
  archs and datasets themselves, so an unknown arch is reported as such, not as a
  reference to it;
* every ``init`` checkpoint file is there, and is a checkpoint with finite values;
* the multi-task section: its arch and task dataset specs; with the user's checkpoints
  (``multitask.pretrained``, ``multitask.checkpoints``), every file there and readable
  (headers only), every task backbone with the pre-trained backbone's tensor names and
  shapes, each head with its task's class count, the checkpoints fitting ``arch``
  (:func:`mergelab.train.user_suite.check_user_suite`; a real run reads the tasks'
  on-disk data for their class counts, a dry run only the embedded ones);
* a ``device: cuda`` config is on a machine with a CUDA device.

Each error names the config file, then the key: ``study.yaml: magnitude.factors: ...``.

:func:`check_dry_run` runs the same checks for ``--dry-run`` except the device, and
returns the missing data and checkpoint paths instead of failing on them: a dry run plans
the study, possibly on a machine without the data.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from mergelab.errors import ConfigError, MergelabError
from mergelab.studies.config import StudyConfig
from mergelab.studies.context import SEED_STRIDE, StudyContext
from mergelab.train import IngredientRecipe
from mergelab.train.config import MAX_SEED
from mergelab.train.recipe import arch_problem, dataset_problem, init_problem
from mergelab.yamlfile import describe, one_line
from mergelab.yamlfile import key_path as _field

__all__ = [
    "MissingPath",
    "StudyCheck",
    "check_dry_run",
    "check_study",
    "inspect_study",
    "missing_warning",
]

# IngredientRecipe fields that the study sets itself (a training section may not).
_SET_BY_STUDY = {
    "dataset": "datasets",
    "arch": "archs",
    "n_models": "n_models",
    "seed": "seeds",
    "split_seed": "split_seed",
    "mode": "independent.archs",
}
# Fields a training section may hold besides the recipe's (taken off by StudyContext).
_INPUT_FIELDS = ("in_chans", "img_size")


@dataclass(frozen=True)
class MissingPath:
    """A dataset or checkpoint path of the config that is not on this machine."""

    path: str
    field: str
    """Config field it came from: ``datasets[0]``, ``arch_training.tv:resnet18.init``."""
    kind: str
    """``dataset`` or ``checkpoint``."""

    def __str__(self) -> str:
        return f"{self.path} ({self.field})"


@dataclass
class StudyCheck:
    """What is wrong with a config: ``errors`` (one line each, naming the field or file)
    and the paths that are ``missing`` on this machine."""

    errors: list[str] = field(default_factory=list)
    missing: list[MissingPath] = field(default_factory=list)

    def error_message(self) -> str | None:
        """One line: the first error (and how many more), else the missing paths."""
        if self.errors:
            return one_line(self.errors + [str(m) for m in self.missing])
        if self.missing:
            first = self.missing[0]
            more = len(self.missing) - 1
            also = f" (and {more} more missing path{'s' * (more > 1)})" if more else ""
            return (
                f"{first.field}: {first.kind} {first.path} does not exist{also}; edit the "
                "paths in the config (--dry-run lists every missing one)"
            )
        return None


def _raise(config: StudyConfig, message: str | None) -> None:
    if message is not None:
        raise ConfigError(f"{config.path}: {message}" if config.path else message)


def check_study(config: StudyConfig) -> None:
    """Raise one ``ConfigError`` line (the config file, the key, the problem) for the first
    problem that would stop ``config`` on this machine; see the module doc. Creates and
    trains nothing."""
    _raise(config, inspect_study(config, device=True).error_message())


def check_dry_run(config: StudyConfig) -> list[MissingPath]:
    """:func:`check_study` for a dry run: the same errors, except that missing dataset and
    checkpoint paths are returned (to print as a warning) and the device is not checked."""
    found = inspect_study(config, device=False, dry_run=True)
    if found.errors:
        _raise(config, StudyCheck(errors=found.errors).error_message())
    return found.missing


def missing_warning(missing: Sequence[MissingPath]) -> str:
    """The dry run's warning about ``missing`` paths, one per line."""
    n = len(missing)
    lines = [
        f"Missing on this machine ({n} path{'s' * (n > 1)}; the dry run above needs none, "
        "but a real run stops on them: edit the paths before a real run):"
    ]
    return "\n".join(lines + [f"  - {m}" for m in missing])


def inspect_study(
    config: StudyConfig, *, device: bool = True, dry_run: bool | None = None
) -> StudyCheck:
    """Every problem of ``config`` (see the module doc), without raising. ``dry_run``
    (default: ``not device``): read no on-disk dataset."""
    checker = _Checker(config)
    try:  # a config changed with model_copy(update=...) was not validated again
        StudyConfig.model_validate(config.model_dump(exclude_unset=True))
    except ValidationError as exc:
        for err in exc.errors():
            where = _field(*err["loc"]) or "study config"
            checker.error(where, _pydantic_message(err, StudyConfig))
    checker.seeds()
    checker.archs()
    checker.datasets()
    checker.references()
    checker.recipes()
    checker.templates()
    checker.multitask(read_data=device if dry_run is None else not dry_run)
    if device:
        checker.device()
    return StudyCheck(errors=checker.errors, missing=list(checker.missing.values()))


# ----------------------------------------------------------------------------- helpers


def _pydantic_message(err: dict[str, Any], model: type[BaseModel] | None) -> str:
    known: list[str] = []
    if err["type"] == "extra_forbidden" and model is IngredientRecipe:
        known = [k for k in model.model_fields if k not in _SET_BY_STUDY] + list(_INPUT_FIELDS)
    return describe(err, model, known)


class _Checker:
    def __init__(self, config: StudyConfig) -> None:
        self.config = config
        self.errors: list[str] = []
        self.missing: dict[str, MissingPath] = {}
        self._arch_problems: dict[str, str | None] = {}
        self._inits: dict[str, str | None] = {}
        self.seeds_too_large = False
        self.dataset_fields: dict[str, str] = {}

    def error(self, where: str, message: str) -> None:
        """Record one line (the first problem of each field only)."""
        if not any(e.startswith(f"{where}: ") for e in self.errors):
            self.errors.append(f"{where}: {message}")

    def lost(self, path: str, where: str, kind: str) -> None:
        self.missing.setdefault(path, MissingPath(path, where, kind))

    # -- seeds ---------------------------------------------------------------------------

    def seeds(self) -> None:
        """Replicate ``s`` trains with recipe seeds from ``s * SEED_STRIDE``: a recipe seed."""
        top = MAX_SEED // SEED_STRIDE
        big = [s for s in self.config.seeds if s > top]
        self.seeds_too_large = bool(big)
        if big:
            self.error(
                "seeds",
                f"{', '.join(map(str, big))} too large (allowed: 0 to {top}; replicate s "
                f"trains with seeds from s*{SEED_STRIDE}, at most {MAX_SEED})",
            )

    # -- archs ---------------------------------------------------------------------------

    def arch_fields(self) -> list[tuple[str, str]]:
        """(arch, field) of every arch the studies will build."""
        cfg = self.config
        out = [(a, _field("archs", i)) for i, a in enumerate(cfg.archs)]
        out += [(a, _field("independent", "archs", i)) for i, a in enumerate(cfg.independent.archs)]
        if cfg.templates.enabled:
            out.append((cfg.templates.arch, "templates.arch"))
        if cfg.cross_task.pairs:
            out.append((cfg.cross_task.arch, "cross_task.arch"))
        if cfg.magnitude.enabled:
            out += [(a, _field("magnitude", "targets", i, 1)) for i, (_, a) in self.targets()]
        return out

    def targets(self) -> list[tuple[int, tuple[str, str]]]:
        return list(enumerate(self.config.magnitude.targets))

    def archs(self) -> None:
        for arch, where in self.arch_fields():
            if arch not in self._arch_problems:
                self._arch_problems[arch] = arch_problem(arch)
            problem = self._arch_problems[arch]
            if problem is not None:
                self.error(where, problem)

    # -- datasets ------------------------------------------------------------------------

    def datasets(self) -> None:
        cfg = self.config
        for i, spec in enumerate(cfg.datasets):
            self.dataset(spec, _field("datasets", i))
        if cfg.independent.archs:
            for i, spec in enumerate(cfg.independent.datasets or []):
                self.dataset(spec, _field("independent", "datasets", i))
        for i, pair in enumerate(cfg.cross_task.pairs):
            for j, spec in enumerate(pair):
                self.dataset(spec, _field("cross_task", "pairs", i, j))
        if cfg.magnitude.enabled:
            for i, (spec, _) in self.targets():
                self.dataset(spec, _field("magnitude", "targets", i, 0))

    def dataset(self, spec: str, where: str) -> None:
        """A spec names a known dataset, with a path where it needs one, that exists."""
        self.dataset_fields.setdefault(spec, where)
        problem, missing = dataset_problem(spec)
        if problem is not None:
            self.error(where, problem)
        elif missing is not None:
            self.lost(missing, where, "dataset")

    # -- references ----------------------------------------------------------------------

    def references(self) -> None:
        """Keys that refer to a dataset or arch name one of the study: ``dataset_training``
        / ``arch_training`` overrides that would silently apply to nothing (a typo, or a path
        edited in ``datasets`` but not here), a chosen ``templates.kernels_arch`` that is not
        trained (the default one is skipped quietly)."""
        cfg = self.config
        datasets = set(cfg.datasets) | set(cfg.independent.datasets or [])
        datasets |= {d for pair in cfg.cross_task.pairs for d in pair}
        datasets |= {d for d, _ in cfg.magnitude.targets}
        archs = set(cfg.archs) | set(cfg.independent.archs) | {cfg.cross_task.arch}
        archs |= {cfg.templates.arch, cfg.templates.kernels_arch}
        archs |= {a for _, a in cfg.magnitude.targets}
        for key in cfg.dataset_training:
            if key not in datasets:
                self.error(
                    _field("dataset_training", key),
                    "no dataset of the study is spelled so (keys must match a spec of "
                    "datasets, independent.datasets, cross_task.pairs or magnitude.targets "
                    "exactly); these overrides would apply to nothing",
                )
        for key in cfg.arch_training:
            if key not in archs:
                self.error(
                    _field("arch_training", key),
                    "no arch of the study is spelled so (keys must match archs, "
                    "independent.archs, templates, cross_task.arch or magnitude.targets "
                    "exactly); these overrides would apply to nothing",
                )
        spec = cfg.templates
        kernels = spec.kernels_arch
        chosen = spec.enabled and "kernels_arch" in spec.model_fields_set
        if chosen and cfg.archs and kernels is not None and kernels not in cfg.archs:
            self.error(
                "templates.kernels_arch",
                f"{kernels} is not in archs ({', '.join(cfg.archs)}); its kernels are drawn "
                "from the ingredients trained there (null: none)",
            )

    # -- recipes -------------------------------------------------------------------------

    def sections(self) -> list[tuple[str, dict[str, Any]]]:
        cfg = self.config
        out = [("training", cfg.training)]
        out += [(_field("dataset_training", k), v) for k, v in cfg.dataset_training.items()]
        out += [(_field("arch_training", k), v) for k, v in cfg.arch_training.items()]
        return out

    def recipes(self) -> None:
        from mergelab.studies.registry import STUDIES

        reserved = False
        for name, section in self.sections():
            for key in section:
                if key in _SET_BY_STUDY:
                    reserved = True
                    self.error(
                        f"{name}.{key}",
                        f"set by the study ({_SET_BY_STUDY[key]}), not a training field",
                    )
        if reserved or self.seeds_too_large:
            return  # the recipes cannot be built (a field given twice, or a seed refused)
        ctx = _RecipeContext(self.config, Path(os.devnull) / "never-created", checker=self)
        for study in STUDIES.values():
            before = len(self.errors)
            try:
                study.needed_recipes(ctx)
            except Exception as exc:  # a failed recipe (None) the listing used, or a defect
                if len(self.errors) == before:
                    self.error(f"study {study.name}", f"its recipes cannot be listed ({exc})")
        for recipe, dataset, arch, mode in ctx.built:
            if recipe.init is not None:
                self.init(recipe.init, self.origin(arch, dataset, mode, ("init",))[0])
            if recipe.source is not None and recipe.init is None:
                self.dataset(recipe.source, self.origin(arch, dataset, mode, ("source",))[0])
        if not self.errors:
            self.builds(ctx.built)

    def builds(self, built: Sequence[tuple[IngredientRecipe, str, str, str]]) -> None:
        """Every model of every recipe builds for, and runs on, its dataset's input."""
        arch_field = {a: where for a, where in reversed(self.arch_fields())}
        seen: set[str] = set()
        for recipe, dataset, arch, mode in built:
            key = recipe.model_dump_json(include={"dataset", "arch", "model_kwargs", "source"})
            key += recipe.model_dump_json(include={"in_chans", "img_size", "head", "init"})
            if key in seen:
                continue
            seen.add(key)
            for name, problem in recipe.input_problems(self.config.split_seed):
                if name == "arch":
                    where = arch_field.get(arch, "archs")
                elif name == "dataset":
                    where = self.dataset_fields.get(dataset, "datasets")
                else:
                    where = self.origin(arch, dataset, mode, (name,))[0]
                self.error(where, problem)

    def init(self, init: str, where: str) -> None:
        from mergelab.train.config import is_config_hash

        if is_config_hash(init):
            return  # another run of the cache (trained by then, or the run says so)
        path = Path(init).expanduser()
        if path.is_dir():
            self.error(where, f"{init} is a folder; init is a checkpoint file")
        elif not path.is_file():
            self.lost(init, where, "checkpoint")
        elif init not in self._inits:  # read once, however many recipes start from it
            self._inits[init] = init_problem(init)
            if self._inits[init] is not None:
                self.error(where, self._inits[init])

    def origin(
        self, arch: str, dataset: str, mode: str, loc: Sequence[str | int]
    ) -> tuple[str, bool]:
        """The config field that gave a recipe of ``arch`` on ``dataset`` its value at
        ``loc`` (the section that wins the merge), e.g. ``arch_training.vit.train.lr``,
        and whether that one value is at fault (False: a section merged from several,
        or the recipe as a whole)."""
        cfg = self.config
        candidates: list[tuple[str, Any]] = []
        if mode == "independent":
            candidates.append(("independent", {"train": cfg.independent.train}))
        candidates += [
            (_field("arch_training", arch), cfg.arch_training.get(arch, {})),
            (_field("dataset_training", dataset), cfg.dataset_training.get(dataset, {})),
            ("training", cfg.training),
        ]
        # Fields passed on by a study (cross_task: A's start for B) come from a section
        # of another dataset of the same arch.
        candidates += [(_field("dataset_training", k), v) for k, v in cfg.dataset_training.items()]
        for depth in range(len(loc), 0, -1):
            for name, section in candidates:
                if _has(section, loc[:depth]):
                    exact = depth == len(loc) and not isinstance(_get(section, loc), dict)
                    return _field(name, *loc), exact
        sections = candidates[:4] if mode == "independent" else candidates[:3]
        contributing = [n for n, s in sections if s and s != {"train": {}}]
        return " + ".join(contributing) or "training", False

    def recipe_error(
        self, exc: ValidationError, dataset: str, arch: str, mode: str, model: type[BaseModel]
    ) -> None:
        from mergelab.train.config import TrainSettings

        for err in exc.errors():
            loc = tuple(err["loc"])
            nested = len(loc) > 1 and loc[0] in ("train", "pretrain")
            level = TrainSettings if nested else model
            message = _pydantic_message(err, level)
            where, exact = self.origin(arch, dataset, mode, loc)
            if not loc:  # the recipe as a whole: name the fields its message names
                named = [f for f in _named_fields(message) if f in model.model_fields]
                if named:
                    wheres = [self.origin(arch, dataset, mode, (f,))[0] for f in named]
                    where = " + ".join(dict.fromkeys(wheres))
            if err["type"] == "extra_forbidden" or exact:
                self.error(where, message)
            else:
                self.error(where, f"{message} (the merged fields of {arch} on {dataset})")

    # -- templates -----------------------------------------------------------------------

    def templates(self) -> None:
        """``templates.arch`` must be a linear classifier on the flattened image (its head
        rows are the templates); checked on the small built-ins, built on ``meta``."""
        spec = self.config.templates
        if not spec.enabled or self._arch_problems.get(spec.arch) is not None:
            return
        from mergelab.models.builtin import BUILTINS

        why = "its head does not read the flattened image"
        if spec.arch in BUILTINS:
            import torch
            from torch import nn

            try:
                with torch.device("meta"):
                    model = BUILTINS[spec.arch](2, 1, 8)
                head = getattr(model, "head", None)
                if isinstance(head, nn.Linear) and head.in_features == 64:
                    return
            except Exception:  # a model that cannot take that input is no linear one
                pass
        self.error(
            "templates.arch",
            f"{spec.arch!r} is no linear classifier on raw pixels ({why}); use linear, or "
            "templates: {enabled: false}",
        )

    # -- multi-task ----------------------------------------------------------------------

    def multitask(self, *, read_data: bool) -> None:
        """The multi-task section's arch and tasks; a suite of the user's checkpoints
        checked in full (:func:`mergelab.train.user_suite.check_user_suite`)."""
        spec = self.config.multitask
        if not (spec.enabled or self.config.mergeability.enabled):
            return
        from mergelab.train.multitask import spec_tasks
        from mergelab.train.user_suite import check_user_suite, uses_checkpoints

        problem = arch_problem(spec.arch)
        if problem is not None:
            self.error("multitask.arch", problem)
            return
        before = len(self.errors)
        tasks = spec_tasks(spec)
        for i, task in enumerate(tasks):
            self.dataset(task, _field("multitask", "tasks", i))
        if len(self.errors) > before:
            return
        if not uses_checkpoints(spec):
            self.multitask_builds(tasks)
            return
        found = check_user_suite(
            spec, split_seed=self.config.split_seed, read_data=read_data, finite=read_data
        )
        for where, message in found.problems:
            self.error(where, message)
        for path, where, kind in found.missing:
            self.lost(path, where, kind)

    def multitask_builds(self, tasks: Sequence[str]) -> None:
        """A trained suite's model builds for, and runs on, each embedded task's input."""
        from mergelab.train.multitask import _input
        from mergelab.train.recipe import build_problem, embedded_info

        spec = self.config.multitask
        for i, task in enumerate(tasks):
            try:
                info = embedded_info(task, self.config.split_seed)
            except MergelabError as exc:
                self.error(_field("multitask", "tasks", i), str(exc))
                continue
            if info is None:
                continue
            problem = build_problem(
                spec.arch,
                {},
                num_classes=info.num_classes,
                in_chans=_input(spec, "in_chans"),
                img_size=_input(spec, "img_size"),
            )
            if problem is not None:
                self.error("multitask.arch", f"{spec.arch} cannot be built for {task}: {problem}")

    # -- the machine ---------------------------------------------------------------------

    def device(self) -> None:
        device = self.config.device
        if device is None:
            return
        from mergelab.device import choose_device

        try:
            choose_device(device)
        except MergelabError as exc:
            self.error("device", str(exc).removeprefix("device "))


def _named_fields(message: str) -> list[str]:
    """Field names a recipe-level message names: quoted (``'init'``) or leading."""
    words = re.findall(r"'(\w+)'", message)
    first = re.match(r"(\w+) ", message)
    return list(dict.fromkeys(([first.group(1)] if first else []) + words))


def _get(section: Any, loc: Sequence[str | int]) -> Any:
    for part in loc:
        section = section[part]
    return section


def _has(section: Any, loc: Sequence[str | int]) -> bool:
    value = section
    for part in loc:
        in_list = isinstance(value, list | tuple) and isinstance(part, int) and part < len(value)
        if not (in_list or (isinstance(value, dict) and part in value)):
            return False
        value = value[part]
    return True


class _RecipeContext(StudyContext):
    """A context that only builds recipes: each failure goes to the checker (and None to
    the study listing its recipes, so the others are checked too), each success is
    recorded."""

    def __init__(self, config: StudyConfig, out: Path, *, checker: _Checker) -> None:
        super().__init__(config, out, progress=False)
        self.checker = checker
        self.built: list[tuple[IngredientRecipe, str, str, str]] = []

    def recipe(
        self, dataset: str, arch: str, *, seed: int, mode: str = "shared", **kwargs: Any
    ) -> IngredientRecipe:
        try:
            recipe = super().recipe(dataset, arch, seed=seed, mode=mode, **kwargs)
        except ValidationError as exc:
            self.checker.recipe_error(exc, dataset, arch, mode, IngredientRecipe)
            return None  # type: ignore[return-value]  # the studies only list recipes
        self.built.append((recipe, dataset, arch, mode))
        return recipe
