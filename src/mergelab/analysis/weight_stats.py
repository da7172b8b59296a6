"""Why averaging shrinks weights ("Rethinking Weight-Averaged Model-merging", perspective 3).

For each floating tensor: max |w| and the variance of every model, and of their average.
Two facts always hold: max |mean| <= the largest max |w_i| (triangle inequality), and
Var(mean) <= the largest Var(w_i) (the std of a sum is at most the sum of stds). If the
models' deviations were independent, Var(mean of N) = sum s_i^2 / N^2, which is
(s1^2 + s2^2) / 4 for two; models from one start are correlated and sit above that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["layer_stats", "stats_frame"]

# Relative slack for the bounds: an average stored in float32 can exceed them by rounding.
_RTOL = 1e-6


def _np(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().to("cpu")
        if value.is_floating_point():
            value = value.double()
        value = value.numpy()
    return np.asarray(value)


def _is_float(a: np.ndarray) -> bool:
    return bool(np.issubdtype(a.dtype, np.floating))


def layer_stats(
    sds: Sequence[Mapping[str, Any]], average_sd: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One row per floating tensor (in the first model's order).

    Columns: ``layer``, ``numel``, ``n_models``, ``max_abs`` and ``var`` (tuples, one per
    model), ``avg_max_abs``, ``avg_var`` (of ``average_sd``, or of the element-wise mean in
    float64 when None), ``max_abs_largest``, ``var_largest``, ``var_independent`` (sum s_i^2 /
    N^2), ``var_ratio`` (avg_var / var_independent: 1 independent, N identical models),
    ``max_abs_bound_holds``, ``variance_bound_holds``. Variances are population variances
    over the tensor's elements.
    """
    if not sds:
        raise ValueError("give at least one state dict")
    n = len(sds)
    rows: list[dict[str, Any]] = []
    for name, first in sds[0].items():
        ref = _np(first)
        if not _is_float(ref):
            continue
        arrays = []
        for i, sd in enumerate(sds):
            if name not in sd:
                raise ValueError(f"model {i}: tensor {name!r} is missing")
            a = _np(sd[name]).astype(np.float64)
            if a.shape != ref.shape:
                raise ValueError(f"model {i}: {name} has shape {a.shape}, model 0 {ref.shape}")
            arrays.append(a.ravel())
        if average_sd is not None:
            if name not in average_sd:
                raise ValueError(f"average: tensor {name!r} is missing")
            avg = _np(average_sd[name]).astype(np.float64).ravel()
            if avg.size != ref.size:
                raise ValueError(f"average: {name} has {avg.size} elements, models {ref.size}")
        else:
            avg = np.mean(arrays, axis=0)
        max_abs = tuple(float(np.abs(a).max()) if a.size else 0.0 for a in arrays)
        var = tuple(float(a.var()) if a.size else 0.0 for a in arrays)
        avg_max = float(np.abs(avg).max()) if avg.size else 0.0
        avg_var = float(avg.var()) if avg.size else 0.0
        largest_max, largest_var = max(max_abs), max(var)
        independent = sum(var) / n**2
        rows.append(
            {
                "layer": name,
                "numel": int(ref.size),
                "n_models": n,
                "max_abs": max_abs,
                "var": var,
                "avg_max_abs": avg_max,
                "avg_var": avg_var,
                "max_abs_largest": largest_max,
                "var_largest": largest_var,
                "var_independent": independent,
                "var_ratio": avg_var / independent if independent > 0 else float("nan"),
                "max_abs_bound_holds": avg_max <= largest_max * (1 + _RTOL) + 1e-300,
                "variance_bound_holds": avg_var <= largest_var * (1 + _RTOL) + 1e-300,
            }
        )
    return rows


def stats_frame(rows: Sequence[Mapping[str, Any]]) -> Any:
    """``layer_stats`` rows as a pandas DataFrame with one column per model
    (``max_abs_0``, ``var_0``, ...) instead of the tuples."""
    import pandas as pd

    flat = []
    for row in rows:
        out = {k: v for k, v in row.items() if k not in ("max_abs", "var")}
        for i, (m, v) in enumerate(zip(row["max_abs"], row["var"], strict=True)):
            out[f"max_abs_{i}"] = m
            out[f"var_{i}"] = v
        flat.append(out)
    return pd.DataFrame(flat)
