"""The one results table every study writes and every report reads, and the per-example
outcomes behind its test numbers.

A row of ``results.csv`` is one number. Where that number is a mean over test examples
(accuracy), the row's ``outcome`` column names a vector in ``outcomes.npz``: the
example-by-example scores whose mean is the number (1 = correct, 0 = wrong; fractions for
"Perf Ave"). Paired bootstrap intervals of differences between methods, model counts or
scaling factors are computed from those vectors, resampling the same test examples for
every number of a dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "OUTCOMES_FILE",
    "RESULT_COLUMNS",
    "correct_examples",
    "outcome_key",
    "read_outcomes",
    "write_outcomes",
]

RESULT_COLUMNS = (
    "study",
    "dataset",
    "arch",
    "n_models",
    "method",
    "magnitude",
    "split",
    "metric",
    "value",
)
"""The fixed leading columns of ``results.csv``; studies add free columns after them."""

OUTCOMES_FILE = "outcomes.npz"


def outcome_key(row: Mapping[str, Any]) -> str:
    """A stable name for the outcome vector of ``row``: a hash of what identifies the
    number (study, its key and item columns, method, split, metric), so two numbers never
    share a name and a rerun gives the same names."""
    from mergelab.studies.registry import STUDIES

    study = STUDIES.get(str(row.get("study")))
    names = ("study", "method", "split", "metric")
    if study is not None:
        names += (*study.keys, *study.items)
    ident = {
        k: (row[k].item() if isinstance(row[k], np.generic) else row[k]) for k in names if k in row
    }
    blob = json.dumps(ident, sort_keys=True, default=str).encode()
    return "o" + hashlib.sha256(blob).hexdigest()[:20]


def correct_examples(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1 where the arg-max class is the target, 0 elsewhere (uint8). A row of logits with
    any NaN or infinity counts as wrong: its arg-max would be an artefact of the overflow
    (NumPy's arg-max of a NaN row is the NaN's position)."""
    logits = np.asarray(logits)
    finite = np.isfinite(logits).all(axis=1)
    pred = np.argmax(np.where(np.isfinite(logits), logits, -np.inf), axis=1)
    return ((pred == np.asarray(targets)) & finite).astype(np.uint8)


def write_outcomes(outcomes: Mapping[str, np.ndarray], path: str | os.PathLike[str]) -> Path:
    """Write ``outcomes`` as one compressed ``.npz`` (atomically: temp file, then rename)."""
    from mergelab.atomic import atomic_write

    arrays = {k: np.asarray(v) for k, v in sorted(outcomes.items())}
    return atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))


def read_outcomes(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The vectors of an ``outcomes.npz`` (read by :func:`mergelab.io.npz.read_npz`: data
    only, every header checked; a damaged file is one error line); an absent file gives an
    empty mapping."""
    from mergelab.io.npz import read_npz

    path = Path(path)
    if not path.exists():
        return {}
    return read_npz(path)
