"""Shared reading of the tidy results table.

Figures, tables and claims all go through these helpers so that they agree on which
metric is primary, how repeated rows are averaged, how a missing column behaves and in
which order methods appear. Nothing here draws or writes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

from mergelab.results import RESULT_COLUMNS

__all__ = [
    "BASE_COLUMNS",
    "CROSS_TASK_ORDER",
    "DEFAULT_OPTION",
    "KEY_COLUMNS",
    "METHOD_ORDER",
    "PRIMARY_METRICS",
    "SETTING",
    "TEMPLATE_ORDER",
    "cross_task_frames",
    "is_fraction",
    "magnitude_rows",
    "method_table",
    "methods_in",
    "normalize_rows",
    "order_methods",
    "primary_rows",
    "slug",
    "study_rows",
]

BASE_COLUMNS = RESULT_COLUMNS
_TEXT_COLUMNS = ("study", "dataset", "arch", "method", "split", "metric")
_NUMBER_COLUMNS = ("n_models", "magnitude", "value")

# The order of the paper's tables; methods this list does not know come after, sorted.
METHOD_ORDER = (
    "Individual",
    "Perf Ave",
    "Best Individual",
    "Uniform Soup",
    "Greedy Soup",
    "Ens Logits",
    "Ens Features",
    "Ens Features*",
    "Greedy Ens Logits",
    "Greedy Ens Features",
    "Model A",
    "Model B",
)
# Ranking metrics; a dataset with AUROC rows (multi-label) is ranked by AUROC.
PRIMARY_METRICS = ("auroc", "accuracy")
SETTING = ("dataset", "arch", "n_models")
# The cross-task study's methods, in the order its table and figure show them.
CROSS_TASK_ORDER = ("Model A", "Model B", "Uniform Soup")
# The templates study's methods, in the order its table and figure show them.
TEMPLATE_ORDER = ("classifier", "merged_two_models", "merged_halves")
# Key columns of a ``method_table``: the setting plus the metric it reports.
KEY_COLUMNS = (*SETTING, "metric")
# The magnitude study's default options ("scale every tensor of every model").
DEFAULT_OPTION = "all"


def normalize_rows(rows: pd.DataFrame | None) -> pd.DataFrame:
    """A copy with every base column present, numbers numeric and text keys never NaN.

    Text keys become ``""`` when missing so that ``groupby`` keeps those rows; numbers
    that do not parse become NaN rather than failing the whole report.
    """
    df = pd.DataFrame(columns=list(BASE_COLUMNS)) if rows is None else rows.copy()
    for col in _TEXT_COLUMNS:
        if col not in df.columns:
            df[col] = ""
        df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)
    for col in _NUMBER_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df.reset_index(drop=True)


def study_rows(rows: pd.DataFrame, study: str) -> pd.DataFrame:
    """The normalized rows of one study (empty when the study did not run)."""
    df = normalize_rows(rows)
    return df[df["study"] == study].reset_index(drop=True)


def primary_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the ranking metric: ``auroc`` for datasets that report it, else ``accuracy``."""
    m = df[df["metric"].isin(PRIMARY_METRICS)]
    if m.empty:
        return m
    has_auroc = m.groupby("dataset")["metric"].transform(lambda s: bool((s == "auroc").any()))
    wanted = np.where(has_auroc.to_numpy(dtype=bool), "auroc", "accuracy")
    return m[m["metric"].to_numpy() == wanted]


def order_methods(methods: Iterable[str], first: Iterable[str] = ()) -> list[str]:
    """Methods in the paper's order (after ``first``), unknown ones after, alphabetically."""
    unique = list(dict.fromkeys(methods))
    order = list(dict.fromkeys([*first, *METHOD_ORDER]))
    known = [m for m in order if m in unique]
    return known + sorted(m for m in unique if m not in order)


def methods_in(table: pd.DataFrame) -> list[str]:
    """The method columns of a ``method_table``."""
    return order_methods(c for c in table.columns if c not in KEY_COLUMNS)


