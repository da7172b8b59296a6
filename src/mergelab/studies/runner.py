"""``mergelab study``: train the ingredients, run every study, write the report.

Every ingredient run any study needs is trained first (``workers`` processes at a time),
then each registered study adds its rows to one tidy table (``results.csv``) and its
per-example outcomes to ``outcomes.npz``; figures, tables, claims and ``report.html`` are
drawn from those two files alone. Training runs and model outputs are cached under OUT
(``runs/``, ``cache/``), so a rerun into the same OUT reuses every finished run and pass.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from mergelab.atomic import atomic_write_text
from mergelab.checks import claim_output_folder, output_folder, removed_if_left_empty
from mergelab.executor import Executor, UnitRecord, make_executor
from mergelab.report import Results, write_all
from mergelab.studies.config import StudyConfig, load_config
from mergelab.studies.context import StudyContext
from mergelab.studies.registry import STUDIES
from mergelab.studies.validate import check_study

# What a study writes into OUT besides runs/ and cache/ (named by content hashes).
WRITES = (
    "results.csv",
    "units.csv",
    "outcomes.npz",
    "claims.md",
    "report.html",
    "figures/*.png",
    "arrays/*.npz",
)


def run_study(
    config: StudyConfig | str | Path | None = None,
    out: str | Path = "mergelab-study",
    *,
    progress: bool = True,
    workers: int = 1,
    executor: str | Executor = "local",
    address: str | None = None,
    units_per_gpu: int = 1,
) -> dict[str, object]:
    """Run the study of ``config`` (a preset name, a YAML path or a config) into ``out``.

    Training runs and ingredient outputs are units of ``executor``
    (:mod:`mergelab.executor`): ``"local"`` runs ``workers`` at a time in worker processes
    (one: in this process), ``"ray"`` on Ray (``address``: an existing cluster; None: a
    local instance with ``workers`` cores), or an :class:`Executor` you made. With GPUs,
    ``units_per_gpu`` units share each. Results are the same whichever runs them; what ran
    where, with its attempts, is written to ``units.csv``.

    Returns the paths of ``results``, ``outcomes``, ``claims`` and ``report``, and under
    ``sanity_failures`` the keys of the sanity checks that failed (empty when all held).

    The config is checked first (:func:`mergelab.studies.validate.check_study`: fields,
    arch names, models, dataset and checkpoint paths), then ``out`` (not a file, writable,
    and, unless a mergelab command made or marked it, holding no file of the names a study
    writes that mergelab did not write): a problem raises one ``ConfigError`` /
    ``MergelabError`` line before any folder is created or anything trained. A run that
    fails later removes ``out`` again if it created it and no file was written into it.
    """
    if isinstance(config, StudyConfig):
        text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    else:
        config, text = load_config(config)
    out = Path(out)
    check_study(config)
    output_folder(out, writes=WRITES)
    if not isinstance(executor, Executor):
        executor = make_executor(
            executor,
            workers=max(1, workers),
            address=address,
            gpus=local_gpus(config.device) if executor == "local" else 0,
            units_per_gpu=units_per_gpu,
        )
    with removed_if_left_empty(out), executor:  # workers stop before the folder check
        claim_output_folder(out, "study")
        ctx = StudyContext(config, out, progress=progress, workers=max(1, workers))
        ctx.executor = executor
        first = len(executor.records)
        try:
            ctx.log(f"study {config.name!r} into {out}/ ({executor.describe()})")
            ctx.prepare([r for study in STUDIES.values() for r in study.needed_recipes(ctx)])
            ctx.evaluate_ahead([w for s in STUDIES.values() for w in s.needed_outputs(ctx)])
            return _run(ctx, text)
        finally:
            _write_units(out, executor.records[first:])


def local_gpus(device: str | None) -> int:
    """GPUs a local executor spreads units over: all CUDA devices torch sees when the
    config leaves the device unset or names CUDA without an index, else none (one named
    GPU, ``cuda:1``, is the device of every unit already)."""
    import torch

    if device not in (None, "cuda") or not torch.cuda.is_available():
        return 0
    return torch.cuda.device_count()


def _write_units(out: Path, records: list[UnitRecord]) -> None:
    """``units.csv``: every unit a run of the study started (cached ones never start), with
    its attempts, seconds, host:pid[:device] and errors; a rerun's units replace their
    earlier rows and the other rows stay, so the file keeps every unit's last run. Not
    written when no unit finished or failed."""
    if not any(r.status in ("done", "failed") for r in records):
        return
    path = out / "units.csv"
    frame = pd.DataFrame([r.row() for r in records], columns=list(UnitRecord.COLUMNS))
    if path.is_file():
        try:
            old = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError):
            old = None
        if old is not None and list(old.columns) == list(UnitRecord.COLUMNS):
            old = old[~old["key"].isin(set(frame["key"]))]
            frame = pd.concat([old, frame.astype(str)], ignore_index=True)
    atomic_write_text(path, frame.to_csv(index=False))


def _run(ctx: StudyContext, text: str) -> dict[str, object]:
    config, out = ctx.config, ctx.out
    frames = []
    for study in STUDIES.values():
        rows = study.run(ctx)
        if rows is None:
            continue
        ctx.log(f"{study.name}: {len(rows)} rows")
        if len(rows):
            frames.append(rows)
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    paths = write_all(
        Results(rows, ctx.outcomes),
        out,
        title=f"mergelab study: {config.name}",
        config=yaml.safe_load(text),
        arrays_dir=ctx.arrays_dir,
    )
    failed = paths.get("sanity_failures") or []
    if failed:
        ctx.log(f"SANITY CHECKS FAILED: {', '.join(failed)} (a defect; see the report)")
    ctx.log(f"report: {paths['report']}")
    return paths
