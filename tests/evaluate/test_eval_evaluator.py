"""Evaluator: exact outputs, one pass per checkpoint and split, content-keyed disk cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mergelab.data import DatasetSplits, as_tensors, make_loader
from mergelab.errors import MergeError
from mergelab.evaluate import (
    CheckpointMismatchError,
    Evaluator,
    ModelSource,
    PassRecord,
    default_cache_dir,
    default_device,
    file_sha256,
)
from mergelab.io import load_state_dict
from mergelab.models import build_model, load_weights, split_model


def _evaluator(digits: DatasetSplits, cache: Path | None, **kw) -> Evaluator:
    return Evaluator(digits, arch="mlp", cache_dir=cache, progress=False, **kw)


def test_outputs_equal_a_direct_forward_pass(digits: DatasetSplits, mlps, tmp_path: Path) -> None:
    ev = _evaluator(digits, tmp_path, batch_size=100)
    out = ev.outputs(mlps[0], "val")
    model = build_model("mlp", 10, in_chans=1, img_size=8)
    load_weights(model, mlps[0])
    model.eval()
    x, y = as_tensors(digits.split("val"))
    with torch.no_grad():
        logits = model(x).numpy()
        feats = split_model(model).features(x).numpy()
    assert out.logits.shape == (digits.size("val"), 10)
    np.testing.assert_allclose(out.logits, logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.features, feats, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.targets, y.numpy())
    assert ev.counter.passes() == 1
    assert ev.counter.batches() == 3  # 270 images in batches of 100
    assert ev.counter.samples() == 270


def test_second_evaluation_runs_no_forward_pass(
    digits: DatasetSplits, mlps, tmp_path: Path
) -> None:
    seen: list[PassRecord] = []
    ev = _evaluator(digits, tmp_path)
    ev.counter.hooks.append(seen.append)
    first = ev.outputs(mlps[1], "test")
    again = ev.outputs(mlps[1], "test")
    assert len(seen) == 1 and seen[0].split == "test" and seen[0].kind == "model"
    np.testing.assert_array_equal(first.logits, again.logits)
    # A new evaluator (as in a new process) finds the disk cache: still no pass.
    fresh = _evaluator(digits, tmp_path)
    from_disk = fresh.outputs({k: v.clone() for k, v in mlps[1].items()}, "test")
    assert fresh.counter.passes() == 0
    np.testing.assert_array_equal(from_disk.logits, first.logits)
    np.testing.assert_array_equal(from_disk.features, first.features)
    # Another split, or other weights, do need a pass.
    fresh.outputs(mlps[1], "val")
    fresh.outputs(mlps[2], "test")
    assert fresh.counter.passes() == 2


def test_cache_key_follows_content_split_and_architecture(
    digits: DatasetSplits, mlps, tmp_path: Path
) -> None:
    ev = _evaluator(digits, tmp_path)
    path = tmp_path / "a.safetensors"
    save_file(mlps[0], str(path))
    src_file = ModelSource.of(path)
    assert src_file.digest == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(path)
    same = ModelSource.of({k: v.clone() for k, v in mlps[0].items()})
    assert same.digest == ModelSource.of(mlps[0]).digest
    changed = {k: v.clone() for k, v in mlps[0].items()}
    changed["head.bias"][0] += 1e-3
    assert ModelSource.of(changed).digest != same.digest
    key = ev.cache_key(same, "val")
    assert key.startswith(digits.key("val") + "--")
    assert ev.cache_key(same, "test") != key
    assert ev.cache_key(ModelSource.of(changed), "val") != key
    other_head = Evaluator(digits, arch="mlp", head="head", cache_dir=tmp_path, progress=False)
    assert other_head.cache_key(same, "val") != key


def test_cache_files_are_complete_and_a_damaged_one_is_recomputed(
    digits: DatasetSplits, mlps, tmp_path: Path
) -> None:
    ev = _evaluator(digits, tmp_path)
    out = ev.outputs(mlps[0], "val")
    path = ev.cache.path(out.key)
    assert path is not None and path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left
    with np.load(path) as z:
        np.testing.assert_array_equal(z["logits"], out.logits)
    path.write_bytes(path.read_bytes()[:100])  # truncated by a crash of something else
    fresh = _evaluator(digits, tmp_path)
    again = fresh.outputs(mlps[0], "val")
    assert fresh.counter.passes() == 1
    np.testing.assert_allclose(again.logits, out.logits, rtol=1e-6)
    with np.load(path) as z:  # rewritten whole
        np.testing.assert_array_equal(z["logits"], again.logits)


def test_wrong_checkpoint_gives_the_load_weights_error(
    digits: DatasetSplits, tmp_path: Path
) -> None:
    cnn = build_model("cnn", 10, in_chans=1, img_size=8).state_dict()
    path = tmp_path / "cnn.safetensors"
    save_file(cnn, str(path))
    with pytest.raises(ValueError) as direct:
        load_weights(build_model("mlp", 10, in_chans=1, img_size=8), load_state_dict(path))
    ev = _evaluator(digits, tmp_path)
    with pytest.raises(CheckpointMismatchError) as err:
        ev.outputs(path, "val")
    assert isinstance(err.value, MergeError)
    msg = str(err.value)
    assert str(path) in msg and "missing keys" in msg and "unexpected keys" in msg
    assert str(direct.value) in msg
    assert ev.counter.passes() == 0


def test_bn_recalibration_is_a_cumulative_average_over_train_batches(
    digits: DatasetSplits,
) -> None:
    ev = Evaluator(digits, arch="resnet_small", cache_dir=None, progress=False, batch_size=300)
    model = ev.model
    stem_bn = model.stem[1]
    stem_bn.running_mean.fill_(5.0)
    momentum = stem_bn.momentum
    ev.recalibrate_bn(model)
    # Expected: the plain mean over batches of each batch's per-channel mean of the conv output.
    batch_means = []
    with torch.no_grad():
        for x, _ in make_loader(digits.split("train"), batch_size=300):
            batch_means.append(model.stem[0](x).mean(dim=(0, 2, 3)))
    expected = torch.stack(batch_means).mean(0)
    torch.testing.assert_close(stem_bn.running_mean, expected, rtol=1e-4, atol=1e-5)
    assert stem_bn.momentum == momentum and not model.training
    rec = ev.counter.select(kind="bn")
    assert len(rec) == 1 and rec[0].samples == digits.size("train") and rec[0].batches == 5
    limited = Evaluator(
        digits, arch="resnet_small", cache_dir=None, progress=False, batch_size=300, bn_batches=2
    )
    limited.recalibrate_bn(limited.model)
    assert limited.counter.batches("bn") == 2


def test_model_without_batchnorm_needs_no_recalibration_pass(digits: DatasetSplits) -> None:
    ev = _evaluator(digits, None)
    ev.recalibrate_bn(ev.model)
    assert ev.counter.passes() == 0


def test_device_and_progress_bar(
    digits: DatasetSplits, mlps, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device().type == expected
    quiet = _evaluator(digits, None)
    assert quiet.device.type == expected
    quiet.outputs(mlps[0], "val")
    assert "val" not in capsys.readouterr().err
    loud = Evaluator(digits, arch="mlp", cache_dir=None, progress=True)
    loud.outputs(mlps[0], "val")
    assert "model1 val" in capsys.readouterr().err


def test_bad_architecture_is_a_merge_error(digits: DatasetSplits) -> None:
    with pytest.raises(MergeError, match="no_such_arch"):
        Evaluator(digits, arch="no_such_arch", progress=False).model  # noqa: B018


def test_default_cache_dir_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mergelab.train import default_train_cache

    monkeypatch.setenv("MERGELAB_CACHE", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here" / "outputs"
    assert default_train_cache() == tmp_path / "here" / "ingredients"
    monkeypatch.delenv("MERGELAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "mergelab" / "outputs"
    assert default_train_cache() == tmp_path / "xdg" / "mergelab" / "ingredients"


def test_a_batch_the_device_has_no_memory_for_runs_in_halves(
    digits: DatasetSplits, mlps, monkeypatch
) -> None:
    want = _evaluator(digits, None, batch_size=100).outputs(mlps[0], "val")
    ev = _evaluator(digits, None, batch_size=100)
    split = ev.feature_head

    def small_memory(model=None):
        fh = split(model)
        features = fh.features

        def at_most_30(x):
            if len(x) > 30:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return features(x)

        fh.features = at_most_30
        return fh

    monkeypatch.setattr(ev, "feature_head", small_memory)
    got = ev.outputs(mlps[0], "val")
    np.testing.assert_allclose(got.logits, want.logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.features, want.features, rtol=1e-6, atol=1e-6)
    assert ev.halved == 2  # 100 -> 50 -> 25, and 25 kept for the rest of the pass
    assert ev.counter.batches() == 3  # still one pass of three batches


def test_no_memory_for_one_image_is_one_error_line(digits: DatasetSplits, mlps, monkeypatch):
    ev = _evaluator(digits, None, batch_size=4)
    split = ev.feature_head

    def no_memory(model=None):
        fh = split(model)

        def never(x):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

        fh.features = never
        return fh

    monkeypatch.setattr(ev, "feature_head", no_memory)
    with pytest.raises(
        MergeError,
        match=r"^mlp: out of cpu memory for a single image of shape \(1, 8, 8\); run fewer",
    ):
        ev.outputs(mlps[0], "val")
