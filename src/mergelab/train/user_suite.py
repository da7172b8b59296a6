"""A multi-task suite from the user's own checkpoints: nothing is trained.

A study's ``multitask:`` section may name a pre-trained checkpoint (``pretrained``: the
start every task was fine-tuned from; its head, if any, is not used) and one fine-tuned
full model per task (``checkpoints``: backbone and that task's head, in the order of
``tasks``, whose dataset specs give each task's val and test data). Paths are taken as
every path of a study config: relative to the working directory, ``~`` expanded.

:func:`check_user_suite` finds what would stop the study, before any work, from the
checkpoints' headers (a torch file through mergelab's safe reader) and the tasks' dataset
infos: a file missing or unreadable, a backbone whose tensor names or shapes differ from
the pre-trained one, a head whose class count is not its dataset's, an ``arch`` the
checkpoints do not fit. Input channels, image size and class counts are read from the
checkpoints (:mod:`mergelab.models.infer`) where their shapes fix them.

:func:`load_user_suite` then splits every checkpoint into backbone and head (the head
prefix of ``arch``, from :func:`mergelab.models.split_model`) and writes them under
``out_dir`` exactly as :func:`mergelab.train.multitask.train_multitask` writes a trained
suite (safetensors files and ``manifest.json``, atomically), so the study downstream has
one code path. The user's files are only read, never written or replaced.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mergelab.errors import ConfigError, MergelabError

__all__ = [
    "SuiteCheck",
    "SuiteFacts",
    "check_user_suite",
    "load_user_suite",
    "user_files",
    "uses_checkpoints",
]

Shapes = dict[str, tuple[int, ...]]


def uses_checkpoints(spec: Any) -> bool:
    """Whether a ``multitask:`` section names the user's checkpoints (nothing to train)."""
    return getattr(spec, "checkpoints", None) is not None


def user_files(spec: Any) -> list[tuple[str, str]]:
    """(config key, path as written) of every checkpoint the suite reads: the pre-trained
    one first, then one per task (what ``--dry-run`` lists)."""
    from mergelab.yamlfile import key_path

    if not uses_checkpoints(spec):
        return []
    out = [("multitask.pretrained", spec.pretrained)] if spec.pretrained else []
    return out + [
        (key_path("multitask", "checkpoints", i), p) for i, p in enumerate(spec.checkpoints)
    ]


@dataclass(frozen=True)
class SuiteFacts:
    """What the checkpoints say about the suite (and the input its models take)."""

    arch: str
    head_prefix: str
    in_chans: int
    img_size: int
    pretrained: Path
    checkpoints: Mapping[str, Path]
    num_classes: Mapping[str, int]
    backbone: Mapping[str, tuple[int, ...]]
    """The pre-trained backbone's tensor shapes (every task backbone has the same)."""


@dataclass
class SuiteCheck:
    """Problems of a user suite as (config key, one-line message), the checkpoint and
    dataset paths missing on this machine as (path, config key, kind), and the facts
    when nothing stands in the way."""

    problems: list[tuple[str, str]] = field(default_factory=list)
    missing: list[tuple[str, str, str]] = field(default_factory=list)
    facts: SuiteFacts | None = None


