"""Merging models trained on different tasks (the paper's Table 3): a model of dataset A
averaged with a model of dataset B, from the same initialisation, evaluated on A (and B)."""

from __future__ import annotations

import pandas as pd

from mergelab.data import ImageSpec
from mergelab.engine import merge_state_dicts
from mergelab.evaluate import ModelSource, compute_metrics, primary_metric
from mergelab.studies.context import StudyContext

STUDY = "cross_task"


def cross_task_rows(ctx: StudyContext) -> pd.DataFrame:
    spec = ctx.config.cross_task
    image = ImageSpec(channels=spec.channels, size=spec.img_size)
    rows = []
    for a, b in spec.pairs:
        infos = [ctx.dataset(d).info for d in (a, b)]
        if infos[0].num_classes != infos[1].num_classes or any(i.multilabel for i in infos):
            ctx.log(f"cross-task: skipped {a} + {b} (different label sets)")
            continue
        # One seeded init shared by both (mode "shared" with no pretraining), then each
        # dataset trains its own model from it.
        models = {
            d: ctx.state_dicts(ctx.ingredients(d, spec.arch, n_models=1, image=image))[0]
            for d in (a, b)
        }
        soup = merge_state_dicts("linear", [models[a], models[b]])
        ctx.log(f"cross-task: {spec.arch} of {a} averaged with {b}")
        for target, other in ((a, b), (b, a)):
            ev = ctx.evaluator(target, spec.arch, image)
            metric = primary_metric(False)
            truth = ev.targets("test")
            candidates = {
                "Model A": models[target],
                "Model B": models[other],
                "Uniform Soup": soup,
            }
            for method, sd in candidates.items():
                out = ev.outputs(ModelSource.of(sd, name=f"{method}-{target}"), "test")
                value = compute_metrics(out.logits, truth, multilabel=False, which=(metric,))[
                    metric
                ]
                rows.append(
                    {
                        "study": STUDY,
                        "dataset": target,
                        "other_dataset": other,
                        "arch": spec.arch,
                        "n_models": 2 if method == "Uniform Soup" else 1,
                        "method": method,
                        "magnitude": 1.0,
                        "split": "test",
                        "metric": metric,
                        "value": float(value),
                    }
                )
    return pd.DataFrame(rows)
