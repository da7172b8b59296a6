"""Compact tables of each study, computed from the tidy results table.

Each function returns ``Table`` objects whose frames are ready to show: accuracies and
AUROCs stored as fractions are multiplied by 100 (the title says so), model counts are
column labels. The HTML report renders them; they are also handy in a notebook.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from mergelab.report._common import (
    CROSS_TASK_ORDER,
    DEFAULT_OPTION,
    TEMPLATE_ORDER,
    cross_task_frames,
    is_fraction,
    magnitude_rows,
    method_table,
    methods_in,
    normalize_rows,
    order_methods,
    primary_rows,
    study_rows,
)

__all__ = [
    "Table",
    "cross_task_tables",
    "magnitude_batches_tables",
    "magnitude_tables",
    "study_tables",
    "templates_tables",
    "weight_stats_tables",
    "wvf_tables",
]


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


def _metric_name(metrics: pd.Series | list[str]) -> str:
    names = {"accuracy": "accuracy", "auroc": "AUROC"}
    return " / ".join(dict.fromkeys(names.get(m, m) for m in metrics)) or "metric"


def _n_label(n: float) -> str:
    return f"N={int(n)}" if pd.notna(n) and float(n).is_integer() else f"N={n}"


def _at_largest_n(t: pd.DataFrame) -> pd.DataFrame:
    largest = t.groupby(["dataset", "arch"])["n_models"].transform("max")
    return t[t["n_models"] == largest]


def wvf_tables(rows: pd.DataFrame) -> list[Table]:
    """Per dataset/arch: method x N; across datasets: method x dataset; NLL/ECE; cost."""
    wvf = study_rows(rows, "weights_vs_features")
    t = method_table(wvf, "test")
    if t.empty:
        return []
    out = []
    largest = _at_largest_n(t)
    methods = [m for m in methods_in(largest) if m != "Individual"]
    wide = largest.set_index(["dataset", "arch", "n_models"])[methods].T
    wide.columns = [f"{d} / {a} ({_n_label(n)})" for d, a, n in wide.columns]
    wide, unit = _percent(wide.dropna(how="all"))
    out.append(
        Table(
            f"Test {_metric_name(largest['metric'])}{unit} across datasets, largest N",
            wide,
            "Rows: methods; columns: dataset / architecture at its largest model count.",
        )
    )
    for (dataset, arch, metric), g in t.groupby(["dataset", "arch", "metric"], sort=True):
        ms = [m for m in methods_in(g) if m != "Individual" and g[m].notna().any()]
        piv = g.set_index("n_models")[ms].T
        piv.columns = [_n_label(n) for n in piv.columns]
        piv, unit = _percent(piv)
        out.append(Table(f"{dataset} / {arch}: test {_metric_name([metric])}{unit} by N", piv))
    calib = []
    for metric in ("nll", "ece"):
        c = method_table(wvf, "test", metric=metric)
        if c.empty:
            continue
        c = _at_largest_n(c)
        ms = [m for m in methods_in(c) if m != "Individual"]
        c = c.set_index(["dataset", "arch"])[ms].T
        c.columns = pd.MultiIndex.from_tuples([(f"{d} / {a}", metric) for d, a in c.columns])
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
    cost = _cost_table(wvf)
    if cost is not None:
        out.append(cost)
    return out


def _cost_table(wvf: pd.DataFrame) -> Table | None:
    """Parameters and FLOPs at inference per method (largest N), when the study records them."""
    cols = [c for c in ("params", "flops") if c in wvf.columns]
    if not cols:
        return None
    df = wvf[wvf["method"] != "Individual"].copy()
    for c in cols:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df = df.dropna(subset=cols, how="all").dropna(subset=["n_models"])
    if df.empty:
        return None
    df = df[df["n_models"] == df.groupby("arch")["n_models"].transform("max")]
    frame = df.groupby(["arch", "n_models", "method"])[cols].median().reset_index()
    frame["n_models"] = frame["n_models"].map(_n_label)
    frame = frame.set_index(["arch", "n_models", "method"]).unstack(["arch", "n_models"])
    frame = frame.reindex(order_methods(frame.index))
    return Table("Inference cost at the largest N", frame, "Median over datasets.", fmt="{:,.4g}")


def cross_task_tables(rows: pd.DataFrame) -> list[Table]:
    """One row per (arch, task A, task B): Model A, Model B and their soup on task A."""
    ct, wide = cross_task_frames(rows)
    if ct.empty:
        return []
    wide = wide[order_methods(wide.columns, first=CROSS_TASK_ORDER)]
    wide.index = wide.index.set_names(["arch", "task A (evaluated)", "task B"])
    wide, unit = _percent(wide)
    return [
        Table(
            f"Merging across tasks: test {_metric_name(ct['metric'].unique().tolist())} "
            f"on task A{unit}",
            wide,
        )
    ]


def magnitude_tables(rows: pd.DataFrame) -> list[Table]:
    """Per dataset/arch (default options, largest N): method x scaling factor."""
    mag = primary_rows(magnitude_rows(study_rows(rows, "magnitude"))).dropna(
        subset=["value", "magnitude"]
    )
    if (mag["split"] == "test").any():
        mag = mag[mag["split"] == "test"]
    if mag.empty:
        return []
    out = []
    for (dataset, arch), g in mag.groupby(["dataset", "arch"], sort=True):
        d = g[(g["scaled"] == DEFAULT_OPTION) & (g["tensors"] == DEFAULT_OPTION)]
        options = "scaled=all, tensors=all"
        if d.empty:
            scaled, tensors = sorted(set(zip(g["scaled"], g["tensors"], strict=True)))[0]
            d = g[(g["scaled"] == scaled) & (g["tensors"] == tensors)]
            options = f"scaled={scaled}, tensors={tensors}"
        n = d["n_models"].max()
        if pd.notna(n):
            d = d[d["n_models"] == n]
        piv = d.groupby(["method", "magnitude"])["value"].mean().unstack("magnitude")
        piv = piv.reindex(order_methods(piv.index))
        piv.columns = [f"x{float(c):g}" for c in piv.columns]
        piv, unit = _percent(piv)
        out.append(
            Table(
                f"{dataset} / {arch}: test {_metric_name(d['metric'].unique().tolist())}{unit} "
                f"by scaling factor ({options}, {_n_label(n)})",
                piv,
            )
        )
    return out


def magnitude_batches_tables(rows: pd.DataFrame) -> list[Table]:
    """Per factor: mean batch accuracy of soup and ensemble, and how often the soup wins."""
    b = primary_rows(study_rows(rows, "magnitude_batches")).dropna(subset=["value", "magnitude"])
    if b.empty or "batch" not in b.columns:
        return []
    out = []
    for (dataset, arch), g in b.groupby(["dataset", "arch"], sort=True):
        wide = (
            g.groupby(["n_models", "magnitude", "batch", "method"], dropna=False)["value"]
            .mean()
            .unstack("method")
        )
        if not {"Ens Logits", "Uniform Soup"} <= set(wide.columns):
            continue
        wide = wide.dropna(subset=["Ens Logits", "Uniform Soup"])
        k = 100.0 if is_fraction(wide.to_numpy(float).ravel()) else 1.0
        wide = wide.assign(soup_wins=wide["Uniform Soup"] >= wide["Ens Logits"])
        summary = wide.groupby(level=["n_models", "magnitude"], dropna=False).agg(
            batches=("Uniform Soup", "size"),
            uniform_soup=("Uniform Soup", "mean"),
            ens_logits=("Ens Logits", "mean"),
            soup_at_least_ensemble=("soup_wins", "mean"),
        )
        summary[["uniform_soup", "ens_logits"]] *= k
        summary["soup_at_least_ensemble"] *= 100.0
        summary = summary.rename(
            columns={
                "uniform_soup": "Uniform Soup mean",
                "ens_logits": "Ens Logits mean",
                "soup_at_least_ensemble": "% batches soup >= ensemble",
            }
        )
        unit = " (%)" if k == 100.0 else ""
        out.append(Table(f"{dataset} / {arch}: per-batch accuracy{unit}", summary))
    return out


def weight_stats_tables(rows: pd.DataFrame) -> list[Table]:
    """Per layer: the models' largest max |w| and variance, the average's, the prediction."""
    ws = study_rows(rows, "weight_stats")
    if ws.empty or "layer" not in ws.columns:
        return []
    ws = ws.dropna(subset=["value"]).assign(layer=lambda d: d["layer"].astype(str))
    out = []
    for (dataset, arch, n), g in ws.groupby(
        ["dataset", "arch", "n_models"], dropna=False, sort=True
    ):
        layers = list(pd.unique(g["layer"]))
        models = (
            g[g["method"] == "model"].groupby(["layer", "metric"])["value"].max().unstack("metric")
        )
        avg = (
            g[g["method"] == "average"]
            .groupby(["layer", "metric"])["value"]
            .mean()
            .unstack("metric")
        )
        frame = pd.DataFrame(index=pd.Index(layers, name="layer"))
        for src, metric, label in (
            (models, "max_abs", "max |w| (models, max)"),
            (avg, "max_abs", "max |w| (average)"),
            (models, "variance", "var (models, max)"),
            (avg, "variance", "var (average)"),
            (avg, "predicted_variance", "var (predicted)"),
        ):
            if metric in src.columns:
                frame[label] = src[metric].reindex(layers).to_numpy()
        if {"var (average)", "var (predicted)"} <= set(frame.columns):
            frame["ratio average/predicted"] = frame["var (average)"] / frame[
                "var (predicted)"
            ].where(frame["var (predicted)"] > 0)
        for metric, label in (
            ("max_abs_bound_holds", "max |w| bound"),
            ("variance_bound_holds", "var bound"),
        ):
            if metric in avg.columns:
                frame[label] = (
                    avg[metric]
                    .reindex(layers)
                    .map(lambda v: "" if pd.isna(v) else ("holds" if v > 0.5 else "FAILS"))
                    .to_numpy()
                )
        if frame.columns.empty:
            continue
        note = ""
        if len(frame) > 40:
            note = f"First 40 of {len(frame)} tensors; all of them are in results.csv."
            frame = frame.head(40)
        title = f"{dataset} / {arch}" + (f", {_n_label(n)} averaged" if pd.notna(n) else "")
        out.append(Table(f"Weight statistics: {title}", frame, note, fmt="{:.4g}"))
    return out


def templates_tables(rows: pd.DataFrame) -> list[Table]:
    """Median and minimum correlation of each kind of template with the class means."""
    tp = study_rows(rows, "templates")
    tp = tp[tp["metric"] == "template_correlation"].dropna(subset=["value"])
    if tp.empty:
        return []
    stats = tp.groupby(["method", "dataset", "arch"])["value"].agg(["median", "min"])
    frame = stats.unstack(["dataset", "arch"]).reorder_levels([1, 2, 0], axis=1)
    settings = sorted(set(zip(tp["dataset"], tp["arch"], strict=True)))
    cols = [(d, a, s) for d, a in settings for s in ("median", "min")]
    frame = frame.reindex(columns=pd.MultiIndex.from_tuples(cols, names=["dataset", "arch", ""]))
    frame = frame.reindex(order_methods(frame.index, first=TEMPLATE_ORDER))
    counts = tp.groupby(["dataset", "arch", "method"])["value"].size().groupby(level=[0, 1]).max()
    note = "Classes per setting: " + ", ".join(
        f"{d} / {a}: {n}" if a else f"{d}: {n}" for (d, a), n in counts.items()
    )
    return [
        Table("Template correlation with the class means (over classes)", frame, note, "{:.3f}")
    ]


def study_tables(rows: pd.DataFrame) -> dict[str, list[Table]]:
    """Every study's tables, keyed by study name (an empty list when it did not run)."""
    rows = normalize_rows(rows)
    return {
        "weights_vs_features": wvf_tables(rows),
        "cross_task": cross_task_tables(rows),
        "magnitude": magnitude_tables(rows),
        "magnitude_batches": magnitude_batches_tables(rows),
        "weight_stats": weight_stats_tables(rows),
        "templates": templates_tables(rows),
    }
