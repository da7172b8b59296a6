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

from mergelab.checks import regular_file
from mergelab.errors import MergeError
from mergelab.io.checkpoint import Checkpoint, TensorInfo
from mergelab.io.dtypes import SAFETENSORS_DTYPES, STORAGE

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's limit
_U64 = 2**64


class _DuplicateKey(Exception):
    """A JSON object repeats a key: ``json`` would silently keep the last value."""


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not valid JSON")


def _count(value: object) -> bool:
    """A JSON unsigned 64-bit integer, as the safetensors library reads ``usize``."""
    return type(value) is int and 0 <= value < _U64


def _entry(path: Path, name: str, entry: object) -> tuple[TensorInfo, int, int]:
    """One tensor's header entry, checked as strictly as the safetensors library does."""

    def bad(why: str) -> MergeError:
        return MergeError(f"{path}: tensor {name!r} has a malformed header entry: {why}")

    if not isinstance(entry, dict):
        raise bad(f"expected an object, got {entry!r}")
    for field in ("dtype", "shape", "data_offsets"):
        if field not in entry:
            raise bad(f"no {field!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise bad(f"unknown dtype {dtype!r} (known: {', '.join(sorted(SAFETENSORS_DTYPES))})")
    if dtype not in STORAGE:
        raise MergeError(
            f"{path}: tensor {name!r} has dtype {dtype}, which mergelab cannot read "
            f"(supported: {', '.join(STORAGE)})"
        )
    if not isinstance(shape, list) or not all(_count(d) for d in shape):
        raise bad(f"shape must be a list of non-negative integers, got {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_count, offsets))):
        raise bad(f"data_offsets must be two non-negative integers, got {offsets!r}")
    begin, end = offsets
    if begin > end:
        raise bad(f"data_offsets {offsets} end before they begin")
    info = TensorInfo(name, tuple(shape), dtype)
    if end - begin != info.nbytes:
        raise MergeError(
            f"{path}: tensor {name!r} header says shape {shape} {dtype} "
            f"({info.nbytes} bytes) but offsets span {end - begin} bytes"
        )
    return info, begin, end


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, int], dict[str, str], int]:
    """Parse and validate a safetensors header (by the ``safetensors`` library's rules, and
    refusing repeated names, which it would silently resolve).

    Returns (infos, absolute byte offset of each tensor, metadata, file size).
    """
    regular_file(path, "expected a .safetensors file")
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
                    f"(header length {header_len} bytes, file {size} bytes, "
                    f"limit {MAX_HEADER_BYTES})"
                )
            raw = f.read(header_len)
    except OSError as exc:
        raise MergeError(f"{path}: cannot read ({exc.strerror})") from exc
    if len(raw) != header_len:
        raise MergeError(f"{path}: file shrank while its header was read")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_pairs, parse_constant=_not_json)
    except _DuplicateKey as dup:
        raise MergeError(
            f"{path}: corrupt safetensors header: the name {dup.args[0]!r} appears twice"
        ) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MergeError(f"{path}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise MergeError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise MergeError(
            f"{path}: corrupt safetensors header (__metadata__ must map names to strings, "
            f"got {metadata!r:.200})"
        )
    data_start = 8 + header_len
    infos: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        info, begin, end = _entry(path, name, entry)
        infos[name] = info
        spans.append((begin, end, name))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            raise MergeError(
                f"{path}: tensor {name!r} data offsets [{begin}, {end}] overlap or leave a gap "
                f"(the previous tensor ends at {cursor})"
            )
        cursor = end
    if data_start + cursor != size:
        what = "is truncated" if data_start + cursor > size else "has trailing bytes"
        raise MergeError(
            f"{path}: file {what}: header describes {data_start + cursor} bytes, file has {size}"
        )
    offsets = {name: data_start + begin for begin, _, name in spans}
    return infos, offsets, metadata, size


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
