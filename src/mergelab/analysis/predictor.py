"""Predicting post-merge accuracy from pairwise metrics, as "Demystifying Mergeability".

One row per task pair (its metrics, the features) and one target per pair (the merge's
normalized accuracy). The paper fits a sparse linear model by maximising the Pearson
correlation of ``X w`` with the target minus ``lambda * ||w||_1``, features min-max scaled
to [-1, 1] on the training rows, and cross-validates leave-one-task-out: a fold holds out
one task, trains on the pairs without it and tests on the pairs with it.

Pearson r is blind to the scale of ``w``, so "-r + lambda ||w||_1" has no minimum away
from w = 0: the authors' Adam loop stops wherever its iteration budget ends. Here the
scale is fixed instead: ``w`` lies on the unit sphere (||w||_2 = 1), where the L1 norm
(between 1 and sqrt(features)) measures how many metrics ``w`` spreads over. The
problem is solved by proximal gradient ascent with a backtracking step: a gradient step
on r, soft thresholding (the L1 proximal step; it makes exact zeros), back onto the
sphere; it starts from the metrics' correlations with the target and draws no random
number, so a fit is a function of its data.

scikit-learn's :class:`~sklearn.linear_model.Lasso` (squared error + L1, same scaling) is
the baseline; its alpha is chosen by an inner leave-one-task-out on the training tasks
only, so no fold's choice sees its held-out task.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mergelab.errors import ConfigError

__all__ = [
    "LAMBDA",
    "LASSO_ALPHAS",
    "Fold",
    "LotoFit",
    "PredictorResult",
    "fit_sparse_pearson",
    "leave_one_task_out",
    "minmax_apply",
    "minmax_scaler",
    "pearson",
]

LAMBDA = 0.05
"""Default L1 weight. On unit-norm coefficients ||w||_1 runs from 1 (one metric) to
sqrt(28) = 5.3 (all alike): 0.05 makes a metric pay its way when it adds about 0.05 * its
weight to r, so a handful of the 28 metrics survive on the paper's scale of r."""
LASSO_ALPHAS = (0.001, 0.003, 0.01, 0.03, 0.1)
"""The Lasso baseline's alpha grid (targets are fractions: normalized accuracy)."""


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two vectors; NaN when either is constant (or shorter than 2)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2:
        return math.nan
    da, db = a - a.mean(), b - b.mean()
    na, nb = float(np.sqrt(da @ da)), float(np.sqrt(db @ db))
    scale = max(float(np.abs(a).max()), 1e-300) * 1e-12 * math.sqrt(len(a))
    if na <= scale or nb == 0.0:
        return math.nan
    return float(np.clip((da @ db) / (na * nb), -1.0, 1.0))


