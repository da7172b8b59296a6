"""CelebA (aligned) with its official partition: one attribute as a binary label.

Layout: ``img_align_celeba/*.jpg`` (also the doubly nested Kaggle folder),
``list_attr_celeba.txt`` (count, the 40 attribute names, then ``file v1..v40`` in
1/-1) and ``list_eval_partition.txt`` (``file 0|1|2`` for train/val/test).
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mergelab.data._paths import find_layout_dir
from mergelab.data.dataset import DatasetSplits, SplitPart, make_info, resolve_stats
from mergelab.data.errors import DatasetError, DatasetNotFoundError
from mergelab.data.imagefolder import DEFAULT_STATS_SAMPLE
from mergelab.data.sources import FileSource, image_file_size

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"
ALL_ATTRIBUTES = "all"


def read_attributes(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Attribute names and, per file, its 1/-1 values (as int8)."""
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise DatasetError(f"{path}: expected a count line and an attribute-name line")
    names = lines[1].split()
    rows: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(lines[2:], 3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names) + 1:
            raise DatasetError(
                f"{path}:{lineno}: expected filename and {len(names)} values, "
                f"got {len(fields)} fields"
            )
        try:
            vals = np.asarray([int(v) for v in fields[1:]], dtype=np.int8)
        except ValueError as err:
            raise DatasetError(f"{path}:{lineno}: attribute values must be 1/-1") from err
        rows[fields[0]] = vals
    try:
        expected = int(lines[0].split()[0])
    except (ValueError, IndexError):
        raise DatasetError(f"{path}: first line must be the image count") from None
    if expected != len(rows):
        raise DatasetError(f"{path}: header says {expected} images, file lists {len(rows)}")
    return names, rows


def read_partition(path: Path) -> list[tuple[str, int]]:
    """(filename, 0|1|2) pairs in file order."""
    out: list[tuple[str, int]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DatasetError(f"{path}:{lineno}: expected 'filename 0|1|2', got {line!r}")
        out.append((fields[0], int(fields[1])))
    return out


def _image_dir(root: Path) -> Path:
    d = root / IMAGE_DIR
    nested = d / IMAGE_DIR  # the Kaggle archive nests the folder once more
    return nested if nested.is_dir() else d


def load_celeba(
    path: str | Path,
    *,
    seed: int = 0,
    attribute: str = "Smiling",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    stats_sample: int | None = DEFAULT_STATS_SAMPLE,
) -> DatasetSplits:
    """CelebA, official partition; target is ``attribute`` == 1 (2 classes).

    ``attribute="all"`` gives all 40 attributes as a multi-label target instead.
    """
    root = find_layout_dir(
        Path(path),
        dataset="celeba",
        folder_names=("celeba",),
        required=(IMAGE_DIR, ATTR_FILE, PARTITION_FILE),
    )
    names, attrs = read_attributes(root / ATTR_FILE)
    multilabel = attribute == ALL_ATTRIBUTES
    if not multilabel and attribute not in names:
        raise DatasetError(
            f"celeba: unknown attribute {attribute!r}; choose one of: {', '.join(names)} "
            f"(or {ALL_ATTRIBUTES!r})"
        )
    col = None if multilabel else names.index(attribute)
    img_dir = _image_dir(root)
    present = {p.name for p in img_dir.iterdir()}
    paths: list[Path] = []
    targets: list[np.ndarray | int] = []
    split_of: list[int] = []
    for fname, part in read_partition(root / PARTITION_FILE):
        if fname not in attrs:
            raise DatasetError(f"celeba: {fname} is in {PARTITION_FILE} but not in {ATTR_FILE}")
        if fname not in present:
            raise DatasetNotFoundError(f"celeba: missing image {img_dir / fname}")
        vals = attrs[fname]
        paths.append(img_dir / fname)
        targets.append((vals > 0).astype(np.float32) if col is None else int(vals[col] > 0))
        split_of.append(part)
    if not paths:
        raise DatasetError(f"celeba: {PARTITION_FILE} lists no images")
    target_arr = (
        np.stack(targets).astype(np.float32) if multilabel else np.asarray(targets, np.int64)
    )
    which = np.asarray(split_of)
    parts_idx = {
        s: np.flatnonzero(which == i).astype(np.int64)
        for i, s in enumerate(("train", "val", "test"))
    }
    source = FileSource(root, paths, target_arr, channels=3)
    train = parts_idx["train"]
    if len(train) == 0:
        raise DatasetError(f"celeba: {PARTITION_FILE} has no train (0) images")
    m, s = resolve_stats(source, train, mean=mean, std=std, sample=stats_sample, seed=seed)
    info = make_info(
        name="celeba-all" if multilabel else f"celeba-{attribute}",
        num_classes=len(names) if multilabel else 2,
        channels=3,
        image_size=image_file_size(paths[int(train[0])]),
        multilabel=multilabel,
        mean=m,
        std=s,
    )
    classes = names if multilabel else [f"not {attribute}", attribute]
    parts = {k: SplitPart(source, v) for k, v in parts_idx.items()}
    return DatasetSplits(info, parts, classes=classes, origin=str(root))
