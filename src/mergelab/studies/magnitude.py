"""Perspective 3, part two: scale every model's parameters by a factor c and see whether
merging or ensembling copes better (the paper: merging is more robust)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mergelab.analysis import scale_models
from mergelab.combine import average_heads, mean_arrays
from mergelab.engine import merge_state_dicts
from mergelab.evaluate import ModelSource, compute_metrics, primary_metric
from mergelab.studies.context import StudyContext

STUDY = "magnitude"
BATCH_STUDY = "magnitude_batches"


def _batch_scores(logits: np.ndarray, targets: np.ndarray, size: int) -> list[float]:
    """Accuracy of consecutive test batches (the paper's per-batch scatter)."""
    return [
        float((logits[i : i + size].argmax(1) == targets[i : i + size]).mean())
        for i in range(0, len(targets) - size + 1, size)
    ]


def magnitude_rows(ctx: StudyContext) -> pd.DataFrame:
    spec = ctx.config.magnitude
    if not spec.enabled:
        return pd.DataFrame()
    targets = spec.targets or [(d, a) for d in ctx.config.datasets for a in ctx.config.archs]
    rows = []
    for dataset, arch in targets:
        ev = ctx.evaluator(dataset, arch)
        multilabel = ev.splits.info.multilabel
        metric = primary_metric(multilabel)
        truth = ev.targets("test")
        sds = ctx.state_dicts(ctx.ingredients(dataset, arch))
        ctx.log(f"magnitude: {arch} on {dataset}, {len(spec.factors)} factors")
        for n in sorted({min(k, len(sds)) for k in spec.n_models if k >= 2}):
            for which in spec.scaled:
                for tensors in spec.tensors:
                    for factor in spec.factors:
                        scaled = scale_models(sds[:n], factor, which=which, tensors=tensors)
                        sources = [
                            ModelSource.of(sd, name=f"x{factor}-{i}") for i, sd in enumerate(scaled)
                        ]
                        outs = [ev.outputs(s, "test") for s in sources]
                        soup = merge_state_dicts("linear", scaled)
                        soup_out = ev.outputs(
                            ModelSource.of(soup, name=f"soup-x{factor}"), "test", kind="soup"
                        )
                        head = average_heads([ev.head_state(sd) for sd in scaled])
                        features = mean_arrays([o.features for o in outs])
                        logits = {
                            "Uniform Soup": soup_out.logits,
                            "Ens Logits": mean_arrays([o.logits for o in outs]),
                            "Ens Features": ev.apply_head(features, head),
                            "Ens Features*": ev.apply_head(features, ev.head_state(scaled[0])),
                        }
                        scores = {
                            m: compute_metrics(z, truth, multilabel=multilabel, which=(metric,))[
                                metric
                            ]
                            for m, z in logits.items()
                        }
                        scores["Perf Ave"] = float(
                            np.mean(
                                [
                                    compute_metrics(
                                        o.logits, truth, multilabel=multilabel, which=(metric,)
                                    )[metric]
                                    for o in outs
                                ]
                            )
                        )
                        common = {
                            "study": STUDY,
                            "dataset": dataset,
                            "arch": arch,
                            "n_models": n,
                            "magnitude": float(factor),
                            "split": "test",
                            "metric": metric,
                            "scaled": which,
                            "tensors": tensors,
                        }
                        rows += [
                            {**common, "method": m, "value": float(v)} for m, v in scores.items()
                        ]
                        if (
                            factor in spec.batch_factors
                            and which == spec.scaled[0]
                            and tensors == spec.tensors[0]
                            and not multilabel
                        ):
                            for method in ("Uniform Soup", "Ens Logits"):
                                for b, value in enumerate(
                                    _batch_scores(logits[method], truth, spec.batch_size)
                                ):
                                    rows.append(
                                        {
                                            **common,
                                            "study": BATCH_STUDY,
                                            "method": method,
                                            "metric": "accuracy",
                                            "value": value,
                                            "batch": b,
                                        }
                                    )
    return pd.DataFrame(rows)
