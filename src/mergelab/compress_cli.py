"""The ``mergelab compress`` and ``mergelab expand`` sub-commands (registered by
``mergelab.cli``): CART's compression of task models into their average plus rank-k factors
(see :mod:`mergelab.compress`)."""

from __future__ import annotations

import argparse

from mergelab.methods.svd import DEFAULT_EXCLUDE

__all__ = ["add_compress_parser", "add_expand_parser"]


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a fraction in (0, 1]")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer of at least 1")
    return value


def add_compress_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``compress`` to the ``mergelab`` sub-commands."""
    p = subparsers.add_parser(
        "compress",
        help="store task models as their average plus rank-k factors each (CART)",
        description=(
            "Write DIR/average.safetensors (the models' average, with the manifest) and "
            "DIR/task-NNN.safetensors (U S and V^T of each centred task vector's rank-k SVD on "
            "2-D weights; other tensors in full where they differ from the average). "
            "Example: mergelab compress --models ft1.safetensors ft2.safetensors --rank 0.1 "
            "--out packed/ ; then mergelab expand packed/ --task 1 --out ft1.rebuilt.safetensors"
        ),
    )
    p.add_argument("--models", nargs="+", required=True, metavar="CKPT", help="task models")
    p.add_argument(
        "--base",
        help="optional pre-trained model: not stored (the centre is the average); errors are "
        "then reported relative to each task vector",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--rank",
        type=_fraction,
        default=0.1,
        help="rank kept per matrix, as a fraction of min(m, n) (default 0.1; the cap with "
        "--energy)",
    )
    p.add_argument(
        "--energy",
        type=_fraction,
        help="keep the fewest singular values holding this fraction of ||d_t||^2",
    )
    p.add_argument("--svd", choices=("full", "randomized"), default="full", help="SVD solver")
    p.add_argument(
        "--pattern", default=".", help="regex of tensor names made low rank (default: all)"
    )
    p.add_argument(
        "--exclude",
        default=DEFAULT_EXCLUDE,
        help=f"regex of names kept out (default {DEFAULT_EXCLUDE!r}; '' for none)",
    )
    p.add_argument("--conv", action="store_true", help="also conv kernels, as [out, in*k*k]")
    p.add_argument("--seed", type=int, default=0, help="randomized SVD: seed")
    p.add_argument("--key", help="torch checkpoints: dotted key of the state dict (detected)")
    p.add_argument("--strip-prefix", help="torch checkpoints: prefix to strip (module. detected)")
    p.add_argument(
        "--force", action="store_true", help="replace mergelab's own earlier files there"
    )
    p.set_defaults(run=_run_compress)


def add_expand_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``expand`` to the ``mergelab`` sub-commands."""
    p = subparsers.add_parser(
        "expand",
        help="rebuild one task model from a folder written by mergelab compress",
        description=(
            "Rebuild task i (1-based, in the order given to compress) as average + U S V^T. "
            "Example: mergelab expand packed/ --task 2 --out ft2.safetensors"
        ),
    )
    p.add_argument("folder", help="folder written by mergelab compress")
    p.add_argument("--task", type=_positive, required=True, help="task number, from 1")
    p.add_argument("--out", required=True, help="NAME.safetensors or a folder")
    p.add_argument(
        "--force", action="store_true", help="replace mergelab's own earlier output there"
    )
    p.set_defaults(run=_run_expand)


def _run_compress(args: argparse.Namespace) -> int:
    from mergelab.compress import CompressOptions, compress

    options = CompressOptions(
        rank=args.rank,
        energy=args.energy,
        pattern=args.pattern,
        exclude=args.exclude,
        conv=args.conv,
        svd=args.svd,
        seed=args.seed,
    )
    summary = compress(
        args.models,
        args.out,
        base=args.base,
        options=options,
        force=args.force,
        key=args.key,
        strip_prefix=args.strip_prefix,
    )
    print(summary.describe())
    return 0


def _run_expand(args: argparse.Namespace) -> int:
    from mergelab.compress import expand

    out = expand(args.folder, args.task, args.out, force=args.force)
    print(f"wrote {out}")
    return 0
