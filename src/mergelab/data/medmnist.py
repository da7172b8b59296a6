"""MedMNIST 2D ``.npz`` files with their official train/val/test splits.

Each file holds ``{train,val,test}_images`` (uint8 NxHxW grey or NxHxWx3 RGB) and
``{train,val,test}_labels`` (Nx1 class ids, or NxL 0/1 for multi-label chestmnist).
"""

from pathlib import Path

import numpy as np

from mergelab.data.dataset import DatasetSplits, SplitPart, make_info, resolve_stats
from mergelab.data.errors import DatasetError, DatasetNotFoundError
from mergelab.data.sources import ArraySource

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
    if p.is_file():
        return p
    if not p.exists():
        raise DatasetNotFoundError(f"medmnist: path does not exist: {p}")
    if flavour is not None:
        exact = p / f"{flavour}.npz"
        if exact.is_file():
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


def _flavour_of(path: Path) -> str:
    return path.stem.lower().split("_")[0]


def load_medmnist(path: str | Path, *, flavour: str | None = None, seed: int = 0) -> DatasetSplits:
    """One MedMNIST npz; splits are the file's own (``seed`` does not change them)."""
    npz_path = resolve_npz(path, flavour)
    stem = _flavour_of(npz_path)
    try:
        npz = np.load(npz_path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{npz_path}: not a readable MedMNIST npz ({err})") from err
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DatasetError(f"{npz_path}: expected an .npz archive of named arrays")
    with npz:
        wanted = [f"{s}_{k}" for s in SPLIT_KEYS for k in ("images", "labels")]
        missing = [k for k in wanted if k not in npz.files]
        if missing:
            raise DatasetError(
                f"{npz_path}: missing key(s) {', '.join(missing)} (has {sorted(npz.files)})"
            )
        try:
            arrays = {k: npz[k] for k in wanted}
        except ValueError as err:  # object arrays would need pickle: refuse
            raise DatasetError(f"{npz_path}: cannot read arrays ({err})") from err

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
        if targets.min() < 0:
            raise DatasetError(f"{npz_path}: negative class label {int(targets.min())}")
        num_classes = max(MEDMNIST_CLASSES.get(stem, 0), int(targets.max()) + 1)

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
