"""The mergeability predictor: a sparse -Pearson + L1 model on the unit sphere, and its
leave-one-task-out cross-validation, checked against known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mergelab.analysis.predictor import (
    fit_sparse_pearson,
    leave_one_task_out,
    minmax_apply,
    minmax_scaler,
    pearson,
)
from mergelab.errors import ConfigError
from mergelab.report.mergeability import overlap, sign_agreement, top_sets

TASKS = [f"t{i}" for i in range(7)]
PAIRS = list(itertools.combinations(TASKS, 2))
FEATURES = [f"m{i}" for i in range(10)]


def _table(w_true: np.ndarray, noise: float = 0.01, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(PAIRS), len(w_true)))
    return x, x @ w_true + noise * rng.normal(size=len(PAIRS))


def test_recovers_a_sparse_direction():
    w_true = np.zeros(10)
    w_true[[1, 4, 7]] = [0.8, -0.5, 0.3]
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(200, 10))
    y = x @ w_true + 0.01 * rng.normal(size=200)
    w = fit_sparse_pearson(x, y, lam=0.01)
    assert np.linalg.norm(w) == pytest.approx(1.0)
    assert w @ w_true / np.linalg.norm(w_true) > 0.99
    assert np.all(w[[0, 2, 3, 5, 6, 8, 9]] == 0.0)  # exact zeros where nothing is
    assert np.sign(w[[1, 4, 7]]).tolist() == [1.0, -1.0, 1.0]
    lighter, heavier = fit_sparse_pearson(x, y, lam=0.3), fit_sparse_pearson(x, y, lam=0.5)
    assert np.abs(lighter).sum() < np.abs(w).sum()  # more penalty, fewer metrics carry w
    assert np.abs(lighter[7]) < np.abs(w[7])
    assert heavier.tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]  # the strongest metric alone


def test_fit_is_deterministic_and_constant_target_gives_zeros():
    x, y = _table(np.arange(10) / 10.0)
    assert np.array_equal(fit_sparse_pearson(x, y), fit_sparse_pearson(x.copy(), y.copy()))
    assert not np.any(fit_sparse_pearson(x, np.ones(len(y))))


def test_scaler_uses_training_rows_only():
    train = np.array([[0.0, 5.0], [2.0, 5.0], [1.0, 5.0]])
    lo, hi = minmax_scaler(train)
    assert minmax_apply(train, lo, hi).tolist() == [[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]
    assert minmax_apply(np.array([[4.0, 9.0]]), lo, hi).tolist() == [[3.0, 0.0]]


def test_folds_hold_out_every_pair_of_one_task():
    w_true = np.zeros(10)
    w_true[2] = 1.0
    x, y = _table(w_true)
    fit = leave_one_task_out(x, y, PAIRS, FEATURES, lasso=False)
    assert [f.held_out for f in fit.sparse.folds] == TASKS
    assert all(f.n_train == 15 and f.n_test == 6 for f in fit.sparse.folds)
    assert fit.sparse.mean_fold_r > 0.95 and fit.lasso is None


def test_a_fold_never_sees_its_held_out_task():
    """Poisoning the held-out task's rows (features and targets) changes nothing the fold
    learned: its coefficients equal a fit on the training rows alone, done here."""
    w_true = np.zeros(10)
    w_true[[0, 3]] = [1.0, -1.0]
    x, y = _table(w_true, noise=0.1)
    held = "t3"
    poisoned_x, poisoned_y = x.copy(), y.copy()
    rows = [i for i, p in enumerate(PAIRS) if held in p]
    poisoned_x[rows] = 1e6 * np.arange(1, 11)
    poisoned_y[rows] = -50.0
    clean = leave_one_task_out(x, y, PAIRS, FEATURES)
    dirty = leave_one_task_out(poisoned_x, poisoned_y, PAIRS, FEATURES)
    k = TASKS.index(held)
    for a, b in ((clean.sparse, dirty.sparse), (clean.lasso, dirty.lasso)):
        assert np.array_equal(a.folds[k].coef, b.folds[k].coef)
    train = [i for i, p in enumerate(PAIRS) if held not in p]
    lo, hi = minmax_scaler(x[train])
    by_hand = fit_sparse_pearson(minmax_apply(x[train], lo, hi), y[train])
    assert np.array_equal(clean.sparse.folds[k].coef, by_hand)
    # Other folds train on the poisoned rows, so they do change.
    assert not np.array_equal(clean.sparse.folds[0].coef, dirty.sparse.folds[0].coef)


def test_pooled_r_and_mean_coefficients_by_hand():
    x, y = _table(np.linspace(-1, 1, 10), noise=0.5)
    fit = leave_one_task_out(x, y, PAIRS, FEATURES)
    preds, targets = [], []
    for f in fit.sparse.folds:
        train = [i for i, p in enumerate(PAIRS) if f.held_out not in p]
        test = [i for i, p in enumerate(PAIRS) if f.held_out in p]
        lo, hi = minmax_scaler(x[train])
        preds.append(minmax_apply(x[test], lo, hi) @ f.coef)
        targets.append(y[test])
        assert f.test_r == pytest.approx(np.corrcoef(preds[-1], targets[-1])[0, 1])
    pooled = np.corrcoef(np.concatenate(preds), np.concatenate(targets))[0, 1]
    assert fit.sparse.pooled_r == pytest.approx(pooled)
    coefs = np.stack([f.coef for f in fit.sparse.folds])
    assert np.array_equal(fit.sparse.mean_coef, coefs.mean(axis=0))
    assert np.array_equal(fit.sparse.nonzero_frequency, (coefs != 0).mean(axis=0))


def test_lasso_baseline_agrees_on_clean_linear_data():
    w_true = np.zeros(10)
    w_true[[1, 5]] = [0.7, 0.4]
    x, y = _table(w_true, noise=0.02)
    fit = leave_one_task_out(x, y, PAIRS, FEATURES)
    assert fit.lasso.mean_fold_r > 0.95
    assert abs(fit.lasso.mean_fold_r - fit.sparse.mean_fold_r) < 0.05


def test_a_nan_feature_is_dropped_and_named():
    x, y = _table(np.linspace(0, 1, 10))
    x[4, 6] = np.nan
    fit = leave_one_task_out(x, y, PAIRS, FEATURES, lasso=False)
    assert fit.dropped == ["m6"]
    assert all(f.coef[6] == 0.0 for f in fit.sparse.folds)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, y, p: (x, y[:-1], p), "do not agree"),
        (lambda x, y, p: (x, np.where(np.arange(len(y)) == 2, np.nan, y), p), "1 targets are NaN"),
        (
            lambda x, y, p: (x[:3], y[:3], [("a", "b"), ("a", "c"), ("b", "c")]),
            "3 tasks; leave-one-task-out needs at least 4",
        ),
    ],
)
def test_bad_tables_are_one_line_errors(change, message):
    x, y = _table(np.ones(10))
    x, y, pairs = change(x, y, PAIRS)
    with pytest.raises(ConfigError, match=message) as err:
        leave_one_task_out(x, y, pairs, FEATURES)
    assert "\n" not in str(err.value)


def test_pearson_of_a_constant_is_nan():
    assert np.isnan(pearson(np.ones(5), np.arange(5)))
    assert pearson(np.arange(5), 2 * np.arange(5) + 1) == pytest.approx(1.0)


# -- comparing methods' coefficients ---------------------------------------------------------


def test_top_k_overlap_and_sign_agreement_on_constructed_tables():
    import pandas as pd

    idx = [f"m{i}" for i in range(8)]
    coefs = pd.DataFrame(
        {
            "A": [5, 4, 3, 2, 1, 0, 0, 0],
            "same": [5, 4, 3, 2, 1, 0, 0, 0],
            "flipped": [-5, -4, -3, -2, -1, 0, 0, 0],
            "disjoint": [0, 0, 0, 0, 0, 3, 2, 1],
            "half": [1, -2, 0, 0, 0, 5, 4, 0.5],
        },
        index=idx,
        dtype=float,
    )
    tops = top_sets(coefs)
    assert tops["A"] == ["m0", "m1", "m2", "m3", "m4"]
    assert tops["disjoint"] == ["m5", "m6", "m7"]  # zeros never count as selected
    assert overlap(tops["A"], tops["same"]) == 1.0
    assert overlap(tops["A"], tops["flipped"]) == 1.0
    assert overlap(tops["A"], tops["disjoint"]) == 0.0
    assert overlap(tops["A"], tops["half"]) == 2 / 5
    assert sign_agreement(coefs, "A", "same") == 1.0
    assert sign_agreement(coefs, "A", "flipped") == 0.0
    assert sign_agreement(coefs, "A", "half") == 0.5  # m0 agrees, m1 does not
    assert np.isnan(sign_agreement(coefs, "A", "disjoint"))  # nothing nonzero in both
