"""On-disk store of a model's outputs on one split: evaluate once, combine many times.

One ``.npz`` per (model content, split + transform, architecture/head) holds ``logits``,
``features`` and ``targets``. Files are written to a temporary name in the same folder and
renamed into place, so a crash or a concurrent run never leaves a truncated entry under a
real name; an unreadable or mismatched entry is treated as missing and rewritten.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mergelab.atomic import atomic_write

__all__ = ["OutputCache", "Outputs", "atomic_write_bytes", "default_cache_dir"]

CACHE_VERSION = 1


@dataclass(frozen=True)
class Outputs:
    """One model's outputs on one split, in item order."""

    logits: np.ndarray  # float32 (N, C)
    features: np.ndarray  # float32 (N, D): what the final Linear receives
    targets: np.ndarray  # int64 (N,) or float32 multi-hot (N, C)
    split: str
    key: str  # cache key: names model content + split + transform + architecture

    def __post_init__(self) -> None:
        n = len(self.targets)
        if self.logits.ndim != 2 or len(self.logits) != n or len(self.features) != n:
            raise ValueError(
                f"outputs of {self.key}: logits {self.logits.shape}, features "
                f"{self.features.shape} and {n} targets do not line up"
            )


def default_cache_dir() -> Path:
    """``$MERGELAB_CACHE``, else ``$XDG_CACHE_HOME/mergelab/outputs`` (``~/.cache`` default)."""
    env = os.environ.get("MERGELAB_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mergelab" / "outputs"


def atomic_write_bytes(path: str | os.PathLike[str], writer: Any, *, fsync: bool = True) -> Path:
    """Create ``path`` atomically (:func:`mergelab.atomic.atomic_write`)."""
    return atomic_write(path, writer, fsync=fsync)


class OutputCache:
    """Outputs keyed by a string; kept in memory, and on disk under ``root`` when given."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self._memory: dict[str, Outputs] = {}
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path | None:
        """Where ``key`` lives on disk (None for a memory-only cache)."""
        return None if self.root is None else self.root / f"{key}.npz"

    def get(self, key: str, targets: np.ndarray | None = None) -> Outputs | None:
        """Stored outputs for ``key``; None if absent, unreadable, or (when ``targets`` is
        given) stored for different targets."""
        out = self._memory.get(key)
        if out is None:
            out = self._read(key)
        if out is not None and targets is not None and not _same(out.targets, targets):
            out = None
        if out is None:
            self.misses += 1
            return None
        self._memory[key] = out
        self.hits += 1
        return out

    def put(
        self, outputs: Outputs, meta: dict[str, Any] | None = None, *, memory: bool = True
    ) -> None:
        """Store ``outputs`` under ``outputs.key`` (atomically on disk). ``memory=False``
        keeps no in-memory copy when there is a disk copy (one-off models such as soups)."""
        path = self.path(outputs.key)
        if memory or path is None:
            self._memory[outputs.key] = outputs
        if path is None:
            return
        info = json.dumps({"version": CACHE_VERSION, "split": outputs.split, **(meta or {})})

        def write(fh: Any) -> None:
            np.savez(
                fh,
                logits=outputs.logits,
                features=outputs.features,
                targets=outputs.targets,
                meta=np.array(info),
            )

        # No fsync: after a power loss a damaged entry fails to load and is recomputed.
        atomic_write_bytes(path, write, fsync=False)

    def _read(self, key: str) -> Outputs | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("version") != CACHE_VERSION:
                    return None
                return Outputs(
                    logits=z["logits"],
                    features=z["features"],
                    targets=z["targets"],
                    split=str(meta["split"]),
                    key=key,
                )
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # a damaged entry: evaluate again and overwrite it

    def clear_memory(self) -> None:
        """Forget in-memory entries (the disk copies stay)."""
        self._memory.clear()


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == np.shape(b) and bool(np.array_equal(a, np.asarray(b)))
