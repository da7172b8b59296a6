"""The findings of the papers (``mergelab.studies.registry.PAPERS``), checked against our rows.

Each :class:`ClaimSpec` reads the results (rows and per-example outcomes), builds the
contrasts the finding is about (:mod:`mergelab.report.verdicts`), and comes back
*reproduced*, *contradicted* or *inconclusive*, with the pooled effect, its 95 % paired
bootstrap interval and the verdict of every setting; *not measured* when the study that
would test it did not run. The paper's own numbers appear only in ``paper``, as context.

Facts that hold by construction (a greedy soup is never below its best ingredient on val;
an average's max |w| and variance never exceed the largest of its models') are not
claims: they are :data:`SANITY_CHECKS`, which fail loudly when violated, since that can
only mean a defect.

Conventions: effects on accuracy are in points (0.01 of a fraction); "shared" rows are
the paper's protocol (fine-tunes of one start), "independent" the contrast.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mergelab.report._io import atomic_write_text
from mergelab.report.frames import Results
from mergelab.report.uncertainty import Interval, Unit
from mergelab.report.verdicts import (
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_MEASURED,
    REPRODUCED,
    Cells,
    Condition,
    Verdict,
    combine,
    linear,
    units_by,
)
from mergelab.studies.registry import (
    CROSS_TASK,
    MAGNITUDE,
    MULTITASK,
    PAPERS,
    STUDIES,
    TEMPLATES,
    WEIGHT_STATS,
    WVF,
    Study,
    papers_of,
)

__all__ = [
    "CLAIMS",
    "CONTRADICTED",
    "INCONCLUSIVE",
    "NOT_MEASURED",
    "REPRODUCED",
    "SANITY_CHECKS",
    "Claim",
    "ClaimSpec",
    "Sanity",
    "SanitySpec",
    "evaluate_claims",
    "family_depth",
    "markdown_table",
    "papers_not_run",
    "run_sanity_checks",
    "write_claims_md",
]

# Thresholds, stated in each claim's text so a reader can judge them.
MATCH_POINTS = 1.0  # "matches": the difference lies within +-1 point
LARGE_FACTOR = 50.0  # "large" scaling factors
SHRINK_RATIO = 0.95  # "shrinks": the average keeps less than 95 % of the models' statistic
PREDICTION_TOLERANCE = 0.25  # independent weights: measured/predicted variance within 1 +- 0.25
PRIMARY_BN = ("none", "batch")  # BatchNorm as the paper's code evaluated it (batch statistics)
# Models whose logits are linear in their parameters: their uniform soup IS their logit
# ensemble (and their feature ensemble), so they tie by construction. They are left out of
# the soup-vs-ensemble claims and checked as a sanity check instead.
LINEAR_ARCHS = frozenset({"linear"})


@dataclass(frozen=True)
class Measured:
    """One condition of a claim: its pooled effect, interval (None without per-example
    outcomes), unit, how many settings it pools, and what it says."""

    label: str
    estimate: float
    interval: Interval | None
    unit: str
    settings: int
    judgement: str


@dataclass(frozen=True, eq=False)
class Claim:
    """One finding and what our rows say about it."""

    key: str
    statement: str
    measured: str
    verdict: Verdict
    details: pd.DataFrame | None = None
    paper: str = ""
    study: str = ""
    conditions: tuple[Measured, ...] = ()


Build = Callable[[Results], "list[Condition] | str"]


@dataclass(frozen=True)
class ClaimSpec:
    """A claim's text and the function that builds its conditions from the results (or
    returns the reason it cannot be measured). Calling it with results gives a Claim; a
    build that raises gives "not measured" with the error, where a reader sees it."""

    key: str
    statement: str
    paper: str
    study: Study
    build: Build

    def __call__(self, results: Results | pd.DataFrame) -> Claim:
        results = Results.of_rows(results)
        try:
            conditions = self.build(results)
        except Exception as exc:
            conditions = f"could not be evaluated: {type(exc).__name__}: {exc}"
        if isinstance(conditions, str):
            return Claim(
                self.key,
                self.statement,
                conditions,
                NOT_MEASURED,
                None,
                self.paper,
                self.study.name,
            )
        conditions = [c for c in conditions if c.units]
        if not conditions:
            return Claim(
                self.key,
                self.statement,
                "no setting has the rows this claim needs",
                NOT_MEASURED,
                None,
                self.paper,
                self.study.name,
            )
        texts, judgements, frames, measured = [], [], [], []
        for c in conditions:
            judgement, pooled, details = c.evaluate()
            judgements.append(judgement)
            texts.append(c.describe(judgement, pooled, details))
            frames.append(details)
            estimate = pooled.estimate if pooled else float(details["estimate"].mean())
            measured.append(Measured(c.label, estimate, pooled, c.unit, len(c.units), judgement))
        verdict = combine(judgements)
        details = pd.concat(frames, ignore_index=True)
        return Claim(
            self.key,
            self.statement,
            "; ".join(texts),
            verdict,
            details,
            self.paper,
            self.study.name,
            tuple(measured),
        )


CLAIMS: list[ClaimSpec] = []


def _claim(key: str, study: Study, statement: str, paper: str = "") -> Callable[[Build], ClaimSpec]:
    def register(build: Build) -> ClaimSpec:
        spec = ClaimSpec(key, statement, paper, study, build)
        CLAIMS.append(spec)
        return spec

    return register


def evaluate_claims(
    results: Results | pd.DataFrame, claims: list[ClaimSpec] | None = None
) -> list[Claim]:
    """Every claim (or the given ones), in order, evaluated on ``results``."""
    results = Results.of_rows(results)
    return [spec(results) for spec in (CLAIMS if claims is None else claims)]


# -- helpers -----------------------------------------------------------------------------

_FAMILY = re.compile(r"^(?P<prefix>(?:tv:|timm:)?)(?P<family>[a-z_]+?)(?P<depth>\d+)(?P<bn>_bn)?$")


def family_depth(arch: str) -> tuple[str, int] | None:
    """``resnet14`` -> ("resnet", 14), ``tv:vgg19_bn`` -> ("tv:vgg_bn", 19); None when the
    name carries no depth (``vit_small``, ``resnet_small``)."""
    m = _FAMILY.match(str(arch))
    if m is None:
        return None
    return f"{m['prefix']}{m['family']}{m['bn'] or ''}", int(m["depth"])


def _is_vit(arch: str) -> bool:
    a = str(arch).lower()
    return "vit" in a or "deit" in a


def _wvf(results: Results, init: str = "shared") -> pd.DataFrame | str:
    """Test rows of fine-tunes of one start, without the linear models (whose soups equal
    their ensembles by construction)."""
    rows = results.select(WVF, where={"init": init})
    rows = rows[~rows["method"].isin(WVF.item_methods) & ~rows["arch"].isin(LINEAR_ARCHS)]
    if rows.empty:
        return f"no weights_vs_features test rows ({init} init, non-linear models)"
    return rows


def _pair(first: str, second: str, direction: str = "greater", threshold: float = 0.0) -> Build:
    """Per (dataset, arch, N): ``first - second`` on test, pooled."""

    def build(results: Results) -> list[Condition] | str:
        rows = _wvf(results)
        if isinstance(rows, str):
            return rows
        cond = Condition(f"{first} - {second}", direction, threshold, group_by="arch")  # type: ignore[arg-type]
        units_by(
            cond,
            rows,
            ["dataset", "arch", "n_models"],
            linear((1, first, {}), (-1, second, {})),
            results.vector,
        )
        return [cond]

    return build


def _gap(cells: Cells, **match: Any) -> Any:
    el, us = cells("Ens Logits", **match), cells("Uniform Soup", **match)
    return None if el is None or us is None else el - us


# -- weights vs features -----------------------------------------------------------------

_claim(
    "ens_logits_beats_uniform_soup",
    WVF,
    "Ensembling logits beats the uniform soup: Ens Logits - Uniform Soup > 0 on test, "
    "pooled over every setting (dataset, architecture, N) of fine-tunes from one start.",
    "VGG19, 10 models, CIFAR-100: Ens Logits 75.36 vs Uniform Soup 69.63.",
)(_pair("Ens Logits", "Uniform Soup"))

_claim(
    "ens_logits_beats_greedy_soup",
    WVF,
    "Ensembling logits beats the greedy soup: Ens Logits - Greedy Soup > 0 on test, pooled "
    "over every setting.",
    "VGG19, 10 models, CIFAR-100: Ens Logits 75.36 vs Greedy Soup 70.25.",
)(_pair("Ens Logits", "Greedy Soup"))

_claim(
    "greedy_soup_beats_uniform_soup",
    WVF,
    "The greedy soup beats the uniform soup on test: Greedy Soup - Uniform Soup > 0, pooled "
    "over every setting (selection used val only).",
    "VGG19, 10 models, CIFAR-100: Greedy Soup 70.25 vs Uniform Soup 69.63.",
)(_pair("Greedy Soup", "Uniform Soup"))

_claim(
    "ens_features_matches_logits",
    WVF,
    f"Ensembling features matches ensembling logits: |Ens Features - Ens Logits| <= "
    f"{MATCH_POINTS:g} point on test, pooled over every setting.",
    "VGG19, 10 models, CIFAR-100: Ens Features 74.96 vs Ens Logits 75.36.",
)(_pair("Ens Features", "Ens Logits", "within", MATCH_POINTS))

_claim(
    "ens_features_star_matches",
    WVF,
    f"Mean features through one model's head match mean features through the averaged "
    f"head: |Ens Features* - Ens Features| <= {MATCH_POINTS:g} point on test, pooled.",
    "Ens Features* uses the first model's last layer; the paper reports both columns.",
)(_pair("Ens Features*", "Ens Features", "within", MATCH_POINTS))


@_claim(
    "vit_uniform_soup_degrades",
    WVF,
    "Uniform soups of ViTs degrade as N grows: for ViT/DeiT architectures, Uniform Soup at "
    "the smallest N - Uniform Soup at the largest N > 0, and Perf Ave - Uniform Soup at the "
    "largest N > 0.",
    "DeiT-Tiny, TinyImageNet: average individual 66.8, 10-model uniform soup 8.9.",
)
def _vit_degrades(results: Results) -> list[Condition] | str:
    rows = _wvf(results)
    if isinstance(rows, str):
        return rows
    rows = rows[rows["arch"].map(_is_vit)]
    if rows.empty:
        return "no ViT/DeiT architecture in the weights_vs_features rows"

    def by_n(cells: Cells) -> Any:
        ns = cells.values("n_models")
        if len(ns) < 2:
            return None
        lo, hi = cells("Uniform Soup", n_models=ns[0]), cells("Uniform Soup", n_models=ns[-1])
        return None if lo is None or hi is None else lo - hi

    def below_ave(cells: Cells) -> Any:
        n = cells.values("n_models")[-1]
        ave, soup = cells("Perf Ave", n_models=n), cells("Uniform Soup", n_models=n)
        return None if ave is None or soup is None else ave - soup

    a = units_by(
        Condition("Uniform Soup(N min) - Uniform Soup(N max)", "greater"),
        rows,
        ["dataset", "arch"],
        by_n,
        results.vector,
    )
    b = units_by(
        Condition("Perf Ave(N max) - Uniform Soup(N max)", "greater"),
        rows,
        ["dataset", "arch"],
        below_ave,
        results.vector,
    )
    return [a, b]


@_claim(
    "gap_grows_with_n",
    WVF,
    "The gap between Ens Logits and Uniform Soup grows with the number of models: "
    "gap(N max) - gap(N min) > 0, pooled over dataset/architecture settings.",
    "Figure of the gap against model count (2 ... 10 models).",
)
def _gap_grows(results: Results) -> list[Condition] | str:
    rows = _wvf(results)
    if isinstance(rows, str):
        return rows

    def contrast(cells: Cells) -> Any:
        ns = cells.values("n_models")
        if len(ns) < 2:
            return None
        hi, lo = _gap(cells, n_models=ns[-1]), _gap(cells, n_models=ns[0])
        return None if hi is None or lo is None else hi - lo

    return [
        units_by(
            Condition("gap(N max) - gap(N min)", "greater", group_by="arch"),
            rows,
            ["dataset", "arch"],
            contrast,
            results.vector,
        )
    ]


@_claim(
    "gap_shrinks_with_depth",
    WVF,
    "The gap between Ens Logits and Uniform Soup shrinks with depth: within a family of "
    "architectures at several depths (resnet8/resnet14, vgg11/vgg19, ...), gap(shallowest) - "
    "gap(deepest) > 0 at every N, pooled.",
    "The paper compares depths within ResNet, DenseNet and VGG families.",
)
def _gap_depth(results: Results) -> list[Condition] | str:
    rows = _wvf(results)
    if isinstance(rows, str):
        return rows
    fd = rows["arch"].map(family_depth)
    rows = rows.assign(
        family=[f[0] if f else "" for f in fd], depth=[f[1] if f else np.nan for f in fd]
    )
    rows = rows[rows["family"] != ""]
    depths = rows.groupby(["dataset", "family"])["depth"].transform("nunique")
    rows = rows[depths >= 2]
    if rows.empty:
        return "no architecture family trained at two or more depths"

    def contrast(cells: Cells) -> Any:
        d = cells.values("depth")
        shallow, deep = _gap(cells, depth=d[0]), _gap(cells, depth=d[-1])
        return None if shallow is None or deep is None else shallow - deep

    cond = Condition("gap(shallowest) - gap(deepest)", "greater")
    return [units_by(cond, rows, ["dataset", "family", "n_models"], contrast, results.vector)]


# -- magnitude ---------------------------------------------------------------------------


def _magnitude(results: Results, scaled: str = "all") -> pd.DataFrame | str:
    """Magnitude rows of the paper's protocol (every tensor scaled; BatchNorm with batch
    statistics) for one choice of scaled models, without the linear models."""
    rows = results.select(
        MAGNITUDE, where={"scaled": scaled, "tensors": "all", "bn": PRIMARY_BN, "init": "shared"}
    )
    rows = rows[~rows["arch"].isin(LINEAR_ARCHS)]
    if rows.empty:
        return f"no magnitude rows with scaled={scaled} (every tensor, non-linear models)"
    return rows


_SCALED = {
    "all": "every model scaled",
    "first": "only the first model scaled",
    "all_but_first": "all but the first scaled",
}


def _at_large(method: str, other: str) -> Build:
    """One condition per choice of scaled models: ``method - other`` at every factor
    >= LARGE_FACTOR, pooled over architectures, N and factors (per N in the details)."""

    def build(results: Results) -> list[Condition] | str:
        out = []
        for scaled, text in _SCALED.items():
            rows = _magnitude(results, scaled)
            if isinstance(rows, str):
                continue
            rows = rows[rows["magnitude"] >= LARGE_FACTOR]
            cond = Condition(f"{text}: {method} - {other}", "greater", group_by="arch")
            out.append(
                units_by(
                    cond,
                    rows,
                    ["dataset", "arch", "n_models", "magnitude"],
                    linear((1, method, {}), (-1, other, {})),
                    results.vector,
                )
            )
        return out or f"no magnitude rows at c >= {LARGE_FACTOR:g}"

    return build


_claim(
    "merging_robust_at_large_c",
    MAGNITUDE,
    f"Merging is more robust than ensembling to weight magnitude: with parameters scaled by "
    f"c >= {LARGE_FACTOR:g}, Uniform Soup - Ens Logits > 0 in test accuracy, whether every "
    f"model, only the first, or all but the first is scaled (each pooled over architectures, "
    f"N and factors; per N in the details; BatchNorm as the paper's code ran it, with batch "
    f"statistics; linear models, whose soup is their ensemble, left out).",
    "Scaling factors x1 ... x150: merged models stay more robust than logit ensembles.",
)(_at_large("Uniform Soup", "Ens Logits"))

_claim(
    "ens_features_robust_at_large_c",
    MAGNITUDE,
    f"Ensembling features is more robust to magnitude than ensembling logits: at c >= "
    f"{LARGE_FACTOR:g}, Ens Features - Ens Logits > 0, for each choice of scaled models.",
    "Magnitude figures: Ens Features degrades less than Ens Logits.",
)(_at_large("Ens Features", "Ens Logits"))


def _halves(v: Any) -> tuple[Any, Any]:
    """(even, odd) examples of a per-example vector; a scalar (no vectors) for both."""
    if isinstance(v, np.ndarray):
        return v[0::2], v[1::2]
    return v, v


@_claim(
    "gap_peaks_at_some_factor",
    MAGNITUDE,
    "The Ens Logits - Uniform Soup gap peaks at an intermediate factor (every model scaled): "
    "with c* the interior factor of largest gap, gap(c*) - gap(1) > 0 and gap(c*) - gap(c "
    "max) > 0, pooled over architectures and N. c* is chosen on the even test examples and "
    "the contrasts are measured on the odd ones, so choosing the peak does not bias them; an "
    "end point significantly above the chosen interior factor contradicts the claim.",
    "Figure of the gap against the scaling factor.",
)
def _gap_peaks(results: Results) -> list[Condition] | str:
    rows = _magnitude(results)
    if isinstance(rows, str):
        return rows

    def against(end: str) -> Callable[[Cells], Any]:
        def contrast(cells: Cells) -> Any:
            cs = cells.values("magnitude")
            if len(cs) < 3:
                return None
            gaps = {c: _gap(cells, magnitude=c) for c in cs}
            if any(v is None for v in gaps.values()):
                return None
            star = max(cs[1:-1], key=lambda c: float(np.mean(_halves(gaps[c])[0])))
            other = cs[0] if end == "first" else cs[-1]
            return _halves(gaps[star])[1] - _halves(gaps[other])[1]

        return contrast

    by = ["dataset", "arch", "n_models"]

    def testset(k: dict[str, Any]) -> str:
        return f"{k['dataset']}/odd"

    return [
        units_by(
            Condition("gap(c*) - gap(1)", "greater", group_by="arch"),
            rows,
            by,
            against("first"),
            results.vector,
            testset=testset,
        ),
        units_by(
            Condition("gap(c*) - gap(c max)", "greater", group_by="arch"),
            rows,
            by,
            against("last"),
            results.vector,
            testset=testset,
        ),
    ]


# -- weight statistics -------------------------------------------------------------------


def _tensor_ratios(results: Results, init: str, numerator: str, denominator: str) -> pd.DataFrame:
    """Per (dataset, arch, seed, layer) at each setting's largest N: the average's
    ``numerator`` over the mean of the models' ``denominator`` (or over the average's own
    ``denominator`` row when it is a prediction)."""
    ws = results.of(WEIGHT_STATS)
    ws = ws[(ws["init"] == init)].dropna(subset=["value"])
    if ws.empty:
        return ws
    ndim = pd.to_numeric(ws.get("ndim", pd.Series(np.nan, index=ws.index)), errors="coerce")
    if ndim.isna().all():
        raise ValueError(
            "the weight_stats rows do not record tensor shapes (ndim); rerun the study"
        )
    ws = ws[ndim >= 2]  # weight matrices and conv kernels, as the paper's figures
    ws = ws[
        ws["n_models"]
        == ws.groupby(["dataset", "arch", "seed"], dropna=False)["n_models"].transform("max")
    ]
    key = ["dataset", "arch", "seed", "n_models", "layer"]
    avg = ws[(ws["method"] == "average") & (ws["metric"] == numerator)].set_index(key)["value"]
    if denominator == "predicted_variance":
        den = ws[(ws["method"] == "average") & (ws["metric"] == denominator)].set_index(key)[
            "value"
        ]
    else:
        den = (
            ws[(ws["method"] == "model") & (ws["metric"] == denominator)]
            .groupby(key, dropna=False)["value"]
            .mean()
        )
    ratio = (avg / den.where(den > 0)).dropna().rename("ratio").reset_index()
    return ratio


def _ratio_units(
    cond: Condition, ratios: pd.DataFrame, transform: Callable[[np.ndarray], np.ndarray]
) -> Condition:
    """One unit per (dataset, arch): its tensors' transformed ratios (seeds as replicates,
    tensors as the resampled items; a setting with fewer than MIN_ITEMS tensors gets no
    interval of its own). The pooled effect is the mean over every tensor of every
    setting, resampled together (``cond.pool``)."""
    everything = []
    for (dataset, arch), g in ratios.groupby(["dataset", "arch"], sort=True):
        seeds = [
            transform(gs.sort_values("layer")["ratio"].to_numpy(float))
            for _, gs in g.groupby("seed", dropna=False)
        ]
        if len({len(s) for s in seeds}) != 1:
            seeds = seeds[:1]
        unit = Unit(f"{dataset}/{arch}/tensors", tuple(seeds))
        cond.add({"dataset": dataset, "arch": arch, "tensors": len(seeds[0])}, unit, unit.estimate)
        everything.append(np.mean(seeds, axis=0))
    if everything:
        cond.pool = Unit("all/tensors", (np.concatenate(everything),))
    return cond


@_claim(
    "averaging_shrinks_weights",
    WEIGHT_STATS,
    f"Averaging shrinks max |w| and variance: on the soups' ingredients (fine-tunes of one "
    f"start, all N of them), the average's max |w| and variance are below "
    f"{SHRINK_RATIO:g} of the models' mean, per weight matrix or kernel (mean over them; "
    f"biases and norm scales left out). Both ratios are at most 1 by construction; the "
    f"claim is that the shrinkage is material.",
    "Var of the mean of two = (s1^2 + s2^2) / 4; averaging reduces the weights' magnitude.",
)
def _shrinks(results: Results) -> list[Condition] | str:
    out = []
    for stat, label in (("max_abs", "max |w|"), ("variance", "variance")):
        ratios = _tensor_ratios(results, "shared", stat, stat)
        if ratios.empty:
            continue
        cond = Condition(
            f"{label} of the average / mean of the models'",
            "less",
            SHRINK_RATIO,
            unit="(ratio)",
            scale=1.0,
        )
        out.append(_ratio_units(cond, ratios, lambda r: r))
    return out or "no weight_stats rows for fine-tunes of one start"


@_claim(
    "independent_variance_prediction",
    WEIGHT_STATS,
    f"For independently trained models the average's variance follows the independent-"
    f"weights prediction sum(s_i^2)/N^2: measured/predicted - 1 within +-"
    f"{PREDICTION_TOLERANCE:g}, per weight matrix or kernel (mean over them; biases, which "
    f"learn the shared class priors, are left out).",
    "Var of the mean of two = (s1^2 + s2^2) / 4.",
)
def _prediction(results: Results) -> list[Condition] | str:
    ratios = _tensor_ratios(results, "independent", "variance", "predicted_variance")
    if ratios.empty:
        return "no weight_stats rows for independently initialised models"
    cond = Condition(
        "measured / predicted variance - 1",
        "within",
        PREDICTION_TOLERANCE,
        unit="(ratio)",
        scale=1.0,
    )
    return [_ratio_units(cond, ratios, lambda r: r - 1.0)]


# -- cross task --------------------------------------------------------------------------


@_claim(
    "cross_task_merging_hurts",
    CROSS_TASK,
    "Averaging a model with one trained on a different task hurts: on task A, with A's "
    "head, Model A - Uniform Soup > 0, pooled over pairs.",
    "Table 3: merging models trained on different datasets.",
)
def _cross_task(results: Results) -> list[Condition] | str:
    rows = results.select(CROSS_TASK)
    if rows.empty:
        return "no cross_task rows"
    cond = Condition("Model A - Uniform Soup", "greater")
    return [
        units_by(
            cond,
            rows,
            ["arch", "dataset", "other_dataset"],
            linear((1, "Model A", {}), (-1, "Uniform Soup", {})),
            results.vector,
        )
    ]


# -- multi-task --------------------------------------------------------------------------

CART_RANK_RANGE = (0.08, 0.30)  # the paper's best rank fractions


def _normalized_cells(results: Results, rows: pd.DataFrame) -> dict[tuple, Any]:
    """Per (arch, task, seed): each merge's test accuracy over the task's own fine-tuned
    backbone ("Individual"), as (value, per-example vector or None). The vector is the
    0/1 outcome vector divided by that constant, so its mean is the normalized accuracy
    and a difference of two of them is a paired per-example contrast. Keyed inside by
    (method, sweep, rank_fraction)."""
    acc = rows[rows["metric"] == "accuracy"]
    out: dict[tuple, Any] = {}
    for (arch, task, seed), g in acc.groupby(["arch", "dataset", "seed"], sort=True, dropna=False):
        own = g[(g["method"] == "Individual") & (g["sweep"] == "methods")]
        if len(own) != 1 or not float(own["value"].iloc[0]) > 0:
            continue
        individual = float(own["value"].iloc[0])
        cells = {}
        for r in g.itertuples():
            vec = results.vector(getattr(r, "outcome", ""))
            vec = None if vec is None else np.asarray(vec, dtype=np.float64) / individual
            rank = float(r.rank_fraction) if pd.notna(r.rank_fraction) else None
            cells[(r.method, r.sweep, rank)] = (float(r.value) / individual, vec)
        out[(arch, task, seed)] = cells
    return out


def _task_units(
    cond: Condition,
    cells: dict[tuple, Any],
    first: tuple,
    second: tuple,
    half: int | None = None,
) -> Condition:
    """One unit per (arch, task): the normalized-accuracy contrast ``first - second``
    (cell keys (method, sweep, rank)), per example where the outcome vectors exist (seeds
    are replicates); ``half``: only the even (0) or odd (1) test examples. Pooling the
    task units with equal weights gives the difference of average normalized accuracy."""
    by_task: dict[tuple, list] = {}
    for (arch, task, _seed), c in cells.items():
        if first in c and second in c:
            by_task.setdefault((arch, task), []).append((c[first], c[second]))
    for (arch, task), pairs in sorted(by_task.items()):
        vectors = [(a[1], b[1]) for a, b in pairs]
        unit = None
        estimate = float(np.mean([a[0] - b[0] for a, b in pairs]))
        if all(va is not None and vb is not None for va, vb in vectors):
            picked = slice(None) if half is None else slice(half, None, 2)
            contrasts = tuple((va - vb)[picked] for va, vb in vectors)
            suffix = "" if half is None else ("/even", "/odd")[half]
            unit = Unit(f"multitask/{task}{suffix}", contrasts)
            estimate = unit.estimate
        cond.add({"arch": arch, "task": task}, unit, estimate)
    return cond


@_claim(
    "multitask_method_ranking",
    MULTITASK,
    "Merging the task backbones of one pre-trained model, CART > TIES > task arithmetic > "
    "weight averaging on average normalized test accuracy (merged / the task's own "
    "fine-tuned backbone); coefficients chosen on val; each task's test examples are "
    "resampled.",
    "CART paper (ViT-B/32, 8 tasks): 84.7 > 72.4 > 69.1 > 65.9 normalized accuracy.",
)
def _multitask_ranking(results: Results) -> list[Condition] | str:
    rows = results.select(MULTITASK, metric="accuracy", where={"sweep": "methods"})
    if rows.empty:
        return "no multitask rows"
    chain = ("CART", "TIES", "Task Arithmetic", "Weight Averaging")
    missing = [m for m in chain if m not in set(rows["method"])]
    if missing:
        return f"methods not run: {', '.join(missing)}"
    cells = _normalized_cells(results, rows)
    if not cells:
        return "no accuracy rows with the Individual baseline"
    return [
        _task_units(
            Condition(f"{a} - {b}", "greater"), cells, (a, "methods", None), (b, "methods", None)
        )
        for a, b in itertools.pairwise(chain)
    ]


@_claim(
    "multitask_cart_rank",
    MULTITASK,
    f"CART's best rank fraction lies between {CART_RANK_RANGE[0]:.0%} and "
    f"{CART_RANK_RANGE[1]:.0%}: the best swept rank inside that range beats the best "
    "outside it on average normalized test accuracy (coefficient chosen on val at every "
    "rank). Both best ranks are chosen on the even test examples and compared on the odd "
    "ones, so choosing them does not bias the comparison.",
    "CART paper: accuracy peaks at rank 8-30 % and falls at both ends.",
)
def _multitask_rank(results: Results) -> list[Condition] | str:
    rows = results.select(MULTITASK, metric="accuracy", where={"sweep": ("methods", "rank")})
    sweep = rows[(rows["sweep"] == "rank") & (rows["metric"] == "accuracy")]
    if sweep.empty:
        return "no CART rank sweep rows"
    low, high = CART_RANK_RANGE
    ranks = sorted(float(r) for r in sweep["rank_fraction"].dropna().unique())
    inside = [r for r in ranks if low - 1e-9 <= r <= high + 1e-9]
    outside = [r for r in ranks if r not in inside]
    if not inside or not outside:
        return "the swept rank fractions lie all inside or all outside 8-30 %"
    cells = _normalized_cells(results, rows)
    if not cells:
        return "no accuracy rows with the Individual baseline"

    def even_mean(rank: float) -> float:
        """Mean over tasks (and seeds) of the normalized accuracy on the even examples
        (all of them for rows without outcome vectors)."""
        got = []
        for c in cells.values():
            value, vec = c.get(("CART", "rank", rank), (math.nan, None))
            got.append(float(np.mean(vec[0::2])) if vec is not None else value)
        return float(np.nanmean(got)) if got else math.nan

    best_in = max(inside, key=even_mean)
    best_out = max(outside, key=even_mean)
    label = f"best inside (rank {best_in:g}) - best outside (rank {best_out:g})"
    first, second = ("CART", "rank", best_in), ("CART", "rank", best_out)
    return [_task_units(Condition(label, "greater"), cells, first, second, half=1)]


# -- templates ---------------------------------------------------------------------------


def _class_units(
    results: Results, metric: str, label: str, *, control_mean: bool
) -> Condition | str:
    """Per (dataset, arch): per class, the classifier's value minus the grand-mean
    control's (``control_mean``: minus the control's mean over classes, a constant)."""
    tp = results.of(TEMPLATES)
    tp = tp[tp["metric"] == metric].dropna(subset=["value"])
    if tp.empty or not {"classifier", "grand_mean"} <= set(tp["method"]):
        return f"no {metric} rows for the classifier and the grand-mean control"
    cond = Condition(label, "greater")
    for (dataset, arch), g in tp.groupby(["dataset", "arch"], sort=True):
        seeds = []
        for _, gs in g.groupby("seed", dropna=False):
            w = gs.pivot_table(index="class", columns="method", values="value")
            if {"classifier", "grand_mean"} <= set(w.columns):
                control = w["grand_mean"].mean() if control_mean else w["grand_mean"]
                seeds.append((w["classifier"] - control).to_numpy(float))
        if seeds and len({len(s) for s in seeds}) == 1:
            unit = Unit(f"{dataset}/classes", tuple(seeds))
            cond.add(
                {"dataset": dataset, "arch": arch, "classes": len(seeds[0])}, unit, unit.estimate
            )
    return cond


@_claim(
    "templates_identify_their_class",
    TEMPLATES,
    "A linear classifier's class rows look like their own class mean: the share of "
    "classes whose template correlates best with its own class-mean image exceeds the "
    "grand-mean image's (the control, which is one image and so matches 1 of C classes: "
    "chance); classes are the resampled items.",
    "Shown qualitatively: weight rows reshaped to the image beside the class means.",
)
def _identify(results: Results) -> list[Condition] | str:
    c = _class_units(
        results, "identified", "identified(classifier) - identified(grand mean)", control_mean=True
    )
    return c if isinstance(c, str) else [c]


@_claim(
    "templates_beat_grand_mean",
    TEMPLATES,
    "Templates resemble their own class mean specifically, more than the grand-mean control "
    "does: per class, the own-class margin (correlation with its class mean minus the mean "
    "correlation with the other class means) of the template minus that of the grand-mean "
    "image > 0. (A raw correlation proves little: the grand-mean image correlates 0.8-0.95 "
    "with every class mean; the raw numbers are in the templates table.)",
    "Shown qualitatively: weight rows reshaped to the image beside the class means.",
)
def _beat_control(results: Results) -> list[Condition] | str:
    c = _class_units(
        results,
        "own_class_margin",
        "margin(template) - margin(grand mean)",
        control_mean=False,
    )
    if isinstance(c, str):
        return c
    c.unit, c.scale = "(correlation)", 1.0
    return [c]


# -- sanity checks -----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Sanity:
    """A fact that holds by construction, checked on this run: ``passed`` None when the
    rows to check it are absent."""

    key: str
    statement: str
    passed: bool | None
    measured: str
    details: pd.DataFrame | None = None


@dataclass(frozen=True)
class SanitySpec:
    key: str
    statement: str
    check: Callable[[Results], tuple[bool | None, str, pd.DataFrame | None]]

    def __call__(self, results: Results) -> Sanity:
        try:
            passed, text, details = self.check(results)
        except Exception as exc:  # a check that cannot run is a failure: it guards defects
            passed, text, details = False, f"check raised {type(exc).__name__}: {exc}", None
        return Sanity(self.key, self.statement, passed, text, details)


SANITY_CHECKS: list[SanitySpec] = []


def _sanity(key: str, statement: str) -> Callable[..., SanitySpec]:
    def register(
        check: Callable[[Results], tuple[bool | None, str, pd.DataFrame | None]],
    ) -> SanitySpec:
        spec = SanitySpec(key, statement, check)
        SANITY_CHECKS.append(spec)
        return spec

    return register


@_sanity(
    "greedy_soup_at_least_best_on_val",
    "Greedy Soup on val >= the best ingredient on val, in every weights-vs-features "
    "experiment (the greedy rule starts from the best model and only accepts additions "
    "that do not lower val accuracy).",
)
def _greedy_sanity(results: Results) -> tuple[bool | None, str, pd.DataFrame | None]:
    t = results.wide(WVF, split="val")
    if not {"Greedy Soup", "Best Individual"} <= set(t.columns):
        return None, "no weights_vs_features val rows", None
    t = t.dropna(subset=["Greedy Soup", "Best Individual"])
    bad = t[t["Greedy Soup"] < t["Best Individual"] - 1e-9]
    text = f"{len(t) - len(bad)}/{len(t)} experiments hold"
    return bad.empty, text, bad if len(bad) else None


def _bound(results: Results, metric: str) -> tuple[bool | None, str, pd.DataFrame | None]:
    ws = results.of(WEIGHT_STATS)
    ws = ws[ws["metric"] == metric].dropna(subset=["value"])
    if ws.empty:
        return None, "no weight_stats rows", None
    key = ["dataset", "arch", "init", "seed", "n_models", "layer"]
    avg = ws[ws["method"] == "average"].set_index(key)["value"]
    largest = ws[ws["method"] == "model"].groupby(key, dropna=False)["value"].max()
    both = pd.concat({"average": avg, "largest model": largest}, axis=1).dropna()
    bad = both[both["average"] > both["largest model"] * (1 + 1e-6) + 1e-12]
    return (
        bad.empty,
        f"{len(both) - len(bad)}/{len(both)} tensors hold",
        bad.reset_index() if len(bad) else None,
    )


_sanity(
    "average_max_abs_bound",
    "max |w| of an average <= the largest max |w| of its models, in every tensor "
    "(triangle inequality).",
)(lambda r: _bound(r, "max_abs"))
_sanity(
    "average_variance_bound",
    "Variance of an average <= the largest variance of its models, in every tensor (the "
    "standard deviation of a mean is at most the mean of the standard deviations).",
)(lambda r: _bound(r, "variance"))


@_sanity(
    "linear_soup_is_its_ensemble",
    "For linear classifiers the uniform soup, the logit ensemble and the feature ensemble are "
    "one function (the logits are linear in the weights): their test predictions agree on "
    "every example but at most one (a float rounding at a tie), in every experiment.",
)
def _linear_sanity(results: Results) -> tuple[bool | None, str, pd.DataFrame | None]:
    rows = results.select(WVF, split="test", where={"arch": tuple(LINEAR_ARCHS)})
    rows = rows[rows["method"].isin(["Uniform Soup", "Ens Logits", "Ens Features"])]
    if rows.empty:
        return None, "no linear models in the weights_vs_features rows", None
    bad = []
    keys = [*WVF.keys, "metric"]
    checked = 0
    for key, g in rows.groupby(keys, dropna=False):
        vecs = {r.method: results.vector(r.outcome) for r in g.itertuples()}
        values = dict(zip(g["method"], g["value"], strict=True))
        ref = vecs.get("Ens Logits")
        for method in ("Uniform Soup", "Ens Features"):
            if method not in values or "Ens Logits" not in values:
                continue
            checked += 1
            if ref is not None and vecs.get(method) is not None:
                differ = int(np.sum(vecs[method] != ref))
                ok = differ <= 1
            else:
                differ = -1
                ok = abs(values[method] - values["Ens Logits"]) <= 1e-9
            if not ok:
                bad.append(
                    {
                        **dict(zip(keys, key, strict=True)),
                        "method": method,
                        "examples differ": differ,
                    }
                )
    details = pd.DataFrame(bad) if bad else None
    return not bad, f"{checked - len(bad)}/{checked} comparisons hold", details


def run_sanity_checks(results: Results | pd.DataFrame) -> list[Sanity]:
    results = Results.of_rows(results)
    return [spec(results) for spec in SANITY_CHECKS]


# -- claims.md ---------------------------------------------------------------------------


def _md_cell(value: object) -> str:
    text = str(value)
    if isinstance(value, float):
        text = "" if math.isnan(value) else f"{value:.4g}"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, max_rows: int = 60) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency), cut at ``max_rows``."""
    head = df.head(max_rows)
    cols = [str(c) for c in head.columns]
    lines = [
        "| " + " | ".join(_md_cell(c) for c in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(v) for v in r) + " |" for r in head.to_numpy().tolist()]
    if len(df) > max_rows:
        lines.append(f"\n({len(df) - max_rows} more rows in the HTML report)")
    return "\n".join(lines)


