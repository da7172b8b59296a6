"""``compare``: evaluate N checkpoints once, then score every merge and ensemble of them.

Each model runs once on val and once on test (cached on disk by content, so a second
comparison runs nothing); ensembles are computed from those outputs; only soups, being new
weights, get passes of their own. The result is a tidy table, one row per
(method, split, metric), with what each method costs at inference (parameters, FLOPs).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mergelab.combine import METHODS, Combination, Ingredient, rank_by_score, run_combinations
from mergelab.data import DatasetSplits, ImageSpec, load_dataset
from mergelab.errors import MergeError
from mergelab.evaluate import (
    Evaluator,
    ModelSource,
    atomic_write_bytes,
    compute_metrics,
    default_cache_dir,
    primary_metric,
)
from mergelab.results import RESULT_COLUMNS, correct_examples

__all__ = [
    "EXTRA_COLUMNS",
    "RESULT_COLUMNS",
    "CompareReport",
    "compare",
    "run_compare",
    "write_results",
]

STUDY = "compare"
SPLITS = ("val", "test")
EXTRA_COLUMNS = (
    "kind",
    "n_members",
    "members",
    "params",
    "flops",
    "forward_passes",
    "forward_samples",
    "seconds",
)

ModelLike = str | os.PathLike[str] | Mapping[str, Any] | ModelSource


@dataclass
class CompareReport:
    """Everything a comparison produced: the table, and how much work it took.

    ``timings`` (seconds): ``load`` (data, hashes), ``evaluate`` (every model on val and test),
    ``combine`` (all combinations, soup passes included), ``soup_passes`` (the forward passes
    of merged models only, part of ``combine``), ``cost`` (parameter/FLOP counting), ``total``.
    ``passes``: split-passes, batches and samples by kind (``model``, ``soup``, ``bn``).
    ``examples``: for each row of ``frame`` (by index) whose metric is accuracy, the
    per-example scores whose mean is its value (1 = correct; "Perf Ave": the share of the
    models that are correct), for paired intervals.
    """

    frame: pd.DataFrame
    timings: dict[str, float]
    passes: dict[str, dict[str, int]]
    notes: list[str]
    files: list[Path]
    cache_dir: Path
    ingredients: list[Ingredient]
    combinations: dict[str, Combination]
    evaluator: Evaluator = field(repr=False)
    examples: dict[int, np.ndarray] = field(default_factory=dict, repr=False)


def _names(sources: Sequence[ModelSource]) -> None:
    """Make model names unique (two ``model.safetensors`` in different folders)."""
    seen: dict[str, int] = {}
    for s in sources:
        seen[s.name] = seen.get(s.name, 0) + 1
    counts: dict[str, int] = {}
    for s in sources:
        if seen[s.name] > 1:
            counts[s.name] = counts.get(s.name, 0) + 1
            s.name = f"{s.name}#{counts[s.name]}"


def _spec(splits: DatasetSplits, in_chans: int | None, img_size: int | None) -> ImageSpec | None:
    """The model's input: native channels and size unless ``in_chans``/``img_size`` say."""
    if in_chans is None and img_size is None:
        return None
    info = splits.info
    return ImageSpec(
        channels=in_chans if in_chans is not None else info.channels,
        size=img_size if img_size is not None else info.image_size[0],
    )


def _single_class_notes(ev: Evaluator) -> list[str]:
    """Multi-label: name the labels AUROC skips because a split has one class only."""
    notes = []
    for split in SPLITS:
        t = ev.targets(split)
        pos = (t > 0.5).sum(axis=0)
        bad = [int(j) for j in np.flatnonzero((pos == 0) | (pos == len(t)))]
        if bad:
            notes.append(
                f"AUROC on {split}: skipped {len(bad)} label(s) with a single class "
                f"(label index {', '.join(map(str, bad))}); the mean is over the others"
            )
    return notes


