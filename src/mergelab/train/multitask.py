"""A multi-task suite of models to merge: one shared backbone, fine-tuned per task, a frozen
head per task.

:func:`train_multitask` pre-trains one model on a source task (``mt-source`` by default: a
half of mnist5k's train split that no task trains on), then fine-tunes it once per task
(``mt-mnist``, ``mt-rotated``, ... of :mod:`mergelab.data.multitask`, or any dataset spec)
with a fresh seeded head. Each fine-tune trains backbone and head together; afterwards its
head is *frozen*: stored apart from the backbone, and used unchanged to evaluate whatever
backbone (a merge of the task backbones) is put under it. Every run is one
:func:`mergelab.train.trainer.train_model` call, cached by its config hash in
``out_dir/runs`` (a rerun trains nothing; an interrupted one resumes), and on the CPU the
same arguments give the same bytes. ``out_dir`` then holds::

    manifest.json                  what was trained, and where everything is
    pretrained.safetensors         the pre-trained backbone (no head)
    source_head.safetensors        the pre-trained model's head (the source's classes)
    backbones/<task>.safetensors   each task's fine-tuned backbone: the same tensor names
                                   and shapes for every task, so they merge
    heads/<task>.safetensors       each task's frozen head (``head.weight``, ``head.bias``)
    runs/                          the training cache (full checkpoints + JSON sidecars)

:func:`evaluate_multitask` scores one backbone on every task with that task's head;
:func:`load_multitask_suite` reads a finished ``out_dir`` back. :func:`study_suite` is what
a study merges: this training, or the user's own checkpoints split into the same files
(:mod:`mergelab.train.user_suite`; nothing trained, no ``runs/``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mergelab.atomic import atomic_write_text
from mergelab.errors import ConfigError, MergeError
from mergelab.train.config import TrainConfig, TrainSettings

__all__ = [
    "DEFAULT_FINETUNE",
    "DEFAULT_PRETRAIN",
    "MANIFEST",
    "MultitaskSuite",
    "TaskHead",
    "evaluate_multitask",
    "finetune_config",
    "load_multitask_suite",
    "multitask_outcomes",
    "pretrain_config",
    "split_backbone",
    "study_suite",
    "train_multitask",
]

MANIFEST = "manifest.json"
FORMAT = "mergelab.multitask/1"
_META_ROLE = "mergelab.multitask.role"
_META_TASK = "mergelab.multitask.task"
_META_RUN = "mergelab.multitask.run"

DEFAULT_PRETRAIN = TrainSettings(epochs=15, lr=0.05, batch_size=64)
"""Pre-training on the source (``mt-source``: 1750 images, 405 steps)."""
DEFAULT_FINETUNE = TrainSettings(epochs=6, lr=0.02, batch_size=64)
"""Every fine-tune (backbone and head together; 162 steps on an MNIST task), identical
for all tasks. A small learning rate keeps the fine-tunes near their common start, the
regime task arithmetic assumes. With ``cnn`` the whole default suite (pre-training and 7
fine-tunes) trains in about a minute on one CPU core."""

_DATA_SEED = 10_000  # as in recipes: data-order seeds apart from init seeds
_TASK_SEEDS = 100_000


def _task_offset(task: str) -> int:
    """A fine-tune's seed offset, from its task's name (not its place in the list: adding a
    task leaves the other tasks' runs, and so their cached checkpoints, unchanged)."""
    return 1 + zlib.crc32(task.encode()) % _TASK_SEEDS


def _settings(
    value: TrainSettings | Mapping[str, Any] | None, default: TrainSettings, key: str
) -> TrainSettings:
    """``value`` as settings: a mapping changes only the fields it names in ``default``."""
    if value is None:
        return default
    if isinstance(value, TrainSettings):
        return value
    from pydantic import ValidationError

    fields = default.model_dump()
    if "steps" in value or "epochs" in value:
        fields.pop("steps")
        fields.pop("epochs")
    try:
        return TrainSettings(**{**fields, **dict(value)})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"{p}: " for p in first["loc"])
        raise ConfigError(f"multi-task: {key}: {where}{first['msg']}") from None


