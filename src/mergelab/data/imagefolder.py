"""Image folders: ``root/{train,val,test}/<class>/*.png|jpg`` and TinyImageNet's layout.

Pixels are decoded lazily (PIL per item); only paths and labels are held in memory.
Mean/std come from a seeded sample of train images (``stats_sample``) unless given.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mergelab.checks import regular_file
from mergelab.data._paths import find_layout_dir
from mergelab.data.dataset import DatasetSplits, SplitPart, make_info, resolve_stats
from mergelab.data.errors import DatasetError, DatasetNotFoundError
from mergelab.data.sources import FileSource, image_file_size, image_mode_channels
from mergelab.data.splits import carve_split

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
DEFAULT_STATS_SAMPLE = 256


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def scan_class_folders(
    folder: Path, classes: Sequence[str] | None = None
) -> tuple[list[Path], list[int], list[str]]:
    """Images under ``folder/<class>/`` (searched recursively), sorted, with class ids.

    ``classes`` fixes the class order (from train); a class folder not in it, or one with
    no images, is an error.
    """
    if not folder.is_dir():
        raise DatasetNotFoundError(f"folder missing: {folder}")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = found
    else:
        unknown = [c for c in found if c not in classes]
        if unknown:
            raise DatasetError(f"{folder}: class folder(s) not in train/: {', '.join(unknown[:5])}")
    if not classes:
        raise DatasetError(f"{folder}: no class folders (expected {folder}/<class>/<image>)")
    index = {c: i for i, c in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for c in found:
        files = sorted(p for p in (folder / c).rglob("*") if is_image(p))
        if not files:  # as torchvision's ImageFolder: an empty class is an error, not a class
            raise DatasetError(
                f"{folder / c}: class folder holds no images (extensions "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder"
            )
        paths.extend(files)
        labels.extend([index[c]] * len(files))
    if not paths:
        raise DatasetError(f"{folder}: no images with extensions {sorted(IMAGE_EXTENSIONS)}")
    return paths, labels, list(classes)


def _assemble(
    name: str,
    root: Path,
    groups: dict[str, tuple[list[Path], list[int]]],
    classes: list[str],
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    channels: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    stats_sample: int | None,
) -> DatasetSplits:
    """One FileSource over all images; carve val (and test) from train where absent."""
    paths: list[Path] = []
    labels: list[int] = []
    ranges: dict[str, np.ndarray] = {}
    for split, (p, lab) in groups.items():
        ranges[split] = np.arange(len(paths), len(paths) + len(p), dtype=np.int64)
        paths.extend(p)
        labels.extend(lab)
    targets = np.asarray(labels, dtype=np.int64)
    train = ranges["train"]
    if len(train) == 0:
        raise DatasetError(f"{name}: no train images found under {root}")
    first = paths[int(train[0])]  # decides native size/mode, whatever the carve picks
    if "test" not in ranges:
        train, ranges["test"] = carve_split(train, test_fraction, seed, labels=targets[train])
    if "val" not in ranges:
        train, ranges["val"] = carve_split(train, val_fraction, seed, labels=targets[train])
    ranges["train"] = train
    native_channels = channels if channels is not None else image_mode_channels(first)
    source = FileSource(root, paths, targets, channels=native_channels)
    m, s = resolve_stats(source, train, mean=mean, std=std, sample=stats_sample, seed=seed)
    info = make_info(
        name=name,
        num_classes=len(classes),
        channels=native_channels,
        image_size=image_file_size(first),
        multilabel=False,
        mean=m,
        std=s,
    )
    parts = {k: SplitPart(source, ranges[k]) for k in ("train", "val", "test")}
    return DatasetSplits(info, parts, classes=classes, origin=str(root))


def load_imagefolder(
    path: str | Path,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.15,
    channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    stats_sample: int | None = DEFAULT_STATS_SAMPLE,
) -> DatasetSplits:
    """``root/train/<class>/*`` plus ``root/val/`` and/or ``root/test/``.

    With both held-out folders they are val and test. With one of them, it is the
    test set and val is carved from train (seeded, stratified). With neither, val and
    test are both carved. ``channels`` overrides the native channels (else from the
    first train image's mode); images of other sizes are resized by the adapter.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetNotFoundError(f"imagefolder: path does not exist: {root}")
    if not (root / "train").is_dir():
        raise DatasetNotFoundError(f"imagefolder: missing train/ folder in {root}")
    train_paths, train_labels, classes = scan_class_folders(root / "train")
    groups: dict[str, tuple[list[Path], list[int]]] = {"train": (train_paths, train_labels)}
    held = [s for s in ("val", "test") if (root / s).is_dir()]
    for s in held:
        p, lab, _ = scan_class_folders(root / s, classes)
        groups["test" if len(held) == 1 else s] = (p, lab)
    return _assemble(
        root.resolve().name or "imagefolder",
        root,
        groups,
        classes,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        channels=channels,
        mean=mean,
        std=std,
        stats_sample=stats_sample,
    )


def load_tinyimagenet(
    path: str | Path,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    stats_sample: int | None = DEFAULT_STATS_SAMPLE,
) -> DatasetSplits:
    """TinyImageNet-200 (``tiny-imagenet-200/`` or its parent).

    Classes are the sorted wnids of ``wnids.txt``. The labelled ``val/`` becomes test
    (the official test has no labels) and val is carved from train, seeded, stratified.
    """
    root = find_layout_dir(
        Path(path),
        dataset="tinyimagenet",
        folder_names=("tiny-imagenet-200",),
        required=("wnids.txt", "train", "val"),
    )
    regular_file(root / "wnids.txt", "expected a text file of wnids")
    wnids = sorted({w.strip() for w in (root / "wnids.txt").read_text().splitlines() if w.strip()})
    if not wnids:
        raise DatasetError(f"{root / 'wnids.txt'}: no wnids")
    index = {w: i for i, w in enumerate(wnids)}
    train_paths: list[Path] = []
    train_labels: list[int] = []
    for w in wnids:
        img_dir = root / "train" / w / "images"
        if not img_dir.is_dir():
            raise DatasetNotFoundError(f"tinyimagenet: missing folder {img_dir}")
        files = sorted(p for p in img_dir.iterdir() if is_image(p))
        train_paths.extend(files)
        train_labels.extend([index[w]] * len(files))

    ann = root / "val" / "val_annotations.txt"
    val_dir = root / "val" / "images"
    if not ann.exists():
        raise DatasetNotFoundError(f"tinyimagenet: missing {ann}")
    regular_file(ann, "expected a text file of val annotations")
    if not val_dir.is_dir():
        raise DatasetNotFoundError(f"tinyimagenet: missing folder {val_dir}")
    present = {p.name for p in val_dir.iterdir()}
    test_paths: list[Path] = []
    test_labels: list[int] = []
    for lineno, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DatasetError(f"{ann}:{lineno}: expected 'filename<TAB>wnid...', got {line!r}")
        fname, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise DatasetError(f"{ann}:{lineno}: wnid {wnid} not in wnids.txt")
        if fname not in present:
            raise DatasetNotFoundError(f"tinyimagenet: missing val image {val_dir / fname}")
        test_paths.append(val_dir / fname)
        test_labels.append(index[wnid])
    order = np.argsort([p.name for p in test_paths], kind="stable")
    test_paths = [test_paths[i] for i in order]
    test_labels = [test_labels[i] for i in order]
    groups = {"train": (train_paths, train_labels), "test": (test_paths, test_labels)}
    return _assemble(
        "tinyimagenet",
        root,
        groups,
        wnids,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=0.0,
        channels=3,
        mean=mean,
        std=std,
        stats_sample=stats_sample,
    )
