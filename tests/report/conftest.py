"""Constructed results (rows and per-example outcomes) for the report tests.

Accuracies become per-example 0/1 vectors over ``n_test`` examples, *nested*: on one
dataset, a higher accuracy is correct on a superset of the examples a lower one gets
right. A difference of k examples between two methods is then exactly k/n on every
resample's scale, so each expected verdict can be worked out by hand: 40 of 400 examples
(10 points) is far outside the noise, 1 of 400 is inside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mergelab.report.frames import Results
from mergelab.results import outcome_key

FACTORS = (1, 2, 5, 10, 20, 50, 70, 90, 100, 110, 130, 150)
N_TEST = 400


class Builder:
    """Accumulates rows and outcome vectors; ``results()`` gives them as ``Results``."""

    def __init__(self, n_test: int = N_TEST) -> None:
        self.n_test = n_test
        self.rows: list[dict[str, object]] = []
        self.outcomes: dict[str, np.ndarray] = {}

    def order(self, dataset: str) -> np.ndarray:
        seed = sum(map(ord, dataset))
        return np.random.default_rng(seed).permutation(self.n_test)

    def vector(self, dataset: str, acc: float) -> np.ndarray:
        v = np.zeros(self.n_test, dtype=np.uint8)
        v[self.order(dataset)[: round(acc * self.n_test)]] = 1
        return v

    def add(
        self, study: str, method: str, value: float, *, outcome: bool = True, **cols: object
    ) -> None:
        row: dict[str, object] = {
            "study": study,
            "dataset": "cifar10",
            "arch": "resnet8",
            "n_models": 2,
            "method": method,
            "magnitude": 1.0,
            "split": "test",
            "metric": "accuracy",
            "seed": 0,
            **cols,
        }
        if outcome and row["split"] == "test" and row["metric"] == "accuracy":
            vec = self.vector(str(row["dataset"]), value)
            row["value"] = float(vec.mean())
            key = outcome_key(row)
            row["outcome"] = key
            self.outcomes[key] = vec
        else:
            row["value"] = value
        self.rows.append(row)

    def results(self) -> Results:
        return Results(pd.DataFrame(self.rows), self.outcomes)


def wvf(
    b: Builder,
    settings: Mapping[tuple[str, str, int], Mapping[str, float]],
    *,
    init: str = "shared",
    seed: int = 0,
    val: Mapping[tuple[str, str, int], Mapping[str, float]] | None = None,
) -> Builder:
    """weights_vs_features rows: ``settings[(dataset, arch, n)] = {method: test acc}``.

    Val rows repeat the test values unless ``val`` overrides them; NLL/ECE rows and one
    "Individual" row per model (around "Perf Ave") come with every setting."""
    for split, table in (("test", settings), ("val", val or settings)):
        for (dataset, arch, n), methods in table.items():
            common = {
                "dataset": dataset,
                "arch": arch,
                "n_models": n,
                "split": split,
                "init": init,
                "seed": seed,
            }
            for method, value in methods.items():
                cost = {"params": 1000 * (n if method.startswith("Ens") else 1), "flops": 2000}
                b.add("weights_vs_features", method, value, members=f"{n} models", **cost, **common)
                b.add("weights_vs_features", method, 0.5 + 0.01 * n, metric="nll", **common)
                b.add("weights_vs_features", method, 0.05, metric="ece", **common)
            if "Perf Ave" in methods:
                for i, d in enumerate(np.linspace(-0.01, 0.01, n)):
                    b.add(
                        "weights_vs_features",
                        "Individual",
                        methods["Perf Ave"] + d,
                        members=f"m{i}",
                        **common,
                    )
    return b


def paper_like_wvf(b: Builder) -> Builder:
    """Two datasets x (resnet8, resnet14, vit_small) x N, shaped like the paper's findings:
    ensembles ahead of soups by a gap that grows with N and is smaller for the deeper
    ResNet; ViT soups collapse with N; Ens Features within a point of Ens Logits."""
    settings, val = {}, {}
    for dataset in ("cifar10", "cifar100"):
        for arch in ("resnet8", "resnet14", "vit_small"):
            for n in (2, 3, 5, 7, 10):
                vit = arch.startswith("vit")
                gap = (0.02 if arch == "resnet14" else 0.04) + 0.005 * n
                el = 0.80 + 0.002 * n
                us = 0.70 - 0.04 * n if vit else el - gap
                m = {
                    "Perf Ave": 0.74,
                    "Best Individual": 0.75,
                    "Uniform Soup": us,
                    "Greedy Soup": us + 0.01 if not vit else 0.75,
                    "Ens Logits": el,
                    "Ens Features": el - 0.0025,
                    "Ens Features*": el - 0.005,
                    "Greedy Ens Logits": el - 0.001,
                    "Greedy Ens Features": el - 0.004,
                }
                settings[(dataset, arch, n)] = m
                val[(dataset, arch, n)] = {**m, "Best Individual": 0.76, "Greedy Soup": 0.77}
    return wvf(b, settings, val=val)


def magnitude(b: Builder, *, robust_soup: bool = True, bn: str = "none") -> Builder:
    """Accuracy against factor, every model scaled: the soup holds, the logit ensemble
    gains a little up to c = 10 and collapses from c = 50 (swapped without
    ``robust_soup``); Ens Features decays half as fast as Ens Logits."""
    for arch in ("resnet8", "mlp"):
        for n in (2, 5):
            for f in FACTORS:
                soup = 0.80
                ens = 0.84 + (0.04 if 2 <= f <= 20 else 0.0) if f < 50 else 0.50
                feat = 0.84 if f < 50 else 0.67
                us, el = (soup, ens) if robust_soup else (ens, soup)
                common = {
                    "arch": arch,
                    "n_models": n,
                    "magnitude": float(f),
                    "scaled": "all",
                    "tensors": "all",
                    "bn": bn,
                    "init": "shared",
                }
                for method, v in (
                    ("Perf Ave", 0.78),
                    ("Uniform Soup", us),
                    ("Greedy Soup", us),
                    ("Ens Logits", el),
                    ("Ens Features", feat),
                ):
                    b.add("magnitude", method, v, **common)
                    b.add(
                        "magnitude", method, 0.0 if f < 100 else 0.25, metric="nonfinite", **common
                    )
    return b


def magnitude_batches(b: Builder) -> Builder:
    rng = np.random.default_rng(0)
    for f in (1.0, 50.0, 150.0):
        for batch in range(8):
            common = {
                "magnitude": f,
                "batch": batch,
                "scaled": "all",
                "tensors": "all",
                "bn": "none",
                "init": "shared",
            }
            b.add(
                "magnitude_batches",
                "Ens Logits",
                0.8 - 0.002 * f + rng.normal(0, 0.03),
                outcome=False,
                **common,
            )
            b.add(
                "magnitude_batches",
                "Uniform Soup",
                0.8 + rng.normal(0, 0.03),
                outcome=False,
                **common,
            )
    return b


def weight_stats(
    b: Builder, *, shrink: float = 0.5, ratio: float = 1.0, bound_broken: bool = False
) -> Builder:
    """Two models per tensor (variances 0.01 and 0.02): shared-start average at ``shrink``
    of the models' mean statistics; independent average at ``ratio`` x the prediction."""
    layers = [f"layer{i}.weight" for i in range(12)]
    for init in ("shared", "independent"):
        for j, layer in enumerate(layers):
            common = {
                "layer": layer,
                "arch": "resnet8",
                "split": "weights",
                "init": init,
                "n_models": 2,
                "ndim": 2,
            }
            for i, (mx, var) in enumerate(((1.0, 0.01), (1.2, 0.02))):
                b.add(
                    "weight_stats", "model", mx, metric="max_abs", model=i, outcome=False, **common
                )
                b.add(
                    "weight_stats",
                    "model",
                    var,
                    metric="variance",
                    model=i,
                    outcome=False,
                    **common,
                )
            wiggle = 1 + 0.01 * (j - 5.5)
            if init == "shared":
                mx, var = 1.1 * shrink * wiggle, 0.015 * shrink * wiggle
            else:
                mx, var = 0.9, 0.0075 * ratio * wiggle
            if bound_broken and j == 0:
                var = 0.5
            for metric, v in (("max_abs", mx), ("variance", var), ("predicted_variance", 0.0075)):
                b.add("weight_stats", "average", v, metric=metric, outcome=False, **common)
    return b


