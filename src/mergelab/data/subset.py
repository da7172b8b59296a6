"""Class subsets of a dataset: ``mnist5k[0-4]``, ``digits[5,6,7,8,9]``, ``NAME:PATH[0,2,4]``.

Grammar of the suffix (the last ``[...]`` at the very end of a spec)::

    spec    := NAME [":" PATH] [ "[" classes "]" ]
    classes := item ("," item)*          (spaces around items are ignored)
    item    := INDEX | INDEX "-" INDEX   (a range, first <= last, expands in increasing order)

A subset keeps, in every split, only the items of the listed classes (the full dataset's
split indices, filtered: the same seed gives the same items) and relabels them
``0..k-1`` in the order the classes are listed. ``info.num_classes`` becomes ``k``, the
class names are the full set's in the new order, and ``info.name`` gets the suffix in
canonical form (``digits[5,6,7,8,9]`` -> ``digits[5-9]``), so results, caches and figures
tell subsets apart. The channel mean/std stay the full dataset's train statistics (a model
sees the same normalisation whichever subset it trains on). Multi-label datasets have no
classes to pick and refuse a subset. A PATH ending in ``]`` therefore cannot be given in a
spec (pass its parent folder, or ``root=``).
"""

import hashlib
import re
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from mergelab.data.dataset import DatasetSplits, SplitPart
from mergelab.data.errors import DatasetError
from mergelab.data.sources import Source

_INDEX = re.compile(r"\d+")
_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)")


def split_subset(spec: str) -> tuple[str, str | None]:
    """``"mnist5k[0-4]"`` -> ``("mnist5k", "0-4")``; a spec without a suffix -> (spec, None).

    Only a ``[...]`` at the very end is a suffix; a ``[`` in the name part without the
    closing ``]`` at the end is an error (brackets inside a PATH are left alone).
    """
    text = spec.rstrip()
    if text.endswith("]"):
        start = text.rfind("[")
        if start < 0:
            raise DatasetError(f"dataset {spec!r}: class subset has ']' but no '['")
        return text[:start], text[start + 1 : -1]
    name = text.partition(":")[0]
    if "[" in name or "]" in name:
        raise DatasetError(
            f"dataset {spec!r}: malformed class subset; write NAME[0-4] or NAME:PATH[0,2,4] "
            "(the [...] must end the spec)"
        )
    return spec, None


def parse_classes(text: str, *, spec: str = "") -> tuple[int, ...]:
    """``"0-2, 7"`` -> ``(0, 1, 2, 7)``; empty lists, bad items and repeats are errors."""
    where = f"dataset {spec!r}" if spec else "class subset"
    if not text.strip():
        raise DatasetError(f"{where}: empty class list [] (give e.g. [0-4] or [0,2,4])")
    out: list[int] = []
    seen: set[int] = set()
    for raw in text.split(","):
        item = raw.strip()
        if _INDEX.fullmatch(item):
            values = [int(item)]
        elif m := _RANGE.fullmatch(item):
            first, last = int(m.group(1)), int(m.group(2))
            if first > last:
                raise DatasetError(
                    f"{where}: malformed range {item!r} (first > last; ranges go up, "
                    f"e.g. {last}-{first})"
                )
            values = list(range(first, last + 1))
        else:
            shown = repr(item) if item else "an empty item"
            raise DatasetError(
                f"{where}: malformed class subset item {shown} in [{text}]; "
                "use class indices and ranges like [0-4] or [0,2,4]"
            )
        for v in values:
            if v in seen:
                raise DatasetError(f"{where}: class {v} given twice in [{text}]")
            seen.add(v)
            out.append(v)
    return tuple(out)


