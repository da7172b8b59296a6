"""Class subsets ``NAME[...]``: filtered seeded splits, relabelling, keys, errors, use."""

from pathlib import Path

import numpy as np
import pytest
from datafakes import write_celeba, write_chestxray14, write_cifar10, write_medmnist

from mergelab.data import DatasetError, DatasetSplits, ImageSpec, as_tensors, load_dataset
from mergelab.data.subset import format_classes, parse_classes, split_subset

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def mnist5k() -> DatasetSplits:
    return load_dataset("mnist5k")


def _expected(full: DatasetSplits, classes: list[int], split: str) -> tuple[np.ndarray, ...]:
    """The subset computed by hand: full split filtered, labels mapped to list positions."""
    idx, y = full.indices(split), full.targets(split)
    keep = np.isin(y, classes)
    relabel = {c: i for i, c in enumerate(classes)}
    return idx[keep], np.array([relabel[int(c)] for c in y[keep]], dtype=np.int64)


@pytest.mark.parametrize(
    ("spec", "full_name", "classes"),
    [("mnist5k[0-4]", "mnist5k", [0, 1, 2, 3, 4]), ("digits[5-9]", "digits", [5, 6, 7, 8, 9])],
)
def test_subset_equals_filtered_full_splits(
    spec: str, full_name: str, classes: list[int], mnist5k: DatasetSplits, digits: DatasetSplits
) -> None:
    full = mnist5k if full_name == "mnist5k" else digits
    sub = load_dataset(spec)
    for split in SPLITS:
        idx, y = _expected(full, classes, split)
        np.testing.assert_array_equal(sub.indices(split), idx)
        np.testing.assert_array_equal(sub.targets(split), y)
        assert sub.size(split) == len(idx)
        assert set(sub.indices(split)) <= set(full.indices(split))
    assert sub.info.name == spec
    assert sub.info.num_classes == 5
    assert sub.info.mean == full.info.mean and sub.info.std == full.info.std
    assert sub.classes == tuple(full.classes[c] for c in classes)
    # Items served are the full dataset's images with the new labels.
    x, t = as_tensors(sub.split("val"))
    x_full, _ = as_tensors(full.split("val"))
    pos = np.searchsorted(full.indices("val"), sub.indices("val"))
    np.testing.assert_array_equal(x.numpy(), x_full.numpy()[pos])
    np.testing.assert_array_equal(t.numpy(), sub.targets("val"))
    # Another split seed filters that seed's splits.
    other = load_dataset(spec, seed=3)
    np.testing.assert_array_equal(
        other.indices("test"), _expected(load_dataset(full_name, seed=3), classes, "test")[0]
    )


def test_relabel_order_follows_the_spec(digits: DatasetSplits) -> None:
    sub = load_dataset("digits[9,2,5-7]")
    order = [9, 2, 5, 6, 7]
    assert sub.info.name == "digits[9,2,5-7]"
    assert sub.classes == ("9", "2", "5", "6", "7")
    for split in SPLITS:
        np.testing.assert_array_equal(sub.targets(split), _expected(digits, order, split)[1])
    assert sorted(set(sub.targets("train").tolist())) == [0, 1, 2, 3, 4]
    # Same classes listed another way: same canonical name and same data.
    assert load_dataset("digits[ 5, 6,7 , 8,9 ]").info.name == "digits[5-9]"


