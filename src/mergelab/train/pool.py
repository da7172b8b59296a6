"""Train many runs at once: a pool of processes that respects "fine-tune after its start".

Every run is still one :func:`mergelab.train.trainer.train_model` call with its own
single torch thread, so a checkpoint's bytes do not depend on how many runs train beside it
or in which process: ``workers=4`` gives exactly the files ``workers=1`` gives.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergelab.device import choose_device
from mergelab.train.config import TrainConfig, is_config_hash
from mergelab.train.trainer import TrainingError, default_train_cache, train_model, verified_run

if TYPE_CHECKING:
    from mergelab.train.recipe import IngredientRecipe

__all__ = ["run_label", "train_recipes", "train_runs"]


def run_label(config: TrainConfig) -> str:
    """Default name of a run in logs and errors: arch, dataset and seed."""
    return f"{config.arch} on {config.dataset}, seed {config.seed}"


def _train_one(
    config: TrainConfig,
    cache_dir: str,
    device: str | None,
    progress: bool,
    threads: int | None,
    desc: str,
) -> tuple[str, float]:
    """One run (in a worker process or in this one): (checkpoint path, seconds)."""
    started = time.perf_counter()
    path = train_model(
        config,
        cache_dir=cache_dir,
        device=device,
        progress=progress,
        threads=threads,
        desc=desc,
    )
    return str(path), time.perf_counter() - started


def _failure(config: TrainConfig, label: str, exc: BaseException) -> TrainingError:
    return TrainingError(
        f"training failed for {label} (arch {config.arch}, dataset {config.dataset}, "
        f"seed {config.seed}, config {config.config_hash()[:12]}): {type(exc).__name__}: {exc}"
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
) -> list[Path]:
    """Train (or reuse) every config; returns their checkpoints in input order.

    A config whose ``init`` is the hash of another listed config starts once that run is
    done; a config listed twice is trained once; a run already in ``cache_dir`` costs
    nothing (after its content hash is checked: a run that fails is reported and trained
    again). ``workers`` > 1 trains up to that many runs at once in processes of a "spawn"
    context (each with ``threads`` torch threads, 1 by default, so the bytes equal serial
    training); ``workers=1`` trains in this process. ``progress``: tqdm bars, only for
    in-process runs. ``log(message)`` gets one line per trained run, e.g. ``"trained 7/23:
    cnn on mnist5k, run 3 (12.1 s)"``; ``labels`` name the runs (default: arch, dataset,
    seed). A failing run raises ``TrainingError`` naming it, after cancelling the runs not
    yet started (runs in flight finish and stay cached).
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
        run = _serial if workers == 1 or len(todo) == 1 else _parallel
        run(todo, needs, result, cache, device, min(workers, len(todo)), progress, log, threads)
    return [result[key] for key in hashes]


def train_recipes(
    recipes: Sequence[IngredientRecipe],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    threads: int | None = 1,
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
    )
    return [paths[a:b] for a, b in spans]


def _order(todo: dict[str, Any], needs: dict[str, str | None]) -> list[str]:
    """Keys of ``todo`` in input order, each after the run it starts from."""
    done: set[str] = set()
    order: list[str] = []

    def visit(key: str) -> None:
        if key in done:
            return
        done.add(key)
        dep = needs[key]
        if dep is not None:
            visit(dep)
        order.append(key)

    for key in todo:
        visit(key)
    return order


def _report(
    log: Callable[[str], None] | None, count: int, total: int, name: str, seconds: float
) -> None:
    if log is not None:
        log(f"trained {count}/{total}: {name} ({seconds:.1f} s)")


def _serial(
    todo: dict[str, tuple[TrainConfig, str]],
    needs: dict[str, str | None],
    result: dict[str, Path],
    cache: Path,
    device: str | None,
    workers: int,
    progress: bool,
    log: Callable[[str], None] | None,
    threads: int | None,
) -> None:
    for count, key in enumerate(_order(todo, needs), start=1):
        config, name = todo[key]
        try:
            path, seconds = _train_one(config, str(cache), device, progress, threads, name)
        except Exception as exc:
            raise _failure(config, name, exc) from exc
        result[key] = Path(path)
        _report(log, count, len(todo), name, seconds)


def _parallel(
    todo: dict[str, tuple[TrainConfig, str]],
    needs: dict[str, str | None],
    result: dict[str, Path],
    cache: Path,
    device: str | None,
    workers: int,
    progress: bool,
    log: Callable[[str], None] | None,
    threads: int | None,
) -> None:
    order = _order(todo, needs)
    starts = {dep for dep in needs.values() if dep is not None}
    # runs that others wait on first (a start unblocks its fine-tunes), then input order
    position = {k: i for i, k in enumerate(order)}
    waiting = sorted(order, key=lambda k: (k not in starts, position[k]))
    running: dict[cf.Future, str] = {}
    count = 0
    pool = cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn")
    )
    try:
        while waiting or running:
            ready = [k for k in waiting if needs[k] is None or needs[k] in result]
            for key in ready[: max(0, workers - len(running))]:
                config, name = todo[key]
                fut = pool.submit(_train_one, config, str(cache), device, False, threads, name)
                running[fut] = key
                waiting.remove(key)
            if not running:  # cannot happen: every dependency is listed before it is needed
                raise TrainingError(f"no run can start: {len(waiting)} wait on missing starts")
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                key = running.pop(fut)
                config, name = todo[key]
                try:
                    path, seconds = fut.result()
                except Exception as exc:
                    raise _failure(config, name, exc) from exc
                result[key] = Path(path)
                count += 1
                _report(log, count, len(todo), name, seconds)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
