"""How a claim earns its verdict: conditions on pooled contrasts, with intervals.

A claim is one or more :class:`Condition`: a contrast measured in several *units*
(settings: a dataset and architecture at one model count, ...), each unit a per-example
contrast vector per seed. The condition's effect is the mean over units, with a paired
bootstrap interval (:mod:`mergelab.report.uncertainty`). Judged against what the paper
says:

* ``greater``: the effect exceeds ``threshold``. *Supports* when the whole interval lies
  above it, *contradicts* when the whole interval lies below it, *tie* when every
  resample gives exactly the threshold (e.g. two methods that made the same predictions),
  else *within noise*.
* ``less``: the mirror image.
* ``within``: ``|effect| <= threshold`` (two methods match). Supports when the interval
  lies inside ``[-threshold, threshold]``, contradicts when it lies wholly outside.

A claim is *reproduced* when every condition supports it, *contradicted* when any
condition contradicts it, and *inconclusive* otherwise (the noise is larger than the
effect, the methods tie, or the settings disagree: the pooled effect supports the paper
while one group of settings, e.g. one architecture, contradicts it). Each unit is judged
the same way and listed in the details, so a reader sees where the pooled verdict comes
from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from mergelab.report.uncertainty import Interval, Unit, pooled_interval

__all__ = [
    "CONTRADICTED",
    "INCONCLUSIVE",
    "NOT_MEASURED",
    "REPRODUCED",
    "Cells",
    "Condition",
    "Judgement",
    "Verdict",
    "combine",
    "judge",
    "units_by",
]

Verdict = Literal["reproduced", "contradicted", "inconclusive", "not measured"]
REPRODUCED: Verdict = "reproduced"
CONTRADICTED: Verdict = "contradicted"
INCONCLUSIVE: Verdict = "inconclusive"
NOT_MEASURED: Verdict = "not measured"

Judgement = Literal["supports", "contradicts", "within noise", "tie", "no interval", "mixed"]
Direction = Literal["greater", "less", "within"]
_TOL = 1e-12


def judge(iv: Interval | None, direction: Direction, threshold: float = 0.0) -> Judgement:
    """What one interval says about ``effect > threshold`` (greater), ``effect <
    threshold`` (less) or ``|effect| <= threshold`` (within)."""
    if iv is None or not (math.isfinite(iv.low) and math.isfinite(iv.high)):
        return "no interval"
    lo, hi = iv.low, iv.high
    if direction == "within":
        if -threshold - _TOL <= lo and hi <= threshold + _TOL:
            return "supports"
        if lo > threshold + _TOL or hi < -threshold - _TOL:
            return "contradicts"
        return "within noise"
    if abs(lo - threshold) <= _TOL and abs(hi - threshold) <= _TOL:
        return "tie"
    above, below = lo > threshold + _TOL, hi < threshold - _TOL
    if direction == "greater":
        return "supports" if above else "contradicts" if below else "within noise"
    return "supports" if below else "contradicts" if above else "within noise"


MIN_ITEMS = 5
"""A unit resampled over fewer items (tensors, classes) than this gets no interval: a
bootstrap over one to four items says nothing about their spread."""


@dataclass
class Condition:
    """One contrast, measured in several units, and what the paper says of its mean.

    ``units``: (labels of the unit, its :class:`Unit` or None when it has no per-example
    outcomes, its point estimate). ``scale`` turns contrast units into the reported unit
    (100: fractions to points). ``pool``: a unit holding every item of every unit, whose
    mean is the pooled effect (for items such as tensors, pooled directly instead of
    averaging per-setting means). ``group_by``: a label (e.g. "arch") whose groups are
    also pooled on their own; when the whole supports the paper but a group contradicts
    it, the settings disagree and the condition is "mixed".
    """

    label: str
    direction: Direction
    threshold: float = 0.0
    unit: str = "points"
    scale: float = 100.0
    group_by: str | None = None
    pool: Unit | None = None
    basis: str = ""
    """What the interval is, when not a bootstrap over per-example outcomes (the
    description says it in place of the level)."""
    units: list[tuple[dict[str, Any], Unit | None, float]] = field(default_factory=list)
    groups: list[tuple[str, Interval | None, Judgement]] = field(default_factory=list, init=False)

    def add(self, labels: dict[str, Any], unit: Unit | None, estimate: float) -> None:
        if unit is not None and unit.n_examples < MIN_ITEMS:
            unit = None
        self.units.append((labels, unit, estimate))

    def _pooled(self, idx: list[int]) -> tuple[Interval | None, dict[int, Interval]]:
        """Pooled interval of the units ``idx`` (those with outcomes), and each one's."""
        with_iv = [i for i in idx if self.units[i][1] is not None]
        if not with_iv:
            return None, {}
        pooled, each = pooled_interval([self.units[i][1] for i in with_iv])  # type: ignore[misc]
        return pooled.scaled(self.scale), {
            i: iv.scaled(self.scale) for i, iv in zip(with_iv, each, strict=True)
        }

    def evaluate(self) -> tuple[Judgement, Interval | None, pd.DataFrame]:
        """The pooled judgement and interval (in reported units), and one row per unit."""
        every = list(range(len(self.units)))
        pooled, per_unit = self._pooled(every)
        if self.pool is not None:
            pooled = None
            if self.pool.n_examples >= MIN_ITEMS:
                pooled = pooled_interval([self.pool])[0].scaled(self.scale)
        rows = []
        for i, (labels, _, est) in enumerate(self.units):
            iv = per_unit.get(i)
            rows.append(
                {
                    "condition": self.label,
                    **labels,
                    "estimate": est * self.scale,
                    "low": iv.low if iv else np.nan,
                    "high": iv.high if iv else np.nan,
                    "judgement": judge(iv, self.direction, self.threshold),
                }
            )
        judgement: Judgement = judge(pooled, self.direction, self.threshold)
        details = pd.DataFrame(rows)
        self.groups = self._groups()
        if judgement == "supports" and any(j == "contradicts" for _, _, j in self.groups):
            judgement = "mixed"
        return judgement, pooled, details

    def _groups(self) -> list[tuple[str, Interval | None, Judgement]]:
        if self.group_by is None:
            return []
        names = list(dict.fromkeys(str(labels.get(self.group_by)) for labels, _, _ in self.units))
        if len(names) < 2:
            return []
        out = []
        for name in names:
            idx = [
                i for i, (lab, _, _) in enumerate(self.units) if str(lab.get(self.group_by)) == name
            ]
            iv, _ = self._pooled(idx)
            out.append((name, iv, judge(iv, self.direction, self.threshold)))
        return out

    def describe(self, judgement: Judgement, pooled: Interval | None, details: pd.DataFrame) -> str:
        """One sentence: the pooled effect with its interval and the per-unit tally."""
        n = len(self.units)
        est = float(np.mean([e for _, _, e in self.units])) * self.scale if n else float("nan")
        sign = {"greater": ">", "less": "<", "within": "|.| <="}[self.direction]
        target = f"{sign} {self.threshold:g}"
        f = "{:+.2f}" if self.unit == "points" else "{:+.3f}"
        if pooled is None:
            return (
                f"{self.label} = {f.format(est)} {self.unit} (mean of {n} settings; no "
                f"interval: no per-example outcomes or fewer than {MIN_ITEMS} items; paper: "
                f"{target}): {judgement}"
            )
        tally = details["judgement"].value_counts()
        parts = [
            f"{int(tally[k])} {k}"
            for k in ("supports", "contradicts", "within noise", "tie", "no interval")
            if k in tally
        ]
        low, high = f.format(pooled.low), f.format(pooled.high)
        what = f"mean of {n} setting{'s' if n != 1 else ''}"
        if self.pool is not None:
            what = f"{self.pool.n_examples} items of {n} setting{'s' if n != 1 else ''}"
        kind = f"{pooled.level:.0%} interval"
        if self.basis:
            kind = self.basis
        text = (
            f"{self.label} = {f.format(pooled.estimate)} {self.unit} [{low}, {high}] "
            f"({kind}, {what}; paper: {target}): {judgement}; "
            "per setting: " + ", ".join(parts)
        )
        if self.groups:
            text += f"; by {self.group_by}: " + ", ".join(
                f"{name} {f.format(iv.estimate) if iv else 'n/a'} ({j})"
                for name, iv, j in self.groups
            )
        if judgement == "mixed":
            text += " (the pooled effect supports the paper but a group contradicts it)"
        return text


