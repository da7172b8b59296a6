"""Merge or ensemble? A recommendation from cheap measurements on the user's own models.

Everything comes from one :func:`mergelab.compare.run_compare`: each model evaluated
once on val and test, the soups (Uniform, Greedy) and the ensembles built from the cached
outputs, with their parameter and FLOP cost. The choice is made on **val** only:

* the options: the best single model and the best merge (1x inference: one model's
  forward pass), the best ensemble (N x);
* the ensemble's advantage over the best merge, ``ens - merge``, with a paired bootstrap
  interval over the val examples (the same resample for both: :mod:`mergelab.report.
  uncertainty`);
* **merge** when that interval reaches down to ``tolerance`` (the accuracy, in points,
  an N-times inference cost is worth to the user; 0 by default: any ensemble advantage
  the noise cannot explain wins) or lower: the merge is as good for 1/N of the cost;
* **ensemble** when the whole interval lies above ``tolerance``;
* and when the best merge is worse than the best single model beyond the noise, merging
  fails (the models do not share a basin, e.g. different starts): the single model is
  the 1x option, and it replaces the merge in the comparison.

Test accuracy is reported next to each option, never used to choose. With ``base`` (the
checkpoint the models were fine-tuned from), the weight-only pairwise metrics of
``mergelab diagnose`` (task-vector cosine, L2, ...) of the best model against each other
model are added as evidence: streamed, no data needed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mergelab.atomic import atomic_write_text
from mergelab.checks import (
    claim_output_folder,
    finite_number,
    output_file,
    output_folder,
    written_by,
)
from mergelab.errors import ConfigError
from mergelab.report.uncertainty import LEVEL, Unit, pooled_interval

__all__ = ["ADVICE_FILE", "Advice", "Option", "advise"]

ADVICE_FILE = "advice.json"
MERGE, ENSEMBLE, SINGLE = "merge", "ensemble", "single"


@dataclass(frozen=True)
class Option:
    """One way to deploy the models: its val and test accuracy, and its inference cost
    (parameters and forward FLOPs per example, and relative to one model)."""

    name: str
    kind: str
    val_accuracy: float
    test_accuracy: float
    params: int
    flops: int
    relative_cost: float
    members: str


@dataclass
class Advice:
    """The recommendation, the options it chose among, and the evidence."""

    recommendation: str
    """``merge``, ``ensemble`` or ``single``."""
    choice: str
    """The recommended option's name (e.g. "Greedy Soup")."""
    reason: str
    options: list[Option]
    ensemble_gain: dict[str, float]
    """Best ensemble minus best 1x option on val (points): estimate, low, high, level."""
    merge_loss: dict[str, float]
    """Best merge minus best single model on val (points), with its interval."""
    tolerance: float
    evidence: list[str] = field(default_factory=list)
    pairwise: dict[str, dict[str, float]] = field(default_factory=dict)
    """With a base: the weight metrics of the best model against each other model."""
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {**written_by("advise"), **asdict(self)}
        out["options"] = [asdict(o) for o in self.options]
        return out

    def to_json(self) -> str:
        return json.dumps(_jsonable(self.to_dict()), indent=2, sort_keys=False) + "\n"

    def table(self) -> str:
        """The options, the recommendation and the evidence, as a person reads them."""
        lines = [f"{'option':<28} {'kind':<9} {'val acc':>8} {'test acc':>9} {'cost':>6}"]
        for o in self.options:
            lines.append(
                f"{o.name:<28} {o.kind:<9} {100 * o.val_accuracy:>7.2f}% "
                f"{100 * o.test_accuracy:>8.2f}% {o.relative_cost:>5.1f}x"
            )
        lines += ["", f"recommendation: {self.recommendation.upper()} ({self.choice})", self.reason]
        lines += [f"  - {e}" for e in self.evidence]
        return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _options(frame: pd.DataFrame) -> tuple[list[Option], dict[str, int]]:
    """Every individual, merge and ensemble of the comparison as an option, and the
    frame index of each option's val accuracy row (for its per-example vector)."""
    acc = frame[frame["metric"] == "accuracy"]
    unit_flops = float(acc[acc["kind"] == "individual"]["flops"].max())
    options, val_rows = [], {}
    for (method, members), g in acc.groupby(["method", "members"], sort=False):
        if g["kind"].iloc[0] not in ("individual", "merge", "ensemble"):
            continue
        if method == "Best Individual":
            continue  # the individuals are listed themselves
        if g["kind"].iloc[0] != "individual" and int(g["n_members"].iloc[0]) < 2:
            continue  # a greedy soup or ensemble that kept one model is that model
        val, test = g[g["split"] == "val"], g[g["split"] == "test"]
        if val.empty:
            continue
        kind = {"individual": SINGLE}.get(str(g["kind"].iloc[0]), str(g["kind"].iloc[0]))
        name = f"{method} ({members})" if method == "Individual" else str(method)
        flops = int(val["flops"].iloc[0])
        options.append(
            Option(
                name=name,
                kind=kind,
                val_accuracy=float(val["value"].iloc[0]),
                test_accuracy=float(test["value"].iloc[0]) if len(test) else math.nan,
                params=int(val["params"].iloc[0]),
                flops=flops,
                relative_cost=flops / unit_flops if unit_flops > 0 else math.nan,
                members=str(members),
            )
        )
        val_rows[name] = int(val.index[0])
    return options, val_rows


