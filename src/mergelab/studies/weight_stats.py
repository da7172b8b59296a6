"""Perspective 3, part one: averaging shrinks max |w| and variance, layer by layer."""

from __future__ import annotations

import pandas as pd

from mergelab.analysis import layer_stats
from mergelab.studies.context import StudyContext

STUDY = "weight_stats"


def weight_stats_rows(ctx: StudyContext) -> pd.DataFrame:
    """For every dataset/arch, the statistics of 2 and of all ingredients and their average;
    for shared-start ingredients and, where the config trains them, independent ones (whose
    average's variance the independent-weights formula predicts)."""
    cfg = ctx.config
    if not cfg.weight_stats:
        return pd.DataFrame()
    plans = [(d, a, "shared") for d in cfg.datasets for a in cfg.archs]
    indep_datasets = cfg.independent.datasets or cfg.datasets
    plans += [(d, a, "independent") for d in indep_datasets for a in cfg.independent.archs]
    rows = []
    for dataset, arch, init in plans:
        sds = ctx.state_dicts(ctx.ingredients(dataset, arch, mode=init))
        for n in sorted({2, len(sds)} & set(range(2, len(sds) + 1))):
            base = {
                "study": STUDY,
                "dataset": dataset,
                "arch": arch,
                "n_models": n,
                "magnitude": 1.0,
                "split": "weights",
                "init": init,
            }
            for s in layer_stats(sds[:n]):
                layer = {**base, "layer": s["layer"]}
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
                    "max_abs_bound_holds": float(s["max_abs_bound_holds"]),
                    "variance_bound_holds": float(s["variance_bound_holds"]),
                }
                for metric, value in average.items():
                    rows.append({**layer, "method": "average", "metric": metric, "value": value})
    return pd.DataFrame(rows)
