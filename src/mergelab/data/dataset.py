"""DatasetSplits: fixed train/val/test index sets over one source, adapted on access."""

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mergelab.data.errors import DatasetError
from mergelab.data.info import DatasetInfo, ImageSpec
from mergelab.data.sources import Source
from mergelab.data.transforms import ImageAdapter

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")


def make_info(
    *,
    name: str,
    num_classes: int,
    channels: int,
    image_size: tuple[int, int],
    multilabel: bool,
    mean: Sequence[float],
    std: Sequence[float],
) -> DatasetInfo:
    """Build a DatasetInfo; a zero std (constant images) becomes 1 so normalising is safe."""
    return DatasetInfo(
        name=name,
        num_classes=int(num_classes),
        channels=int(channels),
        image_size=(int(image_size[0]), int(image_size[1])),
        multilabel=bool(multilabel),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) if s > 1e-6 else 1.0 for s in std),
    )


def resolve_stats(
    source: Source,
    train_idx: np.ndarray,
    *,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    sample: int | None = None,
    seed: int = 0,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """User-given mean/std if both are set, else computed from the train split."""
    if (mean is None) != (std is None):
        raise DatasetError("give both mean= and std=, or neither")
    if mean is not None and std is not None:
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)
    return source.channel_stats(train_idx, sample=sample, seed=seed)


@dataclass(frozen=True)
class SplitPart:
    """One split: which items of ``source`` belong to it (sorted positions)."""

    source: Source
    indices: np.ndarray


class SplitDataset(Dataset):
    """A split as a torch Dataset of (adapted image, target).

    Targets are int64 scalars, or float32 multi-hot vectors for multi-label sets.
    ``__getitems__`` lets a DataLoader fetch in-memory sets a batch at a time.
    """

    def __init__(
        self, source: Source, indices: np.ndarray, adapter: ImageAdapter, multilabel: bool
    ) -> None:
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.adapter = adapter
        self.multilabel = multilabel
        raw = source.targets[self.indices]
        self._targets = (
            torch.as_tensor(raw, dtype=torch.float32)
            if multilabel
            else torch.as_tensor(raw, dtype=torch.int64)
        )

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> torch.Tensor:
        """All targets of this split, in item order (no image is read)."""
        return self._targets

    def _pos(self, i: int) -> int:
        n = len(self.indices)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for split of size {n}")
        return i % n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self._pos(int(i))
        img = self.adapter(self.source.image(int(self.indices[p])))
        return img, self._targets[p]

    def get_batch(self, items: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images NxCxHxW and targets for split positions ``items``, adapted in one go."""
        pos = [self._pos(int(i)) for i in items]
        raw = self.source.images(self.indices[pos])
        if isinstance(raw, torch.Tensor):
            x = self.adapter(raw)
        else:
            x = torch.stack([self.adapter(t) for t in raw])
        return x, self._targets[pos]

    def __getitems__(self, items: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.get_batch(items)
        return list(zip(x, y, strict=True))


class DatasetSplits:
    """Fixed train/val/test splits of one dataset, each served adapted to an ImageSpec."""

    def __init__(
        self,
        info: DatasetInfo,
        parts: Mapping[str, SplitPart],
        *,
        classes: Sequence[str] | None = None,
        origin: str = "",
    ) -> None:
        missing = [s for s in SPLIT_NAMES if s not in parts]
        if missing:
            raise DatasetError(f"{info.name}: splits missing: {', '.join(missing)}")
        self.info = info
        self._parts = {
            k: SplitPart(v.source, np.asarray(v.indices, dtype=np.int64)) for k, v in parts.items()
        }
        self.classes: tuple[str, ...] = (
            tuple(classes)
            if classes is not None
            else tuple(str(i) for i in range(info.num_classes))
        )
        self.origin = origin

    def _part(self, name: str) -> SplitPart:
        try:
            return self._parts[name]
        except KeyError:
            raise DatasetError(
                f"unknown split {name!r}; choose one of: {', '.join(self._parts)}"
            ) from None

    def split(self, name: str, spec: ImageSpec | None = None) -> SplitDataset:
        """Split ``name`` ("train", "val", "test") with images adapted to ``spec``.

        ``spec=None`` keeps native channels and size, normalised with the dataset stats.
        """
        part = self._part(name)
        return SplitDataset(
            part.source, part.indices, ImageAdapter(self.info, spec), self.info.multilabel
        )

    def size(self, name: str) -> int:
        """Number of items in split ``name``."""
        return len(self._part(name).indices)

    def indices(self, name: str) -> np.ndarray:
        """Positions of split ``name`` in the dataset's item order (a copy)."""
        return self._part(name).indices.copy()

    def targets(self, name: str) -> np.ndarray:
        """Targets of split ``name`` without reading images."""
        part = self._part(name)
        return part.source.targets[part.indices].copy()

    def key(self, name: str, spec: ImageSpec | None = None) -> str:
        """Stable id of (dataset content, split, its indices, the transform) for caches.

        Same data, seed and spec give the same key in any process; the readable prefix
        helps when browsing a cache folder.
        """
        part = self._part(name)
        adapter = ImageAdapter(self.info, spec)
        h = hashlib.blake2b(digest_size=8)
        h.update(f"{self.info!r}\n{name}\n{adapter.describe()}\n".encode())
        h.update(part.source.fingerprint().encode())
        h.update(np.ascontiguousarray(part.indices, dtype="<i8").tobytes())
        tag = (
            "native"
            if spec is None
            else (f"c{spec.channels}s{spec.size}" + ("n" if spec.normalize else "r"))
        )
        safe_name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in self.info.name)
        return f"{safe_name}-{name}-{tag}-{h.hexdigest()}"

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v.indices)}" for k, v in self._parts.items())
        return f"DatasetSplits({self.info.name!r}, {sizes}, origin={self.origin!r})"


def as_tensors(dataset: Dataset, *, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole (small) dataset as stacked (X, y), in item order.

    Uses batched fetching for SplitDataset; any other map-style dataset goes through a
    DataLoader. For big sets iterate ``make_loader`` instead.
    """
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    n = len(dataset)  # type: ignore[arg-type]
    if isinstance(dataset, SplitDataset):
        for start in range(0, n, batch_size):
            x, y = dataset.get_batch(range(start, min(n, start + batch_size)))
            xs.append(x)
            ys.append(y)
    else:
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            xs.append(torch.as_tensor(x))
            ys.append(torch.as_tensor(y))
    if not xs:
        raise DatasetError("as_tensors: dataset is empty")
    return torch.cat(xs), torch.cat(ys)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int = 128,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """DataLoader whose shuffling order is fixed by ``seed`` (same order every run)."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=gen,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )
