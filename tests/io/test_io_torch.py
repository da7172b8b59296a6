"""Torch checkpoints are read as data: wrappers detected, code-bearing pickles refused."""

from __future__ import annotations

import collections
import os
import re
import signal

import pytest
import torch

from mergelab.cli import main
from mergelab.errors import MergeError, MergelabError
from mergelab.io import load_state_dict
from mergelab.io.torch_file import TorchFile


class Payload:
    """Unpickling this would need the class: torch's weights_only loader must refuse it."""

    def __reduce__(self):
        return (print, ("code ran",))


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    return {"fc.weight": torch.randn(3, 4), "fc.bias": torch.randn(3), "bn.n": torch.tensor(7)}


def _check(loaded: dict, state: dict) -> None:
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_plain_state_dict(tmp_path, state):
    torch.save(state, tmp_path / "m.pt")
    _check(load_state_dict(tmp_path / "m.pt"), state)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_state_dict_is_detected(tmp_path, state, wrapper):
    torch.save({wrapper: state, "epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "m.pth")
    _check(load_state_dict(tmp_path / "m.pth"), state)


def test_module_prefix_is_stripped_and_key_can_be_chosen(tmp_path, state):
    wrapped = {"ema": {f"module.{k}": v for k, v in state.items()}, "net": {"x": torch.ones(1)}}
    torch.save(wrapped, tmp_path / "m.bin")
    _check(load_state_dict(tmp_path / "m.bin", key="ema"), state)
    kept = load_state_dict(tmp_path / "m.bin", key="ema", strip_prefix="")
    assert set(kept) == {f"module.{k}" for k in state}


def test_ordered_dict_and_legacy_format(tmp_path, state):
    torch.save(
        collections.OrderedDict(state), tmp_path / "m.pt", _use_new_zipfile_serialization=False
    )
    _check(load_state_dict(tmp_path / "m.pt"), state)


class SystemPayload:
    """A blocked module (``os``): torch words this refusal differently."""

    def __reduce__(self):
        return (os.system, ("echo code ran",))


@pytest.mark.parametrize("payload", [Payload(), SystemPayload()])
def test_pickle_that_needs_code_is_refused(tmp_path, capfd, payload):
    torch.save({"w": torch.ones(2), "evil": payload}, tmp_path / "evil.pt")
    with pytest.raises(MergeError, match=r"evil\.pt: refused to load: this pickle needs code"):
        load_state_dict(tmp_path / "evil.pt")
    assert "code ran" not in capfd.readouterr().out


def test_no_state_dict_inside(tmp_path):
    torch.save({"epoch": 3, "notes": "x"}, tmp_path / "m.pt")
    with pytest.raises(
        MergeError, match=r"no state dict found \(top-level keys: \['epoch', 'notes'\]\)"
    ):
        load_state_dict(tmp_path / "m.pt")
    with pytest.raises(MergeError, match="key 'model' not found"):
        load_state_dict(tmp_path / "m.pt", key="model")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"empty file \(0 bytes\); not a torch checkpoint$"),
        (b"\0" * 4096, r"not a torch checkpoint \(it holds only zero bytes\)"),
        (
            b"version https://git-lfs.github.com/spec/v1\n",
            "not a torch checkpoint .*Git LFS pointer",
        ),
        (b"not a checkpoint at all", "not a torch checkpoint .*neither a zip archive nor a pickle"),
        (
            b"\x80\x02" + bytes(range(200, 256)),
            r"not a readable torch checkpoint \(Unsupported operand",
        ),
        (b"PK\x03\x04" + b"\0" * 60, "not a readable torch checkpoint .*zip archive"),
    ],
)
def test_garbage_is_not_called_code(tmp_path, content, message):
    """Only a real pickle asking for a forbidden global is said to need code execution."""
    (tmp_path / "m.pt").write_bytes(content)
    with pytest.raises(
        MergeError, match=rf"^{re.escape(str(tmp_path / 'm.pt'))}: {message}"
    ) as err:
        load_state_dict(tmp_path / "m.pt")
    assert "code execution" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (torch.eye(3).to_sparse(), "entry 'w' is a sparse_coo tensor; only dense tensors"),
        (torch.ones(2, dtype=torch.complex64), "entry 'w' has dtype complex64, which cannot be"),
        ("some text", "entry 'w' is a str, not a tensor, so it cannot be merged"),
        (torch.empty(2, device="meta"), "entry 'w' holds no data"),
    ],
)
def test_entries_that_cannot_be_merged_are_named(tmp_path, value, message):
    torch.save({"ok": torch.ones(2), "w": value}, tmp_path / "m.pt")
    with pytest.raises(MergeError, match=rf"m\.pt: {message}"):
        TorchFile(tmp_path / "m.pt")


def test_cli_reports_a_sparse_entry_in_one_line(tmp_path, capsys):
    torch.save({"w": torch.eye(2).to_sparse()}, tmp_path / "s.pt")
    out = tmp_path / "out.safetensors"
    args = ["merge", "--method", "linear", "--models", str(tmp_path / "s.pt"), "--out", str(out)]
    assert main([*args[:-2], str(tmp_path / "s.pt"), *args[-2:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mergelab: error: {tmp_path / 's.pt'}: entry 'w' is a sparse_coo")
    assert err.count("\n") == 1 and not out.exists()


def test_unsigned_integer_tensors_are_read(tmp_path):
    state = {
        "u16": torch.tensor([1, 2]).to(torch.uint16),
        "u32": torch.tensor([2**32 - 1]).to(torch.uint32),
    }
    torch.save(state, tmp_path / "u.pt")
    with TorchFile(tmp_path / "u.pt") as f:
        assert {n: i.dtype for n, i in f.infos.items()} == {"u16": "U16", "u32": "U32"}
    _check(load_state_dict(tmp_path / "u.pt"), state)


def test_the_choice_between_two_state_dicts_is_said(tmp_path, state, capsys):
    other = {k: v + 1 for k, v in state.items()}
    torch.save({"model": other, "state_dict": state}, tmp_path / "both.pt")
    f = TorchFile(tmp_path / "both.pt")
    _check({n: torch.from_numpy(f.read_array(n)) for n in f.infos}, state)
    note = (
        f"{tmp_path / 'both.pt'}: used the state dict under 'state_dict'; the file also holds "
        "'model' (choose another with --key model)"
    )
    assert f.note == note
    assert capsys.readouterr().err == f"mergelab: note: {note}\n"
    _check(load_state_dict(tmp_path / "both.pt", key="model"), other)
    assert capsys.readouterr().err == ""  # an explicit choice needs no note


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
def test_compile_and_data_parallel_prefixes_are_stripped(tmp_path, state, prefix):
    torch.save({"model": {prefix + k: v for k, v in state.items()}}, tmp_path / "m.pt")
    _check(load_state_dict(tmp_path / "m.pt"), state)


def test_a_fifo_is_refused_without_reading_it(tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    signal.alarm(10)  # opening a FIFO for reading would block until a writer appears
    try:
        with pytest.raises(MergelabError, match=r"pipe\.pt: a FIFO"):
            TorchFile(fifo)
    finally:
        signal.alarm(0)
