"""Greedy selection as in Model Soups (Wortsman et al., 2022), shared by soups and ensembles.

Ingredients are ranked by their own validation score (best first, ties by input order); the
best one starts the selection and each next one is kept when the combination's validation
score does not drop (``strict``: only when it rises). The score function only ever sees the
selection split, so test data cannot leak into the choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["GreedyResult", "GreedyStep", "greedy_select", "rank_by_score"]


def rank_by_score(scores: Sequence[float]) -> list[int]:
    """Indices sorted by score, descending; equal scores keep input order (NaN last)."""

    def key(i: int) -> tuple[bool, float, int]:
        s = scores[i]
        return (s != s, -s if s == s else 0.0, i)

    return sorted(range(len(scores)), key=key)


@dataclass(frozen=True)
class GreedyStep:
    """One tried candidate: who was added, the members tried, their score, the decision."""

    candidate: int
    members: tuple[int, ...]
    score: float
    accepted: bool


@dataclass
class GreedyResult:
    """The kept members (in the order they were accepted) and the trace of every step."""

    members: tuple[int, ...]
    score: float
    order: tuple[int, ...]
    steps: list[GreedyStep] = field(default_factory=list)


def greedy_select(
    scores: Sequence[float],
    score_fn: Callable[[tuple[int, ...]], float],
    *,
    strict: bool = False,
) -> GreedyResult:
    """Greedy selection over ingredients with individual selection-split ``scores``.

    ``score_fn(members)`` scores a combination of two or more members (higher is better);
    the single best ingredient's score is ``scores[best]`` and costs nothing.
    """
    if not scores:
        raise ValueError("greedy selection needs at least one ingredient")
    order = rank_by_score(scores)
    members: tuple[int, ...] = (order[0],)
    best = float(scores[order[0]])
    steps: list[GreedyStep] = []
    for i in order[1:]:
        trial = (*members, i)
        score = float(score_fn(trial))
        accepted = score > best if strict else score >= best
        steps.append(GreedyStep(i, trial, score, accepted))
        if accepted:
            members, best = trial, score
    return GreedyResult(members, best, tuple(order), steps)
