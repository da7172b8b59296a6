"""The checks every entry point shares, each raising one :class:`MergelabError` line.

Kept in one place so that a hole closed here (a non-finite number, a path that leaves its
folder, a FIFO given as a checkpoint, an output that would clobber an input) is closed for
every command at once.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from mergelab.errors import MergelabError

OUTPUT_MARK = ".mergelab-output"
"""The file that marks a folder as mergelab's output: its own file names may be replaced."""

__all__ = [
    "OUTPUT_MARK",
    "claim_output_folder",
    "finite_number",
    "inside_folder",
    "output_folder",
    "regular_file",
    "removed_if_left_empty",
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
    if not isinstance(name, str) or not name or "\0" in name:
        raise MergelabError(f"{what}: {name!r} is not a file name")
    if Path(name).is_absolute() or os.path.isabs(name):
        raise MergelabError(f"{what}: {name!r} is an absolute path; only names inside {folder}")
    if ".." in Path(name).parts:
        raise MergelabError(f"{what}: {name!r} leaves the folder {folder}")
    path = folder / name
    try:
        target = path.resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop
        raise MergelabError(f"{what}: {name!r} cannot be resolved ({exc})") from None
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


def output_file(
    path: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]],
    option: str,
    *,
    in_checked_folder: bool = False,
    command: str | None = None,
) -> Path:
    """A file a result is written to (atomically), refused (one line naming ``option``)
    when it is one of the ``inputs`` or lies inside one, is a folder, or exists and is not
    a JSON result mergelab's ``command`` wrote (:func:`written_by`); ``in_checked_folder``:
    the file's folder was checked by :func:`output_folder`, which decides about an existing
    file."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise MergelabError(f"{option} {out}: is a folder; give a file name")
    clash = same_or_within(out, [Path(i).expanduser() for i in inputs])
    if clash is not None:
        raise MergelabError(f"{option} {out}: is the input {clash}; it would be overwritten")
    if out.exists() and not in_checked_folder and not json_by_mergelab(out, command):
        who = f"mergelab {command}" if command else "mergelab"
        raise MergelabError(
            f"{option} {out}: exists and {who} did not write it; remove it or give another name"
        )
    return out


WRITTEN_BY = "written_by"
"""The key a JSON result of mergelab carries (``"mergelab 0.1.0 diagnose"``): a file
without it is not replaced."""


def written_by(command: str) -> dict[str, str]:
    """The first key of a JSON result that ``command`` writes."""
    from mergelab import __version__

    return {WRITTEN_BY: f"mergelab {__version__} {command}"}


def json_by_mergelab(path: Path, command: str | None = None, limit: int = 1 << 26) -> bool:
    """Whether ``path`` is a JSON object (at most ``limit`` bytes) that mergelab (its
    ``command``, when given) wrote."""
    try:
        if not path.is_file() or path.stat().st_size > limit:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    mark = str(data.get(WRITTEN_BY, "")) if isinstance(data, dict) else ""
    return mark.startswith("mergelab ") and (command is None or mark.endswith(f" {command}"))


def output_folder(
    path: str | os.PathLike[str],
    option: str = "--out",
    writes: Iterable[str] | None = None,
    ours: Callable[[Path], bool] | None = None,
) -> Path:
    """A folder results can be written into; refused (one line naming ``option``) if it is
    a file, or not writable.

    Without ``writes`` the folder is created at once. With ``writes`` (the names, or glob
    patterns like ``figures/*.png``, of what the command writes there) nothing is created
    (:func:`claim_output_folder` does that when the first result is written), and in an
    existing folder without mergelab's marker an existing file of one of those names is
    refused unless ``ours(path)`` (default: ``mergelab.io.output.written_by_mergelab``)
    recognises it: mergelab never replaces a file it did not write."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise MergelabError(f"{option} {folder}: is a file, not a folder")
    if writes is None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MergelabError(f"{option} {folder}: cannot create it ({exc.strerror})") from None
    elif not folder.is_dir():
        parent = folder.absolute().parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise MergelabError(f"{option} {folder}: cannot create it ({parent} is a file)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise MergelabError(f"{option} {folder}: cannot create it ({parent} is not writable)")
        return folder
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MergelabError(f"{option} {folder}: folder is not writable")
    if writes is not None and not (folder / OUTPUT_MARK).is_file():
        if ours is None:
            from mergelab.io.output import written_by_mergelab as ours
        for name in writes:
            for found in sorted(folder.glob(name)) if glob.has_magic(name) else [folder / name]:
                if (found.exists() or found.is_symlink()) and not (found.is_file() and ours(found)):
                    raise MergelabError(
                        f"{found}: not written by mergelab, which would replace it; move it "
                        f"away or choose another {option}"
                    )
    return folder


def claim_output_folder(folder: Path, command: str, option: str = "--out") -> Path:
    """Create ``folder`` (checked by :func:`output_folder`) when the first result is written,
    and mark it as ``command``'s output so a rerun may replace mergelab's own files there."""
    from mergelab.atomic import atomic_write_text

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MergelabError(f"{option} {folder}: cannot create it ({exc.strerror})") from None
    if not (folder / OUTPUT_MARK).is_file():
        atomic_write_text(folder / OUTPUT_MARK, f"# mergelab {command} output\n")
    return folder


@contextlib.contextmanager
def removed_if_left_empty(*folders: Path | None) -> Iterator[None]:
    """On failure (an error, Ctrl-C, SIGTERM turned into an exception), remove each of
    ``folders`` that did not exist on entry (from its topmost new parent) and holds no file
    but mergelab's marker: a failed command leaves no empty folders behind."""
    created = []
    for folder in folders:
        if folder is None or folder.exists():
            continue
        top = folder.absolute()
        while not top.parent.exists() and top.parent != top.parent.parent:
            top = top.parent
        created.append(top)
    try:
        yield
    except BaseException:
        for top in created:
            if (
                top.is_dir()
                and not top.is_symlink()
                and all(p.is_dir() or p.name == OUTPUT_MARK for p in top.rglob("*"))
            ):
                shutil.rmtree(top, ignore_errors=True)
        raise