def run_compare(
    models: Sequence[ModelLike],
    *,
    arch: str,
    num_classes: int | None = None,
    data: str | DatasetSplits,
    out: str | os.PathLike[str] | None = None,
    head: str | None = None,
    img_size: int | None = None,
    in_chans: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    strict_greedy: bool = False,
    bn_recalibrate: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    bn_batches: int | None = None,
    device: str | None = None,
) -> CompareReport:
    """:func:`compare` with its timings, pass counts and intermediate objects."""
    t_start = time.perf_counter()
    if not models:
        raise MergeError("compare: give at least one model")
    splits = data if isinstance(data, DatasetSplits) else load_dataset(data, seed=seed)
    info = splits.info
    if num_classes is not None and num_classes != info.num_classes:
        raise MergeError(
            f"num_classes={num_classes} but {info.name} has {info.num_classes} "
            f"{'labels' if info.multilabel else 'classes'}"
        )
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    ev = Evaluator(
        splits,
        arch=arch,
        num_classes=num_classes,
        head=head,
        spec=_spec(splits, in_chans, img_size),
        batch_size=batch_size,
        cache_dir=cache_root,
        device=device,
        progress=progress,
        bn_batches=bn_batches,
    )
    sources = [ModelSource.of(m, index=i) for i, m in enumerate(models)]
    _names(sources)
    for s in sources:
        _ = s.digest  # hash now: a missing file fails before any work
    ev.model  # noqa: B018 - build once; a bad arch/head fails before any pass
    t_loaded = time.perf_counter()

    counter = ev.counter
    ingredients: list[Ingredient] = []
    own_passes: list[tuple[int, int, float]] = []
    for s in sources:
        n0 = len(counter.records)
        ingredients.append(Ingredient(s, {split: ev.outputs(s, split) for split in SPLITS}))
        new = counter.records[n0:]
        own_passes.append((len(new), sum(r.samples for r in new), sum(r.seconds for r in new)))
    t_evaluated = time.perf_counter()

    combos = run_combinations(ev, ingredients, strict=strict_greedy, bn_recalibrate=bn_recalibrate)
    t_combined = time.perf_counter()
    params, flops = ev.cost()
    t_cost = time.perf_counter()

    multilabel = info.multilabel
    metric_names = (primary_metric(multilabel), "nll", "ece")
    notes = _single_class_notes(ev) if multilabel else []
    rows: list[dict[str, Any]] = []
    examples: dict[int, np.ndarray] = {}

    def add(
        method: str,
        kind: str,
        split: str,
        metrics: Mapping[str, float],
        per_example: np.ndarray | None = None,
        **extra: Any,
    ) -> None:
        for name in metric_names:
            if name == "accuracy" and per_example is not None:
                examples[len(rows)] = per_example
            rows.append(
                {
                    "study": STUDY,
                    "dataset": info.name,
                    "arch": arch,
                    "n_models": len(ingredients),
                    "method": method,
                    "magnitude": 1.0,
                    "split": split,
                    "metric": name,
                    "value": float(metrics[name]),
                    "kind": kind,
                    **extra,
                }
            )

    def score(logits: np.ndarray, split: str) -> dict[str, float]:
        return compute_metrics(logits, ev.targets(split), multilabel=multilabel)

    def correct(logits: np.ndarray, split: str) -> np.ndarray | None:
        return None if multilabel else correct_examples(logits, ev.targets(split))

    individual = [{s: score(i.outputs[s].logits, s) for s in SPLITS} for i in ingredients]
    each = [{s: correct(i.outputs[s].logits, s) for s in SPLITS} for i in ingredients]
    for k, (ing, m, (n_pass, n_samp, secs)) in enumerate(
        zip(ingredients, individual, own_passes, strict=True)
    ):
        for s in SPLITS:
            add(
                "Individual",
                "individual",
                s,
                m[s],
                each[k][s],
                n_members=1,
                members=ing.name,
                params=params,
                flops=flops,
                forward_passes=n_pass,
                forward_samples=n_samp,
                seconds=secs,
            )
    everyone = ";".join(i.name for i in ingredients)
    for s in SPLITS:
        ave = {k: float(np.mean([m[s][k] for m in individual])) for k in metric_names}
        share = None if multilabel else np.mean([e[s] for e in each], axis=0).astype(np.float32)
        add(
            "Perf Ave",
            "summary",
            s,
            ave,
            share,
            n_members=len(ingredients),
            members=everyone,
            params=params,
            flops=flops,
            forward_passes=0,
            forward_samples=0,
            seconds=0.0,
        )
    main = primary_metric(multilabel)
    best = rank_by_score([m["val"][main] for m in individual])[0]  # chosen on val only
    for s in SPLITS:
        add(
            "Best Individual",
            "individual",
            s,
            individual[best][s],
            each[best][s],
            n_members=1,
            members=ingredients[best].name,
            params=params,
            flops=flops,
            forward_passes=0,
            forward_samples=0,
            seconds=0.0,
        )
    for method in METHODS:
        comb = combos.get(method)
        if comb is None:
            continue
        for s in SPLITS:
            add(
                method,
                comb.kind,
                s,
                score(comb.logits[s], s),
                correct(comb.logits[s], s),
                n_members=len(comb.members),
                members=";".join(ingredients[i].name for i in comb.members),
                params=params * comb.n_inference_models,
                flops=flops * comb.n_inference_models,
                forward_passes=comb.forward_passes,
                forward_samples=comb.forward_samples,
                seconds=comb.seconds,
            )
    frame = pd.DataFrame(rows, columns=[*RESULT_COLUMNS, *EXTRA_COLUMNS])

    timings = {
        "load": t_loaded - t_start,
        "evaluate": t_evaluated - t_loaded,
        "combine": t_combined - t_evaluated,
        "soup_passes": counter.seconds("soup") + counter.seconds("bn"),
        "cost": t_cost - t_combined,
    }
    passes = {
        kind: {
            "passes": counter.passes(kind),
            "batches": counter.batches(kind),
            "samples": counter.samples(kind),
        }
        for kind in ("model", "soup", "bn")
    }
    files: list[Path] = []
    if out is not None:
        files = write_results(frame, out)
    timings["total"] = time.perf_counter() - t_start
    frame.attrs.update(
        {"timings": timings, "passes": passes, "notes": notes, "cache_dir": str(cache_root)}
    )
    return CompareReport(
        frame, timings, passes, notes, files, cache_root, ingredients, combos, ev, examples
    )