def _base(
    arch: str, model_kwargs: Mapping[str, Any], in_chans: int, img_size: int, split_seed: int
) -> dict[str, Any]:
    return {
        "arch": arch,
        "model_kwargs": dict(model_kwargs),
        "in_chans": in_chans,
        "img_size": img_size,
        "split_seed": split_seed,
    }


def pretrain_config(
    source: str,
    arch: str,
    seed: int,
    settings: TrainSettings,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    in_chans: int = 1,
    img_size: int = 28,
    split_seed: int = 0,
) -> TrainConfig:
    """The pre-training run on ``source`` (init seed ``seed``)."""
    return TrainConfig(
        dataset=source,
        **_base(arch, model_kwargs or {}, in_chans, img_size, split_seed),
        **settings.model_dump(),
        seed=seed,
        data_seed=seed + _DATA_SEED,
    )


def finetune_config(
    task: str,
    start: TrainConfig,
    seed: int,
    settings: TrainSettings,
) -> TrainConfig:
    """``task``'s fine-tune of ``start``: a fresh head seeded from ``seed`` and the task's
    name, backbone and head trained together."""
    offset = _task_offset(task)
    return TrainConfig(
        dataset=task,
        **_base(
            start.arch,
            start.model_kwargs,
            start.in_chans or 1,
            start.img_size or 28,
            start.split_seed,
        ),
        **settings.model_dump(),
        seed=seed + offset,
        data_seed=seed + _DATA_SEED + offset,
        init=start.config_hash(),
        reset_head=True,
    )


# ----------------------------------------------------------------------------- heads


@dataclass(frozen=True)
class TaskHead:
    """A task's frozen head and what is needed to put a backbone under it."""

    task: str
    state: Mapping[str, torch.Tensor]
    """The head's tensors, named as in the full model (``head.weight``, ``head.bias``)."""
    arch: str
    num_classes: int
    in_chans: int = 1
    img_size: int = 28
    split_seed: int = 0
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    head_prefix: str = "head."


def _build(head: TaskHead) -> torch.nn.Module:
    from mergelab.models import build_model

    return build_model(
        head.arch,
        head.num_classes,
        in_chans=head.in_chans,
        img_size=head.img_size,
        **dict(head.model_kwargs),
    )


def split_backbone(
    state: Mapping[str, torch.Tensor], head_prefix: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone tensors, head tensors) of a full model state dict."""
    backbone = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    head = {k: v for k, v in state.items() if k.startswith(head_prefix)}
    return backbone, head


@functools.lru_cache(maxsize=32)
def _eval_tensors(
    task: str, split: str, split_seed: int, in_chans: int, img_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A task's split as (X, y), adapted to the model's input; held per process (the
    suite's test splits take a few MB each and are scored once per merge)."""
    from mergelab.data import ImageSpec, as_tensors, load_dataset

    splits = load_dataset(task, seed=split_seed)
    if splits.info.multilabel:
        raise ConfigError(f"multi-task: {task} is multi-label; tasks need one label per image")
    dataset = splits.split(split, ImageSpec(channels=in_chans, size=img_size))
    if len(dataset) == 0:
        raise ConfigError(f"multi-task: {task} has no {split!r} items")
    return as_tensors(dataset)


def evaluate_multitask(
    backbone_state: Mapping[str, torch.Tensor] | str | os.PathLike[str],
    heads: Mapping[str, TaskHead],
    tasks: Iterable[str] | None = None,
    *,
    split: str = "test",
    device: str | torch.device | None = "cpu",
) -> dict[str, float]:
    """Accuracy of ``backbone_state`` on each task's ``split`` with that task's frozen head.

    ``backbone_state``: backbone tensors (a merge of the task backbones, the pre-trained
    backbone, ...) or a checkpoint file; head tensors in it are ignored (each task brings
    its own). ``tasks``: which of ``heads`` to score (default: all, in their order).
    Returns ``{task: accuracy}`` in [0, 1].
    """
    outcomes = multitask_outcomes(backbone_state, heads, tasks, split=split, device=device)
    return {t: float(o.mean()) for t, o in outcomes.items()}


