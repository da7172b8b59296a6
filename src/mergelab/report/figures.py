"""Figures of the study, each drawn from :class:`Results` alone (and, for the weight
pictures, the ``arrays/*.npz`` files the templates study saves).

Every figure function has the shape ``(results, out_dir) -> list[Path]`` (the picture
grids also take ``arrays_dir``) and registers itself with its study
(``@WVF.figure``): it draws what the results hold, writes PNGs under ``out_dir`` and
returns their paths, or returns ``[]`` when its data is absent, so a report over only
some studies renders. A DataFrame of rows is accepted too.

A plotted number belongs to one experiment (every key column of its study fixed): the
figures read :meth:`Results.wide` (which refuses to merge two experiments) or group rows
by all key columns. Key columns that take several values (``init``, ``seed``, BatchNorm
mode, ...) become panels, groups or lines and are named in labels and file names; the
constant ones go in titles. No figure averages over experiments.

Drawing uses an explicit Agg canvas on ``matplotlib.figure.Figure`` (never pyplot), so
it works headless, keeps no global figure state, and does not switch the backend of a
notebook or program that imports mergelab. The style is fixed (matplotlib defaults plus
the overrides below, whatever the user's rcParams), and each method keeps one colour
across all figures.
"""

from __future__ import annotations

import contextvars
import inspect
import io
import re
import textwrap
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib as mpl
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

from mergelab.report._io import atomic_write_bytes
from mergelab.report.frames import (
    Results,
    at_largest_n,
    constant_keys,
    experiment_label,
    is_fraction,
    methods_in,
    order_methods,
    short_number,
    slug,
    varying,
)
from mergelab.report.tables import MULTITASK_FIRST, multitask_frame, primary_magnitude
from mergelab.report.uncertainty import LEVEL, Unit, pooled_interval
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

__all__ = [
    "DPI",
    "fig_cross_task",
    "fig_ingredients",
    "fig_kernels",
    "fig_magnitude",
    "fig_magnitude_batches",
    "fig_magnitude_gap",
    "fig_multitask",
    "fig_template_correlation",
    "fig_templates",
    "fig_weight_stats",
    "fig_wvf_bars",
    "fig_wvf_gap",
    "fig_wvf_vs_n",
    "figures_by_study",
    "make_figures",
    "method_color",
    "recording",
    "wvf_gap",
]

