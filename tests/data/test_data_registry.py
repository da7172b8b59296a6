"""load_dataset spec strings, root handling, options, and loaders/DataLoader plumbing."""

from pathlib import Path

import numpy as np
import pytest
import torch
from datafakes import write_cifar10, write_medmnist

from mergelab.data import (
    DatasetError,
    ImageSpec,
    known_datasets,
    load_dataset,
    make_loader,
    parse_spec,
)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(
        DatasetError, match=r"unknown dataset 'imagenet'; known: mnist5k.*cifar10.*chestxray14"
    ):
        load_dataset("imagenet:/data")
    assert {
        "mnist5k",
        "digits",
        "cifar10",
        "cifar100",
        "medmnist",
        "pathmnist",
        "dermamnist",
        "imagefolder",
        "tinyimagenet",
        "celeba",
        "chestxray14",
    } <= set(known_datasets())


def test_parse_spec() -> None:
    assert parse_spec("CIFAR10:/a/b") == ("cifar10", "/a/b")
    assert parse_spec("mnist5k") == ("mnist5k", None)
    assert parse_spec("celeba:/x:Smiling") == ("celeba", "/x:Smiling")


def test_unknown_option_lists_accepted() -> None:
    with pytest.raises(DatasetError, match=r"unknown option\(s\) val_frac.*fractions"):
        load_dataset("digits", val_frac=0.2)


def test_builtin_takes_no_path_and_disk_sets_need_one() -> None:
    with pytest.raises(DatasetError, match="takes no path"):
        load_dataset("digits:/tmp")
    with pytest.raises(DatasetError, match=r"needs a location.*root="):
        load_dataset("cifar10")


def test_root_resolves_relative_paths(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "data")
    write_medmnist(tmp_path / "data" / "pathmnist.npz")
    a = load_dataset("cifar10", root=tmp_path / "data")
    b = load_dataset("cifar10:data", root=tmp_path)
    assert np.array_equal(a.indices("val"), b.indices("val"))
    assert a.key("val", None) == b.key("val", None)  # key ignores where the files live
    c = load_dataset("pathmnist", root=tmp_path / "data")
    assert c.size("train") == 30


def test_key_is_stable_and_tracks_content(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "a", seed=0)
    write_cifar10(tmp_path / "b", seed=1)
    spec = ImageSpec(3, 32)
    ka = load_dataset(f"cifar10:{tmp_path / 'a'}").key("test", spec)
    assert ka == load_dataset(f"cifar10:{tmp_path / 'a'}").key("test", spec)
    assert ka != load_dataset(f"cifar10:{tmp_path / 'b'}").key("test", spec)
    assert ka.startswith("cifar10-test-c3s32n-")


def test_make_loader_batches_and_seeded_shuffle() -> None:
    d = load_dataset("digits")
    ds = d.split("test", ImageSpec(3, 16))
    batches = list(make_loader(ds, batch_size=64))
    assert batches[0][0].shape == (64, 3, 16, 16) and batches[0][1].dtype == torch.int64
    assert sum(len(b[1]) for b in batches) == len(ds)
    order1 = torch.cat([y for _, y in make_loader(ds, batch_size=50, shuffle=True, seed=3)])
    order2 = torch.cat([y for _, y in make_loader(ds, batch_size=50, shuffle=True, seed=3)])
    assert torch.equal(order1, order2)
    assert sorted(order1.tolist()) == sorted(ds.targets.tolist())
    x0, y0 = ds[0]
    assert torch.allclose(batches[0][0][0], x0) and int(batches[0][1][0]) == int(y0)
