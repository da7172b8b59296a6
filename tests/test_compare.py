"""``compare``: tidy results, atomic files, no repeated passes, val-only selection, the CLI."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from mergelab.compare import EXTRA_COLUMNS, RESULT_COLUMNS, RESULT_FILES, compare, run_compare
from mergelab.compare_cli import add_compare_parser
from mergelab.data import DatasetSplits, load_dataset
from mergelab.data.dataset import SplitPart, make_info
from mergelab.data.sources import ArraySource
from mergelab.errors import MergelabError
from mergelab.evaluate import Evaluator, ModelSource, Outputs
from mergelab.evaluate.toy import train_toy_models
from mergelab.models import build_model

COLUMNS = [
    "study", "dataset", "arch", "n_models", "method", "magnitude", "split", "metric", "value",
]  # fmt: skip
METHODS = {
    "Individual", "Perf Ave", "Best Individual", "Uniform Soup", "Greedy Soup", "Ens Logits",
    "Ens Features", "Ens Features*", "Greedy Ens Logits", "Greedy Ens Features",
    "Greedy Ens Logits (own)", "Greedy Ens Features (own)",
}  # fmt: skip


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread, and far faster than on two when other
    processes share the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def ckpts(digits: DatasetSplits, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    sds = train_toy_models(digits, arch="mlp", n_models=3, steps=20, pretrain_steps=20)
    folder = tmp_path_factory.mktemp("ckpts")
    paths = []
    for i, sd in enumerate(sds):
        paths.append(folder / f"m{i}.safetensors")
        save_file(sd, str(paths[-1]))
    return paths


def _run(digits: DatasetSplits, ckpts: list[Path], cache: Path, **kw) -> pd.DataFrame:
    return compare(ckpts, arch="mlp", data=digits, cache_dir=cache, progress=False, **kw)


def test_compare_returns_and_writes_tidy_rows(
    digits: DatasetSplits, ckpts: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    df = _run(digits, ckpts, tmp_path / "cache", out=out)
    assert list(df.columns[:9]) == COLUMNS == list(RESULT_COLUMNS)
    assert list(df.columns[9:]) == list(EXTRA_COLUMNS)
    assert set(df["method"]) == METHODS
    assert set(df["split"]) == {"val", "test"}
    assert set(df["metric"]) == {"accuracy", "nll", "ece"}
    assert (df["study"] == "compare").all() and (df["magnitude"] == 1.0).all()
    assert (df["n_models"] == 3).all() and (df["dataset"] == "digits").all()
    # 3 individual + 9 methods, x 2 splits x 3 metrics
    assert len(df) == (3 + 11) * 2 * 3
    assert sorted(p.name for p in out.iterdir()) == [".mergelab-output", *RESULT_FILES]
    csv = pd.read_csv(out / "results.csv")
    assert list(csv.columns) == list(df.columns)
    np.testing.assert_allclose(csv["value"], df["value"])
    records = json.loads((out / "results.json").read_text())
    assert len(records) == len(df) and list(records[0]) == list(df.columns)
    # Costs: a merge runs one model, an ensemble of k runs k.
    one = df[df.method == "Individual"].iloc[0]
    ens = df[df.method == "Ens Logits"].iloc[0]
    assert (ens["params"], ens["flops"]) == (3 * one["params"], 3 * one["flops"])
    soup = df[df.method == "Uniform Soup"].iloc[0]
    assert (soup["params"], soup["flops"]) == (one["params"], one["flops"])
    model = build_model("mlp", 10, in_chans=1, img_size=8)
    assert one["params"] == sum(p.numel() for p in model.parameters())
    # Perf Ave is the mean of the individual values.
    test_acc = df[(df.split == "test") & (df.metric == "accuracy")]
    ave = test_acc[test_acc.method == "Perf Ave"]["value"].item()
    assert ave == pytest.approx(test_acc[test_acc.method == "Individual"]["value"].mean())


def test_results_are_replaced_atomically(
    digits: DatasetSplits, ckpts: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    real_replace = os.replace
    calls: list[tuple[str, str]] = []

    def spy(src: str, dst: str) -> None:
        calls.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    _run(digits, ckpts, cache, out=out)
    written = [(Path(s), Path(d)) for s, d in calls if Path(d).parent == out]
    assert {d.name for _, d in written} == {".mergelab-output", "results.csv", "results.json"}
    assert all(s.parent == out and s.name.startswith(f".{d.name}.") for s, d in written)

    (out / "results.csv").write_text("old\n")

    def failing(src: str, dst: str) -> None:
        if Path(dst).name == "results.csv":
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(MergelabError, match=r"results\.csv: cannot write \(disk full\)$"):
        _run(digits, ckpts, cache, out=out)
    assert (out / "results.csv").read_text() == "old\n"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_second_comparison_runs_no_forward_pass(
    digits: DatasetSplits, ckpts: list[Path], tmp_path: Path
) -> None:
    first = run_compare(ckpts, arch="mlp", data=digits, cache_dir=tmp_path, progress=False)
    assert first.passes["model"]["passes"] == 2 * len(ckpts)  # val + test per model
    assert first.passes["soup"]["passes"] >= 2  # the uniform soup at least
    second = run_compare(ckpts, arch="mlp", data=digits, cache_dir=tmp_path, progress=False)
    assert second.evaluator.counter.records == []
    assert all(v["passes"] == 0 for v in second.passes.values())
    assert (second.frame["forward_passes"] == 0).all()
    pd.testing.assert_series_equal(first.frame["value"], second.frame["value"])


def test_wrong_checkpoint_for_the_arch_is_the_load_weights_error(
    digits: DatasetSplits, ckpts: list[Path], tmp_path: Path
) -> None:
    bad = tmp_path / "cnn.safetensors"
    save_file(build_model("cnn", 10, in_chans=1, img_size=8).state_dict(), str(bad))
    with pytest.raises(MergelabError) as err:
        _run(digits, [ckpts[0], bad], tmp_path / "cache")
    msg = str(err.value)
    assert "cnn.safetensors" in msg and "does not fit" in msg and "missing keys" in msg
    assert "layers.0.weight" in msg  # load_weights lists every key the model misses


def test_selection_is_made_on_val_when_val_and_test_disagree(
    digits: DatasetSplits, ckpts: list[Path], tmp_path: Path
) -> None:
    """Seed the cache with outputs where the best model on val is the worst on test."""
    ev = Evaluator(digits, arch="mlp", cache_dir=tmp_path, progress=False)
    eye = np.eye(10, dtype=np.float32)
    y = {s: ev.targets(s) for s in ("val", "test")}
    right = {s: 5 * eye[y[s]] for s in y}
    wrong = {s: 5 * eye[(y[s] + 1) % 10] for s in y}
    plan = [  # (val, test) per model
        (right["val"], wrong["test"]),
        (wrong["val"], right["test"]),
        (wrong["val"], right["test"]),
    ]
    for path, logits in zip(ckpts, plan, strict=True):
        src = ModelSource.of(path)
        for split, z in zip(("val", "test"), logits, strict=True):
            key = ev.cache_key(src, split)
            ev.cache.put(Outputs(z, np.zeros((len(z), 128), np.float32), y[split], split, key))
    df = _run(digits, ckpts, tmp_path)
    acc = df[df.metric == "accuracy"].set_index(["method", "split"])["value"]
    best = df[(df.method == "Best Individual")]
    assert set(best["members"]) == {"m0"}
    assert acc[("Best Individual", "val")] == 1.0
    assert acc[("Best Individual", "test")] == 0.0  # the val choice, reported on test
    for method in ("Greedy Ens Logits", "Greedy Ens Logits (own)"):
        greedy = df[df.method == method]
        assert set(greedy["members"]) == {"m0"}
        assert acc[(method, "test")] == 0.0


def _multilabel_splits(n: int = 300, seed: int = 0) -> DatasetSplits:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 1, 8, 8), dtype=np.uint8)
    quads = [images[:, 0, :4, :4], images[:, 0, :4, 4:], images[:, 0, 4:, :4]]
    targets = np.zeros((n, 4), dtype=np.float32)
    for j, q in enumerate(quads):
        targets[:, j] = q.mean(axis=(1, 2)) > 127.5
    # label 3 is never present: AUROC must skip it and say so
    source = ArraySource(images, targets, scale=255.0)
    idx = np.arange(n)
    parts = {"train": idx[:200], "val": idx[200:250], "test": idx[250:]}
    mean, std = source.channel_stats(parts["train"])
    info = make_info(
        name="fake_multilabel",
        num_classes=4,
        channels=1,
        image_size=(8, 8),
        multilabel=True,
        mean=mean,
        std=std,
    )
    return DatasetSplits(info, {k: SplitPart(source, v) for k, v in parts.items()})


def test_multilabel_data_reports_mean_auroc(tmp_path: Path) -> None:
    splits = _multilabel_splits()
    sds = train_toy_models(splits, arch="mlp", n_models=2, steps=20, pretrain_steps=40)
    report = run_compare(sds, arch="mlp", data=splits, cache_dir=tmp_path, progress=False)
    df = report.frame
    assert set(df["metric"]) == {"auroc", "nll", "ece"}
    auroc = df[(df.metric == "auroc") & (df.split == "test")].set_index("method")["value"]
    assert auroc["Ens Logits"] > 0.7  # the three learnable labels are learnt
    assert any("skipped 1 label(s)" in n and "3" in n for n in report.notes)
    ens = report.combinations["Ens Logits"].logits["test"]
    mean = np.mean([i.outputs["test"].logits for i in report.ingredients], axis=0)
    np.testing.assert_allclose(ens, mean, rtol=1e-6)  # multi-label: logits averaged too


def test_input_spec_follows_in_chans_and_img_size(digits: DatasetSplits, tmp_path: Path) -> None:
    model = build_model("mlp", 10, in_chans=3, img_size=16)
    report = run_compare(
        [model.state_dict()],
        arch="mlp",
        data=digits,
        in_chans=3,
        img_size=16,
        cache_dir=tmp_path,
        progress=False,
    )
    assert report.evaluator.input_shape == (3, 16, 16)
    assert all("-c3s16n-" in p.name for p in tmp_path.iterdir())
    ones = report.frame[report.frame.method == "Individual"]
    assert ones["params"].iloc[0] == sum(p.numel() for p in model.parameters())
    # Without the options, the MLP's 768 = 3x16x16 inputs say the same.
    again = run_compare(
        [model.state_dict()], arch="mlp", data=digits, cache_dir=tmp_path, progress=False
    )
    assert again.evaluator.input_shape == (3, 16, 16)
    assert again.passes["model"]["passes"] == 0  # the same inputs: all from the cache
    assert again.notes[0] == (
        "in_chans 3 (layers.0.weight), img_size 16 (layers.0.weight), "
        "num_classes 10 (head.weight) read from model1"
    )
    assert again.notes[1] == (
        "digits images (1x8x8) adapted to the model: grey repeated to RGB, resized to 16x16"
    )


def test_user_errors(digits: DatasetSplits, ckpts: list[Path], tmp_path: Path) -> None:
    with pytest.raises(MergelabError, match=r"^--num-classes 7, but digits has 10 classes$"):
        _run(digits, ckpts, tmp_path, num_classes=7)
    with pytest.raises(MergelabError, match="no such file"):
        _run(digits, [tmp_path / "missing.safetensors"], tmp_path)
    with pytest.raises(MergelabError, match="at least one model"):
        _run(digits, [], tmp_path)


def test_cli_prints_a_table_and_the_files(
    ckpts: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="mergelab")
    add_compare_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "compare", "--arch", "mlp", "--data", "digits", "--models", *map(str, ckpts),
            "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"),
            "--strict-greedy", "--no-progress",
        ]
    )  # fmt: skip
    assert args.run(args) == 0
    text = capsys.readouterr().out
    for word in ("Greedy Soup", "Ens Features*", "test accuracy", "params", "FLOPs", "m0"):
        assert word in text
    assert str(tmp_path / "out" / "results.csv") in text
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    soup = set(df[df.method == "Greedy Soup"]["members"])
    assert set(df[df.method == "Greedy Ens Logits"]["members"]) == soup
    bad = parser.parse_args(
        ["compare", "--arch", "mlp", "--data", "nosuchset", "--models", str(ckpts[0])]
    )
    with pytest.raises(MergelabError, match="unknown dataset"):
        bad.run(bad)


def test_in_memory_state_dicts_are_cached_by_content(
    digits: DatasetSplits, ckpts: list[Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    sds = [load_file(str(p)) for p in ckpts]
    first = run_compare(sds, arch="mlp", data=digits, cache_dir=tmp_path, progress=False)
    assert first.passes["model"]["passes"] == 6
    clones = [{k: v.clone() for k, v in sd.items()} for sd in sds]  # new objects, same bytes
    again = run_compare(clones, arch="mlp", data=digits, cache_dir=tmp_path, progress=False)
    assert again.passes["model"]["passes"] == 0
    changed = [dict(c) for c in clones]
    changed[0]["head.bias"] = changed[0]["head.bias"] + 0.5
    third = run_compare(changed, arch="mlp", data=digits, cache_dir=tmp_path, progress=False)
    assert third.passes["model"]["passes"] == 2  # only the changed model, on val and test


# -- checkpoints say what they take (issue 10, items 7-9) ----------------------------------


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from mergelab.cli import main

    rc = main(["compare", "--no-progress", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def resnet18_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two ordinary 3-channel torchvision resnet18 checkpoints, as .pt and .safetensors."""
    import torchvision

    folder = tmp_path_factory.mktemp("resnet18")
    paths = [folder / "r0.pt", folder / "r1.safetensors"]
    for seed, path in enumerate(paths):
        torch.manual_seed(seed)
        sd = torchvision.models.resnet18(num_classes=10).state_dict()
        if path.suffix == ".pt":
            torch.save(sd, path)
        else:
            save_file(sd, str(path))
    return paths


