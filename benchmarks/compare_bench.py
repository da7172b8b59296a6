"""Evaluate once, combine many: what the combinations cost next to evaluating the models.

Fine-tunes ``--n-models`` small models from one shared start on an embedded dataset (seconds
on a CPU), saves them as safetensors, then runs ``mergelab.compare`` twice on a fresh cache:

(a) evaluating every model once on val and test,
(b) all combinations together (both soups, five ensembles, their greedy searches),
(c) within (b), the merged models' own forward passes (one per greedy-soup candidate, plus
    the final soups on val/test),

and prints the forward passes (whole-split passes, batches, images) and wall time of each,
with the ratio (b) / ((a) + (c)), which should stay at or below 1.5: apart from the soups'
unavoidable passes, combining is nearly free because it reuses the cached outputs. The second
run shows that a repeated comparison runs no forward pass at all.

    python benchmarks/compare_bench.py                    # mnist5k, 10 MLPs
    python benchmarks/compare_bench.py --data digits --n-models 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from mergelab.compare import run_compare
from mergelab.compare_cli import format_table
from mergelab.data import load_dataset
from mergelab.evaluate.toy import train_toy_models

RATIO_LIMIT = 1.5


def _line(label: str, passes: int, batches: int, samples: int, seconds: float) -> str:
    return (
        f"  {label:<34} {passes:>5} passes {batches:>6} batches {samples:>8} images "
        f"{seconds * 1e3:>9.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="mnist5k", help="embedded dataset: mnist5k or digits")
    ap.add_argument("--arch", default="mlp")
    ap.add_argument("--n-models", type=int, default=10)
    ap.add_argument("--pretrain-steps", type=int, default=150)
    ap.add_argument("--steps", type=int, default=40, help="fine-tuning steps per model")
    ap.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--repeat", type=int, default=3, help="cold runs; times are medians")
    ap.add_argument("--work", help="folder for checkpoints and cache (default: a temp folder)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        t0 = time.perf_counter()
        splits = load_dataset(args.data)
        t1 = time.perf_counter()
        sds = train_toy_models(
            splits,
            arch=args.arch,
            n_models=args.n_models,
            steps=args.steps,
            pretrain_steps=args.pretrain_steps,
            seed=0,
        )
        ckpt_dir = work / "ckpts"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, sd in enumerate(sds):
            paths.append(ckpt_dir / f"{args.arch}_{i:02d}.safetensors")
            save_file(sd, str(paths[-1]))
        t2 = time.perf_counter()
        kw = {"arch": args.arch, "data": splits, "batch_size": args.batch_size, "progress": False}
        runs = []
        for r in range(args.repeat):  # each on a fresh cache: every model is evaluated
            cache = work / f"cache-{r}"
            runs.append(run_compare(paths, out=work / "out", cache_dir=cache, **kw))
        second = run_compare(paths, cache_dir=cache, **kw)

    def median(key: str) -> float:
        return statistics.median(run.timings[key] for run in runs)

    first = runs[0]
    counter = first.evaluator.counter
    a_t, b_t, c_t = median("evaluate"), median("combine"), median("soup_passes")
    sizes = {s: splits.size(s) for s in ("train", "val", "test")}
    print(
        f"dataset {splits.info.name} {sizes}, arch {args.arch}, {args.n_models} models, "
        f"device {first.evaluator.device}, torch threads {torch.get_num_threads()}"
    )
    print(f"setup: load data {t1 - t0:.2f} s, train {args.n_models} models {t2 - t1:.2f} s")
    print(f"first runs (empty cache; wall times are medians of {args.repeat} runs):")
    print(
        _line(
            "(a) evaluate models on val+test",
            counter.passes("model"),
            counter.batches("model"),
            counter.samples("model"),
            a_t,
        )
    )
    soup = ("soup", "bn")
    c_pass = sum(counter.passes(k) for k in soup)
    c_batch = sum(counter.batches(k) for k in soup)
    c_samp = sum(counter.samples(k) for k in soup)
    print(_line("(b) all combinations together", c_pass, c_batch, c_samp, b_t))
    print(_line("(c) merged models' own passes", c_pass, c_batch, c_samp, c_t))
    greedy = first.combinations["Greedy Soup"]
    print(
        f"      greedy soup: {len(greedy.steps)} candidates on val, kept "
        f"{len(greedy.members)} models; final soups on test: "
        f"{counter.passes('soup', 'test')}"
    )
    per = ", ".join(
        f"{m} {statistics.median(r.combinations[m].seconds for r in runs) * 1e3:.1f}"
        for m in first.combinations
    )
    print(f"      per method (ms): {per}")
    print(
        f"      outside the passes in (b): {(b_t - c_t) * 1e3:.1f} ms "
        f"(merging, hashing, ensembles, greedy scoring)"
    )
    ratio = b_t / (a_t + c_t)
    verdict = "ok" if ratio <= RATIO_LIMIT else f"ABOVE {RATIO_LIMIT}"
    print(
        f"ratio (b) / ((a) + (c)) = {b_t:.3f} / ({a_t:.3f} + {c_t:.3f}) = {ratio:.2f}  [{verdict}]"
    )
    print(
        f"cost counting (params, FLOPs) {median('cost') * 1e3:.1f} ms, "
        f"total {median('total'):.2f} s"
    )
    p2 = second.passes
    n2 = sum(v["passes"] for v in p2.values())
    print(
        f"second run (same checkpoints, warm cache): {n2} forward passes, evaluate "
        f"{second.timings['evaluate'] * 1e3:.1f} ms, combine "
        f"{second.timings['combine'] * 1e3:.1f} ms, total {second.timings['total']:.2f} s"
    )
    print()
    print(format_table(first.frame))
    return 0 if ratio <= RATIO_LIMIT and n2 == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
