"""Figures of the study, each drawn from the tidy results table alone (and, for the
weight pictures, the ``arrays/*.npz`` files the templates study saves).

Every figure function has the shape ``(rows, out_dir) -> list[Path]``: it draws what
the rows hold, writes PNGs with fixed names under ``out_dir`` and returns their paths,
or returns ``[]`` when its data is absent, so a report over only some studies renders.

Drawing uses an explicit Agg canvas on ``matplotlib.figure.Figure`` (never pyplot), so
it works headless, keeps no global figure state, and does not switch the backend of a
notebook or program that imports mergelab. The style is fixed (matplotlib defaults plus
the overrides below, whatever the user's rcParams), and each method keeps one colour
across all figures.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib as mpl
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

from mergelab.report._common import (
    CROSS_TASK_ORDER,
    DEFAULT_OPTION,
    METHOD_ORDER,
    TEMPLATE_ORDER,
    cross_task_frames,
    is_fraction,
    magnitude_rows,
    method_table,
    methods_in,
    normalize_rows,
    order_methods,
    primary_rows,
    slug,
    study_rows,
)
from mergelab.report._io import atomic_write_bytes

__all__ = [
    "DPI",
    "FIGURES",
    "fig_cross_task",
    "fig_gap_vs_n",
    "fig_kernels",
    "fig_magnitude",
    "fig_magnitude_batches",
    "fig_magnitude_gap",
    "fig_method_bars",
    "fig_methods_vs_n",
    "fig_template_correlation",
    "fig_templates",
    "fig_weight_stats",
    "figures_by_study",
    "make_figures",
    "method_color",
]

DPI = 120
MAX_TEMPLATE_CLASSES = 10  # columns of a template grid (CIFAR-100 would be unreadable)
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.axisbelow": True,
    "lines.linewidth": 1.5,
    "lines.markersize": 4,
    "image.interpolation": "nearest",
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.dpi": DPI,
}
_PALETTE = (
    "#7f7f7f",  # Individual
    "#bcbd22",  # Perf Ave
    "#8c564b",  # Best Individual
    "#1f77b4",  # Uniform Soup
    "#17becf",  # Greedy Soup
    "#d62728",  # Ens Logits
    "#ff7f0e",  # Ens Features
    "#e377c2",  # Ens Features*
    "#9467bd",  # Greedy Ens Logits
    "#2ca02c",  # Greedy Ens Features
    "#393b79",  # Model A
    "#ad494a",  # Model B
)
_METHOD_COLORS = dict(zip(METHOD_ORDER, _PALETTE, strict=True))
_EXTRA_COLORS = ("#637939", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1")

FigureFn = Callable[[pd.DataFrame, Path], list[Path]]


def method_color(method: str) -> str:
    """One colour per method across every figure; unknown methods get a stable colour."""
    if method in _METHOD_COLORS:
        return _METHOD_COLORS[method]
    return _EXTRA_COLORS[sum(map(ord, method)) % len(_EXTRA_COLORS)]


# -- drawing helpers ---------------------------------------------------------------------


@contextmanager
def _figure(
    nrows: int = 1, ncols: int = 1, *, size: tuple[float, float], **kw: object
) -> Iterator[tuple[Figure, np.ndarray]]:
    """A figure in the fixed style (matplotlib defaults + STYLE), axes as a 2-D array."""
    with mpl.style.context("default"), mpl.rc_context(STYLE):
        fig = Figure(figsize=size, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
        yield fig, axes


def _save(fig: Figure, path: Path) -> Path:
    """Render to PNG in memory, then write atomically (no half-written figure on disk)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return atomic_write_bytes(path, buf.getvalue())


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return (n + cols - 1) // cols, cols


def _hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.ravel()[used:]:
        ax.set_visible(False)


