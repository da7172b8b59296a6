"""Predicting post-merge accuracy from pairwise metrics, as "Demystifying Mergeability".

One row per task pair (its metrics, the features) and one target per pair (the merge's
normalized accuracy). The paper fits a sparse linear model by minimising
``-r(X w, y) + lambda * ||w||_1`` (r: Pearson), features min-max scaled to [-1, 1] on the
training rows, and cross-validates leave-one-task-out: a fold holds out one task, trains
on the pairs without it and tests on the pairs with it (7 tasks: 15 train, 6 test pairs).

**The loss, made well posed.** r is blind to the scale of ``w``, so "-r + lambda ||w||_1"
has no minimum away from w = 0: the authors' Adam loop stops wherever its iteration
budget ends. Here the scale is fixed instead: maximise ``r(X w, y) - lambda ||w||_1``
subject to ``||w||_2 = 1``. On the sphere the L1 norm (1 for one metric, sqrt(d) for d
alike) measures how many metrics ``w`` spreads over. Solver: proximal gradient ascent
with backtracking: a gradient step on r, soft thresholding (the L1 proximal step, which
makes exact zeros), back onto the sphere; a step is taken only if the objective does not
fall. Its fixed points are the problem's KKT points: a metric left at zero has
``|d r / d w_j| <= lambda``. It starts from the unit vector of the metrics' univariate
correlations with the target, runs at most ``max_iter`` steps and stops when no
coefficient moves more than ``tol``; it draws no random number, so a fit is a function
of its data.

**Predictions.** r ignores offset and scale, so each fold maps ``X w`` to the target's
units by least squares on its training rows (``offset + scale * X w``). A fold's r is
unchanged by this (for a positive scale); the pooled r, which concatenates the folds'
predictions, would otherwise compare folds on arbitrary offsets.

**Baseline.** scikit-learn's :class:`~sklearn.linear_model.Lasso` (squared error + L1,
same scaling, with an intercept). Its alpha is ``ratio * alpha_max`` (alpha_max: the
smallest alpha that zeroes every coefficient on that fit's rows), the ratio chosen from
:data:`LASSO_RATIOS` by an inner leave-one-task-out on the fold's training tasks only:
no choice sees the held-out task, and the grid does not depend on the target's units.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mergelab.errors import ConfigError

__all__ = [
    "LAMBDA",
    "LASSO_RATIOS",
    "TOP_K",
    "Agreement",
    "Fold",
    "LotoFit",
    "PredictorResult",
    "SignCount",
    "fit_sparse_pearson",
    "leave_one_task_out",
    "minmax_apply",
    "minmax_scaler",
    "pearson",
    "sign_agreement",
    "sign_counts",
    "top_k",
    "top_k_overlap",
]

LAMBDA = 0.05
"""Default L1 weight. At a zero coefficient the fit's stationarity condition reads
``|d r / d w_j| <= lambda`` and ``d r / d w_j = (std x_j / std X w) * (corr(x_j, y) - r *
corr(x_j, X w))``; with unit-norm ``w`` over [-1, 1] features the ratio of spreads is
about 1, so lambda is the least correlation with the target, beyond what the current
prediction already carries, that buys a metric a nonzero weight. 0.05 keeps every
metric that adds a visible 0.05 to that correlation and zeroes the rest."""
LASSO_RATIOS = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
"""The Lasso baseline's grid, as fractions of alpha_max (largest first)."""
TOP_K = 5
"""The paper's top-k for the overlap of methods' metrics."""

_SPARSE = "sparse_pearson"
_LASSO = "lasso"


def _num(value: float) -> float | None:
    """A float for JSON: None where it is not finite."""
    return float(value) if math.isfinite(value) else None


def _nums(values: np.ndarray) -> list[float | None]:
    return [_num(float(v)) for v in values]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two vectors; NaN when either is constant (up to rounding) or shorter
    than 2."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2:
        return math.nan
    da, db = a - a.mean(), b - b.mean()
    na, nb = float(np.sqrt(da @ da)), float(np.sqrt(db @ db))
    for v, n in ((a, na), (b, nb)):
        if n <= float(np.abs(v).max()) * 1e-12 * math.sqrt(len(v)) or n == 0.0:
            return math.nan
    return float(np.clip((da @ db) / (na * nb), -1.0, 1.0))


