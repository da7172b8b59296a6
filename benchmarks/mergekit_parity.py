"""mergelab against mergekit 0.1.5 on the recipes of tests/test_mergekit_parity.py (mergekit's
test configurations and examples), on generated pico Llama models: for each, the largest
difference relative to the tensor's largest value and how many values differ at all.

    pip install -e ".[bench]"        # mergekit 0.1.5; keeps the installed torch
    python benchmarks/mergekit_parity.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_mergekit_parity as parity  # the recipes live with their test


class _Folders:
    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        path = self.root / name
        path.mkdir()
        return path


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        models = parity.models.__wrapped__(_Folders(Path(tmp)))
        print(f"{'recipe':26s} {'max|diff|/max|v|':>18s} {'values differing':>18s}")
        for name, (build, _) in sorted(parity.DETERMINISTIC.items()):
            work = Path(tempfile.mkdtemp(dir=tmp))
            theirs, ours, _ = parity._both(build(models), work)
            worst, differ, total = 0.0, 0, 0
            for k in theirs:
                a, b = ours[k].astype(np.float64), theirs[k].astype(np.float64)
                worst = max(worst, float(np.abs(a - b).max()) / max(float(np.abs(b).max()), 1e-12))
                differ += int(np.sum(a != b))
                total += a.size
            print(f"{name:26s} {worst:18.2e} {differ:>8d} / {total}")
        print("\nmergekit's examples as written (it computes in their dtype, mergelab in float32)")
        for name, build in parity.EXAMPLES.items():
            work = Path(tempfile.mkdtemp(dir=tmp))
            theirs, ours = _as_written(build(models), work)
            worst, differ, total = 0.0, 0, 0
            for k in theirs:
                a, b = ours[k], theirs[k]
                worst = max(worst, float(np.abs(a - b).max()) / max(float(np.abs(b).max()), 1e-12))
                differ += int(np.sum(a != b))
                total += a.size
            print(f"{name:26s} {worst:18.2e} {differ:>8d} / {total} ({100 * differ / total:.1f} %)")
        print("\nmergelab --compat mergekit: every deterministic recipe in float32, float16 and")
        print("bfloat16 (mergekit computes in the recipe's dtype); values differing from mergekit")
        print(f"{'recipe':40s} {'dtype':9s} {'--compat mergekit':>24s} {'without':>10s}")
        same = runs = 0
        for name, build in sorted(parity.COMPAT_RECIPES.items()):
            for dtype in ("float32", "float16", "bfloat16"):
                recipe = {**build(models), "dtype": dtype}
                theirs, ours = _as_written(recipe, Path(tempfile.mkdtemp(dir=tmp)), *COMPAT)
                plain = _as_written(recipe, Path(tempfile.mkdtemp(dir=tmp)))[1]
                differ, total, _ = _differ(theirs, ours)
                before = _differ(theirs, plain)[0]
                same, runs = same + (differ == 0), runs + 1
                print(
                    f"{name:40s} {dtype:9s} {differ:>7d} / {total} ({100 * differ / total:5.2f} %)"
                    f" {100 * before / total:8.2f} %"
                )
        print(f"same bytes with --compat mergekit: {same} of {runs}")
    return 0


COMPAT = ("--compat", "mergekit")


def _differ(theirs: dict, ours: dict) -> tuple[int, int, float]:
    """(values differing, values, largest difference relative to the tensor's largest)."""
    differ = total = 0
    worst = 0.0
    for k in theirs:
        a, b = ours[k], theirs[k]
        worst = max(worst, float(np.abs(a - b).max()) / max(float(np.abs(b).max()), 1e-12))
        differ += int(np.sum(a != b))
        total += a.size
    return differ, total, worst


def _as_written(recipe: dict, work: Path, *options: str) -> tuple[dict, dict]:
    """Both tools' tensors as float64 (bfloat16 read through torch)."""
    from safetensors.torch import load_file

    parity._both_files(recipe, work, *options)
    out = []
    for folder in (work / "mk", work / "ml"):
        tensors = {}
        for f in sorted(folder.glob("*.safetensors")):
            tensors |= {k: v.double().numpy() for k, v in load_file(str(f)).items()}
        out.append(tensors)
    return out[0], out[1]


if __name__ == "__main__":
    raise SystemExit(main())
