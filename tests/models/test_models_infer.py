"""Input channels, fixed image size and classes read from a checkpoint's tensor shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mergelab.io.safetensors_file import SafetensorsFile
from mergelab.models import build_model
from mergelab.models.infer import CheckpointInput, Fact, checkpoint_shapes, read_input


def _meta_state(arch: str, num_classes: int, in_chans: int, img_size: int) -> dict:
    """A real architecture's state dict on the meta device: true shapes, no memory."""
    with torch.device("meta"):
        return build_model(arch, num_classes, in_chans=in_chans, img_size=img_size).state_dict()


def _values(found: CheckpointInput) -> dict[str, int]:
    return {name: fact.value for name, fact in found.facts().items()}


@pytest.fixture(scope="module")
def resnet18_state() -> dict:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).state_dict()


def test_torchvision_resnet18_files_and_wrappers(resnet18_state: dict, tmp_path: Path) -> None:
    st, pt = tmp_path / "r.safetensors", tmp_path / "r.pt"
    save_file(resnet18_state, str(st))
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in resnet18_state.items()}}, pt
    )
    expected = CheckpointInput(
        in_chans=Fact(3, "conv1.weight", (64, 3, 7, 7)),
        img_size=None,  # a convolutional net takes any size
        num_classes=Fact(10, "fc.weight", (10, 512)),
    )
    for source in (st, pt, resnet18_state):
        assert read_input("resnet18", checkpoint_shapes(source)) == expected
        assert read_input("tv:resnet18", checkpoint_shapes(source)) == expected


def test_safetensors_shapes_come_from_the_header_alone(
    resnet18_state: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.safetensors"
    save_file(resnet18_state, str(path))

    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(SafetensorsFile, "read", no_data)
    monkeypatch.setattr(SafetensorsFile, "read_array", no_data)
    shapes = checkpoint_shapes(path)
    assert shapes["conv1.weight"] == (64, 3, 7, 7) and len(shapes) == len(resnet18_state)


@pytest.mark.parametrize(
    ("arch", "in_chans", "img_size", "expected"),
    [
        ("cnn", 1, 8, {"in_chans": 1, "num_classes": 7}),
        ("resnet8", 3, 32, {"in_chans": 3, "num_classes": 7}),
        ("resnet20", 1, 28, {"in_chans": 1, "num_classes": 7}),
        ("vit_small", 1, 8, {"in_chans": 1, "img_size": 8, "num_classes": 7}),
        ("vit_small", 3, 28, {"in_chans": 3, "img_size": 28, "num_classes": 7}),
        ("mlp", 3, 16, {"in_chans": 3, "img_size": 16, "num_classes": 7}),
        ("linear", 1, 28, {"in_chans": 1, "img_size": 28, "num_classes": 7}),
        ("tv:vit_b_16", 3, 64, {"in_chans": 3, "img_size": 64, "num_classes": 7}),
        ("tv:densenet121", 1, 32, {"in_chans": 1, "num_classes": 7}),
    ],
)
def test_builtin_and_torchvision_architectures(
    arch: str, in_chans: int, img_size: int, expected: dict[str, int]
) -> None:
    shapes = checkpoint_shapes(_meta_state(arch, 7, in_chans, img_size))
    assert _values(read_input(arch, shapes)) == expected


def test_the_tensors_named_are_the_ones_read() -> None:
    found = read_input("vit_small", checkpoint_shapes(_meta_state("vit_small", 5, 3, 32)))
    assert found.in_chans == Fact(3, "patch_embed.weight", (64, 3, 8, 8))
    assert found.img_size == Fact(32, "pos_embed", (1, 17, 64))  # 4x4 patches of 8 + class
    assert found.num_classes == Fact(5, "head.weight", (5, 64))
    flat = read_input("mlp", checkpoint_shapes(_meta_state("mlp", 5, 3, 8)))
    assert flat.in_chans == Fact(3, "layers.0.weight", (256, 192))  # 192 = 3x8x8
    assert flat.img_size == Fact(8, "layers.0.weight", (256, 192))


@pytest.mark.parametrize(
    ("arch", "img_size", "expected"),
    [
        ("timm:vit_tiny_patch16_224", 224, 224),
        ("timm:deit_tiny_patch16_224", 64, 64),
        ("timm:vit_base_patch16_reg4_gap_256", 256, 256),  # no class position, 4 registers
    ],
)
def test_timm_vits(arch: str, img_size: int, expected: int) -> None:
    pytest.importorskip("timm")
    found = read_input(arch, checkpoint_shapes(_meta_state(arch, 7, 1, img_size)))
    assert _values(found) == {"in_chans": 1, "img_size": expected, "num_classes": 7}


def test_flat_inputs_have_one_reading() -> None:
    """C*S*S with C in (1, 3) has at most one solution: 3 is not a square."""
    for n, expected in [(64, (1, 8)), (192, (3, 8)), (784, (1, 28)), (768, (3, 16))]:
        shapes = {"layers.0.weight": (256, n), "head.weight": (10, 128)}
        found = read_input("mlp", shapes)
        assert (found.in_chans.value, found.img_size.value) == expected  # type: ignore[union-attr]
    assert read_input("mlp", {"layers.0.weight": (256, 50)}).facts() == {}


def test_nothing_is_claimed_for_a_foreign_checkpoint_or_an_unknown_arch(
    resnet18_state: dict,
) -> None:
    mlp_shapes = checkpoint_shapes(_meta_state("mlp", 10, 1, 8))
    assert read_input("resnet18", mlp_shapes).facts() == {}  # load_weights reports the misfit
    assert read_input("no_such_arch", checkpoint_shapes(resnet18_state)).facts() == {}
    conv1 = {"conv1.weight": (64, 3, 7, 7, 1)}  # wrong rank: not read
    assert read_input("resnet18", conv1).facts() == {}