def _metric_label(metrics: Sequence[str], fraction: bool) -> str:
    names = {"accuracy": "accuracy", "auroc": "AUROC"}
    label = " / ".join(dict.fromkeys(names.get(m, m) for m in metrics)) or "metric"
    return f"{label} (%)" if fraction else label


def _log_x(ax: Axes, values: Sequence[float]) -> None:
    """Log x axis with a tick at each measured factor, labelled where labels do not collide."""
    ax.set_xscale("log")
    ticks = sorted({float(v) for v in values if v > 0})
    labelled: list[float] = []
    for t in ticks:
        if not labelled or np.log10(t / labelled[-1]) >= 0.14:
            labelled.append(t)
    ax.xaxis.set_major_locator(FixedLocator(labelled))
    ax.xaxis.set_minor_locator(FixedLocator([t for t in ticks if t not in labelled]))
    ax.xaxis.set_minor_formatter(NullFormatter())
    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    ax.xaxis.set_major_formatter(fmt)


def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")


def _fig_legend(fig: Figure, ax: Axes) -> None:
    """One legend for a faceted figure, below the panels."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        per_row = max(1, int(fig.get_figwidth() / 1.6))
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), per_row))


def _int(v: float) -> int | float:
    return int(v) if float(v).is_integer() else v


# -- weights vs features -----------------------------------------------------------------


def _wvf(rows: pd.DataFrame) -> pd.DataFrame:
    return method_table(study_rows(rows, "weights_vs_features"), "test")


def fig_method_bars(rows: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per architecture: test metric of every method on every dataset, at the largest N."""
    t = _wvf(rows)
    if t.empty:
        return []
    paths = []
    for arch, ta in t.groupby("arch", sort=True):
        ta = ta[ta["n_models"] == ta.groupby("dataset")["n_models"].transform("max")]
        methods = [m for m in methods_in(ta) if m != "Individual" and ta[m].notna().any()]
        if not methods:
            continue
        values = ta[methods].to_numpy(float)
        k = 100.0 if is_fraction(values.ravel()) else 1.0
        labels = [f"{r.dataset}\n(N={_int(r.n_models)})" for r in ta.itertuples()]
        x = np.arange(len(ta))
        width = 0.8 / len(methods)
        with _figure(size=(max(4.5, 1.1 * len(ta) * max(1, len(methods) / 4) + 2), 3.4)) as (
            fig,
            axes,
        ):
            ax = axes[0, 0]
            for i, m in enumerate(methods):
                ax.bar(
                    x + (i - (len(methods) - 1) / 2) * width,
                    ta[m].to_numpy(float) * k,
                    width,
                    label=m,
                    color=method_color(m),
                )
            ax.set_xticks(x, labels)
            ax.set_ylabel(f"test {_metric_label(ta['metric'].tolist(), k == 100.0)}")
            ax.set_title(f"{arch}: weight averaging vs feature averaging (largest N)")
            ax.grid(axis="x", visible=False)
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
            paths.append(_save(fig, out_dir / f"wvf_bars_{slug(arch)}.png"))
    return paths


