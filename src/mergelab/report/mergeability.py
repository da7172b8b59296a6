"""The mergeability study in the report: its tables, its figure and its claims.

Read from the rows of :mod:`mergelab.studies.mergeability` alone. The predictors were
fitted by the study (``study=mergeability_fit``) on every task and once without each
task; the claims' intervals are the ranges over those task replicates: with 7
tasks, 21 pairs share tasks, so pairs are not independent items, but tasks are.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mergelab.report.claims import _claim
from mergelab.report.figures import _figure, _legend_right, _save, method_color
from mergelab.report.frames import Results, order_methods
from mergelab.report.tables import Table
from mergelab.report.uncertainty import LEVEL, Interval
from mergelab.report.verdicts import Condition
from mergelab.studies.registry import MERGEABILITY, MERGEABILITY_FIT
from mergelab.studies.registry import PAIR_METHOD as PAIR

__all__ = ["GRADIENT_L2", "PAPER_OVERLAP", "PAPER_R", "PAPER_SIGNS", "TOP_K", "fit_frame"]

PAPER_R = 0.54
"""The paper's mean fold r (ViT-B/16)."""
PAPER_OVERLAP = 0.640
"""The paper's top-5 metric overlap between methods."""
PAPER_SIGNS = 0.793
"""The paper's sign agreement between methods."""
TOP_K = 5
GRADIENT_L2 = "encoder_gradient_l2"
SPARSE = "sparse_pearson"
LASSO = "lasso"
FULL = "none"
FIRST = ("Weight Averaging", "Task Arithmetic", "TSV-M", "TIES", "DARE")


def fit_frame(results: Results, metric: str, model: str = SPARSE) -> pd.DataFrame:
    """The fit rows of ``metric`` for ``model`` (every replicate)."""
    return results.select(MERGEABILITY_FIT, metric=metric, where={"predictor": model})


def _methods(frame: pd.DataFrame) -> list[str]:
    return order_methods(frame["method"], FIRST)


def mean_coefficients(results: Results, left_out: str = FULL) -> pd.DataFrame:
    """Features x methods: the sparse model's coefficients averaged over its folds."""
    c = fit_frame(results, "coefficient")
    c = c[(c["left_out"] == left_out) & (c["fold"] == "mean")]
    if c.empty:
        return pd.DataFrame()
    w = c.pivot_table(index="feature", columns="method", values="value", aggfunc="first")
    features = list(dict.fromkeys(c["feature"]))
    return w.loc[features, _methods(c)]


def _replicates(results: Results) -> list[str]:
    """The tasks left out in a replicate (each has a full set of fits)."""
    r = fit_frame(results, "pooled_r")
    return sorted(set(r["left_out"]) - {FULL})


def task_range(full: float, replicates: Sequence[float]) -> Interval | None:
    """The range of a statistic over the fit on every task (``full``) and the fits each
    without one task (``replicates``), with their median as the estimate: a verdict whose
    range lies on one side of the paper's threshold does not hang on any single task. None
    with fewer than 3 finite replicates.

    Not a jackknife standard error: the statistics here (net signs, top-k overlaps) are
    discrete and non-smooth, where the jackknife's variance estimate is unreliable."""
    reps = [r for r in replicates if math.isfinite(r)]
    if len(reps) < 3 or not math.isfinite(full):
        return None
    values = [full, *reps]
    # The estimate is the median of the fits: the fit on every task can itself be the
    # outlier of the range.
    return Interval(float(np.median(values)), float(min(values)), float(max(values)), LEVEL)


class _TaskRange(Condition):
    """A condition whose intervals are leave-one-task-out ranges (:func:`task_range`),
    given per unit and pooled, instead of bootstraps over per-example outcomes."""

    def __init__(self, label: str, direction: str, *, unit: str, scale: float = 1.0) -> None:
        super().__init__(label, direction, unit=unit, scale=scale)  # type: ignore[arg-type]
        self.intervals: dict[int, Interval | None] = {}
        self.pooled_interval: Interval | None = None

    def put(self, labels: dict[str, object], interval: Interval | None, estimate: float) -> None:
        self.intervals[len(self.units)] = interval
        self.units.append((labels, None, estimate))

    def _pooled(self, idx: list[int]) -> tuple[Interval | None, dict[int, Interval]]:
        each = {i: iv for i in idx if (iv := self.intervals.get(i)) is not None}
        pooled = self.pooled_interval if len(idx) == len(self.units) else None
        return pooled, each


