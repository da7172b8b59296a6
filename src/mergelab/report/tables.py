"""Compact tables of each study, computed from the results.

Each function takes :class:`Results` and returns ``Table`` objects whose frames are ready
to show: accuracies stored as fractions are multiplied by 100 (the title says so). Every
table is built from :meth:`Results.wide` or from one study's rows grouped by *all* its key
columns, so no cell mixes experiments; key columns that take one value only are left out
of the labels. Each function registers itself with its study (``@WVF.table``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from mergelab.report.frames import (
    Results,
    at_largest_n,
    constant_keys,
    experiment_label,
    is_fraction,
    methods_in,
    order_methods,
    primary_rows,
    varying,
)
from mergelab.studies.registry import (
    CROSS_TASK,
    INGREDIENTS,
    MAGNITUDE,
    MAGNITUDE_BATCHES,
    MULTITASK,
    STUDIES,
    TEMPLATES,
    WEIGHT_STATS,
    WVF,
)

__all__ = ["Table", "study_tables"]


@dataclass(frozen=True, eq=False)
class Table:
    """A titled frame to show; ``fmt`` formats its floats, ``index`` shows the row labels."""

    title: str
    frame: pd.DataFrame
    note: str = ""
    fmt: str = "{:.2f}"
    index: bool = True


def _percent(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Fractions -> percent, with the unit to put in the title."""
    if is_fraction(frame.to_numpy(float).ravel()):
        return frame * 100.0, " (%)"
    return frame, ""


def _metric_name(metrics: object) -> str:
    names = {"accuracy": "accuracy", "auroc": "AUROC"}
    return (
        " / ".join(dict.fromkeys(names.get(m, m) for m in pd.unique(pd.Series(metrics))))
        or "metric"
    )


# -- ingredients -------------------------------------------------------------------------


@INGREDIENTS.table
def ingredients_tables(results: Results) -> list[Table]:
    """One row per ingredient set: individual accuracy, training length, plateau, diversity."""
    df = results.of(INGREDIENTS)
    if df.empty:
        return []
    keys = list(INGREDIENTS.keys)
    ind = df[df["method"] == "Individual"]
    test = ind[(ind["split"] == "test") & (ind["metric"] == "accuracy")]
    g = test.groupby(keys, dropna=False)["value"]
    frame = pd.DataFrame(
        {"models": g.size(), "test acc mean": g.mean(), "min": g.min(), "max": g.max()}
    )
    frame[["test acc mean", "min", "max"]] *= 100.0
    val = ind[(ind["split"] == "val") & (ind["metric"] == "accuracy")].groupby(keys, dropna=False)[
        "value"
    ]
    frame["val acc mean"] = val.mean() * 100.0
    train = (
        ind[ind["split"] == "train"]
        .groupby([*keys, "metric"], dropna=False)["value"]
        .mean()
        .unstack("metric")
    )
    for metric, label, k in (
        ("epochs", "epochs", 1.0),
        ("best_epoch", "best epoch", 1.0),
        ("val_gain_last_quarter", "val gain, last quarter (points)", 100.0),
        ("train_seconds", "seconds per model", 1.0),
    ):
        if metric in train.columns:
            frame[label] = train[metric] * k
    start = df[(df["method"] == "start") & (df["metric"] == "accuracy")]
    if not start.empty:
        frame["start test acc"] = start.groupby(keys, dropna=False)["value"].mean() * 100.0
    pair = (
        df[df["method"] == "pairwise"]
        .groupby([*keys, "metric"], dropna=False)["value"]
        .mean()
        .unstack("metric")
    )
    if "disagreement" in pair.columns:
        frame["disagreement (%)"] = pair["disagreement"] * 100.0
    if "relative_l2_distance" in pair.columns:
        frame["L2 distance (% of norm)"] = pair["relative_l2_distance"] * 100.0
    elif "l2_distance" in pair.columns:
        frame["L2 distance"] = pair["l2_distance"]
    frame = frame.reset_index()
    shown = varying(frame, keys) or keys[:2]
    title_keys = constant_keys(frame, keys)
    frame = frame.set_index(shown).drop(columns=[k for k in keys if k not in shown])
    note = (
        "Test accuracy of each setting's N models, and of the shared start they were "
        "fine-tuned from (its head learned the source's classes); 'val gain, last quarter' "
        "is how much the best validation accuracy rose in the last quarter of training "
        "(about 0: plateaued); disagreement and L2 distance (relative to the models' mean "
        "parameter norm) are means over pairs of models."
    )
    title = "Ingredients" + (f" ({title_keys})" if title_keys else "")
    return [Table(title, frame, note)]


