"""Single training runs: caching by hash, determinism, schedules, failure modes."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
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
    slice_positions,
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


@pytest.mark.parametrize("cut", [0.5, 0.3, 0.77])
def test_train_slices_are_disjoint_and_cover_every_item(cut):
    from mergelab.data import load_dataset

    targets = load_dataset("digits").targets("train")
    lo = slice_positions(targets, 0.0, cut)
    hi = slice_positions(targets, cut, 1.0)
    assert len(np.intersect1d(lo, hi)) == 0
    assert np.array_equal(np.sort(np.concatenate([lo, hi])), np.arange(len(targets)))
    # stratified: every class split in the same proportion (to rounding)
    for c in np.unique(targets):
        n_c = int((targets == c).sum())
        assert abs(int((targets[lo] == c).sum()) - cut * n_c) <= 0.5
    # fixed: the same positions every time; three pieces cover as well as two
    assert np.array_equal(lo, slice_positions(targets, 0.0, cut))
    pieces = [slice_positions(targets, a, b) for a, b in [(0, 0.2), (0.2, cut), (cut, 1)]]
    assert np.array_equal(np.sort(np.concatenate(pieces)), np.arange(len(targets)))
    # multi-label targets: one fixed order of all items, cut the same way
    multi = (np.random.default_rng(1).random((101, 4)) > 0.5).astype(np.float32)
    m_lo, m_hi = slice_positions(multi, 0, cut), slice_positions(multi, cut, 1)
    assert len(np.intersect1d(m_lo, m_hi)) == 0 and len(m_lo) + len(m_hi) == 101


def test_train_slice_selects_the_items_a_run_trains_on(tmp_path):
    halves = [
        train_model(tiny(train_slice=s, steps=1), cache_dir=tmp_path, progress=False)
        for s in [(0, 0.5), (0.5, 1)]
    ]
    items = [json.loads(p.with_suffix(".json").read_text())["train_items"] for p in halves]
    assert sum(items) == 1258 and abs(items[0] - items[1]) <= 10
    assert tiny(train_slice=[0, 1]).config_hash() == tiny().config_hash()
    with pytest.raises(ValidationError, match="0 <= lo < hi <= 1"):
        tiny(train_slice=(0.5, 0.5))
    with pytest.raises(ValidationError, match="0 <= lo < hi <= 1"):
        tiny(train_slice=(-0.1, 0.5))
    with pytest.raises(ValidationError, match="replaced by train_slice"):
        tiny(train_fraction=0.5)
    with pytest.raises(TrainingError, match=r"digits.*train_slice \[0.0, 0.001\]"):
        train_model(tiny(train_slice=(0, 0.001)), cache_dir=tmp_path, progress=False)


def scripted_val(monkeypatch, curve):
    """Make the trainer's val pass return ``curve`` epoch by epoch; returns its call log."""
    calls: list[int] = []

    def fake(model, x, y, *, multilabel):
        calls.append(len(x))
        return curve[len(calls) - 1]

    monkeypatch.setattr(trainer_module, "val_score", fake)
    return calls


def test_patience_stops_on_a_plateau_and_keeps_the_best_epoch(tmp_path, monkeypatch):
    # digits train: 1258 items // 100 = 12 steps per epoch; at most 10 epochs
    base = {"batch_size": 100, "schedule": "constant", "lr": 0.05}
    calls = scripted_val(monkeypatch, [0.5, 0.7, 0.6, 0.7, 0.65, 0.9, 0.9])
    path = train_model(
        tiny(steps=None, epochs=10, patience=3, **base), cache_dir=tmp_path, progress=False
    )
    assert calls == [270] * 5  # the whole val split, after epochs 1..5, then stop
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["val_curve"] == [0.5, 0.7, 0.6, 0.7, 0.65]
    assert side["best_epoch"] == 2  # the tie at epoch 4 keeps the earliest
    assert side["epochs_run"] == 5 and side["steps"] == 60 and side["max_steps"] == 120
    # the kept weights are those after epoch 2: a plain 2-epoch run (constant lr)
    plain = train_model(tiny(steps=None, epochs=2, **base), cache_dir=tmp_path, progress=False)
    assert torch.equal(flat(path), flat(plain))
    assert "val_curve" not in json.loads(plain.with_suffix(".json").read_text())
    # never improving after epoch 1: stops after 1 + patience epochs
    scripted_val(monkeypatch, [0.8] * 10)
    flatline = train_model(
        tiny(steps=None, epochs=10, patience=2, seed=5, **base), cache_dir=tmp_path, progress=False
    )
    side = json.loads(flatline.with_suffix(".json").read_text())
    assert (side["best_epoch"], side["epochs_run"]) == (1, 3)


