"""``mergelab study`` on the user's own multi-task checkpoints and data: nothing trained,
each task scored with its own head on its own data, the user's files only read, and every
problem one line before any work."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file
from user_suite_fakes import IMG_SIZE, IN_CHANS, file_bytes, write_tasks, write_user_suite

from mergelab.cli import main
from mergelab.data import ImageSpec, as_tensors, load_dataset
from mergelab.models import build_model

PETS, DERMA = "imagefolder:data/pets", "dermamnist:data/dermamnist.npz"
CLASSES = {PETS: 3, DERMA: 7}
# A user's config: checkpoints made elsewhere, data on disk, a tiny grid.
CONFIG = {
    "name": "my-multitask",
    "datasets": [],
    "archs": [],
    "templates": {"enabled": False},
    "magnitude": {"enabled": False},
    "weight_stats": False,
    "multitask": {
        "enabled": True,
        "arch": "mlp",
        "pretrained": "ckpt/pre.safetensors",
        "tasks": [PETS, DERMA],
        "checkpoints": ["ckpt/task0.safetensors", "ckpt/task1.pt"],
        "methods": ["linear", "task_arithmetic"],
        "coefficients": [1.0],
        "extend_grid": 0,
        "ranks": [],
        "task_counts": [],
    },
}


class _Reduces:
    """A pickled object whose loading would call a function: what a safe reader refuses."""

    def __reduce__(self):
        return (os.path.join, ("a", "b"))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The user's folder: data/, ckpt/ (the suite and some broken checkpoints), my.yaml."""
    root = tmp_path_factory.mktemp("user")
    tasks = write_tasks(root / "data")
    user = write_user_suite(root / "ckpt", tasks, torch_files=(1,))
    good = user.states[0]
    bad = {
        "bad_shape": {**good, "layers.2.weight": torch.zeros(128, 250)},
        "bad_classes": {**good, "head.weight": torch.zeros(4, 128), "head.bias": torch.zeros(4)},
        "nan": {**good, "layers.0.bias": torch.full((256,), float("nan"))},
    }
    for name, state in bad.items():
        save_file(state, str(root / "ckpt" / f"{name}.safetensors"))
    (root / "ckpt" / "garbage.safetensors").write_bytes(b"x" * 100)
    with open(root / "ckpt" / "code.pt", "wb") as f:
        pickle.dump({"w": _Reduces()}, f, protocol=2)
    (root / "my.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def study(root):
    """The study run once, as a user runs it from their folder."""
    before = file_bytes([root / "ckpt", root / "data"])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert main(["study", "my.yaml", "--out", "out", "--no-progress"]) == 0
    return pd.read_csv(root / "out" / "results.csv"), before


def _accuracy(state: dict, task: str) -> float:
    """Test accuracy of a full model ``state``, evaluated plainly."""
    model = build_model("mlp", CLASSES[task], in_chans=IN_CHANS, img_size=IMG_SIZE)
    model.load_state_dict(state)
    x, y = as_tensors(load_dataset(task).split("test", ImageSpec(IN_CHANS, IMG_SIZE)))
    with torch.no_grad():
        return (model.eval()(x).argmax(1) == y).double().mean().item()


def _read(path: Path) -> dict:
    from mergelab.io import load_state_dict

    return load_state_dict(path)


def test_individual_and_weight_averaging_equal_plain_evaluations(root, study, monkeypatch):
    df, _ = study
    monkeypatch.chdir(root)
    acc = df[(df["metric"] == "accuracy") & (df["sweep"] == "methods")]
    acc = acc.set_index(["method", "dataset"])["value"]
    states = [_read(Path("ckpt/task0.safetensors")), _read(Path("ckpt/task1.pt"))]
    backbones = [{k: v for k, v in s.items() if not k.startswith("head.")} for s in states]
    mean = {k: (backbones[0][k] + backbones[1][k]) / 2 for k in backbones[0]}
    for task, state in zip([PETS, DERMA], states, strict=True):
        head = {k: v for k, v in state.items() if k.startswith("head.")}
        assert acc["Individual", task] == _accuracy(state, task)
        assert acc["Weight Averaging", task] == _accuracy({**mean, **head}, task)
    assert set(acc.index.get_level_values("method")) == {
        "Individual",
        "Pretrained",
        "Weight Averaging",
        "Task Arithmetic",
    }
    assert set(df["sweep"]) == {"methods"}  # ranks: [], task_counts: []
    ta = df[(df["method"] == "Task Arithmetic") & (df["metric"] == "accuracy")]
    assert set(ta["coefficient"]) == {1.0}


def test_nothing_trained_and_the_users_files_untouched(root, study):
    _, before = study
    assert file_bytes([root / "ckpt", root / "data"]) == before
    assert not (root / "out" / "runs").exists() or not any((root / "out" / "runs").iterdir())


def test_dry_run_trains_nothing_and_creates_nothing(root, monkeypatch, capsys):
    monkeypatch.chdir(root)
    assert main(["study", "my.yaml", "--dry-run", "--out", "dry"]) == 0
    out = capsys.readouterr().out
    assert "total: 0 training runs" in out
    assert "no training (the suite is the user's checkpoints)" in out
    assert not (root / "dry").exists()


GARBAGE = (
    "multitask.checkpoints[0]: cannot read the checkpoint: ckpt/garbage.safetensors: corrupt "
    "or truncated safetensors header"
)
# multitask edits -> the error line after "mergelab: error: my-bad.yaml: "
CASES = {
    "fewer checkpoints than tasks": (
        {"checkpoints": ["ckpt/task0.safetensors"]},
        "multitask.checkpoints: 1 checkpoints for 2 tasks (allowed: one per task, in the "
        "order of tasks)",
    ),
    "no pretrained": (
        {"pretrained": None},
        "multitask.pretrained: missing; checkpoints need the pre-trained checkpoint they were "
        "fine-tuned from (task vectors are taken from it)",
    ),
    "pretrained without checkpoints": (
        {"checkpoints": None},
        "multitask.pretrained: given without checkpoints; give checkpoints (one fine-tuned "
        "model per task), or drop pretrained to train the suite",
    ),
    "training settings with checkpoints": (
        {"finetune": {"steps": 5}},
        "multitask.finetune: a training setting, but nothing is trained from checkpoints "
        "(allowed: drop it, or drop checkpoints to train the suite)",
    ),
    "pretrained not there": (
        {"pretrained": "ckpt/nope.safetensors"},
        "multitask.pretrained: checkpoint ckpt/nope.safetensors does not exist; edit the paths "
        "in the config (--dry-run lists every missing one)",
    ),
    "checkpoint not there": (
        {"checkpoints": ["ckpt/task0.safetensors", "ckpt/nope.pt"]},
        "multitask.checkpoints[1]: checkpoint ckpt/nope.pt does not exist; edit the paths in "
        "the config (--dry-run lists every missing one)",
    ),
    "checkpoint unreadable": (
        {"checkpoints": ["ckpt/garbage.safetensors", "ckpt/task1.pt"]},
        GARBAGE,
    ),
    "torch file that runs code": (
        {"checkpoints": ["ckpt/task0.safetensors", "ckpt/code.pt"]},
        "multitask.checkpoints[1]: cannot read the checkpoint: ckpt/code.pt: refused to load: "
        "this pickle needs code execution to unpickle",
    ),
    "backbone differs": (
        {"checkpoints": ["ckpt/bad_shape.safetensors", "ckpt/task1.pt"]},
        "multitask.checkpoints[0]: ckpt/bad_shape.safetensors: backbone tensor 'layers.2.weight' "
        "is (128, 250), not (128, 256) (compared with the pretrained ckpt/pre.safetensors); "
        "every task's backbone has the pretrained backbone's tensor names and shapes",
    ),
    "head of another class count": (
        {"checkpoints": ["ckpt/bad_classes.safetensors", "ckpt/task1.pt"]},
        "multitask.checkpoints[0]: ckpt/bad_classes.safetensors: its head head.weight (4, 128) "
        f"has 4 classes, but its task {PETS} has 3",
    ),
    "non-finite tensor": (
        {"checkpoints": ["ckpt/nan.safetensors", "ckpt/task1.pt"]},
        "multitask.checkpoints[0]: ckpt/nan.safetensors: tensor 'layers.0.bias' has NaN or "
        "infinite values (allowed: finite values; a merge would spread them)",
    ),
    "another arch": (
        {"arch": "cnn"},
        "multitask.pretrained: ckpt/pre.safetensors does not fit arch cnn: backbone tensor "
        "'features.0.weight' is missing; give the arch the checkpoints were made with",
    ),
    "image size the checkpoints contradict": (
        {"img_size": 16},
        "multitask.img_size: 16, but the checkpoints take 8 (layers.0.weight (256, 192) in "
        "ckpt/pre.safetensors)",
    ),
    "task data not there": (
        {"tasks": ["imagefolder:data/gone", DERMA]},
        "multitask.tasks[0]: dataset data/gone does not exist; edit the paths in the config "
        "(--dry-run lists every missing one)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_problem_is_one_line_before_any_work(case, root, monkeypatch, capsys, nothing_trains):
    edits, expected = CASES[case]
    monkeypatch.chdir(root)
    data = yaml.safe_load(yaml.safe_dump(CONFIG))
    for key, value in edits.items():
        if value is None:
            data["multitask"].pop(key)
        else:
            data["multitask"][key] = value
    Path("my-bad.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    before = file_bytes([root / "ckpt", root / "data"])
    assert main(["study", "my-bad.yaml", "--out", "bad-out", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    line = f"mergelab: error: my-bad.yaml: {expected}"
    if expected in (GARBAGE, CASES["torch file that runs code"][1]):
        assert err[0].startswith(line)  # the rest is the reader's own words
    else:
        assert err[0] == line
    assert not Path("bad-out").exists()
    assert file_bytes([root / "ckpt", root / "data"]) == before


def test_dry_run_lists_missing_checkpoints_as_a_warning(root, monkeypatch, capsys):
    monkeypatch.chdir(root)
    data = yaml.safe_load(yaml.safe_dump(CONFIG))
    data["multitask"]["pretrained"] = "ckpt/elsewhere.safetensors"
    Path("my-elsewhere.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["study", "my-elsewhere.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "  - ckpt/elsewhere.safetensors (multitask.pretrained)" in out.splitlines()


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        (
            {"tasks": ["mt-parity", "mt-nope"]},
            "multitask.tasks[1]: unknown dataset 'mt-nope'",
        ),
        ({"arch": "nonet"}, "multitask.arch: unknown architecture 'nonet'"),
    ],
)
def test_a_trained_suites_tasks_and_arch_checked_first(
    edits, expected, tmp_path, monkeypatch, capsys, nothing_trains
):
    """Without checkpoints the suite is trained; its tasks and arch are checked before any
    work too (not after the other studies' training)."""
    monkeypatch.chdir(tmp_path)
    data = yaml.safe_load(yaml.safe_dump(CONFIG))
    for key in ("pretrained", "checkpoints"):
        data["multitask"].pop(key)
    data["multitask"].update(edits)
    Path("trained.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["study", "trained.yaml", "--out", "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mergelab: error: trained.yaml: {expected}")
    assert not Path("out").exists()
