"""What a dataset is (DatasetInfo) and what an architecture wants (ImageSpec)."""

from dataclasses import dataclass

from mergelab.data.errors import DatasetError


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about a dataset that models, heads and the image adapter need."""

    name: str
    num_classes: int  # classes, or labels for multi-label
    channels: int  # native channels (1 or 3)
    image_size: tuple[int, int]  # native (H, W)
    multilabel: bool
    mean: tuple[float, ...]  # per channel, [0, 1] scale, of train images
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise DatasetError(f"{self.name}: channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DatasetError(
                f"{self.name}: mean/std need {self.channels} values, "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise DatasetError(f"{self.name}: std must be positive, got {self.std}")
        if self.num_classes < 1:
            raise DatasetError(f"{self.name}: num_classes must be >= 1, got {self.num_classes}")


@dataclass(frozen=True)
class ImageSpec:
    """The input an architecture wants: channels, square side, and whether to normalise."""

    channels: int
    size: int
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise DatasetError(f"ImageSpec.channels must be 1 or 3, got {self.channels}")
        if self.size < 1:
            raise DatasetError(f"ImageSpec.size must be positive, got {self.size}")
