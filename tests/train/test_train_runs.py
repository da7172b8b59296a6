"""Single training runs: caching by hash, determinism, schedules, failure modes."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from mergelab.io import load_state_dict
from mergelab.models import build_model, load_weights
from mergelab.train import (
    TrainConfig,
    TrainingError,
    fit,
    lr_factor,
    read_train_config,
    total_steps,
    train_model,
)
from mergelab.train import trainer as trainer_module


def tiny(**kw) -> TrainConfig:
    """A digits MLP that trains in a few hundredths of a second."""
    base = {
        "dataset": "digits",
        "arch": "mlp",
        "model_kwargs": {"hidden": [32]},
        "steps": 20,
        "batch_size": 32,
        "lr": 0.05,
    }
    return TrainConfig(**{**base, **kw})


def flat(path: Path) -> torch.Tensor:
    sd = load_state_dict(path)
    return torch.cat([v.flatten().double() for v in sd.values() if v.is_floating_point()])


def test_rerun_does_no_training(tmp_path, monkeypatch):
    config = tiny()
    first = train_model(config, cache_dir=tmp_path, progress=False)
    assert first == tmp_path / f"{config.config_hash()}.safetensors"
    mtime = first.stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("a cached run must not train again")

    monkeypatch.setattr(trainer_module, "fit", boom)
    again = train_model(config, cache_dir=tmp_path, progress=False)
    assert again == first
    assert first.stat().st_mtime_ns == mtime
    # a different config is not a cache hit: it reaches the (patched) training loop
    with pytest.raises(AssertionError, match="must not train"):
        train_model(tiny(lr=0.01), cache_dir=tmp_path, progress=False)


def test_same_config_gives_identical_bytes(tmp_path):
    a = train_model(tiny(augment=True), cache_dir=tmp_path / "a", progress=False, threads=1)
    b = train_model(tiny(augment=True), cache_dir=tmp_path / "b", progress=False, threads=1)
    assert a.name == b.name
    assert a.read_bytes() == b.read_bytes()


def test_seeds_change_weights_and_only_seed_changes_init(tmp_path):
    base = flat(train_model(tiny(), cache_dir=tmp_path, progress=False))
    other_seed = flat(train_model(tiny(seed=1), cache_dir=tmp_path, progress=False))
    other_order = flat(train_model(tiny(data_seed=1), cache_dir=tmp_path, progress=False))
    assert not torch.equal(base, other_seed)
    assert not torch.equal(base, other_order)
    # zero steps: the checkpoint is the seeded init, which data_seed must not touch
    init_a = flat(train_model(tiny(steps=0), cache_dir=tmp_path, progress=False))
    init_b = flat(train_model(tiny(steps=0, data_seed=7), cache_dir=tmp_path, progress=False))
    init_c = flat(train_model(tiny(steps=0, seed=7), cache_dir=tmp_path, progress=False))
    assert torch.equal(init_a, init_b)
    assert not torch.equal(init_a, init_c)
    assert not torch.equal(init_a, base)  # 20 steps did move the weights


def test_checkpoint_loads_and_records_its_config(tmp_path):
    config = tiny(optimizer="adamw", lr=0.003, schedule="step", warmup_steps=3)
    path = train_model(config, cache_dir=tmp_path, progress=False)
    assert read_train_config(path) == config
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["config_hash"] == config.config_hash()
    assert sidecar["steps"] == 20
    model = build_model("mlp", 10, in_chans=1, img_size=8, hidden=[32])
    load_weights(model, path)  # strict: every key and shape matches
    assert not list(tmp_path.glob(".*"))  # no staging files left behind


def test_config_hash_follows_content_not_path(tmp_path):
    start = train_model(tiny(steps=5), cache_dir=tmp_path, progress=False)
    copy_a = tmp_path / "a.safetensors"
    copy_b = tmp_path / "sub" / "b.safetensors"
    copy_b.parent.mkdir()
    shutil.copyfile(start, copy_a)
    shutil.copyfile(start, copy_b)
    ha = tiny(init=str(copy_a)).config_hash()
    assert ha == tiny(init=str(copy_b)).config_hash()
    assert ha != tiny().config_hash()
    assert ha != tiny(init=start.stem).config_hash()  # a hash reference is its own identity
    other = train_model(tiny(steps=6), cache_dir=tmp_path, progress=False)
    shutil.copyfile(other, copy_b)
    assert tiny(init=str(copy_b)).config_hash() != ha
    assert tiny(lr=0.0501).config_hash() != tiny().config_hash()
    assert tiny(epochs=None, steps=20).config_hash() == tiny().config_hash()


def test_init_by_hash_and_by_path_start_from_that_checkpoint(tmp_path):
    start = train_model(tiny(steps=30), cache_dir=tmp_path, progress=False)
    by_hash = train_model(tiny(steps=0, init=start.stem), cache_dir=tmp_path, progress=False)
    by_path = train_model(tiny(steps=0, init=str(start)), cache_dir=tmp_path, progress=False)
    assert torch.equal(flat(by_hash), flat(start))
    assert torch.equal(flat(by_path), flat(start))
    with pytest.raises(TrainingError, match="config hash"):
        train_model(tiny(init="0" * 64), cache_dir=tmp_path, progress=False)
    with pytest.raises(FileNotFoundError):
        tiny(init=str(tmp_path / "missing.safetensors")).config_hash()


def test_length_is_epochs_or_steps():
    assert TrainConfig().epochs == 1.0
    with pytest.raises(ValidationError, match="not both"):
        TrainConfig(epochs=2, steps=10)
    with pytest.raises(ValidationError):
        TrainConfig(schedule="linear")
    assert total_steps(TrainConfig(epochs=2, batch_size=64), 1257) == 2 * (1257 // 64)
    assert total_steps(TrainConfig(epochs=0.5, batch_size=100), 1000) == 5
    assert total_steps(TrainConfig(steps=7), 10) == 7


def test_learning_rate_schedules():
    cos = TrainConfig(steps=100, schedule="cosine", warmup_steps=10)
    factors = [lr_factor(cos, s, 100) for s in range(100)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.5, abs=1e-9)
    assert factors[-1] < 0.01
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    step = TrainConfig(steps=100, schedule="step", step_milestones=(0.5, 0.75), step_gamma=0.1)
    assert lr_factor(step, 49, 100) == 1.0
    assert lr_factor(step, 50, 100) == pytest.approx(0.1)
    assert lr_factor(step, 80, 100) == pytest.approx(0.01)
    assert lr_factor(TrainConfig(schedule="constant"), 99, 100) == 1.0


@pytest.mark.parametrize(("side", "changes"), [(16, True), (8, False)])
def test_augmentation_only_on_images_of_16_px_and_up(side, changes):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, side, side, generator=gen)
    y = torch.randint(0, 3, (64,), generator=gen)
    results = []
    for aug in (False, True):
        torch.manual_seed(0)
        model = build_model("linear", 3, in_chans=1, img_size=side)
        config = TrainConfig(steps=5, batch_size=16, augment=aug, augment_flip=False)
        stats = fit(model, x, y, config, progress=False)
        assert stats["steps"] == 5
        results.append(model.head.weight.detach().clone())
    assert torch.equal(results[0], results[1]) != changes


def test_train_fraction_is_a_stratified_subset(tmp_path):
    path = train_model(tiny(train_fraction=0.5, steps=1), cache_dir=tmp_path, progress=False)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    from mergelab.data import load_dataset

    targets = load_dataset("digits").targets("train")
    counts = torch.bincount(torch.as_tensor(targets))
    assert sidecar["train_items"] == int(sum(max(1, round(0.5 * int(c))) for c in counts))


def test_diverging_loss_raises(tmp_path):
    with pytest.raises(TrainingError, match="lower the learning rate"):
        train_model(tiny(lr=1e12, steps=25, weight_decay=0.0), cache_dir=tmp_path, progress=False)
    assert not list(tmp_path.glob("*.safetensors"))


def test_device_defaults_to_cuda_when_present():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert trainer_module.resolve_device(None).type == expected
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="no CUDA"):
            trainer_module.resolve_device("cuda")
