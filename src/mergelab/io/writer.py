"""Streaming, atomic safetensors output.

The header is known before any data exists (names, shapes, dtypes come from the plan), so
files are laid out up front and every chunk is written in place with ``pwrite`` as soon as
it is computed: nothing waits in memory for the whole model. Output goes to a hidden staging
path beside the destination and is renamed into place only when complete, so an interrupted
or failed merge leaves no half-written file, and an existing output is replaced only when
``force`` is given.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mergelab.errors import MergeError
from mergelab.io.checkpoint import ArrayCheckpoint, TensorInfo
from mergelab.io.dtypes import STORAGE

SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def _layout(infos: Sequence[TensorInfo], metadata: dict[str, str]) -> tuple[bytes, dict[str, int]]:
    """Header bytes and each tensor's byte offset in the file.

    Larger dtypes first, then by name, as the reference serializer does, so that every
    tensor starts at a multiple of its element size.
    """
    ordered = sorted(infos, key=lambda i: (-STORAGE[i.dtype].itemsize, i.name))
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    cursor = 0
    relative: dict[str, int] = {}
    for info in ordered:
        header[info.name] = {
            "dtype": info.dtype,
            "shape": list(info.shape),
            "data_offsets": [cursor, cursor + info.nbytes],
        }
        relative[info.name] = cursor
        cursor += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % 8)
    start = 8 + len(raw)
    return struct.pack("<Q", len(raw)) + raw, {n: start + o for n, o in relative.items()}


def shard_groups(
    infos: Sequence[TensorInfo], max_shard_bytes: int | None
) -> list[list[TensorInfo]]:
    """Split tensors, in order, into shards of at most ``max_shard_bytes`` (a larger tensor
    gets a shard of its own)."""
    groups: list[list[TensorInfo]] = [[]]
    size = 0
    for info in infos:
        if max_shard_bytes and groups[-1] and size + info.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(info)
        size += info.nbytes
    return groups


def _preallocate(fd: int, size: int) -> None:
    """Reserve the file's blocks up front: writes into allocated blocks are several times
    faster than into a sparse file, and a full disk fails here, before any work."""
    try:
        if size:
            os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise MergeError(
                f"cannot reserve {size} bytes for the output: {exc.strerror}"
            ) from None
        os.ftruncate(fd, size)


class OutputPath:
    """A destination written through a staging path and renamed into place at the end."""

    def __init__(self, out: str | Path, *, force: bool = False) -> None:
        self.out = Path(out)
        if self.out.exists() and not force:
            raise MergeError(f"{self.out}: already exists; pass --force (force=True) to replace it")
        parent = self.out.parent
        if not parent.exists():
            raise MergeError(f"{self.out}: output folder {parent} does not exist")
        if not parent.is_dir():
            raise MergeError(f"{self.out}: {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise MergeError(f"{self.out}: output folder {parent} is not writable")
        self.staging = parent / f".{self.out.name}.partial-{os.getpid()}"
        self._remove(self.staging)

    @staticmethod
    def _remove(path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()

    def commit(self) -> None:
        """Move the finished staging path over the destination."""
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            os.replace(self.out, old)
        os.replace(self.staging, self.out)
        if old is not None:
            self._remove(old)

    def abort(self) -> None:
        self._remove(self.staging)


class SafetensorsWriter:
    """Writes planned tensors chunk by chunk into one file or a sharded folder.

    ``path`` ending in ``.safetensors`` gives one file; any other path gives a folder holding
    ``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` with an index.
    """

    def __init__(
        self,
        path: str | Path,
        infos: Sequence[TensorInfo],
        *,
        metadata: dict[str, str] | None = None,
        max_shard_bytes: int | None = None,
        force: bool = False,
        extra_files: dict[str, str] | None = None,
    ) -> None:
        self.target = OutputPath(path, force=force)
        self.infos = {i.name: i for i in infos}
        self._written = dict.fromkeys(self.infos, 0)
        self._fds: list[int] = []
        self._where: dict[str, tuple[int, int]] = {}
        metadata = {"format": "pt", **(metadata or {})}
        single_file = self.target.out.suffix == ".safetensors"
        groups = shard_groups(list(infos), None if single_file else max_shard_bytes)
        try:
            if single_file:
                files = [self.target.staging]
            else:
                self.target.staging.mkdir()
                n = len(groups)
                names = (
                    [SINGLE_NAME]
                    if n == 1
                    else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
                )
                files = [self.target.staging / name for name in names]
                if n > 1:
                    index = {
                        "metadata": {"total_size": sum(i.nbytes for i in infos), **metadata},
                        "weight_map": {
                            i.name: names[g] for g, grp in enumerate(groups) for i in grp
                        },
                    }
                    (self.target.staging / INDEX_NAME).write_text(json.dumps(index, indent=2))
                for name, text in (extra_files or {}).items():
                    (self.target.staging / name).write_text(text)
            for file, group in zip(files, groups, strict=True):
                header, offsets = _layout(group, metadata)
                fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                self._fds.append(fd)
                size = len(header) + sum(i.nbytes for i in group)
                _preallocate(fd, size)
                os.pwrite(fd, header, 0)
                for name, offset in offsets.items():
                    self._where[name] = (fd, offset)
        except BaseException:
            self.abort()
            raise
        if single_file and extra_files:
            self._beside = {
                self.target.out.parent / name: text for name, text in extra_files.items()
            }
        else:
            self._beside = {}

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        """Write ``values`` (flat, in the planned storage dtype) at element ``start``."""
        info = self.infos[name]
        storage = STORAGE[info.dtype]
        if values.dtype != storage:
            raise TypeError(f"{name}: got {values.dtype}, planned {info.dtype}")
        fd, offset = self._where[name]
        view = memoryview(np.ascontiguousarray(values).reshape(-1)).cast("B")
        position = offset + start * storage.itemsize
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], position + done)
        self._written[name] += values.size

    def close(self) -> None:
        """Check that every tensor was written in full, then move the output into place."""
        short = [n for n, count in self._written.items() if count != self.infos[n].numel]
        if short:
            self.abort()
            raise RuntimeError(f"internal error: tensors not fully written: {short[:5]}")
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        for path, text in self._beside.items():
            tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
            tmp.write_text(text)
            os.replace(tmp, path)
        self.target.commit()

    def abort(self) -> None:
        """Remove everything written so far."""
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self.target.abort()


def save_state_dict(
    tensors: Mapping[str, Any],
    path: str | Path,
    *,
    metadata: dict[str, str] | None = None,
    force: bool = False,
) -> Path:
    """Write torch tensors or NumPy arrays atomically (a ``.safetensors`` file or a folder)."""
    source = ArrayCheckpoint(tensors, label=str(path))
    writer = SafetensorsWriter(path, list(source.infos.values()), metadata=metadata, force=force)
    try:
        for name in source.infos:
            writer.write(name, 0, source.read(name))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return Path(path)