def templates(b: Builder, *, identified: int = 10, margin: float = 0.3) -> Builder:
    """Per class: the classifier's correlation, own-class margin and identification; the
    grand-mean control (correlates 0.8 with every class mean, margins that average 0,
    identifies class 0 only)."""
    for c in range(10):
        common = {"dataset": "digits", "arch": "linear", "class": c, "split": "train",
                  "n_models": 1}  # fmt: skip
        wiggle = 0.01 * (c - 4.5)
        for method, corr, ident, marg in (
            ("classifier", 0.4 + wiggle, float(c < identified), margin + wiggle),
            ("grand_mean", 0.8 + wiggle, float(c == 0), wiggle),
            ("merged_two_models", 0.6, 1.0, 0.2),
            ("merged_halves", 0.5, np.nan, np.nan),
        ):
            b.add("templates", method, corr, metric="template_correlation", outcome=False, **common)
            if not np.isnan(ident):
                b.add("templates", method, ident, metric="identified", outcome=False, **common)
                b.add("templates", method, marg, metric="own_class_margin", outcome=False,
                      **common)  # fmt: skip
    return b


def cross_task(b: Builder, *, soup: float = 0.40) -> Builder:
    for a, o in (("mnist", "fashion"), ("fashion", "mnist")):
        for method, v in (
            ("Model A", 0.95),
            ("B backbone + A head", 0.10),
            ("Uniform Soup", soup),
            ("Ens Logits", 0.6),
            ("Ens Features", 0.7),
        ):
            b.add(
                "cross_task",
                method,
                v,
                dataset=a,
                other_dataset=o,
                arch="mlp",
                n_models=1 if method in ("Model A", "B backbone + A head") else 2,
            )
    return b


