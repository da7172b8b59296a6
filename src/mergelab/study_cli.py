"""``mergelab study [PRESET | CONFIG.yaml] --out DIR``."""

from __future__ import annotations

import argparse


def add_study_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "study",
        help="train ingredients, run every perspective of the paper, write the report",
        description=(
            "Reproduce 'Rethinking Weight-Averaged Model-merging' on your machine: templates, "
            "weights vs features, cross-task merging, weight statistics and magnitude. "
            "With no argument runs the embedded 'quick' preset (mnist5k and digits, no "
            "download). Presets: quick, paper (GPU and datasets on disk), tiny (seconds). "
            "Copy one with `mergelab study --show quick > my.yaml`, edit, then "
            "`mergelab study my.yaml`."
        ),
    )
    p.add_argument("config", nargs="?", default="quick", help="preset name or YAML file")
    p.add_argument("--out", default=None, help="output folder (default mergelab-study-NAME)")
    p.add_argument("--show", action="store_true", help="print the config YAML and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.set_defaults(run=_run_study)


def _run_study(args: argparse.Namespace) -> int:
    from mergelab.studies import load_config, run_study

    config, text = load_config(args.config)
    if args.show:
        print(text, end="")
        return 0
    out = args.out or f"mergelab-study-{config.name}"
    paths = run_study(config, out, progress=not args.no_progress)
    for label, path in paths.items():
        print(f"{label:8s} {path}")
    return 0
