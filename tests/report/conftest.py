"""Constructed results tables for the report tests.

Each builder writes rows in the conventions the studies follow, with values chosen so
that the expected verdicts and numbers can be worked out by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

FACTORS = (1, 2, 5, 10, 20, 50, 70, 90, 100, 110, 130, 150)


def row(study: str, method: str, value: float, **kw: object) -> dict[str, object]:
    """One tidy row with the base columns' defaults filled in."""
    base: dict[str, object] = {
        "study": study,
        "dataset": "cifar10",
        "arch": "resnet20",
        "n_models": 2,
        "method": method,
        "magnitude": 1.0,
        "split": "test",
        "metric": "accuracy",
        "value": value,
    }
    base.update(kw)
    return base


def wvf_rows(
    settings: Mapping[tuple[str, str, int], Mapping[str, float]],
    *,
    val: Mapping[tuple[str, str, int], Mapping[str, float]] | None = None,
    individuals: bool = True,
    metric: str = "accuracy",
) -> pd.DataFrame:
    """weights_vs_features rows: ``settings[(dataset, arch, n)] = {method: test value}``.

    Val rows repeat the test values unless ``val`` overrides them. With ``individuals``,
    "Individual" rows spread +-0.01 around "Perf Ave" are added (one per model), plus
    NLL/ECE rows so calibration tables have data.
    """
    out = []
    for split, table in (("test", settings), ("val", val or settings)):
        for (dataset, arch, n), methods in table.items():
            common = {"dataset": dataset, "arch": arch, "n_models": n, "split": split}
            for method, value in methods.items():
                out.append(
                    row(
                        "weights_vs_features",
                        method,
                        value,
                        metric=metric,
                        params=1000 * (n if method.startswith("Ens") else 1),
                        flops=2000 * (n if method.startswith("Ens") else 1),
                        members=";".join(f"m{i}" for i in range(n)),
                        init="shared",
                        **common,
                    )
                )
                out.append(
                    row("weights_vs_features", method, 0.5 + 0.01 * n, metric="nll", **common)
                )
                out.append(row("weights_vs_features", method, 0.05, metric="ece", **common))
            if individuals and "Perf Ave" in methods:
                spread = np.linspace(-0.01, 0.01, n)
                for i, d in enumerate(spread):
                    out.append(
                        row(
                            "weights_vs_features",
                            "Individual",
                            methods["Perf Ave"] + d,
                            metric=metric,
                            members=f"m{i}",
                            **common,
                        )
                    )
    return pd.DataFrame(out)


def paper_like_wvf() -> pd.DataFrame:
    """Two datasets x (ResNet, ViT) x N in 2..10, shaped like the paper's findings."""
    settings = {}
    val = {}
    for dataset in ("cifar10", "cifar100"):
        for arch in ("resnet20", "vit_tiny"):
            for n in (2, 3, 5, 7, 10):
                vit = arch.startswith("vit")
                us = 0.66 - 0.05 * n if vit else 0.69 - 0.001 * n
                el = 0.72 + 0.004 * n
                m = {
                    "Perf Ave": 0.68,
                    "Best Individual": 0.69,
                    "Uniform Soup": us,
                    "Greedy Soup": 0.695,
                    "Ens Logits": el,
                    "Ens Features": el - 0.004,
                    "Ens Features*": el - 0.02,
                    "Greedy Ens Logits": el - 0.001,
                    "Greedy Ens Features": el - 0.005,
                }
                settings[(dataset, arch, n)] = m
                val[(dataset, arch, n)] = {**m, "Best Individual": 0.70, "Greedy Soup": 0.71}
    return wvf_rows(settings, val=val)


def cross_task_rows(soup: float = 0.40) -> pd.DataFrame:
    out = []
    for a, b in (("mnist", "fashion"), ("fashion", "mnist")):
        for method, v in (("Model A", 0.95), ("Model B", 0.10), ("Uniform Soup", soup)):
            out.append(
                row("cross_task", method, v, dataset=a, other_dataset=b, arch="mlp", n_models=2)
            )
    return pd.DataFrame(out)


