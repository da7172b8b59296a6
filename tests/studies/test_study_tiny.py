"""The study end to end on the tiny preset: files, rows, ranges, and a rerun that trains
nothing."""

from __future__ import annotations

import base64
import re

import pandas as pd
import pytest

import mergelab.train.trainer as trainer
from mergelab.cli import main
from mergelab.results import RESULT_COLUMNS
from mergelab.studies import load_config, run_study

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    paths = run_study("tiny", out, progress=False)
    return out, paths


def test_files_and_rows(study):
    _, paths = study
    assert set(paths) == {"results", "claims", "report"}
    rows = pd.read_csv(paths["results"])
    assert list(rows.columns[:9]) == list(RESULT_COLUMNS)
    assert {
        "weights_vs_features",
        "templates",
        "weight_stats",
        "magnitude",
        "magnitude_batches",
    } <= set(rows.study)
    wvf = rows[rows.study == "weights_vs_features"]
    assert set(wvf.n_models) == {2, 3}
    assert {"Uniform Soup", "Greedy Soup", "Ens Logits", "Ens Features", "Ens Features*"} <= set(
        wvf.method
    )
    acc = rows[rows.metric == "accuracy"].value
    assert acc.between(0, 1).all() and acc.mean() > 0.3  # trained models, not chance (0.1)
    mags = rows[rows.study == "magnitude"]
    assert set(mags.magnitude) == {1.0, 10.0, 100.0} and set(mags.scaled) == {"all", "first"}
    bounds = rows[rows.metric.isin(["max_abs_bound_holds", "variance_bound_holds"])]
    assert len(bounds) and (bounds.value == 1.0).all()  # the inequalities are theorems
    corr = rows[rows.metric == "template_correlation"].value
    assert corr.between(-1, 1).all()


def test_report_is_self_contained_with_claims(study):
    out, paths = study
    html = paths["report"].read_text()
    assert "data:image/png;base64," in html and not re.search(r'src="(?!data:)', html)
    first = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html).group(1)
    assert base64.b64decode(first)[:8] == b"\x89PNG\r\n\x1a\n"
    claims = paths["claims"].read_text()
    assert "Ens Logits beats every soup" in claims
    assert re.search(r"\*\*(reproduced|not reproduced|not measured)\*\*", claims)
    assert (out / "arrays" / "templates_digits.npz").is_file()
    assert any((out / "figures").glob("*.png"))


def test_rerun_reuses_every_run(study, monkeypatch):
    out, _ = study

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(trainer, "fit", no_training)
    run_study("tiny", out, progress=False)


def test_cli_shows_presets(capsys):
    assert main(["study", "tiny", "--show"]) == 0
    assert "name: tiny" in capsys.readouterr().out
    config, _ = load_config("quick")
    assert config.n_models == 10 and set(config.datasets) == {"mnist5k", "digits"}
    assert config.counts() == [2, 3, 5, 7, 10]
    paper, _ = load_config("paper")
    assert "timm:deit_tiny_patch16_224" in paper.archs and paper.device == "cuda"
    vit = paper.training_for("timm:vit_tiny_patch16_224", paper.datasets[0])
    assert vit["pretrain"]["optimizer"] == "adamw" and vit["pretrain"]["epochs"] == 60