def multitask_outcomes(
    backbone_state: Mapping[str, torch.Tensor] | str | os.PathLike[str],
    heads: Mapping[str, TaskHead],
    tasks: Iterable[str] | None = None,
    *,
    split: str = "test",
    device: str | torch.device | None = "cpu",
) -> dict[str, np.ndarray]:
    """Per-example outcomes behind :func:`evaluate_multitask`: ``{task: uint8 vector}``, 1
    where the top-1 prediction is right (a non-finite logit row counts as wrong), in the
    split's order: what paired bootstrap intervals resample."""
    from mergelab.models import load_weights, read_checkpoint
    from mergelab.results import correct_examples
    from mergelab.train.trainer import EVAL_BATCH, resolve_device

    state = read_checkpoint(backbone_state)
    names = list(heads) if tasks is None else list(tasks)
    missing = [t for t in names if t not in heads]
    if missing:
        raise ConfigError(
            f"multi-task: no head for task(s) {', '.join(missing)} "
            f"(heads: {', '.join(heads) or 'none'})"
        )
    dev = resolve_device(device)
    outcomes: dict[str, np.ndarray] = {}
    for task in names:
        head = heads[task]
        backbone, _ = split_backbone(state, head.head_prefix)
        model = _build(head)
        try:
            load_weights(model, {**backbone, **head.state})
        except ValueError as exc:
            detail = str(exc).partition(" does not fit ")[2].partition(": ")[2]
            raise MergeError(
                f"multi-task: the backbone does not fit {head.arch} with {task}'s head: {detail}"
            ) from None
        x, y = _eval_tensors(task, split, head.split_seed, head.in_chans, head.img_size)
        model = model.to(dev).eval()
        with torch.no_grad():
            logits = torch.cat(
                [
                    model(x[i : i + EVAL_BATCH].to(dev)).to("cpu", torch.float32)
                    for i in range(0, len(x), EVAL_BATCH)
                ]
            )
        outcomes[task] = correct_examples(logits.numpy(), y.cpu().numpy())
    return outcomes


# ----------------------------------------------------------------------------- suite


def _file_name(task: str) -> str:
    """A task spec as a file name (``mnist5k[0-4]`` -> ``mnist5k_0-4_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", task) + ".safetensors"


@dataclass(frozen=True)
class MultitaskSuite:
    """A trained suite in ``out_dir`` (see the module docstring for the files)."""

    out_dir: Path
    arch: str
    model_kwargs: Mapping[str, Any]
    in_chans: int
    img_size: int
    split_seed: int
    seed: int
    source: str
    tasks: tuple[str, ...]
    head_prefix: str
    pretrained: Path
    source_head: Path | None
    """The pre-trained model's head (None: a user's pre-trained checkpoint without one)."""
    backbones: Mapping[str, Path]
    heads: Mapping[str, Path]
    num_classes: Mapping[str, int]

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        """The pre-trained backbone's tensors."""
        from mergelab.io import load_state_dict

        return load_state_dict(self.pretrained)

    def backbone_state(self, task: str) -> dict[str, torch.Tensor]:
        """``task``'s fine-tuned backbone tensors."""
        from mergelab.io import load_state_dict

        if task not in self.backbones:
            raise ConfigError(f"multi-task: no task {task!r} (tasks: {', '.join(self.tasks)})")
        return load_state_dict(self.backbones[task])

    def backbone_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every task's fine-tuned backbone, in task order."""
        return {t: self.backbone_state(t) for t in self.tasks}

    def task_heads(self) -> dict[str, TaskHead]:
        """Every task's frozen head, in task order."""
        from mergelab.io import load_state_dict

        return {
            t: TaskHead(
                task=t,
                state=load_state_dict(self.heads[t]),
                arch=self.arch,
                num_classes=self.num_classes[t],
                in_chans=self.in_chans,
                img_size=self.img_size,
                split_seed=self.split_seed,
                model_kwargs=dict(self.model_kwargs),
                head_prefix=self.head_prefix,
            )
            for t in self.tasks
        }

    def evaluate(
        self,
        backbone_state: Mapping[str, torch.Tensor] | str | os.PathLike[str],
        tasks: Iterable[str] | None = None,
        *,
        split: str = "test",
    ) -> dict[str, float]:
        """:func:`evaluate_multitask` with this suite's heads."""
        return evaluate_multitask(backbone_state, self.task_heads(), tasks, split=split)


