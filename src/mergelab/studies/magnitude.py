"""Perspective 3, part two: scale the models' parameters by a factor c and see whether
merging or ensembling copes better (the paper: merging is more robust).

For every target (dataset, arch), seed, model count N, which models are scaled (all, the
first, all but the first), which tensors, BatchNorm mode and factor: Perf Ave, Uniform
Soup, Greedy Soup, Ens Logits, Ens Features, Ens Features*, and the greedy ensembles of the
greedy soup's members, with test accuracy (and its per-example outcomes) and the share of
test examples whose logits overflowed (``nonfinite``: 100^19 is near the float32 limit,
and an overflowed model has no prediction).

BatchNorm: "running" evaluates with the running statistics as scaled (running_var is
multiplied by c, like every tensor); "running_c2" multiplies running_var by c^2 (what
scaling the layer before it does to its activations' variance); "batch" normalises with
each batch's own statistics, as the paper's code (left in train mode) did. Batches are
class-mixed: the split is evaluated in one seeded random order, so a batch is never one
class (the split's item order is sorted by class for some datasets). Models without
BatchNorm are evaluated once (``bn="none"``).

Every model, soup and candidate is evaluated once per (weights, BatchNorm mode): the
scaled individual models are shared across N and "which", soups across greedy searches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mergelab.analysis import scale_state_dict
from mergelab.combine import average_heads, greedy_select, mean_arrays
from mergelab.engine import merge_state_dicts
from mergelab.evaluate import compute_metrics
from mergelab.evaluate.metrics import nonfinite
from mergelab.results import correct_examples
from mergelab.studies.context import StudyContext
from mergelab.studies.registry import MAGNITUDE, MAGNITUDE_BATCHES
from mergelab.train import IngredientRecipe

_EVAL_BATCH = 1024


def recipes(ctx: StudyContext) -> list[IngredientRecipe]:
    spec = ctx.config.magnitude
    if not spec.enabled:
        return []
    return [
        ctx.recipe(d, a, seed=s)
        for s in ctx.config.seeds
        for d, a in ctx.config.magnitude_targets()
    ]


def mixed_order(n: int, name: str) -> np.ndarray:
    """A seeded random order of ``n`` items (the same for every model of a dataset)."""
    seed = int.from_bytes(
        hashlib.sha256(f"magnitude-order:{name}:{n}".encode()).digest()[:8], "little"
    )
    return np.random.default_rng(seed).permutation(n)


def batch_slices(n: int, size: int) -> Iterator[slice]:
    """Consecutive full batches of ``size`` positions (a partial last batch is dropped)."""
    for start in range(0, n - size + 1, size):
        yield slice(start, start + size)


def _bn_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def bn_adjusted(sd: dict[str, Any], factor: float, bn: str) -> dict[str, Any]:
    """For ``bn="running_c2"``: running_var multiplied by c once more (c^2 in all, after
    :func:`scale_state_dict` multiplied it by c)."""
    if bn != "running_c2" or factor == 1:
        return sd
    return {k: (v * factor if k.endswith("running_var") else v) for k, v in sd.items()}


class _Runner:
    """One target: its models, data in mixed order, and every output computed once."""

    def __init__(self, ctx: StudyContext, dataset: str, arch: str, seed: int) -> None:
        self.ctx = ctx
        self.spec = ctx.config.magnitude
        self.dataset, self.arch, self.seed = dataset, arch, seed
        self.ev = ctx.evaluator(dataset, arch)
        self.sds = ctx.state_dicts(ctx.ingredients(ctx.recipe(dataset, arch, seed=seed)))
        self.model = self.ev.build_model().to(self.ev.device)
        self.fh = self.ev.feature_head(self.model)
        self.has_bn = bool(_bn_modules(self.model))
        self.data: dict[str, tuple[torch.Tensor, np.ndarray, np.ndarray]] = {}
        for split in ("val", "test"):
            x = torch.cat([b for b, _ in self.ev.batches(split)])
            order = mixed_order(len(x), f"{dataset}/{split}")
            self.data[split] = (x[torch.from_numpy(order)], order, self.ev.targets(split))
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def forward(
        self, key: tuple, weights: Callable[[], dict[str, Any]], split: str, bn: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(logits, features) of ``weights()`` on ``split`` in item order; cached under
        ``key`` (the weights are only made on a miss)."""
        full = (key, split, bn)
        if full in self._cache:
            return self._cache[full]
        x, order, _ = self.data[split]
        self.model.load_state_dict({k: v.to(self.ev.device) for k, v in weights().items()})
        self.model.eval()
        if bn == "batch":
            for m in _bn_modules(self.model):
                m.train()
        size = self.spec.batch_size if bn == "batch" else _EVAL_BATCH
        logits, feats = [], []
        with torch.no_grad():
            for start in range(0, len(x), size):
                xb = x[start : start + size].to(self.ev.device)
                f = self.fh.features(xb)
                logits.append(self.fh.head(f).float().cpu())
                feats.append(f.float().cpu())
        self.model.eval()
        z_mixed, f_mixed = torch.cat(logits).numpy(), torch.cat(feats).numpy()
        z, f = np.empty_like(z_mixed), np.empty_like(f_mixed)
        z[order], f[order] = z_mixed, f_mixed
        self._cache[full] = (z, f)
        return z, f

    def forget(self) -> None:
        """Drop every output but those of unscaled weights (the next factor reuses only
        those)."""
        self._cache = {k: v for k, v in self._cache.items() if set(_factors(k[0])) <= {1.0}}

    def scaled(self, i: int, factor: float, tensors: str, bn: str) -> dict[str, Any]:
        sd = scale_state_dict(self.sds[i], factor, tensors) if factor != 1 else self.sds[i]
        return bn_adjusted(sd, factor, bn) if tensors == "all" else sd

    def modes(self) -> list[str]:
        return list(self.spec.bn) if self.has_bn else ["none"]


