"""One number, one experiment: the wide frames keep every key column apart."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mergelab.report import Results
from mergelab.report.frames import normalize_rows, varying
from mergelab.report.tables import study_tables
from mergelab.studies.registry import MAGNITUDE, STUDIES, WVF


def test_two_inits_give_two_rows_not_their_mean(build: SimpleNamespace) -> None:
    # The defect this guards against: a shared-start soup (95.9) and an independent-init
    # soup (12.3) were averaged into 54.1, a number no experiment produced.
    b = build.Builder()
    build.wvf(b, {("digits", "mlp", 10): {"Uniform Soup": 0.959}})
    build.wvf(b, {("digits", "mlp", 10): {"Uniform Soup": 0.123}}, init="independent")
    t = b.results().wide(WVF)
    assert len(t) == 2
    assert sorted(t["Uniform Soup"].round(2)) == [0.12, 0.96]
    assert set(t["init"]) == {"shared", "independent"}
    tables = study_tables(b.results())["weights_vs_features"]
    first = tables[0].frame
    assert first.shape[1] == 2 and all("shared" in c or "independent" in c for c in first.columns)
    assert not np.isclose(first.to_numpy(float), 54.1, atol=0.1).any()


def test_seeds_and_bn_modes_are_separate_experiments(build: SimpleNamespace) -> None:
    b = build.Builder()
    for seed in (0, 1):
        build.wvf(b, {("digits", "mlp", 2): {"Uniform Soup": 0.8 + 0.1 * seed}}, seed=seed)
    assert len(b.results().wide(WVF)) == 2
    m = build.Builder()
    build.magnitude(m, bn="running")
    build.magnitude(m, bn="batch")
    t = m.results().wide(MAGNITUDE)
    assert set(t["bn"]) == {"running", "batch"}
    assert not t.duplicated([*MAGNITUDE.keys, "metric"]).any()


def test_rows_that_lack_a_key_are_an_error_not_an_average(build: SimpleNamespace) -> None:
    b = build.Builder()
    build.wvf(b, {("digits", "mlp", 2): {"Uniform Soup": 0.9}})
    build.wvf(b, {("digits", "mlp", 2): {"Uniform Soup": 0.1}}, init="independent")
    rows = b.results().rows.drop(columns=["init"])
    with pytest.raises(ValueError, match="share one experiment"):
        Results(rows).wide(WVF)


def test_normalize_fills_every_key_column() -> None:
    df = normalize_rows(pd.DataFrame([{"study": "magnitude", "value": "0.5"}]))
    for study in STUDIES.values():
        assert set(study.keys) <= set(df.columns)
    assert df.loc[0, "bn"] == "" and np.isnan(df.loc[0, "seed"]) and df.loc[0, "value"] == 0.5


def test_varying() -> None:
    df = pd.DataFrame({"a": [1, 1], "b": [1, 2], "c": ["x", "x"]})
    assert varying(df, ["a", "b", "c", "missing"]) == ["b"]


def test_results_read_back(tmp_path, build: SimpleNamespace) -> None:  # type: ignore[no-untyped-def]
    from mergelab.report import write_all

    r = build.paper_like_wvf(build.Builder()).results()
    write_all(r, tmp_path)
    back = Results.read(tmp_path)
    assert set(back.outcomes) == set(r.outcomes)
    key = r.rows["outcome"].replace("", np.nan).dropna().iloc[0]
    np.testing.assert_array_equal(back.vector(key), r.vector(key))
    pd.testing.assert_frame_equal(back.wide(WVF), r.wide(WVF), check_dtype=False)
