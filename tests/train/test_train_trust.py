"""Trained runs are checked on reuse, and ``train --out`` holds copies of exactly the
current run's files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mergelab.cli import main
from mergelab.train import TrainConfig, TrainingError, train_model, train_runs


def tiny(**kw) -> TrainConfig:
    base = {
        "dataset": "digits",
        "arch": "mlp",
        "model_kwargs": {"hidden": [16]},
        "steps": 10,
        "batch_size": 32,
        "lr": 0.05,
    }
    return TrainConfig(**{**base, **kw})


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last tensor's last byte
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-4])


def _strip_hash(path: Path) -> None:
    from mergelab.io import SafetensorsFile, save_state_dict

    with SafetensorsFile(path) as f:
        meta = {k: v for k, v in f.metadata.items() if k != "mergelab.tensors_sha256"}
        state = {name: f.read(name).reshape(f.infos[name].shape) for name in f.infos}
    save_state_dict(state, path, metadata=meta, force=True)


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (_flip_last_byte, "trained run does not match its content hash"),
        (_truncate, "unreadable trained run"),
        (_strip_hash, "trained run without a content hash"),
    ],
)
def test_a_tampered_run_is_reported_and_trained_again(tmp_path, capsys, tamper, problem):
    config = tiny()
    path = train_model(config, cache_dir=tmp_path, progress=False)
    original = path.read_bytes()
    tamper(path)
    assert path.read_bytes() != original
    assert train_model(config, cache_dir=tmp_path, progress=False) == path
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"mergelab: warning: {path}: {problem}")
    assert line.endswith("; removed, recomputing it")
    assert path.read_bytes() == original  # training again gives the original run


def test_another_runs_file_under_this_name_is_not_reused(tmp_path, capsys):
    a = train_model(tiny(), cache_dir=tmp_path, progress=False)
    b = train_model(tiny(seed=1), cache_dir=tmp_path, progress=False)
    want = b.read_bytes()
    shutil.copyfile(a, b)
    assert train_model(tiny(seed=1), cache_dir=tmp_path, progress=False) == b
    assert "config hash is not its name" in capsys.readouterr().err
    assert b.read_bytes() == want


def test_the_pool_retrains_a_tampered_run_and_refuses_a_tampered_start(tmp_path, capsys):
    config = tiny()
    [path] = train_runs([config], cache_dir=tmp_path, progress=False)
    original = path.read_bytes()
    _flip_last_byte(path)
    lines: list[str] = []
    assert train_runs([config], cache_dir=tmp_path, progress=False, log=lines.append) == [path]
    assert len(lines) == 1 and lines[0].startswith("trained 1/1")
    assert path.read_bytes() == original
    # a start that is only in the cache (not listed) and fails its check: one clear error
    _flip_last_byte(path)
    capsys.readouterr()
    with pytest.raises(TrainingError, match="neither listed nor trained"):
        train_runs([tiny(init=config.config_hash())], cache_dir=tmp_path, progress=False)
    assert str(path) in capsys.readouterr().err
    assert not path.exists()


RECIPE = (
    "dataset: digits\narch: mlp\nmodel_kwargs: {{hidden: [16]}}\nn_models: {n}\nmode: {mode}\n"
    "train: {{steps: 5, batch_size: 32}}\n"
)
PRETRAIN = "pretrain: {steps: 10, batch_size: 32}\n"


def _train(tmp_path: Path, n: int, mode: str = "shared") -> Path:
    recipe = tmp_path / f"recipe-{n}-{mode}.yaml"
    recipe.write_text(RECIPE.format(n=n, mode=mode) + (PRETRAIN if mode == "shared" else ""))
    out = tmp_path / "out"
    argv = ["train", str(recipe), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert main([*argv, "--no-progress"]) == 0
    return out


def test_writing_into_an_output_file_leaves_the_cache_alone(tmp_path, capsys):
    out = _train(tmp_path, 2)
    manifest = json.loads((out / "ingredients.json").read_text())
    cached = tmp_path / "cache" / f"{manifest['ingredients'][0]}.safetensors"
    before = cached.read_bytes()
    placed = out / "ingredient-00.safetensors"
    assert placed.read_bytes() == before
    assert cached.stat().st_nlink == 1 and placed.stat().st_ino != cached.stat().st_ino
    with placed.open("r+b") as fh:  # write in place, as an editor or a script would
        fh.seek(-8, 2)
        fh.write(b"\0" * 8)
    assert cached.read_bytes() == before
    # and a rerun puts the run back without retraining it
    capsys.readouterr()
    _train(tmp_path, 2)
    assert placed.read_bytes() == before
    assert "warning" not in capsys.readouterr().err


def test_a_reused_out_folder_holds_exactly_the_current_files(tmp_path, capsys):
    out = _train(tmp_path, 3)
    (out / "notes.txt").write_text("mine")
    user_copy = out / "ingredient-09.safetensors"  # named like ours, but not written by us
    user_copy.write_bytes(b"user bytes")
    _train(tmp_path, 2, mode="independent")
    assert sorted(p.name for p in out.iterdir()) == [
        ".mergelab-output",
        "ingredient-00.safetensors",
        "ingredient-01.safetensors",
        "ingredient-09.safetensors",
        "ingredients.json",
        "notes.txt",
    ]
    assert (out / "notes.txt").read_text() == "mine"
    assert user_copy.read_bytes() == b"user bytes"
    manifest = json.loads((out / "ingredients.json").read_text())
    assert manifest["start"] is None
    assert sorted(manifest["files"]) == ["ingredient-00.safetensors", "ingredient-01.safetensors"]
    for name, stem in manifest["files"].items():
        assert (out / name).read_bytes() == (
            tmp_path / "cache" / f"{stem}.safetensors"
        ).read_bytes()
    printed = capsys.readouterr().out.split()
    assert printed[-2:] == [str(out / name) for name in manifest["files"]]


def test_a_listed_file_the_user_replaced_is_not_removed(tmp_path):
    out = _train(tmp_path, 3, mode="independent")
    mine = out / "ingredient-02.safetensors"
    mine.write_bytes(b"replaced by the user")
    _train(tmp_path, 2, mode="independent")
    assert mine.read_bytes() == b"replaced by the user"


def test_out_that_is_a_file_is_one_error_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(n=2, mode="shared"))
    (tmp_path / "taken").write_text("x")
    assert main(["train", str(recipe), "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mergelab: error: --out {tmp_path / 'taken'}: is a file, not a folder"]
    assert (tmp_path / "taken").read_text() == "x"


def _recipe(tmp_path: Path) -> Path:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(n=2, mode="independent"))
    return recipe


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("ingredient-01.safetensors", "my own model"),
        ("start.safetensors", "my own start"),
        ("ingredients.json", '{"mine": true}'),
    ],
)
def test_a_users_file_in_out_is_refused_before_training(tmp_path, capsys, name, content):
    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_text(content)
    argv = ["train", str(_recipe(tmp_path)), "--out", str(out), "--no-progress"]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"mergelab: error: {out / name}: not written by mergelab, which would replace it; "
        f"move it away or choose another --out"
    ]
    assert (out / name).read_text() == content
    assert sorted(p.name for p in out.iterdir()) == [name]
    assert not (tmp_path / "cache").exists()  # nothing trained


def test_a_rerun_into_an_unmarked_out_of_an_earlier_mergelab_train_works(tmp_path):
    out = _train(tmp_path, 2, mode="independent")
    (out / ".mergelab-output").unlink()  # as mergelab wrote it before the marker existed
    before = (out / "ingredient-00.safetensors").read_bytes()
    _train(tmp_path, 2, mode="independent")
    assert (out / "ingredient-00.safetensors").read_bytes() == before


def test_a_cache_dir_that_is_a_file_is_one_line_and_out_is_not_made(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    out = tmp_path / "out"
    argv = ["train", str(_recipe(tmp_path)), "--out", str(out), "--no-progress"]
    assert main([*argv, "--cache-dir", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mergelab: error: --cache-dir {tmp_path / 'taken'}: is a file, not a folder"]
    assert not out.exists()


def test_an_interrupted_training_leaves_no_out_folder(tmp_path, capsys, monkeypatch):
    import mergelab.train.recipe as recipe_module

    def fail(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C (or SIGTERM) while training

    monkeypatch.setattr(recipe_module, "make_ingredients", fail)
    out = tmp_path / "new" / "out"
    argv = ["train", str(_recipe(tmp_path)), "--out", str(out), "--no-progress"]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 130
    assert capsys.readouterr().err == "mergelab: interrupted; no partial output was left behind\n"
    assert not (tmp_path / "new").exists()


def test_state_on_disk_matches_the_trained_model(tmp_path):
    """The recorded hash is of the tensors as saved, so a fresh run verifies at once."""
    from mergelab.hashing import checkpoint_sha256
    from mergelab.io import SafetensorsFile

    path = train_model(tiny(), cache_dir=tmp_path, progress=False)
    with SafetensorsFile(path) as f:
        assert f.metadata["mergelab.tensors_sha256"] == checkpoint_sha256(f)


def test_a_manifest_from_before_files_is_understood(tmp_path):
    out = _train(tmp_path, 3)
    manifest = json.loads((out / "ingredients.json").read_text())
    del manifest["files"]  # as mergelab wrote it before this change
    (out / "ingredients.json").write_text(json.dumps(manifest))
    _train(tmp_path, 2, mode="independent")
    assert sorted(p.name for p in out.iterdir()) == [
        ".mergelab-output",
        "ingredient-00.safetensors",
        "ingredient-01.safetensors",
        "ingredients.json",
    ]
