"""Every study of ``mergelab study``, declared once.

A :class:`Study` names the value of the ``study`` column its rows carry, the *key columns*
that together define one experiment (two rows that differ in any of them are different
experiments and are never averaged together), the *item columns* that tell apart rows of
one experiment and one method (a member model, a layer, a class, a batch), the function
that runs it, and the report section that shows it. Tables, figures and claims attach
themselves to a study with the decorators :meth:`Study.table` and :meth:`Study.figure`
(claims carry their study), so adding a study means adding one entry here and its parts
where they live.

This module imports neither torch nor the runners: a report can be drawn from a
``results.csv`` alone.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CROSS_TASK",
    "INGREDIENTS",
    "MAGNITUDE",
    "MAGNITUDE_BATCHES",
    "MERGEABILITY",
    "MERGEABILITY_FIT",
    "MULTITASK",
    "NUMBER_KEYS",
    "PAIR_METHOD",
    "STUDIES",
    "TEMPLATES",
    "WEIGHT_STATS",
    "WVF",
    "Study",
    "register",
]

# Key and item columns that hold numbers (the others hold text).
NUMBER_KEYS = frozenset(
    {"n_models", "magnitude", "seed", "model", "batch", "class", "depth", "rank_fraction"}
)


RETHINKING = "Rethinking Weight-Averaged Model-merging"
CART_PAPER = "Revisiting Weight Averaging for Model Merging"
MERGEABILITY_PAPER = "Demystifying Mergeability"
PAPERS = {
    RETHINKING: "weights as templates, weight averaging vs feature averaging, and the role "
    "of weight magnitude",
    CART_PAPER: "multi-task merging: CART and the SVD family against weight averaging, task "
    "arithmetic and TIES",
    MERGEABILITY_PAPER: "pairwise metrics that predict whether two task models merge well, "
    "and how that differs between merge methods",
}
"""The papers whose findings the studies check, and what each study of theirs is about."""


@dataclass(eq=False)
class Study:
    """One study: its rows, what identifies an experiment, how it runs, how it is shown.

    ``keys``: columns that define one experiment (with ``metric``). ``items``: columns
    that distinguish the rows of one experiment, method, split and metric (e.g. the
    member models behind "Individual"); ``item_methods``: the methods that have such
    rows when the others have one row per experiment. ``runner``: ``"module:function"``
    taking the study context and returning rows, imported only when the study runs (None:
    another study's runner writes these rows). ``recipes``: the same for the function
    listing the ingredient recipes the study needs (trained up front, in parallel; also
    what ``--dry-run`` counts). ``outputs``: the same for the function listing the
    :class:`~mergelab.evaluate.units.OutputsWanted` the study will read, computed as
    units after training.
    """

    name: str
    heading: str
    blurb: str
    keys: tuple[str, ...]
    runner: str | None = None
    recipes: str | None = None
    outputs: str | None = None
    items: tuple[str, ...] = ()
    item_methods: tuple[str, ...] = ()
    paper: str = RETHINKING
    """The paper whose findings this study checks (a key of :data:`PAPERS`)."""
    tables: list[Callable[..., Any]] = field(default_factory=list)
    figures: list[Callable[..., Any]] = field(default_factory=list)

    def table(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: ``fn(results) -> list[Table]`` is one of this study's tables."""
        self.tables.append(fn)
        return fn

    def figure(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: ``fn(results, out_dir) -> list[Path]`` draws this study's figures."""
        self.figures.append(fn)
        return fn

    def _resolve(self, target: str) -> Callable[..., Any]:
        module, _, name = target.partition(":")
        return getattr(importlib.import_module(module), name)

    def run(self, ctx: Any) -> Any:
        """Run the study on a ``StudyContext``; its rows (a DataFrame), or None when
        another study's runner writes them."""
        return None if self.runner is None else self._resolve(self.runner)(ctx)

    def needed_recipes(self, ctx: Any) -> list[Any]:
        """The ingredient recipes this study will ask the context for."""
        return [] if self.recipes is None else list(self._resolve(self.recipes)(ctx))

    def needed_outputs(self, ctx: Any) -> list[Any]:
        """The checkpoint outputs this study will read (after training)."""
        return [] if self.outputs is None else list(self._resolve(self.outputs)(ctx))


STUDIES: dict[str, Study] = {}


def register(study: Study) -> Study:
    if study.name in STUDIES:
        raise ValueError(f"study {study.name!r} is registered twice")
    STUDIES[study.name] = study
    return study


_S = "mergelab.studies"

INGREDIENTS = register(
    Study(
        "ingredients",
        "The ingredients",
        "Each setting's N models on their own: test accuracy, how long they trained and "
        "whether validation accuracy had stopped improving, and how different they are "
        "(mean pairwise test disagreement and L2 distance). Near-identical ingredients make "
        "soups look like ensembles and cannot separate them.",
        keys=("dataset", "arch", "init", "seed"),
        items=("model",),
        item_methods=("Individual",),
        runner=f"{_S}.ingredients:run",
        recipes=f"{_S}.weights_vs_features:recipes",
        outputs=f"{_S}.ingredients:outputs",
    )
)
WVF = register(
    Study(
        "weights_vs_features",
        "Weight averaging vs feature averaging",
        "Soups (Uniform, Greedy) against output and feature ensembles, per dataset, "
        "architecture, initialisation, seed and model count N (the first N ingredients); "
        "selection on val, numbers on test. Greedy ensembles take the greedy soup's members "
        "(as the paper); '(own)' variants run their own greedy search.",
        keys=("dataset", "arch", "init", "seed", "n_models"),
        items=("members",),
        item_methods=("Individual",),
        runner=f"{_S}.weights_vs_features:run",
        recipes=f"{_S}.weights_vs_features:recipes",
    )
)
CROSS_TASK = register(
    Study(
        "cross_task",
        "Merging models of different tasks",
        "Model A (task A) and model B (task B), fine-tuned from one start, each with its own "
        "head. Their backbones averaged, or their features ensembled, and classified by A's "
        "head on task A (the paper's Table 3); 'B backbone + A head' is the control.",
        keys=("arch", "dataset", "other_dataset", "seed"),
        runner=f"{_S}.cross_task:run",
        recipes=f"{_S}.cross_task:recipes",
    )
)
MAGNITUDE = register(
    Study(
        "magnitude",
        "Magnitude: scaling the weights",
        "Parameters scaled by c before merging or ensembling: all models, only the first, or "
        "all but the first; BatchNorm evaluated with running statistics as scaled "
        "('running'), with running_var scaled by c^2 ('running_c2'), or with batch "
        "statistics as the paper's code did ('batch'; class-mixed seeded batches).",
        keys=(
            "dataset",
            "arch",
            "init",
            "seed",
            "n_models",
            "scaled",
            "tensors",
            "bn",
            "magnitude",
        ),
        runner=f"{_S}.magnitude:run",
        recipes=f"{_S}.magnitude:recipes",
    )
)
MAGNITUDE_BATCHES = register(
    Study(
        "magnitude_batches",
        "Magnitude: per-batch accuracy",
        "Each point is one class-mixed test batch (seeded): logit ensemble (x) against "
        "uniform soup (y), as the paper's Fig. 4.",
        keys=(
            "dataset",
            "arch",
            "init",
            "seed",
            "n_models",
            "scaled",
            "tensors",
            "bn",
            "magnitude",
        ),
        items=("batch",),
        item_methods=("Uniform Soup", "Ens Logits"),
    )
)
WEIGHT_STATS = register(
    Study(
        "weight_stats",
        "Weight statistics before and after averaging",
        "Per tensor: max |w| and variance of each model, of their average, and the "
        "prediction for independent weights, sum(s_i^2)/N^2; on the ingredients the soups "
        "use.",
        keys=("dataset", "arch", "init", "seed", "n_models"),
        items=("layer", "model"),
        item_methods=("model", "average"),
        runner=f"{_S}.weight_stats:run",
        recipes=f"{_S}.weight_stats:recipes",
    )
)
TEMPLATES = register(
    Study(
        "templates",
        "Weights as templates",
        "A linear classifier's class rows, reshaped to the image, beside the class means; "
        "merged classifiers blend their templates. The control is the grand-mean image, "
        "which looks like every class a little. First-layer kernels shown the same way.",
        keys=("dataset", "arch", "seed"),
        items=("class",),
        item_methods=("classifier", "merged_two_models", "merged_halves", "grand_mean"),
        runner=f"{_S}.templates:run",
        recipes=f"{_S}.templates:recipes",
    )
)
MULTITASK = register(
    Study(
        "multitask",
        "Multi-task merging",
        "One backbone pre-trained on a source task, fine-tuned once per task (each task's "
        "head frozen), the task backbones merged by weight averaging, task arithmetic, "
        "TIES, DARE, TSV-M, Iso-C and CART; each method's coefficient chosen on the tasks' "
        "mean val accuracy, test accuracy reported per task with its frozen head. "
        "Normalized accuracy: merged / the task's own fine-tuned backbone. 'sweep' tells "
        "apart the method comparison ('methods'), CART's rank-fraction sweep ('rank') and "
        "the number of tasks merged ('tasks', n_models = tasks merged).",
        keys=("dataset", "arch", "seed", "sweep", "n_models", "rank_fraction"),
        runner=f"{_S}.multitask:run",
        paper=CART_PAPER,
    )
)

PAIR_METHOD = "Pair"
"""The ``method`` of the mergeability rows that hold a pair's metrics."""
MERGEABILITY = register(
    Study(
        "mergeability",
        "Mergeability: pairwise metrics and post-merge accuracy",
        "Every pair of the multi-task suite's tasks (the task backbones of one pre-trained "
        "start) merged by each method at the paper's fixed settings (no coefficient chosen), "
        "scored on both tasks' test splits with their frozen heads: normalized accuracy = "
        "merged / fine-tuned, averaged over the pair's two tasks. Method 'Pair' holds the "
        "pair's 28 metrics (metric = the metric's name), as `mergelab diagnose` measures them.",
        keys=("dataset", "other_dataset", "arch", "seed"),
        runner=f"{_S}.mergeability:run",
        paper=MERGEABILITY_PAPER,
    )
)
MERGEABILITY_FIT = register(
    Study(
        "mergeability_fit",
        "Mergeability: predicting post-merge accuracy from the metrics",
        "One sparse linear model per method (features min-max scaled to [-1, 1] on the "
        "training pairs, loss -Pearson + L1 on unit-norm coefficients; predictor "
        "'sparse_pearson') and a scikit-learn Lasso baseline ('lasso'), fitted with "
        "leave-one-task-out cross-validation: each fold holds out every pair of one task. "
        "'left_out' = none is the fit on every task; a task name is the same fit without "
        "that task's pairs (a replicate: the claims' ranges run over them).",
        keys=("arch", "seed", "predictor", "left_out"),
        items=("feature", "fold"),
        paper=MERGEABILITY_PAPER,
    )
)


def papers_of(studies: Iterable[str]) -> list[str]:
    """The papers (in :data:`PAPERS` order) checked by the named studies."""
    wanted = {STUDIES[s].paper for s in studies if s in STUDIES}
    return [p for p in PAPERS if p in wanted]
