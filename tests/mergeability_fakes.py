"""Test helpers: the rows of a mergeability study over seven tasks, with targets made
from the metrics by a known rule, and the predictors' rows fitted on them."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pandas as pd

from mergelab.diagnose import PAPER_METRICS
from mergelab.studies.config import StudyConfig
from mergelab.studies.mergeability import PAIR, fit_rows

__all__ = ["GRADIENT_L2", "METHODS", "TASKS", "pair_rows", "reproducing", "with_fits"]

TASKS = [f"task{i}" for i in range(7)]
METHODS = ("Weight Averaging", "Task Arithmetic", "TSV-M", "TIES", "DARE")
GRADIENT_L2 = "encoder_gradient_l2"

Target = Callable[[dict[str, float], str, np.random.Generator], float]


def pair_rows(target: Target, seed: int = 0) -> pd.DataFrame:
    """Every pair's metrics (a small task effect plus pair noise) and each method's
    normalized accuracy = ``target(metrics, method, rng)``."""
    rng = np.random.default_rng(seed)
    effect = {t: rng.normal(size=len(PAPER_METRICS)) for t in TASKS}
    rows = []
    for a, b in itertools.combinations(TASKS, 2):
        values = 0.3 * (effect[a] + effect[b]) + rng.normal(size=len(PAPER_METRICS))
        m = dict(zip(PAPER_METRICS, values.tolist(), strict=True))
        base = {"study": "mergeability", "dataset": a, "other_dataset": b, "arch": "cnn"}
        base.update(seed=0, n_models=2, magnitude=1.0, split="test")
        for name, v in m.items():
            rows.append({**base, "method": PAIR, "metric": name, "value": v})
        for method in METHODS:
            value = float(target(m, method, rng))
            rows.append({**base, "method": method, "metric": "normalized_accuracy", "value": value})
    return pd.DataFrame(rows)


def with_fits(pairs: pd.DataFrame) -> pd.DataFrame:
    """``pairs`` and the predictors' rows the study would add (default settings)."""
    spec = StudyConfig(name="x", mergeability={"enabled": True}).mergeability
    return pd.concat([pairs, fit_rows(pairs, spec)], ignore_index=True)


def reproducing(m: dict[str, float], method: str, rng: np.random.Generator) -> float:
    """Every method driven by gradient L2 (negative); TIES by other metrics besides."""
    if method == "TIES":
        rest = m["activation_l2"] + m["stable_rank"] + m["dot"] + m["angle_deg"]
    else:
        rest = -m["cosine"] - m["spectral_gap"]
    return 0.8 - 0.05 * (1.5 * m[GRADIENT_L2] + 0.5 * rest) + 0.001 * rng.normal()