# -- weights vs features -----------------------------------------------------------------


@WVF.table
def wvf_tables(results: Results) -> list[Table]:
    """Across settings at the largest N; per setting: method x N; calibration; cost."""
    t = results.wide(WVF)
    if t.empty:
        return []
    keys = list(WVF.keys)
    out = []
    largest = at_largest_n(t, keys)
    methods = methods_in(largest, WVF)
    labels = varying(largest, keys) or ["dataset", "arch"]
    wide = largest.set_index(largest.apply(experiment_label, axis=1, args=(labels,)))[methods].T
    wide, unit = _percent(wide.dropna(how="all"))
    diversity = _diversity(results, largest, labels)
    if diversity is not None:
        wide.loc["(ingredients' disagreement)"] = diversity.reindex(wide.columns).to_numpy()
    extra = constant_keys(largest, [k for k in keys if k not in labels])
    out.append(
        Table(
            f"Test {_metric_name(largest['metric'])}{unit} at each setting's largest N"
            + (f" ({extra})" if extra else ""),
            wide,
            "Rows: methods; columns: one experiment each. The last row is the ingredients' mean "
            "pairwise test disagreement: near 0, soups and ensembles cannot differ.",
        )
    )
    per = [k for k in keys if k != "n_models"]
    for _, g in t.groupby(per, sort=True, dropna=False):
        ms = [m for m in methods_in(g, WVF) if g[m].notna().any()]
        piv = g.set_index("n_models")[ms].T
        piv.columns = [f"N={int(n)}" for n in piv.columns]
        piv, unit = _percent(piv)
        name = experiment_label(
            g.iloc[0], [k for k in per if k in varying(t, per)] or ["dataset", "arch"]
        )
        out.append(Table(f"{name}: test {_metric_name(g['metric'])}{unit} by N", piv))
    calib = []
    for metric in ("nll", "ece"):
        c = results.wide(WVF, metric=metric)
        if c.empty:
            continue
        c = at_largest_n(c, keys)
        ms = methods_in(c, WVF)
        lab = varying(c, keys) or ["dataset", "arch"]
        c = c.set_index(c.apply(experiment_label, axis=1, args=(lab,)))[ms].T
        c.columns = pd.MultiIndex.from_tuples([(col, metric) for col in c.columns])
        calib.append(c)
    if calib:
        frame = pd.concat(calib, axis=1).sort_index(axis=1)
        frame = frame.reindex(order_methods(frame.index))
        out.append(
            Table(
                "Calibration at the largest N (test NLL and ECE; lower is better)",
                frame,
                fmt="{:.4f}",
            )
        )
    cost = _cost_table(results)
    if cost is not None:
        out.append(cost)
    return out


def _diversity(results: Results, largest: pd.DataFrame, labels: list[str]) -> pd.Series | None:
    """The ingredients' mean pairwise test disagreement (%) of each column's setting."""
    ing = results.of(INGREDIENTS)
    ing = ing[ing["metric"] == "disagreement"]
    if ing.empty:
        return None
    keys = list(INGREDIENTS.keys)
    merged = largest[list(WVF.keys)].merge(ing[[*keys, "value"]], on=keys, how="left")
    if merged["value"].isna().all():
        return None
    index = merged.apply(experiment_label, axis=1, args=(labels,))
    return pd.Series(merged["value"].to_numpy() * 100.0, index=index)


def _cost_table(results: Results) -> Table | None:
    """Parameters and FLOPs at inference per method and arch (largest N)."""
    df = results.select(WVF)
    cols = [c for c in ("params", "flops") if c in df.columns]
    if not cols:
        return None
    df = df[~df["method"].isin(WVF.item_methods)].copy()
    for c in cols:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df = df.dropna(subset=cols, how="all").dropna(subset=["n_models"])
    if df.empty:
        return None
    df = df[df["n_models"] == df.groupby("arch")["n_models"].transform("max")]
    frame = df.groupby(["arch", "n_models", "method"])[cols].first().reset_index()
    frame["n_models"] = frame["n_models"].map(lambda n: f"N={int(n)}")
    frame = frame.set_index(["arch", "n_models", "method"]).unstack(["arch", "n_models"])
    frame = frame.reindex(order_methods(frame.index))
    return Table(
        "Inference cost at the largest N",
        frame,
        "One model's cost times the models run.",
        fmt="{:,.4g}",
    )