def _replaceable(path: Path) -> None:
    """Refuse to replace a file in ``out_dir`` that mergelab did not write."""
    from mergelab.io.output import written_by_mergelab

    if not path.exists():
        return
    if path.is_file():
        if path.suffix == ".json":
            try:
                ours = json.loads(path.read_text()).get("format") == FORMAT
            except (OSError, ValueError, AttributeError):
                ours = False
        else:
            ours = written_by_mergelab(path)
        if ours:
            return
    raise ConfigError(f"multi-task: {path} exists and was not written by mergelab; not replaced")


def _save(tensors: Mapping[str, torch.Tensor], path: Path, role: str, task: str, run: str) -> None:
    from mergelab.io import save_state_dict

    _replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {_META_ROLE: role, _META_TASK: task, _META_RUN: run}
    save_state_dict(dict(tensors), path, metadata=meta, force=True)


def _check_tasks(tasks: Sequence[str], source: str) -> list[str]:
    from mergelab.train.recipe import dataset_problem

    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = list(tasks)
    if not tasks:
        raise ConfigError("multi-task: no tasks given")
    seen: set[str] = set()
    names: set[str] = set()
    for spec in [source, *tasks]:
        problem, missing = dataset_problem(spec)
        if problem is None and missing is not None:
            problem = f"{missing} does not exist"
        if problem is not None:
            raise ConfigError(f"multi-task: {spec}: {problem}")
    for t in tasks:
        if t in seen:
            raise ConfigError(f"multi-task: task {t!r} given twice")
        seen.add(t)
        name = _file_name(t)
        if name in names:
            raise ConfigError(f"multi-task: tasks {sorted(seen)} clash as file names")
        names.add(name)
    return tasks


