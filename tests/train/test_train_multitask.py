"""The multi-task suite: one pre-training, a fine-tune and a frozen head per task, merged
backbones evaluated with each task's head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mergelab.data import ImageSpec, as_tensors, load_dataset
from mergelab.errors import ConfigError, MergeError
from mergelab.io import load_state_dict
from mergelab.io.safetensors_file import read_header
from mergelab.models import build_model
from mergelab.train import TrainSettings, val_score
from mergelab.train import trainer as trainer_module
from mergelab.train.multitask import (
    DEFAULT_PRETRAIN,
    MANIFEST,
    evaluate_multitask,
    finetune_config,
    load_multitask_suite,
    pretrain_config,
    train_multitask,
)

TASKS = ["mt-rotated", "mt-parity"]
CHANCE = {"mt-rotated": 0.25, "mt-parity": 0.5}
# An MLP trains in a fraction of a second and reliably far above chance in 40 steps
# (measured over seeds 0-3: rotation 0.80-0.82, parity 0.91-0.93 test accuracy).
TINY = {
    "arch": "mlp",
    "model_kwargs": {"hidden": [64]},
    "pretrain": {"steps": 40, "batch_size": 32, "lr": 0.1},
    "finetune": {"steps": 40, "batch_size": 32, "lr": 0.1},
}


def make(out: Path, seed: int = 0, tasks=TASKS, **kw):
    return train_multitask(tasks, out_dir=out, seed=seed, **{**TINY, **kw})


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return make(tmp_path_factory.mktemp("mt") / "suite")


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but the training sidecars (they hold timings)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not (p.parent.name == "runs" and p.suffix == ".json")
    }


def test_backbones_share_names_and_shapes_heads_apart(suite) -> None:
    assert suite.tasks == tuple(TASKS)
    pre = suite.pretrained_state()
    assert pre and not any(k.startswith("head.") for k in pre)
    shapes = {k: tuple(v.shape) for k, v in pre.items()}
    for task in TASKS:
        backbone = suite.backbone_state(task)
        assert {k: tuple(v.shape) for k, v in backbone.items()} == shapes
        assert not torch.equal(backbone["layers.0.weight"], pre["layers.0.weight"])  # fine-tuned
    heads = suite.task_heads()
    assert list(heads) == TASKS
    assert {t: tuple(h.state["head.weight"].shape) for t, h in heads.items()} == {
        "mt-rotated": (4, 64),
        "mt-parity": (2, 64),
    }
    assert set(load_state_dict(suite.source_head)) == {"head.weight", "head.bias"}
    manifest = json.loads((suite.out_dir / MANIFEST).read_text())
    assert manifest["task_order"] == TASKS and manifest["source"] == "mt-source"
    assert manifest["backbone_tensors"] == {k: list(v) for k, v in shapes.items()}
    meta = read_header(suite.heads["mt-parity"])[2]
    assert meta["mergelab.multitask.role"] == "head"
    assert meta["mergelab.multitask.task"] == "mt-parity"


def test_head_is_the_fine_tuned_one_and_frozen(suite) -> None:
    manifest = json.loads((suite.out_dir / MANIFEST).read_text())
    run = suite.out_dir / "runs" / f"{manifest['tasks']['mt-parity']['run']}.safetensors"
    full = load_state_dict(run)
    head = suite.task_heads()["mt-parity"].state
    assert all(torch.equal(full[k], v) for k, v in head.items())
    # backbone + its head is exactly the fine-tuned model
    model = build_model("mlp", 2, in_chans=1, img_size=28, hidden=[64])
    model.load_state_dict(full)
    x, y = as_tensors(load_dataset("mt-parity").split("test", ImageSpec(channels=1, size=28)))
    whole = val_score(model, x, y, multilabel=False)
    assert suite.evaluate(suite.backbone_state("mt-parity"), ["mt-parity"]) == {"mt-parity": whole}


def test_own_backbone_beats_chance_pretrained_gives_a_number(suite) -> None:
    heads = suite.task_heads()
    for task in TASKS:
        acc = evaluate_multitask(suite.backbone_state(task), heads, [task])[task]
        assert acc > CHANCE[task] + 0.2, (task, acc)
    pre = evaluate_multitask(suite.pretrained_state(), heads)
    assert list(pre) == TASKS
    assert all(0.0 <= v <= 1.0 for v in pre.values())
    # a merge is just another backbone
    states = suite.backbone_states()
    avg = {k: (states[TASKS[0]][k] + states[TASKS[1]][k]) / 2 for k in states[TASKS[0]]}
    assert set(evaluate_multitask(avg, heads)) == set(TASKS)


def test_evaluate_takes_files_and_full_states(suite) -> None:
    heads = suite.task_heads()
    by_path = evaluate_multitask(suite.backbones["mt-rotated"], heads, ["mt-rotated"])
    with_head = {**suite.backbone_state("mt-rotated"), **heads["mt-parity"].state}
    assert evaluate_multitask(with_head, heads, ["mt-rotated"]) == by_path  # own head wins
    with pytest.raises(ConfigError, match="no head for task"):
        evaluate_multitask(suite.pretrained_state(), heads, ["mt-inverted"])
    broken = dict(suite.pretrained_state())
    broken.pop("layers.0.bias")
    with pytest.raises(MergeError, match=r"does not fit mlp .*missing keys") as info:
        evaluate_multitask(broken, heads)
    assert "\n" not in str(info.value)


def test_same_seed_same_bytes_other_seed_other_weights(suite, tmp_path) -> None:
    again = make(tmp_path / "again")
    assert files(again.out_dir) == files(suite.out_dir)
    other = make(tmp_path / "other", seed=1)
    assert other.pretrained.read_bytes() != suite.pretrained.read_bytes()


def test_rerun_trains_nothing(suite, tmp_path, monkeypatch) -> None:
    before = files(suite.out_dir)

    def boom(*args, **kwargs):
        raise AssertionError("a finished suite must not train again")

    monkeypatch.setattr(trainer_module, "fit", boom)
    make(suite.out_dir)
    assert files(suite.out_dir) == before
    assert load_multitask_suite(suite.out_dir) == suite


def test_task_runs_do_not_depend_on_the_task_list() -> None:
    start = pretrain_config("mt-source", "mlp", 0, DEFAULT_PRETRAIN)
    fine = TrainSettings(steps=5)
    a = finetune_config("mt-parity", start, 0, fine)
    assert a.init == start.config_hash() and a.reset_head
    assert a.config_hash() == finetune_config("mt-parity", start, 0, fine).config_hash()
    assert a.seed != finetune_config("mt-rotated", start, 0, fine).seed


def test_cnn_backbones_merge(tmp_path) -> None:
    tiny = {"steps": 3, "batch_size": 16}
    suite = train_multitask(
        ["mt-inverted", "mt-magnitude"],
        "cnn",
        tmp_path / "cnn",
        0,
        model_kwargs={"channels": [4, 8]},
        pretrain=tiny,
        finetune=tiny,
    )
    a, b = (suite.backbone_state(t) for t in suite.tasks)
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert "features.0.weight" in a and "head.weight" not in a
    heads = suite.task_heads()
    assert heads["mt-magnitude"].state["head.weight"].shape == (2, 8)
    assert set(suite.evaluate(suite.pretrained_state())) == {"mt-inverted", "mt-magnitude"}


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"tasks": []}, "no tasks given"),
        ({"tasks": ["mt-parity", "mt-parity"]}, "given twice"),
        ({"tasks": ["mt-nope"]}, "unknown dataset 'mt-nope'"),
        ({"arch": "cnnn"}, "unknown architecture"),
        ({"finetune": {"lr": -1}}, "finetune: lr"),
        ({"pretrain": {"epochs": 1, "steps": 2}}, "pretrain: .*epochs or steps, not both"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, kw, match) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        make(tmp_path / "bad", **kw)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "bad").exists()


def test_user_files_are_not_replaced_and_missing_suites_reported(tmp_path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / MANIFEST).write_text('{"mine": true}')
    with pytest.raises(ConfigError, match="not written by mergelab"):
        make(out)
    assert (out / MANIFEST).read_text() == '{"mine": true}'
    assert [p.name for p in out.iterdir()] == [MANIFEST]  # refused before training
    with pytest.raises(ConfigError, match="not a multi-task manifest"):
        load_multitask_suite(out)
    with pytest.raises(ConfigError, match="not found"):
        load_multitask_suite(tmp_path / "nothing")
