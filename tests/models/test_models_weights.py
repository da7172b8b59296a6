from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mergelab.errors import MergelabError
from mergelab.models import build_model, load_weights, read_checkpoint


def test_mismatched_checkpoint_lists_keys_and_shapes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_model("mlp", 5, in_chans=1, img_size=8, hidden=(32, 16))
    state = source.state_dict()
    del state["layers.0.bias"]
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "other.pt"
    torch.save(state, path)
    target = build_model("mlp", 10, in_chans=1, img_size=8, hidden=(32, 24))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_weights(target, path)
    msg = str(info.value)
    assert "other.pt" in msg
    assert "missing keys (1): layers.0.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "layers.2.weight: checkpoint (16, 32) vs model (24, 32)" in msg
    assert "layers.2.bias: checkpoint (16,) vs model (24,)" in msg
    assert "head.weight: checkpoint (5, 16) vs model (10, 24)" in msg
    assert "head.bias: checkpoint (5,) vs model (10,)" in msg
    for k, v in target.state_dict().items():  # nothing was half-loaded
        torch.testing.assert_close(v, before[k])


def test_strict_false_ignores_key_sets_but_not_shapes() -> None:
    model = build_model("linear", 3, in_chans=1, img_size=8)
    weight = torch.ones(3, 64)
    load_weights(model, {"head.weight": weight, "junk": torch.zeros(1)}, strict=False)
    torch.testing.assert_close(model.head.weight, weight)
    with pytest.raises(ValueError, match=r"head\.weight: checkpoint \(4, 64\) vs model \(3, 64\)"):
        load_weights(model, {"head.weight": torch.ones(4, 64)}, strict=False)
    with pytest.raises(ValueError, match="missing keys"):
        load_weights(model, {"head.weight": weight})


def test_safetensors_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = build_model("resnet_small", 4, in_chans=1).eval()
    with torch.no_grad():  # non-default BatchNorm statistics must survive too
        for m in trained.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    path = tmp_path / "model.safetensors"
    save_file(trained.state_dict(), str(path))
    torch.manual_seed(1)
    fresh = build_model("resnet_small", 4, in_chans=1).eval()
    assert load_weights(fresh, path) is fresh
    for k, v in trained.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x))


def test_wrapped_pt_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = build_model("cnn", 3, in_chans=1)
    wrapped = {
        "epoch": 3,
        "state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()},
    }
    path = tmp_path / "ckpt.pth"
    torch.save(wrapped, path)
    fresh = load_weights(build_model("cnn", 3, in_chans=1), path)
    for k, v in trained.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v)
    assert set(read_checkpoint({"model": trained.state_dict()})) == set(trained.state_dict())


def test_missing_num_batches_tracked_is_tolerated() -> None:
    trained = build_model("resnet_small", 2)
    state = {k: v for k, v in trained.state_dict().items() if "num_batches_tracked" not in k}
    load_weights(build_model("resnet_small", 2), state)


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        load_weights(build_model("linear", 2, img_size=8), "nope.pt")


def test_files_and_mappings_are_unwrapped_as_merges_unwrap_them(tmp_path: Path) -> None:
    """One unwrapping for merges and model loading: wrappers and compile/DDP prefixes."""
    from mergelab.io import open_checkpoint

    state = build_model("linear", 3, in_chans=1, img_size=8).state_dict()
    wrapped = {"epoch": 1, "model": {f"module._orig_mod.{k}": v for k, v in state.items()}}
    torch.save(wrapped, tmp_path / "ckpt.pt")
    with open_checkpoint(tmp_path / "ckpt.pt") as ckpt:
        assert set(ckpt.infos) == set(state)
    for source in (wrapped, tmp_path / "ckpt.pt"):
        loaded = read_checkpoint(source)
        assert set(loaded) == set(state)
        for k, v in state.items():
            torch.testing.assert_close(loaded[k], v)


def test_a_mapping_without_tensors_is_one_clear_error() -> None:
    with pytest.raises(
        MergelabError, match=r"state dict: no state dict found \(top-level keys: \['epoch'\]\)"
    ):
        read_checkpoint({"epoch": 3})