def seed_note(results: Results | pd.DataFrame) -> str:
    """A warning, per study that ran, when its claims rest on one training seed: their
    intervals then cover the test examples' noise only, not how much another training
    run would differ."""
    rows = Results.of_rows(results).rows
    if rows.empty:
        return ""
    notes = []
    for study, key, shared in (
        (
            WVF,
            "seeds",
            "the settings pooled in a claim share their trained models (N = 2 ... "
            "10 are the first N of one set)",
        ),
        (MULTITASK, "multitask.seeds", "every merge of a claim merges the same task models"),
    ):
        seeds = rows.loc[rows["study"] == study.name, "seed"].dropna().unique()
        if len(seeds) > 1:
            notes.append(
                f"{study.heading}: intervals resample the test examples and the {len(seeds)} "
                f"training seeds ({', '.join(str(int(s)) for s in sorted(seeds))})."
            )
        elif len(seeds) == 1:
            notes.append(
                f"{study.heading}: one training seed, so the intervals cover the test "
                f"examples' noise only, not how much another set of trained models would "
                f"differ; {shared}. Add seeds (`{key}: [0, 1, 2]`) to include that variation."
            )
    return " ".join(notes)


def sanity_label(s: Sanity) -> str:
    return "not run" if s.passed is None else "passed" if s.passed else "FAILED"


