"""Finding a dataset's folder: accept the folder itself or its parent, name what is missing."""

from collections.abc import Sequence
from pathlib import Path

from mergelab.data.errors import DatasetNotFoundError


def find_layout_dir(
    path: Path,
    *,
    dataset: str,
    folder_names: Sequence[str],
    required: Sequence[str],
) -> Path:
    """Folder holding all ``required`` entries: ``path`` itself or ``path/<folder_name>``.

    Raises DatasetNotFoundError naming the first missing entry (or the missing folder).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(f"{dataset}: path does not exist: {path}")
    if not path.is_dir():
        raise DatasetNotFoundError(f"{dataset}: expected a folder, got a file: {path}")
    candidates = [path] + [path / n for n in folder_names if (path / n).is_dir()]
    for cand in candidates:
        if all((cand / r).exists() for r in required):
            return cand
    # Report against the most plausible folder: the first one that holds anything needed.
    best = next((c for c in reversed(candidates) if any((c / r).exists() for r in required)), None)
    if best is None:
        names = " or ".join(f"{n}/" for n in folder_names)
        wanted = ", ".join(required)
        hint = f"{path} (or its subfolder {names})" if folder_names else str(path)
        raise DatasetNotFoundError(f"{dataset}: {hint} has none of: {wanted}")
    missing = [r for r in required if not (best / r).exists()]
    raise DatasetNotFoundError(f"{dataset}: missing {', '.join(missing)} in {best}")
