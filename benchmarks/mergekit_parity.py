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
        print(f"{'recipe':18s} {'max |diff| / max |value|':>26s} {'values differing':>18s}")
        for name, (build, _) in sorted(parity.DETERMINISTIC.items()):
            work = Path(tempfile.mkdtemp(dir=tmp))
            theirs, ours, _ = parity._both(build(models), work)
            worst, differ, total = 0.0, 0, 0
            for k in theirs:
                a, b = ours[k].astype(np.float64), theirs[k].astype(np.float64)
                worst = max(worst, float(np.abs(a - b).max()) / max(float(np.abs(b).max()), 1e-12))
                differ += int(np.sum(a != b))
                total += a.size
            print(f"{name:18s} {worst:26.2e} {differ:>8d} / {total}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
