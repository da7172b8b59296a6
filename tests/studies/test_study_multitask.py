"""The multi-task merging study: suite trained once, coefficients chosen on val only,
test rows per task, its table, figure and claims."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

import mergelab.studies.multitask as study
import mergelab.train.multitask as mt
from mergelab.errors import ConfigError
from mergelab.report import Results
from mergelab.report.claims import CLAIMS, evaluate_claims
from mergelab.report.figures import fig_multitask
from mergelab.report.tables import multitask_tables
from mergelab.studies.config import StudyConfig, load_config
from mergelab.studies.context import StudyContext
from mergelab.studies.runner import run_study

TASKS = ["mt-mnist", "mt-rotated", "mt-inverted"]
MULTITASK = {
    "enabled": True,
    "tasks": TASKS,
    "arch": "mlp",
    "pretrain": {"steps": 30},
    "finetune": {"steps": 15},
    "coefficients": [0.3, 1.0],
    "ranks": [0.05, 0.2],
    "task_counts": [2],
    "count_methods": ["linear", "cart"],
}


def tiny_config() -> StudyConfig:
    return StudyConfig(
        name="mt",
        templates={"enabled": False},
        magnitude={"enabled": False},
        weight_stats=False,
        multitask=MULTITASK,
    )


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mt") / "out"
    run_study(tiny_config(), folder, progress=False)
    return folder


def test_rows_per_task_method_and_sweep(out) -> None:
    df = pd.read_csv(out / "results.csv")
    assert set(df["study"]) == {"multitask"}
    assert set(df["split"]) == {"test"}
    assert set(df["metric"]) == {"accuracy", "normalized_accuracy"}
    main = df[df["sweep"] == "methods"]
    labels = {"Individual", "Pretrained", *study.LABELS.values()}
    assert set(main["method"]) == labels
    for _, g in main.groupby(["method", "metric"]):
        assert sorted(g["dataset"]) == sorted(TASKS)
    assert df.loc[df["metric"] == "accuracy", "value"].between(0, 1).all()
    own = main[(main["method"] == "Individual") & (main["metric"] == "normalized_accuracy")]
    assert own["value"].tolist() == pytest.approx([1.0] * len(TASKS))
    # Normalized = merged / individual on that task.
    acc = main[main["metric"] == "accuracy"].set_index(["method", "dataset"])["value"]
    norm = main[main["metric"] == "normalized_accuracy"].set_index(["method", "dataset"])["value"]
    for t in TASKS:
        assert norm["CART", t] == pytest.approx(acc["CART", t] / acc["Individual", t])
    chosen = main[main["method"] == "Task Arithmetic"]["coefficient"]
    assert set(chosen) <= {0.3, 1.0}
    assert math.isnan(main[main["method"] == "Weight Averaging"]["coefficient"].iloc[0])
    ranks = df[df["sweep"] == "rank"]
    assert set(ranks["method"]) == {"CART"} and set(ranks["rank_fraction"]) == {0.05, 0.2}
    counts = df[df["sweep"] == "tasks"]
    assert set(counts["n_models"]) == {2} and counts["dataset"].nunique() == 2
    assert set(counts["method"]) == {"Weight Averaging", "CART"}
    assert (out / "multitask" / "manifest.json").is_file()
    assert "Multi-task merging" in (out / "report.html").read_text()


def test_table_figure_and_claims(out, tmp_path) -> None:
    results = Results.read(out)
    tables = multitask_tables(results)
    assert len(tables) == 4
    main = tables[1].frame
    assert "Average" in main.columns and main.loc["Individual", "Average"] == pytest.approx(100)
    assert fig_multitask(results, tmp_path)[0].is_file()
    claims = evaluate_claims(results, [c for c in CLAIMS if c.key.startswith("multitask")])
    assert [c.key for c in claims] == ["multitask_method_ranking", "multitask_cart_rank"]
    for c in claims:  # 3 tasks < MIN_ITEMS: no interval, never "reproduced" by chance
        assert c.verdict in ("reproduced", "contradicted", "inconclusive")
        assert c.verdict == "inconclusive"


def test_claims_can_be_contradicted_and_reproduced() -> None:
    tasks = [f"t{i}" for i in range(7)]
    base = {"Weight Averaging": 0.6, "Task Arithmetic": 0.7, "TIES": 0.8, "CART": 0.9}
    rows = []
    for flip in (False, True):
        for m, v in base.items():
            for i, t in enumerate(tasks):
                value = (1.5 - v if flip else v) + 0.001 * i
                rows.append(
                    {
                        "study": "multitask",
                        "dataset": t,
                        "arch": "cnn" if not flip else "mlp",
                        "seed": 0,
                        "sweep": "methods",
                        "n_models": 7,
                        "method": m,
                        "split": "test",
                        "metric": "normalized_accuracy",
                        "value": value,
                    }
                )
    df = pd.DataFrame(rows)
    spec = next(c for c in CLAIMS if c.key == "multitask_method_ranking")
    assert spec(df[df["arch"] == "cnn"]).verdict == "reproduced"
    assert spec(df[df["arch"] == "mlp"]).verdict == "contradicted"


def test_coefficient_is_chosen_on_val_never_on_test(out, monkeypatch) -> None:
    """Fake merges carry their coefficient; val prefers 0.3, test would prefer 1.0."""
    calls: list[tuple[str, float | None]] = []

    def fake_merge(method, models, base=None, *, params=None, model_params=None):
        params = params or {}
        value = params.get("lambda", params.get("alpha"))
        return {"coef": torch.tensor(-1.0 if value is None else float(value))}

    def fake_evaluate(state, heads, tasks=None, *, split="test", device="cpu"):
        c = float(state["coef"]) if "coef" in state else None
        calls.append((split, c))
        if c is None or c < 0:
            return dict.fromkeys(tasks, 0.5)
        score = 1.0 - abs(c - 0.3) if split == "val" else c
        return dict.fromkeys(tasks, score)

    monkeypatch.setattr(study, "merge_state_dicts", fake_merge)
    monkeypatch.setattr(mt, "evaluate_multitask", fake_evaluate)
    ctx = StudyContext(tiny_config(), out, progress=False)
    df = study.run(ctx)
    merged = df[~df["method"].isin(["Individual", "Pretrained", "Weight Averaging"])]
    assert set(merged["coefficient"]) == {0.3}
    acc = merged[merged["metric"] == "accuracy"]["value"]
    assert acc.tolist() == pytest.approx([0.3] * len(acc))
    assert ("test", 1.0) not in calls and ("val", 1.0) in calls
    assert all(split == "val" for split, c in calls if c == 1.0)


def test_choose_takes_the_best_and_the_first_on_ties() -> None:
    scores = {0.1: 0.5, 0.2: 0.7, 0.3: 0.7}
    value, score, grid = study.choose(list(scores), scores.__getitem__)
    assert value == 0.2 and score == 0.7 and len(grid) == 3


def test_subsets_are_fixed_and_seeded() -> None:
    tasks = [f"t{i}" for i in range(7)]
    a = study.subsets(tasks, [2, 3, 7], 0)
    assert a == study.subsets(tasks, [2, 3, 7], 0)
    assert a[7] == tasks and len(a[2]) == 2 and all(t in tasks for t in a[3])


def test_off_by_default_and_preset_turns_it_on() -> None:
    assert StudyConfig(datasets=["digits"], archs=["mlp"]).multitask.enabled is False
    config, _ = load_config("multitask-quick")
    assert config.multitask.enabled and config.multitask.arch == "cnn"
    assert config.multitask.tasks is None and not config.datasets


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("coefficients", [0.3, -1.0], "multitask.coefficients"),
        ("coefficients", [], "multitask.coefficients"),
        ("methods", ["linear", "bogus"], "multitask.methods"),
        ("ranks", [0.1, 1.5], "multitask.ranks"),
        ("task_counts", [1, 2], "multitask.task_counts"),
        ("tasks", ["mt-mnist"], "multitask.tasks"),
        ("cart_rank", 0.0, "multitask.cart_rank"),
        ("colour", "red", "multitask.colour"),
    ],
)
def test_validator_names_the_key(tmp_path, field, value, named) -> None:
    import yaml

    data = {"name": "x", "multitask": {**MULTITASK, field: value}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert named in message and "\n" not in message


@pytest.mark.parametrize(("peak", "verdict"), [(0.2, "reproduced"), (0.5, "contradicted")])
def test_rank_claim_can_be_contradicted_and_reproduced(peak: float, verdict: str) -> None:
    rows = [
        {
            "study": "multitask",
            "dataset": f"t{i}",
            "arch": "cnn",
            "seed": 0,
            "sweep": "rank",
            "n_models": 7,
            "rank_fraction": rank,
            "method": "CART",
            "split": "test",
            "metric": "normalized_accuracy",
            "value": (0.9 if rank == peak else 0.7) + 0.001 * i,
        }
        for rank in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
        for i in range(7)
    ]
    spec = next(c for c in CLAIMS if c.key == "multitask_cart_rank")
    assert spec(pd.DataFrame(rows)).verdict == verdict
