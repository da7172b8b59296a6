"""A strict, lazy reader of .safetensors files.

The header is parsed and checked in full (dtypes, shapes, offsets, file length) before any
tensor byte is read, so a truncated or corrupt file fails at once with its name. Tensor data
is read with ``preadv`` into a fresh buffer rather than memory-mapped: pages of a mapping
count towards resident memory for as long as it lives, a read buffer only while it is used,
which is what keeps a merge's memory following the largest tensor rather than the model.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from mergelab.errors import MergeError
from mergelab.io.checkpoint import Checkpoint, TensorInfo
from mergelab.io.dtypes import STORAGE

MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, int], dict[str, str], int]:
    """Parse and validate a safetensors header.

    Returns (infos, absolute byte offset of each tensor, metadata, file size).
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise MergeError(f"{path}: not a safetensors file (only {size} bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(MAX_HEADER_BYTES, size - 8):
                raise MergeError(
                    f"{path}: corrupt or truncated safetensors header "
                    f"(header length {header_len} bytes, file {size} bytes)"
                )
            raw = f.read(header_len)
    except OSError as exc:
        raise MergeError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MergeError(f"{path}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise MergeError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise MergeError(f"{path}: corrupt safetensors header (__metadata__ is not an object)")
    data_start = 8 + header_len
    infos: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        try:
            dtype = str(entry["dtype"])
            STORAGE[dtype]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise MergeError(
                f"{path}: tensor {name!r} has a malformed header entry: {entry!r}"
            ) from None
        info = TensorInfo(name, shape, dtype)
        if any(d < 0 for d in shape) or end - begin != info.nbytes:
            raise MergeError(
                f"{path}: tensor {name!r} header says shape {list(shape)} {entry['dtype']} "
                f"({info.nbytes} bytes) but offsets span {end - begin} bytes"
            )
        infos[name] = info
        spans.append((begin, end, name))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            raise MergeError(f"{path}: tensor {name!r} data offsets overlap or leave a gap")
        cursor = end
    if data_start + cursor != size:
        what = "truncated" if data_start + cursor > size else "has trailing bytes"
        raise MergeError(
            f"{path}: file is {what}: header describes {data_start + cursor} bytes, file has {size}"
        )
    offsets = {name: data_start + begin for begin, _, name in spans}
    return infos, offsets, {str(k): str(v) for k, v in metadata.items()}, size


def pread_into(fd: int, buffer: memoryview, offset: int, label: str) -> None:
    """Fill ``buffer`` from ``fd`` at ``offset``; short reads mean the file changed under us."""
    done = 0
    total = len(buffer)
    while done < total:
        n = os.preadv(fd, [buffer[done:]], offset + done)
        if n <= 0:
            raise MergeError(f"{label}: unexpected end of file while reading tensor data")
        done += n


class SafetensorsFile(Checkpoint):
    """One .safetensors file; opening reads only its header."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.label = str(self.path)
        self.infos, self._offsets, self.metadata, _ = read_header(self.path)
        self._fd: int | None = None

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def read(
        self, name: str, start: int = 0, stop: int | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        info, stop = self._check_range(name, start, stop)
        storage = STORAGE[info.dtype]
        if out is None:
            out = np.empty(stop - start, dtype=storage)
        elif out.dtype != storage or out.size != stop - start:
            raise ValueError(f"{self.label}: read buffer does not fit {name}[{start}:{stop}]")
        if out.size:
            pread_into(
                self._descriptor(),
                memoryview(out).cast("B"),
                self._offsets[name] + start * storage.itemsize,
                f"{self.label} ({name})",
            )
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