def magnitude_rows(*, robust_soup: bool = True, options: bool = True) -> pd.DataFrame:
    """Accuracy against factor; with ``robust_soup`` the soup decays 8x slower."""
    out = []
    combos = [("all", "all")] + ([("first", "all"), ("all", "weights")] if options else [])
    for scaled, tensors in combos:
        for n in (2, 5):
            for f in FACTORS:
                slow, fast = max(0.1, 0.70 - 0.0005 * f), max(0.1, 0.72 - 0.004 * f)
                us, el = (slow, fast) if robust_soup else (fast, slow)
                for method, v in (
                    ("Perf Ave", 0.68 - 0.002 * f),
                    ("Uniform Soup", us),
                    ("Greedy Soup", us + 0.001),
                    ("Ens Logits", el),
                    ("Ens Features", el - 0.002),
                ):
                    out.append(
                        row(
                            "magnitude",
                            method,
                            max(0.05, v),
                            magnitude=float(f),
                            n_models=n,
                            scaled=scaled,
                            tensors=tensors,
                        )
                    )
    return pd.DataFrame(out)


def magnitude_batch_rows() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    out = []
    for f in (1.0, 50.0, 100.0):
        for batch in range(12):
            el = 0.72 - 0.004 * f + rng.normal(0, 0.03)
            us = 0.70 - 0.0005 * f + rng.normal(0, 0.03)
            out.append(row("magnitude_batches", "Ens Logits", el, magnitude=f, batch=batch))
            out.append(row("magnitude_batches", "Uniform Soup", us, magnitude=f, batch=batch))
    return pd.DataFrame(out)


def weight_stats_rows(
    *, ratio: float = 1.04, bounds_hold: bool = True, init: str | None = "independent"
) -> pd.DataFrame:
    """Two models per layer (variances 0.01 and 0.02: prediction 0.0075); average = ratio x."""
    out = []
    extra = {} if init is None else {"init": init}
    for layer in ("conv1.weight", "layer1.0.conv1.weight", "layer1.0.bn1.weight", "fc.weight"):
        common = {"layer": layer, "arch": "resnet20", "magnitude": 1.0, "split": "", **extra}
        for i, (mx, var) in enumerate(((1.0, 0.01), (1.2, 0.02))):
            out.append(row("weight_stats", "model", mx, metric="max_abs", model=i, **common))
            out.append(row("weight_stats", "model", var, metric="variance", model=i, **common))
        holds = 1.0 if bounds_hold else 0.0
        for metric, v in (
            ("max_abs", 0.8),
            ("variance", 0.0075 * ratio),
            ("predicted_variance", 0.0075),
            ("max_abs_bound_holds", 1.0),
            ("variance_bound_holds", holds if layer == "fc.weight" else 1.0),
        ):
            out.append(row("weight_stats", "average", v, metric=metric, **common))
    return pd.DataFrame(out)


def template_rows(classifier: float = 0.7) -> pd.DataFrame:
    out = []
    for c in range(10):
        for method, v in (
            ("classifier", classifier + 0.01 * (c - 4.5)),
            ("merged_halves", 0.5),
            ("merged_two_models", 0.6),
        ):
            out.append(
                row(
                    "templates",
                    method,
                    v,
                    dataset="digits",
                    arch="linear",
                    metric="template_correlation",
                    n_models=np.nan,
                    **{"class": c},
                )
            )
    return pd.DataFrame(out)


def full_rows() -> pd.DataFrame:
    """Every study, each shaped so that every claim is reproduced."""
    return pd.concat(
        [
            paper_like_wvf(),
            cross_task_rows(),
            magnitude_rows(),
            magnitude_batch_rows(),
            weight_stats_rows(),
            template_rows(),
        ],
        ignore_index=True,
    )


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
def rows_all() -> pd.DataFrame:
    return full_rows()


@pytest.fixture(scope="session")
def build() -> SimpleNamespace:
    """The row builders above, for tests that construct their own tables."""
    return SimpleNamespace(
        row=row,
        wvf_rows=wvf_rows,
        paper_like_wvf=paper_like_wvf,
        cross_task_rows=cross_task_rows,
        magnitude_rows=magnitude_rows,
        magnitude_batch_rows=magnitude_batch_rows,
        weight_stats_rows=weight_stats_rows,
        template_rows=template_rows,
        full_rows=full_rows,
        write_arrays=write_arrays,
    )


@pytest.fixture(scope="session")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One report over every study, drawn once for the figure and HTML tests.

    Warnings raised while drawing are kept so tests can assert there were none.
    """
    import warnings

    from mergelab.report import write_report

    out = tmp_path_factory.mktemp("full_report")
    write_arrays(out / "arrays")
    rows = full_rows()
    config = {"study": "paper1", "datasets": ["cifar10", "cifar100"], "out": Path("/tmp/x")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_report(rows, out, title="Test <report> & co", config=config)
    return SimpleNamespace(
        out=out,
        path=path,
        text=path.read_text(encoding="utf-8"),
        rows=rows,
        warnings=[str(w.message) for w in caught],
    )
