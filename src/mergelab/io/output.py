"""Where a merge writes, and what it may replace.

A user's folder can hold the only copy of their checkpoints, a config.json, a tokenizer, a
README. So an output is a set of named files, not a folder to clear: new files are staged in
a hidden folder beside their destination and renamed into place only when complete, and an
existing file is replaced only when ``force`` is given *and* mergelab wrote it (its header
or first line says so). An output that is, or holds, an input is refused before any work;
staging left behind by a killed process is removed by the next run in that folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from mergelab.errors import MergeError, MergelabError

__all__ = ["Output", "written_by_mergelab"]

STAGING_PREFIX = ".mergelab-partial-"
# The host is in the name so that on a shared (NFS) folder only this machine's dead
# processes count as gone; mkdtemp adds 8 characters.
_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"
_STAGING = re.compile(rf"^{re.escape(STAGING_PREFIX)}{re.escape(_HOST)}-(\d+)-[a-z0-9_]{{8}}$")
MODEL_FILES = re.compile(r"^model(?:-\d{5}-of-\d{5})?\.safetensors(?:\.index\.json)?$")
RECIPE_MARK = "# mergelab "
WROTE_MARK = "# wrote: "
"""A line of the recipe record naming a file mergelab wrote beside the tensors that cannot
carry a mark of its own (config.json, tokenizer files)."""


def written_by_mergelab(path: Path) -> bool:
    """Whether ``path`` carries mergelab's mark: a ``mergelab.*`` key in a safetensors (or
    shard index) header's metadata, or the version line that opens a recipe record; or, for
    another file (config.json, a tokenizer file), whether the recipe record mergelab wrote
    in the same folder lists it as written."""
    try:
        if path.name.endswith(".safetensors"):
            from mergelab.io.safetensors_file import read_header

            metadata = read_header(path)[2]
        elif path.name.endswith(".index.json"):
            metadata = json.loads(path.read_text()).get("metadata") or {}
        elif path.name.endswith(".json") and _json_result(path):
            return True
        elif path.name.endswith(".yaml"):
            with open(path, encoding="utf-8") as fh:
                return fh.readline().startswith(RECIPE_MARK)
        else:
            return _listed_in_record(path)
    except (MergelabError, OSError, ValueError, AttributeError):
        return False
    return isinstance(metadata, dict) and any(str(k).startswith("mergelab") for k in metadata)


def _json_result(path: Path) -> bool:
    from mergelab.checks import json_by_mergelab

    return json_by_mergelab(path)


def _listed_in_record(path: Path) -> bool:
    record = path.parent / "mergelab.yaml"
    if not record.is_file():
        return False
    with open(record, encoding="utf-8") as fh:
        lines = fh.read(1 << 20).splitlines()
    return bool(lines) and lines[0].startswith(RECIPE_MARK) and f"{WROTE_MARK}{path.name}" in lines


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_staging(folder: Path) -> list[Path]:
    """Remove staging folders left in ``folder`` by this machine's processes that no longer
    run (SIGKILL, a power cut); say so on stderr."""
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        match = _STAGING.match(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink():
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        _remove(entry)
        removed.append(entry)
    if removed:
        listed = ", ".join(p.name for p in removed)
        print(
            f"mergelab: note: removed {len(removed)} staging file(s) left in {folder} by an "
            f"interrupted run: {listed}",
            file=sys.stderr,
        )
    return removed


def _refuse_current_folder(out: Path, option: str) -> None:
    if out.name in ("", ".", "..") or out.resolve() in (Path.cwd(), *Path.cwd().parents):
        raise MergeError(
            f"{option} {out}: the current folder or one above it cannot be an output; "
            f"name a file or a new folder (e.g. {option} merged)"
        )


class Output:
    """One merge's output: ``out`` is a ``.safetensors`` file (``single``) or a folder; the
    files named in ``names`` (the model file(s) and its recipe record) are what it writes.

    Construction checks everything and touches nothing; :meth:`open` creates the staging
    folder, :meth:`path` says where to write each name, :meth:`commit` moves them into
    place (removing mergelab's older model files the new ones supersede) and
    :meth:`abort` removes the staging.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        names: Sequence[str],
        *,
        single: bool,
        force: bool = False,
        inputs: Iterable[str | os.PathLike[str]] = (),
        option: str = "--out",
    ) -> None:
        self.out = out = Path(out)
        self.names = list(names)
        self.single = single
        if out.is_symlink():
            raise MergeError(
                f"{option} {out}: is a symbolic link; give the path it stands for, or a new name"
            )
        try:
            out.resolve(strict=False)
        except (RuntimeError, OSError) as exc:
            raise MergeError(f"{option} {out}: cannot be resolved ({exc})") from None
        _refuse_current_folder(out, option)
        self.folder = out.parent if single else out
        if single and out.is_dir():
            raise MergeError(f"{option} {out}: is a folder; a .safetensors output is a file")
        if not single and out.exists() and not out.is_dir():
            raise MergeError(
                f"{option} {out}: is a file; give a folder, or a name ending in .safetensors"
            )
        self._refuse_inputs(inputs, option)
        parent = out.parent
        if not parent.exists():
            raise MergeError(f"{option} {out}: output folder {parent} does not exist")
        if not parent.is_dir():
            raise MergeError(f"{option} {out}: {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK) or (
            self.folder.is_dir() and not os.access(self.folder, os.W_OK | os.X_OK)
        ):
            raise MergeError(f"{option} {out}: folder {self.folder} is not writable")
        existing = [self.folder / n for n in self.names if (self.folder / n).exists()]
        self.superseded: list[Path] = []
        if not single and self.folder.is_dir():
            self.superseded = sorted(
                p
                for p in self.folder.iterdir()
                if MODEL_FILES.match(p.name) and p.name not in self.names
            )
        clashes = existing + self.superseded
        if clashes and not force:
            raise MergeError(f"{clashes[0]}: already exists; pass --force to replace it")
        for path in clashes:
            if not written_by_mergelab(path):
                raise MergeError(
                    f"{path}: not written by mergelab; --force replaces only mergelab's own "
                    f"outputs, so move it away or choose another {option}"
                )
        self.staging: Path | None = None
        self._created_folder = False

    def _refuse_inputs(self, inputs: Iterable[str | os.PathLike[str]], option: str) -> None:
        target = self.out.resolve()
        for given in inputs:
            source = Path(given).resolve()
            if target == source:
                raise MergeError(
                    f"{option} {self.out}: is the input {given}; an input is never overwritten"
                )
            if not self.single and source.is_relative_to(target):
                raise MergeError(
                    f"{option} {self.out}: holds the input {given}; write the merge to "
                    f"another folder (inputs are never replaced)"
                )
            if source.is_dir() and target.is_relative_to(source):
                raise MergeError(
                    f"{option} {self.out}: lies inside the input model folder {given}; "
                    f"write the merge elsewhere (an input folder is never changed)"
                )

    def open(self) -> None:
        """Create the staging folder (and the output folder, if new)."""
        remove_stale_staging(self.folder)
        if not self.folder.exists():
            try:
                self.folder.mkdir()
            except OSError as exc:
                raise MergeError(f"{self.folder}: cannot create ({exc.strerror})") from None
            self._created_folder = True
        try:
            self.staging = Path(
                tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{_HOST}-{os.getpid()}-", dir=self.folder)
            )
        except OSError as exc:
            self.abort()
            raise MergeError(f"{self.folder}: cannot write ({exc.strerror})") from None

    def path(self, name: str) -> Path:
        assert self.staging is not None, "open() first"
        return self.staging / name

    def commit(self) -> None:
        """Move every staged file into place, then drop the superseded model files."""
        assert self.staging is not None
        for name in self.names:
            os.replace(self.staging / name, self.folder / name)
        for path in self.superseded:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        _remove(self.staging)
        self.staging = None

    def abort(self) -> None:
        """Remove everything staged; a folder this output created goes too if left empty."""
        if self.staging is not None:
            _remove(self.staging)
            self.staging = None
        if self._created_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()
            self._created_folder = False
