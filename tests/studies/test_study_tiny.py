"""The study end to end on the tiny preset: files, rows keyed by experiment, outcomes that
match their numbers, ingredients that differ, sanity checks that hold, a rerun that trains
nothing and gives the same numbers; on Ray, the same rows; a run that fails is retried,
named, and a rerun trains only it."""

from __future__ import annotations

import base64
import re

import executor_fakes
import pandas as pd
import pytest
from executor_fakes import FlakyTraining

import mergelab.train.pool as pool
import mergelab.train.trainer as trainer
from mergelab.cli import main
from mergelab.errors import MergelabError
from mergelab.report import Results
from mergelab.results import RESULT_COLUMNS
from mergelab.studies import STUDIES, load_config, run_study
from mergelab.train import TrainingError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    paths = run_study("tiny", out, progress=False, workers=2)
    return out, paths


def test_files_and_rows(study):
    _out, paths = study
    assert set(paths) == {"results", "outcomes", "claims", "report", "sanity_failures"}
    assert paths["sanity_failures"] == []
    rows = pd.read_csv(paths["results"], low_memory=False)
    assert list(rows.columns[:9]) == list(RESULT_COLUMNS)
    # multitask and mergeability have their own presets: multitask-quick, mergeability
    assert set(rows.study) == set(STUDIES) - {"multitask", "mergeability", "mergeability_fit"}
    wvf = rows[rows.study == "weights_vs_features"]
    assert set(wvf.n_models) == {2, 3} and set(wvf.seed) == {0, 1}
    assert set(wvf.init) == {"shared", "independent"}
    assert {
        "Uniform Soup",
        "Greedy Soup",
        "Ens Logits",
        "Ens Features",
        "Greedy Ens Logits (own)",
    } <= set(wvf.method)
    acc = rows[rows.metric == "accuracy"].value
    assert acc.between(0, 1).all()
    mags = rows[rows.study == "magnitude"]
    assert set(mags.magnitude) == {1.0, 10.0, 100.0} and set(mags.scaled) == {"all", "first"}
    assert set(mags[mags.arch == "resnet8"].bn) == {"running", "running_c2", "batch"}
    assert set(mags[mags.arch == "linear"].bn) == {"none"}
    assert {"accuracy", "nonfinite"} <= set(mags.metric)
    assert {"Greedy Soup", "Greedy Ens Logits"} <= set(mags.method)
    corr = rows[rows.metric == "template_correlation"].value
    assert corr.between(-1, 1).all()


def test_every_test_accuracy_has_its_outcomes(study):
    out, _ = study
    results = Results.read(out)
    rows = results.rows
    test = rows[
        (rows.metric == "accuracy")
        & (rows.split == "test")
        & ~rows.study.isin(["ingredients", "magnitude_batches"])
    ]
    assert (test.outcome != "").all()
    for _, row in test.sample(200, random_state=0).iterrows():
        assert results.vector(row.outcome).mean() == pytest.approx(row.value, abs=1e-6)


def test_trained_models_that_differ(study):
    out, _ = study
    rows = Results.read(out).rows
    ing = rows[rows.study == "ingredients"]
    acc = ing[(ing.metric == "accuracy") & (ing.split == "test") & (ing.arch == "resnet8")]
    assert acc.value.mean() > 0.5  # learned the task (chance is 0.1)
    dis = ing[ing.metric == "disagreement"]
    assert len(dis) == 6 and (dis.value > 0).all()  # the ingredients are not copies
    assert (ing[ing.metric == "l2_distance"].value > 0).all()


def test_report_is_self_contained_with_claims(study):
    out, paths = study
    html = paths["report"].read_text()
    assert "data:image/png;base64," in html and not re.search(r'src="(?!data:)', html)
    first = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html).group(1)
    assert base64.b64decode(first)[:8] == b"\x89PNG\r\n\x1a\n"
    claims = paths["claims"].read_text()
    assert "Ensembling logits beats the uniform soup" in claims
    assert re.search(r"\*\*(reproduced|contradicted|inconclusive)\*\*", claims)
    assert (out / "arrays" / "templates_digits.npz").is_file()
    assert any((out / "figures").glob("*.png"))