@functools.cache
def _arch_layout(arch: str) -> tuple[str, tuple[str, ...]]:
    """The state-dict prefix of ``arch``'s classifier head (``head.``, ``fc.``, ...) and its
    backbone's tensor names (the same at any input), from the model built once on the meta
    device (no memory, no weights)."""
    from mergelab.models import build_model, split_model

    with torch.device("meta"):
        model = build_model(arch, 10, in_chans=3, img_size=224)
    prefix = split_model(model).head_prefix
    return prefix, tuple(k for k in model.state_dict() if not k.startswith(prefix))


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _difference(want: Shapes, got: Shapes, *, bn_lenient: bool = False) -> str | None:
    """The first tensor where ``got`` differs from ``want`` (in ``want``'s order, then
    tensors ``want`` lacks), as a phrase; None when names and shapes agree. ``bn_lenient``:
    a missing BatchNorm ``num_batches_tracked`` counter is no difference (loading fills it)."""
    for name, shape in want.items():
        if name not in got:
            if bn_lenient and name.endswith(".num_batches_tracked"):
                continue
            return f"tensor {name!r} {_shape(shape)} is missing"
        if tuple(got[name]) != tuple(shape):
            return f"tensor {name!r} is {_shape(got[name])}, not {_shape(shape)}"
    extra = next((n for n in got if n not in want), None)
    return None if extra is None else f"tensor {extra!r} {_shape(got[extra])} is extra"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def check_user_suite(
    spec: Any, *, split_seed: int = 0, read_data: bool = True, finite: bool = False
) -> SuiteCheck:
    """Everything that would stop a suite of the user's checkpoints (see the module doc),
    without raising. Reads the checkpoints' headers (a torch file: its tensors, through the
    safe reader); ``finite``: every tensor too, to refuse NaN and infinite values.
    ``read_data=False`` (a dry run) reads no on-disk dataset, so class counts and image
    sizes are checked against the embedded datasets only."""
    from mergelab.data import load_dataset
    from mergelab.data.errors import DatasetError
    from mergelab.models import build_model
    from mergelab.models.infer import checkpoint_shapes, read_input
    from mergelab.train.recipe import arch_problem, build_problem, dataset_problem, embedded_info
    from mergelab.yamlfile import key_path

    found = SuiteCheck()
    if not uses_checkpoints(spec) or not spec.pretrained or spec.tasks is None:
        return found  # the config's own checks report these
    tasks = list(spec.tasks)
    if len(spec.checkpoints) != len(tasks):
        return found

    def problem(key: str, message: str) -> None:
        found.problems.append((key, message))

    if (why := arch_problem(spec.arch)) is not None:
        problem("multitask.arch", why)
        return found

    # The checkpoints: there, readable, one backbone, a head each.
    shapes: dict[str, Shapes] = {}
    for key, text in user_files(spec):
        path = Path(text).expanduser()
        if not path.exists():
            found.missing.append((text, key, "checkpoint"))
            continue
        try:
            shapes[key] = checkpoint_shapes(path)
        except (MergelabError, OSError, RuntimeError, ValueError) as exc:
            message = _first_line(exc)
            if text not in message and str(path) not in message:
                message = f"{text}: {message}"
            problem(key, f"cannot read the checkpoint: {message}")
    if found.missing or found.problems:
        return found
    try:
        prefix, names = _arch_layout(spec.arch)
    except (MergelabError, RuntimeError, TypeError, ValueError) as exc:
        problem("multitask.arch", f"{spec.arch} has no classifier head to split off: {exc}")
        return found
    pre_key, pre_text = "multitask.pretrained", spec.pretrained
    backbone = {k: s for k, s in shapes[pre_key].items() if not k.startswith(prefix)}
    if not backbone:
        problem(pre_key, f"{pre_text} holds no tensor outside {spec.arch}'s head ({prefix}*)")
        return found
    diff = _difference(dict.fromkeys(names, ()), dict.fromkeys(backbone, ()), bn_lenient=True)
    if diff is not None:  # the names alone: the input size is not known yet
        problem(
            pre_key,
            f"{pre_text} does not fit arch {spec.arch}: backbone {diff.replace(' ()', '')}; "
            "give the arch the checkpoints were made with",
        )
        return found
    head_weight = f"{prefix}weight"
    classes: dict[str, int] = {}
    for i, task in enumerate(tasks):
        key, text = key_path("multitask", "checkpoints", i), spec.checkpoints[i]
        own = shapes[key]
        diff = _difference(backbone, {k: s for k, s in own.items() if not k.startswith(prefix)})
        if diff is not None:
            problem(
                key,
                f"{text}: backbone {diff} (compared with the pretrained {pre_text}); every "
                "task's backbone has the pretrained backbone's tensor names and shapes",
            )
            continue
        weight = own.get(head_weight)
        if weight is None or len(weight) != 2:
            problem(
                key,
                f"{text} has no 2-D {head_weight} (a {spec.arch} head); each task checkpoint "
                "is a full model: backbone and its task's head",
            )
            continue
        classes[task] = int(weight[0])
    if found.problems:
        return found

    # The tasks' data: known, there, single-label, as many classes as each head.
    infos: dict[str, Any] = {}
    for i, task in enumerate(tasks):
        key = key_path("multitask", "tasks", i)
        why, missing = dataset_problem(task)
        if why is not None:
            problem(key, why)
            continue
        if missing is not None:
            found.missing.append((missing, key, "dataset"))
            continue
        try:
            info = embedded_info(task, split_seed)
            if info is None and read_data:
                info = load_dataset(task, seed=split_seed).info
        except DatasetError as exc:
            problem(key, f"{task}: {_first_line(exc)}")
            continue
        if info is None:
            continue  # a dry run: on-disk data is not read
        infos[task] = info
        if info.multilabel:
            problem(key, f"{task} is multi-label; a task has one label per image")
        elif info.num_classes != classes[task]:
            ckpt = key_path("multitask", "checkpoints", i)
            problem(
                ckpt,
                f"{spec.checkpoints[i]}: its head {head_weight} "
                f"{_shape(shapes[ckpt][head_weight])} has {classes[task]} classes, but its "
                f"task {task} has {info.num_classes}",
            )
    if found.problems or found.missing:
        return found

    # The input the models take: as the checkpoints fix it, else the config, else the data.
    facts = read_input(spec.arch, {**shapes[pre_key], **shapes["multitask.checkpoints[0]"]})
    chosen: dict[str, int] = {}
    for name, fact, native in (
        ("in_chans", facts.in_chans, lambda info: info.channels),
        ("img_size", facts.img_size, lambda info: info.image_size[0]),
    ):
        given = getattr(spec, name, None)
        if fact is not None:
            if given is not None and given != fact.value:
                problem(
                    f"multitask.{name}",
                    f"{given}, but the checkpoints take {fact.value} ({fact} in {pre_text})",
                )
            chosen[name] = fact.value
        elif given is not None:
            chosen[name] = given
        else:
            values = {t: int(native(info)) for t, info in infos.items()}
            if len(set(values.values())) > 1:
                listed = ", ".join(f"{t}: {v}" for t, v in values.items())
                problem(
                    f"multitask.{name}",
                    f"the checkpoints do not fix it and the tasks' images differ ({listed}); "
                    f"give {name}: the value the checkpoints were trained with",
                )
            elif values:  # none in a dry run with on-disk tasks only: nothing more to check
                chosen[name] = next(iter(values.values()))
    if found.problems or len(chosen) < 2:
        return found

    # The checkpoints fit ``arch`` at that input, and the models run on it.
    for n in dict.fromkeys(classes.values()):
        why = build_problem(
            spec.arch,
            {},
            num_classes=n,
            in_chans=chosen["in_chans"],
            img_size=chosen["img_size"],
        )
        if why is not None:
            problem("multitask.arch", f"{spec.arch} cannot be built for the checkpoints: {why}")
            return found
    with torch.device("meta"):
        model = build_model(
            spec.arch,
            classes[tasks[0]],
            in_chans=chosen["in_chans"],
            img_size=chosen["img_size"],
        )
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want_backbone = {k: s for k, s in want.items() if not k.startswith(prefix)}
    diff = _difference(want_backbone, backbone, bn_lenient=True)
    if diff is not None:
        problem(
            pre_key,
            f"{pre_text} does not fit arch {spec.arch} (with {chosen['in_chans']} channels, "
            f"{chosen['img_size']} px): backbone {diff}; give the arch the checkpoints were "
            "made with",
        )
        return found
    for i, task in enumerate(tasks):
        key = key_path("multitask", "checkpoints", i)
        want_head = {
            k: (classes[task], *s[1:]) if s else s for k, s in want.items() if k.startswith(prefix)
        }
        got_head = {k: s for k, s in shapes[key].items() if k.startswith(prefix)}
        diff = _difference(want_head, got_head)
        if diff is not None:
            problem(key, f"{spec.checkpoints[i]}: head {diff} (a {spec.arch} head)")
    if found.problems:
        return found
    if finite:
        for key, text in user_files(spec):
            try:
                _read(Path(text).expanduser(), key, text)
            except ConfigError as exc:
                problem(key, str(exc).removeprefix(f"multi-task: {key}: "))
                return found
    found.facts = SuiteFacts(
        arch=spec.arch,
        head_prefix=prefix,
        in_chans=chosen["in_chans"],
        img_size=chosen["img_size"],
        pretrained=Path(pre_text).expanduser(),
        checkpoints={t: Path(p).expanduser() for t, p in zip(tasks, spec.checkpoints, strict=True)},
        num_classes=classes,
        backbone=backbone,
    )
    return found