def fig_methods_vs_n(rows: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per architecture, one panel per dataset: each method's test metric against N."""
    t = _wvf(rows)
    if t.empty or t["n_models"].nunique() < 2:
        return []
    paths = []
    for arch, ta in t.groupby("arch", sort=True):
        groups = [
            (d, g) for d, g in ta.groupby("dataset", sort=True) if g["n_models"].nunique() > 1
        ]
        if not groups:
            continue
        methods = [m for m in methods_in(ta) if m != "Individual"]
        k = 100.0 if is_fraction(ta[methods].to_numpy(float).ravel()) else 1.0
        nr, nc = _grid(len(groups))
        with _figure(nr, nc, size=(3.6 * nc, 2.8 * nr + 0.6)) as (fig, axes):
            for ax, (dataset, g) in zip(axes.ravel(), groups, strict=False):
                g = g.sort_values("n_models")
                for m in methods:
                    if g[m].notna().any():
                        ax.plot(g["n_models"], g[m] * k, "o-", label=m, color=method_color(m))
                ax.set_xticks(sorted(g["n_models"].unique()))
                ax.set_xlabel("number of models N")
                ax.set_ylabel(f"test {_metric_label(g['metric'].tolist(), k == 100.0)}")
                ax.set_title(f"{dataset} / {arch}")
            _hide_unused(axes, len(groups))
            _fig_legend(fig, axes[0, 0])
            paths.append(_save(fig, out_dir / f"wvf_methods_vs_n_{slug(arch)}.png"))
    return paths


def fig_gap_vs_n(rows: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Ens Logits minus Uniform Soup against N, one line per dataset/architecture."""
    t = _wvf(rows)
    if not {"Ens Logits", "Uniform Soup"} <= set(t.columns):
        return []
    t = t.dropna(subset=["Ens Logits", "Uniform Soup"])
    if t.empty:
        return []
    k = 100.0 if is_fraction(t[["Ens Logits", "Uniform Soup"]].to_numpy().ravel()) else 1.0
    with _figure(size=(5.2, 3.4)) as (fig, axes):
        ax = axes[0, 0]
        for (dataset, arch), g in t.groupby(["dataset", "arch"], sort=True):
            g = g.sort_values("n_models")
            gap = (g["Ens Logits"] - g["Uniform Soup"]) * k
            ax.plot(g["n_models"], gap, "o-", label=f"{dataset} / {arch}")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(sorted(t["n_models"].unique()))
        ax.set_xlabel("number of models N")
        ax.set_ylabel("Ens Logits − Uniform Soup" + (" (points)" if k == 100.0 else ""))
        ax.set_title("Gap between logit ensemble and uniform soup")
        _legend(ax)
        return [_save(fig, out_dir / "wvf_gap_vs_n.png")]


# -- cross task --------------------------------------------------------------------------


def fig_cross_task(rows: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Model A, Model B and their uniform soup, evaluated on A's task, per pair."""
    ct, wide = cross_task_frames(rows)
    if ct.empty:
        return []
    wide = wide.reset_index()
    keys = ("arch", "dataset", "other_dataset")
    methods = order_methods((c for c in wide.columns if c not in keys), first=CROSS_TASK_ORDER)
    k = 100.0 if is_fraction(wide[methods].to_numpy(float).ravel()) else 1.0
    archs = sorted(wide["arch"].unique())
    n_pairs = int(wide.groupby("arch").size().max())
    with _figure(len(archs), 1, size=(max(4.5, 1.3 * n_pairs + 2), 2.9 * len(archs))) as (
        fig,
        axes,
    ):
        for ax, arch in zip(axes[:, 0], archs, strict=True):
            w = wide[wide["arch"] == arch]
            x = np.arange(len(w))
            width = 0.8 / len(methods)
            for i, m in enumerate(methods):
                ax.bar(
                    x + (i - (len(methods) - 1) / 2) * width,
                    w[m].to_numpy(float) * k,
                    width,
                    label=m,
                    color=method_color(m),
                )
            ax.set_xticks(
                x, [f"A={a}\nB={b}" for a, b in zip(w["dataset"], w["other_dataset"], strict=True)]
            )
            ax.set_ylabel(f"test {_metric_label(ct['metric'].unique().tolist(), k == 100.0)} on A")
            ax.set_title(f"{arch}: merging models of different tasks")
            ax.grid(axis="x", visible=False)
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return [_save(fig, out_dir / "cross_task.png")]


# -- magnitude ---------------------------------------------------------------------------


def _magnitude(rows: pd.DataFrame) -> pd.DataFrame:
    mag = primary_rows(magnitude_rows(study_rows(rows, "magnitude")))
    if (mag["split"] == "test").any():
        mag = mag[mag["split"] == "test"]
    return mag.dropna(subset=["value", "magnitude"])


def _option_facets(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(scaled, tensors) combinations present, the default ("all", "all") first."""
    combos = sorted(set(zip(df["scaled"], df["tensors"], strict=True)))
    default = (DEFAULT_OPTION, DEFAULT_OPTION)
    return ([default] if default in combos else []) + [c for c in combos if c != default]


def fig_magnitude(rows: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per dataset/architecture: every method's accuracy against the scaling factor."""
    mag = _magnitude(rows)
    if mag.empty:
        return []
    paths = []
    k = 100.0 if is_fraction(mag["value"]) else 1.0
    for (dataset, arch), g in mag.groupby(["dataset", "arch"], sort=True):
        facets = _option_facets(g)
        nr, nc = _grid(len(facets))
        with _figure(nr, nc, size=(3.8 * nc, 2.9 * nr + 0.6)) as (fig, axes):
            for ax, (scaled, tensors) in zip(axes.ravel(), facets, strict=False):
                f = g[(g["scaled"] == scaled) & (g["tensors"] == tensors)]
                n = f["n_models"].max()
                if pd.notna(n):
                    f = f[f["n_models"] == n]
                curves = f.groupby(["method", "magnitude"])["value"].mean()
                for m in order_methods(f["method"].unique()):
                    c = curves.loc[m].sort_index()
                    ax.plot(c.index, c.to_numpy() * k, "o-", label=m, color=method_color(m))
                _log_x(ax, f["magnitude"].unique())
                ax.set_xlabel("scaling factor c")
                ax.set_ylabel(f"test {_metric_label(f['metric'].unique().tolist(), k == 100.0)}")
                n_text = f", N={_int(n)}" if pd.notna(n) else ""
                ax.set_title(f"{dataset} / {arch}\nscaled={scaled}, tensors={tensors}{n_text}")
            _hide_unused(axes, len(facets))
            _fig_legend(fig, axes[0, 0])
            paths.append(_save(fig, out_dir / f"magnitude_{slug(dataset)}_{slug(arch)}.png"))
    return paths


def fig_magnitude_gap(rows: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per dataset/architecture: Ens Logits minus Uniform Soup against c, one line per N."""
    mag = _magnitude(rows)
    mag = mag[mag["method"].isin(["Ens Logits", "Uniform Soup"])]
    if mag.empty:
        return []
    k = 100.0 if is_fraction(mag["value"]) else 1.0
    paths = []
    for (dataset, arch), g in mag.groupby(["dataset", "arch"], sort=True):
        wide = (
            g.groupby(["scaled", "tensors", "n_models", "magnitude", "method"], dropna=False)[
                "value"
            ]
            .mean()
            .unstack("method")
        )
        if not {"Ens Logits", "Uniform Soup"} <= set(wide.columns):
            continue
        gap = ((wide["Ens Logits"] - wide["Uniform Soup"]) * k).dropna().rename("gap")
        if gap.empty:
            continue
        gap = gap.reset_index()
        facets = _option_facets(gap)
        nr, nc = _grid(len(facets))
        with _figure(nr, nc, size=(3.8 * nc, 2.9 * nr + 0.4)) as (fig, axes):
            for ax, (scaled, tensors) in zip(axes.ravel(), facets, strict=False):
                f = gap[(gap["scaled"] == scaled) & (gap["tensors"] == tensors)]
                for n, c in f.groupby("n_models", dropna=False, sort=True):
                    c = c.sort_values("magnitude")
                    label = f"N={_int(n)}" if pd.notna(n) else "N=?"
                    ax.plot(c["magnitude"], c["gap"], "o-", label=label)
                ax.axhline(0.0, color="black", linewidth=0.8)
                _log_x(ax, f["magnitude"].unique())
                ax.set_xlabel("scaling factor c")
                ax.set_ylabel("Ens Logits − Uniform Soup" + (" (points)" if k == 100.0 else ""))
                ax.set_title(f"{dataset} / {arch}\nscaled={scaled}, tensors={tensors}")
                _legend(ax)
            _hide_unused(axes, len(facets))
            paths.append(_save(fig, out_dir / f"magnitude_gap_{slug(dataset)}_{slug(arch)}.png"))
    return paths


def fig_magnitude_batches(rows: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per-batch accuracy: Ens Logits (x) against Uniform Soup (y), one colour per factor."""
    b = primary_rows(study_rows(rows, "magnitude_batches"))
    if "batch" not in b.columns:
        return []
    b = b.dropna(subset=["value", "magnitude"])
    b = b[b["method"].isin(["Ens Logits", "Uniform Soup"])]
    if b.empty:
        return []
    b = magnitude_rows(b)
    default = b[(b["scaled"] == DEFAULT_OPTION) & (b["tensors"] == DEFAULT_OPTION)]
    b = default if not default.empty else b
    k = 100.0 if is_fraction(b["value"]) else 1.0
    paths = []
    for (dataset, arch), g in b.groupby(["dataset", "arch"], sort=True):
        wide = (
            g.groupby(["n_models", "magnitude", "batch", "method"], dropna=False)["value"]
            .mean()
            .unstack("method")
        )
        if not {"Ens Logits", "Uniform Soup"} <= set(wide.columns):
            continue
        wide = wide.dropna(subset=["Ens Logits", "Uniform Soup"]).reset_index()
        if wide.empty:
            continue
        ns = sorted(wide["n_models"].unique(), key=lambda v: (pd.isna(v), v))
        factors = sorted(wide["magnitude"].unique())
        cmap = mpl.colormaps["viridis"]
        colors = {f: cmap(i / max(1, len(factors) - 1)) for i, f in enumerate(factors)}
        lo = float(min(wide["Ens Logits"].min(), wide["Uniform Soup"].min()) * k)
        hi = float(max(wide["Ens Logits"].max(), wide["Uniform Soup"].max()) * k)
        pad = 0.03 * (hi - lo or 1.0)
        nr, nc = _grid(len(ns))
        with _figure(nr, nc, size=(3.6 * nc, 3.4 * nr)) as (fig, axes):
            for ax, n in zip(axes.ravel(), ns, strict=False):
                w = wide[wide["n_models"].isna()] if pd.isna(n) else wide[wide["n_models"] == n]
                for f in factors:
                    p = w[w["magnitude"] == f]
                    if len(p):
                        ax.scatter(
                            p["Ens Logits"] * k,
                            p["Uniform Soup"] * k,
                            s=10,
                            alpha=0.7,
                            color=colors[f],
                            label=f"c={_int(f)}",
                        )
                ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", linewidth=0.8)
                ax.set_xlim(lo - pad, hi + pad)
                ax.set_ylim(lo - pad, hi + pad)
                ax.set_aspect("equal")
                unit = " (%)" if k == 100.0 else ""
                ax.set_xlabel(f"Ens Logits batch accuracy{unit}")
                ax.set_ylabel(f"Uniform Soup batch accuracy{unit}")
                n_text = f", N={_int(n)}" if pd.notna(n) else ""
                ax.set_title(f"{dataset} / {arch}{n_text}")
                _legend(ax)
            _hide_unused(axes, len(ns))
            name = f"magnitude_batches_{slug(dataset)}_{slug(arch)}.png"
            paths.append(_save(fig, out_dir / name))
    return paths


# -- weight statistics -------------------------------------------------------------------


def fig_weight_stats(rows: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per layer: max |w| and variance of each model, of their average, and the prediction."""
    ws = study_rows(rows, "weight_stats")
    if ws.empty or "layer" not in ws.columns:
        return []
    ws = ws.dropna(subset=["value"])
    ws = ws.assign(layer=ws["layer"].astype(str))
    if "model" not in ws.columns:
        ws = ws.assign(model=0)
    paths = []
    for (dataset, arch, n), g in ws.groupby(
        ["dataset", "arch", "n_models"], dropna=False, sort=True
    ):
        layers = list(pd.unique(g["layer"]))
        pos = {name: i for i, name in enumerate(layers)}
        panels = [m for m in ("max_abs", "variance") if (g["metric"] == m).any()]
        if not panels:
            continue
        with _figure(
            1, len(panels), size=(max(4.5, 0.22 * len(layers) + 3) * len(panels), 3.4)
        ) as (
            fig,
            axes,
        ):
            for ax, metric in zip(axes[0], panels, strict=True):
                models = g[(g["method"] == "model") & (g["metric"] == metric)]
                for i, (_, mg) in enumerate(models.groupby("model", sort=True)):
                    mg = mg.groupby("layer", sort=False)["value"].mean()
                    ax.plot(
                        [pos[name] for name in mg.index],
                        mg.to_numpy(),
                        "o-",
                        color="#9e9e9e",
                        linewidth=0.8,
                        markersize=2.5,
                        label="individual models" if i == 0 else None,
                    )
                lines = [(metric, "average", "#d62728", "-")]
                if metric == "variance":
                    lines.append(("predicted_variance", "predicted (independent)", "black", "--"))
                for name, label, color, style in lines:
                    a = g[(g["method"] == "average") & (g["metric"] == name)]
                    a = a.groupby("layer", sort=False)["value"].mean()
                    if len(a):
                        ax.plot(
                            [pos[x] for x in a.index],
                            a.to_numpy(),
                            marker="o",
                            linestyle=style,
                            color=color,
                            label=label,
                        )
                values = g[g["metric"].isin([metric, "predicted_variance"])]["value"]
                if len(values) and (values > 0).all() and values.max() > 20 * values.min():
                    ax.set_yscale("log")
                if len(layers) <= 24:
                    ax.set_xticks(range(len(layers)), [_short(x) for x in layers], rotation=90)
                else:
                    ax.set_xlabel("layer index")
                ax.set_ylabel("max |w|" if metric == "max_abs" else "variance of w")
                n_text = f", N={_int(n)}" if pd.notna(n) else ""
                ax.set_title(f"{dataset} / {arch}{n_text}")
                _legend(ax)
            name = f"weight_stats_{slug(dataset)}_{slug(arch)}"
            name += f"_n{_int(n)}.png" if pd.notna(n) else ".png"
            paths.append(_save(fig, out_dir / name))
    return paths


def _short(layer: str, width: int = 22) -> str:
    return layer if len(layer) <= width else "…" + layer[-(width - 1) :]


# -- templates ---------------------------------------------------------------------------


def fig_template_correlation(rows: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per dataset: per-class correlation of each kind of template with the class mean."""
    tp = study_rows(rows, "templates")
    tp = tp[tp["metric"] == "template_correlation"].dropna(subset=["value"])
    if tp.empty:
        return []
    methods = order_methods(tp["method"].unique(), first=TEMPLATE_ORDER)
    groups = list(tp.groupby(["dataset", "arch"], sort=True))
    colors = dict(
        zip(methods, ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"), strict=False)
    )
    with _figure(size=(max(4.0, 1.6 * len(groups) + 2), 3.2)) as (fig, axes):
        ax = axes[0, 0]
        width = 0.8 / len(methods)
        for gi, (_, g) in enumerate(groups):
            for i, m in enumerate(methods):
                v = np.sort(g[g["method"] == m]["value"].to_numpy(float))
                if not len(v):
                    continue
                x0 = gi + (i - (len(methods) - 1) / 2) * width
                color = colors.get(m, "#7f7f7f")
                ax.bar(
                    x0, np.median(v), width, color=color, alpha=0.35, label=m if gi == 0 else None
                )
                jitter = np.linspace(-0.3, 0.3, len(v)) * width if len(v) > 1 else np.zeros(1)
                ax.scatter(x0 + jitter, v, s=6, color=color)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(groups)), [f"{d}\n{a}" if a else d for (d, a), _ in groups])
        ax.set_ylabel("correlation with class mean")
        ax.set_title("Weights as templates (bar: median; dots: classes)")
        ax.grid(axis="x", visible=False)
        _legend(ax)
        return [_save(fig, out_dir / "templates_correlation.png")]


def _find_arrays(out_dir: Path, arrays_dir: Path | None) -> Path | None:
    candidates = (
        [arrays_dir] if arrays_dir is not None else [out_dir / "arrays", out_dir.parent / "arrays"]
    )
    return next((p for p in candidates if p is not None and p.is_dir()), None)


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError) as exc:
        warnings.warn(f"skipping unreadable array file {path.name}: {exc}", stacklevel=2)
        return None


def _to_image(a: np.ndarray) -> tuple[np.ndarray, str | None]:
    """[ch, H, W] or [H, W] (or [H, W, 3]) -> an image scaled to [0, 1] and its colormap."""
    a = np.asarray(a, dtype=float)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    elif a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    elif a.ndim == 3 and a.shape[-1] != 3:
        a = a[0]
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    a = np.nan_to_num((a - lo) / (hi - lo), nan=0.0) if hi > lo else np.zeros_like(a)
    a = np.clip(a, 0.0, 1.0)
    return a, ("gray" if a.ndim == 2 else None)


def _mosaic(stack: np.ndarray, ncols: int) -> tuple[np.ndarray, str | None, list[float]]:
    """The first ``ncols`` images of a stack side by side on white, each scaled to [0, 1].

    One image per row of the figure draws far faster than one axes per class.
    """
    images = [_to_image(a)[0] for a in stack[:ncols]]
    rgb = any(im.ndim == 3 for im in images)
    if rgb:
        images = [im if im.ndim == 3 else np.repeat(im[..., None], 3, axis=2) for im in images]
    h, w = images[0].shape[:2]
    gap = max(1, w // 8)
    canvas = np.ones((h, ncols * (w + gap) - gap, *((3,) if rgb else ())))
    centers = []
    for c, im in enumerate(images):  # an npz array is never ragged: every image is h x w
        canvas[:, c * (w + gap) : c * (w + gap) + w] = im
        centers.append(c * (w + gap) + (w - 1) / 2)
    return canvas, (None if rgb else "gray"), centers


def _image_axes(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


_TEMPLATE_ROWS = (
    ("class_means", "class means"),
    ("templates", "classifier\ntemplates"),
    ("merged_two", "merged,\ntwo models"),
    ("merged_halves", "merged\nhalves"),
)


def fig_templates(
    rows: pd.DataFrame, out_dir: Path, *, arrays_dir: Path | None = None
) -> list[Path]:
    """Grids from ``arrays/templates_*.npz``: class means, templates and merged templates."""
    found = _find_arrays(out_dir, arrays_dir)
    if found is None:
        return []
    paths = []
    for path in sorted(found.glob("templates_*.npz")):
        arrays = _load_npz(path)
        if arrays is None:
            continue
        present = [
            (key, label)
            for key, label in _TEMPLATE_ROWS
            if key in arrays and arrays[key].ndim >= 3 and len(arrays[key])
        ]
        if not present:
            continue
        ncols = min(MAX_TEMPLATE_CLASSES, max(len(arrays[key]) for key, _ in present))
        size = (0.9 * ncols + 1.0, 1.0 * len(present) + 0.5)
        with _figure(len(present), 1, size=size) as (fig, axes):
            for r, (key, label) in enumerate(present):
                ax = axes[r, 0]
                img, cmap, centers = _mosaic(arrays[key], ncols)
                _image_axes(ax)
                ax.imshow(img, cmap=cmap, vmin=0.0, vmax=1.0)
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
                if r == 0:
                    ax.xaxis.tick_top()
                    ax.set_xticks(centers, [str(c) for c in range(len(centers))], fontsize=7)
                    ax.tick_params(axis="x", length=0)
            total = max(len(arrays[key]) for key, _ in present)
            more = f" (first {ncols} of {total})" if total > ncols else ""
            name = path.stem.removeprefix("templates_")
            fig.suptitle(f"Weights as templates: {name}{more}", fontsize=9)
            paths.append(_save(fig, out_dir / f"{slug(path.stem)}.png"))
    return paths


def fig_kernels(rows: pd.DataFrame, out_dir: Path, *, arrays_dir: Path | None = None) -> list[Path]:
    """First-layer kernels from ``arrays/kernels_*.npz`` (key ``grid``, already tiled)."""
    found = _find_arrays(out_dir, arrays_dir)
    if found is None:
        return []
    paths = []
    for path in sorted(found.glob("kernels_*.npz")):
        arrays = _load_npz(path)
        if arrays is None or "grid" not in arrays or arrays["grid"].ndim not in (2, 3):
            continue
        img, cmap = _to_image(arrays["grid"])
        h, w = img.shape[:2]
        scale = 5.0 / max(h, w)
        with _figure(size=(max(2.5, w * scale + 0.4), max(2.5, h * scale + 0.6))) as (fig, axes):
            ax = axes[0, 0]
            _image_axes(ax)
            ax.imshow(img, cmap=cmap, vmin=0.0, vmax=1.0)
            ax.set_title(f"First-layer kernels: {path.stem.removeprefix('kernels_')}")
            paths.append(_save(fig, out_dir / f"{slug(path.stem)}.png"))
    return paths


# -- all figures -------------------------------------------------------------------------

# Study -> its figures, in the order the report shows them.
FIGURES: dict[str, tuple[Callable[..., list[Path]], ...]] = {
    "weights_vs_features": (fig_method_bars, fig_methods_vs_n, fig_gap_vs_n),
    "cross_task": (fig_cross_task,),
    "magnitude": (fig_magnitude, fig_magnitude_gap),
    "magnitude_batches": (fig_magnitude_batches,),
    "weight_stats": (fig_weight_stats,),
    "templates": (fig_template_correlation, fig_templates, fig_kernels),
}
_NEEDS_ARRAYS = {fig_templates, fig_kernels}


def figures_by_study(
    rows: pd.DataFrame,
    out_dir: Path,
    *,
    arrays_dir: Path | None = None,
    errors: list[str] | None = None,
) -> dict[str, list[Path]]:
    """Draw every figure whose data is present; the written PNGs grouped by study.

    A figure that fails is reported (a warning, and a line appended to ``errors``) and
    the others are still drawn: one broken plot should not cost the whole report.
    """
    out_dir = Path(out_dir)
    rows = normalize_rows(rows)
    result: dict[str, list[Path]] = {}
    for study, fns in FIGURES.items():
        written: list[Path] = []
        for fn in fns:
            call: Callable[[pd.DataFrame, Path], list[Path]] = (
                functools.partial(fn, arrays_dir=arrays_dir) if fn in _NEEDS_ARRAYS else fn
            )
            try:
                written += call(rows, out_dir)
            except Exception as exc:
                message = f"figure {fn.__name__} failed: {type(exc).__name__}: {exc}"
                warnings.warn(message, stacklevel=2)
                if errors is not None:
                    errors.append(message)
        result[study] = written
    return result


def make_figures(
    rows: pd.DataFrame, out_dir: Path, *, arrays_dir: Path | None = None
) -> list[Path]:
    """Draw every figure whose data is present under ``out_dir``; the PNGs written."""
    by_study = figures_by_study(rows, out_dir, arrays_dir=arrays_dir)
    return [p for paths in by_study.values() for p in paths]
