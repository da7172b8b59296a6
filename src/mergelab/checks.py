"""The checks every entry point shares, each raising one :class:`MergelabError` line.

Kept in one place so that a hole closed here (a non-finite number, a path that leaves its
folder, a FIFO given as a checkpoint, an output that would clobber an input) is closed for
every command at once.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from mergelab.errors import MergelabError

__all__ = [
    "finite_number",
    "inside_folder",
    "output_folder",
    "regular_file",
    "same_or_within",
]


def finite_number(what: str, value: object, error: type[MergelabError] = MergelabError) -> None:
    """Refuse NaN and +-Inf (``what`` names the option or parameter, e.g. ``lambda``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if not math.isfinite(value):
        raise error(f"{what}: {value!r} is not a finite number")


def inside_folder(folder: Path, name: str, what: str, also: Iterable[Path] = ()) -> Path:
    """``folder / name``, refused unless it stays inside ``folder``: no absolute path, no
    ``..``, no symlink that leads out (except into one of the folders ``also``).
    ``what`` names the file that gave ``name``."""
    if not isinstance(name, str) or not name:
        raise MergelabError(f"{what}: {name!r} is not a file name")
    if Path(name).is_absolute() or os.path.isabs(name):
        raise MergelabError(f"{what}: {name!r} is an absolute path; only names inside {folder}")
    if ".." in Path(name).parts:
        raise MergelabError(f"{what}: {name!r} leaves the folder {folder}")
    path = folder / name
    target = path.resolve()
    if not any(target.is_relative_to(root.resolve()) for root in (folder, *also)):
        raise MergelabError(f"{what}: {name!r} is a link that leads outside {folder}")
    return path


def regular_file(path: Path, what: str = "") -> None:
    """Refuse a FIFO, socket or device where a file is read (reading one can hang forever)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise MergelabError(f"{path}: cannot read ({exc.strerror})") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise MergelabError(f"{path}: {kind}; {what or 'expected a file or folder'}")


def same_or_within(path: Path, others: Iterable[Path]) -> Path | None:
    """The first of ``others`` that ``path`` is, contains, or lies within (resolved)."""
    target = path.resolve()
    for other in others:
        o = other.resolve()
        if target == o or o.is_relative_to(target) or target.is_relative_to(o):
            return other
    return None


def output_folder(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """A folder results can be written into: created if missing; refused (one line naming
    ``option``) if it is a file, or not writable."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise MergelabError(f"{option} {folder}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MergelabError(f"{option} {folder}: cannot create it ({exc.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MergelabError(f"{option} {folder}: folder is not writable")
    return folder
