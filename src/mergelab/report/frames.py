"""One way to read the results table, shared by every table, figure and claim.

:class:`Results` holds the tidy rows (normalised: every base, key and item column
present, numbers numeric, text never NaN) and the per-example outcome vectors. Its
:meth:`Results.wide` is the only pivot from rows to "one row per experiment, one column
per method": the index is *every* key column the study declares, so rows of different
experiments (another init, seed, BatchNorm mode, ...) can never be averaged together, and
a study that wrote two rows for one experiment and method is reported as an error instead
of being silently averaged. A figure that wants an average over experiments computes it
itself and says so in its title.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from mergelab.results import OUTCOMES_FILE, RESULT_COLUMNS, read_outcomes
from mergelab.studies.registry import NUMBER_KEYS, STUDIES, Study

__all__ = [
    "METHOD_ORDER",
    "PRIMARY_METRICS",
    "Results",
    "at_largest_n",
    "constant_keys",
    "experiment_label",
    "is_fraction",
    "key_value_label",
    "normalize_rows",
    "order_methods",
    "short_number",
    "slug",
    "varying",
]

# The order of the paper's tables; methods this list does not know come after, sorted.
METHOD_ORDER = (
    "Individual",
    "Perf Ave",
    "Best Individual",
    "Model A",
    "B backbone + A head",
    "Uniform Soup",
    "Greedy Soup",
    "Ens Logits",
    "Ens Features",
    "Ens Features*",
    "Greedy Ens Logits",
    "Greedy Ens Features",
    "Greedy Ens Logits (own)",
    "Greedy Ens Features (own)",
)
# Ranking metrics; a dataset with AUROC rows (multi-label) is ranked by AUROC.
PRIMARY_METRICS = ("auroc", "accuracy")
_TEXT = ("study", "dataset", "arch", "method", "split", "metric", "outcome")
_NUMBERS = ("n_models", "magnitude", "value")


def _columns() -> tuple[list[str], list[str]]:
    """(text columns, number columns) of the base table and of every registered study."""
    text, numbers = list(_TEXT), list(_NUMBERS)
    for study in STUDIES.values():
        for col in (*study.keys, *study.items):
            target = numbers if col in NUMBER_KEYS else text
            if col not in text and col not in numbers:
                target.append(col)
    return text, numbers


def normalize_rows(rows: pd.DataFrame | None) -> pd.DataFrame:
    """A copy with every base, key and item column present, numbers numeric (NaN when
    missing or unparsable) and text never NaN (``""``), so grouping keeps every row."""
    df = pd.DataFrame(columns=list(RESULT_COLUMNS)) if rows is None else rows.copy()
    text, numbers = _columns()
    for col in text:
        if col not in df.columns:
            df[col] = ""
        df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)
    for col in numbers:
        if col not in df.columns:
            df[col] = np.nan
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    order = [*RESULT_COLUMNS, *(c for c in df.columns if c not in RESULT_COLUMNS)]
    return df[order].reset_index(drop=True)


def order_methods(methods: Iterable[str], first: Iterable[str] = ()) -> list[str]:
    """Methods in the paper's order (after ``first``), unknown ones after, alphabetically."""
    unique = list(dict.fromkeys(methods))
    order = list(dict.fromkeys([*first, *METHOD_ORDER]))
    known = [m for m in order if m in unique]
    return known + sorted(m for m in unique if m not in order)


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


def varying(df: pd.DataFrame, columns: Iterable[str]) -> list[str]:
    """The columns among ``columns`` that take more than one value in ``df`` (labels need
    only these; the constant ones go in a title)."""
    return [c for c in columns if c in df.columns and df[c].nunique(dropna=False) > 1]


