"""The ``mergelab compare`` sub-command (registered by ``mergelab.cli``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from mergelab.errors import MergeError

MAX_SEED = 2**32 - 1  # NumPy's and torch's seeds are 32-bit on every platform
# Image side: the largest input of common classifiers is under 1024 (EfficientNet-B7 600,
# BEiT-L 512), and one batch of 256 RGB images of 1024x1024 in float32 is already 3 GiB.
MAX_IMG_SIZE = 1024

__all__ = ["add_compare_parser", "format_table"]


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in ``low..high`` (argparse names the option in errors)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: must be an integer {low}..{high}")
        return value

    return parse


def add_compare_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``compare`` to the ``mergelab`` sub-commands."""
    p = subparsers.add_parser(
        "compare",
        help="evaluate checkpoints once, then score every soup and ensemble of them",
        description=(
            "Evaluate each checkpoint once on val and test (outputs cached by content), then "
            "compare Uniform/Greedy Soup and logit/feature ensembles; selection uses val only. "
            "Input channels, a fixed image size and the classes are read from the checkpoints "
            "and the images adapt to them. Example: mergelab compare --arch resnet18 "
            "--data cifar100:PATH --models ckpts/*.safetensors --out DIR"
        ),
    )
    p.add_argument("--arch", required=True, help="architecture (built-in, tv:NAME, timm:NAME)")
    p.add_argument(
        "--num-classes", type=int, help="classes (default: the checkpoints', else the dataset's)"
    )
    p.add_argument("--data", required=True, help="dataset spec, e.g. digits or cifar100:PATH")
    p.add_argument("--models", nargs="+", required=True, metavar="CKPT", help="checkpoints")
    p.add_argument("--out", help="folder for results.csv and results.json")
    p.add_argument("--head", help="dotted name of the final nn.Linear (guessed by default)")
    p.add_argument(
        "--img-size",
        type=_int_in(1, MAX_IMG_SIZE),
        help="model input side (default: fixed by the checkpoints (ViT, MLP), else the dataset's)",
    )
    p.add_argument(
        "--in-chans",
        type=int,
        help="model input channels, 1 or 3 (default: the checkpoints', else the dataset's)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument(
        "--seed",
        type=_int_in(0, MAX_SEED),
        default=0,
        help=f"seed of the dataset's splits (0..{MAX_SEED})",
    )
    p.add_argument(
        "--strict-greedy", action="store_true", help="greedy: keep a model only if val improves"
    )
    p.add_argument(
        "--bn-recalibrate",
        action="store_true",
        help="re-estimate BatchNorm statistics of merged models on train data",
    )
    p.add_argument(
        "--cache-dir",
        help="cached outputs (default: $MERGELAB_CACHE/outputs, else ~/.cache/mergelab/outputs)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_compare)


def _si(n: float) -> str:
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f}{suffix}"
    return f"{n:.0f}"


def format_table(frame: Any) -> str:
    """One line per method (and per individual model): val/test primary metric, test NLL and
    ECE, parameters, FLOPs per image, members."""
    primary = next(m for m in frame["metric"].unique() if m not in ("nll", "ece"))
    columns = [("val", primary), ("test", primary), ("test", "nll"), ("test", "ece")]
    lines = []
    width = max(20, *(len(m) for m in frame["method"]))
    header = (
        f"{'method':<{width}} {'members':<24} "
        + " ".join(f"{s + ' ' + m:>13}" for s, m in columns)
        + f" {'params':>9} {'FLOPs':>9}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    keys = list(dict.fromkeys(zip(frame["method"], frame["members"], strict=True)))
    for method, members in keys:
        rows = frame[(frame["method"] == method) & (frame["members"] == members)]
        values = []
        for split, metric in columns:
            hit = rows[(rows["split"] == split) & (rows["metric"] == metric)]["value"]
            values.append(f"{hit.iloc[0]:>13.4f}" if len(hit) else f"{'-':>13}")
        n_all = rows["n_models"].iloc[0]
        label = members if len(members) <= 24 else f"{rows['n_members'].iloc[0]} of {n_all}"
        lines.append(
            f"{method:<{width}} {label:<24} "
            + " ".join(values)
            + f" {_si(rows['params'].iloc[0]):>9} {_si(rows['flops'].iloc[0]):>9}"
        )
    return "\n".join(lines)


def _run_compare(args: argparse.Namespace) -> int:
    from mergelab.compare import run_compare

    if args.batch_size < 1:
        raise MergeError(f"--batch-size must be positive, got {args.batch_size}")
    report = run_compare(
        args.models,
        arch=args.arch,
        num_classes=args.num_classes,
        data=args.data,
        out=args.out,
        head=args.head,
        img_size=args.img_size,
        in_chans=args.in_chans,
        batch_size=args.batch_size,
        seed=args.seed,
        strict_greedy=args.strict_greedy,
        bn_recalibrate=args.bn_recalibrate,
        cache_dir=args.cache_dir,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    frame = report.frame
    info = frame.iloc[0]
    print(f"{info['dataset']} / {info['arch']}: {info['n_models']} models, selection on val")
    print(format_table(frame))
    p = report.passes
    print(
        f"forward passes: {p['model']['passes']} model, {p['soup']['passes']} soup, "
        f"{p['bn']['passes']} BatchNorm (one model over one split each; cached ones not run)"
    )
    for note in report.notes:
        print(f"note: {note}")
    print(f"cache       {report.cache_dir}")
    for path in report.files:
        print(f"wrote       {path}")
    return 0
