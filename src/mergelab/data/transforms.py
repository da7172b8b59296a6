"""The one place images adapt to an architecture: channels, size, normalisation.

Loaders hand out native images as float32 in [0, 1]; ``ImageAdapter`` turns them into
what an ``ImageSpec`` asks for, deterministically, so that two runs (and the on-disk
caches keyed on ``ImageAdapter.describe()``) see identical inputs. Random
augmentation lives in ``augment`` and is never applied by ``DatasetSplits.split``.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mergelab.data.errors import DatasetError
from mergelab.data.info import DatasetInfo, ImageSpec

# ITU-R BT.601 luma weights, the same PIL uses for RGB -> L.
LUMA: tuple[float, float, float] = (0.299, 0.587, 0.114)

# Bump when the adaptation changes, so cache keys built on describe() change too.
TRANSFORM_VERSION = 1


def adapt_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey -> RGB by repeating; RGB -> grey by luminance. ``x`` is CxHxW or NxCxHxW."""
    c = x.shape[-3]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        reps = [1] * x.dim()
        reps[-3] = 3
        return x.repeat(*reps)
    if c == 3 and channels == 1:
        w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x * w).sum(dim=-3, keepdim=True)
    raise DatasetError(f"cannot adapt {c} channels to {channels}; only 1 <-> 3 is supported")


def adapt_stats(
    mean: Sequence[float], std: Sequence[float], channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std of the channel-adapted images, from the native per-channel stats.

    Grey -> RGB repeats them (exact). RGB -> grey: the mean is exact; the std assumes
    fully correlated channels (luma-weighted sum), a close upper bound for natural
    images, where R, G and B move together.
    """
    if len(mean) == channels:
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) == 1 and channels == 3:
        return (float(mean[0]),) * 3, (float(std[0]),) * 3
    if len(mean) == 3 and channels == 1:
        m = sum(w * v for w, v in zip(LUMA, mean, strict=True))
        s = sum(w * v for w, v in zip(LUMA, std, strict=True))
        return (float(m),), (float(s),)
    raise DatasetError(f"cannot adapt stats of {len(mean)} channels to {channels}")


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize CxHxW or NxCxHxW to ``size`` (H, W): bilinear, antialiased.

    When the aspect ratio differs, first crop the centre to the target aspect, so
    images are not squashed (e.g. CelebA's 218x178 to a square).
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    th, tw = size
    if (h, w) == (th, tw):
        return x
    if h * tw != w * th:
        if h * tw > w * th:  # too tall
            ch = max(1, round(w * th / tw))
            top = (h - ch) // 2
            x = x[..., top : top + ch, :]
        else:  # too wide
            cw = max(1, round(h * tw / th))
            left = (w - cw) // 2
            x = x[..., :, left : left + cw]
        if (int(x.shape[-2]), int(x.shape[-1])) == (th, tw):
            return x
    batched = x.dim() == 4
    y = F.interpolate(
        x if batched else x.unsqueeze(0),
        size=(th, tw),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return y if batched else y.squeeze(0)


class ImageAdapter:
    """Native [0, 1] images -> the channels, size and normalisation a spec asks for.

    ``spec=None`` keeps native channels and size and normalises with the dataset's
    mean/std. Works on one image (CxHxW) or a batch (NxCxHxW).
    """

    def __init__(self, info: DatasetInfo, spec: ImageSpec | None = None) -> None:
        self.info = info
        self.spec = spec
        self.channels = spec.channels if spec is not None else info.channels
        self.size: tuple[int, int] = (
            (spec.size, spec.size) if spec is not None else tuple(info.image_size)  # type: ignore[assignment]
        )
        self.normalize = spec.normalize if spec is not None else True
        mean, std = adapt_stats(info.mean, info.std, self.channels)
        self.mean, self.std = mean, std
        self._mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4):
            raise DatasetError(f"expected CxHxW or NxCxHxW image, got shape {tuple(x.shape)}")
        if x.shape[-3] != self.info.channels:
            raise DatasetError(
                f"{self.info.name}: image has {x.shape[-3]} channels, "
                f"dataset says {self.info.channels}"
            )
        x = x.to(torch.float32)
        x = adapt_channels(x, self.channels)
        x = resize(x, self.size)
        if self.normalize:
            x = (x - self._mean) / self._std
        return x.contiguous()

    def describe(self) -> str:
        """Stable text naming everything that decides the output, for cache keys."""
        norm = (
            f"norm(mean={','.join(f'{m:.6f}' for m in self.mean)};"
            f"std={','.join(f'{s:.6f}' for s in self.std)})"
            if self.normalize
            else "raw01"
        )
        return (
            f"v{TRANSFORM_VERSION}:from=c{self.info.channels}:"
            f"{self.info.image_size[0]}x{self.info.image_size[1]}:"
            f"to=c{self.channels}:{self.size[0]}x{self.size[1]}:{norm}"
        )

    def __repr__(self) -> str:
        return f"ImageAdapter({self.describe()})"


def augment(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    padding: int = 4,
    flip: bool = True,
) -> torch.Tensor:
    """Train-time augmentation: random crop after zero padding, random horizontal flip.

    ``x`` is an NxCxHxW batch (already adapted, so zero padding is the mean colour when
    normalised). Seeded by ``generator`` so runs repeat; never used by ``split()``.
    """
    if x.dim() != 4:
        raise DatasetError(f"augment expects an NxCxHxW batch, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (padding, padding, padding, padding)) if padding > 0 else x
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    rows = oy[:, None] + torch.arange(h)[None, :]
    col_base = torch.where(flips[:, None], torch.arange(w - 1, -1, -1)[None, :], torch.arange(w))
    cols = ox[:, None] + col_base
    bi = torch.arange(n)[:, None, None, None]
    ci = torch.arange(c)[None, :, None, None]
    return padded[
        bi.to(dev), ci.to(dev), rows[:, None, :, None].to(dev), cols[:, None, None, :].to(dev)
    ]