def _statistic_condition(
    results: Results,
    label: str,
    direction: str,
    statistic,  # (results, left_out, method) -> float
    unit: str,
) -> _TaskRange | str:
    """Per method and pooled over methods (their mean), ``statistic`` on every task and
    its range over the fits without one task."""
    r = fit_frame(results, "pooled_r")
    if r.empty:
        return "no mergeability fits (the mergeability study did not run)"
    reps = _replicates(results)
    if len(reps) < 3:
        return f"{len(reps)} fits without one task; the range needs at least 3"
    methods = _methods(r)
    n = len(reps)
    cond = _TaskRange(label, direction, unit=unit)
    cond.basis = f"range over the fit on all tasks and {n} fits without one"
    for m in methods:
        full = statistic(results, FULL, m)
        reps_m = [statistic(results, t, m) for t in reps]
        cond.put({"method": m}, task_range(full, reps_m), full)

    def pooled(left_out: str) -> float:
        return float(np.mean([statistic(results, left_out, m) for m in methods]))

    reps_all = [pooled(t) for t in reps]
    cond.pooled_interval = task_range(pooled(FULL), reps_all)
    return cond


def _value(
    results: Results, metric: str, left_out: str, method: str, model: str = SPARSE, **where: str
) -> float:
    """One fit row's value (NaN when absent)."""
    f = fit_frame(results, metric, model)
    f = f[(f["left_out"] == left_out) & (f["method"] == method)]
    for k, v in where.items():
        f = f[f[k] == v]
    return float(f["value"].iloc[0]) if len(f) == 1 else math.nan


@_claim(
    "mergeability_predictable",
    MERGEABILITY,
    "The pairwise metrics predict post-merge accuracy on tasks the model never saw: a "
    "sparse linear model of the 28 metrics, fitted leave-one-task-out, correlates "
    "positively with the normalized accuracy of the held-out task's pairs (pooled r over "
    "the folds > 0, the mean over the five methods).",
    f"Demystifying Mergeability: mean fold r about {PAPER_R} (ViT-B/16). Judged here on "
    "the pooled r instead (one correlation over every held-out pair): a fold of 7 pairs has "
    "a noisy r of its own, and the mean of such r's is not a correlation. The study's table "
    "shows both.",
)
def _predictable(results: Results) -> list[Condition] | str:
    cond = _statistic_condition(
        results,
        "pooled held-out r",
        "greater",
        lambda res, left_out, m: _value(res, "pooled_r", left_out, m),
        "r",
    )
    return cond if isinstance(cond, str) else [cond]


def _net_sign(results: Results, left_out: str, method: str, feature: str) -> float:
    return _value(results, "net_sign", left_out, method, fold="mean", feature=feature)


@_claim(
    "mergeability_gradient_sign",
    MERGEABILITY,
    "Encoder-gradient L2 distance carries a negative weight: the further apart the two "
    "models' gradients on their own tasks, the worse they merge. Measured as the net sign "
    "of its coefficient in the sparse model (the mean over the folds of its sign: -1 when "
    "every fold weighs it negatively, 0 when never selected), per method and averaged.",
    "Demystifying Mergeability: gradient L2 distance is the most reliable signal, with a "
    "negative sign for every method.",
)
def _gradient_sign(results: Results) -> list[Condition] | str:
    cond = _statistic_condition(
        results,
        f"{GRADIENT_L2} net sign",
        "less",
        lambda res, left_out, m: _net_sign(res, left_out, m, GRADIENT_L2),
        "net sign",
    )
    return cond if isinstance(cond, str) else [cond]


def _margin(results: Results, left_out: str) -> float:
    """|mean over methods of gradient L2's net sign| minus the largest such value of any
    other metric: positive when gradient L2 is the most consistent predictor."""
    f = fit_frame(results, "net_sign")
    f = f[(f["left_out"] == left_out) & (f["fold"] == "mean")]
    if f.empty or GRADIENT_L2 not in set(f["feature"]):
        return math.nan
    consistent = f.groupby("feature", sort=False)["value"].mean().abs()
    return float(consistent[GRADIENT_L2] - consistent.drop(GRADIENT_L2).max())


