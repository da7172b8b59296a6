"""``mergelab study``: dry run, --show, errors and exit statuses (nothing is trained)."""

from __future__ import annotations

from pathlib import Path

import pytest

import mergelab.studies as studies
from mergelab.cli import main
from mergelab.studies import load_config
from mergelab.studies.config import preset_path
from mergelab.study_cli import SANITY_EXIT, auto_workers


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def no_run(*args, **kwargs):
        raise AssertionError("--dry-run ran the study")

    monkeypatch.setattr(studies, "run_study", no_run)
    assert main(["study", "tiny", "--dry-run", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    totals = [line for line in out.splitlines() if line.startswith("total:")]
    assert len(totals) == 1 and "training runs" in totals[0] and "GPU hours" in totals[0]
    assert list(tmp_path.iterdir()) == []


def test_show_prints_yaml_that_loads(tmp_path, capsys):
    for preset in ("tiny", "paper"):
        assert main(["study", preset, "--show"]) == 0
        path = tmp_path / f"{preset}.yaml"
        path.write_text(capsys.readouterr().out)
        config, _ = load_config(path)
        assert config == load_config(preset)[0]


def test_bad_preset_is_one_clear_line_and_status_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["study", "no-such-preset", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no such study config" in err and "paper" in err


def test_bad_workers_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["study", "tiny", "--workers", "0"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        "mergelab study: error: argument --workers: expected 'auto' or a positive number, got "
        "'0' (see mergelab study --help)\n"
    )  # one line, like every other error


def _fake_run(calls: list, failures: list[str]):
    def run(config, out, *, progress=True, workers=1, **executor):
        calls.append({"config": config, "out": Path(out), "workers": workers, **executor})
        base = Path(out)
        return {
            "results": base / "results.csv",
            "outcomes": base / "outcomes.npz",
            "claims": base / "claims.md",
            "report": base / "report.html",
            "sanity_failures": failures,
        }

    return run


def test_sanity_failure_exits_3_with_one_line(tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(studies, "run_study", _fake_run(calls, ["greedy_ge_best", "max_abs"]))
    out = tmp_path / "o"
    rc = main(["study", "tiny", "--out", str(out), "--workers", "2", "--no-progress"])
    assert rc == SANITY_EXIT == 3
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "greedy_ge_best" in err[0] and "max_abs" in err[0]
    assert str(out / "report.html") in captured.out  # the report is still written and named
    assert "sanity_failures" not in captured.out
    assert calls[0]["workers"] == 2 and calls[0]["out"] == out


def test_clean_run_exits_0_and_auto_workers(tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(studies, "run_study", _fake_run(calls, []))
    assert main(["study", "tiny", "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().err == ""
    assert calls[0]["workers"] == auto_workers(calls[0]["config"].device)
    assert auto_workers("cuda") == 1 and auto_workers("cuda:1") == 1
    assert 1 <= auto_workers("cpu") <= 4


def test_help_explains_presets_outputs_reruns_and_workers(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("preset", "report.html", "results.csv", "rerun", "--dry-run", "identical"):
        assert words in text


def test_help_gives_the_presets_real_durations(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "tiny about a minute" in text and "quick (the default)" in text
    assert "about 10 minutes on 2 CPU cores" in text
    assert "seconds" not in text and "7 minutes" not in text
    assert "missing" in text  # --dry-run lists paths that are not there


def test_dry_run_checks_the_config_first(tmp_path, monkeypatch, capsys):
    def no_plan(config):
        raise AssertionError("planned a config that does not check")

    monkeypatch.setattr("mergelab.studies.plan.plan_study", no_plan)
    config = tmp_path / "bad.yaml"
    config.write_text(
        preset_path("tiny")
        .read_text()
        .replace("archs: [linear, resnet8]", "archs: [linear, resnet8, resnet9]")
    )
    assert main(["study", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "archs[2]" in err[0] and "resnet9" in err[0]


def test_executor_options_reach_the_study_and_address_needs_ray(tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(studies, "run_study", _fake_run(calls, []))
    out = str(tmp_path / "o")
    args = ["study", "tiny", "--out", out, "--executor", "ray", "--address", "auto"]
    assert main([*args, "--units-per-gpu", "4", "--workers", "3"]) == 0
    assert {k: calls[0][k] for k in ("executor", "address", "units_per_gpu", "workers")} == {
        "executor": "ray",
        "address": "auto",
        "units_per_gpu": 4,
        "workers": 3,
    }
    capsys.readouterr()
    monkeypatch.undo()  # the real study: refused before any folder or training
    assert main(["study", "tiny", "--out", out, "--address", "auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mergelab: error: --address is for --executor ray"]
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        main(["study", "tiny", "--units-per-gpu", "0"])
    assert "--units-per-gpu: expected a positive number, got '0'" in capsys.readouterr().err