def is_fraction(values: Iterable[float] | pd.Series | np.ndarray) -> bool:
    """True when every finite value lies in [0, 1]: accuracies stored as fractions.

    The report then shows them as percentages and a "point" means 0.01.
    """
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, float)
    arr = arr[np.isfinite(arr)]
    return bool(arr.size == 0 or (arr.min() >= 0.0 and arr.max() <= 1.0))


def slug(text: object) -> str:
    """A file-name-safe form of a dataset or architecture name."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")
    return s or "x"


def method_table(wvf: pd.DataFrame, split: str = "test", metric: str | None = None) -> pd.DataFrame:
    """One row per (dataset, arch, n_models, metric), one column per method.

    ``metric=None`` takes the primary metric of each dataset. Repeated rows (seeds) are
    averaged. "Perf Ave" and "Best Individual" are filled from the "Individual" rows when
    the study did not write them: the mean, and the model best on val (on val: the max).
    """
    df = wvf[wvf["split"] == split]
    df = primary_rows(df) if metric is None else df[df["metric"] == metric]
    df = df.dropna(subset=["value", "n_models"])
    keys = list(KEY_COLUMNS)
    if df.empty:
        return pd.DataFrame(columns=keys)
    others = df[df["method"] != "Individual"]
    if others.empty:
        table = df[keys].drop_duplicates().set_index(keys)
    else:
        table = others.groupby([*keys, "method"])["value"].mean().unstack("method")
        table.columns = [str(c) for c in table.columns]
    ind = df[df["method"] == "Individual"]
    if not ind.empty:
        ind_g = ind.groupby(keys)["value"]
        derived = {"Perf Ave": ind_g.mean()}
        best = _best_individual(wvf, ind, split, keys)
        if best is not None:
            derived["Best Individual"] = best
        table = table.reindex(table.index.union(ind_g.mean().index))
        for name, series in derived.items():
            series = series.reindex(table.index)
            table[name] = table[name].fillna(series) if name in table.columns else series
    table = table.reset_index()
    table = table.dropna(how="all", subset=[c for c in table.columns if c not in keys])
    table = table[keys + order_methods(c for c in table.columns if c not in keys)]
    return table.sort_values(keys).reset_index(drop=True)


def _best_individual(
    wvf: pd.DataFrame, ind: pd.DataFrame, split: str, keys: list[str]
) -> pd.Series | None:
    """The individual chosen on val, reported on ``split`` (selection never sees test)."""
    if split == "val":
        return ind.groupby(keys)["value"].max()
    if "members" not in ind.columns:
        return None
    val = primary_rows(wvf[(wvf["split"] == "val") & (wvf["method"] == "Individual")])
    val = val.dropna(subset=["value", "n_models"])
    if val.empty:
        return None
    setting = list(SETTING)
    chosen = val.sort_values("value", ascending=False, kind="stable").drop_duplicates(setting)
    chosen = chosen[[*setting, "members"]]
    picked = ind.merge(chosen, on=[*setting, "members"], how="inner")
    if picked.empty:
        return None
    return picked.groupby(keys)["value"].mean()


def magnitude_rows(mag: pd.DataFrame) -> pd.DataFrame:
    """Magnitude rows with ``scaled``/``tensors`` present (missing means the default, "all")."""
    df = mag.copy()
    for col in ("scaled", "tensors"):
        if col not in df.columns:
            df[col] = DEFAULT_OPTION
        df[col] = df[col].astype(object).where(df[col].notna(), DEFAULT_OPTION).astype(str)
    return df


def cross_task_frames(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cross-task rows (test split when present) and their wide form: one row per
    (arch, dataset, other_dataset), one column per method, mean value."""
    ct = primary_rows(study_rows(rows, "cross_task")).dropna(subset=["value"])
    if (ct["split"] == "test").any():
        ct = ct[ct["split"] == "test"]
    if ct.empty:
        return ct, pd.DataFrame()
    if "other_dataset" not in ct.columns:
        ct = ct.assign(other_dataset="")
    ct = ct.assign(other_dataset=ct["other_dataset"].astype(object).fillna("").astype(str))
    wide = ct.groupby(["arch", "dataset", "other_dataset", "method"])["value"].mean()
    return ct, wide.unstack("method")
