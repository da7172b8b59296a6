"""Reading the tidy table: pivots, derived baselines, primary metrics, compact tables."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mergelab.report._common import (
    is_fraction,
    method_table,
    normalize_rows,
    order_methods,
    primary_rows,
    study_rows,
)
from mergelab.report.tables import study_tables


def test_normalize_fills_missing_columns_and_coerces() -> None:
    df = normalize_rows(pd.DataFrame({"study": ["x", None], "value": ["0.5", "oops"]}))
    assert df["study"].tolist() == ["x", ""]
    assert df["dataset"].tolist() == ["", ""]
    assert df["value"].iloc[0] == 0.5 and np.isnan(df["value"].iloc[1])
    assert df["n_models"].isna().all()


def test_method_table_averages_repeats_and_derives_perf_ave(build: SimpleNamespace) -> None:
    rows = pd.DataFrame(
        [
            build.row("weights_vs_features", "Uniform Soup", 0.70, seed=0),
            build.row("weights_vs_features", "Uniform Soup", 0.74, seed=1),
            build.row("weights_vs_features", "Individual", 0.60, members="m0"),
            build.row("weights_vs_features", "Individual", 0.66, members="m1"),
        ]
    )
    t = method_table(study_rows(rows, "weights_vs_features"), "test")
    assert len(t) == 1
    assert t["Uniform Soup"].iloc[0] == pytest.approx(0.72)
    assert t["Perf Ave"].iloc[0] == pytest.approx(0.63)
    assert list(t.columns[4:]) == ["Individual", "Perf Ave", "Uniform Soup"][1:]


def test_best_individual_on_test_is_the_model_chosen_on_val(build: SimpleNamespace) -> None:
    rows = pd.DataFrame(
        [
            build.row("weights_vs_features", "Individual", 0.80, members="m0", split="val"),
            build.row("weights_vs_features", "Individual", 0.70, members="m1", split="val"),
            build.row("weights_vs_features", "Individual", 0.60, members="m0", split="test"),
            build.row("weights_vs_features", "Individual", 0.90, members="m1", split="test"),
        ]
    )
    wvf = study_rows(rows, "weights_vs_features")
    assert method_table(wvf, "test")["Best Individual"].iloc[0] == pytest.approx(0.60)
    assert method_table(wvf, "val")["Best Individual"].iloc[0] == pytest.approx(0.80)


def test_study_rows_given_win_over_derived(build: SimpleNamespace) -> None:
    rows = build.wvf_rows({("c10", "r", 3): {"Perf Ave": 0.5, "Best Individual": 0.9}})
    t = method_table(study_rows(rows, "weights_vs_features"), "test")
    assert t["Perf Ave"].iloc[0] == pytest.approx(0.5)
    assert t["Best Individual"].iloc[0] == pytest.approx(0.9)


def test_primary_metric_is_auroc_where_reported(build: SimpleNamespace) -> None:
    rows = normalize_rows(
        pd.DataFrame(
            [
                build.row("s", "m", 0.9, dataset="chest", metric="accuracy"),
                build.row("s", "m", 0.7, dataset="chest", metric="auroc"),
                build.row("s", "m", 0.8, dataset="cifar", metric="accuracy"),
                build.row("s", "m", 0.3, dataset="cifar", metric="nll"),
            ]
        )
    )
    picked = primary_rows(rows)
    assert sorted(zip(picked["dataset"], picked["metric"], strict=True)) == [
        ("chest", "auroc"),
        ("cifar", "accuracy"),
    ]


def test_method_order_follows_the_paper() -> None:
    assert order_methods(["Zeta", "Ens Logits", "Uniform Soup", "Alpha", "Perf Ave"]) == [
        "Perf Ave",
        "Uniform Soup",
        "Ens Logits",
        "Alpha",
        "Zeta",
    ]
    assert order_methods(["Uniform Soup", "Model B", "Model A"], first=("Model A",))[0] == "Model A"


def test_is_fraction() -> None:
    assert is_fraction([0.1, 1.0, np.nan])
    assert not is_fraction([12.0, 75.3])


def test_study_tables_pivot_methods_by_model_count(build: SimpleNamespace) -> None:
    tables = study_tables(build.paper_like_wvf())
    wvf = {t.title: t for t in tables["weights_vs_features"]}
    piv = wvf["cifar10 / vit_tiny: test accuracy (%) by N"].frame
    assert list(piv.columns) == ["N=2", "N=3", "N=5", "N=7", "N=10"]
    assert "Individual" not in piv.index
    assert piv.loc["Uniform Soup", "N=10"] == pytest.approx(16.0)
    assert piv.loc["Ens Logits", "N=2"] == pytest.approx(72.8)
    across = wvf["Test accuracy (%) across datasets, largest N"].frame
    assert "cifar100 / resnet20 (N=10)" in across.columns
    assert across.loc["Greedy Soup", "cifar100 / resnet20 (N=10)"] == pytest.approx(69.5)
    calib = next(t for t in tables["weights_vs_features"] if t.title.startswith("Calibration"))
    assert calib.frame.loc["Ens Logits", ("cifar10 / resnet20", "nll")] == pytest.approx(0.6)
    assert all(not v for k, v in tables.items() if k != "weights_vs_features")


def test_study_tables_for_the_other_studies(build: SimpleNamespace) -> None:
    rows = pd.concat(
        [
            build.cross_task_rows(),
            build.magnitude_rows(),
            build.weight_stats_rows(ratio=1.2),
            build.template_rows(),
        ]
    )
    tables = study_tables(rows)
    ct = tables["cross_task"][0].frame
    assert list(ct.columns) == ["Model A", "Model B", "Uniform Soup"]
    assert ct.loc[("mlp", "mnist", "fashion"), "Uniform Soup"] == pytest.approx(40.0)
    mag = tables["magnitude"][0]
    assert "scaled=all, tensors=all, N=5" in mag.title
    assert mag.frame.loc["Uniform Soup", "x100"] == pytest.approx(65.0)
    ws = tables["weight_stats"][0].frame
    assert ws.loc["fc.weight", "ratio average/predicted"] == pytest.approx(1.2)
    assert ws.loc["fc.weight", "max |w| (models, max)"] == pytest.approx(1.2)
    tp = tables["templates"][0].frame
    assert tp.loc["classifier", ("digits", "linear", "median")] == pytest.approx(0.7)
    assert list(tp.index) == ["classifier", "merged_two_models", "merged_halves"]
    assert "digits / linear: 10" in tables["templates"][0].note