def test_patience_measures_real_val_accuracy_and_is_deterministic(tmp_path):
    config = tiny(steps=None, epochs=3, patience=5, batch_size=100)
    a = train_model(config, cache_dir=tmp_path / "a", progress=False)
    b = train_model(config, cache_dir=tmp_path / "b", progress=False)
    assert a.read_bytes() == b.read_bytes()
    side = json.loads(a.with_suffix(".json").read_text())
    assert len(side["val_curve"]) == side["epochs_run"] == 3
    best = side["best_epoch"]
    assert side["val_curve"][best - 1] == max(side["val_curve"])
    # the kept model scores exactly its curve value on val, measured independently
    from mergelab.data import as_tensors, load_dataset

    model = build_model("mlp", 10, in_chans=1, img_size=8, hidden=[32])
    load_weights(model, a)
    x, y = as_tensors(load_dataset("digits").split("val"))
    with torch.no_grad():
        acc = float((model.eval()(x).argmax(1) == y).double().mean())
    assert acc == pytest.approx(side["val_curve"][best - 1], abs=1e-12)
    # still improving at the end: the val passes left the run exactly as without them
    no_stop = train_model(
        tiny(steps=None, epochs=3, batch_size=100), cache_dir=tmp_path, progress=False
    )
    assert best == 3
    assert torch.equal(flat(a), flat(no_stop))


def test_reset_head_gives_a_fresh_seeded_head_and_skips_other_class_counts(tmp_path):
    from mergelab.io import save_state_dict

    start = train_model(tiny(steps=30), cache_dir=tmp_path, progress=False)
    fresh = [
        train_model(
            tiny(steps=0, init=str(start), reset_head=True, seed=4),
            cache_dir=tmp_path / d,
            progress=False,
        )
        for d in ("a", "b")
    ]
    sd0, sd1, sd2 = (load_state_dict(p) for p in (start, *fresh))
    assert not torch.equal(sd1["head.weight"], sd0["head.weight"])
    assert torch.equal(sd1["head.weight"], sd2["head.weight"])
    assert torch.equal(sd1["head.bias"], sd2["head.bias"])
    assert torch.equal(sd1["layers.0.weight"], sd0["layers.0.weight"])  # body kept
    other_seed = train_model(
        tiny(steps=0, init=start.stem, reset_head=True, seed=5), cache_dir=tmp_path, progress=False
    )
    assert not torch.equal(load_state_dict(other_seed)["head.weight"], sd1["head.weight"])
    # the fresh head is the Linear's own init drawn from a generator seeded by the run seed
    probe = torch.nn.Linear(32, 10)
    torch.manual_seed(4)
    probe.reset_parameters()
    assert torch.equal(sd1["head.weight"], probe.weight.detach())
    # a start with another class count (e.g. an ImageNet head): its head is skipped
    torch.manual_seed(0)
    foreign = build_model("mlp", 7, in_chans=1, img_size=8, hidden=[32]).state_dict()
    ckpt = tmp_path / "foreign.safetensors"
    save_state_dict(foreign, ckpt)
    run = train_model(
        tiny(steps=0, init=str(ckpt), reset_head=True), cache_dir=tmp_path, progress=False
    )
    sd = load_state_dict(run)
    assert sd["head.weight"].shape == (10, 32)
    assert torch.equal(sd["layers.0.weight"], foreign["layers.0.weight"])
    with pytest.raises(TrainingError, match=r"(?s)shape mismatches.*head.weight"):
        train_model(tiny(steps=0, init=str(ckpt)), cache_dir=tmp_path, progress=False)
    # any other mismatch still fails, with load_weights' listing
    bad = dict(foreign, extra=torch.zeros(3))
    del bad["layers.0.bias"]
    bad_ckpt = tmp_path / "bad.safetensors"
    save_state_dict(bad, bad_ckpt)
    with pytest.raises(TrainingError) as info:
        train_model(
            tiny(steps=0, init=str(bad_ckpt), reset_head=True), cache_dir=tmp_path, progress=False
        )
    assert "missing keys (1): layers.0.bias" in str(info.value)
    assert "unexpected keys (1): extra" in str(info.value)


