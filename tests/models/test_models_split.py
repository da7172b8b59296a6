import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mergelab.models import BUILTINS, FeatureHead, build_model, find_head, split_model

CASES = [
    *[(arch, 1, 8) for arch in BUILTINS],
    *[(arch, 1, 28) for arch in BUILTINS],
    *[(arch, 3, 32) for arch in BUILTINS],
    ("tv:resnet18", 3, 32, "fc."),
    ("tv:densenet121", 3, 32, "classifier."),
    ("tv:vgg11", 3, 32, "classifier.6."),
    ("tv:vgg11_bn", 1, 32, "classifier.6."),
    ("tv:vit_b_16", 3, 32, "heads.head."),
    ("timm:resnet18", 1, 32, "fc."),
    ("timm:vit_tiny_patch16_224", 3, 32, "head."),
    ("timm:deit_tiny_patch16_224", 3, 32, "head."),
]


def _check_split(model: nn.Module, x: torch.Tensor, head: str | None = None) -> FeatureHead:
    """Assert head(features(x)) == model(x) and that the head is the model's own last Linear."""
    model.eval()
    fh = split_model(model, head=head)
    with torch.no_grad():
        expected = model(x)
        feats = fh.features(x)
        got = fh.head(feats)
    assert feats.shape == (x.shape[0], fh.feature_dim)
    assert isinstance(fh.head_module, nn.Linear)
    assert fh.feature_dim == fh.head_module.in_features
    torch.testing.assert_close(got, expected)
    state = model.state_dict()
    assert fh.head_prefix.endswith(".")
    assert state[fh.head_prefix + "weight"].data_ptr() == fh.head_module.weight.data_ptr()
    assert state[fh.head_prefix + "weight"].shape == (expected.shape[1], fh.feature_dim)
    assert fh.head_prefix + "bias" in state
    return fh


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}x{c[2]}")
def test_head_of_features_reproduces_model(case: tuple) -> None:
    arch, in_chans, img_size, *prefix = case
    torch.manual_seed(0)
    model = build_model(arch, 7, in_chans=in_chans, img_size=img_size)
    x = torch.randn(2, in_chans, img_size, img_size)
    fh = _check_split(model, x)
    assert fh.head_prefix == (prefix[0] if prefix else "head.")


def test_torchvision_features_are_the_penultimate_activations() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        res = build_model("tv:resnet18", 5).eval()
        trunk = nn.Sequential(*list(res.children())[:-1])  # everything up to avgpool
        torch.testing.assert_close(split_model(res).features(x), trunk(x).flatten(1))

        dense = build_model("tv:densenet121", 5).eval()
        expected = F.adaptive_avg_pool2d(F.relu(dense.features(x)), 1).flatten(1)
        torch.testing.assert_close(split_model(dense).features(x), expected)

        vgg = build_model("tv:vgg11", 5).eval()
        expected = vgg.classifier[:6](vgg.avgpool(vgg.features(x)).flatten(1))
        torch.testing.assert_close(split_model(vgg).features(x), expected)

        vit = build_model("tv:vit_b_16", 5).eval()
        tokens = vit._process_input(x)
        tokens = torch.cat([vit.class_token.expand(2, -1, -1), tokens], dim=1)
        torch.testing.assert_close(split_model(vit).features(x), vit.encoder(tokens)[:, 0])


def test_torchvision_vit_with_representation_layer() -> None:
    torch.manual_seed(0)
    vit = build_model("tv:vit_b_16", 5, representation_size=32)
    fh = _check_split(vit, torch.randn(2, 3, 32, 32))
    assert fh.head_prefix == "heads.head." and fh.feature_dim == 32


class UserNet(nn.Module):
    """A user model with an unconventional head location and functional ops before it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        self.out = nn.Sequential(nn.Linear(4 * 6 * 6, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x).flatten(1) * 0.5
        return self.out(h)


def test_user_model_with_named_head() -> None:
    torch.manual_seed(0)
    model = UserNet()
    x = torch.randn(4, 1, 8, 8)
    fh = _check_split(model, x, head="out.2")
    assert fh.head_prefix == "out.2." and fh.feature_dim == 16
    with torch.no_grad():
        expected = torch.tanh(model.out[0](model.body(x).flatten(1) * 0.5))
        torch.testing.assert_close(fh.features(x), expected)
    # The capture hook is removed after each call: the model still runs normally.
    assert not model.out[2]._forward_pre_hooks
    assert model(x).shape == (4, 3)


def test_features_keep_gradients() -> None:
    model = UserNet()
    fh = split_model(model, head="out.2")
    fh.features(torch.randn(2, 1, 8, 8)).sum().backward()
    assert model.out[0].weight.grad is not None


def test_head_errors() -> None:
    model = UserNet()
    with pytest.raises(ValueError, match="head="):
        find_head(model)
    with pytest.raises(ValueError, match="no submodule"):
        split_model(model, head="out.9")
    with pytest.raises(ValueError, match="Tanh"):
        split_model(model, head="out.1")


def test_features_shape_error_when_head_sees_tokens() -> None:
    class TokenHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x).mean(1)  # Linear on (B, N, 4) then pooled

    fh = split_model(TokenHead())
    with pytest.raises(RuntimeError, match="cannot be split"):
        fh.features(torch.randn(2, 5, 4))


def test_distilled_timm_model_is_refused() -> None:
    model = build_model("timm:deit_tiny_distilled_patch16_224", 3, depth=1)
    with pytest.raises(ValueError, match="classifier heads"):
        split_model(model)
