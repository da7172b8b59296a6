"""Merging models trained on different tasks (the paper's Table 3).

Model A is fine-tuned on task A and model B on task B, both from one start (A's shared
start: the pairs need one input shape, given by the config). Their label sets may differ,
so each keeps its own head; on task A everything is classified by A's head:

* Model A; "B backbone + A head" (the control: B's features, A's classifier);
* Uniform Soup: the average of the two backbones, with A's head;
* Ens Logits: the mean of the logits of Model A and of "B backbone + A head";
* Ens Features: the mean of the two backbones' features, through A's head.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from mergelab.data import ImageSpec
from mergelab.engine import merge_state_dicts
from mergelab.evaluate import ModelSource, compute_metrics, primary_metric
from mergelab.results import correct_examples
from mergelab.studies.context import StudyContext
from mergelab.studies.registry import CROSS_TASK
from mergelab.train import IngredientRecipe

_START = ("source", "pretrain", "init", "head")


def _image(ctx: StudyContext) -> ImageSpec:
    spec = ctx.config.cross_task
    return ImageSpec(channels=spec.channels, size=spec.img_size)


def pair_recipes(
    ctx: StudyContext, a: str, b: str, seed: int
) -> tuple[IngredientRecipe, IngredientRecipe]:
    """Model A's recipe, and model B's: B's own fine-tuning from A's start."""
    arch = ctx.config.cross_task.arch
    image = _image(ctx)
    fields = ctx.config.training_for(arch, a)
    start: dict[str, Any] = {k: fields[k] for k in _START if k in fields}
    if start.get("init") is None:
        start["source"] = start.get("source") or a
    ra = ctx.recipe(a, arch, seed=seed, n_models=1, image=image, **start)
    rb = ctx.recipe(b, arch, seed=seed, n_models=1, image=image, **start)
    return ra, rb


def recipes(ctx: StudyContext) -> list[IngredientRecipe]:
    return [
        r
        for seed in ctx.config.seeds
        for a, b in ctx.config.cross_task.pairs
        for r in pair_recipes(ctx, a, b, seed)
    ]


def run(ctx: StudyContext) -> pd.DataFrame:
    spec = ctx.config.cross_task
    image = _image(ctx)
    rows: list[dict[str, Any]] = []
    for seed in ctx.config.seeds:
        for a, b in spec.pairs:
            if any(ctx.dataset(d).info.multilabel for d in (a, b)):
                ctx.log(f"cross-task: skipped {a} + {b} (multi-label data)")
                continue
            ra, rb = pair_recipes(ctx, a, b, seed)
            sds = {
                a: ctx.state_dicts(ctx.ingredients(ra))[0],
                b: ctx.state_dicts(ctx.ingredients(rb))[0],
            }
            ctx.log(f"cross-task: {spec.arch} of {a} and of {b} (seed {seed})")
            for target, other in ((a, b), (b, a)):
                rows += _evaluate(ctx, target, other, sds[target], sds[other], image, seed)
    return pd.DataFrame(rows)


def _evaluate(
    ctx: StudyContext,
    target: str,
    other: str,
    own: dict[str, Any],
    foreign: dict[str, Any],
    image: ImageSpec,
    seed: int,
) -> list[dict[str, Any]]:
    arch = ctx.config.cross_task.arch
    ev = ctx.evaluator(target, arch, image)
    prefix = ev.head_prefix
    head = {k: v for k, v in own.items() if k.startswith(prefix)}
    backbones = [{k: v for k, v in sd.items() if not k.startswith(prefix)} for sd in (own, foreign)]
    borrowed = {**backbones[1], **head}
    soup = {**merge_state_dicts("linear", backbones), **head}
    truth = ev.targets("test")
    out_a = ev.outputs(ModelSource.of(own, name=f"A-{target}"), "test")
    out_b = ev.outputs(ModelSource.of(borrowed, name=f"B-{other}-head-{target}"), "test")
    out_s = ev.outputs(ModelSource.of(soup, name=f"soup-{target}-{other}"), "test", kind="soup")
    logits = {
        "Model A": out_a.logits,
        "B backbone + A head": out_b.logits,
        "Uniform Soup": out_s.logits,
        "Ens Logits": (out_a.logits + out_b.logits) / 2,
        "Ens Features": ev.apply_head((out_a.features + out_b.features) / 2, head),
    }
    metric = primary_metric(False)
    rows = []
    for method, z in logits.items():
        value = compute_metrics(z, truth, multilabel=False, which=(metric,))[metric]
        row = {
            "study": CROSS_TASK.name,
            "dataset": target,
            "other_dataset": other,
            "arch": arch,
            "seed": seed,
            "n_models": 1 if method in ("Model A", "B backbone + A head") else 2,
            "method": method,
            "magnitude": 1.0,
            "split": "test",
            "metric": metric,
            "value": float(value),
        }
        rows.append(ctx.keep(row, correct_examples(z, truth)))
    return rows