def primary_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the ranking metric: ``auroc`` for datasets that report it, else ``accuracy``."""
    m = df[df["metric"].isin(PRIMARY_METRICS)]
    if m.empty:
        return m
    has_auroc = m.groupby("dataset")["metric"].transform(lambda s: bool((s == "auroc").any()))
    wanted = np.where(has_auroc.to_numpy(dtype=bool), "auroc", "accuracy")
    return m[m["metric"].to_numpy() == wanted]


class Results:
    """The tidy rows of a study run and the outcome vectors behind them."""

    def __init__(
        self, rows: pd.DataFrame | None, outcomes: Mapping[str, np.ndarray] | None = None
    ) -> None:
        self.rows = normalize_rows(rows)
        self.outcomes: dict[str, np.ndarray] = dict(outcomes or {})

    @classmethod
    def read(cls, out_dir: str | Path) -> Results:
        """``OUT/results.csv`` and, when present, ``OUT/outcomes.npz``."""
        out_dir = Path(out_dir)
        rows = pd.read_csv(out_dir / "results.csv", low_memory=False)
        return cls(rows, read_outcomes(out_dir / OUTCOMES_FILE))

    @classmethod
    def of_rows(cls, rows: pd.DataFrame | Results | None) -> Results:
        return rows if isinstance(rows, Results) else cls(rows)

    def of(self, study: Study) -> pd.DataFrame:
        """The rows of ``study`` (empty when it did not run)."""
        df = self.rows
        return df[df["study"] == study.name].reset_index(drop=True)

    def select(
        self,
        study: Study,
        *,
        split: str | None = "test",
        metric: str | None = None,
        where: Mapping[str, object] | None = None,
    ) -> pd.DataFrame:
        """Rows of ``study`` on ``split`` (None: every split) for ``metric`` (None: the
        primary metric of each dataset), restricted by ``where`` (column -> value, or a
        list/tuple/set of accepted values)."""
        df = self.of(study)
        if split is not None and (df["split"] == split).any():
            df = df[df["split"] == split]
        elif split is not None:
            df = df.iloc[0:0]
        df = primary_rows(df) if metric is None else df[df["metric"] == metric]
        for col, wanted in (where or {}).items():
            if isinstance(wanted, list | tuple | set | frozenset):
                df = df[df[col].isin(list(wanted))]
            else:
                df = df[df[col] == wanted]
        return df.dropna(subset=["value"]).reset_index(drop=True)

    def wide(
        self,
        study: Study,
        *,
        split: str | None = "test",
        metric: str | None = None,
        where: Mapping[str, object] | None = None,
        column: str = "value",
    ) -> pd.DataFrame:
        """One row per experiment (every key column of ``study``, plus ``metric`` and
        ``split``), one column per method holding ``column`` ("value" or "outcome").

        Raises ``ValueError`` naming the experiment when two rows of one experiment and
        method remain (rows of different experiments were written without the key that
        tells them apart): averaging them would report a number no experiment produced.
        """
        df = self.select(study, split=split, metric=metric, where=where)
        df = df[~df["method"].isin(study.item_methods)]
        index = [*study.keys, "metric", "split"]
        if df.empty:
            return pd.DataFrame(columns=index)
        dup = df.duplicated([*index, "method"], keep=False)
        if dup.any():
            first = df[dup].iloc[0]
            where_text = ", ".join(f"{k}={first[k]}" for k in [*index, "method"])
            raise ValueError(
                f"study {study.name!r}: {int(dup.sum())} rows share one experiment and method "
                f"({where_text}); a key column is missing from these rows"
            )
        values = df[column] if column == "value" else df[column].replace("", np.nan)
        table = (
            df.assign(_v=values).set_index([*index, "method"])["_v"].unstack("method").reset_index()
        )
        table.columns.name = None
        methods = order_methods(c for c in table.columns if c not in index)
        return table[index + methods].sort_values(index).reset_index(drop=True)

    def vector(self, key: object) -> np.ndarray | None:
        """The outcome vector named ``key`` (None for a missing or empty name)."""
        if not isinstance(key, str) or not key:
            return None
        return self.outcomes.get(key)


def methods_in(table: pd.DataFrame, study: Study) -> list[str]:
    """The method columns of a :meth:`Results.wide` table."""
    index = {*study.keys, "metric", "split"}
    return order_methods(c for c in table.columns if c not in index)


# -- labels of experiments ----------------------------------------------------------------


def short_number(v: object) -> str:
    """A number as short text: 10.0 -> "10", 0.5 -> "0.5", NaN -> "?"."""
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(v)
    return f"{f:g}" if np.isfinite(f) else "?"


def key_value_label(col: str, v: object) -> str:
    """How a key column's value reads in a label or title ("N=10", "seed 0", "shared
    init", "bn=batch", "c=150", a dataset or arch name)."""
    if col == "n_models":
        return f"N={short_number(v)}"
    if col == "seed":
        return f"seed {short_number(v)}"
    if col == "magnitude":
        return f"c={short_number(v)}"
    text = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
    if col == "init":
        return f"{text or '?'} init"
    if col == "other_dataset":
        return f"B={text or '?'}"
    if col in ("scaled", "tensors", "bn", "dataset", "arch") and not text:
        return f"{col}=?"
    if col in ("scaled", "tensors", "bn"):
        return f"{col}={text}"
    return text


def experiment_label(key: Mapping[str, object], cols: Iterable[str], sep: str = " / ") -> str:
    """The values of ``cols`` in ``key`` (a row or a mapping) as one label."""
    return sep.join(key_value_label(c, key[c]) for c in cols)


def constant_keys(df: pd.DataFrame, cols: Iterable[str]) -> str:
    """Title text such as "shared init, seed 0": the columns with a single known value."""
    out = []
    for c in cols:
        if c in df.columns and len(df) and df[c].nunique(dropna=False) == 1:
            v = df[c].iloc[0]
            if not (pd.isna(v) or str(v) == ""):
                out.append(key_value_label(c, v))
    return ", ".join(out)


def at_largest_n(t: pd.DataFrame, keys: Iterable[str]) -> pd.DataFrame:
    """Each experiment (all keys but ``n_models``) at its largest N."""
    others = [k for k in keys if k != "n_models"]
    largest = t.groupby(others, dropna=False)["n_models"].transform("max")
    return t[t["n_models"] == largest]
