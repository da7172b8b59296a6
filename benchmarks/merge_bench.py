"""Merge speed, memory and agreement with mergekit on a Llama-shaped fixture.

Builds (once, cached in --work) a base and four fine-tunes (base + small noise) with the
shapes of a Llama-style model: hidden 1024, 8 layers, intermediate 2816, vocabulary 32000,
untied embeddings, ~168M parameters, ~643 MB per fp32 checkpoint. Then, for linear,
task_arithmetic, ties and dare (density 0.5), breadcrumbs, model_stock and slerp (base and
one fine-tune), runs ``mergelab merge`` and, when installed, ``mergekit-yaml`` on the same
YAML recipe under ``/usr/bin/time -v``, and reports wall time, peak RSS and the max abs
difference between the two outputs (and how many values differ at all). ``--dtype``
sets the recipes' dtype and ``--compat`` runs mergelab with ``--compat mergekit``.
``--double`` repeats the
mergelab runs on a fixture with twice the layers, to show memory does not follow model size.

    python benchmarks/merge_bench.py                 # full fixture (needs ~7 GB disk)
    python benchmarks/merge_bench.py --layers 2 --vocab 4000 --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from mergelab.fixtures import write_llama_fixture
from mergelab.io import open_checkpoint
from mergelab.io.dtypes import to_compute

METHODS = {
    "linear": {"base": False, "model_params": {"weight": 1.0}, "params": {}},
    "task_arithmetic": {"base": True, "model_params": {"weight": 1.0}, "params": {}},
    "ties": {"base": True, "model_params": {"weight": 1.0, "density": 0.5}, "params": {}},
    "dare": {"base": True, "model_params": {"weight": 1.0, "density": 0.5}, "params": {}},
    "breadcrumbs": {
        "base": True,
        "model_params": {"weight": 1.0, "density": 0.5, "gamma": 0.01},
        "params": {},
    },
    "model_stock": {"base": True, "model_params": {"weight": 1.0}, "params": {}},
    # Two inputs: the base (t = 0) and the first fine-tune (t = 1).
    "slerp": {"base": True, "model_params": {}, "params": {"t": 0.5}, "models": 1},
}


def recipe(method: str, folders: list[Path], dtype: str = "float32") -> dict:
    spec = METHODS[method]
    models = folders[1 : 1 + spec["models"]] if "models" in spec else folders[1:]
    out = {
        "merge_method": method,
        "models": [{"model": str(m), "parameters": dict(spec["model_params"])} for m in models],
        "dtype": dtype,
    }
    if spec["base"]:
        out["base_model"] = str(folders[0])
    if spec["params"]:
        out["parameters"] = spec["params"]
    return out


def timed(cmd: list[str]) -> dict:
    """Run under /usr/bin/time -v: wall seconds and peak RSS (what `time` reports)."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return {"wall_s": round(wall, 2), "peak_rss_gb": round(rss * 1024 / 1e9, 3)}


def compare_outputs(a: Path, b: Path) -> dict:
    """Max elementwise difference between two checkpoints, the elements over 1e-5 and how
    many differ at all (values, whatever the stored dtype: bfloat16 is stored as bits)."""

    def values(ckpt, name: str) -> np.ndarray:
        raw, dtype = ckpt.read(name), ckpt.infos[name].dtype
        return to_compute(raw, dtype, np.empty(raw.shape, np.float64))

    with open_checkpoint(a) as x, open_checkpoint(b) as y:
        worst, where, over, differ = 0.0, "", {}, 0
        for name in x.infos:
            diff = np.abs(values(x, name) - values(y, name))
            if diff.size and diff.max() > worst:
                worst, where = float(diff.max()), name
            if np.count_nonzero(diff > 1e-5):
                over[name] = np.flatnonzero(diff > 1e-5)
            differ += int(np.count_nonzero(diff))
        return {
            "max_abs_diff": worst,
            "worst_tensor": where,
            "over_1e-5": over,
            "values_differing": differ,
        }