def papers_not_run(claims: list[Claim]) -> tuple[list[Claim], str]:
    """The claims to show, and a sentence naming the papers none of whose claims could be
    measured (their studies did not run): a multi-task run does not list every finding of
    the other paper as "not measured"; a run that measured nothing lists everything."""
    paper = {c.key: STUDIES[c.study].paper if c.study in STUDIES else "" for c in claims}
    measured = {paper[c.key] for c in claims if c.verdict != NOT_MEASURED}
    if not measured:
        return claims, ""
    shown = [c for c in claims if paper[c.key] in measured]
    hidden = [p for p in PAPERS if p not in measured and any(paper[k] == p for k in paper)]
    if not hidden:
        return shown, ""
    counts = {p: sum(1 for k in paper if paper[k] == p) for p in hidden}
    names = "; ".join(f'the {counts[p]} claims of "{p}"' for p in hidden)
    return shown, f"Not measured, as their studies did not run here: {names}."


def write_claims_md(
    claims: list[Claim], path: Path, sanity: list[Sanity] | None = None, note: str = ""
) -> Path:
    """Write ``claims.md``: the verdict table, the sanity checks, then each claim's details."""
    claims, not_run = papers_not_run(claims)
    note = " ".join(n for n in (note, not_run) if n)
    measured = [c.study for c in claims if c.verdict != NOT_MEASURED]
    papers = papers_of(measured or [c.study for c in claims])
    lines = [
        "# Claims of " + " and ".join(f'"{p}"' for p in papers) + ", checked here",
        "",
        "Each finding is measured from this run's results: the pooled effect with its 95 % "
        "paired bootstrap interval over test examples (and seeds; for the mergeability "
        "claims, its range over refits each without one task), and how many settings "
        "support it, contradict it or cannot tell. *Inconclusive* means the noise is larger "
        "than the effect; *not measured* that the study that would test it did not run.",
        *(["", note] if note else []),
        "",
        "| Finding | Measured here | Verdict |",
        "|---|---|---|",
    ]
    lines += [
        f"| {_md_cell(c.statement)} | {_md_cell(c.measured)} | **{c.verdict}** |" for c in claims
    ]
    if sanity:
        lines += [
            "",
            "## Sanity checks",
            "",
            "These hold by construction; a failure means a defect, not a finding.",
            "",
            "| Check | Measured here | Result |",
            "|---|---|---|",
        ]
        lines += [
            f"| {_md_cell(s.statement)} | {_md_cell(s.measured)} | **{sanity_label(s)}** |"
            for s in sanity
        ]
    for c in claims:
        lines += ["", f"## {c.key}", "", c.statement, ""]
        if c.paper:
            lines += [f"- Paper: {c.paper}"]
        lines += [f"- Measured here: {c.measured}", f"- Verdict: **{c.verdict}**"]
        if c.details is not None and not c.details.empty:
            lines += ["", markdown_table(c.details)]
    return atomic_write_text(Path(path), "\n".join(lines) + "\n")
