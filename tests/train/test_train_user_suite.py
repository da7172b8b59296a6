"""A multi-task suite of the user's checkpoints: split into backbones and frozen heads,
nothing trained, the user's files only read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from user_suite_fakes import (
    IMG_SIZE,
    IN_CHANS,
    file_bytes,
    write_imagefolder,
    write_tasks,
    write_user_suite,
)

from mergelab.data import ImageSpec, as_tensors, load_dataset
from mergelab.errors import ConfigError
from mergelab.io import load_state_dict
from mergelab.io.safetensors_file import read_header
from mergelab.models import build_model
from mergelab.studies.config import MultitaskSpec
from mergelab.train.multitask import MANIFEST, study_suite, suite_configs
from mergelab.train.user_suite import user_files


def spec_of(suite, **kw) -> MultitaskSpec:
    fields = {
        "enabled": True,
        "arch": "mlp",
        "tasks": suite.tasks,
        "pretrained": str(suite.pretrained),
        "checkpoints": [str(p) for p in suite.checkpoints],
    }
    return MultitaskSpec(**{**fields, **kw})


def build(spec: MultitaskSpec, out: Path):
    return study_suite(spec, out, cache_dir=out / "runs")


def split(state: dict, prefix: str = "head.") -> tuple[dict, dict]:
    return (
        {k: v for k, v in state.items() if not k.startswith(prefix)},
        {k: v for k, v in state.items() if k.startswith(prefix)},
    )


def assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b) or set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    user = write_user_suite(root / "ckpt", write_tasks(root / "data"), torch_files=(1,))
    before = file_bytes([root / "ckpt", root / "data"])
    suite = build(spec_of(user), root / "out")
    return root, user, suite, before


def test_backbones_and_heads_are_the_checkpoints_split_at_the_head(made) -> None:
    root, user, suite, before = made
    assert suite.tasks == tuple(user.tasks)
    assert (suite.arch, suite.head_prefix) == ("mlp", "head.")
    # Input read from the checkpoints: the mlp's first Linear takes 3 * 8 * 8 values.
    assert (suite.in_chans, suite.img_size) == (IN_CHANS, IMG_SIZE)
    assert dict(suite.num_classes) == dict(zip(user.tasks, [3, 7], strict=True))
    pre_backbone, pre_head = split(user.pre_state)
    assert_same(suite.pretrained_state(), pre_backbone)
    assert_same(load_state_dict(suite.source_head), pre_head)  # kept apart, never used
    heads = suite.task_heads()
    for task, state in zip(user.tasks, user.states, strict=True):  # task1 was a torch .pt
        backbone, head = split(state)
        assert_same(suite.backbone_state(task), backbone)
        assert_same(dict(heads[task].state), head)
        meta = read_header(suite.heads[task])[2]
        assert meta["mergelab.multitask.role"] == "head" and meta["mergelab.multitask.task"] == task
    manifest = json.loads((suite.out_dir / MANIFEST).read_text())
    assert manifest["origin"] == "checkpoints" and manifest["task_order"] == user.tasks
    for key, text in user_files(spec_of(user)):
        digest = hashlib.sha256(Path(text).read_bytes()).hexdigest()
        assert manifest["files"][key] == {"path": text, "sha256": digest}
    # The user's files: byte-identical, and nothing written next to them.
    assert file_bytes([root / "ckpt", root / "data"]) == before


def test_own_backbone_with_own_head_scores_as_the_full_checkpoint(made) -> None:
    _, user, suite, _ = made
    for task, state, classes in zip(user.tasks, user.states, [3, 7], strict=True):
        model = build_model("mlp", classes, in_chans=IN_CHANS, img_size=IMG_SIZE)
        model.load_state_dict(state)
        model.eval()
        for split_name in ("val", "test"):
            data = load_dataset(task).split(split_name, ImageSpec(IN_CHANS, IMG_SIZE))
            x, y = as_tensors(data)
            with torch.no_grad():
                plain = (model(x).argmax(1) == y).double().mean().item()
            got = suite.evaluate(suite.backbone_state(task), [task], split=split_name)
            assert got == {task: plain}


def test_nothing_to_train_and_the_files_read(made) -> None:
    _, user, _, _ = made
    spec = spec_of(user)
    assert suite_configs(spec) == []
    assert user_files(spec) == [
        ("multitask.pretrained", str(user.pretrained)),
        ("multitask.checkpoints[0]", str(user.checkpoints[0])),
        ("multitask.checkpoints[1]", str(user.checkpoints[1])),
    ]


def test_same_checkpoints_same_bytes_and_a_rerun_replaces_its_own_files(made, tmp_path) -> None:
    _, user, suite, _ = made
    again = build(spec_of(user), tmp_path / "again")
    ours = {Path(k).relative_to(suite.out_dir): v for k, v in file_bytes([suite.out_dir]).items()}
    theirs = {Path(k).relative_to(again.out_dir): v for k, v in file_bytes([again.out_dir]).items()}
    assert ours == theirs
    first = file_bytes([again.out_dir])
    build(spec_of(user), again.out_dir)  # into the same folder: its own files replaced
    assert file_bytes([again.out_dir]) == first


def test_conv_net_takes_the_tasks_image_size_or_the_configs(tmp_path) -> None:
    a = write_imagefolder(tmp_path / "a", size=12).root
    b = write_imagefolder(tmp_path / "b", classes=("x", "y"), size=12, seed=4).root
    tasks = {f"imagefolder:{a}": 3, f"imagefolder:{b}": 2}
    user = write_user_suite(tmp_path / "ckpt", tasks, arch="cnn")
    suite = build(spec_of(user, arch="cnn"), tmp_path / "out")
    # The stem conv fixes 3 channels; a conv net's weights fix no size: the tasks' 12 px.
    assert (suite.in_chans, suite.img_size) == (3, 12)
    suite = build(spec_of(user, arch="cnn", img_size=20), tmp_path / "out20")
    assert suite.img_size == 20

    derma = write_tasks(tmp_path / "data")  # 12 px and 28 px images: no common size
    user = write_user_suite(tmp_path / "ckpt2", derma, arch="cnn")
    with pytest.raises(ConfigError) as err:
        build(spec_of(user, arch="cnn"), tmp_path / "out2")
    a, b = derma
    assert str(err.value) == (
        f"multi-task: multitask.img_size: the checkpoints do not fix it and the tasks' images "
        f"differ ({a}: 12, {b}: 28); give img_size: the value the checkpoints were trained with"
    )
    assert not (tmp_path / "out2").exists()


def test_non_finite_tensor_refused_before_anything_is_written(tmp_path) -> None:
    user = write_user_suite(tmp_path / "ckpt", write_tasks(tmp_path / "data"))
    state = dict(user.states[1])
    state["layers.0.weight"] = state["layers.0.weight"].clone()
    state["layers.0.weight"][3, 5] = float("inf")
    from safetensors.torch import save_file

    save_file(state, str(user.checkpoints[1]))
    with pytest.raises(ConfigError) as err:
        build(spec_of(user), tmp_path / "out")
    assert str(err.value) == (
        f"multi-task: multitask.checkpoints[1]: {user.checkpoints[1]}: tensor 'layers.0.weight' "
        "has NaN or infinite values (allowed: finite values; a merge would spread them)"
    )
    assert not (tmp_path / "out").exists()


def test_never_writes_over_a_users_checkpoint(tmp_path) -> None:
    out = tmp_path / "out"
    user = write_user_suite(out, write_tasks(tmp_path / "data"))
    moved = out / "pretrained.safetensors"  # where the suite's pre-trained backbone goes
    user.pretrained.rename(moved)
    before = file_bytes([out])
    with pytest.raises(ConfigError) as err:
        build(spec_of(user, pretrained=str(moved)), out)
    assert str(err.value) == (
        f"multi-task: {moved} is one of the suite's checkpoints; the suite is written there, "
        "so choose another --out"
    )
    assert file_bytes([out]) == before


def test_a_trained_suite_takes_the_sections_input() -> None:
    """in_chans / img_size of the section apply to a trained suite too (default 1 x 28)."""
    tasks = ["mt-parity", "mt-rotated"]
    runs = suite_configs(MultitaskSpec(enabled=True, tasks=tasks, in_chans=3, img_size=16))
    assert [(c.in_chans, c.img_size) for c in runs] == [(3, 16)] * 3
    runs = suite_configs(MultitaskSpec(enabled=True, tasks=tasks))
    assert [(c.in_chans, c.img_size) for c in runs] == [(1, 28)] * 3