def write_results(frame: pd.DataFrame, out: str | os.PathLike[str]) -> list[Path]:
    """Write ``OUT/results.csv`` and ``OUT/results.json`` (records; NaN as null), each
    atomically: a reader never sees a half-written file, a failure leaves the old one."""
    folder = Path(out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    csv_text = frame.to_csv(index=False, lineterminator="\n")
    records = [
        {k: _json_value(v) for k, v in row.items()} for row in frame.to_dict(orient="records")
    ]
    json_text = json.dumps(records, indent=1, allow_nan=False) + "\n"
    csv_path = atomic_write_bytes(folder / "results.csv", lambda fh: fh.write(csv_text.encode()))
    json_path = atomic_write_bytes(folder / "results.json", lambda fh: fh.write(json_text.encode()))
    return [csv_path, json_path]


def _json_value(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def compare(
    models: Sequence[ModelLike],
    *,
    arch: str,
    num_classes: int | None = None,
    data: str | DatasetSplits,
    out: str | os.PathLike[str] | None = None,
    head: str | None = None,
    img_size: int | None = None,
    in_chans: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    strict_greedy: bool = False,
    bn_recalibrate: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    bn_batches: int | None = None,
    device: str | None = None,
) -> pd.DataFrame:
    """Compare N checkpoints of one architecture: individual models, "Perf Ave", "Best
    Individual", Uniform/Greedy Soup and the five ensembles, on val and test.

    ``models`` are checkpoint paths or state dicts; ``data`` a ``load_dataset`` spec (split
    with ``seed``) or loaded ``DatasetSplits``. Inputs are the dataset's native channels and
    size unless ``in_chans``/``img_size`` are given. Selection (best individual, greedy
    choices) uses val only; greedy ensembles take the greedy soup's members, their "(own)"
    variants search on their own. ``bn_recalibrate``: re-estimate BatchNorm statistics of
    merged models on train data. Outputs are cached under ``cache_dir`` (default
    :func:`default_cache_dir`).

    Returns tidy rows: :data:`RESULT_COLUMNS` then :data:`EXTRA_COLUMNS`; the metric is
    ``accuracy`` (``auroc`` for multi-label data), ``nll`` and ``ece``. With ``out``, also
    writes ``OUT/results.csv`` and ``OUT/results.json``. ``frame.attrs`` holds timings, pass
    counts and notes.
    """
    return run_compare(
        models,
        arch=arch,
        num_classes=num_classes,
        data=data,
        out=out,
        head=head,
        img_size=img_size,
        in_chans=in_chans,
        batch_size=batch_size,
        seed=seed,
        strict_greedy=strict_greedy,
        bn_recalibrate=bn_recalibrate,
        cache_dir=cache_dir,
        progress=progress,
        bn_batches=bn_batches,
        device=device,
    ).frame
