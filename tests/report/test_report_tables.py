"""The report's tables: one per study part, numbers as in the rows, percent where stored as
fractions, the paper's method order, the primary metric per dataset."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from mergelab.report import Results, study_tables
from mergelab.report.frames import is_fraction, order_methods
from mergelab.studies.registry import STUDIES, WVF


def test_every_study_has_tables(results_all: Results) -> None:
    tables = study_tables(results_all)
    assert set(tables) == set(STUDIES)
    assert all(tables[name] for name in STUDIES), {k: len(v) for k, v in tables.items()}


def test_wvf_by_n_table_holds_the_rows_values(build: SimpleNamespace) -> None:
    b = build.wvf(
        build.Builder(),
        {
            ("digits", "mlp", n): {"Uniform Soup": 0.5 + 0.1 * i, "Ens Logits": 0.9}
            for i, n in enumerate((2, 5))
        },
    )
    by_n = next(t for t in study_tables(b.results())["weights_vs_features"] if "by N" in t.title)
    assert by_n.title == "digits / mlp: test accuracy (%) by N"
    assert list(by_n.frame.columns) == ["N=2", "N=5"]
    assert by_n.frame.loc["Uniform Soup"].tolist() == pytest.approx([50.0, 60.0])


def test_primary_metric_is_auroc_where_reported(build: SimpleNamespace) -> None:
    b = build.Builder()
    for method, v in (("Uniform Soup", 0.7), ("Ens Logits", 0.8)):
        b.add(
            "weights_vs_features", method, v, dataset="chestxray14", metric="auroc", init="shared"
        )
        b.add(
            "weights_vs_features",
            method,
            0.99,
            dataset="chestxray14",
            metric="accuracy",
            init="shared",
            outcome=False,
        )
    t = b.results().wide(WVF)
    assert set(t["metric"]) == {"auroc"}
    assert t["Ens Logits"].tolist() == [0.8]


def test_ingredients_table(results_all: Results) -> None:
    (table,) = study_tables(results_all)["ingredients"]
    f = table.frame
    assert {"test acc mean", "disagreement (%)", "L2 distance", "epochs"} <= set(f.columns)
    assert f["test acc mean"].tolist() == pytest.approx([75.0] * len(f))
    assert f["disagreement (%)"].tolist() == pytest.approx([5.0] * len(f))


def test_templates_table_shows_the_control(results_all: Results) -> None:
    (table,) = study_tables(results_all)["templates"]
    methods = table.frame.index.get_level_values("method").tolist()
    assert methods[:2] == ["classifier", "grand_mean"]
    assert table.frame.loc[("digits", "grand_mean"), "classes identified (%)"] == pytest.approx(
        10.0
    )


def test_method_order_follows_the_paper() -> None:
    assert order_methods(["Ens Logits", "zzz", "Uniform Soup", "Perf Ave", "aaa"]) == [
        "Perf Ave",
        "Uniform Soup",
        "Ens Logits",
        "aaa",
        "zzz",
    ]


def test_is_fraction() -> None:
    assert is_fraction([0.1, 0.9, float("nan")]) and not is_fraction([0.5, 75.0])
    assert is_fraction(pd.Series([], dtype=float))
