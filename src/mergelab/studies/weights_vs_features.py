"""Perspective 2 of the paper: weight averaging (soups) against feature averaging
(ensembles), for every dataset, architecture and model count."""

from __future__ import annotations

import pandas as pd

from mergelab.compare import run_compare
from mergelab.studies.context import StudyContext

STUDY = "weights_vs_features"


def weights_vs_features_rows(ctx: StudyContext) -> pd.DataFrame:
    """Every combination for n = 2, 3, 5, 7, 10 of the same ingredients (the first n), from a
    shared start; plus independently initialised ingredients where the config asks."""
    cfg = ctx.config
    frames = []
    plans = [(d, a, "shared") for d in cfg.datasets for a in cfg.archs]
    indep_datasets = cfg.independent.datasets or cfg.datasets
    plans += [(d, a, "independent") for d in indep_datasets for a in cfg.independent.archs]
    for dataset, arch, mode in plans:
        paths = ctx.ingredients(dataset, arch, mode=mode)
        ctx.log(f"weights vs features: {arch} on {dataset} ({mode}), n = {cfg.counts()}")
        for n in cfg.counts():
            report = run_compare(
                paths[:n],
                arch=arch,
                data=ctx.dataset(dataset),
                cache_dir=ctx.cache_dir,
                batch_size=cfg.batch_size,
                device=cfg.device,
                progress=False,
            )
            frame = report.frame.assign(study=STUDY, init=mode)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
