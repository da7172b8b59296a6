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
    return 0


def _as_written(recipe: dict, work: Path) -> tuple[dict, dict]:
    """Both tools' tensors as float64 (bfloat16 read through torch)."""
    from safetensors.torch import load_file

    parity._both_files(recipe, work)
    out = []
    for folder in (work / "mk", work / "ml"):
        tensors = {}
        for f in sorted(folder.glob("*.safetensors")):
            tensors |= {k: v.double().numpy() for k, v in load_file(str(f)).items()}
        out.append(tensors)
    return out[0], out[1]


if __name__ == "__main__":
    raise SystemExit(main())