# -- cross task --------------------------------------------------------------------------


@CROSS_TASK.table
def cross_task_tables(results: Results) -> list[Table]:
    t = results.wide(CROSS_TASK)
    if t.empty:
        return []
    keys = list(CROSS_TASK.keys)
    ms = methods_in(t, CROSS_TASK)
    frame = t.set_index(varying(t, keys) or ["dataset", "other_dataset"])[ms]
    frame.index = frame.index.set_names(
        [
            "task A (evaluated)" if n == "dataset" else "task B" if n == "other_dataset" else n
            for n in frame.index.names
        ]
    )
    frame, unit = _percent(frame)
    return [
        Table(
            f"Merging across tasks: test {_metric_name(t['metric'])} on task A{unit}, A's head",
            frame,
        )
    ]


# -- magnitude ---------------------------------------------------------------------------


def primary_magnitude(results: Results, metric: str | None = None) -> pd.DataFrame:
    """Magnitude rows of the paper's protocol (every model and tensor scaled; BatchNorm
    with batch statistics) in wide form, every key column kept."""
    return results.wide(
        MAGNITUDE, metric=metric, where={"scaled": "all", "tensors": "all", "bn": ("none", "batch")}
    )


@MAGNITUDE.table
def magnitude_tables(results: Results) -> list[Table]:
    """Per target: method x factor at the largest N (paper's protocol), and the share of
    overflowed test examples."""
    out = []
    for metric in (None, "nonfinite"):
        t = primary_magnitude(results, metric)
        if t.empty:
            continue
        keys = list(MAGNITUDE.keys)
        t = at_largest_n(t, [k for k in keys if k != "magnitude"] + ["magnitude"])
        per = [k for k in keys if k not in ("magnitude",)]
        for _, g in t.groupby(per, sort=True, dropna=False):
            ms = [m for m in methods_in(g, MAGNITUDE) if g[m].notna().any()]
            piv = g.set_index("magnitude")[ms].T
            piv.columns = [f"x{float(c):g}" for c in piv.columns]
            if metric == "nonfinite":
                if not (piv.to_numpy(float) > 0).any():
                    continue
                piv, unit = piv * 100.0, " (% of test examples with non-finite logits)"
            else:
                piv, unit = _percent(piv)
            head = experiment_label(g.iloc[0], ["dataset", "arch", "n_models"])
            rest = constant_keys(g, ["init", "seed", "bn"])
            what = "overflow" if metric == "nonfinite" else f"test {_metric_name(g['metric'])}"
            out.append(Table(f"{head}: {what}{unit} by factor (every model scaled; {rest})", piv))
    return out


@MAGNITUDE_BATCHES.table
def magnitude_batches_tables(results: Results) -> list[Table]:
    """Per experiment and factor: mean batch accuracy of soup and ensemble, and how often
    the soup is better and how often they tie."""
    b = primary_rows(results.of(MAGNITUDE_BATCHES)).dropna(subset=["value"])
    if b.empty:
        return []
    keys = [k for k in MAGNITUDE_BATCHES.keys if k != "magnitude"]
    wide = b.pivot_table(
        index=[*keys, "magnitude", "batch"], columns="method", values="value", aggfunc="first"
    )
    if not {"Ens Logits", "Uniform Soup"} <= set(wide.columns):
        return []
    wide = wide.dropna(subset=["Ens Logits", "Uniform Soup"])
    wide = wide.assign(
        wins=(wide["Uniform Soup"] > wide["Ens Logits"]).astype(float),
        ties=(wide["Uniform Soup"] == wide["Ens Logits"]).astype(float),
    )
    summary = wide.groupby(level=[*keys, "magnitude"], dropna=False).agg(
        batches=("Uniform Soup", "size"),
        soup=("Uniform Soup", "mean"),
        ens=("Ens Logits", "mean"),
        wins=("wins", "mean"),
        ties=("ties", "mean"),
    )
    summary[["soup", "ens", "wins", "ties"]] *= 100.0
    summary = summary.rename(
        columns={
            "soup": "Uniform Soup mean (%)",
            "ens": "Ens Logits mean (%)",
            "wins": "% batches soup > ensemble",
            "ties": "% batches tied",
        }
    )
    flat = summary.reset_index()
    shown = varying(flat, [*keys, "magnitude"]) or ["magnitude"]
    frame = flat.set_index(shown)[list(summary.columns)]
    return [Table("Per-batch accuracy of class-mixed test batches", frame)]


