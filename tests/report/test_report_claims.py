"""Each claim's verdict both ways, and "not measured" without data; numbers come from rows."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from mergelab.report.claims import (
    CLAIMS,
    NOT_MEASURED,
    NOT_REPRODUCED,
    REPRODUCED,
    ClaimSpec,
    evaluate_claims,
    write_claims_md,
)

SPECS = {spec.key: spec for spec in CLAIMS}


def verdict_of(key: str, rows: pd.DataFrame):
    return SPECS[key](rows)


def test_registry_has_the_papers_findings() -> None:
    assert list(SPECS) == [
        "ens_logits_beats_soups",
        "greedy_soup_not_below_best_individual",
        "vit_uniform_soup_degrades",
        "merging_robust_to_magnitude",
        "averaging_shrinks_weights",
        "classifier_templates",
        "gap_grows_with_n",
        "ens_features_matches_logits",
        "cross_task_merging_fails",
    ]


def test_paper_like_rows_reproduce_every_claim(rows_all: pd.DataFrame) -> None:
    claims = evaluate_claims(rows_all)
    assert [c.verdict for c in claims] == [REPRODUCED] * len(CLAIMS), [
        (c.key, c.measured) for c in claims if c.verdict != REPRODUCED
    ]
    for c in claims:
        assert c.details is not None and not c.details.empty
        assert re.search(r"\d", c.measured)


@pytest.mark.parametrize("rows", [pd.DataFrame(), None], ids=["empty", "none"])
def test_no_rows_means_not_measured_everywhere(rows: pd.DataFrame | None) -> None:
    claims = evaluate_claims(rows)
    assert {c.verdict for c in claims} == {NOT_MEASURED}
    assert all(c.details is None for c in claims)


def test_a_study_present_does_not_measure_claims_of_another(build: SimpleNamespace) -> None:
    claims = {c.key: c for c in evaluate_claims(build.template_rows())}
    assert claims["classifier_templates"].verdict == REPRODUCED
    others = [c.verdict for k, c in claims.items() if k != "classifier_templates"]
    assert set(others) == {NOT_MEASURED}


# -- (a) Ens Logits beats every soup --------------------------------------------------------


def test_ens_logits_beats_soups_both_ways(build: SimpleNamespace) -> None:
    hold = build.wvf_rows(
        {
            ("c10", "resnet", 2): {"Uniform Soup": 0.70, "Greedy Soup": 0.71, "Ens Logits": 0.75},
            ("c10", "resnet", 5): {"Uniform Soup": 0.69, "Greedy Soup": 0.72, "Ens Logits": 0.78},
        }
    )
    c = verdict_of("ens_logits_beats_soups", hold)
    assert c.verdict == REPRODUCED
    assert "2/2" in c.measured and "+4.00" in c.measured and "+5.00" in c.measured
    assert c.details["holds"].tolist() == [True, True]

    fail = build.wvf_rows(
        {
            ("c10", "resnet", 2): {"Uniform Soup": 0.70, "Greedy Soup": 0.71, "Ens Logits": 0.75},
            ("c10", "resnet", 5): {"Uniform Soup": 0.69, "Greedy Soup": 0.72, "Ens Logits": 0.70},
        }
    )
    c = verdict_of("ens_logits_beats_soups", fail)
    assert c.verdict == NOT_REPRODUCED
    assert "1/2 (50%)" in c.measured and "-2.00" in c.measured and "N=5" in c.measured


def test_ens_logits_claim_not_measured_without_ensemble(build: SimpleNamespace) -> None:
    rows = build.wvf_rows({("c10", "resnet", 2): {"Uniform Soup": 0.7, "Greedy Soup": 0.7}})
    assert verdict_of("ens_logits_beats_soups", rows).verdict == NOT_MEASURED


def test_values_in_percent_are_read_as_points(build: SimpleNamespace) -> None:
    rows = build.wvf_rows({("c10", "resnet", 2): {"Uniform Soup": 70.0, "Ens Logits": 75.0}})
    c = verdict_of("ens_logits_beats_soups", rows)
    assert c.verdict == REPRODUCED and "+5.00" in c.measured


def test_multilabel_datasets_are_judged_on_auroc(build: SimpleNamespace) -> None:
    acc = build.wvf_rows({("chestx", "densenet", 2): {"Uniform Soup": 0.9, "Ens Logits": 0.8}})
    auroc = build.wvf_rows(
        {("chestx", "densenet", 2): {"Uniform Soup": 0.70, "Ens Logits": 0.74}}, metric="auroc"
    )
    c = verdict_of("ens_logits_beats_soups", pd.concat([acc, auroc]))
    assert c.verdict == REPRODUCED
    assert c.details["metric"].tolist() == ["auroc"]


# -- (b) Greedy soup never below best ingredient on val ------------------------------------


def _val_rows(build: SimpleNamespace, greedy: float, best: float | None) -> pd.DataFrame:
    methods = {"Greedy Soup": greedy, "Perf Ave": 0.70}
    if best is not None:
        methods["Best Individual"] = best
    return build.wvf_rows({("c10", "resnet", 3): methods})


def test_greedy_soup_not_below_best_both_ways(build: SimpleNamespace) -> None:
    c = verdict_of("greedy_soup_not_below_best_individual", _val_rows(build, 0.73, 0.72))
    assert c.verdict == REPRODUCED and "+1.00" in c.measured
    c = verdict_of("greedy_soup_not_below_best_individual", _val_rows(build, 0.71, 0.72))
    assert c.verdict == NOT_REPRODUCED and "-1.00" in c.measured and "0/1" in c.measured


def test_best_individual_is_derived_from_individual_rows(build: SimpleNamespace) -> None:
    # Individuals on val are 0.69, 0.70, 0.71: the best is 0.71, above the soup's 0.705.
    c = verdict_of("greedy_soup_not_below_best_individual", _val_rows(build, 0.705, None))
    assert c.verdict == NOT_REPRODUCED
    assert "-0.50" in c.measured
    assert c.details["Best Individual"].iloc[0] == pytest.approx(0.71)


def test_greedy_claim_not_measured_without_greedy_soup(build: SimpleNamespace) -> None:
    rows = build.wvf_rows({("c10", "resnet", 3): {"Uniform Soup": 0.7, "Perf Ave": 0.7}})
    assert verdict_of("greedy_soup_not_below_best_individual", rows).verdict == NOT_MEASURED


# -- (c) ViT uniform soups degrade -----------------------------------------------------------


def _vit_rows(build: SimpleNamespace, arch: str, soup_large: float) -> pd.DataFrame:
    return build.wvf_rows(
        {
            ("tiny", arch, 2): {"Uniform Soup": 0.60, "Perf Ave": 0.65},
            ("tiny", arch, 5): {"Uniform Soup": 0.40, "Perf Ave": 0.66},
            ("tiny", arch, 10): {"Uniform Soup": soup_large, "Perf Ave": 0.66},
        }
    )


def test_vit_soup_degradation_both_ways(build: SimpleNamespace) -> None:
    c = verdict_of("vit_uniform_soup_degrades", _vit_rows(build, "deit_tiny_patch16", 0.10))
    assert c.verdict == REPRODUCED
    assert "60.00 (N=2) -> 10.00 (N=10)" in c.measured and "Perf Ave 66.00" in c.measured
    c = verdict_of("vit_uniform_soup_degrades", _vit_rows(build, "ViT-B-16", 0.62))
    assert c.verdict == NOT_REPRODUCED and "0/1" in c.measured


def test_vit_soup_below_small_n_but_not_below_average_is_not_reproduced(
    build: SimpleNamespace,
) -> None:
    rows = build.wvf_rows(
        {
            ("tiny", "vit_s", 2): {"Uniform Soup": 0.80, "Perf Ave": 0.65},
            ("tiny", "vit_s", 10): {"Uniform Soup": 0.70, "Perf Ave": 0.66},
        }
    )
    c = verdict_of("vit_uniform_soup_degrades", rows)
    assert c.verdict == NOT_REPRODUCED
    assert c.details["below_small_n"].tolist() == [True]
    assert c.details["below_perf_ave"].tolist() == [False]


def test_vit_claim_not_measured_without_vits(build: SimpleNamespace) -> None:
    c = verdict_of("vit_uniform_soup_degrades", _vit_rows(build, "resnet50", 0.10))
    assert c.verdict == NOT_MEASURED


# -- (d) Merging more robust to magnitude ---------------------------------------------------


def _magnitude(build: SimpleNamespace, us: tuple, el: tuple, **kw: object) -> pd.DataFrame:
    rows = []
    for f, u, e in zip((1.0, 50.0, 100.0), us, el, strict=True):
        rows.append(build.row("magnitude", "Uniform Soup", u, magnitude=f, **kw))
        rows.append(build.row("magnitude", "Ens Logits", e, magnitude=f, **kw))
    return pd.DataFrame(rows)


def test_magnitude_robustness_both_ways(build: SimpleNamespace) -> None:
    robust = _magnitude(build, (0.70, 0.68, 0.66), (0.72, 0.40, 0.20))
    c = verdict_of("merging_robust_to_magnitude", robust)
    assert c.verdict == REPRODUCED
    assert "2/2" in c.measured and "3.00" in c.measured and "42.00" in c.measured

    fragile = _magnitude(build, (0.72, 0.40, 0.20), (0.70, 0.68, 0.66))
    c = verdict_of("merging_robust_to_magnitude", fragile)
    assert c.verdict == NOT_REPRODUCED
    assert "0/2" in c.measured and "42.00" in c.measured


def test_magnitude_verdict_uses_default_options_when_present(build: SimpleNamespace) -> None:
    default = _magnitude(build, (0.70, 0.68, 0.66), (0.72, 0.40, 0.20), scaled="all", tensors="all")
    other = _magnitude(build, (0.72, 0.10, 0.10), (0.70, 0.69, 0.69), scaled="first", tensors="all")
    c = verdict_of("merging_robust_to_magnitude", pd.concat([default, other]))
    assert c.verdict == REPRODUCED and "scaled=all, tensors=all" in c.measured
    c = verdict_of("merging_robust_to_magnitude", other)
    assert c.verdict == NOT_REPRODUCED and "all options present" in c.measured


def test_magnitude_claim_not_measured_without_large_factors(build: SimpleNamespace) -> None:
    rows = pd.DataFrame(
        [
            build.row("magnitude", m, 0.7, magnitude=f)
            for f in (1.0, 10.0)
            for m in ("Uniform Soup", "Ens Logits")
        ]
    )
    assert verdict_of("merging_robust_to_magnitude", rows).verdict == NOT_MEASURED


# -- (e) Averaging shrinks max |w| and variance --------------------------------------------


def test_weight_stats_both_ways(build: SimpleNamespace) -> None:
    c = verdict_of("averaging_shrinks_weights", build.weight_stats_rows(ratio=1.04))
    assert c.verdict == REPRODUCED
    assert "4/4" in c.measured and "median 1.040" in c.measured

    c = verdict_of("averaging_shrinks_weights", build.weight_stats_rows(bounds_hold=False))
    assert c.verdict == NOT_REPRODUCED and "variance bound holds in 3/4" in c.measured

    c = verdict_of("averaging_shrinks_weights", build.weight_stats_rows(ratio=2.0))
    assert c.verdict == NOT_REPRODUCED and "median 2.000" in c.measured


def test_shared_init_ratio_is_reported_but_not_judged(build: SimpleNamespace) -> None:
    c = verdict_of("averaging_shrinks_weights", build.weight_stats_rows(ratio=2.0, init="shared"))
    assert c.verdict == REPRODUCED
    assert "not checked" in c.measured and "shared init: median 2.000" in c.measured


def test_bounds_are_derived_when_the_study_wrote_none(build: SimpleNamespace) -> None:
    rows = build.weight_stats_rows()
    rows = rows[~rows["metric"].str.endswith("_bound_holds")]
    c = verdict_of("averaging_shrinks_weights", rows)
    assert c.verdict == REPRODUCED and "max |w| bound holds in 4/4" in c.measured
    bigger = rows.copy()
    bigger.loc[(bigger["method"] == "average") & (bigger["metric"] == "max_abs"), "value"] = 1.5
    c = verdict_of("averaging_shrinks_weights", bigger)
    assert c.verdict == NOT_REPRODUCED and "max |w| bound holds in 0/4" in c.measured


def test_weight_stats_not_measured_without_rows(build: SimpleNamespace) -> None:
    assert verdict_of("averaging_shrinks_weights", build.template_rows()).verdict == NOT_MEASURED


# -- (f) Classifier templates ---------------------------------------------------------------


def test_templates_both_ways(build: SimpleNamespace) -> None:
    c = verdict_of("classifier_templates", build.template_rows(classifier=0.7))
    assert c.verdict == REPRODUCED and "digits: 0.700 (10 classes)" in c.measured
    assert "merged_halves: median 0.500" in c.measured
    c = verdict_of("classifier_templates", build.template_rows(classifier=0.3))
    assert c.verdict == NOT_REPRODUCED and "0.300" in c.measured


def test_templates_not_measured_without_classifier_rows(build: SimpleNamespace) -> None:
    rows = build.template_rows()
    rows = rows[rows["method"] != "classifier"]
    assert verdict_of("classifier_templates", rows).verdict == NOT_MEASURED


# -- (g) Gap grows with N -------------------------------------------------------------------


def _gap_rows(build: SimpleNamespace, gaps: tuple[float, float, float]) -> pd.DataFrame:
    return build.wvf_rows(
        {
            ("c10", "resnet", n): {"Uniform Soup": 0.70, "Ens Logits": 0.70 + g / 100}
            for n, g in zip((2, 5, 10), gaps, strict=True)
        }
    )


def test_gap_slope_both_ways(build: SimpleNamespace) -> None:
    # Least squares through (2, 1), (5, 3), (10, 5): slope 16 / 32.667 = 0.490.
    c = verdict_of("gap_grows_with_n", _gap_rows(build, (1.0, 3.0, 5.0)))
    assert c.verdict == REPRODUCED and "+0.490" in c.measured and "1/1" in c.measured
    assert c.details["slope_points_per_model"].iloc[0] == pytest.approx(16 / (98 / 3))
    c = verdict_of("gap_grows_with_n", _gap_rows(build, (5.0, 3.0, 1.0)))
    assert c.verdict == NOT_REPRODUCED and "-0.490" in c.measured


def test_gap_not_measured_with_one_model_count(build: SimpleNamespace) -> None:
    rows = build.wvf_rows({("c10", "resnet", 5): {"Uniform Soup": 0.7, "Ens Logits": 0.8}})
    assert verdict_of("gap_grows_with_n", rows).verdict == NOT_MEASURED


# -- (h) Ens Features matches Ens Logits ----------------------------------------------------


def test_features_match_logits_both_ways(build: SimpleNamespace) -> None:
    def rows(diffs: tuple[float, ...]) -> pd.DataFrame:
        return build.wvf_rows(
            {
                ("c10", "resnet", n): {"Ens Logits": 0.80, "Ens Features": 0.80 + d / 100}
                for n, d in zip((2, 3, 5, 10), diffs, strict=True)
            }
        )

    c = verdict_of("ens_features_matches_logits", rows((-0.5, -0.5, 0.5, -0.5)))
    assert c.verdict == REPRODUCED and "4/4" in c.measured and "0.50" in c.measured
    c = verdict_of("ens_features_matches_logits", rows((-0.5, -3.0, 0.5, -3.0)))
    assert c.verdict == NOT_REPRODUCED
    assert "2/4 (50%)" in c.measured and "largest -3.00" in c.measured


def test_features_claim_not_measured_without_feature_ensemble(build: SimpleNamespace) -> None:
    rows = build.wvf_rows({("c10", "resnet", 2): {"Ens Logits": 0.8}})
    assert verdict_of("ens_features_matches_logits", rows).verdict == NOT_MEASURED


# -- (i) Cross-task merging ------------------------------------------------------------------


def test_cross_task_both_ways(build: SimpleNamespace) -> None:
    c = verdict_of("cross_task_merging_fails", build.cross_task_rows(soup=0.40))
    assert c.verdict == REPRODUCED and "2/2" in c.measured and "55.00" in c.measured
    c = verdict_of("cross_task_merging_fails", build.cross_task_rows(soup=0.97))
    assert c.verdict == NOT_REPRODUCED and "0/2" in c.measured and "-2.00" in c.measured
    assert verdict_of("cross_task_merging_fails", build.template_rows()).verdict == NOT_MEASURED


# -- robustness and claims.md --------------------------------------------------------------


def test_a_check_that_raises_reads_not_measured_with_the_error() -> None:
    def broken(rows: pd.DataFrame):
        raise ValueError("bad column")

    c = ClaimSpec("broken", "A broken check.", "", broken)(pd.DataFrame())
    assert c.verdict == NOT_MEASURED
    assert "ValueError: bad column" in c.measured


def _table_rows(text: str) -> list[list[str]]:
    lines = text.splitlines()
    start = lines.index("| Finding | Measured here | Verdict |")
    assert lines[start + 1] == "|---|---|---|"
    body = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        body.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return body


def test_claims_md_has_one_table_row_per_claim(rows_all: pd.DataFrame, tmp_path: Path) -> None:
    claims = evaluate_claims(rows_all)
    path = write_claims_md(claims, tmp_path / "claims.md")
    text = path.read_text()
    body = _table_rows(text)
    assert len(body) == len(claims)
    assert all(len(cells) == 3 for cells in body)  # "|w|" in a statement is escaped
    assert [cells[2] for cells in body] == [f"**{c.verdict}**" for c in claims]
    for c in claims:
        assert f"## {c.key}" in text
    assert 'honest "not reproduced" is a result' in text
    assert not list(tmp_path.glob(".*tmp"))


def test_claims_md_with_mixed_verdicts(build: SimpleNamespace, tmp_path: Path) -> None:
    rows = pd.concat([build.cross_task_rows(soup=0.97), build.template_rows()])
    claims = evaluate_claims(rows)
    body = _table_rows(write_claims_md(claims, tmp_path / "claims.md").read_text())
    verdicts = [cells[2] for cells in body]
    assert verdicts.count(f"**{NOT_REPRODUCED}**") == 1
    assert verdicts.count(f"**{REPRODUCED}**") == 1
    assert verdicts.count(f"**{NOT_MEASURED}**") == len(claims) - 2