def tied_at_threshold(folders: list[Path], over: dict[str, np.ndarray], density: float) -> bool:
    """True when every element that differs sits exactly at a model's top-k threshold: there
    the k-th largest |delta| is shared by several elements and which of them survives is the
    sort's tie-break (mergekit: torch's unstable argsort; mergelab: earliest position)."""
    with open_checkpoint(folders[0]) as base:
        for name, positions in over.items():
            b = base.read(name).astype(np.float64)
            at_threshold = np.zeros(positions.size, dtype=bool)
            for folder in folders[1:]:
                with open_checkpoint(folder) as ft:
                    mag = np.abs(ft.read(name) - b)
                k = max(1, int(density * mag.size))
                kth = np.partition(mag, mag.size - k)[mag.size - k]
                at_threshold |= mag[positions] == kth
            if not at_threshold.all():
                return False
    return True


def warm(folders: list[Path]) -> float:
    """Flush pending writes (so neither tool pays for the other's) and load the page cache."""
    os.sync()
    start = time.perf_counter()
    for f in folders:
        with open(f / "model.safetensors", "rb") as fh:
            while fh.read(64 << 20):
                pass
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/mergelab-bench"))
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--no-mergekit", action="store_true", help="skip mergekit even if installed")
    ap.add_argument("--double", action="store_true", help="also run mergelab on 2x the layers")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument(
        "--dtype", default="float32", help="the recipes' dtype (mergekit's compute dtype)"
    )
    ap.add_argument("--compat", action="store_true", help="run mergelab with --compat mergekit")
    args = ap.parse_args()

    mergekit = None if args.no_mergekit else shutil.which("mergekit-yaml")
    print(f"recipes in {args.dtype}; mergelab{' --compat mergekit' if args.compat else ''}")
    mergelab = [sys.executable, "-m", "mergelab.cli"]
    sizes = [args.layers] + ([2 * args.layers] if args.double else [])
    results = []
    for layers in sizes:
        root = args.work / f"llama-h{args.hidden}-l{layers}-i{args.intermediate}-v{args.vocab}"
        print(f"fixture {root}", flush=True)
        folders = write_llama_fixture(
            root,
            hidden=args.hidden,
            layers=layers,
            intermediate=args.intermediate,
            vocab=args.vocab,
        )
        gb = (folders[0] / "model.safetensors").stat().st_size / 1e9
        print(
            f"  {gb:.3f} GB per checkpoint; reading all five from page cache: {warm(folders):.2f} s"
        )
        for method in args.methods:
            cfg = root / f"{method}.yaml"
            cfg.write_text(yaml.safe_dump(recipe(method, folders, args.dtype), sort_keys=False))
            row = {"layers": layers, "method": method, "checkpoint_gb": round(gb, 3)}
            ours = root / f"out-mergelab-{method}"
            warm(folders)
            compat = ["--compat", "mergekit"] if args.compat else []
            command = [*mergelab, "merge", str(cfg), "--out", str(ours), "--force"]
            row["mergelab"] = timed([*command, "--no-progress", *compat])
            if mergekit and layers == args.layers:
                theirs = root / f"out-mergekit-{method}"
                shutil.rmtree(theirs, ignore_errors=True)
                warm(folders)
                row["mergekit"] = timed([mergekit, str(cfg), str(theirs), "--quiet"])
                found = compare_outputs(ours, theirs)
                over = found.pop("over_1e-5")
                row.update(found)
                row["elements_over_1e-5"] = int(sum(p.size for p in over.values()))
                if over and method == "ties":
                    density = METHODS["ties"]["model_params"]["density"]
                    row["all_over_at_tied_threshold"] = tied_at_threshold(folders, over, density)
                row["speedup"] = round(row["mergekit"]["wall_s"] / row["mergelab"]["wall_s"], 2)
                shutil.rmtree(theirs, ignore_errors=True)
            shutil.rmtree(ours, ignore_errors=True)
            results.append(row)
            print("  " + json.dumps(row), flush=True)
    # Timings on a shared machine are only comparable within one run: say how busy it was.
    print("\nload average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    print("layers  method            mergelab s  RSS GB | mergekit s  RSS GB | speedup  max|diff|")
    for r in results:
        mk = r.get("mergekit", {})
        print(
            f"{r['layers']:>6}  {r['method']:16s} {r['mergelab']['wall_s']:>10.2f} "
            f"{r['mergelab']['peak_rss_gb']:>7.3f} | {mk.get('wall_s', float('nan')):>10.2f} "
            f"{mk.get('peak_rss_gb', float('nan')):>7.3f} | {r.get('speedup', float('nan')):>7} "
            f"{r.get('max_abs_diff', float('nan')):>9.2e}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