def test_keys_differ_between_full_set_and_subsets(digits: DatasetSplits) -> None:
    spec = ImageSpec(channels=1, size=8)
    a, b = load_dataset("digits[0-4]"), load_dataset("digits[5-9]")
    c = load_dataset("digits[4,3,2,1,0]")
    keys = {s.key("train", spec) for s in (digits, a, b, c)}
    assert len(keys) == 4  # [4,3,2,1,0] relabels differently from [0-4]
    assert a.key("train", spec) == load_dataset("digits[0,1,2,3,4]").key("train", spec)
    assert a.key("train") != a.key("val")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("digits[]", r"'digits\[\]': empty class list"),
        ("digits[ ]", r"empty class list"),
        ("digits[3-1]", r"malformed range '3-1'"),
        ("digits[1-]", r"malformed class subset item '1-'"),
        ("digits[a]", r"malformed class subset item 'a'"),
        ("digits[1,,2]", r"malformed class subset item an empty item"),
        ("digits[-1]", r"malformed class subset item '-1'"),
        ("digits[0-4", r"malformed class subset"),
        ("digits0-4]", r"has '\]' but no '\['"),
        ("digits[10]", r"'digits\[10\]': class 10 out of range: digits has 10 classes \(0-9\)"),
        ("digits[0-12]", r"class 10 out of range: digits has 10 classes"),
        ("digits[1,2,1]", r"class 1 given twice"),
        ("digits[0-3,2]", r"class 2 given twice"),
    ],
)
def test_bad_subsets_fail_with_one_clear_line(spec: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(spec)
    assert "\n" not in str(info.value)


def test_grammar_helpers() -> None:
    assert split_subset("mnist5k[0-4]") == ("mnist5k", "0-4")
    assert split_subset("cifar100:DATA/cifar-100-python[0-9]") == (
        "cifar100:DATA/cifar-100-python",
        "0-9",
    )
    assert split_subset("imagefolder:/a[b]/c") == ("imagefolder:/a[b]/c", None)
    assert split_subset("digits") == ("digits", None)
    assert parse_classes("0-2, 7,5") == (0, 1, 2, 7, 5)
    assert format_classes((0, 1, 2, 7, 5, 6)) == "0-2,7,5,6"


def test_multilabel_sets_refuse_a_subset(tmp_path: Path) -> None:
    write_medmnist(tmp_path / "chestmnist.npz", num_labels=14, rgb=False)
    spec = f"chestmnist:{tmp_path / 'chestmnist.npz'}[0-2]"
    assert load_dataset(spec[: spec.rfind("[")]).info.multilabel
    with pytest.raises(DatasetError, match=r"is multi-label \(14 labels per item\)") as info:
        load_dataset(spec)
    assert repr(spec) in str(info.value) and "\n" not in str(info.value)
    write_chestxray14(tmp_path / "nih")
    with pytest.raises(DatasetError, match=r"chestxray14.*is multi-label"):
        load_dataset(f"chestxray14:{tmp_path / 'nih'}[0]")
    root = write_celeba(tmp_path).root
    with pytest.raises(DatasetError, match=r"celeba-all is multi-label \(40 labels"):
        load_dataset(f"celeba:{root}:all[0,1]")
    one = load_dataset(f"celeba:{root}:Smiling[1,0]")  # one attribute: 2 classes, fine
    assert one.info.name == "celeba-Smiling[1,0]"
    assert one.classes == ("Smiling", "not Smiling")


def test_on_disk_loader_with_a_subset(tmp_path: Path) -> None:
    folder, _ = write_cifar10(tmp_path)
    full = load_dataset(f"cifar10:{folder}")
    sub = load_dataset(f"cifar10:{folder}[8,0,2]")
    assert sub.info.name == "cifar10[8,0,2]"
    assert sub.classes == ("ship", "airplane", "bird")
    assert sub.info.num_classes == 3 and sub.info.mean == full.info.mean
    for split in SPLITS:
        idx, y = _expected(full, [8, 0, 2], split)
        np.testing.assert_array_equal(sub.indices(split), idx)
        np.testing.assert_array_equal(sub.targets(split), y)
    # root= with a bare on-disk name takes the suffix too.
    assert load_dataset("cifar10[8,0,2]", root=folder).size("train") == sub.size("train")
    x, t = as_tensors(sub.split("train", ImageSpec(channels=1, size=16)))
    assert x.shape == (sub.size("train"), 1, 16, 16) and int(t.max()) <= 2


def test_training_and_evaluation_on_subsets(tmp_path: Path) -> None:
    from mergelab.evaluate import Evaluator
    from mergelab.io import load_state_dict
    from mergelab.train import TrainConfig, train_model

    config = TrainConfig(
        dataset="mnist5k[0-4]", arch="mlp", steps=5, batch_size=32, model_kwargs={"hidden": [16]}
    )
    path = train_model(config, cache_dir=tmp_path, progress=False)
    assert load_state_dict(path)["head.weight"].shape == (5, 16)

    ev = Evaluator(load_dataset("digits[5-9]"), arch="mlp", cache_dir=None, progress=False)
    digits_config = TrainConfig(dataset="digits[5-9]", arch="mlp", steps=5, batch_size=32)
    out = ev.outputs(train_model(digits_config, cache_dir=tmp_path, progress=False), "test")
    assert out.logits.shape == (ev.splits.size("test"), 5)
    assert set(out.targets.tolist()) == {0, 1, 2, 3, 4}


def test_dry_run_facts_of_subsets() -> None:
    from mergelab.errors import MergeError
    from mergelab.studies.plan import dataset_facts

    facts = dataset_facts("digits[5,6,7,8,9]")
    sub = load_dataset("digits[5-9]")
    assert (facts.train, facts.val, facts.test) == tuple(sub.size(s) for s in SPLITS)
    assert facts.num_classes == 5 and facts.label == "digits[5-9]"
    scaled = dataset_facts("cifar100:/nowhere/cifar-100-python[0-9]")
    full = dataset_facts("cifar100:/nowhere/cifar-100-python")
    assert scaled.num_classes == 10 and scaled.label == "cifar100[0-9]"
    assert (scaled.train, scaled.val, scaled.test) == (full.train // 10, full.val // 10, 1000)
    assert "scaled by 10/100" in scaled.origin and scaled.origin.startswith("assumed")
    derma = dataset_facts("dermamnist:/x/dermamnist.npz[0,2,4]")
    assert derma.num_classes == 3 and derma.train == round(7_007 * 3 / 7)
    with pytest.raises(MergeError, match=r"^dataset 'cifar10:/x\[10\]': class 10 out of range"):
        dataset_facts("cifar10:/x[10]")
    with pytest.raises(MergeError, match=r"chestxray14 is multi-label"):
        dataset_facts("chestxray14:/x[0]")