def format_classes(classes: Sequence[int]) -> str:
    """Canonical suffix text: runs of 3+ consecutive increasing classes as ``a-b``."""
    parts: list[str] = []
    i = 0
    while i < len(classes):
        j = i
        while j + 1 < len(classes) and classes[j + 1] == classes[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{classes[i]}-{classes[j]}")
        else:
            parts.extend(str(c) for c in classes[i : j + 1])
        i = j + 1
    return ",".join(parts)


def check_classes(
    classes: Sequence[int], *, name: str, num_classes: int, multilabel: bool, spec: str
) -> None:
    """Refuse multi-label sets and class indices outside ``0..num_classes-1``."""
    if multilabel:
        raise DatasetError(
            f"dataset {spec!r}: {name} is multi-label ({num_classes} labels per item); "
            "a class subset [...] needs a single-label dataset"
        )
    bad = [c for c in classes if c >= num_classes]
    if bad:
        raise DatasetError(
            f"dataset {spec!r}: class {bad[0]} out of range: {name} has {num_classes} "
            f"classes (0-{num_classes - 1})"
        )


class RelabelledSource(Source):
    """A source whose targets are remapped to ``0..k-1`` (items of other classes get -1).

    Images, positions and statistics are the wrapped source's; only targets and the
    fingerprint change. Split indices keep pointing at the full dataset's positions.
    """

    def __init__(self, base: Source, classes: Sequence[int]) -> None:
        self.base = base
        self.kept = tuple(int(c) for c in classes)
        targets = np.asarray(base.targets)
        if targets.ndim != 1:
            raise DatasetError("a class subset needs 1-D (single-label) targets")
        top = max(max(self.kept), int(targets.max()) if len(targets) else 0) + 1
        lut = np.full(top, -1, dtype=np.int64)
        lut[list(self.kept)] = np.arange(len(self.kept), dtype=np.int64)
        t = targets.astype(np.int64)
        valid = t >= 0
        self.targets = np.where(valid, lut[np.where(valid, t, 0)], -1)
        self.channels = base.channels
        self._fingerprint: str | None = None

    def image(self, i: int) -> torch.Tensor:
        return self.base.image(i)

    def images(self, idx: Sequence[int]) -> torch.Tensor | list[torch.Tensor]:
        return self.base.images(idx)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(self.base.fingerprint().encode())
            h.update(f"\nclasses:{','.join(map(str, self.kept))}".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def channel_stats(
        self, idx: np.ndarray, *, sample: int | None = None, seed: int = 0
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.base.channel_stats(idx, sample=sample, seed=seed)


def subset_classes(
    splits: DatasetSplits, classes: Sequence[int], *, spec: str = ""
) -> DatasetSplits:
    """``splits`` restricted to ``classes``, relabelled ``0..k-1`` in the order given.

    Each split keeps the full split's indices whose class is listed (no re-splitting);
    mean/std stay the full dataset's train statistics.
    """
    info = splits.info
    spec = spec or info.name
    classes = tuple(int(c) for c in classes)
    if not classes:
        raise DatasetError(f"dataset {spec!r}: empty class list")
    if len(set(classes)) != len(classes):
        raise DatasetError(f"dataset {spec!r}: a class is given twice in {list(classes)}")
    if any(c < 0 for c in classes):
        raise DatasetError(f"dataset {spec!r}: class indices must be >= 0, got {list(classes)}")
    check_classes(
        classes,
        name=info.name,
        num_classes=info.num_classes,
        multilabel=info.multilabel,
        spec=spec,
    )
    wrapped: dict[int, RelabelledSource] = {}
    parts: dict[str, SplitPart] = {}
    for split_name, part in splits._parts.items():
        src = wrapped.get(id(part.source))
        if src is None:
            src = wrapped[id(part.source)] = RelabelledSource(part.source, classes)
        keep = src.targets[part.indices] >= 0
        parts[split_name] = SplitPart(src, part.indices[keep])
    if len(parts["train"].indices) == 0:
        raise DatasetError(f"dataset {spec!r}: no train items of classes {list(classes)}")
    suffix = format_classes(classes)
    new_info = replace(info, name=f"{info.name}[{suffix}]", num_classes=len(classes))
    names = tuple(splits.classes[c] if c < len(splits.classes) else str(c) for c in classes)
    origin = f"{splits.origin} [classes {suffix}]" if splits.origin else f"[classes {suffix}]"
    return DatasetSplits(new_info, parts, classes=names, origin=origin)