# -- weight statistics -------------------------------------------------------------------


@WEIGHT_STATS.table
def weight_stats_tables(results: Results) -> list[Table]:
    """Per setting: per tensor, the models' mean and largest max |w| and variance, the
    average's, its ratio to the models' mean, and the independent-weights prediction."""
    ws = results.of(WEIGHT_STATS).dropna(subset=["value"])
    if ws.empty:
        return []
    keys = list(WEIGHT_STATS.keys)
    out = []
    for _, g in ws.groupby(keys, dropna=False, sort=True):
        layers = list(pd.unique(g["layer"]))
        models = g[g["method"] == "model"].groupby(["layer", "metric"])["value"]
        avg = (
            g[g["method"] == "average"]
            .groupby(["layer", "metric"])["value"]
            .first()
            .unstack("metric")
        )
        mean, largest = models.mean().unstack("metric"), models.max().unstack("metric")
        frame = pd.DataFrame(index=pd.Index(layers, name="tensor"))
        for stat, label in (("max_abs", "max |w|"), ("variance", "var")):
            if stat in avg.columns and stat in mean.columns:
                frame[f"{label} models (mean)"] = mean[stat].reindex(layers).to_numpy()
                frame[f"{label} models (max)"] = largest[stat].reindex(layers).to_numpy()
                frame[f"{label} average"] = avg[stat].reindex(layers).to_numpy()
                frame[f"{label} ratio"] = (
                    frame[f"{label} average"] / frame[f"{label} models (mean)"]
                )
        if "predicted_variance" in avg.columns:
            frame["var predicted (independent)"] = (
                avg["predicted_variance"].reindex(layers).to_numpy()
            )
        note = "ratio: the average's statistic over the models' mean (1: no shrinkage)."
        if len(frame) > 40:
            note += f" First 40 of {len(frame)} tensors; all are in results.csv."
            frame = frame.head(40)
        title = experiment_label(g.iloc[0], ["dataset", "arch", "init", "seed", "n_models"])
        out.append(Table(f"Weight statistics: {title}", frame, note, fmt="{:.4g}"))
    return out


# -- templates ---------------------------------------------------------------------------


@TEMPLATES.table
def templates_tables(results: Results) -> list[Table]:
    """Median correlation with the class means and the share of classes identified, for
    the templates and the grand-mean control."""
    tp = results.of(TEMPLATES).dropna(subset=["value"])
    if tp.empty:
        return []
    keys = list(TEMPLATES.keys)
    corr = (
        tp[tp["metric"] == "template_correlation"]
        .groupby([*keys, "method"], dropna=False)["value"]
        .median()
    )
    ident = (
        tp[tp["metric"] == "identified"].groupby([*keys, "method"], dropna=False)["value"].mean()
        * 100.0
    )
    frame = pd.concat(
        {"median correlation": corr, "classes identified (%)": ident}, axis=1
    ).reset_index()
    shown = varying(frame, keys) or ["dataset"]
    frame = frame.set_index([*shown, "method"])[["median correlation", "classes identified (%)"]]
    order = order_methods(
        frame.index.get_level_values("method"), first=("classifier", "grand_mean")
    )
    frame = frame.reindex(sorted(frame.index, key=lambda ix: (ix[:-1], order.index(ix[-1]))))
    note = (
        "grand_mean is the control: the mean of all training images, compared with each class "
        "mean; it identifies one class by chance. merged_halves is compared with the mixed means."
    )
    return [Table("Templates against the class means", frame, note, "{:.3f}")]


# -- multi-task --------------------------------------------------------------------------

MULTITASK_FIRST = (
    "Individual",
    "Pretrained",
    "Weight Averaging",
    "Task Arithmetic",
    "TIES",
    "DARE",
    "TSV-M",
    "Iso-C",
    "CART",
)
"""The multi-task rows' method order (the studies.multitask labels)."""


