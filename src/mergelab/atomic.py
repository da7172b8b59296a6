"""Atomic file creation: a reader sees the old file or the whole new one, never half."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from mergelab.errors import MergelabError

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]


def atomic_write(
    path: str | os.PathLike[str], writer: Callable[[IO[bytes]], object], *, fsync: bool = True
) -> Path:
    """Create ``path`` atomically: ``writer(file_object)`` fills a temp file beside it, which
    is flushed, synced (unless ``fsync=False``), made readable by all (0644, like any file
    the user writes) and renamed over ``path``; on any failure the temp file is removed
    and an existing ``path`` is left untouched; an OSError while writing becomes one
    :class:`MergelabError` line naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        # Disk full, quota, read-only: one line naming the file. An error about another
        # file (the source a writer copies from) names that file itself.
        if isinstance(exc, OSError) and _about(exc, path):
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise MergelabError(f"{path}: cannot write ({reason})") from exc
        raise
    return path


def _about(exc: OSError, path: Path) -> bool:
    """Whether ``exc`` is about writing ``path``: no file named, or ``path``, its temp file
    or a folder on its way."""
    if exc.filename is None:
        return True
    named = Path(os.fsdecode(exc.filename))
    return named.parent == path.parent or named in (path, *path.parents)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of ``text`` as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))