def ingredients(b: Builder) -> Builder:
    for dataset in ("cifar10", "cifar100"):
        for arch in ("resnet8", "resnet14", "vit_small"):
            common = {"dataset": dataset, "arch": arch, "init": "shared", "n_models": 3}
            for i in range(3):
                b.add(
                    "ingredients", "Individual", 0.74 + 0.01 * i, model=i, outcome=False, **common
                )
                b.add(
                    "ingredients", "Individual", 0.75, split="val", model=i, outcome=False, **common
                )
                for metric, v in (
                    ("epochs", 12.0),
                    ("best_epoch", 11.0),
                    ("val_gain_last_quarter", 0.001),
                    ("train_seconds", 3.5),
                ):
                    b.add(
                        "ingredients",
                        "Individual",
                        v,
                        split="train",
                        metric=metric,
                        model=i,
                        outcome=False,
                        **common,
                    )
            b.add("ingredients", "pairwise", 0.05, metric="disagreement", outcome=False, **common)
            b.add(
                "ingredients",
                "pairwise",
                4.2,
                split="weights",
                metric="l2_distance",
                outcome=False,
                **common,
            )
    return b


def multitask(b: Builder) -> Builder:
    """The multi-task study: 7 tasks, CART > TIES > TA > WA by 5 points of normalized
    accuracy on every task; CART best at rank 0.2 (inside 8-30 %)."""
    tasks = [f"mt-task{i}" for i in range(7)]
    means = {"Individual": 1.0, "Weight Averaging": 0.66, "Task Arithmetic": 0.71}
    means |= {"TIES": 0.76, "CART": 0.84}
    common = {"arch": "cnn", "seed": 0, "n_models": 7}
    for i, task in enumerate(tasks):
        jitter = 0.002 * i
        for method, v in means.items():
            for metric in ("accuracy", "normalized_accuracy"):
                value = v * 0.9 + jitter if metric == "accuracy" else v + jitter
                b.add(
                    "multitask",
                    method,
                    value,
                    dataset=task,
                    sweep="methods",
                    metric=metric,
                    **common,
                )
        for rank, v in ((0.02, 0.7), (0.05, 0.78), (0.1, 0.83), (0.2, 0.85), (0.5, 0.75)):
            for metric in ("accuracy", "normalized_accuracy"):
                b.add(
                    "multitask",
                    "CART",
                    v * 0.9 + jitter if metric == "accuracy" else v + jitter,
                    dataset=task,
                    sweep="rank",
                    rank_fraction=rank,
                    metric=metric,
                    **common,
                )
    return b


