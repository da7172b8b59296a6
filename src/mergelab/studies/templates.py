"""Perspective 1: weights as templates. A linear classifier's rows, reshaped to the image,
look like the class-mean images; averaging classifiers blends the templates.

"Look like" is measured against a control that looks like every class a little: the
grand-mean image (the mean of all training images). Per class: the correlation of the
template with its class mean (raw: the control wins it, correlating 0.8-0.95 with every
class mean); its *own-class margin*, the correlation with its own class mean minus the
mean correlation with the other class means (the control's margins average exactly 0);
and whether it correlates best with its own class mean (the control: 1 class in C).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from mergelab.analysis import (
    averaged_templates,
    class_means,
    half_mixed_templates,
    identified,
    kernel_grid,
    linear_templates,
    own_class_margin,
    template_correlation,
)
from mergelab.atomic import atomic_write
from mergelab.studies.context import StudyContext
from mergelab.studies.registry import TEMPLATES
from mergelab.train import IngredientRecipe


def _save_npz(path: os.PathLike[str], **arrays: np.ndarray) -> None:
    atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))


def _datasets(ctx: StudyContext) -> list[str]:
    return ctx.config.datasets if ctx.config.templates.enabled else []


def recipes(ctx: StudyContext) -> list[IngredientRecipe]:
    spec = ctx.config.templates
    out = []
    for seed in ctx.config.seeds:
        for d in _datasets(ctx):
            out.append(ctx.recipe(d, spec.arch, seed=seed))
            out.append(ctx.recipe(d, spec.arch, seed=seed, mode="independent", n_models=1))
            if spec.kernels_arch and spec.kernels_arch in ctx.config.archs:
                out.append(ctx.recipe(d, spec.kernels_arch, seed=seed))
    return out


def run(ctx: StudyContext) -> pd.DataFrame:
    spec = ctx.config.templates
    if not spec.enabled:
        return pd.DataFrame()
    ctx.arrays_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in ctx.config.seeds:
        for dataset in _datasets(ctx):
            splits = ctx.dataset(dataset)
            info = splits.info
            if info.multilabel:
                continue
            shape = (info.channels, *info.image_size)
            first = ctx.ingredients(ctx.recipe(dataset, spec.arch, seed=seed))[0]
            other = ctx.ingredients(
                ctx.recipe(dataset, spec.arch, seed=seed, mode="independent", n_models=1)
            )[0]
            shared_sd, other_sd = ctx.state_dicts([first, other])
            ctx.log(f"templates: {spec.arch} on {dataset} (seed {seed})")
            train = splits.split("train")
            means = class_means(train, info.num_classes)
            grand = np.nanmean(means, axis=0, keepdims=True).repeat(len(means), axis=0)
            templates = linear_templates(shared_sd["head.weight"], shape)
            second = linear_templates(other_sd["head.weight"], shape)
            halves = half_mixed_templates(templates)
            half = info.num_classes // 2
            mixed_means = (means[:half] + means[half : 2 * half]) / 2
            merged_two = averaged_templates(templates, second)
            found = {
                ("classifier", "template_correlation"): template_correlation(templates, means),
                ("classifier", "identified"): identified(templates, means),
                ("merged_two_models", "template_correlation"): template_correlation(
                    merged_two, means
                ),
                ("merged_two_models", "identified"): identified(merged_two, means),
                ("merged_halves", "template_correlation"): template_correlation(
                    halves, mixed_means
                ),
                ("grand_mean", "template_correlation"): template_correlation(grand, means),
                ("grand_mean", "identified"): identified(grand, means),
                ("classifier", "own_class_margin"): own_class_margin(templates, means),
                ("merged_two_models", "own_class_margin"): own_class_margin(merged_two, means),
                ("grand_mean", "own_class_margin"): own_class_margin(grand, means),
            }
            for (method, metric), values in found.items():
                for cls, value in enumerate(values):
                    rows.append(
                        {
                            "study": TEMPLATES.name,
                            "dataset": dataset,
                            "arch": spec.arch,
                            "seed": seed,
                            "n_models": 2 if method == "merged_two_models" else 1,
                            "method": method,
                            "magnitude": 1.0,
                            "split": "train",
                            "metric": metric,
                            "value": float(value),
                            "class": cls,
                        }
                    )
            suffix = "" if seed == ctx.config.seeds[0] else f"_seed{seed}"
            _save_npz(
                ctx.arrays_dir / f"templates_{dataset}{suffix}.npz",
                templates=templates,
                class_means=means,
                merged_halves=halves,
                merged_two=merged_two,
            )
            if spec.kernels_arch and spec.kernels_arch in ctx.config.archs:
                path = ctx.ingredients(ctx.recipe(dataset, spec.kernels_arch, seed=seed))[0]
                sd = ctx.state_dicts([path])[0]
                first_conv = next((v for v in sd.values() if v.ndim == 4), None)
                if first_conv is not None:
                    _save_npz(
                        ctx.arrays_dir / f"kernels_{dataset}_{spec.kernels_arch}{suffix}.npz",
                        grid=kernel_grid(first_conv),
                    )
    return pd.DataFrame(rows)
