"""Perspective 2 of the paper: weight averaging (soups) against feature averaging
(ensembles), for every dataset, architecture, initialisation, seed and model count."""

from __future__ import annotations

import pandas as pd

from mergelab.compare import run_compare
from mergelab.studies.context import StudyContext
from mergelab.studies.registry import WVF
from mergelab.train import IngredientRecipe

_VOLATILE = ("seconds", "forward_passes", "forward_samples")


def settings(ctx: StudyContext) -> list[tuple[str, str, str, int]]:
    """(dataset, arch, init, seed) of every ingredient set: fine-tunes of one start for
    every dataset and arch, independently initialised models where the config asks."""
    cfg = ctx.config
    out = [(d, a, "shared", s) for s in cfg.seeds for d in cfg.datasets for a in cfg.archs]
    indep = cfg.independent.datasets or cfg.datasets
    out += [
        (d, a, "independent", s) for s in cfg.seeds for d in indep for a in cfg.independent.archs
    ]
    return out


def recipe_of(ctx: StudyContext, dataset: str, arch: str, init: str, seed: int) -> IngredientRecipe:
    return ctx.recipe(dataset, arch, seed=seed, mode=init)


def recipes(ctx: StudyContext) -> list[IngredientRecipe]:
    return [recipe_of(ctx, *s) for s in settings(ctx)]


def run(ctx: StudyContext) -> pd.DataFrame:
    """Every combination for N = 2, 3, 5, 7, 10 of the same ingredients (the first N)."""
    cfg = ctx.config
    frames = []
    for dataset, arch, init, seed in settings(ctx):
        paths = ctx.ingredients(recipe_of(ctx, dataset, arch, init, seed))
        ctx.log(
            f"weights vs features: {arch} on {dataset} ({init}, seed {seed}), N = {cfg.counts()}"
        )
        image = ctx.image(dataset, arch)
        for n in cfg.counts():
            report = run_compare(
                paths[:n],
                arch=arch,
                data=ctx.dataset(dataset),
                in_chans=None if image is None else image.channels,
                img_size=None if image is None else image.size,
                cache_dir=ctx.cache_dir,
                batch_size=cfg.batch_size,
                device=cfg.device,
                progress=False,
            )
            # Timings and pass counts describe this call (a rerun hits the cache), not the
            # experiment: left out so that a rerun writes the same table.
            frame = report.frame.drop(columns=list(_VOLATILE), errors="ignore")
            frame = frame.assign(study=WVF.name, init=init, seed=seed)
            frames.append(ctx.keep_frame(frame, report.examples))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
