"""``mergelab study [PRESET | CONFIG.yaml] [--out DIR] [--show] [--dry-run] [--workers N]
[--executor local|ray] [--address ADDR] [--units-per-gpu N]``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Exit status when the study ran but one of its sanity checks failed (2 is a usage or
# config error, see mergelab.cli.main).
SANITY_EXIT = 3

_DESCRIPTION = """\
Reproduce 'Rethinking Weight-Averaged Model-merging' on your machine: train the
ingredient models, then run every study (weights as templates, weight vs feature
averaging, merging across tasks, weight statistics, scaling the weights), or the
multi-task comparison of 'Revisiting Weight Averaging for Model Merging' (CART), or the
pairwise-metrics study of 'Demystifying Mergeability', and write a report.

What to run is a study config: a YAML file, or a preset, which is a config shipped
with mergelab and named by a word:
  quick  (the default) the embedded mnist5k and digits sets, small models; no
         download, about 10 minutes on 2 CPU cores (2 workers)
  tiny   about a minute on 2 CPU cores (30-90 s); for smoke tests
  paper  the paper's grid; a GPU and the datasets and pretrained checkpoints on disk
         (edit its DATA/... and PRETRAINED/... paths first)
  multitask-quick  seven MNIST-derived tasks, one backbone fine-tuned per task, merged
         by WA, TA, TIES, DARE, TSV-M, Iso-C and CART; about 3 minutes on 2 cores. Its
         `multitask:` section can name your own checkpoints instead (`pretrained:`,
         `checkpoints:`, `tasks:`; see README), and then nothing is trained
  mergeability  the same suite: every task pair measured (28 metrics) and merged by
         WA, TA, TSV-M, TIES and DARE; a sparse model per method predicts the merge from
         the metrics, leave-one-task-out; about 2 minutes on 2 cores
To change one: `mergelab study paper --show > my.yaml`, edit, `mergelab study my.yaml`.
`mergelab study my.yaml --dry-run` first shows what it would cost: training runs,
optimizer steps, evaluation passes and GPU hours, without reading data or training.
It checks the config too, and lists the dataset and checkpoint paths that are not on
this machine (a warning: a dry run may plan for another machine). A real run checks
everything, paths included, and builds each model once on its dataset's input (on
the meta device: no memory, no compute), before it creates its folder or trains
anything. A problem is one line naming the file and the key, e.g.
  my.yaml: magnitude.factors: -5 refused (allowed: finite numbers > 0)

Outputs, in --out (default mergelab-study-NAME): results.csv (one tidy table, every
number of every study), outcomes.npz (per-example outcomes behind the uncertainty
intervals), claims.md (each claim of the paper with its verdict) and report.html (a
self-contained report: tables, figures, claims). Trained models (runs/) and model
outputs (cache/) are kept there by content, so a rerun into the same folder trains
and evaluates nothing that is already done, and an interrupted run resumes.
Every training run and the outputs of every trained model are units of work, run by
--executor (local: --workers at a time on this machine; ray: on a Ray cluster or a
local Ray instance); units.csv records each unit's attempts, time, host and errors.
A unit that raises is tried again (twice); the others go on, and a rerun does only
what failed.

Exit status: 0 done; 2 a config or usage error; 3 the study finished but a sanity
check failed (a defect, named on stderr and in the report, which is still written).
"""


def _positive(text: str, expected: str = "a positive number") -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return n


def _workers(text: str) -> int | str:
    return text if text == "auto" else _positive(text, "'auto' or a positive number")


def add_study_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "study",
        help="train ingredients, run every study of the paper, write the report",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "config",
        nargs="?",
        default="quick",
        metavar="PRESET|CONFIG",
        help="a preset (quick, tiny, paper, multitask-quick, mergeability) or a study config "
        "YAML file (default: quick)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default mergelab-study-NAME); rerunning into it reuses every "
        "finished training run and model output",
    )
    p.add_argument("--show", action="store_true", help="print the config's YAML and exit")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config and print what the study would do (training runs, optimizer "
        "steps, evaluation passes, GPU hours), then exit; reads no on-disk data, trains "
        "nothing, creates no folder; dataset and checkpoint paths missing here are listed "
        "as a warning",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default="auto",
        metavar="N",
        help="units (training runs, model outputs) at once (default auto: on GPUs, GPUs x "
        "--units-per-gpu; else one per core, up to 4); with --executor ray and no --address, "
        "the local Ray instance's cores. Changes the wall time only: every run is seeded, so "
        "results are identical",
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where training runs and model outputs run: local (this machine, --workers at a "
        "time) or ray (a Ray cluster at --address, else a local Ray instance with --workers "
        "cores; pip install 'mergelab[ray]'). Same results either way",
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="with --executor ray: the running cluster (auto, HOST:6379 or "
        "ray://HOST:10001); OUT must be on storage every node mounts at the same path",
    )
    p.add_argument(
        "--units-per-gpu",
        type=_positive,
        default=1,
        metavar="N",
        help="training runs or evaluations that share one GPU at once (default 1)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=_run_study)


def auto_workers(device: str | None, units_per_gpu: int = 1) -> int:
    """On GPUs, ``units_per_gpu`` per GPU (1: one process keeps a GPU busy); else one per
    core, at most 4."""
    if device is None:
        from mergelab.device import choose_device

        device = choose_device(None).type
    if device.startswith("cuda"):  # also when planning on a machine without one
        import torch

        gpus = torch.cuda.device_count() if device == "cuda" else 1
        return max(1, gpus) * units_per_gpu
    return max(1, min(os.cpu_count() or 1, 4))


def _run_study(args: argparse.Namespace) -> int:
    from mergelab.studies import load_config, run_study

    config, text = load_config(args.config)
    if args.show:
        print(text, end="")
        return 0
    if args.dry_run:
        from mergelab.studies.plan import plan_study
        from mergelab.studies.validate import check_dry_run, missing_warning

        missing = check_dry_run(config)
        print(plan_study(config).render())
        if missing:
            print(f"\n{missing_warning(missing)}")
        return 0
    workers = (
        auto_workers(config.device, args.units_per_gpu) if args.workers == "auto" else args.workers
    )
    out = args.out or f"mergelab-study-{config.name}"
    paths = run_study(
        config,
        out,
        progress=not args.no_progress,
        workers=workers,
        executor=args.executor,
        address=args.address,
        units_per_gpu=args.units_per_gpu,
    )
    failed = list(paths.get("sanity_failures") or [])
    for label, path in paths.items():
        if label != "sanity_failures" and isinstance(path, str | Path):
            print(f"{label:8s} {path}")
    if failed:
        print(
            f"mergelab: sanity checks failed: {', '.join(map(str, failed))} (a defect, not a "
            f"finding; see {paths.get('report', out)})",
            file=sys.stderr,
        )
        return SANITY_EXIT
    return 0