def test_diverging_loss_raises(tmp_path):
    with pytest.raises(TrainingError, match="lower the learning rate"):
        train_model(tiny(lr=1e12, steps=25, weight_decay=0.0), cache_dir=tmp_path, progress=False)
    assert not list(tmp_path.glob("*.safetensors"))


def test_val_score_is_accuracy_or_mean_auroc_in_eval_mode():
    from mergelab.evaluate.metrics import mean_auroc

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 1, 8, 8, generator=gen)
    model = build_model("resnet8", 4, in_chans=1, img_size=8, widths=(4, 4, 4))
    model.train()
    stats = model.stem[1].running_mean.clone()
    multi = (torch.rand(50, 4, generator=gen) > 0.5).float()
    with torch.no_grad():
        logits = model.eval()(x)
    model.train()
    got = trainer_module.val_score(model, x, multi, multilabel=True)
    assert got == pytest.approx(mean_auroc(logits.numpy(), multi.numpy()).value)
    labels = torch.randint(0, 4, (50,), generator=gen)
    acc = trainer_module.val_score(model, x, labels, multilabel=False)
    assert acc == pytest.approx(float((logits.argmax(1) == labels).double().mean()))
    assert model.training  # put back in train mode; BatchNorm statistics untouched
    assert torch.equal(model.stem[1].running_mean, stats)


def test_a_split_too_big_for_memory_streams_with_the_same_result(tmp_path, monkeypatch):
    # cnn on mnist5k: 28 px images, augmented, on a train slice, with val passes (patience).
    config = TrainConfig(
        dataset="mnist5k", arch="cnn", model_kwargs={"channels": [4, 8]}, steps=6,
        batch_size=16, augment=True, train_slice=(0.5, 1.0), patience=3, epochs=None,
    )  # fmt: skip
    in_memory = train_model(config, cache_dir=tmp_path / "a", progress=False)
    trainer_module._TENSORS.clear()
    monkeypatch.setattr(trainer_module, "MEMORY_LIMIT_BYTES", 1000)
    x, _, _ = trainer_module._train_data(config)
    assert isinstance(x, trainer_module.LazyImages) and len(x) == 1750
    streamed = train_model(config, cache_dir=tmp_path / "b", progress=False)
    assert streamed.read_bytes() == in_memory.read_bytes()
    trainer_module._TENSORS.clear()


def test_track_val_records_the_curve_without_changing_the_weights(tmp_path):
    plain = train_model(tiny(epochs=3, steps=None), cache_dir=tmp_path, progress=False)
    tracked = train_model(
        tiny(epochs=3, steps=None, track_val=True), cache_dir=tmp_path, progress=False
    )
    a, b = load_state_dict(plain), load_state_dict(tracked)
    assert all(torch.equal(a[k], b[k]) for k in a)
    side = json.loads(tracked.with_suffix(".json").read_text())
    assert len(side["val_curve"]) == 3 and side["epochs_run"] == 3
    assert all(0.0 <= v <= 1.0 for v in side["val_curve"])