def combine(judgements: Iterable[Judgement]) -> Verdict:
    """Reproduced if every condition supports the claim, contradicted if any contradicts
    it, inconclusive otherwise."""
    js = list(judgements)
    if not js:
        return NOT_MEASURED
    if any(j == "contradicts" for j in js):
        return CONTRADICTED
    if all(j == "supports" for j in js):
        return REPRODUCED
    return INCONCLUSIVE


class Cells:
    """The numbers of one unit and one seed, looked up by method and key values.

    ``cells("Ens Logits", n_models=10)`` is the per-example outcome vector of that row
    (``vectors=True``) or its value; None when the row or its vector is missing.
    """

    def __init__(
        self, rows: pd.DataFrame, lookup: Callable[[str], np.ndarray | None], vectors: bool
    ):
        self.rows = rows
        self.lookup = lookup
        self.vectors = vectors

    def __call__(self, method: str, **match: Any) -> np.ndarray | float | None:
        r = self.rows[self.rows["method"] == method]
        for k, v in match.items():
            r = r[r[k] == v]
        if len(r) != 1:
            if len(r) > 1:
                raise ValueError(f"{len(r)} rows for {method} {match}: a key column is missing")
            return None
        row = r.iloc[0]
        if not self.vectors:
            return float(row["value"])
        vec = self.lookup(row["outcome"])
        return None if vec is None else np.asarray(vec, dtype=np.float64)

    def values(self, column: str) -> list[Any]:
        return sorted(self.rows[column].dropna().unique().tolist())