@_claim(
    "mergeability_gradient_top",
    MERGEABILITY,
    "Encoder-gradient L2 distance is the most consistent predictor: its net sign averaged "
    "over the five methods is larger in magnitude than any other metric's (a metric "
    "selected in every fold of every method with one sign scores 1; one whose sign flips "
    "between methods or folds cancels out).",
    "Demystifying Mergeability: encoder-gradient L2 distance the most reliable signal.",
)
def _gradient_top(results: Results) -> list[Condition] | str:
    f = fit_frame(results, "net_sign")
    f = f[(f["left_out"] == FULL) & (f["fold"] == "mean") & (f["feature"] != GRADIENT_L2)]
    rival = ""
    if not f.empty:
        scores = f.groupby("feature", sort=False)["value"].mean()
        top = scores.abs().idxmax()
        rival = f" (the most consistent other metric on every task: {top}, {scores[top]:+.2f})"
    label = f"|net sign of {GRADIENT_L2}| - the best other metric's{rival}"
    return _over_methods(
        results,
        _margin,
        "no net signs of encoder_gradient_l2 (the mergeability study did not run)",
        _TaskRange(label, "greater", unit="net sign"),
    )


def _over_methods(results: Results, statistic, missing: str, cond: _TaskRange):
    """``cond`` with one unit: ``statistic(results, left_out)``, a statistic of every
    method at once, and its range over the fits without one task."""
    reps = _replicates(results)
    full = statistic(results, FULL)
    if not math.isfinite(full):
        return missing
    if len(reps) < 3:
        return f"{len(reps)} fits without one task; the range needs at least 3"
    cond.basis = f"range over the fit on all tasks and {len(reps)} fits without one"
    iv = task_range(full, [statistic(results, t) for t in reps])
    cond.put({"method": "all methods"}, iv, full)
    cond.pooled_interval = iv
    return [cond]


def top_sets(coefs: pd.DataFrame, k: int = TOP_K) -> dict[str, list[str]]:
    """Per method, its ``k`` metrics of largest |coefficient| (nonzero only; ties in
    feature order)."""
    out = {}
    for m in coefs.columns:
        v = coefs[m].abs()
        v = v[v > 0]
        order = sorted(range(len(v)), key=lambda i: (-float(v.iloc[i]), i))
        out[m] = [str(v.index[i]) for i in order[:k]]
    return out


def overlap(a: Sequence[str], b: Sequence[str], k: int = TOP_K) -> float:
    return len(set(a) & set(b)) / k


def sign_agreement(coefs: pd.DataFrame, a: str, b: str) -> float:
    """Among metrics nonzero in both methods, the share with the same sign (NaN if none)."""
    both = (coefs[a] != 0) & (coefs[b] != 0)
    if not both.any():
        return math.nan
    return float((np.sign(coefs[a][both]) == np.sign(coefs[b][both])).mean())


def _ties_gap(results: Results, left_out: str) -> float:
    """Mean top-k overlap of TIES with the other methods minus theirs among themselves."""
    c = mean_coefficients(results, left_out)
    if c.empty or "TIES" not in c.columns or len(c.columns) < 3:
        return math.nan
    tops = top_sets(c)
    others = [m for m in c.columns if m != "TIES"]
    with_ties = [overlap(tops["TIES"], tops[m]) for m in others]
    among = [overlap(tops[a], tops[b]) for a, b in itertools.combinations(others, 2)]
    return float(np.mean(with_ties) - np.mean(among))


@_claim(
    "mergeability_ties_differs",
    MERGEABILITY,
    f"TIES differs from the other methods: its top-{TOP_K} metrics (largest |mean "
    f"coefficient|) overlap less with theirs than theirs do with each other.",
    "Demystifying Mergeability: what predicts a merge depends on the method; TIES stands "
    "apart from the rest.",
)
def _ties_differs(results: Results) -> list[Condition] | str:
    return _over_methods(
        results,
        _ties_gap,
        "TIES and two other methods are needed (the mergeability study did not run them)",
        _TaskRange("overlap with TIES - overlap among the others", "less", unit="share"),
    )


# -- tables ------------------------------------------------------------------------------