def _best(options: Sequence[Option], kind: str) -> Option | None:
    """The option of ``kind`` with the best val accuracy (the cheapest, then the first,
    on a tie). Merges and ensembles have two members at least: one that kept a single
    model is that model, listed as such."""
    pool = [o for o in options if o.kind == kind]
    if not pool:
        return None
    return max(pool, key=lambda o: (o.val_accuracy, -o.flops, -pool.index(o)))


def _gain(examples: dict[int, np.ndarray], rows: dict[str, int], a: Option, b: Option, name: str):
    """``a - b`` on val in points: estimate and paired bootstrap interval."""
    d = examples[rows[a.name]].astype(np.float64) - examples[rows[b.name]].astype(np.float64)
    iv, _ = pooled_interval([Unit(f"advise/{name}", (d,))])
    iv = iv.scaled(100.0)
    return {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "level": LEVEL}


def advise(
    models: Sequence[str | os.PathLike[str]],
    *,
    arch: str,
    data: str,
    base: str | os.PathLike[str] | None = None,
    tolerance: float = 0.0,
    out: str | os.PathLike[str] | None = None,
    json_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
    **compare_options: Any,
) -> Advice:
    """Recommend merging (and how) or ensembling ``models`` on ``data`` (see the module
    docstring for the rule). ``compare_options`` go to :func:`mergelab.compare.run_compare`
    (``head``, ``img_size``, ``in_chans``, ``batch_size``, ``seed``, ``cache_dir``,
    ``strict_greedy``, ``device``, ``num_classes``)."""
    from mergelab.compare import run_compare

    if len(models) < 2:
        raise ConfigError(f"advise: give at least two models (got {len(models)})")
    finite_number("--tolerance", tolerance, ConfigError)
    if tolerance < 0:
        raise ConfigError(f"--tolerance {tolerance:g}: must be >= 0 (points of accuracy)")
    _check_models(models, base)
    inputs = [*models, *([base] if base is not None else [])]
    folder = output_folder(Path(out).expanduser(), writes=(ADVICE_FILE,)) if out else None
    if folder is not None:
        output_file(folder / ADVICE_FILE, inputs, "--out", in_checked_folder=True)
    json_file = (
        output_file(json_path, inputs, "--json", command="advise")
        if json_path is not None
        else None
    )
    report = run_compare(list(models), arch=arch, data=data, progress=progress, **compare_options)
    if not (report.frame["metric"] == "accuracy").any():
        raise ConfigError(f"advise: {data} is scored by AUROC (multi-label); advise needs accuracy")
    options, rows = _options(report.frame)
    single, merge, ensemble = (_best(options, k) for k in (SINGLE, MERGE, ENSEMBLE))
    assert single is not None and merge is not None and ensemble is not None
    merge_loss = _gain(report.examples, rows, merge, single, "merge-single")
    evidence = [
        f"{len(models)} models; best single model {single.name}: val "
        f"{100 * single.val_accuracy:.2f}%; best merge {merge.name}: val "
        f"{100 * merge.val_accuracy:.2f}%; best ensemble {ensemble.name}: val "
        f"{100 * ensemble.val_accuracy:.2f}% at {ensemble.relative_cost:.1f}x the cost",
        f"merge - best single model on val: {_points(merge_loss)}",
    ]
    cheap = merge
    if merge_loss["high"] < 0:
        cheap = single
        evidence.append(
            "merging loses accuracy beyond the noise: the models do not average well "
            "(different starts, or too far apart); the best single model is the 1x option"
        )
    elif single.val_accuracy > merge.val_accuracy:
        cheap = single
        evidence.append(
            "the best single model is ahead of the best merge on val (within the noise): "
            "both cost 1x, so the single model is the 1x option"
        )
    frame = report.frame
    greedy = frame[(frame["method"] == "Greedy Soup") & (frame["metric"] == "accuracy")]
    if len(greedy):
        kept = str(greedy["members"].iloc[0]).split(";")
        evidence.append(
            f"greedy soup (on val) kept {len(kept)} of {len(models)} models ({', '.join(kept)})"
        )
    gain = _gain(report.examples, rows, ensemble, cheap, "ensemble-cheap")
    evidence.append(f"ensemble - {cheap.name} on val: {_points(gain)}")
    if gain["low"] > tolerance:
        rec, choice = ENSEMBLE, ensemble
        reason = (
            f"The ensemble is better by more than the tolerance ({tolerance:g} points) beyond "
            f"the noise: worth {ensemble.relative_cost:.1f}x the inference cost."
        )
    else:
        rec, choice = cheap.kind, cheap
        why = (
            "no better than the noise allows"
            if gain["low"] <= 0
            else f"better, but by no more than the tolerance ({tolerance:g} points)"
        )
        reason = (
            f"The ensemble is {why}: {cheap.name} gives its accuracy at 1/"
            f"{ensemble.relative_cost:.0f} of the cost."
        )
    pairwise: dict[str, dict[str, float]] = {}
    if base is not None:
        pairwise = _pairwise(models, base, options, single)
        for name, m in pairwise.items():
            evidence.append(
                f"{name}: task-vector cosine {m['cosine']:.3f}, L2 distance "
                f"{m['l2_distance']:.4g}, magnitude ratio {m['magnitude_ratio']:.3f}"
            )
    advice = Advice(
        rec, choice.name, reason, options, gain, merge_loss, tolerance, evidence, pairwise
    )
    targets = []
    if folder is not None:
        claim_output_folder(folder, "advise")
        targets.append(folder / ADVICE_FILE)
    if json_file is not None:
        targets.append(json_file)
    advice.files = [str(t) for t in targets]
    for t in targets:
        atomic_write_text(t, advice.to_json())
    return advice


