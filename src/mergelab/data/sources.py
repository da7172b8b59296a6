"""Where pixels come from: arrays held in memory, or image files read lazily with PIL.

A source holds every image of a dataset (all splits) and their targets; splits are
index arrays into it. Sources hand out native images as float32 in [0, 1].
"""

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mergelab.data.errors import DatasetError, DatasetNotFoundError


class Source:
    """Base: targets for every item, images by position, and a content fingerprint."""

    targets: np.ndarray  # (N,) int64, or (N, L) float32 for multi-label
    channels: int

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, i: int) -> torch.Tensor:
        """Native image ``i`` as float32 CxHxW in [0, 1]."""
        raise NotImplementedError

    def images(self, idx: Sequence[int]) -> torch.Tensor | list[torch.Tensor]:
        """Several images: one NxCxHxW tensor when they share a shape, else a list."""
        return [self.image(int(i)) for i in idx]

    def fingerprint(self) -> str:
        """Hex digest identifying the content (for cache keys), computed once."""
        raise NotImplementedError

    def channel_stats(
        self, idx: np.ndarray, *, sample: int | None = None, seed: int = 0
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std over the pixels of images ``idx`` (optionally a sample)."""
        raise NotImplementedError


def _round(values: np.ndarray) -> tuple[float, ...]:
    return tuple(round(float(v), 6) for v in values)


class ArraySource(Source):
    """Small datasets kept in memory as uint8 NxCxHxW (values 0..``scale``)."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, *, scale: float = 255.0) -> None:
        if images.ndim != 4:
            raise DatasetError(f"ArraySource wants NxCxHxW images, got shape {images.shape}")
        if len(images) != len(targets):
            raise DatasetError(f"{len(images)} images but {len(targets)} targets")
        self.array = np.ascontiguousarray(images)
        self.targets = np.asarray(targets)
        self.scale = float(scale)
        self.channels = int(images.shape[1])
        self._fingerprint: str | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.array.shape[2]), int(self.array.shape[3])

    def image(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.array[i].astype(np.float32)) / self.scale

    def images(self, idx: Sequence[int]) -> torch.Tensor:
        sel = self.array[np.asarray(idx, dtype=np.int64)]
        return torch.from_numpy(sel.astype(np.float32)) / self.scale

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(repr((self.array.shape, str(self.array.dtype), self.scale)).encode())
            h.update(memoryview(self.array).cast("B"))
            h.update(np.ascontiguousarray(self.targets).tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def channel_stats(
        self, idx: np.ndarray, *, sample: int | None = None, seed: int = 0
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Exact stats from per-channel value histograms (no float copy of the data)."""
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == 0:
            raise DatasetError("cannot compute image statistics of an empty split")
        if self.array.dtype != np.uint8:
            sel = self.array[idx].astype(np.float64) / self.scale
            return _round(sel.mean(axis=(0, 2, 3))), _round(sel.std(axis=(0, 2, 3)))
        hist = np.zeros((self.channels, 256), dtype=np.int64)
        for start in range(0, len(idx), 4096):
            chunk = self.array[idx[start : start + 4096]]
            for c in range(self.channels):
                hist[c] += np.bincount(chunk[:, c].ravel(), minlength=256)
        values = np.arange(256, dtype=np.float64) / self.scale
        n = hist.sum(axis=1).astype(np.float64)
        mean = (hist * values).sum(axis=1) / n
        var = (hist * (values - mean[:, None]) ** 2).sum(axis=1) / n
        return _round(mean), _round(np.sqrt(var))


def load_image_file(path: Path, mode: str) -> torch.Tensor:
    """Decode one image file with PIL into float32 CxHxW in [0, 1] (``mode`` "L" or "RGB")."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode in ("I;16", "I;16B", "I;16L", "I") and mode == "L":
                # 16-bit grey: scale to 8 bits instead of clipping.
                arr = np.asarray(img, dtype=np.float32)
                top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
                return torch.from_numpy(arr / top).unsqueeze(0)
            arr = np.asarray(img.convert(mode))
    except FileNotFoundError:
        raise DatasetNotFoundError(f"image file missing: {path}") from None
    except OSError as err:
        raise DatasetError(f"cannot read image {path}: {err}") from err
    t = torch.from_numpy(arr.astype(np.float32) / 255.0)
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


def image_mode_channels(path: Path) -> int:
    """Native channels of an image file: 1 for grey modes, 3 otherwise."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return 1 if img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3
    except OSError as err:
        raise DatasetError(f"cannot read image {path}: {err}") from err


def image_file_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file, read from its header."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
    except OSError as err:
        raise DatasetError(f"cannot read image {path}: {err}") from err
    return int(h), int(w)


class FileSource(Source):
    """Large image datasets: paths and targets in memory, pixels decoded per item."""

    def __init__(
        self, root: Path, paths: Sequence[Path], targets: np.ndarray, *, channels: int
    ) -> None:
        if len(paths) != len(targets):
            raise DatasetError(f"{len(paths)} image paths but {len(targets)} targets")
        if channels not in (1, 3):
            raise DatasetError(f"channels must be 1 or 3, got {channels}")
        self.root = Path(root)
        self.paths = [Path(p) for p in paths]
        self.targets = np.asarray(targets)
        self.channels = channels
        self.mode = "L" if channels == 1 else "RGB"
        self._fingerprint: str | None = None

    def image(self, i: int) -> torch.Tensor:
        return load_image_file(self.paths[i], self.mode)

    def images(self, idx: Sequence[int]) -> torch.Tensor | list[torch.Tensor]:
        imgs = [self.image(int(i)) for i in idx]
        if imgs and all(t.shape == imgs[0].shape for t in imgs):
            return torch.stack(imgs)
        return imgs

    def fingerprint(self) -> str:
        """Digest of the paths relative to the dataset root and the targets (not pixels)."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(f"files:{self.mode}\n".encode())
            for p in self.paths:
                try:
                    rel = p.relative_to(self.root)
                except ValueError:
                    rel = p
                h.update(rel.as_posix().encode() + b"\n")
            h.update(np.ascontiguousarray(self.targets).tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def channel_stats(
        self, idx: np.ndarray, *, sample: int | None = 256, seed: int = 0
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Stats over a seeded sample of at most ``sample`` images (all if None)."""
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == 0:
            raise DatasetError("cannot compute image statistics of an empty split")
        if sample is not None and len(idx) > sample:
            idx = np.sort(np.random.default_rng(seed).choice(idx, size=sample, replace=False))
        total = np.zeros(self.channels)
        total_sq = np.zeros(self.channels)
        count = 0
        for i in idx:
            x = self.image(int(i)).double()
            total += x.sum(dim=(1, 2)).numpy()
            total_sq += (x * x).sum(dim=(1, 2)).numpy()
            count += x.shape[1] * x.shape[2]
        mean = total / count
        var = np.maximum(total_sq / count - mean**2, 0.0)
        return _round(mean), _round(np.sqrt(var))
