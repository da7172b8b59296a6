"""Train many runs at once: a pool of processes that respects "fine-tune after its start".

Every run is still one :func:`mergelab.train.trainer.train_model` call with its own
single torch thread, so a checkpoint's bytes do not depend on how many runs train beside it
or in which process: ``workers=4`` gives exactly the files ``workers=1`` gives.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from mergelab.device import choose_device
from mergelab.executor import Executor, InProcess, Resources, Unit, UnitsFailed, local_executor
from mergelab.executor.units import cause
from mergelab.train.config import TrainConfig, is_config_hash
from mergelab.train.trainer import TrainingError, default_train_cache, train_model, verified_run

if TYPE_CHECKING:
    from mergelab.train.recipe import IngredientRecipe

__all__ = ["run_label", "train_recipes", "train_runs", "train_unit"]


def run_label(config: TrainConfig) -> str:
    """Default name of a run in logs and errors: arch, dataset and seed."""
    return f"{config.arch} on {config.dataset}, seed {config.seed}"


def _train_one(
    config: TrainConfig,
    cache_dir: str,
    device: str | None,
    desc: str,
    progress: bool = False,
) -> str:
    """One run, in whichever process its executor chose (with the executor's torch
    threads): the checkpoint's path."""
    path = train_model(
        config, cache_dir=cache_dir, device=device, progress=progress, threads=None, desc=desc
    )
    return str(path)


def _failure(config: TrainConfig, label: str, exc: BaseException, failed: int) -> TrainingError:
    more = f" ({failed - 1} more run(s) failed; the others are cached)" if failed > 1 else ""
    return TrainingError(
        f"training failed for {label} (arch {config.arch}, dataset {config.dataset}, "
        f"seed {config.seed}, config {config.config_hash()[:12]}): {type(exc).__name__}: "
        f"{exc}{more}"
    )


def train_runs(
    configs: Sequence[TrainConfig],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    labels: Sequence[str] | None = None,
    threads: int | None = 1,
    executor: Executor | None = None,
) -> list[Path]:
    """Train (or reuse) every config; returns their checkpoints in input order.

    A config whose ``init`` is the hash of another listed config starts once that run is
    done; a config listed twice is trained once; a run already in ``cache_dir`` costs
    nothing (after its content hash is checked: a run that fails is reported and trained
    again). Each run is one unit of ``executor`` (:mod:`mergelab.executor`); without one,
    ``workers`` > 1 trains up to that many runs at once in processes of a "spawn" context
    and ``workers=1`` trains in this process, each run with ``threads`` torch threads (1
    by default, so the bytes equal serial training). ``progress``: tqdm bars, only for
    in-process runs. ``log(message)`` gets one line per trained run, e.g. ``"trained 7/23:
    cnn on mnist5k, run 3 (12.1 s)"``, and one per retried attempt; ``labels`` name the
    runs (default: arch, dataset, seed). A run that raises is tried again (not a
    ``TrainingError``: a diverged run diverges again); runs that do not start from a failed
    one still train, then ``TrainingError`` names the failure (the finished runs stay
    cached).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if labels is not None and len(labels) != len(configs):
        raise ValueError(f"{len(labels)} labels for {len(configs)} configs")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_train_cache()
    names = list(labels) if labels is not None else [run_label(c) for c in configs]
    hashes = [c.config_hash() for c in configs]
    result: dict[str, Path] = {}
    todo: dict[str, tuple[TrainConfig, str]] = {}
    for key, config, name in zip(hashes, configs, names, strict=True):
        path = cache / f"{key}.safetensors"
        if key in result or key in todo:
            continue
        if verified_run(path):
            result[key] = path
        else:
            todo[key] = (config, name)
    needs: dict[str, str | None] = {}
    for key, (config, name) in todo.items():
        dep = config.init if config.init is not None and is_config_hash(config.init) else None
        if dep is not None and dep not in todo and dep not in result:
            if not verified_run(cache / f"{dep}.safetensors"):
                raise TrainingError(
                    f"{name}: init {dep[:12]}... is a config hash that is neither listed nor "
                    f"trained in {cache}"
                )
            dep = None
        needs[key] = dep if dep in todo else None
    if todo:
        choose_device(device)  # an absent device: one error now, not one per worker
        cache.mkdir(parents=True, exist_ok=True)
        units = [
            train_unit(config, cache, device, name, needs=needs[key], gpus=float(wants_gpu(device)))
            for key, (config, name) in todo.items()
        ]
        own = executor is None
        if executor is None:
            n = 1 if len(todo) == 1 else min(workers, len(todo))
            executor = local_executor(n, threads=threads)
        in_process = isinstance(executor, InProcess)
        if in_process and progress:
            units = [replace(u, kwargs={**u.kwargs, "progress": True}) for u in units]
        count = 0

        def done(unit: Unit, value: str, seconds: float) -> None:
            nonlocal count
            count += 1
            result[unit.key] = Path(value)
            if log is not None:
                log(f"trained {count}/{len(todo)}: {unit.label} ({seconds:.1f} s)")

        try:
            executor.run(units, log=log, on_done=done)
        except UnitsFailed as exc:
            unit, error = exc.failures[0]
            config = todo[unit.key][0]
            raise _failure(config, unit.label, cause(error), len(exc.failures)) from error
        finally:
            if own:
                executor.close()
    return [result[key] for key in hashes]


def wants_gpu(device: str | None) -> bool:
    """Whether a unit for ``device`` asks its executor for a GPU: unset (a GPU where the
    unit lands has one) or CUDA."""
    return device is None or str(device).startswith("cuda")


def train_unit(
    config: TrainConfig,
    cache: Path,
    device: str | None,
    label: str,
    *,
    needs: str | None = None,
    gpus: float = 0.0,
) -> Unit:
    """One training run as a unit of work (its start, if listed, as the unit it needs)."""
    return Unit(
        key=config.config_hash(),
        label=label,
        fn=_train_one,
        kwargs={"config": config, "cache_dir": str(cache), "device": device, "desc": label},
        needs=(needs,) if needs else (),
        resources=Resources(cpus=1, gpus=gpus),
        kind="train",
    )


def train_recipes(
    recipes: Sequence[IngredientRecipe],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    threads: int | None = 1,
    executor: Executor | None = None,
) -> list[list[Path]]:
    """Train every run of several recipes in one pool (each start before its fine-tunes;
    runs shared between recipes once); returns each recipe's ingredient checkpoints."""
    configs: list[TrainConfig] = []
    labels: list[str] = []
    spans: list[tuple[int, int]] = []
    for recipe in recipes:
        runs = recipe.all_configs()
        first = len(configs) + len(runs) - recipe.n_models
        configs += runs
        labels += recipe.run_labels()
        spans.append((first, len(configs)))
    paths = train_runs(
        configs,
        cache_dir=cache_dir,
        device=device,
        workers=workers,
        progress=progress,
        log=log,
        labels=labels,
        threads=threads,
        executor=executor,
    )
    return [paths[a:b] for a, b in spans]
