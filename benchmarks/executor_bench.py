"""Issue 12's figure: wall time of one study on each executor, and proof that they agree.

    python benchmarks/executor_bench.py                    # quick preset: ~25 min on 2 cores
    python benchmarks/executor_bench.py --preset tiny      # ~2 min
    python benchmarks/executor_bench.py --executors local ray --workers 2 --json bench.json

Each executor runs the study from an empty folder with ``--workers`` cores (local: worker
processes, one means in this process; ray: a local Ray instance started for the run,
included in its time). The rows of every run are then compared with the first run's,
timing rows aside (``train_seconds``), and the trained checkpoints byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from mergelab.studies import run_study


def _untimed(path: Path) -> pd.DataFrame:
    rows = pd.read_csv(path, low_memory=False)
    return rows[rows["metric"] != "train_seconds"].reset_index(drop=True)


def _checkpoints(out: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((out / "runs").glob("*.safetensors"))
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--executors", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="mergelab-executor-bench-"))
    figures: list[dict[str, object]] = []
    first: tuple[pd.DataFrame, dict[str, str]] | None = None
    try:
        for name in args.executors:
            out = tmp / name
            started = time.perf_counter()
            paths = run_study(args.preset, out, progress=False, workers=args.workers, executor=name)
            seconds = time.perf_counter() - started
            rows, ckpts = _untimed(Path(paths["results"])), _checkpoints(out)
            units = pd.read_csv(out / "units.csv")
            same = None
            if first is None:
                first = (rows, ckpts)
            else:
                same = rows.equals(first[0]) and ckpts == first[1]
            figures.append(
                {
                    "executor": name,
                    "workers": args.workers,
                    "seconds": round(seconds, 1),
                    "units": len(units),
                    "retried": int((units["attempts"] > 1).sum()),
                    "rows": len(rows),
                    "same_rows_and_checkpoints_as_first": same,
                }
            )
            print(
                f"{args.preset} on {name} ({args.workers} workers): {seconds:.1f} s, "
                f"{len(units)} units, {len(rows)} rows"
                + ("" if same is None else f", same rows and checkpoints as the first: {same}"),
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if all(f["same_rows_and_checkpoints_as_first"] in (None, True) for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
