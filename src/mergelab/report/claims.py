"""The findings of "Rethinking Weight-Averaged Model-merging", checked against our rows.

Each claim is a callable ``claim(rows) -> Claim``: it reads only the tidy results table,
computes the numbers it needs, and says "reproduced", "not reproduced" or, when the
study that would test it did not run, "not measured". Every number in ``measured`` is
computed here from the rows; the paper's own numbers appear only in ``paper``, as
context. A "not reproduced" is a result, not an error.

Conventions: a "point" is 0.01 when the metric is stored as a fraction in [0, 1] (the
report shows such values as percentages) and 1.0 when it is stored in percent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from mergelab.report._common import (
    KEY_COLUMNS,
    is_fraction,
    magnitude_rows,
    method_table,
    normalize_rows,
    primary_rows,
    study_rows,
)
from mergelab.report._io import atomic_write_text

__all__ = [
    "CLAIMS",
    "NOT_MEASURED",
    "NOT_REPRODUCED",
    "REPRODUCED",
    "Claim",
    "ClaimSpec",
    "evaluate_claims",
    "markdown_table",
    "write_claims_md",
]

Verdict = Literal["reproduced", "not reproduced", "not measured"]
REPRODUCED: Verdict = "reproduced"
NOT_REPRODUCED: Verdict = "not reproduced"
NOT_MEASURED: Verdict = "not measured"

# Thresholds, stated in each claim's text so a reader can judge them.
FEATURES_TOLERANCE_POINTS = 1.0  # (h) "matches": within one point
FEATURES_MIN_FRACTION = 0.75  # (h) ... in at least this share of settings
LARGE_FACTOR = 50.0  # (d) "large" scaling factors
TEMPLATE_MIN_CORRELATION = 0.5  # (f)
VARIANCE_RATIO_RANGE = (2.0 / 3.0, 1.5)  # (e) "close to the prediction"
_EPS = 1e-9


@dataclass(frozen=True, eq=False)
class Claim:
    """One finding and what our rows say about it."""

    key: str
    statement: str
    measured: str
    verdict: Verdict
    details: pd.DataFrame | None = None
    paper: str = ""


CheckResult = tuple[str, Verdict, pd.DataFrame | None]


@dataclass(frozen=True)
class ClaimSpec:
    """A claim's text and the check that measures it; calling it with rows gives a Claim.

    A check that raises does not sink the report: the claim comes back "not measured"
    with the error in ``measured``, where a reader sees it.
    """

    key: str
    statement: str
    paper: str
    check: Callable[[pd.DataFrame], CheckResult]

    def __call__(self, rows: pd.DataFrame) -> Claim:
        try:
            measured, verdict, details = self.check(normalize_rows(rows))
        except Exception as exc:
            measured, verdict, details = (
                f"could not be evaluated: {type(exc).__name__}: {exc}",
                NOT_MEASURED,
                None,
            )
        return Claim(self.key, self.statement, measured, verdict, details, self.paper)


CLAIMS: list[ClaimSpec] = []


def _claim(key: str, statement: str, paper: str = "") -> Callable[..., ClaimSpec]:
    def register(check: Callable[[pd.DataFrame], CheckResult]) -> ClaimSpec:
        spec = ClaimSpec(key, statement, paper, check)
        CLAIMS.append(spec)
        return spec

    return register


def evaluate_claims(rows: pd.DataFrame, claims: list[ClaimSpec] | None = None) -> list[Claim]:
    """Every claim (or the given ones), in order, evaluated on ``rows``."""
    return [spec(rows) for spec in (CLAIMS if claims is None else claims)]


# -- helpers -----------------------------------------------------------------------------


def _scale(values: pd.Series | np.ndarray) -> float:
    """100 for fractions (so differences read as points), 1 for values already in percent."""
    return 100.0 if is_fraction(values) else 1.0


def _share(n: int, total: int) -> str:
    return f"{n}/{total} ({100.0 * n / total:.0f}%)"


def _where(row: pd.Series) -> str:
    parts = [str(row[c]) for c in ("dataset", "arch") if c in row.index and str(row[c])]
    if "n_models" in row.index and not pd.isna(row["n_models"]):
        parts.append(f"N={int(row['n_models'])}")
    return "/".join(parts[:2]) + (f", {parts[2]}" if len(parts) > 2 else "")


def _num(x: float, digits: int = 2, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _wvf_table(rows: pd.DataFrame, split: str) -> pd.DataFrame:
    return method_table(study_rows(rows, "weights_vs_features"), split)


def _not_measured(reason: str) -> CheckResult:
    return reason, NOT_MEASURED, None


# -- (a) ---------------------------------------------------------------------------------


@_claim(
    "ens_logits_beats_soups",
    "Ens Logits beats every soup: its test metric is at least that of Uniform Soup and "
    "Greedy Soup in every setting (dataset, architecture, model count).",
    "VGG19, 10 models, CIFAR-100: Ens Logits 75.36 vs Uniform Soup 69.63 and Greedy Soup 70.25.",
)
def ens_logits_beats_soups(rows: pd.DataFrame) -> CheckResult:
    t = _wvf_table(rows, "test")
    soups = [c for c in ("Uniform Soup", "Greedy Soup") if c in t.columns]
    if "Ens Logits" not in t.columns or not soups:
        return _not_measured("no weights_vs_features test rows with Ens Logits and a soup")
    t = t.dropna(subset=["Ens Logits"])
    t = t.assign(best_soup=t[soups].max(axis=1, skipna=True)).dropna(subset=["best_soup"])
    if t.empty:
        return _not_measured("no setting has both Ens Logits and a soup")
    k = _scale(t[["Ens Logits", *soups]].to_numpy().ravel())
    t = t.assign(margin_points=(t["Ens Logits"] - t["best_soup"]) * k)
    t = t.assign(holds=t["margin_points"] >= -_EPS)
    n, total = int(t["holds"].sum()), len(t)
    worst = t.loc[t["margin_points"].idxmin()]
    measured = (
        f"Ens Logits >= max(soups) in {_share(n, total)} settings; margin over the best "
        f"soup: mean {_num(t['margin_points'].mean(), signed=True)} points, smallest "
        f"{_num(worst['margin_points'], signed=True)} ({_where(worst)})"
    )
    details = t[[*KEY_COLUMNS, "Ens Logits", *soups, "margin_points", "holds"]]
    return measured, REPRODUCED if n == total else NOT_REPRODUCED, details


# -- (b) ---------------------------------------------------------------------------------


@_claim(
    "greedy_soup_not_below_best_individual",
    "Greedy Soup is never below its best ingredient on the validation split (it starts "
    "from the best model and only accepts ingredients that do not lower val accuracy).",
    "Greedy soup as in Wortsman et al.; holds by construction, so a failure points to a "
    "defect (the paper's public code halves the soup at each step).",
)
def greedy_soup_not_below_best(rows: pd.DataFrame) -> CheckResult:
    t = _wvf_table(rows, "val")
    if "Greedy Soup" not in t.columns or "Best Individual" not in t.columns:
        return _not_measured("no weights_vs_features val rows with Greedy Soup and individuals")
    t = t.dropna(subset=["Greedy Soup", "Best Individual"])
    if t.empty:
        return _not_measured("no setting has both Greedy Soup and Best Individual on val")
    k = _scale(t[["Greedy Soup", "Best Individual"]].to_numpy().ravel())
    t = t.assign(margin_points=(t["Greedy Soup"] - t["Best Individual"]) * k)
    t = t.assign(holds=t["margin_points"] >= -_EPS * k)
    n, total = int(t["holds"].sum()), len(t)
    worst = t.loc[t["margin_points"].idxmin()]
    measured = (
        f"Greedy Soup val >= Best Individual val in {_share(n, total)} settings; smallest "
        f"margin {_num(worst['margin_points'], signed=True)} points ({_where(worst)}), "
        f"mean {_num(t['margin_points'].mean(), signed=True)}"
    )
    details = t[[*KEY_COLUMNS, "Greedy Soup", "Best Individual", "margin_points", "holds"]]
    return measured, REPRODUCED if n == total else NOT_REPRODUCED, details


# -- (c) ---------------------------------------------------------------------------------


def _is_vit(arch: str) -> bool:
    a = arch.lower()
    return "vit" in a or "deit" in a


@_claim(
    "vit_uniform_soup_degrades",
    "Uniform soups of ViTs degrade as N grows: for ViT/DeiT architectures the Uniform "
    "Soup test metric at the largest N is below that at the smallest N and below the "
    "average of the individual models (Perf Ave).",
    "DeiT-Tiny, TinyImageNet: average individual 66.8, 10-model uniform soup 8.9.",
)
def vit_uniform_soup_degrades(rows: pd.DataFrame) -> CheckResult:
    t = _wvf_table(rows, "test")
    if "Uniform Soup" not in t.columns:
        return _not_measured("no weights_vs_features test rows with Uniform Soup")
    t = t.dropna(subset=["Uniform Soup"])
    if "Perf Ave" not in t.columns:
        t = t.assign(**{"Perf Ave": np.nan})
    out = []
    for (dataset, arch, metric), g in t.groupby(["dataset", "arch", "metric"], sort=True):
        if g["n_models"].nunique() < 2:
            continue
        g = g.sort_values("n_models")
        lo, hi = g.iloc[0], g.iloc[-1]
        below_small = bool(hi["Uniform Soup"] < lo["Uniform Soup"])
        below_ave = bool(hi["Uniform Soup"] < hi["Perf Ave"]) if pd.notna(hi["Perf Ave"]) else None
        out.append(
            {
                "dataset": dataset,
                "arch": arch,
                "metric": metric,
                "vit": _is_vit(arch),
                "n_small": int(lo["n_models"]),
                "n_large": int(hi["n_models"]),
                "soup_small": lo["Uniform Soup"],
                "soup_large": hi["Uniform Soup"],
                "perf_ave_large": hi["Perf Ave"],
                "below_small_n": below_small,
                "below_perf_ave": below_ave,
                "holds": below_small and below_ave is not False,
            }
        )
    details = pd.DataFrame(out)
    vit = details[details["vit"]] if not details.empty else details
    if vit.empty:
        return _not_measured("no ViT/DeiT architecture with at least two model counts")
    k = _scale(details[["soup_small", "soup_large", "perf_ave_large"]].to_numpy().ravel())
    n, total = int(vit["holds"].sum()), len(vit)
    examples = "; ".join(
        f"{r.dataset}/{r.arch}: {_num(r.soup_small * k)} (N={r.n_small}) -> "
        f"{_num(r.soup_large * k)} (N={r.n_large}), Perf Ave {_num(r.perf_ave_large * k)}"
        for r in vit.head(3).itertuples()
    )
    measured = f"degrades in {_share(n, total)} ViT settings ({examples})"
    other = details[~details["vit"]]
    if not other.empty:
        measured += (
            f"; for comparison, other archs: {_share(int(other['holds'].sum()), len(other))}"
        )
    if vit["below_perf_ave"].isna().any():
        measured += "; Perf Ave missing for some settings (compared with smallest N only)"
    return measured, REPRODUCED if n == total else NOT_REPRODUCED, details


# -- (d) ---------------------------------------------------------------------------------


@_claim(
    "merging_robust_to_magnitude",
    f"Merging is more robust than ensembling at large factors: when every model's "
    f"parameters are scaled by c >= {LARGE_FACTOR:g}, Uniform Soup loses less test accuracy "
    f"(relative to c = 1) than Ens Logits at most points and on average.",
    "Scaling factors x1 ... x150: merged models stay more robust than logit ensembles.",
)
def merging_robust_to_magnitude(rows: pd.DataFrame) -> CheckResult:
    mag = primary_rows(magnitude_rows(study_rows(rows, "magnitude")))
    if (mag["split"] == "test").any():
        mag = mag[mag["split"] == "test"]
    mag = mag[mag["method"].isin(["Uniform Soup", "Ens Logits"])].dropna(subset=["value"])
    mag = mag.dropna(subset=["magnitude"])
    default = mag[(mag["scaled"] == "all") & (mag["tensors"] == "all")]
    options = "scaled=all, tensors=all"
    if default.empty:
        default, options = mag, "all options present"
    if default.empty:
        return _not_measured("no magnitude rows with Uniform Soup and Ens Logits")
    keys = ["dataset", "arch", "n_models", "scaled", "tensors"]
    wide = (
        default.groupby([*keys, "magnitude", "method"], dropna=False)["value"]
        .mean()
        .unstack("method")
    )
    if not {"Uniform Soup", "Ens Logits"} <= set(wide.columns):
        return _not_measured("magnitude rows lack Uniform Soup or Ens Logits")
    k = _scale(wide.to_numpy().ravel())
    out = []
    for key, g in wide.groupby(level=keys, dropna=False):
        g = g.droplevel(keys)
        if 1.0 not in g.index:
            continue
        base = g.loc[1.0]
        for factor, r in g[g.index >= LARGE_FACTOR].iterrows():
            drop_us = (base["Uniform Soup"] - r["Uniform Soup"]) * k
            drop_el = (base["Ens Logits"] - r["Ens Logits"]) * k
            if not (math.isfinite(drop_us) and math.isfinite(drop_el)):
                continue
            out.append(
                {
                    **dict(zip(keys, key, strict=True)),
                    "magnitude": factor,
                    "soup_drop_points": drop_us,
                    "ens_logits_drop_points": drop_el,
                    "holds": bool(drop_us < drop_el),
                }
            )
    if not out:
        return _not_measured(f"no factor >= {LARGE_FACTOR:g} with a factor-1 baseline")
    details = pd.DataFrame(out)
    n, total = int(details["holds"].sum()), len(details)
    mean_us = details["soup_drop_points"].mean()
    mean_el = details["ens_logits_drop_points"].mean()
    measured = (
        f"at factors >= {LARGE_FACTOR:g} ({options}), Uniform Soup dropped less than Ens "
        f"Logits at {_share(n, total)} points; mean drop {_num(mean_us)} points (Uniform "
        f"Soup) vs {_num(mean_el)} (Ens Logits)"
    )
    ok = n > total / 2 and mean_us < mean_el
    return measured, REPRODUCED if ok else NOT_REPRODUCED, details


# -- (e) ---------------------------------------------------------------------------------


@_claim(
    "averaging_shrinks_weights",
    "Averaging shrinks max |w| and variance: in every tensor the average's max |w| and "
    "variance are at most the largest of the models', and for independently trained "
    "models the average's variance is close to the prediction sum(s_i^2)/N^2 "
    f"(median ratio within [{VARIANCE_RATIO_RANGE[0]:.2f}, {VARIANCE_RATIO_RANGE[1]:.2f}]).",
    "Var of the mean of two = (s1^2 + s2^2) / 4.",
)
def averaging_shrinks_weights(rows: pd.DataFrame) -> CheckResult:
    ws = study_rows(rows, "weight_stats")
    if "layer" not in ws.columns or ws.empty:
        return _not_measured("no weight_stats rows")
    ws = ws.dropna(subset=["value"])
    keys = ["dataset", "arch", "n_models", "layer"]
    if "init" in ws.columns:
        ws = ws.assign(init=ws["init"].astype(object).where(ws["init"].notna(), "").astype(str))
        keys.append("init")
    avg = ws[ws["method"] == "average"]
    stats = avg.groupby([*keys, "metric"], dropna=False)["value"].mean().unstack("metric")
    models = ws[ws["method"] == "model"]
    model_max = models.groupby([*keys, "metric"], dropna=False)["value"].max().unstack("metric")

    bounds = pd.DataFrame(index=stats.index)
    for metric, given in (("max_abs", "max_abs_bound_holds"), ("variance", "variance_bound_holds")):
        col = f"{metric}_bound_holds"
        if given in stats.columns:
            bounds[col] = stats[given] > 0.5
        elif metric in stats.columns and metric in model_max.columns:
            m = model_max[metric].reindex(stats.index)
            derived = stats[metric] <= m * (1 + 1e-6) + 1e-12
            bounds[col] = derived.where(m.notna())
    bounds = bounds.dropna(how="all")
    if bounds.empty:
        return _not_measured("weight_stats rows hold no bound checks nor model/average stats")

    parts, ok = [], True
    for col, label in (("max_abs_bound_holds", "max |w|"), ("variance_bound_holds", "variance")):
        if col in bounds.columns:
            v = bounds[col].dropna().astype(bool)
            parts.append(f"{label} bound holds in {_share(int(v.sum()), len(v))} tensors")
            ok &= bool(v.all())
    details = bounds.copy()
    ratio_text = "variance prediction not measured (no predicted_variance rows)"
    if {"variance", "predicted_variance"} <= set(stats.columns):
        pred = stats["predicted_variance"].where(stats["predicted_variance"] > 0)
        ratio = (stats["variance"] / pred).rename("variance_ratio")
        details = details.join(ratio, how="outer")
        ratio = ratio.dropna()
        inits = ratio.index.get_level_values("init") if "init" in keys else None
        if inits is not None and (inits == "independent").any():
            indep, scope = ratio[inits == "independent"], "independent inits"
        elif inits is not None and (inits != "").any():
            indep, scope = ratio.iloc[0:0], ""
        else:
            indep, scope = ratio, "init not recorded"
        if len(indep):
            med = float(indep.median())
            lo, hi = VARIANCE_RATIO_RANGE
            ratio_text = (
                f"measured/predicted variance of the average: median {_num(med, 3)} "
                f"({scope}, {len(indep)} tensors)"
            )
            ok &= lo <= med <= hi
        else:
            ratio_text = "variance prediction not checked (no independently trained models)"
        if inits is not None:
            for init in sorted(set(inits) - {"independent", ""}):
                r = ratio[inits == init]
                if len(r):
                    ratio_text += f"; {init} init: median {_num(float(r.median()), 3)}"
    measured = "; ".join([*parts, ratio_text])
    return measured, REPRODUCED if ok else NOT_REPRODUCED, details.reset_index()


# -- (f) ---------------------------------------------------------------------------------


@_claim(
    "classifier_templates",
    "A linear classifier's weights look like class-mean images: the median correlation "
    f"between a class's weight row and its class-mean image exceeds "
    f"{TEMPLATE_MIN_CORRELATION:g} on every dataset.",
    "Shown qualitatively (weight rows reshaped to the image beside the class means).",
)
def classifier_templates(rows: pd.DataFrame) -> CheckResult:
    tp = study_rows(rows, "templates")
    tp = tp[tp["metric"] == "template_correlation"].dropna(subset=["value"])
    if tp.empty or not (tp["method"] == "classifier").any():
        return _not_measured("no template_correlation rows for the classifier")
    details = (
        tp.groupby(["dataset", "arch", "method"])["value"]
        .agg(median="median", min="min", classes="count")
        .reset_index()
    )
    cls = details[details["method"] == "classifier"]
    cls = cls.assign(holds=cls["median"] > TEMPLATE_MIN_CORRELATION)
    details = details.merge(cls[["dataset", "arch", "method", "holds"]], how="left")
    per = ", ".join(
        f"{r.dataset}: {_num(r.median, 3)} ({r.classes} classes)" for r in cls.itertuples()
    )
    n, total = int(cls["holds"].sum()), len(cls)
    measured = (
        f"median classifier template correlation > {TEMPLATE_MIN_CORRELATION:g} on "
        f"{_share(n, total)} datasets ({per})"
    )
    for method in ("merged_halves", "merged_two_models"):
        m = tp[tp["method"] == method]
        if len(m):
            measured += f"; {method}: median {_num(float(m['value'].median()), 3)}"
    return measured, REPRODUCED if n == total else NOT_REPRODUCED, details


# -- (g) ---------------------------------------------------------------------------------


@_claim(
    "gap_grows_with_n",
    "The gap between Ens Logits and Uniform Soup grows with the number of models: the "
    "least-squares slope of (Ens Logits - Uniform Soup) against N is positive in most "
    "(more than half of the) dataset/architecture settings.",
    "Figure of the gap against model count (2 ... 10 models).",
)
def gap_grows_with_n(rows: pd.DataFrame) -> CheckResult:
    t = _wvf_table(rows, "test")
    if not {"Ens Logits", "Uniform Soup"} <= set(t.columns):
        return _not_measured("no weights_vs_features test rows with Ens Logits and Uniform Soup")
    t = t.dropna(subset=["Ens Logits", "Uniform Soup"])
    k = _scale(t[["Ens Logits", "Uniform Soup"]].to_numpy().ravel())
    t = t.assign(gap=(t["Ens Logits"] - t["Uniform Soup"]) * k)
    out = []
    for (dataset, arch, metric), g in t.groupby(["dataset", "arch", "metric"], sort=True):
        if g["n_models"].nunique() < 2:
            continue
        g = g.sort_values("n_models")
        slope = float(np.polyfit(g["n_models"].to_numpy(float), g["gap"].to_numpy(float), 1)[0])
        out.append(
            {
                "dataset": dataset,
                "arch": arch,
                "metric": metric,
                "n_values": ",".join(str(int(n)) for n in g["n_models"]),
                "gap_points": ",".join(_num(v) for v in g["gap"]),
                "slope_points_per_model": slope,
                "holds": slope > 0,
            }
        )
    if not out:
        return _not_measured("no setting with at least two model counts")
    details = pd.DataFrame(out)
    n, total = int(details["holds"].sum()), len(details)
    med = float(details["slope_points_per_model"].median())
    measured = (
        f"slope > 0 in {_share(n, total)} settings; median slope "
        f"{_num(med, 3, signed=True)} points per added model"
    )
    return measured, REPRODUCED if n > total / 2 else NOT_REPRODUCED, details


# -- (h) ---------------------------------------------------------------------------------


@_claim(
    "ens_features_matches_logits",
    f"Ens Features matches Ens Logits: their test metrics differ by at most "
    f"{FEATURES_TOLERANCE_POINTS:g} point in at least {FEATURES_MIN_FRACTION:.0%} of settings.",
    "VGG19, 10 models, CIFAR-100: Ens Features 74.96 vs Ens Logits 75.36.",
)
def ens_features_matches_logits(rows: pd.DataFrame) -> CheckResult:
    t = _wvf_table(rows, "test")
    if not {"Ens Logits", "Ens Features"} <= set(t.columns):
        return _not_measured("no weights_vs_features test rows with Ens Logits and Ens Features")
    t = t.dropna(subset=["Ens Logits", "Ens Features"])
    if t.empty:
        return _not_measured("no setting has both Ens Logits and Ens Features")
    k = _scale(t[["Ens Logits", "Ens Features"]].to_numpy().ravel())
    t = t.assign(diff_points=(t["Ens Features"] - t["Ens Logits"]) * k)
    t = t.assign(holds=t["diff_points"].abs() <= FEATURES_TOLERANCE_POINTS + _EPS)
    n, total = int(t["holds"].sum()), len(t)
    worst = t.loc[t["diff_points"].abs().idxmax()]
    measured = (
        f"within {FEATURES_TOLERANCE_POINTS:g} point in {_share(n, total)} settings; median "
        f"|Ens Features - Ens Logits| {_num(float(t['diff_points'].abs().median()))} points, "
        f"largest {_num(worst['diff_points'], signed=True)} ({_where(worst)})"
    )
    details = t[[*KEY_COLUMNS, "Ens Logits", "Ens Features", "diff_points", "holds"]]
    ok = n / total >= FEATURES_MIN_FRACTION
    return measured, REPRODUCED if ok else NOT_REPRODUCED, details


# -- (i) ---------------------------------------------------------------------------------


@_claim(
    "cross_task_merging_fails",
    "Averaging a model with one trained on a different task hurts: on task A, the uniform "
    "soup of model A and model B is below model A in every pair.",
    "Table 3: merging models trained on different datasets.",
)
def cross_task_merging_fails(rows: pd.DataFrame) -> CheckResult:
    ct = primary_rows(study_rows(rows, "cross_task"))
    if (ct["split"] == "test").any():
        ct = ct[ct["split"] == "test"]
    ct = ct.dropna(subset=["value"])
    if "other_dataset" not in ct.columns:
        ct = ct.assign(other_dataset="")
    ct = ct.assign(other_dataset=ct["other_dataset"].astype(object).fillna("").astype(str))
    keys = ["arch", "dataset", "other_dataset"]
    if ct.empty:
        return _not_measured("no cross_task rows")
    wide = ct.groupby([*keys, "method"])["value"].mean().unstack("method")
    if not {"Model A", "Uniform Soup"} <= set(wide.columns):
        return _not_measured("cross_task rows lack Model A or Uniform Soup")
    wide = wide.dropna(subset=["Model A", "Uniform Soup"])
    if wide.empty:
        return _not_measured("no pair has both Model A and Uniform Soup")
    k = _scale(wide.to_numpy().ravel())
    wide = wide.assign(loss_points=(wide["Model A"] - wide["Uniform Soup"]) * k)
    wide = wide.assign(holds=wide["loss_points"] > 0)
    n, total = int(wide["holds"].sum()), len(wide)
    measured = (
        f"soup below Model A in {_share(n, total)} pairs; mean loss "
        f"{_num(float(wide['loss_points'].mean()))} points, smallest "
        f"{_num(float(wide['loss_points'].min()), signed=True)}"
    )
    return measured, REPRODUCED if n == total else NOT_REPRODUCED, wide.reset_index()


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
        lines.append(f"\n({len(df) - max_rows} more rows in the HTML report and results.csv)")
    return "\n".join(lines)


def write_claims_md(claims: list[Claim], path: Path) -> Path:
    """Write ``claims.md``: one summary table row per claim, then each claim's details."""
    lines = [
        '# Claims of "Rethinking Weight-Averaged Model-merging", checked here',
        "",
        "Each finding is measured from this run's results table. An honest \"not "
        'reproduced" is a result, not a failure of the run; "not measured" means the study '
        "that would test it did not run or produced no usable rows.",
        "",
        "| Finding | Measured here | Verdict |",
        "|---|---|---|",
    ]
    lines += [
        f"| {_md_cell(c.statement)} | {_md_cell(c.measured)} | **{c.verdict}** |" for c in claims
    ]
    for c in claims:
        lines += ["", f"## {c.key}", "", c.statement, ""]
        if c.paper:
            lines += [f"- Paper: {c.paper}"]
        lines += [f"- Measured here: {c.measured}", f"- Verdict: **{c.verdict}**"]
        if c.details is not None and not c.details.empty:
            lines += ["", markdown_table(c.details)]
    return atomic_write_text(Path(path), "\n".join(lines) + "\n")
