"""Metrics against independent references (scikit-learn, torch, a plain loop)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from mergelab.evaluate.metrics import (
    accuracy,
    compute_metrics,
    ece,
    mean_auroc,
    nll,
    primary_metric,
)


def _multilabel(n: int = 300, labels: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, labels)) < np.linspace(0.1, 0.6, labels)).astype(np.float32)
    # Informative scores, rounded so that many ties occur (ties must count one half).
    scores = np.round(y * 0.8 + rng.normal(size=(n, labels)), 1).astype(np.float32)
    return scores, y


def test_mean_auroc_equals_sklearn_macro() -> None:
    scores, y = _multilabel()
    res = mean_auroc(scores, y)
    assert res.skipped == ()
    assert res.value == pytest.approx(roc_auc_score(y, scores, average="macro"), abs=1e-12)
    for j, v in res.per_label.items():
        assert v == pytest.approx(roc_auc_score(y[:, j], scores[:, j]), abs=1e-12)


def test_mean_auroc_skips_single_class_labels_and_says_so() -> None:
    scores, y = _multilabel(seed=1)
    y[:, 1] = 0.0  # no positives
    y[:, 3] = 1.0  # no negatives
    with pytest.warns(RuntimeWarning, match=r"skipped 2 label\(s\).*1, 3"):
        res = mean_auroc(scores, y)
    assert res.skipped == (1, 3)
    keep = [0, 2, 4]
    expected = roc_auc_score(y[:, keep], scores[:, keep], average="macro")
    assert res.value == pytest.approx(expected, abs=1e-12)
    assert set(res.per_label) == set(keep)


def test_auroc_of_constant_scores_is_one_half_and_perfect_ranking_is_one() -> None:
    y = np.array([[0], [1], [0], [1]], dtype=np.float32)
    assert mean_auroc(np.zeros((4, 1)), y).value == pytest.approx(0.5)
    assert mean_auroc(np.array([[0.1], [0.9], [0.2], [0.8]]), y).value == pytest.approx(1.0)


def test_nll_matches_torch_losses() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3, size=(50, 7)).astype(np.float32)
    targets = rng.integers(0, 7, 50)
    ref = F.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(targets))
    assert nll(logits, targets) == pytest.approx(float(ref), rel=1e-9)
    scores, y = _multilabel()
    ref_bce = F.binary_cross_entropy_with_logits(
        torch.from_numpy(scores).double(), torch.from_numpy(y).double()
    )
    assert nll(scores, y) == pytest.approx(float(ref_bce), rel=1e-9)


def _ece_loop(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    total = 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    for lo, hi in itertools.pairwise(edges):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += abs(correct[inside].mean() - conf[inside].mean()) * inside.mean()
    return total


def test_ece_matches_a_plain_loop_over_15_bins() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=2.5, size=(400, 10))
    targets = rng.integers(0, 10, 400)
    prob = torch.softmax(torch.from_numpy(logits), 1).numpy()
    conf, pred = prob.max(1), prob.argmax(1)
    assert ece(logits, targets) == pytest.approx(_ece_loop(conf, pred == targets), abs=1e-12)


def test_ece_of_confident_coin_flips_is_one_half() -> None:
    logits = np.array([[20.0, 0.0]] * 100)
    targets = np.array([0, 1] * 50)
    assert ece(logits, targets) == pytest.approx(0.5, abs=1e-6)
    assert accuracy(logits, targets) == pytest.approx(0.5)


def test_multilabel_ece_scores_each_label_decision() -> None:
    scores, y = _multilabel(seed=4)
    p = torch.sigmoid(torch.from_numpy(scores).double()).numpy().ravel()
    conf = np.maximum(p, 1 - p)
    correct = (p > 0.5) == (y.ravel() > 0.5)
    assert ece(scores, y) == pytest.approx(_ece_loop(conf, correct), abs=1e-12)


def test_compute_metrics_picks_the_primary_metric() -> None:
    scores, y = _multilabel()
    assert set(compute_metrics(scores, y, multilabel=True)) == {"auroc", "nll", "ece"}
    logits = np.eye(3)
    got = compute_metrics(logits, np.array([0, 1, 1]), multilabel=False)
    assert set(got) == {"accuracy", "nll", "ece"}
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert primary_metric(True) == "auroc" and primary_metric(False) == "accuracy"
