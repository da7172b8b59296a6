"""Perspective 3, part one: averaging shrinks max |w| and variance, layer by layer."""

from __future__ import annotations

import pandas as pd

from mergelab.analysis import layer_stats
from mergelab.studies.context import StudyContext
from mergelab.studies.registry import WEIGHT_STATS
from mergelab.studies.weights_vs_features import recipe_of, settings
from mergelab.train import IngredientRecipe

# Buffers are statistics of the data, not weights: they are left out.
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def recipes(ctx: StudyContext) -> list[IngredientRecipe]:
    return [recipe_of(ctx, *s) for s in settings(ctx)] if ctx.config.weight_stats else []


def run(ctx: StudyContext) -> pd.DataFrame:
    """For every setting, the statistics of the first 2 and of all N ingredients (what the
    smallest and the largest soups average) and of their average; for fine-tunes of one
    start and, where the config trains them, independent models (whose average's variance
    the independent-weights formula predicts)."""
    if not ctx.config.weight_stats:
        return pd.DataFrame()
    rows = []
    for dataset, arch, init, seed in settings(ctx):
        sds = ctx.state_dicts(ctx.ingredients(recipe_of(ctx, dataset, arch, init, seed)))
        sds = [{k: v for k, v in sd.items() if not k.endswith(_BUFFERS)} for sd in sds]
        for n in sorted({2, len(sds)} & set(range(2, len(sds) + 1))):
            base = {
                "study": WEIGHT_STATS.name,
                "dataset": dataset,
                "arch": arch,
                "init": init,
                "seed": seed,
                "n_models": n,
                "magnitude": 1.0,
                "split": "weights",
            }
            for s in layer_stats(sds[:n]):
                ndim = sds[0][s["layer"]].dim()
                layer = {**base, "layer": s["layer"], "ndim": ndim, "numel": s["numel"]}
                for i, (mx, var) in enumerate(zip(s["max_abs"], s["var"], strict=True)):
                    rows.append(
                        {**layer, "method": "model", "model": i, "metric": "max_abs", "value": mx}
                    )
                    rows.append(
                        {**layer, "method": "model", "model": i, "metric": "variance", "value": var}
                    )
                average = {
                    "max_abs": s["avg_max_abs"],
                    "variance": s["avg_var"],
                    "predicted_variance": s["var_independent"],
                }
                for metric, value in average.items():
                    rows.append({**layer, "method": "average", "metric": metric, "value": value})
    return pd.DataFrame(rows)