def train_multitask(
    tasks: Sequence[str] | None = None,
    arch: str = "cnn",
    out_dir: str | os.PathLike[str] = "multitask",
    seed: int = 0,
    *,
    source: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    pretrain: TrainSettings | Mapping[str, Any] | None = None,
    finetune: TrainSettings | Mapping[str, Any] | None = None,
    in_chans: int = 1,
    img_size: int = 28,
    split_seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int = 1,
    device: str | None = "cpu",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    executor: Any = None,
) -> MultitaskSuite:
    """Pre-train ``arch`` once on ``source``, fine-tune it on every task, export the suite.

    ``tasks``: dataset specs (default: every task of :data:`mergelab.data.multitask.
    MULTITASK_TASKS`); ``source``: the pre-training dataset (default ``mt-source``, whose
    train items no ``mt-*`` task trains on). ``pretrain``/``finetune``: training settings,
    the same for every task: :class:`TrainSettings`, or a mapping of the fields to change
    in :data:`DEFAULT_PRETRAIN` / :data:`DEFAULT_FINETUNE`. Every model takes ``in_chans`` x
    ``img_size`` inputs (other datasets are adapted to it). ``seed`` fixes the inits, the
    fresh heads and the data order. Runs are cached in ``cache_dir`` (default
    ``out_dir/runs``), so a rerun trains nothing; ``workers`` > 1 fine-tunes in that many
    processes (the bytes do not change), or the runs are units of ``executor``
    (:mod:`mergelab.executor`); ``device``: "cpu" by default, where the same
    arguments give the same bytes (None: CUDA when present). Returns the suite;
    ``out_dir/manifest.json`` records it (:func:`load_multitask_suite` reads it back).
    """
    from mergelab.data import load_dataset
    from mergelab.data.multitask import MULTITASK_SOURCE, MULTITASK_TASKS
    from mergelab.io import load_state_dict
    from mergelab.models import build_model, split_model
    from mergelab.train.pool import train_runs
    from mergelab.train.recipe import arch_problem, build_problem

    source = source if source is not None else MULTITASK_SOURCE
    task_list = _check_tasks(list(MULTITASK_TASKS) if tasks is None else tasks, source)
    problem = arch_problem(arch)
    if problem is not None:
        raise ConfigError(f"multi-task: arch: {problem}")
    kwargs = dict(model_kwargs or {})
    pre = _settings(pretrain, DEFAULT_PRETRAIN, "pretrain")
    fine = _settings(finetune, DEFAULT_FINETUNE, "finetune")
    out = Path(out_dir).expanduser()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else out / "runs"
    targets = [out / MANIFEST, out / "pretrained.safetensors", out / "source_head.safetensors"]
    for t in task_list:
        targets += [out / "backbones" / _file_name(t), out / "heads" / _file_name(t)]
    for path in targets:  # before any training: a user's file there stops the run at once
        _replaceable(path)

    infos = {t: load_dataset(t, seed=split_seed).info for t in [source, *task_list]}
    for t, info in infos.items():
        if info.multilabel:
            raise ConfigError(f"multi-task: {t} is multi-label; tasks need one label per image")
        problem = build_problem(
            arch, kwargs, num_classes=info.num_classes, in_chans=in_chans, img_size=img_size
        )
        if problem is not None:
            raise ConfigError(f"multi-task: {arch} cannot be built for {t}: {problem}")

    start = pretrain_config(
        source,
        arch,
        seed,
        pre,
        model_kwargs=kwargs,
        in_chans=in_chans,
        img_size=img_size,
        split_seed=split_seed,
    )
    fines = [finetune_config(t, start, seed, fine) for t in task_list]
    labels = [f"{arch} pre-trained on {source}"] + [f"{arch} fine-tuned on {t}" for t in task_list]
    paths = train_runs(
        [start, *fines],
        cache_dir=cache,
        device=device,
        workers=workers,
        progress=progress,
        log=log,
        labels=labels,
        executor=executor,
    )

    probe = build_model(
        arch, infos[source].num_classes, in_chans=in_chans, img_size=img_size, **kwargs
    )
    prefix = split_model(probe).head_prefix

    start_hash = start.config_hash()
    backbone, head = split_backbone(load_state_dict(paths[0]), prefix)
    _save(backbone, out / "pretrained.safetensors", "pretrained", source, start_hash)
    _save(head, out / "source_head.safetensors", "source_head", source, start_hash)
    shapes = {k: list(v.shape) for k, v in backbone.items()}
    entries: dict[str, Any] = {}
    for task, config, path in zip(task_list, fines, paths[1:], strict=True):
        run = config.config_hash()
        backbone, head = split_backbone(load_state_dict(path), prefix)
        got = {k: list(v.shape) for k, v in backbone.items()}
        if got != shapes:  # cannot happen with one arch; a guard for merges downstream
            raise MergeError(f"multi-task: {task}'s backbone differs from the pre-trained one")
        name = _file_name(task)
        _save(backbone, out / "backbones" / name, "backbone", task, run)
        _save(head, out / "heads" / name, "head", task, run)
        info = infos[task]
        entries[task] = {
            "backbone": f"backbones/{name}",
            "head": f"heads/{name}",
            "num_classes": info.num_classes,
            "run": run,
            "train_seed": config.seed,
        }
    manifest = {
        "format": FORMAT,
        "arch": arch,
        "model_kwargs": kwargs,
        "in_chans": in_chans,
        "img_size": img_size,
        "seed": seed,
        "split_seed": split_seed,
        "source": source,
        "source_classes": infos[source].num_classes,
        "head_prefix": prefix,
        "backbone_tensors": shapes,
        "pretrained": {
            "backbone": "pretrained.safetensors",
            "head": "source_head.safetensors",
            "run": start_hash,
        },
        "pretrain": json.loads(pre.model_dump_json()),
        "finetune": json.loads(fine.model_dump_json()),
        "tasks": entries,
        "task_order": task_list,
    }
    manifest_path = out / MANIFEST
    _replaceable(manifest_path)
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return load_multitask_suite(out)


