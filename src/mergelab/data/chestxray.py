"""NIH ChestX-ray14: 14 findings as a multi-hot target, with the official test list.

Layout: ``Data_Entry_2017.csv`` (``Image Index``, ``Finding Labels`` joined by ``|``,
``No Finding`` for none, ``Patient ID``), images in ``images/`` or
``images_*/images/``, and ``train_val_list.txt`` / ``test_list.txt``. Val is carved
from train_val by patient (no patient in both), seeded.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mergelab.data._paths import find_layout_dir
from mergelab.data.dataset import DatasetSplits, SplitPart, make_info, resolve_stats
from mergelab.data.errors import DatasetError, DatasetNotFoundError
from mergelab.data.imagefolder import DEFAULT_STATS_SAMPLE
from mergelab.data.sources import FileSource, image_file_size
from mergelab.data.splits import carve_split

CHESTXRAY14_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
CSV_NAMES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
TRAIN_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"


def multi_hot(findings: str) -> np.ndarray:
    """``"Effusion|Mass"`` -> float32 vector over CHESTXRAY14_LABELS."""
    out = np.zeros(len(CHESTXRAY14_LABELS), dtype=np.float32)
    for label in (x.strip() for x in str(findings).split("|")):
        if not label or label == NO_FINDING:
            continue
        try:
            out[CHESTXRAY14_LABELS.index(label)] = 1.0
        except ValueError:
            raise DatasetError(
                f"chestxray14: unknown finding {label!r}; known: {', '.join(CHESTXRAY14_LABELS)}"
            ) from None
    return out


def _image_index(root: Path) -> dict[str, Path]:
    """filename -> path over ``images/`` and ``images_*/images/`` (and ``images_*/``)."""
    dirs = [root / "images"]
    for d in sorted(root.glob("images_*")):
        dirs.append(d / "images" if (d / "images").is_dir() else d)
    index: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for p in d.iterdir():
                index.setdefault(p.name, p)
    if not index:
        raise DatasetNotFoundError(
            f"chestxray14: no images/ or images_*/images/ folder with files in {root}"
        )
    return index


def _read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_chestxray14(
    path: str | Path,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    stats_sample: int | None = DEFAULT_STATS_SAMPLE,
) -> DatasetSplits:
    """ChestX-ray14 with the official train_val/test lists; grey images, 14 labels."""
    import pandas as pd

    p = Path(path).expanduser()
    csv_name = next((n for n in CSV_NAMES if (p / n).is_file()), CSV_NAMES[0])
    root = find_layout_dir(
        p, dataset="chestxray14", folder_names=(), required=(csv_name, TRAIN_LIST, TEST_LIST)
    )
    try:
        table = pd.read_csv(root / csv_name, dtype=str)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{root / csv_name}: cannot read CSV ({err})") from err
    for col in ("Image Index", "Finding Labels"):
        if col not in table.columns:
            raise DatasetError(f"{root / csv_name}: column {col!r} missing")
    findings = dict(zip(table["Image Index"], table["Finding Labels"], strict=True))
    patients = (
        dict(zip(table["Image Index"], table["Patient ID"], strict=True))
        if "Patient ID" in table.columns
        else None
    )
    images = _image_index(root)

    paths: list[Path] = []
    targets: list[np.ndarray] = []
    ranges: dict[str, np.ndarray] = {}
    for split, list_name in (("train_val", TRAIN_LIST), ("test", TEST_LIST)):
        names = _read_list(root / list_name)
        start = len(paths)
        for name in names:
            if name not in findings:
                raise DatasetError(f"chestxray14: {name} (in {list_name}) not in {csv_name}")
            if name not in images:
                raise DatasetNotFoundError(f"chestxray14: missing image {name} (in {list_name})")
            paths.append(images[name])
            targets.append(multi_hot(findings[name]))
        ranges[split] = np.arange(start, len(paths), dtype=np.int64)
    if len(ranges["train_val"]) < 2:
        raise DatasetError(f"chestxray14: {TRAIN_LIST} needs at least 2 images")
    pool = ranges["train_val"]
    groups = [patients[paths[i].name] for i in pool] if patients is not None else None
    train, val = carve_split(pool, val_fraction, seed, groups=groups)
    source = FileSource(root, paths, np.stack(targets), channels=1)
    m, s = resolve_stats(source, train, mean=mean, std=std, sample=stats_sample, seed=seed)
    info = make_info(
        name="chestxray14",
        num_classes=len(CHESTXRAY14_LABELS),
        channels=1,
        image_size=image_file_size(paths[int(train[0])]),
        multilabel=True,
        mean=m,
        std=s,
    )
    parts = {
        "train": SplitPart(source, train),
        "val": SplitPart(source, val),
        "test": SplitPart(source, ranges["test"]),
    }
    return DatasetSplits(info, parts, classes=CHESTXRAY14_LABELS, origin=str(root))