def test_torchvision_resnet18_checkpoints_need_no_input_options(
    resnet18_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc, text, err = _cli(
        ["--arch", "resnet18", "--data", "digits", "--models", *map(str, resnet18_files),
         "--cache-dir", str(tmp_path / "c"), "--out", str(out)],
        capsys,
    )  # fmt: skip
    assert (rc, err) == (0, "")
    assert (
        f"note: in_chans 3 (conv1.weight), num_classes 10 (fc.weight) read from "
        f"{resnet18_files[0]} and the 1 other model(s), which agree\n"
    ) in text
    assert "note: digits images (1x8x8) adapted to the model: grey repeated to RGB\n" in text
    df = pd.read_csv(out / "results.csv")
    acc = df[df.metric == "accuracy"]
    assert set(acc["method"]) == METHODS
    assert len(acc) == (2 + 11) * 2 and acc["value"].between(0, 1).all()


def test_in_chans_against_the_checkpoint_is_one_line(
    resnet18_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, text, err = _cli(
        ["--arch", "resnet18", "--data", "digits", "--models", *map(str, resnet18_files),
         "--in-chans", "1", "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "out")],
        capsys,
    )  # fmt: skip
    assert (rc, text) == (2, "")
    assert err == (
        f"mergelab: error: --in-chans 1, but {resnet18_files[0]} has conv1.weight "
        f"(64, 3, 7, 7), which means 3 input channels\n"
    )
    assert not (tmp_path / "c").exists() and not (tmp_path / "out").exists()


def _save(sd: dict, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def test_one_channel_builtin_checkpoint_runs_on_native_images(
    digits: DatasetSplits, tmp_path: Path
) -> None:
    path = _save(
        build_model("cnn", 10, in_chans=1, img_size=8).state_dict(), tmp_path / "c.safetensors"
    )
    report = run_compare([path], arch="cnn", data=digits, cache_dir=tmp_path, progress=False)
    assert report.evaluator.spec is None and report.evaluator.input_shape == (1, 8, 8)
    assert report.notes == [
        f"in_chans 1 (features.0.weight), num_classes 10 (head.weight) read from {path}"
    ]
    assert report.frame["value"].notna().all()


def test_checkpoints_that_disagree_name_both_files(digits: DatasetSplits, tmp_path: Path) -> None:
    grey = _save(build_model("cnn", 10, in_chans=1).state_dict(), tmp_path / "grey.safetensors")
    rgb = _save(build_model("cnn", 10, in_chans=3).state_dict(), tmp_path / "rgb.safetensors")
    with pytest.raises(MergelabError) as err:
        run_compare([grey, rgb], arch="cnn", data=digits, cache_dir=tmp_path, progress=False)
    assert str(err.value) == (
        f"{grey} has features.0.weight (32, 1, 3, 3) (1 input channel) but {rgb} has "
        f"features.0.weight (32, 3, 3, 3) (3 input channels); the models of one comparison "
        f"must agree"
    )


def test_classes_of_the_checkpoint_must_be_the_datasets(
    digits: DatasetSplits, tmp_path: Path
) -> None:
    seven = _save(build_model("cnn", 7, in_chans=1).state_dict(), tmp_path / "seven.safetensors")
    with pytest.raises(MergelabError) as err:
        run_compare([seven], arch="cnn", data=digits, cache_dir=tmp_path, progress=False)
    assert str(err.value) == (
        f"{seven} has head.weight (7, 128), which means 7 classes, but digits has 10 classes"
    )
    with pytest.raises(MergelabError, match=r"^--num-classes 7, but digits has 10 classes$"):
        run_compare(
            [seven], arch="cnn", data=digits, num_classes=7, cache_dir=tmp_path, progress=False
        )


def test_vit_image_size_is_read_from_its_position_embedding(
    digits: DatasetSplits, tmp_path: Path
) -> None:
    vit = _save(
        build_model("vit_small", 10, in_chans=1, img_size=16).state_dict(),
        tmp_path / "v.safetensors",
    )
    report = run_compare([vit], arch="vit_small", data=digits, cache_dir=tmp_path, progress=False)
    assert report.evaluator.input_shape == (1, 16, 16)
    assert report.notes[1] == "digits images (1x8x8) adapted to the model: resized to 16x16"
    with pytest.raises(MergelabError) as err:
        run_compare(
            [vit], arch="vit_small", data=digits, img_size=8, cache_dir=tmp_path, progress=False
        )
    assert str(err.value) == (
        f"--img-size 8, but {vit} has pos_embed (1, 17, 64), which means 16x16 images"
    )


def test_soup_of_float16_and_float32_checkpoints_without_counters(
    digits: DatasetSplits, tmp_path: Path
) -> None:
    """No "--dtype" advice (compare has no such option) and no "model 1": the soup averages
    in float32, and a file without BatchNorm counters (old torchvision) merges with one
    that has them."""
    torch.manual_seed(0)
    a, b = (build_model("resnet8", 10, in_chans=1).state_dict() for _ in range(2))
    half = {k: v.half() if v.is_floating_point() else v for k, v in a.items()}
    old = {k: v for k, v in half.items() if not k.endswith("num_batches_tracked")}
    paths = [_save(old, tmp_path / "half.safetensors"), _save(b, tmp_path / "full.safetensors")]
    report = run_compare(paths, arch="resnet8", data=digits, cache_dir=tmp_path, progress=False)
    soup = report.combinations["Uniform Soup"]
    assert soup.members == (0, 1)
    average = {
        k: (a[k].half().float() + v) / 2 if v.is_floating_point() else v for k, v in b.items()
    }
    direct = report.evaluator.outputs(ModelSource("average", state_dict=average), "test")
    np.testing.assert_allclose(soup.logits["test"], direct.logits, rtol=1e-5, atol=1e-5)


def test_out_that_is_a_file_is_one_line_and_nothing_is_written(
    ckpts: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    out.write_text("mine\n")
    rc, text, err = _cli(
        ["--arch", "mlp", "--data", "digits", "--models", str(ckpts[0]), "--out", str(out),
         "--cache-dir", str(tmp_path / "c")],
        capsys,
    )  # fmt: skip
    assert (rc, text, err) == (2, "", f"mergelab: error: --out {out}: is a file, not a folder\n")
    assert out.read_text() == "mine\n" and not (tmp_path / "c").exists()


def test_read_only_out_is_one_line_and_nothing_is_written(
    ckpts: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    real_access = os.access  # root may write anywhere: make the folder read-only for it too
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != out and real_access(p, mode))
    try:
        rc, text, err = _cli(
            ["--arch", "mlp", "--data", "digits", "--models", str(ckpts[0]), "--out", str(out),
             "--cache-dir", str(tmp_path / "c")],
            capsys,
        )  # fmt: skip
    finally:
        out.chmod(0o755)
    assert (rc, text, err) == (2, "", f"mergelab: error: --out {out}: folder is not writable\n")
    assert list(out.iterdir()) == [] and not (tmp_path / "c").exists()


# -- trust: user files, folders left behind, options, file names, non-finite logits -------


def _args(ckpts: list[Path], tmp_path: Path, *more: str) -> list[str]:
    models = [str(c) for c in ckpts]
    return ["--arch", "mlp", "--data", "digits", "--models", *models, *more]


def test_a_users_results_file_is_refused_before_any_work(
    ckpts: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.json").write_text("my precious results\n")
    argv = _args(ckpts[:1], tmp_path, "--out", str(out), "--cache-dir", str(tmp_path / "c"))
    rc, text, err = _cli(argv, capsys)
    assert (rc, text) == (2, "")
    assert err == (
        f"mergelab: error: {out / 'results.json'}: not written by mergelab, which would "
        f"replace it; move it away or choose another --out\n"
    )
    assert (out / "results.json").read_text() == "my precious results\n"
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
    assert not (tmp_path / "c").exists()


def test_a_failed_compare_leaves_no_folder_it_made(
    ckpts: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out, cache = tmp_path / "new" / "deep", tmp_path / "cache"
    rc, _, err = _cli(
        ["--arch", "cnn", "--data", "digits", "--models", str(ckpts[0]), "--out", str(out)],
        capsys,
    )
    assert rc == 2 and "cnn" in err
    assert not (tmp_path / "new").exists()

    import tempfile

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full)  # the disk is full: no file can be made
    rc, _, err = _cli(
        _args(ckpts[:1], tmp_path, "--out", str(out), "--cache-dir", str(cache)), capsys
    )
    assert rc == 2
    last = err.splitlines()[-1]  # (a cache that cannot be written may warn first)
    assert last.startswith(f"mergelab: error: {tmp_path}/")
    assert last.endswith(": cannot write (No space left on device)")
    assert not (tmp_path / "new").exists() and not cache.exists()


@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [("--seed", "-1", "0..4294967295"), ("--img-size", "100000", "1..1024")],
)
def test_seed_and_image_size_are_checked_when_parsed(
    ckpts: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], option, value, allowed
) -> None:
    with pytest.raises(SystemExit) as info:
        _cli(_args(ckpts[:1], tmp_path, option, value), capsys)
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [  # one line, like every error
        f"mergelab compare: error: argument {option}: '{value}': must be an integer {allowed} "
        "(see mergelab compare --help)"
    ]
    with pytest.raises(MergelabError, match=rf"^{option} {value}: must be {allowed}$"):
        run_compare(
            ckpts[:1], arch="mlp", data="digits", **{option[2:].replace("-", "_"): int(value)}
        )


def _edited(path: Path, folder: Path, name: str, edit) -> Path:
    from safetensors.torch import load_file

    sd = load_file(str(path))
    edit(sd)
    folder.mkdir(exist_ok=True)
    save_file(sd, str(folder / name))
    return folder / name


def test_soup_errors_name_the_files(
    ckpts: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def as_int(sd):
        sd["head.weight"] = sd["head.weight"].to(torch.int32)

    bad = _edited(ckpts[1], tmp_path / "bad", "int.safetensors", as_int)
    rc, _, err = _cli(_args([ckpts[0], bad], tmp_path, "--cache-dir", str(tmp_path / "c")), capsys)
    assert rc == 2
    assert f"head.weight: {ckpts[0]} float32 vs {bad} int32" in err
    assert "model 1" not in err and "model 2" not in err


def test_non_finite_logits_are_a_note_naming_the_file_and_no_warning(
    digits: DatasetSplits, ckpts: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import warnings

    def huge(sd):
        for k in sd:
            sd[k] = sd[k] * 1e30  # finite weights, overflowing logits

    big = _edited(ckpts[1], tmp_path / "bad", "huge.safetensors", huge)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = _run(digits, [ckpts[0], big], tmp_path)
    note = (
        f"{big}: non-finite logits (NaN or Inf) on 100.0% of val rows, 100.0% of test rows; "
        f"those rows count as wrong, and its NLL and ECE are NaN"
    )
    assert note in frame.attrs["notes"]
    rows = frame[(frame.method == "Individual") & (frame.members == "huge")]
    assert set(rows[rows.metric == "accuracy"].value) == {0.0}
    rc, text, err = _cli(_args([ckpts[0], big], tmp_path, "--cache-dir", str(tmp_path)), capsys)
    assert (rc, err) == (0, "") and f"note: {note}\n" in text
    rc, text, err = _cli(_args([big, big], tmp_path, "--cache-dir", str(tmp_path)), capsys)
    assert (rc, text) == (2, "")
    assert err == (
        f"mergelab: error: every model gives non-finite logits (NaN or Inf) on every val and "
        f"test row ({big}, {big}): nothing to compare; are the weights overflowing?\n"
    )
