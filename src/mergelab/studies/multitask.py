"""Multi-task merging: task backbones fine-tuned from one start, merged, frozen heads.

The suite of :mod:`mergelab.train.multitask` (trained once, cached in the study's
``runs/``): a pre-trained backbone and one fine-tuned backbone and frozen head per task.
Each method merges the task backbones at every value of its coefficient grid (``lambda``
or ``alpha``; weight averaging has none); the value with the best *mean val accuracy*
over the merged tasks is chosen, and only then is the chosen merge scored on each task's
*test* split with that task's head. Test numbers never take part in a choice.

Rows (``study=multitask``, ``dataset`` = task, ``split=test``): ``accuracy`` and
``normalized_accuracy`` (merged / the task's own fine-tuned backbone) per task, method
and sweep:

* ``sweep=methods``: every method on all tasks, with "Pretrained" (the pre-trained
  backbone under each task's head) and "Individual" (each task's own backbone);
* ``sweep=rank``: CART at each rank fraction of ``ranks`` (``rank_fraction``);
* ``sweep=tasks``: ``count_methods`` merging a fixed seeded subset of ``n_models`` tasks.

Free columns: ``coefficient`` (the chosen value; NaN for weight averaging), ``params``
(the merge's parameters, JSON), ``val_accuracy`` (the mean val accuracy that chose it) and
``grid_edge`` ("top" or "bottom" when the chosen value is the grid's largest or smallest:
a wider grid might do better; the tables say so). Accuracy rows keep their per-example
test outcomes (``outcome``), which the claims resample.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from mergelab.engine import merge_state_dicts
from mergelab.studies.context import StudyContext
from mergelab.studies.registry import MULTITASK
from mergelab.train import multitask as mt

__all__ = ["LABELS", "choose", "coefficient_name", "merge_backbones", "run", "suite_of"]

LABELS = {
    "linear": "Weight Averaging",
    "task_arithmetic": "Task Arithmetic",
    "ties": "TIES",
    "dare": "DARE",
    "tsv": "TSV-M",
    "iso_c": "Iso-C",
    "cart": "CART",
}
PRETRAINED = "Pretrained"
INDIVIDUAL = "Individual"
NO_RANK = float("nan")

State = dict[str, torch.Tensor]


def coefficient_name(method: str) -> str | None:
    """The parameter a method's grid sweeps (None: weight averaging has none)."""
    return None if method == "linear" else "alpha" if method in ("tsv", "iso_c") else "lambda"


def choose(
    grid: Sequence[float | None], mean_val: Any
) -> tuple[float | None, float, list[tuple[float | None, float]]]:
    """The grid value with the highest ``mean_val(value)`` (the first on a tie), its
    score, and every (value, score)."""
    scored = [(v, float(mean_val(v))) for v in grid]
    best = max(range(len(scored)), key=lambda i: (scored[i][1], -i))
    return scored[best][0], scored[best][1], scored


def merge_backbones(
    method: str,
    models: Sequence[State],
    pretrained: State,
    params: dict[str, Any],
    *,
    density: float | None = None,
    seed: int = 0,
) -> tuple[State, dict[str, Any]]:
    """``models`` (task backbones of ``pretrained``) merged by ``method``; TIES and DARE
    keep ``density`` of each task vector, DARE's masks drawn with ``seed``. Returns the
    merged tensors and the parameters as shown in the rows."""
    params = dict(params)
    model_params = None if density is None else [{"density": density}] * len(models)
    if method == "dare":
        params.setdefault("seed", seed)
    base = None if method in ("linear", "cart") else pretrained
    merged = merge_state_dicts(method, list(models), base, params=params, model_params=model_params)
    return merged, {**params, **({"density": density} if density is not None else {})}


