"""The ``mergelab`` command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import NoReturn

from mergelab.errors import MergeError, MergelabError

SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)
UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_size(text: str) -> int:
    """``5GB`` -> 5e9, ``500MiB`` -> 500 * 2**20."""
    match = SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MiB)")
    number, unit = match.groups()
    unit = unit.upper()
    factor = UNITS[unit[:1]] if "I" not in unit else 1024 ** " KMGT".index(unit[0])
    size = int(float(number) * factor)
    if size < 1:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} is less than one byte")
    return size


def _merge_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge checkpoints tensor by tensor into a safetensors file or folder",
        description=(
            "Merge checkpoints from a recipe YAML (mergekit-style) or from options. A folder "
            "output of Hugging Face model folders also gets the base's (else the first "
            "model's) config.json, generation_config.json and tokenizer files, so "
            "transformers loads it (with a merged vocabulary for tokenizer_source: union or "
            "tokenizer:). "
            "Examples: mergelab merge recipe.yaml --out merged/ ; "
            "mergelab merge --method ties --base B --models A1 A2 --param density=0.2 --out M/ ; "
            "mergelab merge mergekit.yml --out M/ --compat mergekit (mergekit's arithmetic, "
            "its bytes)"
        ),
    )
    p.add_argument("recipe", nargs="?", help="recipe YAML (merge_method, base_model, models, ...)")
    p.add_argument("--method", help="merge method (see `mergelab methods`)")
    p.add_argument("--base", help="base model (task-vector methods)")
    p.add_argument("--models", nargs="+", default=[], metavar="CKPT", help="input checkpoints")
    p.add_argument("--weights", nargs="+", type=float, metavar="W", help="one weight per model")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="method parameter; per-model ones (weight, density) apply to every model",
    )
    p.add_argument(
        "--dtype",
        help="output dtype of floating tensors (needed for mixed inputs); with --compat "
        "mergekit also the compute dtype",
    )
    p.add_argument(
        "--compat",
        choices=["mergekit"],
        help="mergekit: compute in the recipe's dtype (else the inputs') as mergekit does, "
        "for its bytes; default: float32 throughout, rounded once (more accurate)",
    )
    p.add_argument("--key", help="torch checkpoints: dotted key of the state dict (detected)")
    p.add_argument("--strip-prefix", help="torch checkpoints: prefix to strip (module. detected)")
    p.add_argument(
        "--out",
        help="output: NAME.safetensors (one file) or a folder (other files in it are kept); "
        "never an input or a folder holding one",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace mergelab's own earlier output there (never an input or another file)",
    )
    p.add_argument(
        "--max-shard-size",
        type=parse_size,
        default="5GB",
        help="folder outputs: largest shard (default 5GB)",
    )
    p.add_argument(
        "--no-copy-tokenizer",
        action="store_true",
        help="folder outputs of Hugging Face model folders: leave the tokenizer files out "
        "(config.json and generation_config.json are still copied)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan; read no tensor data")
    p.add_argument("-v", "--verbose", action="store_true", help="list every tensor in the plan")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_merge)


def _recipe_from_args(args: argparse.Namespace):
    from mergelab.recipe import ModelEntry, Recipe, parse_assignment

    if args.recipe:
        if args.method or args.models or args.base:
            raise MergeError("give either a recipe file or --method/--models/--base, not both")
        recipe = Recipe.from_yaml(args.recipe)
    else:
        if not args.method:
            raise MergeError("give a recipe file, or --method with --models")
        if not args.models:
            raise MergeError("--models: give the checkpoints to merge (one or more)")
        models = [ModelEntry(model=m) for m in args.models]
        recipe = Recipe(merge_method=args.method, models=models, base_model=args.base)
    params = dict(recipe.parameters)
    params.update(parse_assignment(a) for a in args.param)
    if args.weights:
        if len(args.weights) != len(recipe.models):
            raise MergeError(
                f"--weights: {len(args.weights)} weights for {len(recipe.models)} models"
            )
        recipe.models = [
            e.model_copy(update={"parameters": {**e.parameters, "weight": w}})
            for e, w in zip(recipe.models, args.weights, strict=True)
        ]
    update = {"parameters": params}
    for name in ("dtype", "compat", "key", "strip_prefix"):
        if getattr(args, name) is not None:
            update[name] = getattr(args, name)
    return recipe.model_copy(update=update)


def _run_merge(args: argparse.Namespace) -> int:
    from mergelab.engine import check_plan_output, merge
    from mergelab.engine.api import open_plans

    recipe = _recipe_from_args(args)
    if args.dry_run:
        plans, layers = open_plans(recipe)
        try:
            files = None
            if args.out:
                files = check_plan_output(
                    plans,
                    args.out,
                    force=args.force,
                    max_shard_bytes=args.max_shard_size,
                    copy_tokenizer=not args.no_copy_tokenizer,
                    layers=layers,
                )
            print("\n\n".join(p.describe(verbose=args.verbose) for p in plans))
            if files is not None:
                print(f"output      {args.out}: {', '.join(files)}")
        finally:
            for p in plans:
                for ckpt in p.inputs:
                    ckpt.close()
        return 0
    if not args.out:
        raise MergeError("--out is required (a .safetensors file or a folder)")
    out = merge(
        recipe,
        args.out,
        force=args.force,
        max_shard_bytes=args.max_shard_size,
        progress=not args.no_progress and sys.stderr.isatty(),
        copy_tokenizer=not args.no_copy_tokenizer,
    )
    print(f"wrote {out}")
    return 0


def _methods_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list merge methods and their parameters")
    p.add_argument("name", nargs="?", help="show one method in full")
    p.set_defaults(run=_run_methods)


def _run_methods(args: argparse.Namespace) -> int:
    from mergelab.methods import REGISTRY, get_method

    if args.name:
        try:
            cls = get_method(args.name)
        except ValueError as exc:
            raise MergeError(str(exc)) from None
        print(
            f"{cls.name}: {cls.summary}\nreference: {cls.reference}\nbase model: {cls.base_policy}"
        )
        print((cls.__doc__ or "").strip())
        print("parameters:")
        for key, f in cls.Params.model_fields.items():
            print(f"  {f.alias or key} = {'(required)' if f.is_required() else repr(f.default)}")
        print("per-model parameters:")
        for key, f in cls.PerModel.model_fields.items():
            print(f"  {key} = {f.default!r}")
        return 0
    for name in sorted(REGISTRY):
        cls = REGISTRY[name]
        print(f"{name:18s} {cls.summary}")
    return 0


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="generate small Llama-shaped checkpoints and merge them with every method",
    )
    p.add_argument("--out", default="mergelab-demo", help="folder for checkpoints and results")
    p.add_argument("--force", action="store_true", help="redo merged outputs already there")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from mergelab.demo import run_demo

    print(f"merge demo in {args.out}/ (checkpoints are generated once, then reused)")
    summary = run_demo(args.out, force=args.force)
    print(summary.read_text())
    print(f"summary: {summary}")
    return 0


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line on stderr (what is wrong, and where the help is), like
    every other error of mergelab, instead of argparse's usage block and message."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mergelab",
        description="Combine trained networks: merge in weight space, ensemble in feature space.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="print the full traceback of an error (accepted anywhere on the line)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    from mergelab.advise_cli import add_advise_parser
    from mergelab.compare_cli import add_compare_parser
    from mergelab.compress_cli import add_compress_parser, add_expand_parser
    from mergelab.diagnose_cli import add_diagnose_parser
    from mergelab.study_cli import add_study_parser
    from mergelab.train_cli import add_train_parser

    add_study_parser(sub)
    _merge_parser(sub)
    _methods_parser(sub)
    add_compare_parser(sub)
    add_train_parser(sub)
    _demo_parser(sub)
    add_compress_parser(sub), add_expand_parser(sub)
    add_diagnose_parser(sub)
    add_advise_parser(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``timeout``, Slurm and Kubernetes send) unwinds like Ctrl-C, so every
    staging file is removed on the way out."""


def _terminate(signum: int, frame: object) -> None:
    # A second signal must not cut the cleanup short: ignore both until main() returns.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Terminated


def _interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _one_line(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}" if where else reason


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Anticipated failures print one ``mergelab: error:`` line (status 2);
    anything else prints a short message, and the traceback only with ``--debug``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGINT, _interrupt)
    try:
        return args.run(args)
    except MergelabError as exc:
        if debug:
            traceback.print_exc()
        print(f"mergelab: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("mergelab: terminated; no partial output was left behind", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("mergelab: interrupted; no partial output was left behind", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``mergelab ... | head``): nothing to report to it.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit
        return 141
    except OSError as exc:
        if debug:
            traceback.print_exc()
        print(f"mergelab: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # the last line of defence for the CLI
        if debug:
            traceback.print_exc()
        print(
            f"mergelab: error: unexpected {type(exc).__name__}: {exc} "
            "(this is a bug; rerun with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])


if __name__ == "__main__":
    sys.exit(main())
