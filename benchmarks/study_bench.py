"""The study's figures for README: wall time from an empty folder and of a rerun, each
architecture's individual accuracy and diversity, and the verdict table with intervals.

    python benchmarks/study_bench.py                  # quick preset, ~7 min on 2 cores
    python benchmarks/study_bench.py --preset tiny    # seconds
    python benchmarks/study_bench.py --preset mergeability   # ~2 min: issue 9's budget is 15
    python benchmarks/study_bench.py --out DIR --json bench.json

The study runs into a fresh folder (``--out``, default a temporary one), then again into
the same folder with training disabled (a rerun must train nothing); the tables are read
back from the files the study wrote (``results.csv``, ``outcomes.npz``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def _markdown(df: pd.DataFrame) -> str:
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|")

    cols = [cell(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.to_numpy().tolist()]
    return "\n".join(lines)


def ingredient_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, arch, init): N, mean [min, max] test accuracy (%), disagreement (%)."""
    ing = rows[rows["study"] == "ingredients"]
    ind = ing[ing["method"] == "Individual"]
    acc = ind[(ind["metric"] == "accuracy") & (ind["split"] == "test")]
    keys = ["dataset", "arch", "init"]
    g = acc.groupby(keys)["value"]
    dis = ing[ing["metric"] == "disagreement"].groupby(keys)["value"].mean()
    out = pd.DataFrame(
        {
            "N": g.size(),
            "test accuracy % mean [min, max]": [
                f"{100 * m:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
                for m, lo, hi in zip(g.mean(), g.min(), g.max(), strict=True)
            ],
            "disagreement %": (dis.reindex(g.size().index) * 100).round(1),
        }
    )
    return out.reset_index()


def verdict_table(out: Path) -> pd.DataFrame:
    """One row per condition of every claim: pooled effect, interval (95 % paired
    bootstrap; for the mergeability claims, the range over refits each without one task),
    settings, what the condition says, and the claim's verdict."""
    from mergelab.report import Results, evaluate_claims

    rows = []
    claims = evaluate_claims(Results.read(out))
    if any(c.verdict != "not measured" for c in claims):  # the studies that ran, only
        claims = [c for c in claims if c.verdict != "not measured"]
    for c in claims:
        if not c.conditions:
            rows.append({"claim": c.key, "contrast": c.measured, "effect [interval]": "",
                         "settings": "", "says": "", "verdict": c.verdict})  # fmt: skip
        for m in c.conditions:
            f = "{:+.2f}" if m.unit == "points" else "{:+.3f}"
            iv = m.interval
            effect = f.format(m.estimate) + (
                f" [{f.format(iv.low)}, {f.format(iv.high)}]" if iv else " (no interval)"
            )
            unit = "" if m.unit == "points" or m.label.endswith(m.unit) else f" {m.unit}"
            rows.append(
                {
                    "claim": c.key,
                    "contrast": m.label + unit,
                    "effect [interval]": effect,
                    "settings": m.settings,
                    "says": m.judgement,
                    "verdict": c.verdict,
                }
            )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--out", type=Path, help="study folder (default: a fresh temporary one)")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4))
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)

    import mergelab.train.trainer as trainer
    from mergelab.studies import run_study

    tmp = None
    out = args.out
    if out is None:
        tmp = Path(tempfile.mkdtemp(prefix="mergelab-study-bench-"))
        out = tmp / "study"
    elif out.exists() and any(out.iterdir()):
        print(f"{out}: not empty; the first run must start from an empty folder", file=sys.stderr)
        return 2
    try:
        t0 = time.perf_counter()
        paths = run_study(args.preset, out, progress=True, workers=args.workers)
        first = time.perf_counter() - t0

        def no_training(*a: object, **k: object) -> None:
            raise AssertionError("the rerun trained a model")

        trainer.fit = no_training  # type: ignore[assignment]
        t0 = time.perf_counter()
        run_study(args.preset, out, progress=False, workers=args.workers)
        rerun = time.perf_counter() - t0

        rows = pd.read_csv(paths["results"], low_memory=False)
        ingredients = ingredient_table(rows) if (rows["study"] == "ingredients").any() else None
        verdicts = verdict_table(out)
        print(f"\npreset {args.preset}, {args.workers} worker(s), {os.cpu_count()} CPUs")
        print(f"first run (empty folder): {first / 60:.0f} min {first % 60:.0f} s")
        print(f"rerun (trains nothing):   {rerun:.0f} s")
        print(f"sanity checks failed: {paths['sanity_failures'] or 'none'}\n")
        if ingredients is not None:
            print(_markdown(ingredients) + "\n")
        print(_markdown(verdicts))
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "preset": args.preset,
                        "workers": args.workers,
                        "first_run_s": first,
                        "rerun_s": rerun,
                        "sanity_failures": paths["sanity_failures"],
                        "ingredients": []
                        if ingredients is None
                        else ingredients.to_dict(orient="records"),
                        "verdicts": verdicts.to_dict(orient="records"),
                    },
                    indent=1,
                )
            )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
