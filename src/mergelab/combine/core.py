"""All combinations of N evaluated models: soups (weight space) and ensembles (output and
feature space), selected on the validation split only.

Ensembles reuse the cached outputs of the individual models and cost no forward pass. A soup
is a new set of weights: each greedy-soup candidate gets one pass over val, each final soup
one over test (and, with ``bn_recalibrate``, one over train before them). Those passes go
through the same cache, keyed by the merged weights' content, so a repeated comparison
runs none.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from mergelab.combine.ensembles import average_heads, mean_arrays
from mergelab.combine.greedy import GreedyResult, GreedyStep, greedy_select
from mergelab.engine import merge_state_dicts
from mergelab.errors import MergeError
from mergelab.evaluate.cache import Outputs
from mergelab.evaluate.evaluator import Evaluator
from mergelab.evaluate.metrics import compute_metrics, primary_metric
from mergelab.evaluate.source import ModelSource

__all__ = [
    "METHODS",
    "SELECTION_SPLIT",
    "Combination",
    "Ingredient",
    "SoupEvaluator",
    "run_combinations",
    "uniform_soup",
]

SELECTION_SPLIT = "val"
METHODS = (
    "Uniform Soup",
    "Greedy Soup",
    "Ens Logits",
    "Ens Features",
    "Ens Features*",
    "Greedy Ens Logits",
    "Greedy Ens Features",
    "Greedy Ens Logits (own)",
    "Greedy Ens Features (own)",
)


@dataclass
class Ingredient:
    """One input model and its cached outputs per split (``val`` and ``test`` at least)."""

    source: ModelSource
    outputs: dict[str, Outputs]

    @property
    def name(self) -> str:
        return self.source.name


@dataclass
class Combination:
    """What one method produced: logits per split, who is in it, and what it cost.

    ``n_inference_models`` is how many networks run at inference (1 for a merge, k for an
    ensemble of k); ``forward_*`` count the passes this method ran itself in this call.
    """

    method: str
    kind: Literal["merge", "ensemble"]
    members: tuple[int, ...]
    logits: dict[str, np.ndarray]
    n_inference_models: int
    forward_passes: int = 0
    forward_samples: int = 0
    forward_seconds: float = 0.0
    seconds: float = 0.0
    steps: list[GreedyStep] = field(default_factory=list)


def uniform_soup(
    state_dicts: Sequence[dict[str, torch.Tensor]], labels: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """Uniform average of state dicts (``merge_state_dicts("linear")``; integer buffers such
    as BatchNorm's ``num_batches_tracked`` come from the first). ``labels`` (their files,
    say) name the inputs in errors."""
    return merge_state_dicts("linear", list(state_dicts), labels=labels)


class SoupEvaluator:
    """Outputs of uniform soups of ingredient subsets, merged and evaluated on demand.

    A subset is always merged in input order, so the same members give the same weights
    (and the same cache entry) whatever order a greedy search visits them in. A one-member
    soup is that model itself: its cached outputs are returned. Soup outputs carry logits
    only (their features are in the disk cache, not in memory).
    """

    def __init__(
        self, evaluator: Evaluator, ingredients: Sequence[Ingredient], *, bn_recalibrate: bool
    ) -> None:
        self.evaluator = evaluator
        self.ingredients = list(ingredients)
        self.bn_recalibrate = bn_recalibrate
        self._sources: OrderedDict[tuple[int, ...], ModelSource] = OrderedDict()
        self._outputs: dict[tuple[tuple[int, ...], str], Outputs] = {}

    def source(self, members: Sequence[int]) -> ModelSource:
        """The merged weights of ``members`` (the last two merges are kept in memory)."""
        key = tuple(sorted(members))
        if key in self._sources:
            self._sources.move_to_end(key)
            return self._sources[key]
        sources = [self.ingredients[i].source for i in key]
        merged = uniform_soup(
            [s.state_dict() for s in sources],
            labels=[str(s.path) if s.path is not None else s.name for s in sources],
        )
        names = "+".join(self.ingredients[i].name for i in key)
        src = ModelSource(f"soup[{names}]", state_dict=merged)
        self._sources[key] = src
        while len(self._sources) > 2:
            self._sources.popitem(last=False)
        return src

    def outputs(self, members: Sequence[int], split: str) -> Outputs:
        """Outputs of the soup of ``members`` on ``split`` (a pass only on a cache miss)."""
        key = tuple(sorted(members))
        if len(key) == 1:
            return self.ingredients[key[0]].outputs[split]
        if (key, split) not in self._outputs:
            out = self.evaluator.outputs(
                self.source(key), split, bn_recalibrate=self.bn_recalibrate, kind="soup"
            )
            # Soups are scored by their logits only: keep no features for every candidate.
            empty = np.empty((len(out.logits), 0), dtype=np.float32)
            self._outputs[(key, split)] = replace(out, features=empty)
        return self._outputs[(key, split)]


class _Combiner:
    """Shared state of one run: stacked cached outputs, heads, scoring on val."""

    def __init__(
        self,
        evaluator: Evaluator,
        ingredients: Sequence[Ingredient],
        splits: Sequence[str],
        *,
        strict: bool,
        bn_recalibrate: bool,
    ) -> None:
        self.ev = evaluator
        self.ing = list(ingredients)
        self.splits = tuple(splits)
        self.strict = strict
        self.multilabel = evaluator.splits.info.multilabel
        self.metric = primary_metric(self.multilabel)
        self.soups = SoupEvaluator(evaluator, ingredients, bn_recalibrate=bn_recalibrate)
        self._heads: list[dict[str, torch.Tensor]] | None = None
        self._head_avg: OrderedDict[tuple[int, ...], dict[str, torch.Tensor]] = OrderedDict()
        self.val_scores = [self.score(ing.outputs[SELECTION_SPLIT].logits) for ing in self.ing]

    def score(self, logits: np.ndarray) -> float:
        """The selection metric on the selection split."""
        targets = self.ing[0].outputs[SELECTION_SPLIT].targets
        return compute_metrics(logits, targets, multilabel=self.multilabel, which=(self.metric,))[
            self.metric
        ]

    def heads(self) -> list[dict[str, torch.Tensor]]:
        if self._heads is None:
            self._heads = [self.ev.head_state(i.source.state_dict()) for i in self.ing]
        return self._heads

    def ens_logits(self, members: Sequence[int], split: str) -> np.ndarray:
        return mean_arrays([self.ing[i].outputs[split].logits for i in members])

    def ens_features(
        self, members: Sequence[int], split: str, head_of: Sequence[int] | None = None
    ) -> np.ndarray:
        """Mean features of ``members`` through the average of the heads of ``head_of``
        (default: the same members)."""
        feats = mean_arrays([self.ing[i].outputs[split].features for i in members])
        return self.ev.apply_head(feats, self.head_average(head_of or members))

    def head_average(self, members: Sequence[int]) -> dict[str, torch.Tensor]:
        """Averaged head of ``members``; the last few are kept (val and test share one)."""
        key = tuple(sorted(members))
        if key not in self._head_avg:
            heads = self.heads()
            self._head_avg[key] = average_heads([heads[i] for i in key])
            while len(self._head_avg) > 4:
                self._head_avg.popitem(last=False)
        return self._head_avg[key]

    def greedy_soup(self) -> GreedyResult:
        def score(members: tuple[int, ...]) -> float:
            return self.score(self.soups.outputs(members, SELECTION_SPLIT).logits)

        return greedy_select(self.val_scores, score, strict=self.strict)

    def greedy_ensemble(
        self, logits_of: Callable[[tuple[int, ...], str], np.ndarray]
    ) -> GreedyResult:
        return greedy_select(
            self.val_scores,
            lambda m: self.score(logits_of(m, SELECTION_SPLIT)),
            strict=self.strict,
        )


def run_combinations(
    evaluator: Evaluator,
    ingredients: Sequence[Ingredient],
    *,
    strict: bool = False,
    bn_recalibrate: bool = False,
    splits: Sequence[str] = ("val", "test"),
    methods: Sequence[str] = METHODS,
) -> dict[str, Combination]:
    """Compute ``methods`` (default: all of :data:`METHODS`) for the ingredients.

    Selection (ranking, greedy acceptance) uses only ``val``; the other ``splits`` are
    evaluated for the final choices only. "Greedy Ens Logits/Features" ensemble the greedy
    soup's members (as "Rethinking Weight-Averaged Model-merging" did); the "(own)"
    variants run their own greedy search over the ensemble's val score.
    """
    if not ingredients:
        raise MergeError("no models to combine")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise MergeError(f"unknown combination(s) {unknown}; known: {', '.join(METHODS)}")
    if SELECTION_SPLIT not in splits:
        splits = (SELECTION_SPLIT, *splits)
    for ing in ingredients:
        missing = [s for s in splits if s not in ing.outputs]
        if missing:
            raise MergeError(f"{ing.name}: no outputs for split(s) {', '.join(missing)}")
    c = _Combiner(evaluator, ingredients, splits, strict=strict, bn_recalibrate=bn_recalibrate)
    counter = evaluator.counter
    everyone = tuple(range(len(ingredients)))
    results: dict[str, Combination] = {}
    soup_result: GreedyResult | None = None

    def timed(method: str, fn: Callable[[], Combination]) -> None:
        n0 = len(counter.records)
        t0 = time.perf_counter()
        comb = fn()
        new = counter.records[n0:]
        comb.seconds = time.perf_counter() - t0
        comb.forward_passes = len(new)
        comb.forward_samples = sum(r.samples for r in new)
        comb.forward_seconds = sum(r.seconds for r in new)
        results[method] = comb

    def soup_comb(method: str, chosen: tuple[int, ...], steps: list[GreedyStep]) -> Combination:
        logits = {s: c.soups.outputs(chosen, s).logits for s in splits}
        return Combination(method, "merge", chosen, logits, 1, steps=steps)

    def greedy_soup() -> Combination:
        nonlocal soup_result
        soup_result = c.greedy_soup()
        return soup_comb("Greedy Soup", soup_result.members, soup_result.steps)

    def greedy_ens(
        method: str, logits_of: Callable[[tuple[int, ...], str], np.ndarray], own: bool
    ) -> Callable[[], Combination]:
        def run() -> Combination:
            if own:
                res = c.greedy_ensemble(logits_of)
                chosen, steps = res.members, res.steps
            else:
                assert soup_result is not None
                chosen, steps = soup_result.members, []
            logits = {s: logits_of(chosen, s) for s in splits}
            return Combination(method, "ensemble", chosen, logits, len(chosen), steps=steps)

        return run

    def ensemble(method: str, logits_of: Callable[[str], np.ndarray]) -> Callable[[], Combination]:
        def run() -> Combination:
            logits = {s: logits_of(s) for s in splits}
            return Combination(method, "ensemble", everyone, logits, len(everyone))

        return run

    plan: dict[str, Callable[[], Combination]] = {
        # The greedy soup runs first: the greedy ensembles take its members, and the
        # uniform soup may then reuse its last candidate's validation pass.
        "Greedy Soup": greedy_soup,
        "Uniform Soup": lambda: soup_comb("Uniform Soup", everyone, []),
        "Ens Logits": ensemble("Ens Logits", lambda s: c.ens_logits(everyone, s)),
        "Ens Features": ensemble("Ens Features", lambda s: c.ens_features(everyone, s)),
        "Ens Features*": ensemble(
            "Ens Features*", lambda s: c.ens_features(everyone, s, head_of=(0,))
        ),
        "Greedy Ens Logits": greedy_ens("Greedy Ens Logits", c.ens_logits, own=False),
        "Greedy Ens Features": greedy_ens("Greedy Ens Features", c.ens_features, own=False),
        "Greedy Ens Logits (own)": greedy_ens("Greedy Ens Logits (own)", c.ens_logits, own=True),
        "Greedy Ens Features (own)": greedy_ens(
            "Greedy Ens Features (own)", c.ens_features, own=True
        ),
    }
    wanted = set(methods)
    if wanted & {"Greedy Ens Logits", "Greedy Ens Features"}:
        wanted.add("Greedy Soup")
    for method, fn in plan.items():
        if method in wanted:
            timed(method, fn)
    return {m: results[m] for m in METHODS if m in results}
