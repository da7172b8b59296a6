"""On-disk store of a model's outputs on one split: evaluate once, combine many times.

One ``.npz`` per (model content, split + transform, architecture/head) holds ``logits``,
``features`` and ``targets``, and a ``meta`` record with the sha256 of those arrays. Files
are written atomically (temp name, then rename). On use an entry is read as data only
(:func:`mergelab.io.npz.read_npz`) and checked against its hash and shapes; one that fails
(truncated, edited, forged) is reported on stderr, removed and computed again. A cache
folder that cannot be written (read-only, full disk) is reported once; the run goes on
without writing to it.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mergelab.atomic import atomic_write
from mergelab.errors import MergelabError
from mergelab.hashing import arrays_sha256, discard

__all__ = ["OutputCache", "Outputs", "cache_root", "default_cache_dir"]

# 2: entries carry the sha256 of their arrays (version 1 entries are recomputed silently).
CACHE_VERSION = 2
_ARRAYS = ("logits", "features", "targets")


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
        if (
            self.logits.ndim != 2
            or self.features.ndim != 2
            or len(self.logits) != n
            or len(self.features) != n
        ):
            raise ValueError(
                f"outputs of {self.key}: logits {self.logits.shape}, features "
                f"{self.features.shape} and {n} targets do not line up"
            )


def cache_root() -> Path:
    """Where mergelab caches live: ``$MERGELAB_CACHE``, else ``$XDG_CACHE_HOME/mergelab``
    (``~/.cache/mergelab``). Model outputs go in ``outputs/``, trained runs in
    ``ingredients/`` under it."""
    env = os.environ.get("MERGELAB_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mergelab"


def default_cache_dir() -> Path:
    """The cache of model outputs: ``cache_root() / "outputs"``."""
    return cache_root() / "outputs"


class OutputCache:
    """Outputs keyed by a string; kept in memory, and on disk under ``root`` when given."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self._memory: dict[str, Outputs] = {}
        self.hits = 0
        self.misses = 0
        self.writable = True  # False once a write failed: the disk copy is skipped from then on

    def path(self, key: str) -> Path | None:
        """Where ``key`` lives on disk (None for a memory-only cache)."""
        return None if self.root is None else self.root / f"{key}.npz"

    def get(
        self, key: str, targets: np.ndarray | None = None, classes: int | None = None
    ) -> Outputs | None:
        """Stored outputs for ``key``; None if absent, or after reporting and removing an
        entry that is damaged, fails its hash, or does not fit ``targets`` / ``classes``
        (the number of logit columns)."""
        out = self._memory.get(key)
        if out is None:
            out = self._read(key, targets, classes)
        elif targets is not None and not _same(out.targets, targets):
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
        if path is None or not self.writable:
            return
        arrays = {name: np.asarray(getattr(outputs, name)) for name in _ARRAYS}
        info = {
            **(meta or {}),
            "version": CACHE_VERSION,
            "split": outputs.split,
            "sha256": arrays_sha256(arrays),
        }
        text = np.array(json.dumps(info, default=str))
        try:
            # No fsync: after a power loss a damaged entry fails its check and is recomputed.
            atomic_write(path, lambda fh: np.savez(fh, meta=text, **arrays), fsync=False)
        except (OSError, MergelabError) as exc:
            self.writable = False
            reason = getattr(exc.__cause__, "strerror", None) or getattr(exc, "strerror", None)
            print(
                f"mergelab: warning: cannot write to the output cache {self.root} "
                f"({reason or exc}); going on without caching outputs on disk",
                file=sys.stderr,
            )

    def _read(self, key: str, targets: np.ndarray | None, classes: int | None) -> Outputs | None:
        path = self.path(key)
        if path is None or not path.exists():
            return None
        from mergelab.io.npz import read_npz

        try:
            z = read_npz(path, (*_ARRAYS, "meta"))
            meta = json.loads(str(z["meta"][()])) if z["meta"].ndim == 0 else None
        except (MergelabError, ValueError) as exc:
            discard(path, f"damaged cache entry ({exc})")
            return None
        if not isinstance(meta, dict):
            discard(path, "cache entry without a readable meta record")
            return None
        if meta.get("version") != CACHE_VERSION:
            return None  # an older format: computed again and overwritten
        arrays = {name: z[name] for name in _ARRAYS}
        if meta.get("sha256") != arrays_sha256(arrays):
            discard(path, "cache entry does not match its sha256 (edited or damaged)")
            return None
        logits = arrays["logits"]
        try:
            out = Outputs(**arrays, split=str(meta.get("split")), key=key)
        except ValueError as exc:
            discard(path, f"misshaped cache entry ({exc})")
            return None
        if classes is not None and logits.shape[1] != classes:
            discard(path, f"cache entry has {logits.shape[1]} logit columns, expected {classes}")
            return None
        if targets is not None and not _same(out.targets, targets):
            discard(path, "cache entry holds other targets than the split")
            return None
        return out

    def clear_memory(self) -> None:
        """Forget in-memory entries (the disk copies stay)."""
        self._memory.clear()


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == np.shape(b) and bool(np.array_equal(a, np.asarray(b)))
