"""Atomic file writes, so an interrupted run never leaves half a report or a torn CSV."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pandas as pd

__all__ = ["atomic_write_bytes", "atomic_write_text", "read_results", "write_results"]


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """``atomic_write_bytes`` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_results(rows: pd.DataFrame, out_dir: Path) -> Path:
    """Write the tidy table as ``out_dir/results.csv`` (atomically) and return its path."""
    return atomic_write_text(Path(out_dir) / "results.csv", rows.to_csv(index=False))


def read_results(path: Path) -> pd.DataFrame:
    """Read a ``results.csv`` written by ``write_results`` back into the tidy table."""
    return pd.read_csv(path)
