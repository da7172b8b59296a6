"""Metrics computed from stored logits, so every combination is scored the same way.

All functions take NumPy arrays (or anything ``np.asarray`` accepts): ``logits`` ``(N, C)``
and ``targets`` either int class ids ``(N,)`` (single-label) or a multi-hot ``(N, C)`` matrix
(multi-label, each logit an independent sigmoid). Higher is better for ``accuracy`` and
``auroc``; lower for ``nll`` and ``ece``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "ECE_BINS",
    "AurocResult",
    "accuracy",
    "compute_metrics",
    "ece",
    "higher_is_better",
    "log_softmax",
    "mean_auroc",
    "nll",
    "nonfinite",
    "primary_metric",
    "sigmoid",
]

ECE_BINS = 15


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (stable for large logits)."""
    z = np.asarray(logits, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # a non-finite row gives NaN, quietly
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Elementwise logistic function in float64, without overflow warnings."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _check(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits)
    targets = np.asarray(targets)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {logits.shape}")
    if len(targets) != len(logits):
        raise ValueError(f"{len(logits)} logits rows but {len(targets)} targets")
    if len(logits) == 0:
        raise ValueError("no samples to score")
    return logits, targets


def _is_multilabel(logits: np.ndarray, targets: np.ndarray) -> bool:
    return targets.ndim == 2 and targets.shape == logits.shape


def accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 accuracy (single-label); for multi-hot targets, accuracy of every 0.5 decision.

    A sample whose logits hold NaN or infinity counts as wrong (an overflowed model has no
    prediction; NumPy's arg-max would silently pick the NaN's position)."""
    from mergelab.results import correct_examples

    logits, targets = _check(logits, targets)
    if _is_multilabel(logits, targets):
        finite = np.isfinite(logits)
        return float((((logits > 0) == (targets > 0.5)) & finite).mean())
    return float(correct_examples(logits, targets).mean())


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their average rank (as Mann-Whitney needs)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # Start index of each run of equal values, and the run each sorted position belongs to.
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    run_rank = (starts + ends + 1) / 2.0  # mean of 1-based positions starts+1 .. ends
    run_of = np.repeat(np.arange(len(starts)), ends - starts)
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = run_rank[run_of]
    return ranks


def _binary_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC of one label via the rank-sum (Mann-Whitney U) statistic; ties count one half."""
    pos = labels > 0.5
    n_pos = int(pos.sum())
    n_neg = len(labels) - n_pos
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


@dataclass(frozen=True)
class AurocResult:
    """Mean AUROC and which labels were left out (a label needs both classes to be scored)."""

    value: float
    per_label: dict[int, float]
    skipped: tuple[int, ...] = field(default=())


def mean_auroc(scores: np.ndarray, targets: np.ndarray, *, warn: bool = True) -> AurocResult:
    """Macro AUROC over labels, equal to ``sklearn.metrics.roc_auc_score(average="macro")``.

    ``scores`` are logits or probabilities (AUROC only uses their order). A label whose
    targets hold a single class has no AUROC; it is skipped (listed in ``skipped``, and a
    warning says so) instead of failing, since small val/test splits of rare findings often
    lack positives. NaN if every label is skipped.
    """
    scores, targets = _check(scores, targets)
    if targets.ndim == 1:  # one binary label
        scores, targets = scores[:, -1:], targets[:, None]
    if targets.shape != scores.shape:
        raise ValueError(f"multi-label targets {targets.shape} do not match scores {scores.shape}")
    per_label: dict[int, float] = {}
    skipped: list[int] = []
    for j in range(targets.shape[1]):
        n_pos = int((targets[:, j] > 0.5).sum())
        if n_pos in (0, len(targets)):
            skipped.append(j)
            continue
        per_label[j] = _binary_auroc(scores[:, j], targets[:, j])
    if skipped and warn:
        warnings.warn(
            f"AUROC: skipped {len(skipped)} label(s) with a single class in the targets "
            f"(label index {', '.join(map(str, skipped))}); the mean is over the other "
            f"{len(per_label)}",
            RuntimeWarning,
            stacklevel=2,
        )
    value = float(np.mean(list(per_label.values()))) if per_label else float("nan")
    return AurocResult(value, per_label, tuple(skipped))


def nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-likelihood: cross-entropy (single-label) or mean binary
    cross-entropy over every (sample, label) (multi-label); NaN when a row's logits hold NaN
    or infinity."""
    logits, targets = _check(logits, targets)
    if _is_multilabel(logits, targets):
        z = logits.astype(np.float64)
        y = targets.astype(np.float64)
        # log(1 + exp(-|z|)) + max(z, 0) - z*y == BCE with logits, computed stably.
        with np.errstate(invalid="ignore"):
            loss = np.logaddexp(0.0, -np.abs(z)) + np.maximum(z, 0.0) - z * y
        return float(loss.mean())
    logp = log_softmax(logits)
    return float(-logp[np.arange(len(targets)), targets.astype(np.int64)].mean())


def ece(logits: np.ndarray, targets: np.ndarray, *, bins: int = ECE_BINS) -> float:
    """Expected calibration error, top-label, ``bins`` equal-width confidence bins.

    Single-label: confidence = max softmax probability, correct = argmax is the target.
    Multi-label: every (sample, label) is a binary prediction; its top label is the more
    likely of {0, 1}, so confidence = max(p, 1 - p) and correct = (p > 0.5) == target.
    ECE = sum over bins of |accuracy - mean confidence| x fraction of predictions in the bin.
    NaN when a row's logits hold NaN or infinity.
    """
    logits, targets = _check(logits, targets)
    if _is_multilabel(logits, targets):
        p = sigmoid(logits).ravel()
        conf = np.maximum(p, 1.0 - p)
        correct = (p > 0.5) == (targets.ravel() > 0.5)
    else:
        prob = np.exp(log_softmax(logits))
        conf = prob.max(axis=1)
        correct = prob.argmax(axis=1) == targets
    if not np.isfinite(conf).all():  # non-finite logits: no confidence, no calibration
        return float("nan")
    # Bins (lo, hi]; confidence 0 (impossible for top-label) would go to the first bin.
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    np.bincount(idx, minlength=bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    acc_sum = np.bincount(idx, weights=correct.astype(np.float64), minlength=bins)
    return float(np.abs(acc_sum - conf_sum).sum() / len(conf))


def nonfinite(logits: np.ndarray) -> float:
    """Share of samples whose logits hold NaN or infinity (an overflowed model: scaled
    weights multiply through the layers, and 100^19 is near the float32 limit)."""
    logits = np.asarray(logits)
    return float((~np.isfinite(logits).all(axis=1)).mean()) if len(logits) else float("nan")


def primary_metric(multilabel: bool) -> str:
    """The metric that ranks and selects models: ``auroc`` for multi-label, else ``accuracy``."""
    return "auroc" if multilabel else "accuracy"


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better."""
    return metric in ("accuracy", "auroc")


def compute_metrics(
    logits: np.ndarray,
    targets: np.ndarray,
    *,
    multilabel: bool,
    which: tuple[str, ...] | None = None,
) -> dict[str, float]:
    """The reported metrics: primary (accuracy or auroc), ``nll`` and ``ece``.

    ``which`` limits the work (greedy selection only needs the primary metric).
    """
    names = which or (primary_metric(multilabel), "nll", "ece")
    out: dict[str, float] = {}
    for name in names:
        if name == "accuracy":
            out[name] = accuracy(logits, targets)
        elif name == "auroc":
            out[name] = mean_auroc(logits, targets, warn=False).value
        elif name == "nll":
            out[name] = nll(logits, targets)
        elif name == "ece":
            out[name] = ece(logits, targets)
        elif name == "nonfinite":
            out[name] = nonfinite(logits)
        else:
            raise ValueError(f"unknown metric {name!r}")
    return out
