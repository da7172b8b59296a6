"""Content hashes, in one place: of files, of tensors, of arrays, of whole checkpoints.

Every cache mergelab keeps is named or checked by one of these, so a cached file that was
edited, truncated or forged is noticed on use (:func:`discard` says so on stderr and removes
it, and the caller computes it again) instead of changing results without a word.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mergelab.checks import regular_file
from mergelab.errors import MergeError

if TYPE_CHECKING:
    from mergelab.io.checkpoint import Checkpoint

__all__ = [
    "arrays_sha256",
    "checkpoint_sha256",
    "discard",
    "file_sha256",
    "state_dict_sha256",
]

_CHUNK = 1 << 22


def _hash_file_into(h: Any, path: Path) -> None:
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
    h = hashlib.sha256()
    _hash_file_into(h, Path(path))
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (remembered per path, size, mtime and inode, so a big
    checkpoint is read once per process); for a folder (a Hugging Face model), of every
    file in it with its relative path, in sorted order."""
    p = Path(path).expanduser()
    if not p.exists():
        raise MergeError(f"{p}: no such file or folder")
    regular_file(p, "a checkpoint must be a regular file or a folder")
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(f.relative_to(p).as_posix().encode() + b"\0")
            _hash_file_into(h, f)
        return h.hexdigest()
    st = p.stat()
    return _file_digest(str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def _tensor_bytes(t: Any) -> memoryview:
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    elif t.dtype.itemsize == 1 and t.dtype not in (torch.uint8, torch.int8, torch.bool):
        t = t.view(torch.uint8)  # float8 kinds: hash the raw bytes
    return memoryview(np.ascontiguousarray(t.numpy()).reshape(-1).view(np.uint8))


def state_dict_sha256(state_dict: Mapping[str, Any]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted name order."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        h.update(f"{name}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        h.update(_tensor_bytes(value))
    return h.hexdigest()


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over (name, dtype, shape, bytes) of NumPy arrays, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(memoryview(a.reshape(-1).view(np.uint8)))
    return h.hexdigest()


def checkpoint_sha256(checkpoint: Checkpoint) -> str:
    """sha256 over (name, safetensors dtype, shape, bytes) of a checkpoint's tensors, in
    sorted name order: the same for tensors in memory (``ArrayCheckpoint``) and for the
    file they were saved to, and blind to the file's metadata (where it can be stored)."""
    from mergelab.io.dtypes import STORAGE

    h = hashlib.sha256()
    for name in sorted(checkpoint.infos):
        info = checkpoint.infos[name]
        h.update(f"{name}\0{info.dtype}\0{list(info.shape)}\0".encode())
        step = max(1, _CHUNK // STORAGE[info.dtype].itemsize)
        for start in range(0, info.numel, step):
            part = checkpoint.read(name, start, min(info.numel, start + step))
            h.update(memoryview(np.ascontiguousarray(part).reshape(-1).view(np.uint8)))
    return h.hexdigest()


def discard(path: Path, problem: str) -> None:
    """Report a cached file that failed its check (one line on stderr naming it) and remove
    it, so that it is computed again rather than used."""
    problem = problem.removeprefix(f"{path}: ")
    print(f"mergelab: warning: {path}: {problem}; removed, recomputing it", file=sys.stderr)
    with contextlib.suppress(OSError):
        path.unlink()
