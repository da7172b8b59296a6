"""``mergelab demo``: generate small Llama-shaped checkpoints and merge them with every
method, through the same code path as ``mergelab merge``, writing a summary table.

It runs in seconds and needs no download; it shows what a merge costs and how far each
method moves from the base and from the plain average.
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

import numpy as np

from mergelab.atomic import atomic_write_text
from mergelab.checks import claim_output_folder, output_folder, removed_if_left_empty
from mergelab.engine import merge
from mergelab.errors import MergeError
from mergelab.fixtures import write_llama_fixture
from mergelab.io import open_checkpoint
from mergelab.recipe import ModelEntry, Recipe

FIXTURES = ("base", "ft1", "ft2", "ft3", "ft4")
MERGE_FILES = (".safetensors", ".mergelab.yaml")  # what a merge writes per output
DEMO_METHODS: dict[str, dict] = {
    "linear": {},
    "task_arithmetic": {"lambda": 0.5},
    "ties": {"density": 0.2, "lambda": 1.0},
    "ties_model_scope": {"density": 0.2, "scope": "model"},
    "dare": {"density": 0.3, "seed": 0},
    "dare_ties": {"density": 0.3, "seed": 0},
    "breadcrumbs": {"density": 0.8, "gamma": 0.01},
    "model_stock": {},
    "slerp": {"t": 0.5},
}


def _distance(a: Path, b: Path) -> float:
    """Relative L2 distance ||a - b|| / ||b|| over all float tensors."""
    num = den = 0.0
    with open_checkpoint(a) as x, open_checkpoint(b) as y:
        for name in y.infos:
            u, v = x.read(name).astype(np.float64), y.read(name).astype(np.float64)
            num += float(np.sum((u - v) ** 2))
            den += float(np.sum(v**2))
    return (num / den) ** 0.5 if den else 0.0


def run_demo(
    out: str | Path = "mergelab-demo", *, force: bool = False, progress: bool = True
) -> Path:
    """Write checkpoints, merged outputs and ``summary.csv`` under ``out`` (refused before
    any work where a file of those names is there that mergelab did not write)."""
    out = Path(out)
    merged_dir = out / "merged"
    output_folder(out, writes=_writes())
    if merged_dir.exists() and any(merged_dir.iterdir()) and not force:
        raise MergeError(f"{merged_dir}: already has merged outputs; pass --force to redo them")
    with removed_if_left_empty(out):
        claim_output_folder(out, "demo")
        return _run(out, merged_dir, progress)


def _writes() -> list[str]:
    """The files the demo writes into its folder."""
    models = [
        f"checkpoints/{m}/{f}" for m in FIXTURES for f in ("config.json", "model.safetensors")
    ]
    merged = [f"merged/{label}{ext}" for label in DEMO_METHODS for ext in MERGE_FILES]
    return ["summary.csv", *models, *merged]


def _run(out: Path, merged_dir: Path, progress: bool) -> Path:
    folders = write_llama_fixture(
        out / "checkpoints", hidden=256, layers=4, intermediate=704, vocab=4000, finetunes=4
    )
    merged_dir.mkdir(parents=True, exist_ok=True)
    base, models = folders[0], folders[1:]
    rows = []
    average = merged_dir / "linear.safetensors"
    for label, params in DEMO_METHODS.items():
        method = label.removesuffix("_model_scope")
        inputs = models[:1] if method == "slerp" else models
        recipe = Recipe(
            merge_method=method,
            base_model=None if method == "linear" else str(base),
            models=[ModelEntry(model=str(m)) for m in inputs],
            parameters=params,
        )
        target = merged_dir / f"{label}.safetensors"
        start = time.perf_counter()
        merge(recipe, target, force=True, progress=False)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "method": label,
                "parameters": ";".join(f"{k}={v}" for k, v in params.items()),
                "seconds": round(seconds, 3),
                "output_mb": round(os.path.getsize(target) / 1e6, 1),
                "distance_to_base": round(_distance(target, base / "model.safetensors"), 6),
                "distance_to_average": round(_distance(target, average), 6),
            }
        )
        if progress:
            print(f"  {label:18s} {seconds:6.2f} s  -> {target}", flush=True)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(out / "summary.csv", text.getvalue())
