"""CART merge of eight ViT-B/16-shaped checkpoints: full SVD against randomized SVD.

Builds (once, cached in --work) a base and eight task checkpoints shaped like ViT-B/16
(~86M parameters each: patch embed 768x3x16x16, cls token, pos embed 197x768, 12 blocks of
qkv 2304x768, proj 768x768, fc1 3072x768, fc2 768x3072 with biases and two LayerNorms, final
norm), each task = base + a rank-16 task vector + small dense noise (float32). Then runs
``mergelab merge --method cart`` with ``svd=full`` and ``svd=randomized`` on ``--cores``
cores (taskset, BLAS threads capped) under ``/usr/bin/time -v`` and reports wall time, peak
RSS and the relative difference between the two merges on the low-rank part.

    python benchmarks/cart_bench.py --work /tmp/cart-bench        # ~3.1 GB of fixtures
    python benchmarks/cart_bench.py --work /tmp/cb --blocks 2       # a smoke run
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mergelab.io import open_checkpoint
from mergelab.io.writer import save_state_dict

DIM, MLP, PATCH = 768, 3072, 16


def vit_shapes(blocks: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embed.proj.weight": (DIM, 3, PATCH, PATCH),
        "patch_embed.proj.bias": (DIM,),
        "cls_token": (1, 1, DIM),
        "pos_embed": (1, 197, DIM),
    }
    for b in range(blocks):
        p = f"blocks.{b}."
        shapes |= {
            p + "norm1.weight": (DIM,),
            p + "norm1.bias": (DIM,),
            p + "attn.qkv.weight": (3 * DIM, DIM),
            p + "attn.qkv.bias": (3 * DIM,),
            p + "attn.proj.weight": (DIM, DIM),
            p + "attn.proj.bias": (DIM,),
            p + "norm2.weight": (DIM,),
            p + "norm2.bias": (DIM,),
            p + "mlp.fc1.weight": (MLP, DIM),
            p + "mlp.fc1.bias": (MLP,),
            p + "mlp.fc2.weight": (DIM, MLP),
            p + "mlp.fc2.bias": (DIM,),
        }
    return shapes | {"norm.weight": (DIM,), "norm.bias": (DIM,)}


def build(work: Path, blocks: int, tasks: int) -> list[Path]:
    paths = [work / "base.safetensors"] + [work / f"task{i}.safetensors" for i in range(tasks)]
    if all(p.exists() for p in paths):
        return paths
    shapes = vit_shapes(blocks)
    rng = np.random.default_rng(0)
    base = {n: (0.02 * rng.standard_normal(s, dtype=np.float32)) for n, s in shapes.items()}
    save_state_dict(base, paths[0], force=True)
    for i in range(tasks):
        g = np.random.default_rng(100 + i)
        task = {}
        for name, value in base.items():
            delta = 1e-4 * g.standard_normal(value.shape, dtype=np.float32)
            if value.ndim == 2:
                m, n = value.shape
                left = g.standard_normal((m, 16), dtype=np.float32)
                delta += (left @ g.standard_normal((16, n), dtype=np.float32)) * (2e-3 / 16)
            task[name] = value + delta
        save_state_dict(task, paths[i + 1], force=True)
    return paths


def run(cmd: list[str], cores: int) -> tuple[float, float]:
    env = {**os.environ}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(cores)
    full = ["/usr/bin/time", "-v", "taskset", "-c", f"0-{cores - 1}", *cmd]
    start = time.perf_counter()
    done = subprocess.run(full, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return wall, (int(rss.group(1)) / 1024**2 if rss else float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/mergelab-cart-bench"))
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--rank", type=float, default=0.1)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = build(args.work, args.blocks, args.tasks)
    with open_checkpoint(paths[1]) as ckpt:
        params = sum(i.numel for i in ckpt.infos.values())
    print(
        f"fixtures: {args.tasks} tasks x {params / 1e6:.1f}M parameters "
        f"({time.perf_counter() - t0:.0f} s); {args.cores} cores, rank {args.rank}"
    )
    outs = {}
    for solver in ("full", "randomized"):
        out = args.work / f"cart-{solver}.safetensors"
        cmd = [
            sys.executable, "-m", "mergelab", "merge", "--method", "cart",
            "--models", *map(str, paths[1:]), "--param", f"rank={args.rank}",
            "--param", f"svd={solver}", "--out", str(out), "--force", "--no-progress",
        ]  # fmt: skip
        wall, rss = run(cmd, args.cores)
        outs[solver] = out
        print(f"cart svd={solver:10s} wall {wall:7.1f} s   peak RSS {rss:5.2f} GiB")
    tasks = [open_checkpoint(p) for p in paths[1:]]
    with open_checkpoint(outs["full"]) as a, open_checkpoint(outs["randomized"]) as b:
        worst = 0.0
        for name, info in a.infos.items():
            if len(info.shape) == 2:
                x, y = a.read(name), b.read(name)
                avg = np.mean([t.read(name) for t in tasks], 0)
                worst = max(worst, float(np.linalg.norm(x - y) / np.linalg.norm(x - avg)))
    for t in tasks:
        t.close()
    print(f"largest |full - randomized| / |full - average| over 2-D weights: {worst:.2e}")


if __name__ == "__main__":
    main()
