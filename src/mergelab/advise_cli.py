"""The ``mergelab advise`` sub-command (registered by ``mergelab.cli``)."""

from __future__ import annotations

import argparse
import math

from mergelab.compare_cli import MAX_IMG_SIZE, MAX_SEED, _int_in

__all__ = ["add_advise_parser"]

DESCRIPTION = """\
Should you merge these fine-tuned models (and how) or ensemble them? Each model is run once
on the data's val and test splits (cached), the soups (Uniform, Greedy) and the ensembles
are built from those outputs, and the choice is made on val only:

  MERGE     when the best ensemble's val advantage over the best merge is within the noise
            (paired bootstrap over val examples) or within --tolerance points: the merge
            gives that accuracy at 1/N of the inference cost;
  ENSEMBLE  when the ensemble is better by more than --tolerance beyond the noise;
  SINGLE    (the best model alone) when merging loses accuracy beyond the noise, e.g.
            models that do not share a start, and the ensemble does not pay for itself.

Every option is listed with its val and test accuracy and its inference cost relative to
one model; the evidence lines give the intervals, the greedy soup's members and, with
--base, the models' task-vector cosine and distance (weights only, streamed).

Examples:
  mergelab advise --arch resnet18 --data cifar100:/data/cifar-100-python --models ft/*.safetensors
  mergelab advise --arch cnn --data mnist5k --models a.safetensors b.safetensors \\
      --base pre.safetensors --tolerance 0.5 --json advice.json"""


def _points(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text}: give a finite number of points >= 0")
    return value


def add_advise_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``advise`` to the ``mergelab`` sub-commands."""
    p = sub.add_parser(
        "advise",
        help="merge or ensemble? a recommendation on your models and data, with the evidence",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", nargs="+", required=True, metavar="CKPT", help="checkpoints (2+)")
    p.add_argument("--arch", required=True, help="architecture (built-in, tv:NAME, timm:NAME)")
    p.add_argument("--data", required=True, help="dataset spec, e.g. digits or cifar100:PATH")
    p.add_argument("--base", help="the checkpoint the models were fine-tuned from (optional)")
    p.add_argument(
        "--tolerance",
        type=_points,
        default=0.0,
        metavar="POINTS",
        help="accuracy (points) an N-times inference cost must buy (default 0)",
    )
    p.add_argument("--json", metavar="FILE", help="write the advice, every number, to FILE")
    p.add_argument("--out", help="folder for advice.json")
    p.add_argument("--head", help="dotted name of the final nn.Linear (guessed by default)")
    p.add_argument("--img-size", type=_int_in(1, MAX_IMG_SIZE), help="model input side")
    p.add_argument("--in-chans", type=int, help="model input channels, 1 or 3")
    p.add_argument("--batch-size", type=_int_in(1, 10**6), default=256, help="default 256")
    p.add_argument(
        "--seed", type=_int_in(0, MAX_SEED), default=0, help="seed of the dataset's splits"
    )
    p.add_argument("--strict-greedy", action="store_true", help="greedy: keep only if val improves")
    p.add_argument("--cache-dir", help="cached outputs (default: as `mergelab compare`)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when present, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_advise)


def _run_advise(args: argparse.Namespace) -> int:
    from mergelab.advise import advise

    result = advise(
        args.models,
        arch=args.arch,
        data=args.data,
        base=args.base,
        tolerance=args.tolerance,
        out=args.out,
        json_path=args.json,
        progress=not args.no_progress,
        head=args.head,
        img_size=args.img_size,
        in_chans=args.in_chans,
        batch_size=args.batch_size,
        seed=args.seed,
        strict_greedy=args.strict_greedy,
        cache_dir=args.cache_dir,
        device=args.device,
    )
    print(result.table())
    for f in result.files:
        print(f"wrote {f}")
    return 0