def test_rerun_trains_nothing_and_gives_the_same_numbers(study, monkeypatch):
    out, paths = study
    before = pd.read_csv(paths["results"], low_memory=False)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(trainer, "fit", no_training)
    run_study("tiny", out, progress=False)
    after = pd.read_csv(paths["results"], low_memory=False)
    keep = [
        "study",
        "dataset",
        "arch",
        "init",
        "seed",
        "n_models",
        "method",
        "split",
        "metric",
        "value",
    ]
    pd.testing.assert_frame_equal(before[keep], after[keep])


def test_cli_shows_presets(capsys):
    assert main(["study", "tiny", "--show"]) == 0
    assert "name: tiny" in capsys.readouterr().out
    config, _ = load_config("quick")
    assert config.name == "quick" and "resnet14" in config.archs


FLAKY = "resnet8 on digits, run 2"  # one label, in both seeds


def _checkpoints(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "runs").glob("*.safetensors"))}


def _untimed(path) -> pd.DataFrame:
    rows = pd.read_csv(path, low_memory=False)
    return rows[rows.metric != "train_seconds"].reset_index(drop=True)


def test_ray_gives_the_rows_of_in_process_and_retries_a_failed_run(study, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(executor_fakes)  # Ray workers do not see tests/
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setattr(pool, "_train_one", FlakyTraining(FLAKY, str(marks), 1))
    out = tmp_path / "ray"
    paths = run_study("tiny", out, progress=False, workers=2, executor="ray")
    ray.cloudpickle.unregister_pickle_by_value(executor_fakes)
    local_out, local = study
    pd.testing.assert_frame_equal(_untimed(paths["results"]), _untimed(local["results"]))
    assert _checkpoints(out) == _checkpoints(local_out)
    units = pd.read_csv(out / "units.csv")
    assert (units.status == "done").all() and set(units.kind) == {"train", "evaluate"}
    retried = units[units.attempts > 1]
    assert list(retried.label) == [FLAKY] and list(retried.attempts) == [2]
    assert retried.errors.iloc[0] == f"RuntimeError: {FLAKY}: the node went away"


def test_a_run_that_keeps_failing_is_named_and_a_rerun_trains_only_it(study, tmp_path, monkeypatch):
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setattr(pool, "_train_one", FlakyTraining(FLAKY, str(marks), fails=99))
    out = tmp_path / "resume"
    with pytest.raises(TrainingError, match=rf"^training failed for {FLAKY} .*the node went away"):
        run_study("tiny", out, progress=False, workers=1)
    units = pd.read_csv(out / "units.csv")
    failed = units[units.status == "failed"]
    assert list(failed.label) == [FLAKY, FLAKY] and set(failed.attempts) == {3}
    assert (units[units.label != FLAKY].status == "done").all()  # the others went on
    assert len(units) == 28  # the 26 other training runs finished, and are cached
    monkeypatch.undo()
    paths = run_study("tiny", out, progress=False, workers=1)
    after = pd.read_csv(out / "units.csv")
    # the rows of the 26 finished runs are untouched (same seconds, same pid): not run again
    kept = units[units.label != FLAKY]
    pd.testing.assert_frame_equal(
        after[after.key.isin(kept.key)].reset_index(drop=True).astype(str),
        kept.reset_index(drop=True).astype(str),
    )
    rerun = after[after.label == FLAKY]
    assert list(rerun.status) == ["done", "done"] and list(rerun.attempts) == [1, 1]
    assert (after.status == "done").all() and set(after.kind) == {"train", "evaluate"}
    local_out, local = study
    pd.testing.assert_frame_equal(_untimed(paths["results"]), _untimed(local["results"]))
    assert _checkpoints(out) == _checkpoints(local_out)


def test_a_ray_cluster_that_does_not_answer_is_one_line_and_no_folder(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "never"
    with pytest.raises(MergelabError, match=r"^--address 127.0.0.1:1: no Ray cluster answers"):
        run_study("tiny", out, progress=False, executor="ray", address="127.0.0.1:1")
    assert not out.exists()
