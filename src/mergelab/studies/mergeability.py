"""Mergeability ("Demystifying Mergeability"): which pairwise metrics predict a merge.

Every pair of the tasks of the ``multitask:`` suite (its task backbones fine-tuned from
one pre-trained start, or the user's checkpoints) is

* measured: the 28 pairwise metrics of :func:`mergelab.diagnose.diagnose` (weights,
  per-layer subspaces, activations and gradients on each task's own val samples with its
  own head) and the loss barrier;
* merged by each method at the paper's fixed settings (no coefficient chosen, so no
  selection touches the test split) and scored on both tasks' test splits with their
  frozen heads: normalized accuracy = merged / the task's own fine-tuned backbone,
  averaged over the pair's two tasks.

Rows (``study=mergeability``, ``dataset`` / ``other_dataset`` = the pair): per method,
``normalized_accuracy`` (with ``accuracy_a``, ``accuracy_b`` and ``params`` columns); method
"Pair": one row per metric (``metric`` = its name).

Then one predictor per method (:mod:`mergelab.analysis.predictor`) with leave-one-task-out
cross-validation, on every task (``left_out=none``) and once without each task (the
jackknife replicates the claims' intervals come from). Rows ``study=mergeability_fit``:
``mean_fold_r``, ``pooled_r``, ``fold_r`` (per held-out task, ``fold``), ``coefficient``
(mean over folds, per ``feature``; per fold on the fit on every task),
``nonzero_frequency`` and ``net_sign`` (the mean over folds of the coefficient's sign:
-1 when every fold gives the metric a negative weight, 0 when never selected), for
``predictor`` = ``sparse_pearson`` and (fit on every task only)
``lasso``.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mergelab.studies.context import StudyContext
from mergelab.studies.multitask import LABELS, merge_backbones, suite_of
from mergelab.studies.registry import MERGEABILITY, MERGEABILITY_FIT, PAIR_METHOD
from mergelab.train import multitask as mt

__all__ = ["PAIR", "fit_rows", "run"]

PAIR = PAIR_METHOD
FULL = "none"
"""``left_out`` of the fit on every task."""


def run(ctx: StudyContext) -> pd.DataFrame:
    spec = ctx.config.mergeability
    if not spec.enabled:
        return pd.DataFrame()
    seed = ctx.config.multitask.training_seeds[0]
    suite = suite_of(ctx, seed)
    rows = _pair_rows(ctx, suite, seed)
    return pd.concat([pd.DataFrame(rows), fit_rows(pd.DataFrame(rows), spec)], ignore_index=True)


def _row(
    suite: mt.MultitaskSuite, seed: int, a: str, b: str, method: str, metric: str, value: float
) -> dict[str, Any]:
    return {
        "study": MERGEABILITY.name,
        "dataset": a,
        "other_dataset": b,
        "arch": suite.arch,
        "seed": seed,
        "method": method,
        "n_models": 2,
        "magnitude": 1.0,
        "split": "test",
        "metric": metric,
        "value": float(value),
    }


def _pair_rows(ctx: StudyContext, suite: mt.MultitaskSuite, seed: int) -> list[dict[str, Any]]:
    """Metrics and merges of every task pair."""
    from mergelab.diagnose import diagnose

    spec = ctx.config.mergeability
    device = ctx.config.device or "cpu"
    heads = suite.task_heads()
    pretrained = suite.pretrained_state()
    backbones = suite.backbone_states()
    tasks = list(suite.tasks)
    individual = {
        t: float(np.mean(mt.multitask_outcomes(backbones[t], heads, [t], split="test")[t]))
        for t in tasks
    }
    pairs = list(itertools.combinations(tasks, 2))
    rows: list[dict[str, Any]] = []
    for i, (a, b) in enumerate(pairs, 1):
        found = diagnose(
            suite.backbones[a],
            suite.backbones[b],
            suite.pretrained,
            data=[a, b],
            arch=suite.arch,
            heads=[suite.heads[a], suite.heads[b]],
            samples=spec.samples,
            seed=ctx.config.split_seed,
            device=device,
        )
        for name, value in found.metrics().items():
            rows.append(_row(suite, seed, a, b, PAIR, name, value))
        scores = []
        for method in spec.methods:
            density = {"ties": spec.ties_density, "dare": spec.dare_density}.get(method)
            merged, shown = merge_backbones(
                method,
                [backbones[a], backbones[b]],
                pretrained,
                spec.params.get(method, {}),
                density=density,
                seed=seed,
            )
            got = mt.multitask_outcomes(merged, heads, [a, b], split="test", device=device)
            acc = {t: float(np.mean(got[t])) for t in (a, b)}
            norm = [acc[t] / individual[t] if individual[t] > 0 else math.nan for t in (a, b)]
            row = _row(
                suite, seed, a, b, LABELS[method], "normalized_accuracy", float(np.mean(norm))
            )
            row.update(
                accuracy_a=acc[a], accuracy_b=acc[b], params=json.dumps(shown, sort_keys=True)
            )
            rows.append(row)
            scores.append(f"{LABELS[method]} {row['value']:.3f}")
        ctx.log(f"mergeability: pair {i}/{len(pairs)} {a} + {b}: {', '.join(scores)}")
    return rows


def _table(pair_rows: pd.DataFrame, features: Sequence[str]):
    """(pairs, feature matrix, {method label: targets}) from the pair rows."""
    rows = pair_rows[pair_rows["study"] == MERGEABILITY.name]
    metrics = rows[rows["method"] == PAIR].pivot_table(
        index=["dataset", "other_dataset"], columns="metric", values="value", aggfunc="first"
    )
    pairs = [tuple(map(str, p)) for p in metrics.index]
    missing = [f for f in features if f not in metrics.columns]
    for f in missing:
        metrics[f] = np.nan
    x = metrics[list(features)].to_numpy(dtype=np.float64)
    targets: dict[str, np.ndarray] = {}
    merged = rows[(rows["method"] != PAIR) & (rows["metric"] == "normalized_accuracy")]
    for method, g in merged.groupby("method", sort=False):
        by_pair = g.set_index(["dataset", "other_dataset"])["value"]
        targets[str(method)] = np.array([float(by_pair.get(p, np.nan)) for p in pairs])
    return pairs, x, targets


def fit_rows(pair_rows: pd.DataFrame, spec: Any) -> pd.DataFrame:
    """The predictors' rows (``study=mergeability_fit``) from the pair rows: every method,
    leave-one-task-out, on every task and without each task in turn."""
    from mergelab.analysis.predictor import leave_one_task_out
    from mergelab.diagnose import PAPER_METRICS

    features = list(spec.features) if spec.features is not None else list(PAPER_METRICS)
    pairs, x, targets = _table(pair_rows, features)
    if not pairs:
        return pd.DataFrame()
    first = pair_rows[pair_rows["study"] == MERGEABILITY.name].iloc[0]
    arch, seed = first["arch"], int(first["seed"])
    tasks = list(dict.fromkeys(t for p in pairs for t in p))
    out: list[dict[str, Any]] = []

    def add(model: str, left_out: str, method: str, metric: str, value: float, **item: str):
        out.append(
            {
                "study": MERGEABILITY_FIT.name,
                "dataset": "",
                "arch": arch,
                "seed": seed,
                "predictor": model,
                "left_out": left_out,
                "method": method,
                "n_models": 2,
                "magnitude": 1.0,
                "split": "test",
                "metric": metric,
                "value": float(value),
                "feature": item.get("feature", ""),
                "fold": item.get("fold", ""),
            }
        )

    for method, y in targets.items():
        for left_out in [FULL, *tasks]:
            keep = [i for i, p in enumerate(pairs) if left_out not in p]
            if len({t for i in keep for t in pairs[i]}) < 4:
                continue  # a fold needs train pairs without the held-out task
            fit = leave_one_task_out(
                x[keep],
                y[keep],
                [pairs[i] for i in keep],
                features,
                lam=spec.l1,
                lasso=left_out == FULL,
            )
            models = [("sparse_pearson", fit.sparse)]
            if fit.lasso is not None:
                models.append(("lasso", fit.lasso))
            for model, result in models:
                add(model, left_out, method, "mean_fold_r", result.mean_fold_r)
                add(model, left_out, method, "pooled_r", result.pooled_r)
                for fold in result.folds:
                    add(model, left_out, method, "fold_r", fold.test_r, fold=fold.held_out)
                    if left_out == FULL:
                        held = fold.held_out
                        for f, c in zip(features, fold.coef, strict=True):
                            add(model, left_out, method, "coefficient", c, feature=f, fold=held)
                signs = np.mean([np.sign(fold.coef) for fold in result.folds], axis=0)
                for f, c, nz, sign in zip(
                    features, result.mean_coef, result.nonzero_frequency, signs, strict=True
                ):
                    add(model, left_out, method, "coefficient", c, feature=f, fold="mean")
                    add(model, left_out, method, "nonzero_frequency", nz, feature=f, fold="mean")
                    add(model, left_out, method, "net_sign", sign, feature=f, fold="mean")
    return pd.DataFrame(out)