Contrast = Callable[[Cells], np.ndarray | float | None]


def linear(*terms: tuple[float, str, dict[str, Any]]) -> Contrast:
    """A contrast ``sum w * cell(method, **match)``; None when any cell is missing."""

    def contrast(cells: Cells) -> np.ndarray | float | None:
        total: Any = 0.0
        for w, method, match in terms:
            v = cells(method, **match)
            if v is None:
                return None
            total = total + w * v
        return total

    return contrast


def units_by(
    condition: Condition,
    rows: pd.DataFrame,
    by: Sequence[str],
    contrast: Contrast,
    lookup: Callable[[str], np.ndarray | None],
    *,
    testset: Callable[[dict[str, Any]], str] = lambda k: str(k.get("dataset", "")),
) -> Condition:
    """Add one unit per group of ``rows`` (grouped by ``by``; seeds of a group are its
    replicates). A unit whose contrast is missing in some seed is skipped; one whose
    outcome vectors are missing gets a point estimate only."""
    for keys, g in rows.groupby(list(by), sort=True, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        labels = dict(zip(by, keys, strict=True))
        seeds = [gs for _, gs in g.groupby("seed", sort=True, dropna=False)]
        points = [contrast(Cells(gs, lookup, vectors=False)) for gs in seeds]
        if any(p is None for p in points):
            continue
        estimate = float(np.mean([float(p) for p in points]))  # type: ignore[arg-type]
        vecs = [contrast(Cells(gs, lookup, vectors=True)) for gs in seeds]
        unit = None
        if all(isinstance(v, np.ndarray) for v in vecs):
            unit = Unit(testset(labels), tuple(vecs))  # type: ignore[arg-type]
            estimate = unit.estimate
        condition.add(labels, unit, estimate)
    return condition
