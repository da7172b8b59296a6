"""Torch checkpoints are read as data: wrappers detected, code-bearing pickles refused."""

from __future__ import annotations

import collections

import pytest
import torch

from mergelab.errors import MergeError
from mergelab.io import load_state_dict


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


def test_pickle_that_needs_code_is_refused(tmp_path, capsys):
    torch.save({"w": torch.ones(2), "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(MergeError, match=r"evil\.pt: refused to load: this pickle needs code"):
        load_state_dict(tmp_path / "evil.pt")
    assert "code ran" not in capsys.readouterr().out


def test_no_state_dict_inside(tmp_path):
    torch.save({"epoch": 3, "notes": "x"}, tmp_path / "m.pt")
    with pytest.raises(
        MergeError, match=r"no state dict found \(top-level keys: \['epoch', 'notes'\]\)"
    ):
        load_state_dict(tmp_path / "m.pt")
    with pytest.raises(MergeError, match="key 'model' not found"):
        load_state_dict(tmp_path / "m.pt", key="model")


def test_garbage_file(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(MergeError, match=r"m\.pt"):
        load_state_dict(tmp_path / "m.pt")