def minmax_scaler(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column minimum and maximum of the training rows ``x``."""
    x = np.asarray(x, dtype=np.float64)
    return x.min(axis=0), x.max(axis=0)


def minmax_apply(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``x`` mapped by the training range [lo, hi] -> [-1, 1] (other rows may fall
    outside); a column constant on the training rows maps to 0."""
    x = np.asarray(x, dtype=np.float64)
    span = hi - lo
    flat = span <= 0
    out = 2.0 * (x - lo) / np.where(flat, 1.0, span) - 1.0
    out[:, flat] = 0.0
    return out


def _soft(w: np.ndarray, t: float) -> np.ndarray:
    return np.sign(w) * np.maximum(np.abs(w) - t, 0.0)


def fit_sparse_pearson(
    x: np.ndarray, y: np.ndarray, lam: float = LAMBDA, *, max_iter: int = 5000, tol: float = 1e-7
) -> np.ndarray:
    """Unit-norm ``w`` maximising r(x w, y) - lam * ||w||_1 (see the module docstring);
    all zeros when no column varies or the target is constant."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc = x - x.mean(axis=0)
    yc = y - y.mean()
    ny = float(np.sqrt(yc @ yc))
    d = x.shape[1]
    if ny == 0.0 or not np.any(xc):
        return np.zeros(d)
    c = xc.T @ yc / ny  # covariance with the unit target
    s = xc.T @ xc
    col = np.sqrt(np.diag(s))
    start = np.where(col > 0, c / np.where(col > 0, col, 1.0), 0.0)  # the correlations
    if not np.any(start):
        return np.zeros(d)
    w = start / np.linalg.norm(start)

    def objective(v: np.ndarray) -> tuple[float, np.ndarray]:
        q = float(v @ s @ v)
        if q <= 1e-300:
            return -math.inf, np.zeros(d)
        root = math.sqrt(q)
        r = float(c @ v) / root
        grad = c / root - (r / q) * (s @ v)  # d r / d v
        return r - lam * float(np.abs(v).sum()), grad

    value, grad = objective(w)
    step = 1.0
    for _ in range(max_iter):
        while True:
            cand = _soft(w + step * grad, step * lam)
            norm = float(np.linalg.norm(cand))
            if norm > 0:
                cand /= norm
                cand_value, cand_grad = objective(cand)
                if cand_value >= value - 1e-15:
                    break
            step *= 0.5
            if step < 1e-12:
                return _clean(w)
        moved = float(np.abs(cand - w).max())
        w, value, grad = cand, cand_value, cand_grad
        step = min(step * 2.0, 1e3)
        if moved < tol:
            break
    return _clean(w)


def _clean(w: np.ndarray) -> np.ndarray:
    """Unit norm, and signed zeros made plain zeros (bytes equal run to run)."""
    w = w / max(float(np.linalg.norm(w)), 1e-300)
    w[w == 0] = 0.0
    return w


@dataclass(frozen=True)
class Fold:
    """One leave-one-task-out fold: the task held out, its train and test pair counts, r
    on each, and the coefficients (over every feature; 0 for a dropped one)."""

    held_out: str
    n_train: int
    n_test: int
    train_r: float
    test_r: float
    coef: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class PredictorResult:
    """One model's cross-validation: its folds, the mean of their held-out r (NaN folds
    left out of the mean, and named in ``notes``), the pooled r (every fold's held-out
    predictions against their targets), the coefficients averaged over folds and how often
    each feature is nonzero."""

    model: str
    folds: list[Fold]
    mean_fold_r: float
    pooled_r: float
    mean_coef: np.ndarray
    nonzero_frequency: np.ndarray
    notes: list[str]

    def to_dict(self, features: Sequence[str]) -> dict[str, Any]:
        return {
            "model": self.model,
            "mean_fold_r": self.mean_fold_r,
            "pooled_r": self.pooled_r,
            "mean_coef": dict(zip(features, self.mean_coef.tolist(), strict=True)),
            "nonzero_frequency": dict(zip(features, self.nonzero_frequency.tolist(), strict=True)),
            "folds": [
                {**{k: v for k, v in asdict(f).items() if k != "coef"}, "coef": f.coef.tolist()}
                for f in self.folds
            ],
            "notes": self.notes,
        }


@dataclass(frozen=True)
class LotoFit:
    """The sparse -Pearson + L1 model and the Lasso baseline (None when not asked for),
    and the features left out because a pair lacks them (NaN)."""

    features: list[str]
    sparse: PredictorResult
    lasso: PredictorResult | None
    dropped: list[str]


def _tasks_of(pairs: Sequence[tuple[str, str]]) -> list[str]:
    return list(dict.fromkeys(t for p in pairs for t in p))


def _split(pairs: Sequence[tuple[str, str]], task: str) -> tuple[np.ndarray, np.ndarray]:
    test = np.array([task in p for p in pairs])
    return np.flatnonzero(~test), np.flatnonzero(test)


def _lasso(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso

    model = Lasso(alpha=alpha, max_iter=100_000, tol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return np.asarray(model.coef_, dtype=np.float64), float(model.intercept_)


def _lasso_alpha(x: np.ndarray, y: np.ndarray, pairs: Sequence[tuple[str, str]]) -> float:
    """The alpha of :data:`LASSO_ALPHAS` with the best pooled r of an inner
    leave-one-task-out over these (training) pairs; the smallest on a tie or when none
    predicts anything."""
    best, best_r = LASSO_ALPHAS[0], -math.inf
    for alpha in LASSO_ALPHAS:
        preds, targets = [], []
        for task in _tasks_of(pairs):
            tr, te = _split(pairs, task)
            if len(tr) < 2 or len(te) == 0:
                continue
            lo, hi = minmax_scaler(x[tr])
            coef, icpt = _lasso(minmax_apply(x[tr], lo, hi), y[tr], alpha)
            preds.append(minmax_apply(x[te], lo, hi) @ coef + icpt)
            targets.append(y[te])
        r = pearson(np.concatenate(preds), np.concatenate(targets)) if preds else math.nan
        if math.isfinite(r) and r > best_r + 1e-12:
            best, best_r = alpha, r
    return best


def _result(model: str, folds: list[Fold], preds: list[np.ndarray], targets: list[np.ndarray]):
    rs = [f.test_r for f in folds]
    finite = [r for r in rs if math.isfinite(r)]
    notes = [
        f"fold {f.held_out}: held-out r undefined (constant predictions or targets)"
        for f in folds
        if not math.isfinite(f.test_r)
    ]
    coefs = np.stack([f.coef for f in folds])
    return PredictorResult(
        model=model,
        folds=folds,
        mean_fold_r=float(np.mean(finite)) if finite else math.nan,
        pooled_r=pearson(np.concatenate(preds), np.concatenate(targets)),
        mean_coef=coefs.mean(axis=0),
        nonzero_frequency=(coefs != 0).mean(axis=0),
        notes=notes,
    )


def leave_one_task_out(
    x: np.ndarray,
    y: np.ndarray,
    pairs: Sequence[tuple[str, str]],
    features: Sequence[str],
    *,
    lam: float = LAMBDA,
    lasso: bool = True,
) -> LotoFit:
    """Leave-one-task-out cross-validation of the sparse model (and the Lasso baseline)
    on the pair table ``x`` (pairs x features) and targets ``y``. A fold's scaler, fit
    and (Lasso) alpha see its training pairs only."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    features = list(features)
    if x.ndim != 2 or x.shape != (len(pairs), len(features)) or y.shape != (len(pairs),):
        raise ConfigError(
            f"predictor: {x.shape} metrics table, {y.shape} targets, {len(pairs)} pairs and "
            f"{len(features)} features do not agree"
        )
    if not np.all(np.isfinite(y)):
        raise ConfigError(f"predictor: {int(np.sum(~np.isfinite(y)))} targets are NaN or inf")
    if not (math.isfinite(lam) and lam >= 0):
        raise ConfigError(f"predictor: lambda {lam} must be a finite number >= 0")
    tasks = _tasks_of(pairs)
    if len(tasks) < 4:
        raise ConfigError(
            f"predictor: {len(tasks)} tasks; leave-one-task-out needs at least 4 (a fold "
            "trains on the pairs of the others)"
        )
    usable = np.all(np.isfinite(x), axis=0)
    dropped = [f for f, ok in zip(features, usable, strict=True) if not ok]
    if usable.sum() < 1:
        raise ConfigError("predictor: every feature is NaN for some pair")
    xu = x[:, usable]

    def full(coef: np.ndarray) -> np.ndarray:
        out = np.zeros(len(features))
        out[usable] = coef
        return out

    fits: dict[str, tuple[list[Fold], list[np.ndarray], list[np.ndarray]]] = {
        "sparse_pearson": ([], [], []),
        **({"lasso": ([], [], [])} if lasso else {}),
    }
    for task in tasks:
        tr, te = _split(pairs, task)
        lo, hi = minmax_scaler(xu[tr])
        x_tr, x_te = minmax_apply(xu[tr], lo, hi), minmax_apply(xu[te], lo, hi)
        w = fit_sparse_pearson(x_tr, y[tr], lam)
        models = {"sparse_pearson": (w, 0.0)}
        if lasso:
            alpha = _lasso_alpha(xu[tr], y[tr], [pairs[i] for i in tr])
            models["lasso"] = _lasso(x_tr, y[tr], alpha)
        for name, (coef, icpt) in models.items():
            folds, preds, targets = fits[name]
            pred = x_te @ coef + icpt
            folds.append(
                Fold(
                    task,
                    len(tr),
                    len(te),
                    pearson(x_tr @ coef, y[tr]),
                    pearson(pred, y[te]),
                    full(coef),
                )
            )
            preds.append(pred)
            targets.append(y[te])
    results = {name: _result(name, *parts) for name, parts in fits.items()}
    return LotoFit(features, results["sparse_pearson"], results.get("lasso"), dropped)