def minmax_scaler(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column minimum and maximum of the training rows ``x``."""
    x = np.asarray(x, dtype=np.float64)
    return x.min(axis=0), x.max(axis=0)


def minmax_apply(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``x`` mapped by the training range [lo, hi] -> [-1, 1] (other rows may fall
    outside). A column constant on the training rows maps to 0 on every row: no fit can
    weight it (it does not vary where it is learned), and 0 keeps test rows finite."""
    x = np.asarray(x, dtype=np.float64)
    span = hi - lo
    flat = span <= 0
    out = 2.0 * (x - lo) / np.where(flat, 1.0, span) - 1.0
    out[:, flat] = 0.0
    return out


def _soft(w: np.ndarray, t: float) -> np.ndarray:
    return np.sign(w) * np.maximum(np.abs(w) - t, 0.0)


def _clean(w: np.ndarray) -> np.ndarray:
    """Unit norm, and signed zeros made plain zeros (bytes equal run to run)."""
    w = w / max(float(np.linalg.norm(w)), 1e-300)
    w[w == 0] = 0.0
    return w


def fit_sparse_pearson(
    x: np.ndarray,
    y: np.ndarray,
    lam: float = LAMBDA,
    *,
    max_iter: int = 5000,
    tol: float = 1e-9,
) -> np.ndarray:
    """Unit-norm ``w`` maximising ``r(x w, y) - lam * ||w||_1`` (the module docstring
    says how); exact zeros where the L1 step zeroes a metric; all zeros when no column
    varies, the target is constant or no metric correlates with it."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ConfigError(f"predictor: {x.shape} features and {y.shape} targets do not agree")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ConfigError("predictor: features and targets must be finite (no NaN or inf)")
    if not (math.isfinite(lam) and lam >= 0):
        raise ConfigError(f"predictor: lambda {lam} must be a finite number >= 0")
    if max_iter < 1 or not tol > 0:
        raise ConfigError(f"predictor: max_iter {max_iter} must be >= 1 and tol {tol} > 0")
    d = x.shape[1]
    xc = x - x.mean(axis=0)
    yc = y - y.mean()
    ny = float(np.sqrt(yc @ yc))
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
            if step < 1e-12:  # no step ascends: w is stationary to rounding
                return _clean(w)
        moved = float(np.abs(cand - w).max())
        w, value, grad = cand, cand_value, cand_grad
        step = min(step * 2.0, 1e3)
        if moved < tol:
            break
    return _clean(w)


@dataclass(frozen=True)
class Fold:
    """One leave-one-task-out fold: the task held out, its train and test pair counts, r
    on each, the scaler (``lo``, ``hi``: the training rows' range; NaN for a dropped
    feature), the coefficients (0 for a dropped feature) and the map to the target's
    units: prediction = ``offset + scale * minmax_apply(x, lo, hi) @ coef``. ``alpha``: the
    Lasso's chosen alpha (None for the sparse model)."""

    held_out: str
    n_train: int
    n_test: int
    train_r: float
    test_r: float
    coef: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    offset: float
    scale: float
    alpha: float | None = None

    @property
    def sign(self) -> np.ndarray:
        """-1, 0 or +1 per feature."""
        return np.sign(self.coef)

    def to_dict(self) -> dict[str, Any]:
        return {
            "held_out": self.held_out,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "train_r": _num(self.train_r),
            "test_r": _num(self.test_r),
            "coef": _nums(self.coef),
            "lo": _nums(self.lo),
            "hi": _nums(self.hi),
            "offset": _num(self.offset),
            "scale": _num(self.scale),
            "alpha": None if self.alpha is None else _num(self.alpha),
        }


@dataclass(frozen=True)
class PredictorResult:
    """One model's cross-validation: its folds, the mean of their held-out r (NaN folds
    left out of the mean and named in ``notes``), the pooled r (every fold's held-out
    predictions against their targets), the coefficients averaged over folds and the
    share of folds where each feature is nonzero."""

    model: str
    features: tuple[str, ...]
    folds: tuple[Fold, ...]
    mean_fold_r: float
    pooled_r: float
    mean_coef: np.ndarray
    nonzero_frequency: np.ndarray
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "mean_fold_r": _num(self.mean_fold_r),
            "pooled_r": _num(self.pooled_r),
            "mean_coef": dict(zip(self.features, _nums(self.mean_coef), strict=True)),
            "nonzero_frequency": dict(
                zip(self.features, _nums(self.nonzero_frequency), strict=True)
            ),
            "folds": [f.to_dict() for f in self.folds],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class LotoFit:
    """The sparse -Pearson + L1 model and the Lasso baseline (None when not asked for),
    and the features left out of every fit because some pair lacks them (NaN or inf)."""

    features: tuple[str, ...]
    sparse: PredictorResult
    lasso: PredictorResult | None
    dropped: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "dropped": list(self.dropped),
            "sparse": self.sparse.to_dict(),
            "lasso": None if self.lasso is None else self.lasso.to_dict(),
        }