def _read(path: Path, key: str, text: str) -> dict[str, torch.Tensor]:
    """A user's checkpoint, read safely, every floating tensor finite."""
    from mergelab.models import read_checkpoint

    try:
        state = read_checkpoint(path)
    except (MergelabError, OSError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"multi-task: {key}: cannot read {text}: {_first_line(exc)}") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ConfigError(
                f"multi-task: {key}: {text}: tensor {name!r} has NaN or infinite values "
                "(allowed: finite values; a merge would spread them)"
            )
    return state


def load_user_suite(
    spec: Any,
    out_dir: str | os.PathLike[str],
    *,
    split_seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> Any:
    """The :class:`mergelab.train.multitask.MultitaskSuite` of the user's checkpoints named
    by ``spec`` (a ``multitask:`` section), written to ``out_dir``: ``pretrained.
    safetensors`` (the pre-trained backbone), ``source_head.safetensors`` (its head, when
    it has one), ``backbones/`` and ``heads/`` per task, ``manifest.json`` (with each user
    file's path and sha256). Raises one ``ConfigError`` line for the first problem, before
    anything is written."""
    from mergelab.atomic import atomic_write_text
    from mergelab.hashing import file_sha256
    from mergelab.train import multitask as mt
    from mergelab.yamlfile import one_line

    check = check_user_suite(spec, split_seed=split_seed, read_data=True)
    if check.missing:
        path, key, kind = check.missing[0]
        raise ConfigError(f"multi-task: {key}: {kind} {path} does not exist")
    if check.problems or check.facts is None:
        lines = [f"{k}: {m}" for k, m in check.problems] or ["the checkpoints are incomplete"]
        raise ConfigError(f"multi-task: {one_line(lines)}")
    facts = check.facts
    out = Path(out_dir).expanduser()
    tasks = list(facts.checkpoints)
    names = {t: mt._file_name(t) for t in tasks}
    targets = [out / mt.MANIFEST, out / "pretrained.safetensors", out / "source_head.safetensors"]
    for t in tasks:
        targets += [out / "backbones" / names[t], out / "heads" / names[t]]
    inputs = {facts.pretrained.resolve(), *(p.resolve() for p in facts.checkpoints.values())}
    for path in targets:  # before anything is written
        if path.resolve() in inputs:
            raise ConfigError(
                f"multi-task: {path} is one of the suite's checkpoints; the suite is written "
                "there, so choose another --out"
            )
        mt._replaceable(path)

    files: dict[str, dict[str, str]] = {}
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key, text in user_files(spec):  # all read before anything is written
        path = Path(text).expanduser()
        files[key] = {"path": text, "sha256": file_sha256(path)}
        states[key] = _read(path, key, text)
    pre_key = "multitask.pretrained"
    if log is not None:
        log(f"multi-task: the suite from {len(tasks) + 1} checkpoints (nothing trained)")
    backbone, head = mt.split_backbone(states.pop(pre_key), facts.head_prefix)
    pre_hash = files[pre_key]["sha256"]
    mt._save(backbone, out / "pretrained.safetensors", "pretrained", "", pre_hash)
    source_head = None
    if head:
        mt._save(head, out / "source_head.safetensors", "source_head", "", pre_hash)
        source_head = "source_head.safetensors"
    entries: dict[str, Any] = {}
    for i, task in enumerate(tasks):
        key = f"multitask.checkpoints[{i}]"
        backbone, head = mt.split_backbone(states.pop(key), facts.head_prefix)
        got = {k: tuple(v.shape) for k, v in backbone.items()}
        if (diff := _difference(dict(facts.backbone), got)) is not None:  # changed since
            raise ConfigError(f"multi-task: {key}: {spec.checkpoints[i]}: backbone {diff}")
        run = files[key]["sha256"]
        mt._save(backbone, out / "backbones" / names[task], "backbone", task, run)
        mt._save(head, out / "heads" / names[task], "head", task, run)
        entries[task] = {
            "backbone": f"backbones/{names[task]}",
            "head": f"heads/{names[task]}",
            "num_classes": facts.num_classes[task],
            "run": run,
            "checkpoint": spec.checkpoints[i],
        }
    manifest = {
        "format": mt.FORMAT,
        "origin": "checkpoints",
        "arch": facts.arch,
        "model_kwargs": {},
        "in_chans": facts.in_chans,
        "img_size": facts.img_size,
        "seed": spec.seed,
        "split_seed": split_seed,
        "source": spec.pretrained,
        "head_prefix": facts.head_prefix,
        "backbone_tensors": {k: list(v) for k, v in facts.backbone.items()},
        "pretrained": {
            "backbone": "pretrained.safetensors",
            "head": source_head,
            "run": pre_hash,
        },
        "files": files,
        "tasks": entries,
        "task_order": tasks,
    }
    atomic_write_text(out / mt.MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return mt.load_multitask_suite(out)
