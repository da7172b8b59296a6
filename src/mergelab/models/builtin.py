"""Small built-in classifiers.

They exist so that the embedded default experiments (MNIST-like 1x28x28 or digits-like 1x8x8
inputs) train in seconds on a couple of CPU cores: ``linear``, ``mlp``, ``cnn`` (3 conv
stages, 32/64/128 channels), the CIFAR ResNet-(6n+2) family ``resnet8``, ``resnet14``,
``resnet20`` (1, 2, 3 basic blocks per stage, widths 16/32/64; ``resnet_small`` is
``resnet8``) and ``vit_small``. Every built-in follows the same contract that
:func:`mergelab.models.split_model` relies on: the last layer is an ``nn.Linear`` called ``head``
and ``forward_features(x)`` returns exactly what ``head`` receives, shape ``(B, D)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BUILTINS",
    "BuiltinClassifier",
    "ConvNet",
    "LinearClassifier",
    "MLPClassifier",
    "SmallResNet",
    "SmallViT",
    "build_builtin",
    "default_patch_size",
]


class BuiltinClassifier(nn.Module):
    """Base class: ``forward(x) = head(forward_features(x))``, the contract split_model uses."""

    head: nn.Linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


class LinearClassifier(BuiltinClassifier):
    """Flatten -> Linear: the simplest model, useful as a convex baseline for merging."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.head = nn.Linear(in_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class MLPClassifier(BuiltinClassifier):
    """Flatten -> (Linear, ReLU) per hidden width -> Linear head; the classic permutation case."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (256, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


class ConvNet(BuiltinClassifier):
    """(Conv3x3, ReLU, MaxPool2) per stage, then global average pool -> Linear head.

    Global pooling makes it independent of the input size (8x8 and up). The default three
    stages (32, 64, 128 channels) pool a 28x28 image down to 3x3 before the global pool;
    with two stages the pool averages 7x7 maps and the net is architecture-limited
    (mnist5k: about 90 % test accuracy against 99 %).
    """

    def __init__(
        self, in_chans: int, num_classes: int, channels: Sequence[int] = (32, 64, 128)
    ) -> None:
        super().__init__()
        if not 1 <= len(channels) <= 3:
            raise ValueError(f"cnn takes 1 to 3 conv layers, got channels={tuple(channels)}")
        layers: list[nn.Module] = []
        width = in_chans
        for c in channels:
            layers += [nn.Conv2d(width, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            width = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN, with a 1x1 conv+BN shortcut when shapes change."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(BuiltinClassifier):
    """CIFAR-style ResNet: 3x3 stem, 3 stages of basic blocks (strides 1, 2, 2), GAP, head.

    With widths (16, 32, 64) and ``blocks`` n per stage this is He et al.'s CIFAR
    ResNet-(6n+2): ``resnet8`` (n=1), ``resnet14`` (n=2), ``resnet20`` (n=3).
    BatchNorm is included on purpose: merging methods must handle (and repair) its statistics.
    """

    def __init__(
        self,
        in_chans: int,
        num_classes: int,
        widths: Sequence[int] = (16, 32, 64),
        blocks: Sequence[int] | int = 1,
    ) -> None:
        super().__init__()
        counts = [blocks] * len(widths) if isinstance(blocks, int) else list(blocks)
        if len(counts) != len(widths):
            raise ValueError(f"blocks {counts} and widths {list(widths)} differ in length")
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        width = widths[0]
        for i, (w, n) in enumerate(zip(widths, counts, strict=True)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(width, w, stride)] + [BasicBlock(w, w) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
            width = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)


def default_patch_size(img_size: int) -> int:
    """Largest patch size in (16, 8, 7, 4, 2) dividing ``img_size`` with >= 4 patches per side,
    else 1.

    8 -> 2 (4x4 patches), 28 -> 7 (4x4), 32 -> 8 (4x4), 224 -> 16 (14x14). On 28 px images a
    4x4 grid trains three times faster than 4 px patches (7x7) and, on a few thousand
    MNIST images, reaches a higher accuracy (measured: 93 % against 83 % test accuracy).
    """
    for p in (16, 8, 7, 4, 2):
        if img_size % p == 0 and img_size // p >= 4:
            return p
    return 1


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm-style parameter names)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SmallViT(BuiltinClassifier):
    """Tiny Vision Transformer: conv patch embedding, class token, learned position embedding,
    pre-norm blocks, final LayerNorm and a Linear head on the class token."""

    def __init__(
        self,
        in_chans: int,
        num_classes: int,
        img_size: int,
        patch_size: int | None = None,
        embed_dim: int = 64,
        depth: int = 3,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size or default_patch_size(img_size)
        if self.patch_size > img_size:
            raise ValueError(f"patch_size {self.patch_size} exceeds img_size {img_size}")
        self.grid = img_size // self.patch_size
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, self.patch_size, stride=self.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        if tokens.shape[1] != self.grid * self.grid:
            raise ValueError(
                f"vit_small was built for {self.img_size}x{self.img_size} inputs "
                f"({self.grid}x{self.grid} patches) but got {tuple(x.shape[-2:])}"
            )
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.norm(self.blocks(tokens))[:, 0]


def _linear(num_classes: int, in_chans: int, img_size: int, **kw: object) -> nn.Module:
    return LinearClassifier(in_chans * img_size * img_size, num_classes, **kw)  # type: ignore[arg-type]


def _mlp(num_classes: int, in_chans: int, img_size: int, **kw: object) -> nn.Module:
    return MLPClassifier(in_chans * img_size * img_size, num_classes, **kw)  # type: ignore[arg-type]


def _cnn(num_classes: int, in_chans: int, img_size: int, **kw: object) -> nn.Module:
    return ConvNet(in_chans, num_classes, **kw)  # type: ignore[arg-type]


def _resnet(blocks: int) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_chans: int, img_size: int, **kw: object) -> nn.Module:
        kw.setdefault("blocks", blocks)
        return SmallResNet(in_chans, num_classes, **kw)  # type: ignore[arg-type]

    build.__name__ = f"_resnet{6 * blocks + 2}"
    return build


def _vit_small(num_classes: int, in_chans: int, img_size: int, **kw: object) -> nn.Module:
    return SmallViT(in_chans, num_classes, img_size, **kw)  # type: ignore[arg-type]


BUILTINS: dict[str, Callable[..., nn.Module]] = {
    "linear": _linear,
    "mlp": _mlp,
    "cnn": _cnn,
    "resnet_small": _resnet(1),
    "resnet8": _resnet(1),
    "resnet14": _resnet(2),
    "resnet20": _resnet(3),
    "vit_small": _vit_small,
}
"""Built-in architectures by name (looked up before torchvision and timm)."""


def build_builtin(
    name: str, num_classes: int, *, in_chans: int = 3, img_size: int = 32, **kwargs: object
) -> nn.Module:
    """Build one of :data:`BUILTINS` by name."""
    return BUILTINS[name](num_classes, in_chans, img_size, **kwargs)
