"""Cached outputs are checked on use: a forged, misshaped or garbage entry is reported,
removed and computed again; a cache folder that cannot be written is reported once."""

from __future__ import annotations

import errno
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mergelab.data import DatasetSplits
from mergelab.evaluate import Evaluator
from mergelab.evaluate import cache as cache_module
from mergelab.hashing import arrays_sha256


def _evaluator(digits: DatasetSplits, cache: Path | None) -> Evaluator:
    return Evaluator(digits, arch="mlp", cache_dir=cache, progress=False)


def _entry(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path) as z:
        arrays = {k: z[k] for k in ("logits", "features", "targets")}
        return arrays, json.loads(str(z["meta"]))


def _save(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    with path.open("wb") as fh:
        np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)


def nan_logits(path: Path) -> None:
    """Forged by hand: NaN logits, the recorded hash left as it was."""
    arrays, meta = _entry(path)
    arrays["logits"] = np.full_like(arrays["logits"], np.nan)
    _save(path, arrays, meta)


def _rehashed(path: Path, change) -> None:
    arrays, meta = _entry(path)
    change(arrays)
    _save(path, arrays, {**meta, "sha256": arrays_sha256(arrays)})


def extra_column(path: Path) -> None:
    """Misshaped, with a hash that matches: only the shape check can catch it."""
    _rehashed(path, lambda a: a.update(logits=np.pad(a["logits"], ((0, 0), (0, 1)))))


def row_short(path: Path) -> None:
    _rehashed(path, lambda a: a.update(logits=a["logits"][1:]))


def garbage(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04 not really a zip")


def huge_header(path: Path) -> None:
    """An archive whose logits header claims a 58 GiB array."""
    arrays, meta = _entry(path)
    with zipfile.ZipFile(path, "w") as z:
        for name, a in arrays.items():
            with z.open(f"{name}.npy", "w") as fh:
                if name == "logits":
                    header = {"descr": "<f4", "fortran_order": False, "shape": (58 << 28, 1)}
                    np.lib.format.write_array_header_1_0(fh, header)
                else:
                    np.lib.format.write_array(fh, a)
        with z.open("meta.npy", "w") as fh:
            np.lib.format.write_array(fh, np.array(json.dumps(meta)))


@pytest.mark.parametrize(
    ("forge", "problem"),
    [
        (nan_logits, "does not match its sha256"),
        (extra_column, "11 logit columns, expected 10"),
        (row_short, "misshaped cache entry"),
        (garbage, "damaged cache entry"),
        (huge_header, "damaged cache entry"),
    ],
)
def test_a_bad_entry_is_reported_and_recomputed(
    digits: DatasetSplits, mlps, tmp_path: Path, capsys, forge, problem
) -> None:
    out = _evaluator(digits, tmp_path).outputs(mlps[0], "val")
    path = tmp_path / f"{out.key}.npz"
    forge(path)
    fresh = _evaluator(digits, tmp_path)
    again = fresh.outputs(mlps[0], "val")
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"mergelab: warning: {path}: ")
    assert problem in line and line.endswith("removed, recomputing it")
    assert fresh.counter.passes() == 1
    np.testing.assert_array_equal(again.logits, out.logits)
    np.testing.assert_array_equal(_entry(path)[0]["logits"], out.logits)  # rewritten whole
    # the rewritten entry is trusted again: no pass, no warning
    third = _evaluator(digits, tmp_path)
    third.outputs(mlps[0], "val")
    assert third.counter.passes() == 0
    assert capsys.readouterr().err == ""


def test_legitimate_non_finite_logits_are_kept(digits: DatasetSplits, mlps, tmp_path: Path):
    """A model that overflows has NaN logits for real: its entry is valid and reused."""
    ev = _evaluator(digits, tmp_path)
    huge = {k: v * 1e30 if v.is_floating_point() else v for k, v in mlps[0].items()}
    out = ev.outputs(huge, "val")
    assert not np.isfinite(out.logits).all()
    fresh = _evaluator(digits, tmp_path)
    np.testing.assert_array_equal(fresh.outputs(huge, "val").logits, out.logits)
    assert fresh.counter.passes() == 0


def test_a_full_disk_is_reported_once_and_the_run_goes_on(
    digits: DatasetSplits, mlps, tmp_path: Path, capsys, monkeypatch
) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module, "atomic_write", full)
    ev = _evaluator(digits, tmp_path)
    first = ev.outputs(mlps[0], "val")
    ev.outputs(mlps[1], "val")
    ev.outputs(mlps[0], "test")
    assert capsys.readouterr().err.splitlines() == [
        f"mergelab: warning: cannot write to the output cache {tmp_path} (No space left on "
        "device); going on without caching outputs on disk"
    ]
    assert list(tmp_path.iterdir()) == []
    assert ev.outputs(mlps[0], "val") is first  # still kept in memory: no second pass
    assert ev.counter.passes() == 3


def test_a_cache_folder_that_is_a_file_is_reported_not_a_traceback(
    digits: DatasetSplits, mlps, tmp_path: Path, capsys
) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("not a folder")
    out = _evaluator(digits, blocked).outputs(mlps[0], "val")
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"mergelab: warning: cannot write to the output cache {blocked} (")
    assert out.logits.shape == (digits.size("val"), 10)
    assert blocked.read_text() == "not a folder"
