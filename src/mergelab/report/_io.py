"""The results table on disk, written atomically so an interrupted run never leaves a
torn CSV (the atomic writers are :mod:`mergelab.atomic`'s, re-exported for the report)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mergelab.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["atomic_write_bytes", "atomic_write_text", "read_results", "write_results"]


_INTEGER_COLUMNS = ("n_models", "seed", "model", "batch", "class", "ndim", "numel", "depth")


def write_results(rows: pd.DataFrame, out_dir: Path) -> Path:
    """Write the tidy table as ``out_dir/results.csv`` (atomically) and return its path.
    Counts and indices (N, seed, model, class, ...) are written as integers, not 10.0."""
    rows = rows.copy()
    for col in _INTEGER_COLUMNS:
        if col in rows.columns:
            values = pd.to_numeric(rows[col], errors="coerce")
            finite = values.dropna()
            if len(finite) and (finite == finite.round()).all():
                rows[col] = values.astype("Int64")
    return atomic_write_text(Path(out_dir) / "results.csv", rows.to_csv(index=False))


def read_results(path: Path) -> pd.DataFrame:
    """Read a ``results.csv`` written by ``write_results`` back into the tidy table."""
    return pd.read_csv(path)
