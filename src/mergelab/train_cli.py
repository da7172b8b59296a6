"""The ``mergelab train`` sub-command (registered by ``mergelab.cli``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

from mergelab.errors import MergeError

__all__ = ["add_train_parser", "place_file"]


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
        "--cache-dir", help="trained runs (default: $MERGELAB_CACHE/ingredients or ~/.cache)"
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
    """Put ``source``'s bytes at ``dest`` atomically: a hard link when the file system allows
    (no copy of the data), else a copy; an existing ``dest`` is replaced in one step."""
    if dest.exists() and os.path.samefile(source, dest):
        return dest  # already this very file (a link from an earlier run)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    try:
        os.replace(tmp, dest)
    finally:
        # rename() between two links of one file is a no-op that leaves tmp behind
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


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
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise MergeError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache_dir).expanduser() if args.cache_dir else default_train_cache()
    paths = make_ingredients(
        recipe,
        cache_dir=cache,
        device=args.device,
        progress=not args.no_progress and sys.stderr.isatty(),
        threads=args.threads if args.threads > 0 else None,
        workers=args.workers,
        log=None if args.no_progress else _log,
    )
    width = max(2, len(str(len(paths) - 1)))
    placed: list[tuple[str, Path, str]] = []
    start = start_checkpoint(recipe, cache)
    if start is not None:
        placed.append(("start", place_file(start, out / "start.safetensors"), start.stem))
    for i, path in enumerate(paths):
        dest = place_file(path, out / f"ingredient-{i:0{width}d}.safetensors")
        placed.append((f"ingredient {i}", dest, path.stem))
    manifest = {
        "recipe": recipe.model_dump(mode="json"),
        "start": start.stem if start is not None else None,
        "ingredients": [stem for label, _, stem in placed if label != "start"],
    }
    manifest_tmp = out / f".ingredients.json.tmp-{os.getpid()}"
    manifest_tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(manifest_tmp, out / "ingredients.json")
    for _, dest, _ in placed:
        print(dest)
    return 0