def _tasks_of(pairs: Sequence[tuple[str, str]]) -> list[str]:
    return list(dict.fromkeys(t for p in pairs for t in p))


def _split(pairs: Sequence[tuple[str, str]], task: str) -> tuple[np.ndarray, np.ndarray]:
    test = np.array([task in p for p in pairs])
    return np.flatnonzero(~test), np.flatnonzero(test)


def _calibrate(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``offset, scale`` of ``y ~ offset + scale * p``; scale 0 when ``p``
    does not vary."""
    dp = p - p.mean()
    var = float(dp @ dp)
    scale = float(dp @ (y - y.mean())) / var if var > 0 else 0.0
    return float(y.mean() - scale * p.mean()), scale


def _lasso(x: np.ndarray, y: np.ndarray, ratio: float) -> tuple[np.ndarray, float, float]:
    """Lasso coefficients, intercept and alpha (= ratio * alpha_max of these rows)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso

    alpha_max = float(np.abs((x - x.mean(axis=0)).T @ (y - y.mean())).max()) / len(y)
    if alpha_max <= 0:
        return np.zeros(x.shape[1]), float(y.mean()), 0.0
    alpha = ratio * alpha_max
    model = Lasso(alpha=alpha, max_iter=100_000, tol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    coef = np.asarray(model.coef_, dtype=np.float64)
    coef[coef == 0] = 0.0
    return coef, float(model.intercept_), alpha


def _lasso_ratio(x: np.ndarray, y: np.ndarray, pairs: Sequence[tuple[str, str]]) -> float:
    """The ratio of :data:`LASSO_RATIOS` with the best pooled r of an inner
    leave-one-task-out over these (training) pairs; the largest (sparsest) on a tie, the
    smallest when none predicts anything."""
    best, best_r = LASSO_RATIOS[-1], -math.inf
    for ratio in LASSO_RATIOS:
        preds, targets = [], []
        for task in _tasks_of(pairs):
            tr, te = _split(pairs, task)
            if len(tr) < 2 or len(te) == 0:
                continue
            lo, hi = minmax_scaler(x[tr])
            coef, icpt, _ = _lasso(minmax_apply(x[tr], lo, hi), y[tr], ratio)
            preds.append(minmax_apply(x[te], lo, hi) @ coef + icpt)
            targets.append(y[te])
        r = pearson(np.concatenate(preds), np.concatenate(targets)) if preds else math.nan
        if math.isfinite(r) and r > best_r + 1e-12:
            best, best_r = ratio, r
    return best


def _result(
    model: str,
    features: tuple[str, ...],
    folds: list[Fold],
    preds: list[np.ndarray],
    targets: list[np.ndarray],
) -> PredictorResult:
    finite = [f.test_r for f in folds if math.isfinite(f.test_r)]
    notes = tuple(
        f"{model} fold {f.held_out}: held-out r undefined (constant predictions or targets)"
        for f in folds
        if not math.isfinite(f.test_r)
    )
    coefs = np.stack([f.coef for f in folds])
    return PredictorResult(
        model=model,
        features=features,
        folds=tuple(folds),
        mean_fold_r=float(np.mean(finite)) if finite else math.nan,
        pooled_r=pearson(np.concatenate(preds), np.concatenate(targets)),
        mean_coef=coefs.mean(axis=0),
        nonzero_frequency=(coefs != 0).mean(axis=0),
        notes=notes,
    )


def _check_table(
    x: np.ndarray, y: np.ndarray, pairs: Sequence[tuple[str, str]], features: Sequence[str]
) -> list[str]:
    """The pair table's refusals, one line each; returns the tasks in order of appearance."""
    if x.ndim != 2 or x.shape != (len(pairs), len(features)) or y.shape != (len(pairs),):
        raise ConfigError(
            f"predictor: {x.shape} metrics table, {y.shape} targets, {len(pairs)} pairs and "
            f"{len(features)} features do not agree"
        )
    if len(set(features)) != len(features):
        twice = sorted({f for f in features if list(features).count(f) > 1})
        raise ConfigError(f"predictor: feature names appear twice: {', '.join(twice)}")
    seen: set[frozenset[str]] = set()
    for a, b in pairs:
        if a == b:
            raise ConfigError(f"predictor: pair ({a}, {b}) pairs a task with itself")
        if frozenset((a, b)) in seen:
            raise ConfigError(f"predictor: pair ({a}, {b}) appears twice")
        seen.add(frozenset((a, b)))
    bad = int(np.sum(~np.isfinite(y)))
    if bad:
        raise ConfigError(f"predictor: {bad} targets are NaN or inf; every pair needs one")
    tasks = _tasks_of(pairs)
    if len(tasks) < 4:
        raise ConfigError(
            f"predictor: {len(tasks)} tasks; leave-one-task-out needs at least 4 (with 3, "
            "a fold trains on one pair, where r is undefined)"
        )
    return tasks


def leave_one_task_out(
    x: np.ndarray,
    y: np.ndarray,
    pairs: Sequence[tuple[str, str]],
    features: Sequence[str],
    *,
    lam: float = LAMBDA,
    lasso: bool = True,
    max_iter: int = 5000,
    tol: float = 1e-9,
) -> LotoFit:
    """Leave-one-task-out cross-validation of the sparse model (and the Lasso baseline)
    on the pair table ``x`` (pairs x features, in the order of ``pairs``) and targets
    ``y``. A fold's scaler, fit, calibration and Lasso alpha see its training pairs only.
    Folds come in the order tasks first appear in ``pairs``. A feature that is NaN or
    inf for any pair is left out of every fit and listed in ``dropped``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    features = tuple(features)
    pairs = [(str(a), str(b)) for a, b in pairs]
    tasks = _check_table(x, y, pairs, features)
    if not (math.isfinite(lam) and lam >= 0):
        raise ConfigError(f"predictor: lambda {lam} must be a finite number >= 0")
    usable = np.all(np.isfinite(x), axis=0)
    dropped = tuple(f for f, ok in zip(features, usable, strict=True) if not ok)
    if not usable.any():
        raise ConfigError("predictor: every feature is NaN or inf for some pair; none to fit")
    xu = x[:, usable]

    def full(values: np.ndarray, fill: float) -> np.ndarray:
        out = np.full(len(features), fill)
        out[usable] = values
        out[out == 0] = 0.0  # no signed zeros
        return out

    models = [_SPARSE, _LASSO] if lasso else [_SPARSE]
    parts: dict[str, tuple[list[Fold], list[np.ndarray], list[np.ndarray]]] = {
        m: ([], [], []) for m in models
    }
    for task in tasks:
        tr, te = _split(pairs, task)
        lo, hi = minmax_scaler(xu[tr])
        x_tr, x_te = minmax_apply(xu[tr], lo, hi), minmax_apply(xu[te], lo, hi)
        for model in models:
            if model == _SPARSE:
                coef = fit_sparse_pearson(x_tr, y[tr], lam, max_iter=max_iter, tol=tol)
                offset, scale = _calibrate(x_tr @ coef, y[tr])
                alpha = None
            else:
                ratio = _lasso_ratio(xu[tr], y[tr], [pairs[i] for i in tr])
                coef, offset, alpha = _lasso(x_tr, y[tr], ratio)
                scale = 1.0
            pred = offset + scale * (x_te @ coef)
            fold = Fold(
                held_out=task,
                n_train=len(tr),
                n_test=len(te),
                train_r=pearson(x_tr @ coef, y[tr]),
                test_r=pearson(pred, y[te]),
                coef=full(coef, 0.0),
                lo=full(lo, math.nan),
                hi=full(hi, math.nan),
                offset=offset,
                scale=scale,
                alpha=alpha,
            )
            folds, preds, targets = parts[model]
            folds.append(fold)
            preds.append(pred)
            targets.append(y[te])
    results = {m: _result(m, features, *p) for m, p in parts.items()}
    return LotoFit(features, results[_SPARSE], results.get(_LASSO), dropped)


# -- comparing the methods' coefficients ------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    """A statistic over unordered method pairs: ``value`` (their mean; NaN when no pair
    has one) and ``per_pair`` ((method a, method b) in the order given -> value; NaN where
    a pair has none)."""

    value: float
    per_pair: dict[tuple[str, str], float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": _num(self.value),
            "per_pair": [[a, b, _num(v)] for (a, b), v in self.per_pair.items()],
        }


def _table(coefs: Mapping[str, np.ndarray], features: Sequence[str]) -> dict[str, np.ndarray]:
    out = {}
    for method, c in coefs.items():
        c = np.asarray(c, dtype=np.float64)
        if c.shape != (len(features),) or not np.all(np.isfinite(c)):
            raise ConfigError(
                f"predictor: coefficients of {method} have shape {c.shape} (or are not "
                f"finite); expected {len(features)} finite values, one per feature"
            )
        out[str(method)] = c
    if len(out) < 2:
        raise ConfigError(f"predictor: {len(out)} methods; comparing them needs at least 2")
    return out


def top_k(coef: np.ndarray, features: Sequence[str], k: int = TOP_K) -> list[str]:
    """The (at most) ``k`` features of largest |coefficient|, nonzero ones only (a metric
    a method gave no weight is not among its predictors); ties go to the feature listed
    first."""
    order = sorted(range(len(features)), key=lambda i: (-abs(float(coef[i])), i))
    return [features[i] for i in order[:k] if coef[i] != 0]


def top_k_overlap(
    coefs: Mapping[str, np.ndarray], features: Sequence[str], k: int = TOP_K
) -> Agreement:
    """Per unordered method pair, ``|top_k(a) & top_k(b)| / k`` (:func:`top_k`; the
    denominator is ``k`` even when a method has fewer nonzero features, so sparse methods
    are not rewarded for selecting little); ``value`` is the mean over pairs. The paper's
    64.0 % (ViT-B/16) is this on the methods' mean coefficients over folds."""
    if k < 1:
        raise ConfigError(f"predictor: top-k needs k >= 1, got {k}")
    table = _table(coefs, features)
    tops = {m: set(top_k(c, features, k)) for m, c in table.items()}
    per_pair = {(a, b): len(tops[a] & tops[b]) / k for a, b in itertools.combinations(table, 2)}
    return Agreement(float(np.mean(list(per_pair.values()))), per_pair)


def sign_agreement(coefs: Mapping[str, np.ndarray], features: Sequence[str]) -> Agreement:
    """Per unordered method pair, among the features nonzero in both, the share with the
    same sign (NaN when they share no nonzero feature); ``value`` is the mean over the
    pairs that share one (each pair weighs the same, however many features it shares),
    NaN when none does. The paper reports 79.3 % (ViT-B/16)."""
    table = _table(coefs, features)
    per_pair = {}
    for a, b in itertools.combinations(table, 2):
        both = (table[a] != 0) & (table[b] != 0)
        same = np.sign(table[a][both]) == np.sign(table[b][both])
        per_pair[(a, b)] = float(same.mean()) if both.any() else math.nan
    finite = [v for v in per_pair.values() if math.isfinite(v)]
    return Agreement(float(np.mean(finite)) if finite else math.nan, per_pair)


@dataclass(frozen=True)
class SignCount:
    """How many fits gave a feature a negative, positive or zero coefficient."""

    negative: int
    positive: int
    zero: int

    @property
    def total(self) -> int:
        return self.negative + self.positive + self.zero

    @property
    def net(self) -> float:
        """(positive - negative) / total: -1 when every fit weights it negatively, 0 when
        none selects it (or the signs cancel)."""
        return (self.positive - self.negative) / self.total if self.total else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "negative": self.negative,
            "positive": self.positive,
            "zero": self.zero,
            "net": _num(self.net),
        }


def sign_counts(coefs: Iterable[np.ndarray], features: Sequence[str]) -> dict[str, SignCount]:
    """Per feature, over the fits ``coefs`` (e.g. every fold of every method: ``[f.coef
    for r in results for f in r.folds]``), how many weight it negatively, positively or
    not at all: the evidence for "metric X is the most consistent predictor, negative"."""
    rows = [np.asarray(c, dtype=np.float64) for c in coefs]
    if not rows:
        raise ConfigError("predictor: no fits to count signs over")
    for c in rows:
        if c.shape != (len(features),) or not np.all(np.isfinite(c)):
            raise ConfigError(
                f"predictor: a fit has {c.shape} coefficients (or non-finite ones); "
                f"expected {len(features)} finite values"
            )
    signs = np.sign(np.stack(rows))
    neg, pos, zero = ((signs < 0).sum(0), (signs > 0).sum(0), (signs == 0).sum(0))
    return {f: SignCount(int(neg[j]), int(pos[j]), int(zero[j])) for j, f in enumerate(features)}