def _factors(key: tuple) -> tuple[float, ...]:
    """The scaling factors in a cache key: ("model", i, c, tensors) or ("soup", members,
    factors, tensors)."""
    c = key[2]
    return tuple(c) if isinstance(c, tuple) else (c,)


def _scores(logits: np.ndarray, truth: np.ndarray) -> float:
    return compute_metrics(logits, truth, multilabel=False, which=("accuracy",))["accuracy"]


def run(ctx: StudyContext) -> pd.DataFrame:
    spec = ctx.config.magnitude
    if not spec.enabled:
        return pd.DataFrame()
    rows: list[dict[str, Any]] = []
    for seed in ctx.config.seeds:
        for dataset, arch in ctx.config.magnitude_targets():
            if ctx.dataset(dataset).info.multilabel:
                ctx.log(f"magnitude: skipped {arch} on {dataset} (multi-label data)")
                continue
            r = _Runner(ctx, dataset, arch, seed)
            modes = ", ".join(r.modes())
            ctx.log(f"magnitude: {arch} on {dataset} (seed {seed}), BatchNorm modes {modes}")
            for tensors in spec.tensors:
                for bn in r.modes():
                    if bn == "running_c2" and tensors != "all":
                        continue
                    rows += _sweep(ctx, r, tensors, bn)
    return pd.DataFrame(rows)


