"""Every class of bad value in a study config stops ``mergelab study`` before any work: exit
status 2, exactly one ``mergelab: error: <file>: <key>: <problem> (allowed: ...)`` line,
nothing trained and no output folder."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from mergelab.cli import main
from mergelab.data.registry import known_datasets
from mergelab.models.builtin import BUILTINS
from mergelab.studies.config import StudyConfig, preset_path

ARCHS = f"{', '.join(BUILTINS)}, tv:<torchvision name>, timm:<timm name>"
STUDY_KEYS = ", ".join(StudyConfig.model_fields)
DATASETS = ", ".join(known_datasets())
NAME_RULE = (
    "is no plain folder name; it names the output folder mergelab-study-NAME (allowed: 1 to "
    "100 letters, digits, '_', '-' and '.', starting with a letter or digit, no '..')"
)


@pytest.fixture(autouse=True)
def _nothing_trains(nothing_trains):
    """Every test here: the config is checked before anything trains."""


def _tiny(edits: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(yaml.safe_load(preset_path("tiny").read_text()))
    for dotted, value in edits.items():
        *head, last = dotted.split("/")
        section = data
        for key in head:
            section = section.setdefault(key, {})
        if value is _DROP:
            section.pop(last)
        else:
            section[last] = value
    return data


_DROP = object()
NAN, INF = float("nan"), float("inf")

# edits of the tiny preset -> the error line after "<file>: "
CASES: dict[str, tuple[dict[str, Any], str]] = {
    # a name that would be a path: mergelab-study-../../escaped writes outside the folder
    "name climbing out": ({"name": "../../escaped"}, f"name: '../../escaped' {NAME_RULE}"),
    "name with a slash": ({"name": "a/b"}, f"name: 'a/b' {NAME_RULE}"),
    "hidden name": ({"name": ".x"}, f"name: '.x' {NAME_RULE}"),
    "name with dots inside": ({"name": "a..b"}, f"name: 'a..b' {NAME_RULE}"),
    "empty name": ({"name": ""}, f"name: '' {NAME_RULE}"),
    "name with a newline": ({"name": "a\nb"}, f"name: 'a\\nb' {NAME_RULE}"),
    # wrong types
    "section not a mapping": (
        {"training": [1, 2]},
        "training: [1, 2] is not a mapping (key: value)",
    ),
    "override not a mapping": (
        {"dataset_training": {"digits": 5}},
        "dataset_training.digits: 5 is not a mapping (key: value)",
    ),
    "integer given as text": ({"n_models": "ten"}, "n_models: 'ten' is not an integer"),
    "training number given as text": (
        {"training/train/lr": "fast"},
        "training.train.lr: 'fast' is not a number",
    ),
    "factor given as text": (
        {"magnitude/factors": [1, "x", 100]},
        "magnitude.factors[1]: 'x' is not a number",
    ),
    # out of range
    "batch_size 0": ({"batch_size": 0}, "batch_size: 0 is too small (allowed: >= 1)"),
    "training batch_size 0": (
        {"training/train/batch_size": 0},
        "training.train.batch_size: 0 is too small (allowed: >= 1)",
    ),
    "negative lr": (
        {"training/train/lr": -0.1},
        "training.train.lr: -0.1 is too small (allowed: > 0)",
    ),
    "negative pretrain steps": (
        {"training/pretrain/steps": -5},
        "training.pretrain.steps: -5 is too small (allowed: >= 1)",
    ),
    "zero fine-tune steps": (
        {"training/train": {"steps": 0}},
        "training.train.steps: 0 is too small (allowed: >= 1)",
    ),
    "zero pretrain epochs": (
        {"training/pretrain": {"epochs": 0}},
        "training.pretrain.epochs: 0 is too small (allowed: > 0)",
    ),
    "warm-up as long as the run": (
        {"independent/train": {"steps": 60, "warmup_steps": 60}},
        "independent.train.warmup_steps: 60 is not shorter than the run (steps: 60); the lr "
        "would never leave the warm-up (allowed: 0 to 59)",
    ),
    "replicate seed past the recipe seeds": (
        {"seeds": [0, 4294968]},
        "seeds: 4294968 too large (allowed: 0 to 4294967; replicate s trains with seeds from "
        "s*1000, at most 4294967295)",
    ),
    "split seed past 32 bits": (
        {"split_seed": 2**32},
        "split_seed: 4294967296 is too large (allowed: <= 4294967295)",
    ),
    "split seed of 1e23": (
        {"split_seed": 1e23},
        "split_seed: 1e+23 is too large for an integer",
    ),
    "more models than a recipe trains": (
        {"n_models": 1000},
        "n_models: 1000 is too large (allowed: <= 999)",
    ),
    "negative epochs": (
        {"arch_training": {"resnet8": {"train": {"epochs": -1, "steps": None}}}},
        "arch_training.resnet8.train.epochs: -1 is too small (allowed: > 0)",
    ),
    "negative factor": (
        {"magnitude/factors": [1, -5, 100]},
        "magnitude.factors: -5 refused (allowed: finite numbers > 0)",
    ),
    "zero factor": (
        {"magnitude/factors": [0, 1, 100]},
        "magnitude.factors: 0 refused (allowed: finite numbers > 0)",
    ),
    "magnitude batch of one": (
        {"magnitude/batch_size": 1},
        "magnitude.batch_size: 1 is too small (allowed: >= 2)",
    ),
    "image side 0": ({"training/img_size": 0}, "training.img_size: 0 is too small (allowed: >= 1)"),
    "image side 100000": (
        {"training/img_size": 100000},
        "training.img_size: 100000 is too large (allowed: <= 4096)",
    ),
    "cross-task image side 100000": (
        {"cross_task/img_size": 100000},
        "cross_task.img_size: 100000 is too large (allowed: <= 4096)",
    ),
    # not finite
    "nan lr": (
        {"training/train/lr": NAN},
        "training.train.lr: nan is not a finite number (allowed: finite numbers)",
    ),
    "infinite weight decay": (
        {"training/train/weight_decay": INF},
        "training.train.weight_decay: inf is not a finite number (allowed: finite numbers)",
    ),
    "nan in lrs": (
        {"training/lrs": [0.1, NAN]},
        "training.lrs[1]: nan is not a finite number (allowed: finite numbers)",
    ),
    "infinite factor": (
        {"magnitude/factors": [1, INF, 100]},
        "magnitude.factors[1]: inf is not a finite number (allowed: finite numbers)",
    ),
    "nan gpu_tflops": (
        {"gpu_tflops": NAN},
        "gpu_tflops: nan is not a finite number (allowed: finite numbers)",
    ),
    # not among the choices
    "unknown key": ({"nmodels": 3}, f"nmodels: unknown key (allowed: {STUDY_KEYS})"),
    "unknown section key": (
        {"magnitude/factor": [1]},
        "magnitude.factor: unknown key (allowed: "
        + ", ".join(StudyConfig.model_fields["magnitude"].annotation.model_fields)
        + ")",
    ),
    "unknown BatchNorm mode": (
        {"magnitude/bn": ["running", "x"]},
        "magnitude.bn[1]: 'x' is not a choice (allowed: 'running', 'running_c2' or 'batch')",
    ),
    "unknown head": (
        {"training/head": "new"},
        "training.head: 'new' is not a choice (allowed: 'fresh' or 'keep')",
    ),
    "two channels": (
        {"training/in_chans": 2},
        "training.in_chans: 2 is not a choice (allowed: 1 or 3)",
    ),
    "cross-task channels": (
        {"cross_task/channels": 2},
        "cross_task.channels: 2 is not a choice (allowed: 1 or 3)",
    ),
    # the root cause first: an unknown arch, not the kernels_arch that names an arch it
    # dropped; an unknown dataset, not the override of the dataset it replaced
    "only arch unknown": (
        {"archs": ["nonsense"]},
        f"archs[0]: unknown architecture 'nonsense' (allowed: {ARCHS}) (and 1 more problem)",
    ),
    "only dataset unknown": (
        {"datasets": ["nodata"], "cross_task/pairs": [], "dataset_training": {"digits": {}}},
        "datasets[0]: unknown dataset 'nodata' (allowed: " + DATASETS + ") (and 1 more problem)",
    ),
    "unknown arch": (
        {"archs": ["linear", "resnet8", "resnet9"]},
        f"archs[2]: unknown architecture 'resnet9'; did you mean resnet8? (allowed: {ARCHS})",
    ),
    "unknown dataset": (
        {"datasets": ["digits", "mnist"]},
        f"datasets[1]: unknown dataset 'mnist'; did you mean mnist5k? (allowed: {DATASETS})",
    ),
    "class subset outside the dataset": (
        {"datasets": ["digits[0-20]"]},
        "datasets[0]: dataset 'digits[0-20]': class 10 out of range: digits has 10 classes (0-9)",
    ),
    "source subset outside the dataset": (
        {"training/source": "mnist5k[5-12]"},
        "training.source: dataset 'mnist5k[5-12]': class 10 out of range: mnist5k has 10 "
        "classes (0-9)",
    ),
    # a model that cannot be built for its dataset, found by building it once
    "unknown model argument": (
        {"arch_training": {"resnet8": {"model_kwargs": {"hidden": [32]}}}},
        "arch_training.resnet8.model_kwargs: resnet8 cannot be built for digits: "
        "SmallResNet.__init__() got an unexpected keyword argument 'hidden' (building it for "
        "1x8x8 input, 10 classes)",
    ),
    "image too small for the arch": (
        {"archs": ["linear", "resnet8", "cnn"], "arch_training": {"cnn": {"img_size": 2}}},
        "archs[2]: cnn cannot be built for digits: ",
    ),
    "kept head of a start with other classes": (
        {"training/source": "mnist5k[0-4]"},
        "arch_training.linear.head: keep fine-tunes the start's head, but mnist5k[0-4] has 5 "
        "classes and digits 10 (allowed: fresh)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_value_is_one_line_naming_file_and_key(case, tmp_path, capsys):
    edits, expected = CASES[case]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_tiny(edits), sort_keys=False))
    out = tmp_path / "o"
    rc = main(["study", str(path), "--out", str(out), "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"mergelab: error: {path}: {expected}"), err[0]
    if not expected.endswith(": "):  # the whole line is known
        assert err[0] == f"mergelab: error: {path}: {expected}"
    assert not out.exists()


def test_file_that_is_no_config(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    out = tmp_path / "o"
    for text, expected in (
        ("datasets: [digits\n", f"{path}: not valid YAML ("),
        ("- digits\n", f"{path}: a study config is a YAML mapping (key: value lines)"),
    ):
        path.write_text(text)
        assert main(["study", str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"mergelab: error: {expected}"), err
    assert main(["study", str(tmp_path / "none.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"mergelab: error: {tmp_path / 'none.yaml'}: no such study config (allowed: a YAML "
        "file, or a preset: quick, paper, tiny, multitask-quick, mergeability)"
    ]
    assert not out.exists()


def test_key_given_twice_is_refused_naming_both_lines(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    text = preset_path("tiny").read_text()
    path.write_text(text.replace("n_models: 3\n", "n_models: 3\nsplit_seed: 1\n"))
    out = tmp_path / "o"
    assert main(["study", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"mergelab: error: {path}: split_seed: given twice, on lines 4 and 9 (allowed: each "
        "key once; YAML would silently keep the last)"
    ]
    assert not out.exists()


def test_study_name_is_no_path(tmp_path, capsys, monkeypatch):
    """Without --out the name makes the folder: nothing may appear, here or above."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    path = work / "study.yaml"
    path.write_text(yaml.safe_dump(_tiny({"name": "../../escaped"}), sort_keys=False))
    assert main(["study", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mergelab: error: {path}: name: '../../escaped' {NAME_RULE}"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "study.yaml"]


def test_init_checkpoint_with_nan_is_refused(tmp_path, capsys):
    import torch

    from mergelab.io import save_state_dict

    ckpt = tmp_path / "start.safetensors"
    save_state_dict({"w": torch.tensor([0.0, float("nan")]), "b": torch.zeros(2)}, ckpt)
    data = _tiny({"training/init": str(ckpt), "training/source": None, "training/pretrain": _DROP})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "o"
    assert main(["study", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"mergelab: error: {path}: training.init: {ckpt}: tensor 'w' has 1 NaN or infinite "
        "value (allowed: finite values; a start with them trains to a NaN loss)"
    ]
    assert not out.exists()


def test_limits_match_the_training_side():
    """The study's copies of the training limits (studies.config does not import torch)."""
    from mergelab.studies import config
    from mergelab.studies.context import SEED_STRIDE
    from mergelab.train import config as train_config
    from mergelab.train import recipe

    assert (config.MAX_SEED, config.MAX_SIDE) == (train_config.MAX_SEED, train_config.MAX_SIDE)
    assert config.MAX_MODELS == recipe.MAX_MODELS < SEED_STRIDE  # a replicate's seeds apart
