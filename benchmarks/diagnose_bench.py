"""``mergelab diagnose`` (weight-only metrics) on the Llama-shaped fixture of merge_bench.py.

Two fine-tunes and their base (hidden 1024, 8 layers, intermediate 2816, vocabulary 32000,
untied embeddings: ~168M parameters per checkpoint), built once by merge_bench's builder
(:func:`mergelab.fixtures.write_llama_fixture`) and cached in --work. Each setting runs
``mergelab diagnose ft1 ft2 --base base`` under ``/usr/bin/time -v`` with the page cache
warm: wall time and peak RSS. The default ``--gram-max 1024`` takes every weight of this
model (all have min(m, n) <= 1024) through the float64 Gram matrix of its short side (the
1024 x 1024 A^T A, B^T B and A^T B streamed row block by row block for m >= n, e.g. the
32000 x 1024 embedding and lm_head; the matrices held for m < n) and its eigenvectors,
for the top- and bottom-k metrics; ``--gram-max 0`` uses the randomized top-k SVD
everywhere (no bottom-k overlaps). (Before this path, the default took a float32 full SVD
of every weight: 94 s and 1.83 GB on this fixture.)

    python benchmarks/diagnose_bench.py
    python benchmarks/diagnose_bench.py --layers 2 --vocab 4000    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge_bench import timed, warm

from mergelab.fixtures import write_llama_fixture


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/mergelab-bench"))
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--gram-max", type=int, nargs="+", default=[1024, 0], help="settings to time")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    name = f"llama-h{args.hidden}-l{args.layers}-i{args.intermediate}-v{args.vocab}"
    folders = write_llama_fixture(
        args.work / name,
        hidden=args.hidden,
        layers=args.layers,
        intermediate=args.intermediate,
        vocab=args.vocab,
    )
    base, ft1, ft2 = folders[:3]
    rows = []
    for cap in args.gram_max:
        warm([base, ft1, ft2])
        out = args.work / f"{name}-diagnose-{cap}.json"
        cmd = [sys.executable, "-m", "mergelab.cli", "diagnose", str(ft1), str(ft2)]
        cmd += ["--base", str(base), "--gram-max", str(cap), "--json", str(out)]
        row = {"fixture": name, "gram_max": cap, **timed(cmd)}
        metrics = json.loads(out.read_text())
        row["matrices"] = metrics["layers"]["matrices"]
        row["bottom_matrices"] = metrics["layers"]["bottom_matrices"]
        row["right_subspace_overlap_bottom"] = metrics["layers"]["right_subspace_overlap_bottom"]
        row["cosine"] = metrics["weights"]["cosine"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