def _check_models(models: Sequence[str | os.PathLike[str]], base: Any) -> None:
    """Before any evaluation: no checkpoint given twice, and a base that has the models'
    tensor names and shapes and is not one of them (headers only)."""
    from mergelab.engine.plan import check_inputs
    from mergelab.errors import MergelabError
    from mergelab.io.open import open_checkpoint

    seen: dict[Path, str] = {}
    for m in models:
        key = Path(m).expanduser().resolve()
        if key in seen:
            raise ConfigError(f"--models: {m} given twice (as {seen[key]} too)")
        seen[key] = str(m)
    if base is None:
        return
    if Path(base).expanduser().resolve() in seen:
        raise ConfigError(
            f"--base {base}: is one of the models; give the checkpoint they start from"
        )
    opened = []
    try:
        try:
            opened = [open_checkpoint(m) for m in models]
            base_ckpt = open_checkpoint(base)
            opened.append(base_ckpt)
        except MergelabError as exc:
            raise ConfigError(
                f"--base {base}: {exc}" if "base" not in str(exc) else str(exc)
            ) from None
        try:
            check_inputs(opened[:-1], base_ckpt)
        except MergelabError as exc:
            raise ConfigError(f"--base {base}: does not match the models: {exc}") from None
    finally:
        for c in opened:
            c.close()


def _points(iv: dict[str, float]) -> str:
    return (
        f"{iv['estimate']:+.2f} points [{iv['low']:+.2f}, {iv['high']:+.2f}] "
        f"({iv['level']:.0%} paired bootstrap over val examples)"
    )


def _pairwise(
    models: Sequence[str | os.PathLike[str]],
    base: str | os.PathLike[str],
    options: Sequence[Option],
    single: Option,
) -> dict[str, dict[str, float]]:
    """Weight metrics of the best single model against each other model (streamed)."""
    from mergelab.diagnose import weight_metrics

    names = [o.members for o in options if o.kind == SINGLE]
    best = names.index(single.members) if single.members in names else 0
    out = {}
    for i, path in enumerate(models):
        if i == best:
            continue
        weights, _, _, _ = weight_metrics(models[best], path, base)
        out[f"{names[best]} vs {names[i]}"] = {
            k: float(weights[k]) for k in ("cosine", "l2_distance", "magnitude_ratio", "angle_deg")
        }
    return out
