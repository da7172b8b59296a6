"""Perspective 1: weights as templates. A linear classifier's rows, reshaped to the image,
look like the class-mean images; averaging classifiers blends the templates."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from mergelab.analysis import (
    averaged_templates,
    class_means,
    half_mixed_templates,
    kernel_grid,
    linear_templates,
    template_correlation,
)
from mergelab.studies.context import StudyContext

STUDY = "templates"


def _save_npz(path: os.PathLike[str], **arrays: np.ndarray) -> None:
    path = os.fspath(path)
    tmp = f"{path}.partial.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def templates_rows(ctx: StudyContext) -> pd.DataFrame:
    spec = ctx.config.templates
    if not spec.enabled:
        return pd.DataFrame()
    ctx.arrays_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for dataset in ctx.config.datasets:
        splits = ctx.dataset(dataset)
        info = splits.info
        if info.multilabel:
            continue
        shape = (info.channels, *info.image_size)
        shared = ctx.state_dicts(ctx.ingredients(dataset, spec.arch)[:1])[0]
        other = ctx.state_dicts(
            ctx.ingredients(dataset, spec.arch, mode="independent", n_models=1)
        )[0]
        ctx.log(f"templates: {spec.arch} on {dataset}")
        means = class_means(splits.split("train"), info.num_classes)
        templates = linear_templates(shared["head.weight"], shape)
        second = linear_templates(other["head.weight"], shape)
        halves = half_mixed_templates(templates)
        half = info.num_classes // 2
        mixed_means = (means[:half] + means[half : 2 * half]) / 2
        merged_two = averaged_templates(templates, second)
        found = {
            "classifier": template_correlation(templates, means),
            "merged_halves": template_correlation(halves, mixed_means),
            "merged_two_models": template_correlation(merged_two, means),
        }
        for method, values in found.items():
            for cls, value in enumerate(values):
                rows.append(
                    {
                        "study": STUDY,
                        "dataset": dataset,
                        "arch": spec.arch,
                        "n_models": 1 if method == "classifier" else 2,
                        "method": method,
                        "magnitude": 1.0,
                        "split": "train",
                        "metric": "template_correlation",
                        "value": float(value),
                        "class": cls,
                    }
                )
        _save_npz(
            ctx.arrays_dir / f"templates_{dataset}.npz",
            templates=templates,
            class_means=means,
            merged_halves=halves,
            merged_two=merged_two,
        )
        if spec.kernels_arch and spec.kernels_arch in ctx.config.archs:
            sd = ctx.state_dicts(ctx.ingredients(dataset, spec.kernels_arch)[:1])[0]
            first_conv = next((v for v in sd.values() if v.ndim == 4), None)
            if first_conv is not None:
                _save_npz(
                    ctx.arrays_dir / f"kernels_{dataset}_{spec.kernels_arch}.npz",
                    grid=kernel_grid(first_conv),
                )
    return pd.DataFrame(rows)