DPI = 120
MAX_TEMPLATE_CLASSES = 10  # columns of a template grid (CIFAR-100 would be unreadable)
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 9,
    "figure.titlesize": 10,
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
_METHOD_COLORS = {
    "Individual": "#7f7f7f",
    "Perf Ave": "#bcbd22",
    "Best Individual": "#8c564b",
    "Model A": "#393b79",
    "B backbone + A head": "#ad494a",
    "Uniform Soup": "#1f77b4",
    "Greedy Soup": "#17becf",
    "Ens Logits": "#d62728",
    "Ens Features": "#ff7f0e",
    "Ens Features*": "#e377c2",
    "Greedy Ens Logits": "#9467bd",
    "Greedy Ens Features": "#2ca02c",
    "Greedy Ens Logits (own)": "#c5b0d5",
    "Greedy Ens Features (own)": "#98df8a",
    # the templates study's "methods"
    "classifier": "#3182bd",
    "merged_two_models": "#e6550d",
    "merged_halves": "#31a354",
    "grand_mean": "#969696",
    # the multi-task study's merges (weight averaging shares the uniform soup's blue)
    "Pretrained": "#c7c7c7",
    "Weight Averaging": "#1f77b4",
    "Task Arithmetic": "#9edae5",
    "TIES": "#ff9896",
    "DARE": "#8ca252",
    "TSV-M": "#6b6ecf",
    "Iso-C": "#bd9e39",
    "Iso-CTS": "#a55194",
    "CART": "#a50f15",
}
_EXTRA_COLORS = ("#637939", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1")
# Lines that are one experiment each: colour per (dataset, arch), dash per init, marker
# per seed.
_SERIES_COLORS = (
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2",
    "#7f7f7f", "#bcbd22",
)  # fmt: skip
_DASHES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P")
_NONFINITE_COLOR = "#555555"
_TEMPLATE_ORDER = ("classifier", "merged_two_models", "merged_halves", "grand_mean")
# Order of the magnitude study's options in panel grids.
_SCALED_ORDER = ("all", "first", "all_but_first")
_BN_ORDER = ("none", "running", "running_c2", "batch")

FigureFn = Callable[..., list[Path]]
_RECORDER: contextvars.ContextVar[list[tuple[Path, Figure]] | None] = contextvars.ContextVar(
    "mergelab_figure_recorder", default=None
)


def method_color(method: str) -> str:
    """One colour per method across every figure; unknown methods get a stable colour."""
    if method in _METHOD_COLORS:
        return _METHOD_COLORS[method]
    return _EXTRA_COLORS[sum(map(ord, method)) % len(_EXTRA_COLORS)]


@contextmanager
def recording() -> Iterator[list[tuple[Path, Figure]]]:
    """Keep every figure saved inside the block as ``(path, Figure)``, to inspect what was
    drawn (panels, lines, titles) in tests or a notebook."""
    kept: list[tuple[Path, Figure]] = []
    token = _RECORDER.set(kept)
    try:
        yield kept
    finally:
        _RECORDER.reset(token)


# -- drawing helpers ---------------------------------------------------------------------


@contextmanager
def _figure(
    nrows: int = 1, ncols: int = 1, *, size: tuple[float, float], **kw: Any
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
    kept = _RECORDER.get()
    if kept is not None:
        kept.append((Path(path), fig))
    return atomic_write_bytes(path, buf.getvalue())


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return (n + cols - 1) // cols, cols


def _hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.ravel()[used:]:
        ax.remove()


def _metric_label(metrics: Iterable[str], fraction: bool) -> str:
    names = {"accuracy": "accuracy", "auroc": "AUROC"}
    label = " / ".join(dict.fromkeys(names.get(m, m) for m in metrics)) or "metric"
    return f"{label} (%)" if fraction else label


def _scale(values: object) -> float:
    """100 when the values are fractions (shown as percentages), else 1."""
    arr = np.asarray(values, dtype=float).ravel()
    return 100.0 if is_fraction(arr) else 1.0


def _log_x(ax: Axes, values: Iterable[float], width_in: float = 3.0) -> None:
    """Log x axis with a tick at each measured factor, labelled where labels do not collide
    on an axes about ``width_in`` inches wide."""
    ax.set_xscale("log")
    ticks = sorted({float(v) for v in values if np.isfinite(v) and v > 0})
    span = np.log10(ticks[-1] / ticks[0]) if ticks else 0.0
    min_gap = max(0.14, span * 0.3 / max(width_in, 0.5))  # about 0.3 inch per label
    labelled: list[float] = []
    for t in ticks:
        if not labelled or np.log10(t / labelled[-1]) >= min_gap:
            labelled.append(t)
    if ticks and labelled[-1] != ticks[-1]:  # the largest factor always gets its label
        if len(labelled) > 1 and np.log10(ticks[-1] / labelled[-1]) < min_gap:
            labelled.pop()
        labelled.append(ticks[-1])
    ax.xaxis.set_major_locator(FixedLocator(labelled))
    ax.xaxis.set_minor_locator(FixedLocator([t for t in ticks if t not in labelled]))
    ax.xaxis.set_minor_formatter(NullFormatter())
    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    ax.xaxis.set_major_formatter(fmt)


def _wrap(text: str, width_in: float, fontsize: float = 10.0) -> str:
    """``text`` with each line wrapped to fit about ``width_in`` inches."""
    chars = max(24, int((width_in - 0.3) * 72 / (0.62 * fontsize)))
    keep = re.sub(
        r"\b(seed) (\S)|(\S) (init)\b", lambda m: "\0".join(g for g in m.groups() if g), text
    )
    lines = (textwrap.fill(line, chars) for line in keep.split("\n"))
    return "\n".join(lines).replace("\0", " ")


def _bar_floor(ax: Axes, values: np.ndarray) -> None:
    """Start the y axis of bars near their smallest value when every bar is high (a few
    points between methods are then visible); otherwise keep the zero baseline."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if not v.size or v.min() <= 0:
        return
    lo, hi = float(v.min()), float(v.max())
    floor = lo - max(0.25 * (hi - lo), 0.05 * hi)
    if floor < 0.3 * hi:
        return
    step = 10 ** np.floor(np.log10(hi)) / 2
    top = hi + 0.08 * (hi - floor)
    if hi <= 100.0 < top:  # percentages: the axis need not pass 100
        top = 100.0 + 0.02 * (hi - floor)
    ax.set_ylim(bottom=step * np.floor(floor / step), top=top)


def _handles(axes: Iterable[Axes]) -> tuple[list[Any], list[str]]:
    """Legend entries of several axes, each label once, in order of first appearance."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, h)
    return list(seen.values()), list(seen)


def _legend_right(ax: Axes, **kw: Any) -> None:
    """A legend to the right of the axes, outside the data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kw)


def _fig_legend(fig: Figure, axes: Iterable[Axes], extra: Sequence[Axes] = ()) -> None:
    """One legend for a faceted figure, below the panels."""
    handles, labels = _handles([*axes, *extra])
    if handles:
        per_row = max(1, int(fig.get_figwidth() / 1.7))
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), per_row))


def _headline(main: str, constant: str, width_in: float, fontsize: float = 10.0) -> str:
    """A title: ``main``, then the constant key values on a line of their own."""
    return _wrap(main + (f"\n({constant})" if constant else ""), width_in, fontsize)


def _file_part(col: str, v: object) -> str:
    if col == "n_models":
        return f"n{short_number(v)}"
    if col == "seed":
        return f"seed{short_number(v)}"
    if col == "magnitude":
        return f"c{short_number(v)}"
    if col in ("scaled", "tensors", "bn"):
        return f"{col}-{v}"
    return str(v)


def _stem(
    prefix: str,
    key: Mapping[str, object],
    always: Sequence[str],
    optional: Sequence[str] = (),
    pool: pd.DataFrame | None = None,
) -> str:
    """A file name: the prefix, the ``always`` key values, and the ``optional`` ones that
    vary in ``pool`` (so two experiments never share a file, and a run with one seed
    keeps short names)."""
    extra = varying(pool, optional) if pool is not None else list(optional)
    cols = [*always, *(c for c in extra if c not in always)]
    return "_".join([prefix, *(slug(_file_part(c, key[c])) for c in cols)])


def _groups(
    df: pd.DataFrame, cols: Sequence[str]
) -> Iterator[tuple[dict[str, object], pd.DataFrame]]:
    """(key values, rows) for each combination of ``cols`` (NaN kept), sorted."""
    if not cols:
        yield {}, df
        return
    for key, g in df.groupby(list(cols), sort=True, dropna=False):
        values = key if isinstance(key, tuple) else (key,)
        yield dict(zip(cols, values, strict=True)), g


def _match(df: pd.DataFrame, key: Mapping[str, object]) -> pd.DataFrame:
    """Rows of ``df`` whose columns equal ``key`` (NaN matches NaN)."""
    mask = np.ones(len(df), dtype=bool)
    for c, v in key.items():
        col = df[c]
        mask &= (col.isna() if pd.isna(v) else col == v).to_numpy(dtype=bool)  # type: ignore[arg-type]
    return df[mask]


def _ordered(values: Iterable[object], order: Sequence[str]) -> list[object]:
    unique = list(dict.fromkeys(values))
    return [v for v in order if v in unique] + sorted(
        (v for v in unique if v not in order), key=str
    )


def _present(t: pd.DataFrame, study: Any, skip: Iterable[str] = ("Individual",)) -> list[str]:
    """The method columns of a wide table that hold a number."""
    return [m for m in methods_in(t, study) if m not in set(skip) and t[m].notna().any()]


def _bars(ax: Axes, t: pd.DataFrame, methods: Sequence[str], k: float) -> None:
    """Grouped bars: one group per row of ``t``, one bar per method."""
    x = np.arange(len(t))
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        ax.bar(
            x + (i - (len(methods) - 1) / 2) * width,
            t[m].to_numpy(float) * k,
            width,
            label=m,
            color=method_color(m),
        )
    ax.grid(axis="x", visible=False)


def _int_ticks(ax: Axes, values: Iterable[float]) -> None:
    ticks = sorted({float(v) for v in values if np.isfinite(v)})
    ax.set_xticks(ticks, [short_number(v) for v in ticks])


# -- ingredients -------------------------------------------------------------------------


@INGREDIENTS.figure
def fig_ingredients(results: Results | pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per dataset: each setting's individual test accuracies (a dot per model), their
    mean, and the setting's mean pairwise disagreement."""
    results = Results.of_rows(results)
    df = results.select(INGREDIENTS, metric="accuracy", where={"method": "Individual"})
    if df.empty:
        return []
    keys = list(INGREDIENTS.keys)
    dis = results.select(INGREDIENTS, metric="disagreement", where={"method": "pairwise"})
    k = _scale(df["value"])
    archs = sorted(df["arch"].unique())
    colors = {a: _SERIES_COLORS[i % len(_SERIES_COLORS)] for i, a in enumerate(archs)}
    per = [c for c in keys if c != "dataset"]
    paths = []
    for (dataset,), g in df.groupby(["dataset"], sort=True):
        exps = list(_groups(g, per))
        shown = ["arch", *(c for c in varying(g, per) if c != "arch")]
        width = max(3.6, 0.85 * len(exps) + 1.4)
        with _figure(size=(width, 3.3)) as (fig, axes):
            ax = axes[0, 0]
            for i, (key, e) in enumerate(exps):
                v = e.sort_values("model")["value"].to_numpy(float) * k
                jitter = np.linspace(-0.15, 0.15, len(v)) if len(v) > 1 else np.zeros(1)
                color = colors[key["arch"]]
                ax.scatter(i + jitter, v, s=14, color=color, alpha=0.8, zorder=3)
                ax.hlines(v.mean(), i - 0.3, i + 0.3, color="black", linewidth=1.6, zorder=4)
                d = _match(dis, {"dataset": dataset, **key})["value"]
                if len(d):
                    ax.annotate(
                        f"{100 * d.mean():.1f}%",
                        xy=(i, float(v.max())),
                        xytext=(0, 5),
                        textcoords="offset points",
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
            ax.margins(x=0.1, y=0.18)
            ax.set_xticks(range(len(exps)), [experiment_label(key, shown, "\n") for key, _ in exps])
            ax.grid(axis="x", visible=False)
            ax.set_ylabel(f"test {_metric_label(['accuracy'], k == 100.0)}")
            main = f"{dataset}: the ingredients' test accuracy"
            ax.set_title(
                _headline(main, constant_keys(g, [c for c in per if c not in shown]), width, 9.0)
                + "\ndots: models; line: mean; %: pairwise disagreement"
            )
            paths.append(
                _save(
                    fig,
                    Path(out_dir)
                    / f"{_stem('ingredients', {'dataset': dataset}, ['dataset'])}.png",
                )
            )
    return paths


# -- weights vs features -----------------------------------------------------------------


@WVF.figure
def fig_wvf_bars(results: Results | pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per architecture: every method's test metric at each experiment's largest N, one
    group of bars per (dataset, init, seed)."""
    results = Results.of_rows(results)
    t = results.wide(WVF)
    if t.empty:
        return []
    t = at_largest_n(t, WVF.keys)
    per = ["dataset", "init", "seed"]
    paths = []
    for (arch,), ta in t.groupby(["arch"], sort=True):
        methods = _present(ta, WVF)
        if not methods:
            continue
        ta = ta.sort_values(per)
        shown = ["dataset", *(c for c in varying(ta, per) if c != "dataset"), "n_models"]
        k = _scale(ta[methods])
        bars = len(ta) * len(methods)
        width = min(16.0, max(5.0, 0.14 * bars + 3.2))
        with _figure(size=(width, 3.8)) as (fig, axes):
            ax = axes[0, 0]
            _bars(ax, ta, methods, k)
            _bar_floor(ax, ta[methods].to_numpy(float) * k)
            ax.set_xticks(
                range(len(ta)), [experiment_label(r, shown, "\n") for _, r in ta.iterrows()]
            )
            ax.set_ylabel(f"test {_metric_label(ta['metric'], k == 100.0)}")
            constant = constant_keys(ta, ["init", "seed"])
            title = f"{arch}: weight averaging vs feature averaging at each experiment's largest N"
            fig.suptitle(_headline(title, constant, width))
            _legend_right(ax)
            paths.append(
                _save(fig, Path(out_dir) / f"{_stem('wvf_bars', {'arch': arch}, ['arch'])}.png")
            )
    return paths


@WVF.figure
def fig_wvf_vs_n(results: Results | pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per architecture, one panel per (dataset, init, seed) experiment: each method's
    test metric against the number of models N."""
    results = Results.of_rows(results)
    t = results.wide(WVF)
    if t.empty:
        return []
    per = ["dataset", "init", "seed"]
    paths = []
    for (arch,), ta in t.groupby(["arch"], sort=True):
        panels = [(key, g) for key, g in _groups(ta, per) if g["n_models"].nunique() > 1]
        methods = _present(ta, WVF)
        if not panels or not methods:
            continue
        shown = ["dataset", *(c for c in varying(ta, per) if c != "dataset")]
        k = _scale(ta[methods])
        nr, nc = _grid(len(panels))
        with _figure(nr, nc, size=(3.5 * nc, 2.7 * nr + 0.9)) as (fig, axes):
            for ax, (key, g) in zip(axes.ravel(), panels, strict=False):
                g = g.sort_values("n_models")
                for m in methods:
                    if g[m].notna().any():
                        ax.plot(g["n_models"], g[m] * k, "o-", label=m, color=method_color(m))
                _int_ticks(ax, g["n_models"])
                ax.set_xlabel("number of models N")
                ax.set_ylabel(f"test {_metric_label(g['metric'], k == 100.0)}")
                ax.set_title(experiment_label(key, shown))
            _hide_unused(axes, len(panels))
            constant = constant_keys(ta, ["init", "seed"])
            title = f"{arch}: test {_metric_label(ta['metric'], False)} against N"
            fig.suptitle(_headline(title, constant, 3.5 * nc))
            _fig_legend(fig, fig.axes)
            name = _stem("wvf_methods_vs_n", {"arch": arch}, ["arch"])
            paths.append(_save(fig, Path(out_dir) / f"{name}.png"))
    return paths


_GAP_COLUMNS = [*WVF.keys, "metric", "gap", "low", "high"]


def wvf_gap(results: Results | pd.DataFrame) -> pd.DataFrame:
    """Ens Logits minus Uniform Soup per experiment and N: ``gap`` (from the rows'
    values) and, where both outcome vectors exist, the 95 % paired bootstrap interval
    ``low``/``high`` of the per-example contrast (NaN otherwise). In the rows' unit."""
    results = Results.of_rows(results)
    t = results.wide(WVF)
    pair = ["Ens Logits", "Uniform Soup"]
    if t.empty or not set(pair) <= set(t.columns):
        return pd.DataFrame(columns=_GAP_COLUMNS)
    t = t.dropna(subset=pair).reset_index(drop=True)
    index = [*WVF.keys, "metric", "split"]
    out = t[index].assign(gap=t["Ens Logits"] - t["Uniform Soup"], low=np.nan, high=np.nan)
    o = results.wide(WVF, column="outcome")
    if set(pair) <= set(o.columns):
        vecs = t[index].merge(
            o[[*index, *pair]].rename(columns={"Ens Logits": "_el", "Uniform Soup": "_us"}),
            on=index,
            how="left",
        )
        units, where = [], []
        for i, r in vecs.iterrows():
            el, us = results.vector(r["_el"]), results.vector(r["_us"])
            if r["metric"] != "accuracy" or el is None or us is None or len(el) != len(us):
                continue
            d = np.asarray(el, dtype=np.float64) - np.asarray(us, dtype=np.float64)
            units.append(Unit(str(r["dataset"]), (d,)))
            where.append(i)
        if units:
            _, intervals = pooled_interval(units)
            out.loc[where, "low"] = [iv.low for iv in intervals]
            out.loc[where, "high"] = [iv.high for iv in intervals]
    return out[_GAP_COLUMNS]


@WVF.figure
def fig_wvf_gap(results: Results | pd.DataFrame, out_dir: Path) -> list[Path]:
    """Ens Logits minus Uniform Soup against N with 95 % paired bootstrap intervals (where
    the outcome vectors are present): one panel per (init, dataset), since fine-tunes of
    one start and independent inits differ by orders of magnitude; one line per arch
    (marker per seed)."""
    gap = wvf_gap(results)
    if gap.empty:
        return []
    k = _scale(Results.of_rows(results).wide(WVF)[["Ens Logits", "Uniform Soup"]])
    panels = list(_groups(gap, ["init", "dataset"]))
    archs = list(dict.fromkeys(gap["arch"]))
    seeds = list(dict.fromkeys(short_number(s) for s in gap["seed"]))
    with_ci = bool(gap["low"].notna().any())
    nr, nc = _grid(len(panels), max_cols=2)
    with _figure(nr, nc, size=(4.4 * nc + 1.6, 3.0 * nr + 0.8)) as (fig, axes):
        for ax, (pkey, pg) in zip(axes.ravel(), panels, strict=False):
            lines = list(_groups(pg, ["arch", "seed"]))
            dodge = min(0.08, 0.5 / max(1, len(lines)))
            for i, (key, g) in enumerate(lines):
                g = g.sort_values("n_models")
                color = _SERIES_COLORS[archs.index(key["arch"]) % len(_SERIES_COLORS)]
                x = g["n_models"].to_numpy(float) + (i - (len(lines) - 1) / 2) * dodge
                y = g["gap"].to_numpy(float) * k
                label = str(key["arch"]) + (
                    f", seed {short_number(key['seed'])}" if len(seeds) > 1 else ""
                )
                ax.plot(
                    x,
                    y,
                    marker=_MARKERS[seeds.index(short_number(key["seed"])) % len(_MARKERS)],
                    color=color,
                    label=label,
                )
                ci = g["low"].notna().to_numpy()
                if ci.any():
                    low, high = g["low"].to_numpy(float)[ci] * k, g["high"].to_numpy(float)[ci] * k
                    ax.errorbar(
                        x[ci],
                        y[ci],
                        yerr=np.vstack([np.maximum(y[ci] - low, 0), np.maximum(high - y[ci], 0)]),
                        fmt="none",
                        ecolor=color,
                        elinewidth=0.9,
                        capsize=2,
                    )
            ax.axhline(0.0, color="black", linewidth=0.8)
            _int_ticks(ax, pg["n_models"])
            ax.set_xlabel("number of models N")
            ax.set_ylabel("Ens Logits − Uniform Soup" + (" (points)" if k == 100.0 else ""))
            ax.set_title(f"{pkey['dataset']} / {pkey['init']} init")
            _legend_right(ax)
        _hide_unused(axes, len(panels))
        title = "Gap between logit ensemble and uniform soup"
        if with_ci:
            title += f" (bars: {100 * LEVEL:.0f}% paired bootstrap interval over test examples)"
        fig.suptitle(_wrap(title, 4.4 * nc + 1.6))
        return [_save(fig, Path(out_dir) / "wvf_gap_vs_n.png")]


# -- cross task --------------------------------------------------------------------------


@CROSS_TASK.figure
def fig_cross_task(results: Results | pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per architecture, one group per (task A, task B, seed): Model A, B's backbone with
    A's head, their uniform soup and their ensembles, evaluated on task A."""
    results = Results.of_rows(results)
    t = results.wide(CROSS_TASK)
    if t.empty:
        return []
    methods = _present(t, CROSS_TASK, skip=())
    if not methods:
        return []
    k = _scale(t[methods])
    archs = sorted(t["arch"].unique())
    shown = ["dataset", "other_dataset", *varying(t, ["seed"])]
    n_groups = int(t.groupby("arch").size().max())
    width = min(16.0, max(5.0, 0.16 * n_groups * len(methods) + 3.0))
    with _figure(len(archs), 1, size=(width, 2.9 * len(archs) + 0.3)) as (fig, axes):
        for ax, arch in zip(axes[:, 0], archs, strict=True):
            w = t[t["arch"] == arch].sort_values(["dataset", "other_dataset", "seed"])
            _bars(ax, w, methods, k)
            labels = [
                "\n".join(
                    ["A=" + str(r["dataset"]), *experiment_label(r, shown[1:], "\n").split("\n")]
                )
                for _, r in w.iterrows()
            ]
            ax.set_xticks(range(len(w)), labels)
            ax.set_ylabel(f"test {_metric_label(w['metric'], k == 100.0)} on A")
            constant = constant_keys(w, ["seed"])
            ax.set_title(
                f"{arch}: merging models of different tasks (A's head)"
                + (f", {constant}" if constant else "")
            )
            _legend_right(ax)
        return [_save(fig, Path(out_dir) / "cross_task.png")]


# -- multi-task --------------------------------------------------------------------------


@MULTITASK.figure
def fig_multitask(results: Results | pd.DataFrame, out_dir: Path) -> list[Path]:
    """Average normalized test accuracy per method (dots: each task), and CART's
    average normalized accuracy against its rank fraction (coefficient chosen on val at
    every rank)."""
    results = Results.of_rows(results)
    w = multitask_frame(results, "normalized_accuracy")
    if w.empty:
        return []
    ranks = multitask_frame(results, "normalized_accuracy", "rank")
    ncols = 2 if not ranks.empty else 1
    with _figure(1, ncols, size=(5.2 * ncols, 3.4)) as (fig, axes):
        ax = axes[0, 0]
        methods = [m for m in order_methods(w["method"], MULTITASK_FIRST) if m != "Individual"]
        tasks = [
            c
            for c in w.columns
            if c not in ("arch", "seed", "n_models", "rank_fraction", "method", "Average")
        ]
        for i, method in enumerate(methods):
            row = w[w["method"] == method]
            ax.bar(i, 100 * row["Average"].mean(), color=method_color(method), alpha=0.85)
            vals = 100 * row[tasks].to_numpy(float).ravel()
            ax.scatter(np.full(len(vals), i), vals, s=8, color="black", zorder=3)
        ax.axhline(100.0, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_ylabel("normalized test accuracy (%)")
        constant = constant_keys(w, ["arch", "seed"])
        ax.set_title(
            f"{len(tasks)} tasks merged: bars mean, dots tasks"
            + (f" ({constant})" if constant else "")
        )
        if not ranks.empty:
            ax = axes[0, 1]
            r = ranks.sort_values("rank_fraction")
            ax.plot(
                100 * r["rank_fraction"], 100 * r["Average"], marker="o", color=method_color("CART")
            )
            ax.axvspan(8, 30, color="grey", alpha=0.15, label="8-30 % (paper)")
            ax.set_xlabel("CART rank fraction (%)")
            ax.set_ylabel("average normalized accuracy (%)")
            ax.set_title("CART: accuracy against rank")
            ax.legend(fontsize=8)
        return [_save(fig, Path(out_dir) / "multitask.png")]


# -- magnitude ---------------------------------------------------------------------------

_MAG_FILE = ("dataset", "arch", "init", "seed", "tensors")


@MAGNITUDE.figure
def fig_magnitude(results: Results | pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per (dataset, arch, init, seed): every method's test metric against the scaling
    factor at the largest N, one panel per (scaled, bn) option; the share of test
    examples with non-finite logits (worst method) on a grey dashed twin axis."""
    results = Results.of_rows(results)
    t = results.wide(MAGNITUDE)
    if t.empty:
        return []
    nf = results.wide(MAGNITUDE, metric="nonfinite")
    paths = []
    for key, g in _groups(t, _MAG_FILE):
        methods = _present(g, MAGNITUDE)
        if not methods:
            continue
        k = _scale(g[methods])
        scaled = _ordered(g["scaled"], _SCALED_ORDER)
        bns = _ordered(g["bn"], _BN_ORDER)
        combos = set(zip(g["scaled"], g["bn"], strict=True))
        gnf = _match(nf, key) if not nf.empty else nf
        nf_methods = _present(gnf, MAGNITUDE) if not gnf.empty else []
        show_nf = bool(nf_methods) and bool((gnf[nf_methods].to_numpy(float) > 0).any())
        nr, nc = len(scaled), len(bns)
        twins: list[Axes] = []
        width = max(4.4, 3.3 * nc + 0.4)
        panel_in = (width - 0.4) / nc - 1.0
        with _figure(nr, nc, size=(width, 2.55 * nr + 1.3)) as (fig, axes):
            for r, s in enumerate(scaled):
                for c, b in enumerate(bns):
                    ax = axes[r, c]
                    if (s, b) not in combos:
                        ax.remove()
                        continue
                    p = g[(g["scaled"] == s) & (g["bn"] == b)]
                    n = p["n_models"].max()
                    p = p[p["n_models"] == n].sort_values("magnitude")
                    for m in methods:
                        if p[m].notna().any():
                            ax.plot(
                                p["magnitude"],
                                p[m] * k,
                                "o-",
                                markersize=3,
                                label=m,
                                color=method_color(m),
                            )
                    _log_x(ax, p["magnitude"], panel_in)
                    ax.set_xlabel("scaling factor c")
                    if c == 0 or (s, bns[c - 1]) not in combos:
                        ax.set_ylabel(f"test {_metric_label(p['metric'], k == 100.0)}")
                    ax.set_title(f"scaled={s}, bn={b}, N={short_number(n)}")
                    if show_nf:
                        q = _match(gnf, {"scaled": s, "bn": b, "n_models": n})
                        q = q.sort_values("magnitude")
                        tw = ax.twinx()
                        twins.append(tw)
                        tw.plot(
                            q["magnitude"],
                            q[nf_methods].max(axis=1).to_numpy(float) * 100.0,
                            linestyle="--",
                            color=_NONFINITE_COLOR,
                            linewidth=1.0,
                            label="non-finite logits, worst method (%)",
                        )
                        tw.set_ylim(-4, 104)
                        tw.set_yticks([0, 50, 100])
                        tw.grid(False)
                        tw.spines["right"].set_visible(True)
                        tw.tick_params(axis="y", colors=_NONFINITE_COLOR, labelsize=7)
                        if c == nc - 1 or (s, bns[c + 1]) not in combos:
                            tw.set_ylabel("non-finite (%)", color=_NONFINITE_COLOR)
            constant = constant_keys(g, ["init", "seed", "tensors"])
            title = f"{key['dataset']} / {key['arch']}: parameters scaled by c"
            fig.suptitle(_headline(title, constant, width))
            _fig_legend(fig, [ax for ax in fig.axes if ax not in twins], twins[:1])
            name = _stem("magnitude", key, ["dataset", "arch"], ["init", "seed", "tensors"], t)
            paths.append(_save(fig, Path(out_dir) / f"{name}.png"))
    return paths


@MAGNITUDE.figure
def fig_magnitude_gap(results: Results | pd.DataFrame, out_dir: Path) -> list[Path]:
    """The paper's protocol (every model and tensor scaled; BatchNorm with batch
    statistics): Ens Logits minus Uniform Soup against c, one line per N, a panel per
    target (dataset, arch, init, seed)."""
    results = Results.of_rows(results)
    t = primary_magnitude(results)
    pair = ["Ens Logits", "Uniform Soup"]
    if t.empty or not set(pair) <= set(t.columns):
        return []
    t = t.dropna(subset=pair)
    if t.empty:
        return []
    k = _scale(t[pair])
    t = t.assign(gap=(t["Ens Logits"] - t["Uniform Soup"]) * k)
    per = ["dataset", "arch", "init", "seed", "bn"]
    shown = ["dataset", "arch", *(c for c in varying(t, ["init", "seed"])), "bn"]
    panels = list(_groups(t, per))
    ns = sorted(t["n_models"].dropna().unique())
    cmap = mpl.colormaps["viridis"]
    colors = {n: cmap(0.85 * i / max(1, len(ns) - 1)) for i, n in enumerate(ns)}
    nr, nc = _grid(len(panels))
    width = max(4.4, 3.6 * nc)
    with _figure(nr, nc, size=(width, 2.7 * nr + 1.1)) as (fig, axes):
        for ax, (key, g) in zip(axes.ravel(), panels, strict=False):
            for (n,), c in g.groupby(["n_models"], sort=True, dropna=False):
                c = c.sort_values("magnitude")
                ax.plot(
                    c["magnitude"],
                    c["gap"],
                    "o-",
                    markersize=3,
                    label=f"N={short_number(n)}",
                    color=colors.get(n, "black"),
                )
            ax.axhline(0.0, color="black", linewidth=0.8)
            _log_x(ax, g["magnitude"], width / nc - 1.0)
            ax.set_xlabel("scaling factor c")
            ax.set_ylabel("Ens Logits − Uniform Soup" + (" (points)" if k == 100.0 else ""))
            ax.set_title(experiment_label(key, shown))
        _hide_unused(axes, len(panels))
        constant = constant_keys(t, ["init", "seed"])
        protocol = "every model and tensor scaled" + (f", {constant}" if constant else "")
        fig.suptitle(_headline("Ens Logits − Uniform Soup against c", protocol, width))
        _fig_legend(fig, fig.axes)
        return [_save(fig, Path(out_dir) / "magnitude_gap.png")]


@MAGNITUDE_BATCHES.figure
def fig_magnitude_batches(results: Results | pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per experiment (every key but the factor fixed): per-batch accuracy of Ens Logits
    (x) against Uniform Soup (y), one colour per factor, one panel per N."""
    results = Results.of_rows(results)
    pair = ["Ens Logits", "Uniform Soup"]
    b = results.select(MAGNITUDE_BATCHES, where={"method": pair}).dropna(subset=["magnitude"])
    if b.empty:
        return []
    keys = list(MAGNITUDE_BATCHES.keys)
    index = [*keys, "batch"]
    dup = b.duplicated([*index, "method"], keep=False)
    if dup.any():
        first = b[dup].iloc[0]
        raise ValueError(
            "magnitude_batches: rows share one experiment, batch and method ("
            + ", ".join(f"{c}={first[c]}" for c in [*index, "method"])
            + "); a key column is missing from these rows"
        )
    wide = b.set_index([*index, "method"])["value"].unstack("method").reset_index()
    if not set(pair) <= set(wide.columns):
        return []
    wide = wide.dropna(subset=pair)
    file_keys = [c for c in keys if c not in ("n_models", "magnitude")]
    k = _scale(wide[pair])
    unit = " (%)" if k == 100.0 else ""
    paths = []
    for key, g in _groups(wide, file_keys):
        ns = sorted(g["n_models"].unique(), key=lambda v: (pd.isna(v), v))
        factors = sorted(g["magnitude"].unique())
        cmap = mpl.colormaps["viridis"]
        colors = {f: cmap(0.9 * i / max(1, len(factors) - 1)) for i, f in enumerate(factors)}
        values = g[pair].to_numpy(float) * k
        lo, hi = float(values.min()), float(values.max())
        pad = 0.04 * (hi - lo or 1.0)
        nr, nc = _grid(len(ns))
        width = max(4.4, 3.4 * nc)
        with _figure(nr, nc, size=(width, 3.2 * nr + 1.2)) as (fig, axes):
            for ax, n in zip(axes.ravel(), ns, strict=False):
                w = _match(g, {"n_models": n})
                for f in factors:
                    p = w[w["magnitude"] == f]
                    if len(p):
                        ax.scatter(
                            p["Ens Logits"] * k,
                            p["Uniform Soup"] * k,
                            s=11,
                            alpha=0.75,
                            color=colors[f],
                            label=f"c={short_number(f)}",
                        )
                ax.plot(
                    [lo - pad, hi + pad],
                    [lo - pad, hi + pad],
                    "k--",
                    linewidth=0.8,
                    label="soup = ensemble",
                )
                ax.set_xlim(lo - pad, hi + pad)
                ax.set_ylim(lo - pad, hi + pad)
                ax.set_aspect("equal")
                ax.set_xlabel(f"Ens Logits batch accuracy{unit}")
                ax.set_ylabel(f"Uniform Soup batch accuracy{unit}")
                ax.set_title(f"N={short_number(n)}")
            _hide_unused(axes, len(ns))
            title = f"{key['dataset']} / {key['arch']}: class-mixed test batches\n"
            title += experiment_label(
                key, [c for c in file_keys if c not in ("dataset", "arch")], ", "
            )
            fig.suptitle(_wrap(title, width))
            _fig_legend(fig, fig.axes)
            name = _stem("magnitude_batches", key, ["dataset", "arch"], file_keys[2:], wide)
            paths.append(_save(fig, Path(out_dir) / f"{name}.png"))
    return paths


# -- weight statistics -------------------------------------------------------------------


@WEIGHT_STATS.figure
def fig_weight_stats(results: Results | pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per experiment: each tensor's statistic of the average against the mean of the
    models' (log-log; on the diagonal: no shrinkage), for max |w| and variance; for the
    variance also the independent-weights prediction sum(s_i^2)/N^2 (hollow). Weight
    matrices and kernels in colour, biases and norm scales in grey."""
    results = Results.of_rows(results)
    ws = results.of(WEIGHT_STATS)
    ws = ws[ws["method"].isin(["model", "average"])].dropna(subset=["value"])
    if ws.empty:
        return []
    keys = list(WEIGHT_STATS.keys)
    paths = []
    for key, g in _groups(ws, keys):
        panels = [m for m in ("max_abs", "variance") if (g["metric"] == m).any()]
        if not panels:
            continue
        ndim = pd.to_numeric(g.get("ndim", pd.Series(np.nan, index=g.index)), errors="coerce")
        matrices = set(g.loc[ndim.fillna(2) >= 2, "layer"])
        with _figure(1, len(panels), size=(3.6 * len(panels) + 0.6, 3.8)) as (fig, axes):
            for ax, metric in zip(axes[0], panels, strict=True):
                models = g[(g["method"] == "model") & (g["metric"] == metric)]
                mean = models.groupby("layer", sort=False)["value"].mean()
                avg = g[(g["method"] == "average") & (g["metric"] == metric)]
                avg = avg.groupby("layer", sort=False)["value"].mean().reindex(mean.index)
                is_matrix = np.array([name in matrices for name in mean.index])
                kinds = (
                    (is_matrix, "#d62728", "weight matrices, kernels"),
                    (~is_matrix, "#9e9e9e", "biases, norm scales"),
                )
                for sel, color, label in kinds:
                    if sel.any():
                        ax.scatter(mean[sel], avg[sel], s=14, color=color, label=label)
                values = [mean.to_numpy(), avg.to_numpy()]
                if metric == "variance":
                    pred = g[(g["method"] == "average") & (g["metric"] == "predicted_variance")]
                    pred = pred.groupby("layer", sort=False)["value"].mean().reindex(mean.index)
                    if pred.notna().any():
                        ax.scatter(mean, pred, s=14, facecolors="none", edgecolors="black",
                                   label="predicted, independent weights")  # fmt: skip
                        values.append(pred.to_numpy())
                finite = np.concatenate(values)
                finite = finite[np.isfinite(finite) & (finite > 0)]
                if finite.size:
                    lo, hi = finite.min() / 1.5, finite.max() * 1.5
                    ax.plot([lo, hi], [lo, hi], "k:", linewidth=0.8, label="no shrinkage")
                    ax.set_xscale("log")
                    ax.set_yscale("log")
                    ax.set_xlim(lo, hi)
                    ax.set_ylim(lo, hi)
                    ax.xaxis.set_minor_formatter(NullFormatter())
                    ax.yaxis.set_minor_formatter(NullFormatter())
                what = "max |w|" if metric == "max_abs" else "variance of w"
                ax.set_xlabel(f"{what}: mean of the models")
                ax.set_ylabel(f"{what}: their average")
                ax.set_title(f"{what} per tensor")
            fig.suptitle(f"Weight statistics: {experiment_label(key, keys)} averaged")
            _fig_legend(fig, fig.axes)
            name = _stem("weight_stats", key, ["dataset", "arch"], ["init", "seed"], ws)
            paths.append(
                _save(fig, Path(out_dir) / f"{name}_{_file_part('n_models', key['n_models'])}.png")
            )
    return paths


def _short(layer: str, width: int = 22) -> str:
    return layer if len(layer) <= width else "…" + layer[-(width - 1) :]


# -- templates ---------------------------------------------------------------------------


@TEMPLATES.figure
def fig_template_correlation(results: Results | pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per (dataset, arch, seed): per-class correlation of each kind of template with the
    class means (bar: median, dots: classes) and the share of classes identified."""
    results = Results.of_rows(results)
    tp = results.select(TEMPLATES, split=None, metric="template_correlation")
    if tp.empty:
        return []
    ident = results.select(TEMPLATES, split=None, metric="identified")
    keys = list(TEMPLATES.keys)
    methods = _ordered(tp["method"], _TEMPLATE_ORDER)
    groups = list(_groups(tp, keys))
    shown = ["dataset", *(c for c in varying(tp, keys) if c != "dataset")]
    width = 0.8 / len(methods)
    size = (max(5.0, 0.5 * len(groups) * len(methods) + 2.8), 3.4)
    with _figure(size=size) as (fig, axes):
        ax = axes[0, 0]
        for gi, (key, g) in enumerate(groups):
            for i, m in enumerate(methods):
                v = np.sort(g[g["method"] == m]["value"].to_numpy(float))
                if not len(v):
                    continue
                x0 = gi + (i - (len(methods) - 1) / 2) * width
                color = method_color(str(m))
                ax.bar(
                    x0,
                    np.median(v),
                    width * 0.9,
                    color=color,
                    alpha=0.35,
                    label=str(m) if gi == 0 else None,
                )
                jitter = np.linspace(-0.3, 0.3, len(v)) * width if len(v) > 1 else np.zeros(1)
                ax.scatter(x0 + jitter, v, s=6, color=color, zorder=3)
                hit = _match(ident, {**key, "method": m})["value"]
                if len(hit):
                    ax.annotate(
                        f"{100 * hit.mean():.0f}%",
                        xy=(x0, max(float(v.max()), float(np.median(v)), 0.0)),
                        xytext=(0, 3),
                        textcoords="offset points",
                        ha="center",
                        va="bottom",
                        fontsize=6.5,
                    )
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.margins(y=0.12)
        ax.set_xticks(range(len(groups)), [experiment_label(key, shown, "\n") for key, _ in groups])
        ax.set_ylabel("correlation with class mean")
        ax.set_title(
            "Weights as templates\nbar: median over classes; dots: classes; %: classes identified"
        )
        ax.grid(axis="x", visible=False)
        _legend_right(ax)
        return [_save(fig, Path(out_dir) / "templates_correlation.png")]


def _find_arrays(out_dir: Path, arrays_dir: Path | None) -> Path | None:
    out_dir = Path(out_dir)
    candidates = (
        [Path(arrays_dir)]
        if arrays_dir is not None
        else [out_dir / "arrays", out_dir.parent / "arrays"]
    )
    return next((p for p in candidates if p.is_dir()), None)


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


@TEMPLATES.figure
def fig_templates(
    results: Results | pd.DataFrame | None, out_dir: Path, *, arrays_dir: Path | None = None
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
            paths.append(_save(fig, Path(out_dir) / f"{slug(path.stem)}.png"))
    return paths


@TEMPLATES.figure
def fig_kernels(
    results: Results | pd.DataFrame | None, out_dir: Path, *, arrays_dir: Path | None = None
) -> list[Path]:
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
            paths.append(_save(fig, Path(out_dir) / f"{slug(path.stem)}.png"))
    return paths


# -- all figures -------------------------------------------------------------------------


def _takes_arrays(fn: FigureFn) -> bool:
    try:
        return "arrays_dir" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def figures_by_study(
    results: Results | pd.DataFrame | None,
    out_dir: Path,
    *,
    arrays_dir: Path | None = None,
    errors: list[str] | None = None,
) -> dict[str, list[Path]]:
    """Draw every registered figure whose data is present; the PNGs written, by study
    (every study is a key, in the registry's order).

    A figure that fails is reported (a warning, and a line appended to ``errors``) and
    the others are still drawn: one broken plot should not cost the whole report.
    """
    out_dir = Path(out_dir)
    results = Results.of_rows(results)
    written: dict[str, list[Path]] = {}
    for name, study in STUDIES.items():
        paths: list[Path] = []
        for fn in study.figures:
            kwargs = {"arrays_dir": arrays_dir} if _takes_arrays(fn) else {}
            try:
                paths += fn(results, out_dir, **kwargs)
            except Exception as exc:
                label = getattr(fn, "__name__", repr(fn))
                message = f"figure {label} failed: {type(exc).__name__}: {exc}"
                warnings.warn(message, stacklevel=2)
                if errors is not None:
                    errors.append(message)
        written[name] = paths
    return written


def make_figures(
    results: Results | pd.DataFrame | None,
    out_dir: Path,
    *,
    arrays_dir: Path | None = None,
    errors: list[str] | None = None,
) -> list[Path]:
    """Draw every figure whose data is present under ``out_dir``; the PNGs written."""
    by_study = figures_by_study(results, out_dir, arrays_dir=arrays_dir, errors=errors)
    return [p for paths in by_study.values() for p in paths]