@MERGEABILITY.table
def mergeability_tables(results: Results) -> list[Table]:
    out: list[Table] = []
    acc = results.select(MERGEABILITY, metric="normalized_accuracy")
    if not acc.empty:
        w = acc.pivot_table(
            index=["dataset", "other_dataset"], columns="method", values="value", aggfunc="first"
        )
        w = w[_methods(acc)]
        w.index.names = ["task A", "task B"]
        w.columns.name = None
        w.loc[("mean", ""), :] = w.mean(axis=0)
        out.append(
            Table(
                "Mergeability: normalized test accuracy of each pair's merge (%)",
                w * 100.0,
                "Merged / each task's own fine-tuned backbone, averaged over the pair's two "
                "tasks; the paper's fixed settings, no coefficient chosen.",
            )
        )
    return out


@MERGEABILITY_FIT.table
def predictor_tables(results: Results) -> list[Table]:
    out: list[Table] = []
    r = fit_frame(results, "pooled_r")
    if r.empty:
        return out
    rows = []
    for m in _methods(r):
        row: dict[str, object] = {"method": m}
        for model, name in ((SPARSE, "sparse -Pearson+L1"), (LASSO, "Lasso")):
            for metric, what in (("mean_fold_r", "mean fold r"), ("pooled_r", "pooled r")):
                row[f"{name}: {what}"] = _value(results, metric, FULL, m, model=model)
        nz = fit_frame(results, "nonzero_frequency")
        nz = nz[(nz["left_out"] == FULL) & (nz["method"] == m)]
        row["metrics used (mean over folds)"] = float(nz["value"].sum())
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("method")
    out.append(
        Table(
            "Mergeability: predicting post-merge accuracy, leave-one-task-out",
            frame,
            f"Each fold holds out every pair of one task; features scaled on the training "
            f"pairs only. Mean fold r: the folds' held-out Pearson r averaged; pooled r: every "
            f"fold's held-out predictions against their targets. Paper: mean fold r about "
            f"{PAPER_R} (ViT-B/16, 20 tasks).",
            fmt="{:.3f}",
        )
    )
    coefs = mean_coefficients(results)
    tops = top_sets(coefs)
    top_rows = {
        m: ", ".join(f"{f} ({coefs.loc[f, m]:+.2f})" for f in tops[m]) for m in coefs.columns
    }
    out.append(
        Table(
            f"Mergeability: each method's top-{TOP_K} metrics (mean coefficient)",
            pd.DataFrame({"top metrics": top_rows}),
            "Largest |coefficient| of the sparse model, averaged over the folds.",
            fmt="{}",
        )
    )
    methods = list(coefs.columns)
    ov = pd.DataFrame(index=methods, columns=methods, dtype=float)
    sg = pd.DataFrame(index=methods, columns=methods, dtype=float)
    for a, b in itertools.product(methods, methods):
        ov.loc[a, b] = overlap(tops[a], tops[b]) if a != b else 1.0
        sg.loc[a, b] = sign_agreement(coefs, a, b) if a != b else 1.0
    pairs = list(itertools.combinations(methods, 2))
    mean_ov = float(np.mean([ov.loc[a, b] for a, b in pairs])) if pairs else math.nan
    mean_sg = float(np.nanmean([sg.loc[a, b] for a, b in pairs])) if pairs else math.nan
    out.append(
        Table(
            f"Mergeability: top-{TOP_K} overlap (upper) and sign agreement between methods (%)",
            _upper_lower(ov, sg) * 100.0,
            f"Mean over method pairs: top-{TOP_K} overlap {mean_ov:.1%} (paper "
            f"{PAPER_OVERLAP:.1%}), sign agreement {mean_sg:.1%} (paper {PAPER_SIGNS:.1%}; "
            "among metrics nonzero in both methods). Chance overlap of two random "
            f"top-{TOP_K} sets of {len(coefs)} metrics: {TOP_K / max(len(coefs), 1):.1%}.",
            fmt="{:.0f}",
        )
    )
    return out


def _upper_lower(upper: pd.DataFrame, lower: pd.DataFrame) -> pd.DataFrame:
    """One square frame: ``upper`` above the diagonal, ``lower`` below, NaN on it."""
    out = upper.copy()
    n = len(out)
    for i in range(n):
        for j in range(n):
            out.iloc[i, j] = upper.iloc[i, j] if i < j else lower.iloc[i, j] if i > j else np.nan
    return out


