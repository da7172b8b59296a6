"""The outputs of one checkpoint as a unit of work, so an executor can compute them anywhere.

A unit runs the checkpoint once per split and writes the outputs into the study's output
cache, where every later :meth:`Evaluator.outputs` call finds them; the unit returns
nothing else. A worker process keeps the datasets and evaluators it built, so a worker
that runs many units loads each dataset once.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mergelab.data import ImageSpec
from mergelab.evaluate.evaluator import Evaluator
from mergelab.evaluate.source import ModelSource
from mergelab.executor import Resources, Unit

__all__ = ["OutputsWanted", "output_units"]


@dataclass(frozen=True)
class OutputsWanted:
    """Outputs a study will read: ``checkpoints`` of ``arch`` on ``splits`` of ``dataset``
    (seen through ``image``, None: the dataset's own input)."""

    dataset: str
    arch: str
    image: ImageSpec | None
    checkpoints: tuple[Path, ...]
    splits: tuple[str, ...] = ("val", "test")


@functools.lru_cache(maxsize=8)
def _evaluator(
    dataset: str,
    split_seed: int,
    arch: str,
    image: ImageSpec | None,
    batch_size: int,
    cache_dir: str,
    device: str | None,
) -> Evaluator:
    """The evaluator a worker keeps for these arguments (its dataset loaded once)."""
    from mergelab.data import load_dataset

    return Evaluator(
        load_dataset(dataset, seed=split_seed),
        arch=arch,
        spec=image,
        batch_size=batch_size,
        cache_dir=cache_dir,
        device=device,
        progress=False,
    )


def _outputs_of(
    *,
    dataset: str,
    split_seed: int,
    arch: str,
    image: ImageSpec | None,
    batch_size: int,
    cache_dir: str,
    checkpoint: str,
    splits: Sequence[str],
    device: str | None = None,
) -> int:
    """Evaluate ``checkpoint`` on ``splits`` into the cache; the number of passes run."""
    ev = _evaluator(dataset, split_seed, arch, image, batch_size, cache_dir, device)
    before = ev.counter.passes()
    for split in splits:
        ev.outputs(ModelSource.of(checkpoint), split)
    ev.cache.clear_memory()
    return ev.counter.passes() - before


def output_units(
    wanted: Sequence[OutputsWanted],
    *,
    split_seed: int,
    batch_size: int,
    cache_dir: Path,
    device: str | None,
    gpus: float = 0.0,
    cached: Callable[[OutputsWanted, Path], bool] | None = None,
) -> list[Unit]:
    """One unit per (evaluator, checkpoint) of ``wanted`` whose outputs ``cached`` (called
    in this process) does not already have; a checkpoint asked for twice is one unit."""
    units: dict[str, Unit] = {}
    for want in wanted:
        for path in want.checkpoints:
            if cached is not None and cached(want, path):
                continue
            ident = [want.dataset, split_seed, want.arch, repr(want.image), str(path)]
            ident.append(list(want.splits))
            key = "outputs-" + hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:32]
            seen = f" as {want.image.channels}x{want.image.size}px" if want.image else ""
            units[key] = Unit(
                key=key,
                label=f"outputs of {path.stem[:12]} ({want.arch} on {want.dataset}{seen})",
                fn=_outputs_of,
                kwargs={
                    "dataset": want.dataset,
                    "split_seed": split_seed,
                    "arch": want.arch,
                    "image": want.image,
                    "batch_size": batch_size,
                    "cache_dir": str(cache_dir),
                    "checkpoint": str(path),
                    "splits": tuple(want.splits),
                    "device": device,
                },
                resources=Resources(cpus=1, gpus=gpus),
                kind="evaluate",
            )
    return list(units.values())
