"""CIFAR-10/100 from real dict pickles; the restricted unpickler refuses code."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from datafakes import as_uint8_hwc, write_cifar10, write_cifar100

from mergelab.data import (
    DatasetNotFoundError,
    ImageSpec,
    UnsafePickleError,
    as_tensors,
    load_dataset,
    safe_pickle_load,
)

RAW = ImageSpec(channels=3, size=32, normalize=False)


def _lookup(x: np.ndarray, y: np.ndarray) -> dict[bytes, int]:
    """Written pixels (Nx3072, channel-major) -> label, as HxWx3 bytes."""
    return {row.reshape(3, 32, 32).transpose(1, 2, 0).tobytes(): int(k) for row, k in
            zip(x, y, strict=True)}  # fmt: skip


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_cifar10_sizes_labels_and_pixels(tmp_path: Path, protocol: int) -> None:
    _, arr = write_cifar10(tmp_path, protocol=protocol)
    d = load_dataset(f"cifar10:{tmp_path}")
    assert (d.info.num_classes, d.info.channels, d.info.image_size) == (10, 3, (32, 32))
    assert d.classes[:2] == ("airplane", "automobile")
    assert [d.size(s) for s in ("train", "val", "test")] == [36, 4, 10]
    train_lookup = _lookup(arr["train_x"], arr["train_y"])
    seen: set[bytes] = set()
    for split in ("train", "val"):
        for img, label in d.split(split, RAW):
            key = as_uint8_hwc(img).tobytes()
            assert train_lookup[key] == int(label)
            seen.add(key)
    assert seen == set(train_lookup)  # train + carved val = all 5 batches, no overlap
    xs, ys = as_tensors(d.split("test", RAW))
    expected = torch.from_numpy(arr["test_x"].reshape(-1, 3, 32, 32)).float() / 255.0
    assert torch.allclose(xs, expected, atol=1e-6)  # official test set, in file order
    assert ys.tolist() == arr["test_y"].tolist()


def test_cifar10_accepts_folder_itself_and_computes_stats(tmp_path: Path) -> None:
    folder, arr = write_cifar10(tmp_path)
    a = load_dataset(f"cifar10:{folder}")
    b = load_dataset(f"cifar10:{tmp_path}")
    assert np.array_equal(a.indices("val"), b.indices("val"))
    train_rows = arr["train_x"][a.indices("train")]
    per_channel = train_rows.reshape(-1, 3, 1024).transpose(1, 0, 2).reshape(3, -1) / 255.0
    np.testing.assert_allclose(a.info.mean, per_channel.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(a.info.std, per_channel.std(axis=1), atol=1e-5)


def test_cifar10_missing_batch_is_named(tmp_path: Path) -> None:
    folder, _ = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        load_dataset(f"cifar10:{tmp_path}")


def test_cifar10_wrong_path_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset(f"cifar10:{tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_dataset(f"cifar10:{tmp_path}")


class _Evil:
    """Pickles as a call to os.system: loading it must not run anything."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_forbidden_global_is_refused_without_running(tmp_path: Path) -> None:
    folder, _ = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"system.*data pickles may only rebuild numpy"):
        load_dataset(f"cifar10:{tmp_path}")
    assert not marker.exists()


def test_safe_pickle_load_allows_arrays_refuses_builtins() -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (2, 4, 5):
        out = safe_pickle_load(pickle.dumps({b"a": arr, b"l": [1, 2]}, protocol=protocol))
        assert np.array_equal(out[b"a"], arr) and out[b"l"] == [1, 2]
    payload = b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        safe_pickle_load(payload)
    with pytest.raises(pickle.UnpicklingError):  # also catchable as the stdlib error
        safe_pickle_load(pickle.dumps(Path("x")))


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    _, arr = write_cifar100(tmp_path)
    fine = load_dataset(f"cifar100:{tmp_path}")
    assert fine.info.num_classes == 100 and fine.classes[7] == "fine7"
    assert [fine.size(s) for s in ("train", "val", "test")] == [180, 20, 50]
    _, ys = as_tensors(fine.split("test", RAW))
    assert ys.tolist() == arr["test_y"].tolist()
    coarse = load_dataset(f"cifar100:{tmp_path}", labels="coarse")
    assert coarse.info.num_classes == 20
    xs, yc = as_tensors(coarse.split("test", RAW))
    assert yc.tolist() == arr["test_coarse"].tolist()
    assert torch.allclose(xs[3], torch.from_numpy(arr["test_x"][3].reshape(3, 32, 32)) / 255.0)


def test_cifar100_missing_meta_is_named(tmp_path: Path) -> None:
    folder, _ = write_cifar100(tmp_path)
    (folder / "meta").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing meta"):
        load_dataset("cifar100", root=tmp_path)
