"""The ``mergelab diagnose`` sub-command (registered by ``mergelab.cli``)."""

from __future__ import annotations

import argparse

from mergelab.compare_cli import MAX_SEED, _int_in
from mergelab.errors import ConfigError

__all__ = ["add_diagnose_parser"]

DESCRIPTION = """\
Will A and B merge well? Pairwise metrics of "Demystifying Mergeability" for two fine-tunes
A and B of one BASE, grouped by what they need:

  weights only (always): task-vector cosine, L2, dot, angle, magnitude ratio; effective /
    stable rank, spectral gap and singular-value ratio of [tau_A; tau_B]; the layer-wise
    effective rank; per 2-D weight: singular-value-spectrum and subspace overlaps
    (streamed tensor by tensor: memory follows the largest tensor, not the model);
  with --data (and --arch): activation L2 / cosine / dot / magnitude ratio, encoder- and
    input-gradient cosine / L2 / dot (each model on its own task with its own head), and
    the loss barrier along (1 - alpha) A + alpha B;
  weight statistics: max |w| and variance per tensor before and after averaging.

Examples:
  mergelab diagnose ft1/ ft2/ --base base/
  mergelab diagnose a.safetensors b.safetensors --base base.safetensors --json out.json
  mergelab diagnose a.safetensors b.safetensors --base p.safetensors --arch cnn \\
      --data mt-rotated mt-parity --exclude '^head\\.' --samples 256

Give A and B before --data (it takes one or two specs). --json FILE writes every value
with its formula (under "descriptions"); a skipped group is listed with what to pass."""


def add_diagnose_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``diagnose`` to the ``mergelab`` sub-commands."""
    p = sub.add_parser(
        "diagnose",
        help="pairwise mergeability metrics of two fine-tunes of one base (table and JSON)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("a", metavar="A", help="first fine-tuned checkpoint (file or folder)")
    p.add_argument("b", metavar="B", help="second fine-tuned checkpoint")
    p.add_argument("--base", required=True, help="the checkpoint both were fine-tuned from")
    p.add_argument("--json", metavar="FILE", help="also write every metric, described, to FILE")
    w = p.add_argument_group("weights")
    w.add_argument(
        "--exclude",
        metavar="REGEX",
        help="leave tensors whose name matches out of the weight metrics (e.g. '^head\\.' "
        "when the tasks' heads differ)",
    )
    w.add_argument(
        "--gram-max",
        type=_int_in(0, 10**6),
        default=1024,
        metavar="N",
        help="bottom-k overlaps (eigenvectors of the N x N float64 Gram matrix, 3 N^2 x 8 "
        "bytes and O(N^3) time per weight) only for weights with min(m, n) <= N; larger ones "
        "get a randomized top-k SVD (default 1024; 0: top-k only)",
    )
    w.add_argument(
        "--spectrum-k",
        type=_int_in(1, 10**6),
        default=100,
        help="singular values compared (default 100)",
    )
    w.add_argument(
        "--subspace-k",
        type=_int_in(1, 10**6),
        default=10,
        help="singular vectors per subspace (default 10)",
    )
    w.add_argument("--key", help="torch checkpoints: dotted key of the state dict (detected)")
    w.add_argument("--strip-prefix", help="torch checkpoints: prefix to strip (detected)")
    d = p.add_argument_group("data (optional)")
    d.add_argument(
        "--data",
        nargs="+",
        metavar="SPEC",
        help="dataset spec for both models, or two (A's task, B's task): digits, mnist5k, "
        "mt-rotated, cifar10:PATH ... (see `mergelab compare --help`)",
    )
    d.add_argument(
        "--arch",
        help="architecture of A and B (cnn, mlp, resnet8, tv:NAME ...); "
        "read from mergelab-trained checkpoints when not given",
    )
    d.add_argument(
        "--heads",
        nargs=2,
        metavar=("HEAD_A", "HEAD_B"),
        help="head tensors of A and B, for backbone-only checkpoints",
    )
    d.add_argument("--head", help="dotted name of the final nn.Linear (guessed by default)")
    d.add_argument(
        "--samples", type=_int_in(1, 10**7), default=256, help="samples per task (default 256)"
    )
    d.add_argument("--split", default="val", choices=("train", "val", "test"), help="default val")
    d.add_argument(
        "--seed",
        type=_int_in(0, MAX_SEED),
        default=0,
        help="seed of the dataset split and the sample draw (default 0)",
    )
    d.add_argument(
        "--layer",
        help="module whose output the activation metrics compare (default: the penultimate "
        "features)",
    )
    d.add_argument(
        "--alphas",
        type=_int_in(2, 1001),
        default=11,
        help="points on the line from A to B for the loss barrier (default 11)",
    )
    d.add_argument("--batch-size", type=_int_in(1, 10**6), default=256, help="default 256")
    d.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when present, else cpu)")
    p.set_defaults(run=_run_diagnose)


def _run_diagnose(args: argparse.Namespace) -> int:
    from mergelab.atomic import atomic_write_text
    from mergelab.checks import output_file
    from mergelab.diagnose import diagnose

    if args.data is not None and len(args.data) > 2:
        raise ConfigError(f"--data: give one spec, or two (A's, B's); got {len(args.data)}")
    if args.json:
        inputs = [args.a, args.b, args.base, *(args.heads or [])]
        output_file(args.json, inputs, "--json", command="diagnose")
    result = diagnose(
        args.a,
        args.b,
        args.base,
        data=args.data,
        arch=args.arch,
        heads=args.heads,
        head=args.head,
        exclude=args.exclude,
        samples=args.samples,
        seed=args.seed,
        split=args.split,
        layer=args.layer,
        alphas=args.alphas,
        batch_size=args.batch_size,
        device=args.device,
        spectrum_k=args.spectrum_k,
        subspace_k=args.subspace_k,
        gram_max=args.gram_max,
        key=args.key,
        strip_prefix=args.strip_prefix,
    )
    print(result.table())
    if args.json:
        atomic_write_text(args.json, result.to_json())
        print(f"wrote {args.json}")
    return 0