def mergeability(b: Builder) -> Builder:
    """The mergeability study over 7 tasks, every method's accuracy driven by gradient L2
    distance (negative) and TIES's also by other metrics: every claim reproduced."""
    from mergeability_fakes import pair_rows, reproducing, with_fits

    b.rows.extend(with_fits(pair_rows(reproducing)).to_dict("records"))
    return b


def full(b: Builder | None = None) -> Builder:
    """Every study, each shaped so that every claim is reproduced."""
    b = b or Builder()
    for part in (
        ingredients,
        paper_like_wvf,
        cross_task,
        magnitude,
        magnitude_batches,
        weight_stats,
        templates,
        multitask,
        mergeability,
    ):
        part(b)
    return b


def write_arrays(folder: Path) -> Path:
    """The picture arrays the templates study saves: gray 8x8 digits, RGB 32x32 and kernels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    np.savez(
        folder / "templates_digits.npz",
        templates=rng.normal(size=(10, 1, 8, 8)),
        class_means=rng.random((10, 1, 8, 8)),
        merged_halves=rng.normal(size=(5, 1, 8, 8)),
        merged_two=rng.normal(size=(10, 1, 8, 8)),
    )
    np.savez(
        folder / "templates_cifar10.npz",
        templates=rng.normal(size=(12, 3, 16, 16)),
        class_means=rng.random((12, 3, 16, 16)),
    )
    np.savez(folder / "kernels_cifar10_resnet20.npz", grid=rng.normal(size=(27, 45)))
    return folder


@pytest.fixture(scope="session")
def build() -> SimpleNamespace:
    """The builders above, for tests that construct their own results."""
    return SimpleNamespace(
        Builder=Builder,
        wvf=wvf,
        paper_like_wvf=paper_like_wvf,
        magnitude=magnitude,
        magnitude_batches=magnitude_batches,
        weight_stats=weight_stats,
        templates=templates,
        cross_task=cross_task,
        ingredients=ingredients,
        multitask=multitask,
        mergeability=mergeability,
        full=full,
        write_arrays=write_arrays,
    )


@pytest.fixture(scope="session")
def results_all() -> Results:
    return full().results()


@pytest.fixture(scope="session")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One report over every study, drawn once for the figure and HTML tests.

    Warnings raised while drawing are kept so tests can assert there were none.
    """
    import warnings

    from mergelab.report import write_report

    out = tmp_path_factory.mktemp("full_report")
    write_arrays(out / "arrays")
    results = full().results()
    config = {"study": "paper1", "datasets": ["cifar10", "cifar100"], "out": Path("/tmp/x")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_report(results, out, title="Test <report> & co", config=config)
    return SimpleNamespace(
        out=out,
        path=path,
        text=path.read_text(encoding="utf-8"),
        results=results,
        warnings=[str(w.message) for w in caught],
    )