class _Option:
    """One (factor, which models are scaled, tensors, BatchNorm mode) of a target: the
    weights and outputs of its models and soups."""

    def __init__(self, r: _Runner, factor: float, which: str, tensors: str, bn: str) -> None:
        self.r, self.factor, self.which, self.tensors, self.bn = r, factor, which, tensors, bn
        self._weights: dict[int, dict[str, Any]] = {}
        self._heads: dict[int, dict[str, Any]] = {}

    def factor_of(self, i: int) -> float:
        scaled = self.which == "all" or (self.which == "first") == (i == 0)
        return self.factor if scaled else 1.0

    def weights(self, i: int) -> dict[str, Any]:
        if i not in self._weights:
            self._weights[i] = self.r.scaled(i, self.factor_of(i), self.tensors, self.bn)
        return self._weights[i]

    def head(self, i: int) -> dict[str, Any]:
        if i not in self._heads:
            self._heads[i] = self.r.ev.head_state(self.weights(i))
        return self._heads[i]

    def model_out(self, i: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        key = ("model", i, self.factor_of(i), self.tensors)
        return self.r.forward(key, lambda: self.weights(i), split, self.bn)

    def soup_out(self, members: Sequence[int], split: str) -> np.ndarray:
        key = tuple(sorted(members))
        if len(key) == 1:
            return self.model_out(key[0], split)[0]
        factors = tuple(self.factor_of(i) for i in key)

        def soup() -> dict[str, Any]:
            return merge_state_dicts("linear", [self.weights(i) for i in key])

        return self.r.forward(("soup", key, factors, self.tensors), soup, split, self.bn)[0]

    def combinations(self, n: int, truth_val: np.ndarray) -> tuple[dict[str, np.ndarray], list]:
        """Test logits of every method for the first ``n`` models, and their test outputs."""
        members = tuple(range(n))
        val = [self.model_out(i, "val")[0] for i in members]
        test = [self.model_out(i, "test") for i in members]

        def ens_logits(ms: Sequence[int]) -> np.ndarray:
            return mean_arrays([test[i][0] for i in ms])

        def ens_features(ms: Sequence[int], head_of: Sequence[int] | None = None) -> np.ndarray:
            feats = mean_arrays([test[i][1] for i in ms])
            head = average_heads([self.head(i) for i in (head_of or ms)])
            return self.r.ev.apply_head(feats, head)

        logits = {
            "Uniform Soup": self.soup_out(members, "test"),
            "Ens Logits": ens_logits(members),
            "Ens Features": ens_features(members),
            "Ens Features*": ens_features(members, head_of=(0,)),
        }
        if self.r.spec.greedy:
            scores = [_scores(z, truth_val) for z in val]
            greedy = greedy_select(scores, lambda m: _scores(self.soup_out(m, "val"), truth_val))
            logits["Greedy Soup"] = self.soup_out(greedy.members, "test")
            logits["Greedy Ens Logits"] = ens_logits(greedy.members)
            logits["Greedy Ens Features"] = ens_features(greedy.members)
        return logits, test


def _sweep(ctx: StudyContext, r: _Runner, tensors: str, bn: str) -> list[dict[str, Any]]:
    spec = r.spec
    truth = {s: r.data[s][2] for s in ("val", "test")}
    counts = sorted({min(k, len(r.sds)) for k in spec.n_models if k >= 2})
    rows: list[dict[str, Any]] = []
    for factor in spec.factors:
        for which in spec.scaled:
            option = _Option(r, factor, which, tensors, bn)
            for n in counts:
                logits, test = option.combinations(n, truth["val"])
                common = {
                    "study": MAGNITUDE.name,
                    "dataset": r.dataset,
                    "arch": r.arch,
                    "init": "shared",
                    "seed": r.seed,
                    "n_models": n,
                    "scaled": which,
                    "tensors": tensors,
                    "bn": bn,
                    "magnitude": float(factor),
                    "split": "test",
                }
                for method, z in logits.items():
                    correct = correct_examples(z, truth["test"])
                    row = {**common, "method": method, "metric": "accuracy"}
                    rows.append(ctx.keep({**row, "value": float(correct.mean())}, correct))
                    rows.append({**row, "metric": "nonfinite", "value": nonfinite(z)})
                each = np.mean([correct_examples(o[0], truth["test"]) for o in test], axis=0)
                row = {**common, "method": "Perf Ave", "metric": "accuracy"}
                rows.append(ctx.keep({**row, "value": float(each.mean())}, each.astype(np.float32)))
                if factor in spec.batch_factors and which == spec.scaled[0]:
                    rows += _batch_rows(r, common, logits, truth["test"])
        r.forget()
    return rows


def _batch_rows(
    r: _Runner, common: dict[str, Any], logits: dict[str, np.ndarray], truth: np.ndarray
) -> list[dict[str, Any]]:
    """Accuracy of every class-mixed test batch (the mixed order's consecutive batches)."""
    order = r.data["test"][1]
    rows = []
    for method in ("Uniform Soup", "Ens Logits"):
        correct = correct_examples(logits[method], truth)[order]
        for b, sl in enumerate(batch_slices(len(order), r.spec.batch_size)):
            rows.append(
                {
                    **common,
                    "study": MAGNITUDE_BATCHES.name,
                    "method": method,
                    "metric": "accuracy",
                    "value": float(correct[sl].mean()),
                    "batch": b,
                }
            )
    return rows
