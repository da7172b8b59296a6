"""MedMNIST 2D ``.npz`` files with their official train/val/test splits.

Each file holds ``{train,val,test}_images`` (uint8 NxHxW grey or NxHxWx3 RGB) and
``{train,val,test}_labels`` (Nx1 class ids, or NxL 0/1 for multi-label chestmnist).
"""

from pathlib import Path

import numpy as np

from mergelab.data.dataset import DatasetSplits, SplitPart, make_info, resolve_stats
from mergelab.data.errors import DatasetError, DatasetNotFoundError
from mergelab.data.sources import ArraySource
from mergelab.errors import MergelabError
from mergelab.io.npz import read_npz

# Class (or label) counts of the 2D MedMNIST v2 sets; a file named after one of them
# gets this head size even if a small file lacks some classes.
MEDMNIST_CLASSES: dict[str, int] = {
    "pathmnist": 9,
    "chestmnist": 14,
    "dermamnist": 7,
    "octmnist": 4,
    "pneumoniamnist": 2,
    "retinamnist": 5,
    "breastmnist": 2,
    "bloodmnist": 8,
    "tissuemnist": 8,
    "organamnist": 11,
    "organcmnist": 11,
    "organsmnist": 11,
}
MEDMNIST_MULTILABEL = frozenset({"chestmnist"})
SPLIT_KEYS = ("train", "val", "test")


def resolve_npz(path: str | Path, flavour: str | None = None) -> Path:
    """The npz for ``path``: the file itself, or ``<flavour>.npz`` / the only npz in a folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetNotFoundError(f"medmnist: path does not exist: {p}")
    if not p.is_dir():  # read_npz refuses what is not a regular file
        return p
    if flavour is not None:
        exact = p / f"{flavour}.npz"
        if exact.exists():
            return exact
        sized = sorted(p.glob(f"{flavour}_*.npz"))
        if len(sized) == 1:
            return sized[0]
        found = ", ".join(x.name for x in sorted(p.glob("*.npz"))) or "no .npz files"
        raise DatasetNotFoundError(f"{flavour}: missing {flavour}.npz in {p} (found: {found})")
    found_files = sorted(p.glob("*.npz"))
    if len(found_files) == 1:
        return found_files[0]
    if not found_files:
        raise DatasetNotFoundError(f"medmnist: no .npz file in {p}")
    names = ", ".join(x.name for x in found_files)
    raise DatasetError(f"medmnist: several .npz files in {p} ({names}); name one")


def _check_labels(path: Path, split: str, stem: str, lab: np.ndarray) -> None:
    """Integer class ids in ``[0, classes)`` (0/1 per label for multi-label files): a label
    out of range would otherwise silently add a class, or mean nothing."""
    where = f"{path}: {split}_labels"
    if lab.ndim != 2 or lab.dtype.kind not in "iub":
        raise DatasetError(f"{where} must be integer class ids, got {lab.dtype} {lab.shape}")
    known = MEDMNIST_CLASSES.get(stem)
    if stem in MEDMNIST_MULTILABEL and lab.shape[1] != known:
        raise DatasetError(f"{where} has {lab.shape[1]} labels per image; {stem} has {known}")
    if lab.shape[1] > 1 and known is not None and stem not in MEDMNIST_MULTILABEL:
        raise DatasetError(f"{where} must be Nx1 class ids for {stem}, got shape {lab.shape}")
    if lab.shape[1] > 1 or stem in MEDMNIST_MULTILABEL:
        high, allowed = 2, "0 or 1 per label"
    else:
        high = known if known is not None else np.iinfo(np.int64).max
        allowed = f"class ids 0-{known - 1} for {stem}" if known else "class ids >= 0"
    bad = (lab < 0) | (lab >= high)
    if bad.any():
        values = sorted({int(v) for v in lab[bad][:1000]})[:10]
        raise DatasetError(
            f"{where} holds out-of-range values {values} "
            f"({int(bad.sum())} of {lab.size}; allowed: {allowed})"
        )


def _flavour_of(path: Path) -> str:
    return path.stem.lower().split("_")[0]


def load_medmnist(path: str | Path, *, flavour: str | None = None, seed: int = 0) -> DatasetSplits:
    """One MedMNIST npz; splits are the file's own (``seed`` does not change them)."""
    npz_path = resolve_npz(path, flavour)
    stem = _flavour_of(npz_path)
    wanted = [f"{s}_{k}" for s in SPLIT_KEYS for k in ("images", "labels")]
    try:
        arrays = read_npz(npz_path, wanted)
    except MergelabError as err:
        raise DatasetError(str(err)) from None

    images, labels = [], []
    for s in SPLIT_KEYS:
        img = arrays[f"{s}_images"]
        lab = np.asarray(arrays[f"{s}_labels"])
        if img.dtype != np.uint8:
            raise DatasetError(f"{npz_path}: {s}_images must be uint8, got {img.dtype}")
        if img.ndim == 3:
            img = img[:, None, :, :]
        elif img.ndim == 4 and img.shape[-1] == 3:
            img = img.transpose(0, 3, 1, 2)
        else:
            raise DatasetError(
                f"{npz_path}: {s}_images must be NxHxW or NxHxWx3 (2D MedMNIST), "
                f"got shape {img.shape}"
            )
        if lab.ndim == 1:
            lab = lab[:, None]
        if len(lab) != len(img):
            raise DatasetError(f"{npz_path}: {len(img)} {s} images but {len(lab)} labels")
        _check_labels(npz_path, s, stem, lab)
        images.append(img)
        labels.append(lab)
    shapes = {im.shape[1:] for im in images}
    if len(shapes) != 1:
        raise DatasetError(f"{npz_path}: splits have different image shapes {sorted(shapes)}")
    widths = {lab.shape[1] for lab in labels}
    if len(widths) != 1:
        raise DatasetError(f"{npz_path}: splits have different label widths {sorted(widths)}")
    width = widths.pop()
    multilabel = width > 1 or stem in MEDMNIST_MULTILABEL
    all_labels = np.concatenate(labels)
    if multilabel:
        targets = all_labels.astype(np.float32)
        num_classes = width
    else:
        targets = all_labels[:, 0].astype(np.int64)
        num_classes = MEDMNIST_CLASSES.get(stem, int(targets.max(initial=0)) + 1)

    source = ArraySource(np.concatenate(images), targets)
    bounds = np.cumsum([0, *(len(im) for im in images)])
    parts = {
        s: SplitPart(source, np.arange(bounds[i], bounds[i + 1], dtype=np.int64))
        for i, s in enumerate(SPLIT_KEYS)
    }
    mean, std = resolve_stats(source, parts["train"].indices, mean=None, std=None)
    info = make_info(
        name=npz_path.stem.lower(),
        num_classes=num_classes,
        channels=source.channels,
        image_size=source.image_size,
        multilabel=multilabel,
        mean=mean,
        std=std,
    )
    return DatasetSplits(info, parts, origin=str(npz_path))
