import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from mergelab.models import BUILTINS, build_model
from mergelab.models.builtin import default_patch_size

SHAPES = [(1, 8), (1, 28), (3, 32)]


@pytest.mark.parametrize("arch", list(BUILTINS))
@pytest.mark.parametrize(("in_chans", "img_size"), SHAPES)
def test_builtins_forward_and_contract(arch: str, in_chans: int, img_size: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 10, in_chans=in_chans, img_size=img_size).eval()
    x = torch.randn(3, in_chans, img_size, img_size)
    logits = model(x)
    assert logits.shape == (3, 10)
    assert isinstance(model.head, nn.Linear)
    feats = model.forward_features(x)
    assert feats.shape == (3, model.head.in_features)
    torch.testing.assert_close(model.head(feats), logits)


def test_builtin_kwargs_are_passed() -> None:
    mlp = build_model("mlp", 5, in_chans=1, img_size=8, hidden=(16, 12, 8))
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [16, 12, 8, 5]
    vit = build_model("vit_small", 5, in_chans=1, img_size=28, patch_size=7, depth=1)
    assert vit.patch_embed.kernel_size == (7, 7) and len(vit.blocks) == 1
    assert vit(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    res = build_model("resnet_small", 5, widths=(8, 16), blocks=2)
    assert res.head.in_features == 16 and len(res.stages[1]) == 2


def test_cifar_resnet_family_grows_with_depth_and_splits() -> None:
    from mergelab.models import count_params, split_model
    from mergelab.models.builtin import ConvNet, SmallResNet

    models = {a: build_model(a, 10, in_chans=1, img_size=28) for a in ("resnet8", "resnet14")}
    models["resnet20"] = build_model("resnet20", 10, in_chans=1, img_size=28)
    counts = [count_params(m) for m in models.values()]
    assert counts[0] < counts[1] < counts[2]
    for blocks, model in zip((1, 2, 3), models.values(), strict=True):
        assert isinstance(model, SmallResNet)
        assert [len(stage) for stage in model.stages] == [blocks] * 3
        assert [stage[0].conv1.out_channels for stage in model.stages] == [16, 32, 64]
        fh = split_model(model.eval())
        x = torch.randn(2, 1, 28, 28)
        assert fh.head_prefix == "head." and fh.feature_dim == 64
        torch.testing.assert_close(fh.head(fh.features(x)), model(x))
    # resnet_small is resnet8: the same parameters, drawn the same way
    torch.manual_seed(0)
    small = build_model("resnet_small", 10, in_chans=1).state_dict()
    torch.manual_seed(0)
    eight = build_model("resnet8", 10, in_chans=1).state_dict()
    assert small.keys() == eight.keys()
    assert all(torch.equal(small[k], eight[k]) for k in small)
    # blocks can still be given; cnn has three stages by default
    assert [len(s) for s in build_model("resnet8", 3, blocks=(1, 2, 1)).stages] == [1, 2, 1]
    cnn = build_model("cnn", 10, in_chans=1, img_size=8)
    assert isinstance(cnn, ConvNet)
    convs = [m.out_channels for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [32, 64, 128]


def test_bare_resnet_names_beyond_the_builtins_are_torchvision() -> None:
    for name in ("resnet18", "resnet34", "resnet50"):
        assert type(build_model(name, 10)).__module__ == "torchvision.models.resnet"
    assert type(build_model("resnet20", 10)).__module__ == "mergelab.models.builtin"


def test_vit_default_patch_size() -> None:
    assert default_patch_size(8) == 2
    assert default_patch_size(28) == 7
    assert default_patch_size(14) == 2
    assert default_patch_size(56) == 8
    assert default_patch_size(32) == 8
    assert default_patch_size(224) == 16
    with pytest.raises(ValueError, match="built for 32x32"):
        build_model("vit_small", 3)(torch.randn(1, 3, 64, 64))


def test_unknown_arch_lists_builtins_and_prefixes() -> None:
    with pytest.raises(ValueError) as info:
        build_model("definitely_not_a_model", 10)
    msg = str(info.value)
    for name in BUILTINS:
        assert name in msg
    assert "tv:" in msg and "timm:" in msg
    with pytest.raises(ValueError, match="torchvision"):
        build_model("tv:definitely_not_a_model", 10)
    with pytest.raises(ValueError, match="timm"):
        build_model("timm:definitely_not_a_model", 10)
    with pytest.raises(ValueError, match="source"):
        build_model("hf:resnet18", 10)


def test_bare_names_resolve_builtin_then_torchvision_then_timm() -> None:
    assert type(build_model("mlp", 3, img_size=8)).__module__ == "mergelab.models.builtin"
    tv = build_model("resnet18", 3)
    assert type(tv).__module__.startswith("torchvision.")
    timm_model = build_model("deit_tiny_patch16_224", 3)
    assert type(timm_model).__module__.startswith("timm.")


def test_torchvision_options() -> None:
    model = build_model("tv:vit_b_16", 4, in_chans=1, img_size=32)
    assert model.image_size == 32
    assert model.conv_proj.in_channels == 1
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 4)
    res = build_model("tv:resnet18", 4, in_chans=1)
    assert res.conv1.in_channels == 1 and res.conv1.out_channels == 64
    assert res.conv1.stride == (2, 2) and res.conv1.bias is None
    assert res.fc.out_features == 4
    assert res.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 4)


def test_timm_options() -> None:
    vit = build_model("timm:vit_tiny_patch16_224", 6, in_chans=1, img_size=32)
    assert tuple(vit.patch_embed.img_size) == (32, 32)
    assert vit.patch_embed.proj.in_channels == 1
    assert vit.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 6)
    res = build_model("timm:resnet18", 6, in_chans=1)  # rejects img_size: built without it
    assert res.conv1.in_channels == 1
    assert res.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 6)


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def test_build_model_never_touches_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch_home, hf_home = tmp_path / "torch", tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert Path(torch.hub.get_dir()).is_relative_to(torch_home)
    for arch in ("tv:resnet18", "timm:resnet18", "timm:vit_tiny_patch16_224", "cnn"):
        model = build_model(arch, 3, in_chans=1).eval()
        assert model(torch.randn(1, 1, 32, 32)).shape[-1] == 3
    assert attempts == []
    assert _files_under(tmp_path) == []
