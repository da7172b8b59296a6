"""Read ``.npz`` archives as data only, checking every header before any allocation.

``np.load`` trusts the array headers: a corrupt or hostile archive whose header claims a
58 GiB array makes it try to allocate that much, and a broken zip raises one of half a
dozen exception types. Here each member's header is read first and checked against the
member's real size, object arrays are refused, and every failure is one
:class:`MergelabError` naming the file and the member.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mergelab.checks import regular_file
from mergelab.errors import MergelabError

__all__ = ["read_npz"]


def _header(fh, path: Path, member: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    except (ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise MergelabError(f"{path}: member {member!r} is not a NumPy array ({exc})") from None
    return shape, dtype


def read_npz(path: str | Path, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of ``path`` (only ``names`` when given; a missing one is an error)."""
    path = Path(path)
    regular_file(path, "expected an .npz file")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise MergelabError(f"{path}: not a readable .npz archive ({exc})") from None
    with archive:
        members = {m.filename.removesuffix(".npy"): m for m in archive.infolist()}
        wanted = list(members) if names is None else list(names)
        missing = [n for n in wanted if n not in members]
        if missing:
            raise MergelabError(
                f"{path}: no array named {missing[0]!r} (it holds {sorted(members) or 'nothing'})"
            )
        arrays = {}
        for name in wanted:
            info = members[name]
            try:
                with archive.open(info) as fh:
                    shape, dtype = _header(fh, path, name)
                    if dtype.hasobject:
                        raise MergelabError(
                            f"{path}: array {name!r} holds Python objects; refused (data only)"
                        )
                    claimed = math.prod(shape) * dtype.itemsize
                    if claimed > info.file_size:
                        raise MergelabError(
                            f"{path}: array {name!r} claims {claimed} bytes {list(shape)} "
                            f"but the archive holds {info.file_size}; the file is corrupt"
                        )
                with archive.open(info) as fh:
                    arrays[name] = np.lib.format.read_array(fh, allow_pickle=False)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                if isinstance(exc, MergelabError):
                    raise
                raise MergelabError(f"{path}: array {name!r} is unreadable ({exc})") from None
        return arrays
