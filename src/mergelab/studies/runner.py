"""``mergelab study``: train the ingredients, run every perspective, write the report.

Rows from every perspective go into one tidy table (``results.csv``); figures, tables,
``claims.md`` and ``report.html`` are drawn from that table alone. Training runs and model
outputs are cached under OUT (``runs/``, ``cache/``), so a rerun into the same OUT reuses
every finished run and pass.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from mergelab.report import write_all
from mergelab.studies.config import StudyConfig, load_config
from mergelab.studies.context import StudyContext
from mergelab.studies.cross_task import cross_task_rows
from mergelab.studies.magnitude import magnitude_rows
from mergelab.studies.templates import templates_rows
from mergelab.studies.weight_stats import weight_stats_rows
from mergelab.studies.weights_vs_features import weights_vs_features_rows

PERSPECTIVES = (
    ("weights vs features", weights_vs_features_rows),
    ("templates", templates_rows),
    ("cross-task", cross_task_rows),
    ("weight statistics", weight_stats_rows),
    ("magnitude", magnitude_rows),
)


def run_study(
    config: StudyConfig | str | Path | None = None,
    out: str | Path = "mergelab-study",
    *,
    progress: bool = True,
) -> dict[str, Path]:
    """Run the study of ``config`` (a preset name, a YAML path or a config) into ``out``.

    Returns the paths of ``results``, ``claims`` and ``report``.
    """
    if isinstance(config, StudyConfig):
        text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    else:
        config, text = load_config(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = StudyContext(config, out, progress=progress)
    ctx.log(f"study {config.name!r} into {out}/")
    frames = []
    for label, perspective in PERSPECTIVES:
        rows = perspective(ctx)
        ctx.log(f"{label}: {len(rows)} rows")
        frames.append(rows)
    rows = pd.concat([f for f in frames if len(f)], ignore_index=True)
    paths = write_all(
        rows,
        out,
        title=f"mergelab study: {config.name}",
        config=yaml.safe_load(text),
        arrays_dir=ctx.arrays_dir,
    )
    ctx.log(f"report: {paths['report']}")
    return paths