def multitask_frame(results: Results, metric: str, sweep: str = "methods") -> pd.DataFrame:
    """``sweep``'s test ``metric`` rows: one row per (arch, seed, n_models, rank_fraction,
    method), one column per task, plus "Average" (the mean over the tasks)."""
    df = results.select(MULTITASK, metric=metric, where={"sweep": sweep})
    if df.empty:
        return pd.DataFrame()
    index = ["arch", "seed", "n_models", "rank_fraction", "method"]
    wide = df.pivot_table(index=index, columns="dataset", values="value", dropna=False)
    wide = wide.dropna(how="all")
    tasks = list(dict.fromkeys(df["dataset"]))
    wide = wide[[t for t in tasks if t in wide.columns]]
    wide["Average"] = wide.mean(axis=1)
    wide.columns.name = None
    return wide.reset_index()


EDGES = ("top", "bottom")


def _chosen_note(results: Results, sweep: str, column: str | None = None) -> str:
    """The coefficient each merge of ``sweep`` chose on val (per ``column`` value), and a
    warning naming those chosen at the edge of the grid (a wider grid might do better)."""
    df = results.select(MULTITASK, metric="accuracy", where={"sweep": sweep})
    if df.empty or "coefficient" not in df:
        return ""
    df = df.dropna(subset=["coefficient"])
    if "grid_edge" not in df:
        df = df.assign(grid_edge="")
    what = {"rank_fraction": "rank", "n_models": "tasks"}.get(column or "", column or "")
    chosen, edges = [], []
    for method, g in df.groupby("method", sort=True):
        first = g.groupby(column, sort=True).first() if column else g.iloc[:1]
        if column:
            values = ", ".join(f"{r.coefficient:g} ({what} {k:g})" for k, r in first.iterrows())
            edges += [
                f"{method} ({what} {k:g})" for k, r in first.iterrows() if str(r.grid_edge) in EDGES
            ]
        else:
            values = f"{first['coefficient'].iloc[0]:g}"
            edges += [str(method)] if str(first["grid_edge"].iloc[0]) in EDGES else []
        chosen.append(f"{method} {values}")
    text = f"Chosen coefficients: {'; '.join(chosen)}." if chosen else ""
    if edges:
        text += f" At the edge of the grid (a wider grid might do better): {', '.join(edges)}."
    return text


@MULTITASK.table
def multitask_tables(results: Results) -> list[Table]:
    out = []
    for metric, what in (("accuracy", "test accuracy"), ("normalized_accuracy", "normalized")):
        w = multitask_frame(results, metric)
        if w.empty:
            continue
        keys = varying(w, ["arch", "seed"])
        methods = order_methods(w["method"], MULTITASK_FIRST)
        w = w.assign(_o=w["method"].map(methods.index)).sort_values([*keys, "_o"])
        frame = w.set_index([*keys, "method"]).drop(
            columns=[
                "_o",
                "n_models",
                "rank_fraction",
                *(c for c in ("arch", "seed") if c not in keys),
            ]
        )
        title = f"Multi-task merging: {what} per task (%)"
        constant = constant_keys(w, ["arch", "seed"])
        note = (
            "Each method's coefficient chosen on the mean val accuracy of the tasks; test "
            "numbers. Normalized: merged / the task's own fine-tuned backbone (Individual). "
            + _chosen_note(results, "methods")
        )
        out.append(Table(title + (f", {constant}" if constant else ""), frame * 100.0, note))
    for sweep, col, label in (
        ("rank", "rank_fraction", "rank fraction"),
        ("tasks", "n_models", "tasks merged"),
    ):
        w = multitask_frame(results, "normalized_accuracy", sweep)
        if w.empty:
            continue
        keys = varying(w, ["arch", "seed"])
        frame = w.pivot_table(index=[*keys, col], columns="method", values="Average")
        frame.columns.name = None
        frame = frame[order_methods(frame.columns, MULTITASK_FIRST)]
        if col == "n_models":
            frame.index = (
                frame.index.set_levels(frame.index.levels[-1].astype(int), level=-1)
                if isinstance(frame.index, pd.MultiIndex)
                else frame.index.astype(int)
            )
        out.append(
            Table(
                f"Multi-task merging: average normalized accuracy (%) by {label}",
                frame * 100.0,
                "Mean over the merged tasks; coefficient chosen on val at every point. "
                + _chosen_note(results, sweep, col),
            )
        )
    return out


def study_tables(results: Results | pd.DataFrame) -> dict[str, list[Table]]:
    """Every study's tables, keyed by study name (an empty list when it did not run)."""
    results = Results.of_rows(results)
    return {
        name: [t for fn in study.tables for t in fn(results)] for name, study in STUDIES.items()
    }