def load_multitask_suite(out_dir: str | os.PathLike[str]) -> MultitaskSuite:
    """The suite :func:`train_multitask` wrote to ``out_dir``, from its manifest."""
    out = Path(out_dir).expanduser()
    path = out / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"multi-task: {path} not found; train the suite first") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"multi-task: cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"multi-task: {path} is not a multi-task manifest ({FORMAT})")
    try:
        entries = manifest["tasks"]
        suite = MultitaskSuite(
            out_dir=out,
            arch=manifest["arch"],
            model_kwargs=dict(manifest["model_kwargs"]),
            in_chans=int(manifest["in_chans"]),
            img_size=int(manifest["img_size"]),
            split_seed=int(manifest["split_seed"]),
            seed=int(manifest["seed"]),
            source=manifest["source"],
            tasks=tuple(manifest["task_order"]),
            head_prefix=manifest["head_prefix"],
            pretrained=out / manifest["pretrained"]["backbone"],
            source_head=(
                out / manifest["pretrained"]["head"] if manifest["pretrained"]["head"] else None
            ),
            backbones={t: out / e["backbone"] for t, e in entries.items()},
            heads={t: out / e["head"] for t, e in entries.items()},
            num_classes={t: int(e["num_classes"]) for t, e in entries.items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"multi-task: {path} is incomplete ({type(exc).__name__}: {exc})"
        ) from None
    absent = [
        p
        for p in (suite.pretrained, *suite.backbones.values(), *suite.heads.values())
        if not p.is_file()
    ]
    if absent:
        raise ConfigError(f"multi-task: {absent[0]} is missing; train the suite again")
    return suite


def study_suite(
    spec: Any,
    out_dir: Path,
    *,
    cache_dir: Path,
    workers: int = 1,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
    split_seed: int = 0,
    seed: int | None = None,
    executor: Any = None,
) -> MultitaskSuite:
    """The suite a multi-task study merges, from its ``multitask:`` section ``spec``
    (:class:`mergelab.studies.config.MultitaskSpec`), in ``out_dir``: the user's
    checkpoints split into backbones and heads when ``spec`` names them (nothing trained:
    :func:`mergelab.train.user_suite.load_user_suite`), else trained here."""
    from mergelab.train.user_suite import load_user_suite, uses_checkpoints

    if uses_checkpoints(spec):
        return load_user_suite(spec, out_dir, split_seed=split_seed, log=log)
    return train_multitask(
        spec.tasks,
        spec.arch,
        out_dir,
        spec.seed if seed is None else seed,
        pretrain=spec.pretrain or None,
        finetune=spec.finetune or None,
        in_chans=_input(spec, "in_chans"),
        img_size=_input(spec, "img_size"),
        split_seed=split_seed,
        cache_dir=cache_dir,
        workers=workers,
        device=device,
        progress=False,
        log=log,
    )


def _input(spec: Any, name: str) -> int:
    """A trained suite's ``in_chans`` / ``img_size``: the section's, else 1 x 28."""
    value = getattr(spec, name, None)
    return int(value) if value is not None else {"in_chans": 1, "img_size": 28}[name]


def spec_tasks(spec: Any) -> list[str]:
    """The task specs a study's ``multitask:`` section names (every embedded task when it
    names none)."""
    from mergelab.data.multitask import MULTITASK_TASKS

    return list(MULTITASK_TASKS) if spec.tasks is None else list(spec.tasks)


def suite_configs(spec: Any, split_seed: int = 0, seed: int | None = None) -> list[TrainConfig]:
    """The training runs :func:`study_suite` makes for ``spec``: the pre-training, then one
    fine-tune per task (what ``mergelab study --dry-run`` counts); none for a suite of the
    user's checkpoints."""
    from mergelab.data.multitask import MULTITASK_SOURCE
    from mergelab.train.user_suite import uses_checkpoints

    if uses_checkpoints(spec):
        return []
    seed = spec.seed if seed is None else seed
    start = pretrain_config(
        MULTITASK_SOURCE,
        spec.arch,
        seed,
        _settings(spec.pretrain or None, DEFAULT_PRETRAIN, "pretrain"),
        in_chans=_input(spec, "in_chans"),
        img_size=_input(spec, "img_size"),
        split_seed=split_seed,
    )
    fine = _settings(spec.finetune or None, DEFAULT_FINETUNE, "finetune")
    return [start, *(finetune_config(t, start, seed, fine) for t in spec_tasks(spec))]
