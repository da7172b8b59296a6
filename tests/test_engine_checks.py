"""Bad input: each a clear error naming the file or tensor, and no output left behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ckpt_helpers import finetunes, random_state

from mergelab.engine import merge, merge_state_dicts
from mergelab.errors import MergeError
from mergelab.recipe import Recipe


@pytest.fixture
def ckpts(write_st):
    base = random_state(0)
    paths = [write_st(f"m{i}", m) for i, m in enumerate(finetunes(base, 2))]
    return write_st("base", base), paths


def recipe(method, models, base=None, **params) -> Recipe:
    return Recipe(
        merge_method=method,
        models=[str(m) for m in models],
        base_model=None if base is None else str(base),
        parameters=params,
    )


def nothing_written(folder: Path, out: Path) -> bool:
    return not out.exists() and not [p for p in folder.iterdir() if "partial" in p.name]


def test_mismatched_names_list_missing_and_extra_per_file(ckpts, write_st, tmp_path):
    _base, (a, _) = ckpts
    state = random_state(5)
    state.pop("norm.weight")
    state["extra.bias"] = np.zeros(2, np.float32)
    odd = write_st("odd", state)
    out = tmp_path / "out.safetensors"
    with pytest.raises(MergeError) as err:
        merge(recipe("linear", [a, odd]), out)
    msg = str(err.value)
    assert "odd.safetensors: missing 1 tensors: norm.weight" in msg
    assert "odd.safetensors: 1 extra tensors: extra.bias" in msg
    assert "\n" not in msg  # one line, whatever the number of differences
    assert nothing_written(tmp_path, out)


def test_mismatched_shapes_name_tensor_and_files(ckpts, write_st, tmp_path):
    _, (a, _) = ckpts
    state = random_state(5)
    state["head.weight"] = np.zeros((4, 6), np.float32)
    odd = write_st("odd", state)
    with pytest.raises(
        MergeError, match=r"head\.weight: .*m0\.safetensors \[3, 6\] vs .*odd\.safetensors \[4, 6\]"
    ):
        merge(recipe("linear", [a, odd]), tmp_path / "out.safetensors")


def test_missing_base_empty_list_and_unknown_method(ckpts, tmp_path):
    _, models = ckpts
    with pytest.raises(MergeError, match="ties: needs a base model"):
        merge(recipe("ties", models), tmp_path / "o.safetensors")
    with pytest.raises(MergeError, match="no models to merge"):
        merge(recipe("linear", []), tmp_path / "o.safetensors")
    with pytest.raises(MergeError, match=r"unknown merge method 'tie'; available: .*ties"):
        merge(recipe("tie", models), tmp_path / "o.safetensors")
    with pytest.raises(MergeError, match="linear: does not use a base model"):
        merge(recipe("linear", models, ckpts[0]), tmp_path / "o.safetensors")
    with pytest.raises(MergeError, match="slerp: needs exactly two inputs"):
        merge(recipe("slerp", models * 2), tmp_path / "o.safetensors")


def test_invalid_parameters_are_named(ckpts, tmp_path):
    base, models = ckpts
    with pytest.raises(
        MergeError, match=r"ties: invalid parameter of .*m0.safetensors: density: .*less than or eq"
    ):
        merge(recipe("ties", models, base, density=1.5), tmp_path / "o.safetensors")
    with pytest.raises(
        MergeError,
        match=r"ties: invalid parameter: densty: Extra inputs .* \(parameters of ties: .*density",
    ):
        merge(recipe("ties", models, base, densty=0.5), tmp_path / "o.safetensors")
    with pytest.raises(MergeError, match="weights sum to 0"):
        merge_state_dicts(
            "linear", [random_state(1)] * 2, model_params=[{"weight": 1}, {"weight": -1}]
        )


def test_existing_output_is_left_untouched_without_force(ckpts, tmp_path):
    _, models = ckpts
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(MergeError, match="already exists; pass --force"):
        merge(recipe("linear", models), out)
    assert out.read_bytes() == b"precious"
    # --force replaces only what mergelab wrote: this file is the user's.
    with pytest.raises(MergeError, match="not written by mergelab; --force replaces only"):
        merge(recipe("linear", models), out, force=True, progress=False)
    assert out.read_bytes() == b"precious"
    ours = tmp_path / "ours.safetensors"
    merge(recipe("linear", models), ours, progress=False)
    first = ours.read_bytes()
    merge(recipe("linear", list(reversed(models)), None, normalize=False), ours, force=True)
    assert ours.read_bytes() != first


def test_nan_stops_the_merge_naming_file_and_tensor(ckpts, write_st, tmp_path):
    _, (a, _) = ckpts
    state = random_state(7)
    state["layer.0.bias"][3] = np.nan
    bad = write_st("bad", state)
    out = tmp_path / "merged"
    with pytest.raises(
        MergeError, match=r"bad\.safetensors: tensor 'layer\.0\.bias' contains NaN or Inf"
    ):
        merge(recipe("linear", [a, bad]), out, progress=False)
    assert nothing_written(tmp_path, out)


def test_inf_in_a_torch_state_dict():
    state = {"w": torch.ones(3)}
    with pytest.raises(MergeError, match="model 2: tensor 'w' contains NaN or Inf"):
        merge_state_dicts("linear", [state, {"w": torch.tensor([1.0, float("inf"), 0.0])}])


def test_truncated_input_and_code_pickle(ckpts, tmp_path):
    _, (a, b) = ckpts
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(b.read_bytes()[:-4])
    with pytest.raises(MergeError, match=r"cut\.safetensors: file is truncated"):
        merge(recipe("linear", [a, cut]), tmp_path / "o.safetensors")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"w": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(MergeError, match=r"evil\.pt: refused to load"):
        merge(recipe("linear", [a, tmp_path / "evil.pt"]), tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_unwritable_output_folder(ckpts, tmp_path, monkeypatch):
    _, models = ckpts
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root ignores permission bits; make the check see what a user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == locked else real(p, m))
    with pytest.raises(MergeError, match="locked is not writable"):
        merge(recipe("linear", models), locked / "o.safetensors")
    assert list(locked.iterdir()) == []


def test_output_folder_that_does_not_exist(ckpts, tmp_path):
    _, models = ckpts
    with pytest.raises(MergeError, match=r"output folder .*missing.* does not exist"):
        merge(recipe("linear", models), tmp_path / "missing" / "o.safetensors")
    (tmp_path / "plain").write_text("x")
    with pytest.raises(MergeError, match="plain is not a folder"):
        merge(recipe("linear", models), tmp_path / "plain" / "o.safetensors")


def test_mixed_dtypes_need_an_explicit_dtype(write_st, tmp_path):
    a = write_st("a", random_state(1))
    b = write_st("b", random_state(2, dtype=np.float16))
    with pytest.raises(
        MergeError, match=r"inputs mix dtypes; choose the output dtype with --dtype"
    ):
        merge(recipe("linear", [a, b]), tmp_path / "o.safetensors")
    r = recipe("linear", [a, b]).model_copy(update={"dtype": "bfloat16"})
    out = merge(r, tmp_path / "o.safetensors", progress=False)
    from safetensors.torch import load_file

    merged = load_file(str(out))
    assert all(v.dtype == torch.bfloat16 for v in merged.values())
    with pytest.raises(MergeError, match="unknown dtype 'float8'"):
        merge(r.model_copy(update={"dtype": "float8"}), tmp_path / "p.safetensors")


def test_failure_midway_leaves_no_output(ckpts, tmp_path, monkeypatch):
    _, models = ckpts
    from mergelab.io.writer import SafetensorsWriter

    calls = []

    def failing_write(self, name, start, values):
        calls.append(name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(SafetensorsWriter, "write", failing_write)
    out = tmp_path / "folder-out"
    with pytest.raises(OSError, match="No space left"):
        merge(recipe("linear", models), out, progress=False)
    assert nothing_written(tmp_path, out)
