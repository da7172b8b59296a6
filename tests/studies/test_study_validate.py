"""A study config is checked before anything runs: a bad field, arch, dataset, checkpoint
or output folder stops ``mergelab study`` at once (exit status 2, one line naming the field
or file), with nothing trained and no output folder; ``--dry-run`` lists missing paths."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

import mergelab.studies.plan as plan_module
from mergelab.cli import main
from mergelab.errors import ConfigError, MergeError
from mergelab.studies import load_config
from mergelab.studies.config import StudyConfig, preset_path
from mergelab.studies.validate import check_dry_run, check_study, inspect_study


@pytest.fixture(autouse=True)
def _nothing_trains(nothing_trains):
    """Every test here: the config is checked before anything trains."""


def _tiny() -> dict[str, Any]:
    return yaml.safe_load(preset_path("tiny").read_text())


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *head, last = dotted.split("/")
    for key in head:
        data = data.setdefault(key, {})
    data[last] = value


def _write(tmp_path: Path, edits: dict[str, Any], drop: tuple[str, ...] = ()) -> Path:
    data = copy.deepcopy(_tiny())
    for dotted in drop:
        *head, last = dotted.split("/")
        section = data
        for key in head:
            section = section[key]
        section.pop(last, None)
    for dotted, value in edits.items():
        _set(data, dotted, value)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run(path: Path | str, out: Path, capsys, *extra: str) -> tuple[int, list[str]]:
    rc = main(["study", str(path), "--out", str(out), "--workers", "1", "--no-progress", *extra])
    return rc, capsys.readouterr().err.strip().splitlines()


# Problems found when the study's recipes, archs and paths are checked (check_study): one
# line that names the field.
CHECKED = {
    "unknown arch in archs": ({"archs": ["linear", "resnet8", "nosucharch"]}, (), "archs[2]"),
    "unknown templates arch": ({"templates/arch": "nope"}, (), "templates.arch"),
    "templates arch not linear": ({"templates/arch": "mlp"}, (), "templates.arch"),
    "unknown magnitude target arch": (
        {"magnitude/targets": [["digits", "linear"], ["digits", "nope"]]},
        (),
        "magnitude.targets[1][1]",
    ),
    "unknown independent arch": ({"independent/archs": ["nope"]}, (), "independent.archs[0]"),
    "unknown torchvision model": ({"archs": ["linear", "resnet8", "tv:resnet181"]}, (), "archs[2]"),
    "unknown cross-task dataset": (
        {"cross_task/pairs": [["digits", "nodata"]]},
        (),
        "cross_task.pairs[0][1]",
    ),
    "path to a built-in dataset": ({"datasets": ["digits:/x"]}, (), "datasets[0]"),
    "on-disk dataset without path": ({"datasets": ["cifar10"]}, (), "datasets[0]"),
    "unknown training field": ({"training/train/lrr": 0.1}, (), "training.train.lrr"),
    "unknown arch training field": (
        {"arch_training": {"resnet8": {"train": {"lrr": 0.1}}}},
        (),
        "arch_training.resnet8.train.lrr",
    ),
    "negative lr": ({"training/train/lr": -1}, (), "training.train.lr"),
    "negative independent lr": ({"independent/train/lr": -1}, (), "independent.train.lr"),
    "unknown recipe field": (
        {"dataset_training": {"digits": {"haed": "keep"}}},
        (),
        "dataset_training.digits.haed",
    ),
    "field the study sets": ({"training/seed": 3}, (), "training.seed"),
    "init and pretrain": ({"training/init": "x.safetensors"}, (), "training.init"),
}

# Problems in the config's own values (StudyConfig).
STRUCTURAL = {
    "no archs": ({"archs": []}, (), "archs: empty"),
    "no datasets": ({"datasets": []}, (), "datasets: empty"),
    "model counts below 2": ({"model_counts": [0, 1]}, (), "model_counts: 0, 1"),
    "model count above n_models": ({"model_counts": [2, 5]}, (), "model_counts: 5"),
    "negative seed": ({"seeds": [-1, 0]}, (), "seeds: -1"),
    "negative factor": (
        {"magnitude/factors": [1, -5], "magnitude/batch_factors": [1]},
        (),
        "magnitude.factors: -5",
    ),
    "magnitude count above n_models": ({"magnitude/n_models": [2, 5]}, (), "magnitude.n_models"),
    "magnitude count below 2": ({"magnitude/n_models": [1, 2]}, (), "magnitude.n_models"),
    "batch factor not swept": ({"magnitude/batch_factors": [1, 7]}, (), "magnitude.batch_factors"),
    "pair of one dataset": ({"cross_task/pairs": [["digits", "digits"]]}, (), "cross_task.pairs"),
    "override of no dataset": (
        {"dataset_training": {"cifar10:/x": {"train": {"lr": 0.1}}}},
        (),
        "dataset_training.cifar10:/x",
    ),
    "override of no arch": ({"arch_training": {"resnet9": {}}}, (), "arch_training.resnet9"),
    "kernels of an untrained arch": (
        {"templates/kernels_arch": "cnn"},
        (),
        "templates.kernels_arch",
    ),
    "empty independent datasets": ({"independent/datasets": []}, (), "independent.datasets"),
    "one model": ({"n_models": 1, "model_counts": [2]}, (), "n_models"),
}


@pytest.mark.parametrize("case", list(CHECKED) + list(STRUCTURAL))
def test_problem_is_one_line_naming_file_and_field_before_anything(case, tmp_path, capsys):
    edits, drop, field = {**CHECKED, **STRUCTURAL}[case]
    path = _write(tmp_path, edits, drop)
    out = tmp_path / "out"
    rc, err = _run(path, out, capsys)
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"mergelab: error: {path}: {field}"), err
    assert not out.exists()


def test_problems_are_also_errors_in_a_dry_run(tmp_path, capsys):
    path = _write(tmp_path, {"magnitude/targets": [["digits", "nope"]]})
    rc, err = _run(path, tmp_path / "out", capsys, "--dry-run")
    assert rc == 2 and len(err) == 1 and "magnitude.targets[0][1]" in err[0]


def test_missing_dataset_and_checkpoint_paths(tmp_path, capsys):
    data = tmp_path / "nowhere" / "cifar-10-batches-py"
    path = _write(tmp_path, {"datasets": [f"cifar10:{data}"]})
    rc, err = _run(path, tmp_path / "out", capsys)
    assert rc == 2 and len(err) == 1
    assert str(data) in err[0] and "datasets[0]" in err[0]
    assert not (tmp_path / "out").exists()

    ckpt = tmp_path / "start.safetensors"
    path = _write(tmp_path, {"training/init": str(ckpt)}, drop=("training/pretrain",))
    path.write_text(path.read_text().replace("source: mnist5k", "source: null"))
    rc, err = _run(path, tmp_path / "out", capsys)
    assert rc == 2 and len(err) == 1
    assert str(ckpt) in err[0] and "training.init" in err[0]
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_or_under_one(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    rc, err = _run("tiny", blocker, capsys)
    assert rc == 2 and err == [f"mergelab: error: --out {blocker}: is a file, not a folder"]
    rc, err = _run("tiny", blocker / "sub" / "out", capsys)
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"mergelab: error: --out {blocker / 'sub' / 'out'}: cannot create")
    assert blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_out_that_is_read_only(tmp_path, capsys, monkeypatch):
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere: take the answer a user gets
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: real(p, m) and Path(p) != locked)
    rc, err = _run("tiny", locked, capsys)
    locked.chmod(0o700)
    assert rc == 2 and err == [f"mergelab: error: --out {locked}: folder is not writable"]
    assert list(locked.iterdir()) == []


def test_good_presets_validate(tmp_path):
    for preset in ("tiny", "quick"):
        config, _ = load_config(preset)
        check_study(config)
        assert check_dry_run(config) == []


def test_paper_placeholders_are_missing_paths(tmp_path):
    paper, _ = load_config("paper")
    missing = check_dry_run(paper)  # no error: the dry run plans without the files
    paths = {m.path: m.field for m in missing}
    assert paths["DATA/cifar-10-batches-py"] == "datasets[0]"
    assert paths["DATA/celeba"] == "datasets[5]"  # the :Smiling attribute is no path
    assert paths["PRETRAINED/resnet18.safetensors"] == "arch_training.tv:resnet18.init"
    assert len(paths) == len(paper.datasets) + len(paper.arch_training)
    assert {m.kind for m in missing} == {"dataset", "checkpoint"}
    local = paper.model_copy(update={"device": None})
    match = r"paper\.yaml: datasets\[0\]: dataset DATA/cifar-10-batches-py does not exist"
    with pytest.raises(ConfigError, match=match) as exc:
        check_study(local)
    assert "\n" not in str(exc.value) and "--dry-run" in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_device_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config, _ = load_config("tiny")
    with pytest.raises(ConfigError, match=r"tiny\.yaml: device: 'cuda'"):
        check_study(config.model_copy(update={"device": "cuda"}))
    check_dry_run(config.model_copy(update={"device": "cuda"}))  # planned for elsewhere


def test_dry_run_of_paper_lists_missing_paths_and_exits_0(tmp_path, monkeypatch, capsys):
    class FakePlan:
        def render(self) -> str:
            return "the plan"

    monkeypatch.setattr(plan_module, "plan_study", lambda config: FakePlan())
    monkeypatch.chdir(tmp_path)
    assert main(["study", "paper", "--dry-run"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "the plan"
    header = next(i for i, line in enumerate(lines) if line.startswith("Missing"))
    assert "edit the paths before a real run" in lines[header]
    listed = lines[header + 1 :]
    assert "  - DATA/cifar-10-batches-py (datasets[0])" in listed
    assert "  - PRETRAINED/resnet18.safetensors (arch_training.tv:resnet18.init)" in listed
    assert captured.err == ""
    assert list(tmp_path.iterdir()) == []


def test_recipe_errors_name_the_section_the_field_came_from():
    data = _tiny()
    data["arch_training"] = {"resnet8": {"train": {"steps": 10, "epochs": 2}}}
    data["dataset_training"] = {"digits": {"lrs": [0.1, -1]}}
    found = inspect_study(StudyConfig.model_validate(data), device=False)
    assert any(
        e.startswith("arch_training.resnet8.train: give epochs or steps") for e in found.errors
    )
    assert any(e.startswith("dataset_training.digits.lrs: ") for e in found.errors)


def test_a_failed_run_leaves_no_empty_folder(tmp_path, monkeypatch):
    from mergelab.studies import runner

    def fail(*args, **kwargs):
        (tmp_path / "out" / "runs").mkdir(parents=True)
        raise MergeError("boom")

    monkeypatch.setattr(runner.StudyContext, "prepare", fail)
    with pytest.raises(MergeError, match="boom"):
        runner.run_study("tiny", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    kept = tmp_path / "kept"
    kept.mkdir()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.StudyContext, "prepare", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.run_study("tiny", kept, progress=False)
    assert kept.is_dir()  # not made by the run: left alone


def test_a_config_changed_in_python_is_checked_again():
    config, _ = load_config("tiny")
    match = r"tiny\.yaml: model_counts: 3 outside \[2, n_models = 2\]"
    with pytest.raises(ConfigError, match=match):
        check_study(config.model_copy(update={"n_models": 2}))