class _Merger:
    """The suite in memory: merges, val selection and test scores, each made once."""

    def __init__(self, ctx: StudyContext, suite: mt.MultitaskSuite, seed: int) -> None:
        self.ctx = ctx
        self.seed = seed
        self.spec = ctx.config.multitask
        self.suite = suite
        self.heads = suite.task_heads()
        self.pretrained = suite.pretrained_state()
        self.backbones = suite.backbone_states()
        self.device = ctx.config.device or "cpu"
        self._chosen: dict[tuple, dict[str, Any]] = {}

    def outcomes(self, state: State, tasks: Sequence[str], split: str) -> dict[str, np.ndarray]:
        """Per task, the 0/1 vector of ``state``'s right answers on ``split``."""
        return mt.multitask_outcomes(
            state, self.heads, list(tasks), split=split, device=self.device
        )

    def mean_accuracy(self, state: State, tasks: Sequence[str], split: str) -> float:
        """Accuracy averaged over ``tasks`` (each task weighs the same)."""
        outcomes = self.outcomes(state, tasks, split)
        return float(np.mean([float(np.mean(o)) for o in outcomes.values()]))

    def params(self, method: str, value: float | None, rank: float | None) -> dict[str, Any]:
        params: dict[str, Any] = dict(self.spec.params.get(method, {}))
        name = coefficient_name(method)
        if name is not None and value is not None:
            params[name] = value
        if method == "cart" and rank is not None:
            params["rank"] = rank
        return params

    def merge(self, method: str, tasks: Sequence[str], value: float | None, rank: float | None):
        density = {"ties": self.spec.ties_density, "dare": self.spec.dare_density}.get(method)
        return merge_backbones(
            method,
            [self.backbones[t] for t in tasks],
            self.pretrained,
            self.params(method, value, rank),
            density=density,
            seed=self.seed,
        )

    def _extend(
        self, grid: list[float | None], value: float, score: float, mean_val: Any
    ) -> tuple[float, float]:
        """Past the grid's edge: while the best value is the largest (smallest) tried,
        double (halve) it, up to ``extend_grid`` times, keeping it while mean val accuracy
        improves. ``grid`` gains the values tried."""
        for factor, end in ((2.0, max), (0.5, min)):
            for _ in range(self.spec.extend_grid):
                if value != end(v for v in grid if v is not None):
                    break
                candidate = value * factor
                grid.append(candidate)
                candidate_score = mean_val(candidate)
                if candidate_score <= score:
                    break
                value, score = candidate, candidate_score
        return value, score

    def chosen(self, method: str, tasks: Sequence[str], rank: float | None) -> dict[str, Any]:
        """``method`` merging ``tasks``: the grid value best on mean val accuracy, and the
        chosen merge's test outcomes per task."""
        key = (method, tuple(tasks), rank)
        if key in self._chosen:
            return self._chosen[key]
        grid: list[float | None] = (
            [None] if coefficient_name(method) is None else list(self.spec.coefficients)
        )
        merged: dict[float | None, tuple[State, dict[str, Any]]] = {}
        scores: dict[float | None, float] = {}

        def mean_val(value: float | None) -> float:
            merged[value] = self.merge(method, tasks, value, rank)
            scores[value] = self.mean_accuracy(merged[value][0], tasks, "val")
            best = max(scores, key=scores.__getitem__)  # hold only the best merge so far
            for v in [v for v in merged if v != best and v != value]:
                del merged[v]
            return scores[value]

        value, score, _ = choose(grid, mean_val)
        if value is not None:
            value, score = self._extend(grid, value, score, mean_val)
        state, shown = merged[value]
        test = self.outcomes(state, tasks, "test")
        edge = ""
        if value is not None and len(grid) > 1:
            edge = "top" if value == max(grid) else "bottom" if value == min(grid) else ""
        self._chosen[key] = {
            "value": value,
            "val": score,
            "params": shown,
            "test": test,
            "edge": edge,
        }
        return self._chosen[key]


def _row(
    spec: Any,
    seed: int,
    task: str,
    method: str,
    sweep: str,
    n: int,
    rank: float,
    metric: str,
    value: float,
) -> dict[str, Any]:
    return {
        "study": MULTITASK.name,
        "dataset": task,
        "arch": spec.arch,
        "seed": seed,
        "sweep": sweep,
        "n_models": n,
        "rank_fraction": rank,
        "method": method,
        "magnitude": 1.0,
        "split": "test",
        "metric": metric,
        "value": float(value),
    }


def subsets(tasks: Sequence[str], counts: Sequence[int], seed: int) -> dict[int, list[str]]:
    """A fixed seeded subset of ``k`` tasks per count ``k`` (all of them for k = len)."""
    out = {}
    for k in counts:
        picked = set(random.Random(f"multitask/{seed}/{k}").sample(list(tasks), k))
        out[k] = [t for t in tasks if t in picked]
    return out


