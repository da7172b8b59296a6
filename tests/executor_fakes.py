"""Units for the executor tests: importable by name (worker processes) and registered by
value for Ray, whose workers do not see the tests folder."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from mergelab.errors import MergelabError


def _attempt(marker_dir: str, name: str) -> int:
    """This call's attempt number for ``name`` (1, 2, ...), counted in files, so it holds
    across processes and machines that share ``marker_dir``."""
    folder = Path(marker_dir)
    n = len(list(folder.glob(f"{name}.*"))) + 1
    (folder / f"{name}.{n}").touch()
    return n


def flaky(marker_dir: str, name: str, fails: int) -> str:
    """Raise RuntimeError on the first ``fails`` attempts, then return ``name``."""
    n = _attempt(marker_dir, name)
    if n <= fails:
        raise RuntimeError(f"{name} flaked on attempt {n}")
    return name


def crash_once(marker_dir: str, name: str) -> str:
    """Kill the worker process on the first attempt (a segfault, the OOM killer)."""
    if _attempt(marker_dir, name) == 1:
        os._exit(3)
    return name


def crash_once_beside(marker_dir: str, name: str, beside: str) -> str:
    """:func:`crash_once`, but only once unit ``beside`` runs (its marker exists): the
    worker dies with both in flight, however long the workers took to start."""
    deadline = time.monotonic() + 60
    while not (Path(marker_dir) / f"{beside}.started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return crash_once(marker_dir, name)


def started(marker_dir: str, name: str, seconds: float) -> tuple[str, None]:
    """Say it runs (a marker file), then take ``seconds``."""
    (Path(marker_dir) / f"{name}.started").touch()
    time.sleep(seconds)
    return name, None


def bad_input(marker_dir: str, name: str) -> str:
    _attempt(marker_dir, name)
    raise MergelabError(f"{name}: bad input")


def where(name: str, seconds: float = 0.0, device: str | None = None) -> tuple[str, str | None]:
    time.sleep(seconds)
    return name, device


def which_gpu(name: str, seconds: float = 0.0, device: str | None = None) -> tuple:
    """(name, device, the GPUs this process sees)."""
    time.sleep(seconds)
    return name, device, os.environ.get("CUDA_VISIBLE_DEVICES")


def crash_always(marker_dir: str, name: str) -> str:
    """Kill the worker process on every attempt."""
    _attempt(marker_dir, name)
    os._exit(3)


@dataclass
class FlakyTraining:
    """Stands in for ``mergelab.train.pool._train_one``: the run labelled ``label`` raises
    on its first ``fails`` attempts, every run then trains as usual."""

    label: str
    marker_dir: str
    fails: int

    def __call__(self, config, cache_dir, device, desc, progress=False):
        from mergelab.train.trainer import train_model

        if desc == self.label and _attempt(self.marker_dir, "train") <= self.fails:
            raise RuntimeError(f"{desc}: the node went away")
        path = train_model(
            config, cache_dir=cache_dir, device=device, progress=progress, threads=None, desc=desc
        )
        return str(path)
