"""Streaming, atomic safetensors output.

The header is known before any data exists (names, shapes, dtypes come from the plan), so
files are laid out up front and every chunk is written in place with ``pwrite`` as soon as
it is computed: nothing waits in memory for the whole model. Output goes to a hidden staging
folder beside the destination and is renamed into place only when complete, so an
interrupted or failed merge leaves no half-written file; what an output may replace is
decided in :mod:`mergelab.io.output`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mergelab import __version__
from mergelab.errors import MergeError
from mergelab.io.checkpoint import ArrayCheckpoint, TensorInfo
from mergelab.io.dtypes import STORAGE
from mergelab.io.output import Output

SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
WRITER_MARK = "mergelab.writer"


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


def _preallocate(fd: int, size: int, label: Path) -> None:
    """Reserve the file's blocks up front: writes into allocated blocks are several times
    faster than into a sparse file, and a full disk fails here, before any work."""
    try:
        if size:
            os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise MergeError(
                f"{_final(label)}: cannot reserve {size} bytes ({exc.strerror})"
            ) from None
        os.ftruncate(fd, size)


class SafetensorsWriter:
    """Writes planned tensors chunk by chunk into one file or a sharded folder.

    ``path`` ending in ``.safetensors`` gives one file (``extra_files`` go beside it); any
    other path gives a folder holding ``model.safetensors`` or
    ``model-0000i-of-0000n.safetensors`` with an index, plus ``extra_files``. Other files in
    that folder are left alone; what may be replaced is decided by :class:`Output`.
    """

    def __init__(
        self,
        path: str | Path,
        infos: Sequence[TensorInfo],
        *,
        metadata: dict[str, str] | None = None,
        max_shard_bytes: int | None = None,
        force: bool = False,
        extra_files: dict[str, str | bytes] | None = None,
        inputs: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        self.infos = {i.name: i for i in infos}
        self._written = dict.fromkeys(self.infos, 0)
        self._fds: list[int] = []
        self._where: dict[str, tuple[int, int]] = {}
        metadata = {"format": "pt", **(metadata or {})}
        if not any(k.startswith("mergelab") for k in metadata):
            metadata[WRITER_MARK] = __version__  # what lets a later --force replace it
        single = is_file_output(path)
        path = Path(path)
        groups, names, extra = _files(path, single, infos, metadata, max_shard_bytes, extra_files)
        self.target = Output(
            path,
            [*names, *extra],
            single=single,
            force=force,
            inputs=inputs,
        )
        self.out = path
        self.target.open()
        try:
            for name, text in extra.items():
                _write_text(self.target.path(name), text)
            for name, group in zip(names, groups, strict=True):
                header, offsets = _layout(group, metadata)
                file = self.target.path(name)
                fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                self._fds.append(fd)
                size = len(header) + sum(i.nbytes for i in group)
                _preallocate(fd, size, file)
                _pwrite_all(fd, memoryview(header), 0, file)
                for tensor, offset in offsets.items():
                    self._where[tensor] = (fd, offset)
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        """Write ``values`` (flat, in the planned storage dtype) at element ``start``."""
        info = self.infos[name]
        storage = STORAGE[info.dtype]
        if values.dtype != storage:
            raise TypeError(f"{name}: got {values.dtype}, planned {info.dtype}")
        fd, offset = self._where[name]
        view = memoryview(np.ascontiguousarray(values).reshape(-1)).cast("B")
        _pwrite_all(fd, view, offset + start * storage.itemsize, self.out)
        self._written[name] += values.size

    def close(self) -> None:
        """Check that every tensor was written in full, then move the output into place."""
        short = [n for n, count in self._written.items() if count != self.infos[n].numel]
        if short:
            self.abort()
            raise RuntimeError(f"internal error: tensors not fully written: {short[:5]}")
        try:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()
            self.target.commit()
        except OSError as exc:
            self.abort()
            raise MergeError(f"{self.out}: cannot write ({exc.strerror})") from None

    def abort(self) -> None:
        """Remove everything written so far."""
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self.target.abort()


def is_file_output(path: str | os.PathLike[str]) -> bool:
    """``NAME.safetensors`` (any case) is one file; any other output is a folder. A name
    ending in ``.safetensors/`` is refused: the slash says folder, the name says file."""
    text = os.fspath(path)
    if text.rstrip("/" + os.sep).lower().endswith(".safetensors") and text.endswith(("/", os.sep)):
        raise MergeError(
            f"--out {text}: a name ending in .safetensors is a file; drop the trailing slash "
            f"(or pick a folder name without .safetensors)"
        )
    return Path(text).suffix.lower() == ".safetensors"


def _files(
    path: Path,
    single_file: bool,
    infos: Sequence[TensorInfo],
    metadata: dict[str, str],
    max_shard_bytes: int | None,
    extra_files: dict[str, str | bytes] | None,
) -> tuple[list[list[TensorInfo]], list[str], dict[str, str | bytes]]:
    """Shard groups, their file names, and the other files (index, recipe) with contents."""
    groups = shard_groups(list(infos), None if single_file else max_shard_bytes)
    n = len(groups)
    if single_file:
        names = [path.name]
    elif n == 1:
        names = [SINGLE_NAME]
    else:
        names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    extra = dict(extra_files or {})
    if n > 1:
        index = {
            "metadata": {"total_size": sum(i.nbytes for i in infos), **metadata},
            "weight_map": {i.name: names[g] for g, grp in enumerate(groups) for i in grp},
        }
        extra = {INDEX_NAME: json.dumps(index, indent=2), **extra}
    return groups, names, extra


def check_output(
    path: str | Path,
    infos: Sequence[TensorInfo],
    *,
    max_shard_bytes: int | None = None,
    force: bool = False,
    extra_names: Sequence[str] = (),
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> list[str]:
    """What :class:`SafetensorsWriter` would check, touching nothing (for dry runs): the
    names of the files it would write, or the error it would raise."""
    single = is_file_output(path)
    path = Path(path)
    _, names, extra = _files(
        path, single, infos, {}, max_shard_bytes, dict.fromkeys(extra_names, "")
    )
    Output(path, [*names, *extra], single=single, force=force, inputs=inputs)
    return [*names, *extra]


def _write_text(path: Path, text: str | bytes) -> None:
    try:
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
    except OSError as exc:
        raise MergeError(f"{_final(path)}: cannot write ({exc.strerror})") from None


def _final(staged: Path) -> Path:
    """Where a staged file will live (its name, beside the staging folder)."""
    return staged.parent.parent / staged.name


def _pwrite_all(fd: int, view: memoryview, position: int, label: Path) -> None:
    done = 0
    try:
        while done < len(view):
            done += os.pwrite(fd, view[done:], position + done)
    except OSError as exc:
        raise MergeError(f"{label}: cannot write ({exc.strerror})") from None


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