def run(ctx: StudyContext) -> pd.DataFrame:
    spec = ctx.config.multitask
    if not spec.enabled:
        return pd.DataFrame()
    rows: list[dict[str, Any]] = []
    for seed in spec.training_seeds:
        rows += _run_suite(ctx, suite_of(ctx, seed), seed)
    return pd.DataFrame(rows)


def suite_of(ctx: StudyContext, seed: int) -> mt.MultitaskSuite:
    """The ``multitask:`` section's suite of training seed ``seed`` (trained once, cached
    in ``runs/``; or the user's checkpoints), in ``OUT/multitask`` (``seed-<seed>/`` below
    it when the section lists several seeds)."""
    from mergelab.train.user_suite import uses_checkpoints

    spec = ctx.config.multitask
    if uses_checkpoints(spec):
        ctx.log(f"multi-task: the suite of your {len(spec.checkpoints)} checkpoints")
    else:
        ctx.log(f"multi-task: training the {spec.arch} suite, seed {seed} (cached in runs/)")
    folder = ctx.out / "multitask"
    return mt.study_suite(
        spec,
        folder if len(spec.training_seeds) == 1 else folder / f"seed-{seed}",
        cache_dir=ctx.runs_dir,
        workers=ctx.workers,
        device=ctx.config.device or "cpu",
        log=ctx.log,
        split_seed=ctx.config.split_seed,
        seed=seed,
        executor=ctx.executor,
    )


def _run_suite(ctx: StudyContext, suite: mt.MultitaskSuite, seed: int) -> list[dict[str, Any]]:
    """Every row of one suite (one training seed)."""
    spec = ctx.config.multitask
    m = _Merger(ctx, suite, seed)
    tasks = list(suite.tasks)
    individual_outcomes = {t: m.outcomes(m.backbones[t], [t], "test")[t] for t in tasks}
    individual = {t: float(np.mean(o)) for t, o in individual_outcomes.items()}
    rows: list[dict[str, Any]] = []

    def add(result: dict[str, Any], method: str, sweep: str, n: int, rank: float) -> None:
        """Rows of one merge: accuracy (with its per-example outcomes kept for the
        claims' intervals) and normalized accuracy, per task."""
        for task, outcome in result["test"].items():
            acc = float(np.mean(outcome))
            norm = acc / individual[task] if individual[task] > 0 else math.nan
            extra = {
                "coefficient": math.nan if result["value"] is None else result["value"],
                "params": json.dumps(result["params"], sort_keys=True),
                "val_accuracy": result["val"],
                "grid_edge": result.get("edge", ""),
            }
            row = {**_row(spec, seed, task, method, sweep, n, rank, "accuracy", acc), **extra}
            rows.append(ctx.keep(row, outcome))
            rows.append(
                {
                    **_row(spec, seed, task, method, sweep, n, rank, "normalized_accuracy", norm),
                    **extra,
                }
            )

    n_all = len(tasks)
    own = {"test": individual_outcomes, "value": None, "params": {}, "val": math.nan}
    add(own, INDIVIDUAL, "methods", n_all, NO_RANK)
    pre = {"test": m.outcomes(m.pretrained, tasks, "test"), "value": None, "params": {}}
    add({**pre, "val": math.nan}, PRETRAINED, "methods", n_all, NO_RANK)
    for method in spec.methods:
        rank = spec.cart_rank if method == "cart" else None
        result = m.chosen(method, tasks, rank)
        ctx.log(
            f"multi-task: {LABELS[method]} on {n_all} tasks: chosen {result['params']} "
            f"(mean val {result['val']:.3f})"
        )
        add(result, LABELS[method], "methods", n_all, NO_RANK)
    for r in spec.ranks:
        result = m.chosen("cart", tasks, r)
        ctx.log(f"multi-task: CART rank {r:g}: mean val {result['val']:.3f}")
        add(result, LABELS["cart"], "rank", n_all, r)
    counts = spec.task_counts if spec.task_counts is not None else list(range(2, n_all + 1))
    for k, subset in subsets(tasks, [k for k in counts if k <= n_all], spec.seed).items():
        for method in spec.count_methods:
            rank = spec.cart_rank if method == "cart" else None
            add(m.chosen(method, subset, rank), LABELS[method], "tasks", k, NO_RANK)
        ctx.log(f"multi-task: {k} tasks merged ({', '.join(subset)})")
    return rows
