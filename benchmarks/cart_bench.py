"""CART merge of eight ViT-B/16-shaped checkpoints: full SVD against randomized SVD.

Builds (once, cached in --work) a base and eight task checkpoints shaped like ViT-B/16
(~86M parameters each: patch embed 768x3x16x16, cls token, pos embed 197x768, 12 blocks of
qkv 2304x768, proj 768x768, fc1 3072x768, fc2 768x3072 with biases and two LayerNorms, final
norm). Each task = base + a task vector: on every 2-D weight a low-rank part of rank
``--task-rank`` * min(m, n) (default 0.1, CART's default rank) in random subspaces, its
singular values decaying geometrically from 0.2 to 0.06, plus dense noise of std 1e-4 on
every tensor (float32). So the centred task vectors have a spectrum like fine-tuned ones
(a decaying head, then a floor): a drop right at the default cut, where the old fixture
(eight rank-16 parts of equal scale) had sigma_77 ~ sigma_78 and any two solvers could pick
different, equally good subspaces. Then runs ``mergelab merge --method cart`` with
``svd=full`` and ``svd=randomized`` on ``--cores`` cores (taskset, BLAS threads capped)
under ``/usr/bin/time -v`` and reports wall time, peak RSS, the spectrum of one centred
task vector around the cut, and the relative difference between the two merges on the
2-D weights.

    python benchmarks/cart_bench.py --work /tmp/cart-bench        # ~3.1 GB of fixtures
    python benchmarks/cart_bench.py --work /tmp/cb --blocks 1 --cores 1   # a smoke run
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
from mergelab.methods.svd import rank_for

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


def low_rank(g: np.random.Generator, m: int, n: int, k: int) -> np.ndarray:
    """U diag(s) V^T with random orthonormal U [m, k], V [n, k] and s decaying
    geometrically from 0.2 to 0.06."""
    u = np.linalg.qr(g.standard_normal((m, k), dtype=np.float32))[0]
    v = np.linalg.qr(g.standard_normal((n, k), dtype=np.float32))[0]
    s = np.geomspace(0.2, 0.06, k).astype(np.float32)
    return (u * s) @ v.T


def build(work: Path, blocks: int, tasks: int, task_rank: float) -> list[Path]:
    """The fixtures, in a folder named by everything that defines them (so a run with other
    settings, or the older fixture, is never reused by mistake)."""
    folder = work / f"fixture-v2-b{blocks}-t{tasks}-r{task_rank:g}"
    paths = [folder / "base.safetensors"]
    paths += [folder / f"task{i}.safetensors" for i in range(tasks)]
    if all(p.exists() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
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
                delta += low_rank(g, m, n, rank_for(min(m, n), task_rank))
            task[name] = value + delta
        save_state_dict(task, paths[i + 1], force=True)
    return paths


def spectrum_at_cut(paths: list[Path], name: str, rank: float) -> str:
    """sigma_k and sigma_{k+1} of the first task's centred task vector on ``name``: how
    well separated the subspace CART keeps is from the rest."""
    ckpts = [open_checkpoint(p) for p in paths]
    try:
        values = np.stack([c.read_array(name) for c in ckpts]).astype(np.float64)
    finally:
        for c in ckpts:
            c.close()
    s = np.linalg.svd(values[0] - values.mean(0), compute_uv=False)
    k = rank_for(min(values.shape[1:]), rank)
    return (
        f"{name}: centred task vector 1, k = {k}: sigma_k {s[k - 1]:.4f}, "
        f"sigma_k+1 {s[k]:.4f} (ratio {s[k] / s[k - 1]:.2f}), sigma_1 {s[0]:.4f}"
    )


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
    ap.add_argument("--rank", type=float, default=0.1, help="CART's rank")
    ap.add_argument(
        "--task-rank",
        type=float,
        default=0.1,
        help="rank of the fixture's task vectors' low-rank part, a fraction of min(m, n)",
    )
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = build(args.work, args.blocks, args.tasks, args.task_rank)
    with open_checkpoint(paths[1]) as ckpt:
        params = sum(i.numel for i in ckpt.infos.values())
    print(
        f"fixtures: {args.tasks} tasks x {params / 1e6:.1f}M parameters "
        f"({time.perf_counter() - t0:.0f} s); {args.cores} cores, rank {args.rank}"
    )
    print(spectrum_at_cut(paths[1:], "blocks.0.attn.proj.weight", args.rank))
    outs = {}
    for solver in ("full", "randomized"):
        out = paths[0].parent / f"cart-{solver}-r{args.rank:g}.safetensors"
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
