"""Combine N evaluated models without evaluating them again.

* :func:`run_combinations` - Uniform Soup, Greedy Soup (weight space; need their own passes),
  Ens Logits, Ens Features, Ens Features*, Greedy Ens Logits, Greedy Ens Features (from the
  cached logits and features). Selection uses the validation split only.
* :func:`greedy_select` - the Model Soups greedy rule, for any scoring function.
"""

from mergelab.combine.core import (
    METHODS,
    SELECTION_SPLIT,
    Combination,
    Ingredient,
    SoupEvaluator,
    run_combinations,
    uniform_soup,
)
from mergelab.combine.ensembles import average_heads, mean_arrays
from mergelab.combine.greedy import GreedyResult, GreedyStep, greedy_select, rank_by_score

__all__ = [
    "METHODS",
    "SELECTION_SPLIT",
    "Combination",
    "GreedyResult",
    "GreedyStep",
    "Ingredient",
    "SoupEvaluator",
    "average_heads",
    "greedy_select",
    "mean_arrays",
    "rank_by_score",
    "run_combinations",
    "uniform_soup",
]
