"""The ``mergelab train`` sub-command (registered by ``mergelab.cli``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import IO

from mergelab.atomic import atomic_write, atomic_write_text
from mergelab.checks import claim_output_folder, output_folder
from mergelab.errors import MergeError
from mergelab.io.output import written_by_mergelab

__all__ = ["add_train_parser", "place_file"]

MANIFEST = "ingredients.json"
_PLACED = re.compile(r"(start|ingredient-[0-9]+)\.safetensors")


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``mergelab`` sub-commands."""
    p = subparsers.add_parser(
        "train",
        help="train the ingredients of a merging experiment from a recipe (cached, resumable)",
        description=(
            "Train N models from a recipe YAML (dataset, arch, n_models, mode shared or "
            "independent, source, pretrain or init, train, head, lrs, augment). Every run is "
            "cached by the hash of "
            "its config, so a rerun trains nothing and an interrupted one resumes. "
            "Example: mergelab train recipe.yaml --out ingredients/"
        ),
    )
    p.add_argument("recipe", help="training recipe YAML")
    p.add_argument("--out", required=True, help="folder for ingredient-NN.safetensors")
    p.add_argument(
        "--device", choices=("cpu", "cuda"), help="where to train (default: CUDA if present)"
    )
    p.add_argument(
        "--cache-dir",
        help="trained runs (default: $MERGELAB_CACHE/ingredients, "
        "else ~/.cache/mergelab/ingredients)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads per run (default 1: fastest for small models, and the "
        "cached bytes then do not depend on the machine); 0 = torch's default",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs trained at once, each in its own process (default 1: in this process); "
        "the files are the same bytes either way",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_train)


def place_file(source: Path, dest: Path) -> Path:
    """Put a copy of ``source``'s bytes at ``dest`` atomically: a reflink where the file
    system makes one (copy-on-write), else a plain copy. Never a hard link: writing into
    ``dest`` must not reach the cached run."""

    def write(fh: IO[bytes]) -> None:
        with source.open("rb") as src:
            _copy(src, fh)

    return atomic_write(dest, write)


def _copy(src: IO[bytes], dst: IO[bytes]) -> None:
    """``copy_file_range`` (in the kernel; a reflink on Btrfs/XFS), else a read/write copy."""
    size = os.fstat(src.fileno()).st_size
    done = 0
    with contextlib.suppress(OSError, AttributeError):
        while done < size and (n := os.copy_file_range(src.fileno(), dst.fileno(), size - done)):
            done += n
    if done != size:  # not supported here (or the source changed size): copy it plainly
        src.seek(0)
        dst.seek(0)
        dst.truncate()
        shutil.copyfileobj(src, dst)


def _placed_before(out: Path) -> dict[str, str]:
    """Files an earlier ``mergelab train`` placed in ``out``, by its ``ingredients.json``:
    file name -> config hash of the run it is a copy of."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(manifest, dict):
        return {}
    files = manifest.get("files")
    if isinstance(files, dict):
        return {str(k): str(v) for k, v in files.items()}
    stems = manifest.get("ingredients")  # a manifest from before "files"
    if not isinstance(stems, list):
        return {}
    width = max(2, len(str(len(stems) - 1)))
    named = {f"ingredient-{i:0{width}d}.safetensors": str(s) for i, s in enumerate(stems)}
    if isinstance(manifest.get("start"), str):
        named["start.safetensors"] = manifest["start"]
    return named


def _remove_stale(out: Path, before: dict[str, str], keep: set[str]) -> None:
    """Remove what an earlier run placed in ``out`` and this one does not: only files named
    like ours that still hold the run the manifest says (a file the user put there or
    overwrote since is left alone)."""
    from mergelab.train.trainer import run_config_hash

    for name, stem in before.items():
        path = out / name
        if name in keep or not _PLACED.fullmatch(name) or path.is_symlink():
            continue
        if path.is_file() and run_config_hash(path) == stem:
            path.unlink()


def _ours(path: Path) -> bool:
    """A checkpoint mergelab wrote, or the manifest of an earlier ``mergelab train``."""
    if path.name != MANIFEST:
        return written_by_mergelab(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and {"recipe", "start", "ingredients"} <= manifest.keys()


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run_train(args: argparse.Namespace) -> int:
    from mergelab.train.recipe import IngredientRecipe, make_ingredients, start_checkpoint
    from mergelab.train.trainer import default_train_cache

    if args.threads < 0:
        raise MergeError(f"--threads must be >= 0, got {args.threads}")
    if args.workers < 1:
        raise MergeError(f"--workers must be >= 1, got {args.workers}")
    recipe = IngredientRecipe.from_yaml(args.recipe)
    width = max(2, len(str(recipe.n_models - 1)))
    names = [f"ingredient-{i:0{width}d}.safetensors" for i in range(recipe.n_models)]
    out = output_folder(
        Path(args.out).expanduser(),
        "--out",
        writes=["start.safetensors", *names, MANIFEST],
        ours=_ours,
    )
    if args.cache_dir:
        cache = output_folder(Path(args.cache_dir).expanduser(), "--cache-dir", writes=())
    else:
        cache = default_train_cache()
    paths = make_ingredients(
        recipe,
        cache_dir=cache,
        device=args.device,
        progress=not args.no_progress and sys.stderr.isatty(),
        threads=args.threads if args.threads > 0 else None,
        workers=args.workers,
        log=None if args.no_progress else _log,
    )
    start = start_checkpoint(recipe, cache)
    files = {"start.safetensors": start} if start is not None else {}
    files |= dict(zip(names, paths, strict=True))
    claim_output_folder(out, "train")
    _remove_stale(out, _placed_before(out), set(files))
    for name, source in files.items():
        place_file(source, out / name)
    manifest = {
        "recipe": recipe.model_dump(mode="json"),
        "start": start.stem if start is not None else None,
        "ingredients": [p.stem for p in paths],
        "files": {name: source.stem for name, source in files.items()},
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))
    for name in files:
        print(out / name)
    return 0