# -- figure ------------------------------------------------------------------------------


@MERGEABILITY.figure
def fig_mergeability(results: Results | pd.DataFrame, out_dir: Path) -> list[Path]:
    """Each method's normalized accuracy over the pairs (dots: pairs, bar: mean), and
    every pair's normalized accuracy against its encoder-gradient L2 distance."""
    results = Results.of_rows(results)
    acc = results.select(MERGEABILITY, metric="normalized_accuracy")
    if acc.empty:
        return []
    methods = _methods(acc)
    grad = results.select(MERGEABILITY, metric=GRADIENT_L2, where={"method": PAIR})
    by_pair = grad.set_index(["dataset", "other_dataset"])["value"]
    with _figure(1, 2, size=(11.0, 3.6)) as (fig, axes):
        ax = axes[0, 0]
        for i, m in enumerate(methods):
            v = 100 * acc[acc["method"] == m]["value"].to_numpy(float)
            ax.bar(i, v.mean(), color=method_color(m), alpha=0.85)
            ax.scatter(np.full(len(v), i), v, s=8, color="black", zorder=3)
        ax.axhline(100.0, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_ylabel("normalized test accuracy (%)")
        n = acc.groupby(["dataset", "other_dataset"]).ngroups
        ax.set_title(f"{n} task pairs merged: bars mean, dots pairs")
        ax = axes[0, 1]
        for m in methods:
            g = acc[acc["method"] == m]
            pairs = zip(g["dataset"], g["other_dataset"], strict=True)
            x = [by_pair.get(p, np.nan) for p in pairs]
            ax.scatter(x, 100 * g["value"], s=14, color=method_color(m), label=m)
        ax.set_xlabel("encoder-gradient L2 distance of the pair")
        ax.set_ylabel("normalized test accuracy (%)")
        ax.set_title("Post-merge accuracy against gradient distance")
        _legend_right(ax)
        return [_save(fig, Path(out_dir) / "mergeability.png")]


@MERGEABILITY_FIT.figure
def fig_predictor(results: Results | pd.DataFrame, out_dir: Path) -> list[Path]:
    """The sparse model's mean coefficients (metrics x methods, red negative, blue
    positive), and each method's held-out r per fold (dots) for both models."""
    results = Results.of_rows(results)
    coefs = mean_coefficients(results)
    if coefs.empty:
        return []
    folds = fit_frame(results, "fold_r")
    lasso = fit_frame(results, "fold_r", LASSO)
    methods = list(coefs.columns)
    with _figure(1, 2, size=(11.0, 0.26 * len(coefs) + 1.8)) as (fig, axes):
        ax = axes[0, 0]
        v = coefs.to_numpy(float)
        lim = max(float(np.nanmax(np.abs(v))), 1e-9)
        im = ax.imshow(v, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_yticks(range(len(coefs)), list(coefs.index), fontsize=7)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        for (i, j), x in np.ndenumerate(v):
            if x != 0:
                ax.text(j, i, f"{x:+.2f}", ha="center", va="center", fontsize=6)
        fig.colorbar(im, ax=ax, fraction=0.04, label="mean coefficient")
        ax.set_title("Sparse model: coefficients (mean over folds)")
        ax = axes[0, 1]
        for k, (frame, name, dx, marker) in enumerate(
            ((folds, "sparse -Pearson+L1", -0.12, "o"), (lasso, "Lasso", 0.12, "s"))
        ):
            f = frame[frame["left_out"] == FULL]
            for i, m in enumerate(methods):
                vals = f[f["method"] == m]["value"].to_numpy(float)
                ax.scatter(
                    np.full(len(vals), i + dx),
                    vals,
                    s=14,
                    marker=marker,
                    color=f"C{k}",
                    label=name if i == 0 else None,
                )
                if len(vals):
                    ax.plot([i + dx - 0.1, i + dx + 0.1], [np.nanmean(vals)] * 2, color=f"C{k}")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.axhline(PAPER_R, color="grey", linestyle="--", linewidth=0.8, label=f"paper {PAPER_R}")
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("held-out Pearson r")
        ax.set_ylim(-1.05, 1.05)
        ax.set_title("Leave-one-task-out: r per fold (lines: mean)")
        ax.legend(fontsize=7)
        return [_save(fig, Path(out_dir) / "mergeability_fit.png")]
