"""The ingredients on their own: is each model trained well, did its validation accuracy
stop improving, and how different are the N models of a setting?

Soups and ensembles of near-copies score the same, so a comparison of the two says
nothing unless the ingredients differ; a finding about averaging says little about models
that did not learn the task. This study puts both next to every setting: per model, test
and val accuracy, training length and the val gain over the last quarter of training
(about 0 once it has plateaued); per setting, the mean pairwise test disagreement and the
mean pairwise L2 distance between the models' parameters.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mergelab.evaluate import ModelSource
from mergelab.evaluate.units import OutputsWanted
from mergelab.results import correct_examples
from mergelab.studies.context import StudyContext
from mergelab.studies.registry import INGREDIENTS
from mergelab.studies.weights_vs_features import recipe_of, settings
from mergelab.train.recipe import start_checkpoint


def _sidecar(path: Path) -> dict[str, Any]:
    side = path.with_suffix(".json")
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError):
        return {}


def plateau_gain(curve: list[float]) -> float:
    """Best val accuracy minus the best of the first three quarters of the epochs: how much
    the last quarter still added (NaN for curves shorter than 4 epochs)."""
    if len(curve) < 4:
        return float("nan")
    cut = int(np.ceil(0.75 * len(curve)))
    return float(max(curve) - max(curve[:cut]))


def _start_rows(
    ctx: StudyContext, base: dict[str, Any], start: Path, dataset: str, arch: str
) -> list[dict[str, Any]]:
    """The shared start's own test accuracy on the target (its head learned the source's
    classes; skipped when they differ) and how far the fine-tunes moved from it."""
    rows: list[dict[str, Any]] = []
    try:
        out = ctx.evaluator(dataset, arch).outputs(ModelSource.of(start), "test")
    except Exception:  # another label set or input: the start has no accuracy here
        out = None
    if out is not None and out.targets.ndim == 1:
        acc = float(correct_examples(out.logits, out.targets).mean())
        rows.append(
            {**base, "method": "start", "split": "test", "metric": "accuracy", "value": acc}
        )
    return rows


def _flat(sd: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate(
        [v.detach().double().reshape(-1).numpy() for v in sd.values() if v.is_floating_point()]
    )


def outputs(ctx: StudyContext) -> list[OutputsWanted]:
    """Every ingredient on val and test, as this study and the combinations read them."""
    return [
        OutputsWanted(
            dataset,
            arch,
            ctx.image(dataset, arch),
            tuple(ctx.ingredients(recipe_of(ctx, dataset, arch, init, seed))),
        )
        for dataset, arch, init, seed in settings(ctx)
    ]


def run(ctx: StudyContext) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for dataset, arch, init, seed in settings(ctx):
        recipe = recipe_of(ctx, dataset, arch, init, seed)
        paths = ctx.ingredients(recipe)
        ev = ctx.evaluator(dataset, arch)
        base = {
            "study": INGREDIENTS.name,
            "dataset": dataset,
            "arch": arch,
            "init": init,
            "seed": seed,
            "n_models": len(paths),
            "magnitude": 1.0,
        }
        preds = []
        for i, path in enumerate(paths):
            side = _sidecar(path)
            curve = [float(v) for v in side.get("val_curve", [])]
            model = {**base, "method": "Individual", "model": i}
            for split in ("val", "test"):
                out = ev.outputs(ModelSource.of(path), split)
                correct = (
                    correct_examples(out.logits, out.targets) if out.targets.ndim == 1 else None
                )
                if correct is None:
                    continue
                if split == "test":
                    preds.append(np.argmax(out.logits, axis=1))
                rows.append(
                    {**model, "split": split, "metric": "accuracy", "value": float(correct.mean())}
                )
            facts = {
                "epochs": side.get("epochs_run", side.get("epochs")),
                "best_epoch": side.get("best_epoch"),
                "val_gain_last_quarter": plateau_gain(curve),
                "train_seconds": side.get("seconds"),
            }
            for metric, value in facts.items():
                if value is not None:
                    rows.append(
                        {**model, "split": "train", "metric": metric, "value": float(value)}
                    )
        start = start_checkpoint(recipe, ctx.runs_dir) if init == "shared" else None
        if start is not None and start.is_file():
            rows += _start_rows(ctx, base, start, dataset, arch)
        pairwise = {**base, "method": "pairwise"}
        pairs = list(itertools.combinations(range(len(paths)), 2))
        if pairs and preds:
            dis = np.mean([np.mean(preds[i] != preds[j]) for i, j in pairs])
            rows.append(
                {**pairwise, "split": "test", "metric": "disagreement", "value": float(dis)}
            )
        if pairs:
            flats = [_flat(sd) for sd in ctx.state_dicts(paths)]
            l2 = float(np.mean([np.linalg.norm(flats[i] - flats[j]) for i, j in pairs]))
            norm = float(np.mean([np.linalg.norm(f) for f in flats]))
            for metric, value in (("l2_distance", l2), ("relative_l2_distance", l2 / norm)):
                rows.append({**pairwise, "split": "weights", "metric": metric, "value": value})
    return pd.DataFrame(rows)
