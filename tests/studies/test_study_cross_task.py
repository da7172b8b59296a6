"""Cross-task merging with different label sets: one start, each model its own head, the
merged backbone classified by task A's head (the paper's Table 3 with ensemble columns)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from mergelab.studies.config import StudyConfig
from mergelab.studies.context import StudyContext
from mergelab.studies.cross_task import pair_recipes, run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from datafakes import write_medmnist


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cross")
    npz = folder / "dermamnist.npz"
    write_medmnist(npz, sizes=(70, 21, 28), n_classes=7)
    spec = f"dermamnist:{npz}"
    config = StudyConfig(
        name="x",
        datasets=["digits"],
        archs=["mlp"],
        training={"pretrain": {"steps": 20}, "train": {"steps": 20, "batch_size": 16}},
        cross_task={"pairs": [["digits", spec]], "arch": "mlp", "channels": 1, "img_size": 8},
    )
    ctx = StudyContext(config, folder / "out", progress=False)
    ra, rb = pair_recipes(ctx, "digits", spec, 0)
    return ctx, ra, rb, run(ctx)


def test_both_models_start_from_one_start_with_their_own_heads(rows) -> None:
    ctx, ra, rb, _ = rows
    assert ra.start_config().config_hash() == rb.start_config().config_hash()
    a, b = ctx.state_dicts([ctx.ingredients(ra)[0], ctx.ingredients(rb)[0]])
    assert a["head.weight"].shape[0] == 10 and b["head.weight"].shape[0] == 7
    assert a["layers.0.weight"].shape == b["layers.0.weight"].shape


def test_rows_on_each_task_with_its_own_head(rows) -> None:
    ctx, _, _, df = rows
    assert set(df["dataset"]) == {"digits", next(iter(set(df["other_dataset"]) - {"digits"}))}
    methods = {"Model A", "B backbone + A head", "Uniform Soup", "Ens Logits", "Ens Features"}
    for _, g in df.groupby("dataset"):
        assert set(g["method"]) == methods and len(g) == 5
    assert df["value"].between(0, 1).all()
    for _, row in df.iterrows():
        vec = ctx.outcomes[row["outcome"]]
        assert vec.mean() == pytest.approx(row["value"])
        assert set(np.unique(vec)) <= {0, 1}
