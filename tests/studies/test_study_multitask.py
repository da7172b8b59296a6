"""The multi-task merging study: suite trained once, coefficients chosen on val only,
test rows per task, its table, figure and claims."""

from __future__ import annotations

import math
import zlib

import numpy as np
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
from mergelab.studies.registry import RETHINKING
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
    # claims.md lists this paper's claims; the other paper's, whose studies did not run,
    # are one sentence (the same in report.html).
    others = sum(1 for c in CLAIMS if c.study.paper == RETHINKING)
    text = (out / "claims.md").read_text()
    assert text.startswith('# Claims of "Revisiting Weight Averaging for Model Merging"')
    assert f'did not run here: the {others} claims of "Rethinking' in text
    assert "## ens_logits_beats_uniform_soup" not in text and "## multitask_cart_rank" in text
    assert f"the {others} claims of &ldquo;Rethinking" in (out / "report.html").read_text() or (
        f"the {others} claims of &quot;Rethinking" in (out / "report.html").read_text()
    )
    for c in claims:  # each task's test examples are resampled: every condition has an interval
        assert c.verdict in ("reproduced", "contradicted", "inconclusive")
        assert all(m.interval is not None for m in c.conditions)


def _outcomes(accuracy: float, n: int, salt: str) -> np.ndarray:
    """A 0/1 vector of ``n`` examples with exactly ``round(accuracy * n)`` right answers,
    spread over the examples by a seeded shuffle."""
    right = round(accuracy * n)
    rng = np.random.default_rng(zlib.crc32(salt.encode()))
    return rng.permutation(np.array([1] * right + [0] * (n - right), dtype=np.uint8))


def _results(cells: dict[tuple[str, str, float | None, str], np.ndarray]) -> Results:
    """Accuracy rows with outcome vectors, keyed (method, sweep, rank, task)."""
    rows, outcomes = [], {}
    for i, ((method, sweep, rank, task), vec) in enumerate(cells.items()):
        key = f"o{i}"
        outcomes[key] = vec
        rows.append(
            {
                "study": "multitask",
                "dataset": task,
                "arch": "cnn",
                "seed": 0,
                "sweep": sweep,
                "n_models": 7,
                "rank_fraction": math.nan if rank is None else rank,
                "method": method,
                "split": "test",
                "metric": "accuracy",
                "value": float(vec.mean()),
                "outcome": key,
            }
        )
    return Results(pd.DataFrame(rows), outcomes)


TASK_NAMES = [f"t{i}" for i in range(7)]


@pytest.mark.parametrize(
    ("accuracy", "n", "verdict"),
    [
        (
            {"Weight Averaging": 0.6, "Task Arithmetic": 0.7, "TIES": 0.8, "CART": 0.9},
            400,
            "reproduced",
        ),
        (
            {"Weight Averaging": 0.9, "Task Arithmetic": 0.8, "TIES": 0.7, "CART": 0.6},
            400,
            "contradicted",
        ),
        (
            {"Weight Averaging": 0.80, "Task Arithmetic": 0.81, "TIES": 0.82, "CART": 0.83},
            60,
            "inconclusive",
        ),
    ],
)
def test_ranking_claim_reads_per_example_outcomes(accuracy, n, verdict) -> None:
    """Per task, the merged and individual outcome vectors; the claim pools the tasks'
    normalized contrasts, each task's examples resampled."""
    cells = {}
    for task in TASK_NAMES:
        cells[("Individual", "methods", None, task)] = _outcomes(0.95, n, f"ind/{task}")
        for m, acc in accuracy.items():
            cells[(m, "methods", None, task)] = _outcomes(acc, n, f"{m}/{task}")
    claim = next(c for c in CLAIMS if c.key == "multitask_method_ranking")(_results(cells))
    assert claim.verdict == verdict
    right = {m: round(a * n) for m, a in accuracy.items()}
    expected = 100 * (right["CART"] - right["TIES"]) / round(0.95 * n)
    assert claim.conditions[0].estimate == pytest.approx(expected)


def test_coefficient_is_chosen_on_val_never_on_test(out, monkeypatch) -> None:
    """Fake merges carry their coefficient; val prefers 0.3, test would prefer 1.0."""
    calls: list[tuple[str, float | None]] = []

    def fake_merge(method, models, base=None, *, params=None, model_params=None):
        params = params or {}
        value = params.get("lambda", params.get("alpha"))
        return {"coef": torch.tensor(-1.0 if value is None else float(value))}

    def fake_outcomes(state, heads, tasks=None, *, split="test", device="cpu"):
        c = float(state["coef"]) if "coef" in state else None
        calls.append((split, c))
        score = 0.5 if c is None or c < 0 else 1.0 - abs(c - 0.3) if split == "val" else c
        right = round(score * 1000)
        return {t: np.array([1] * right + [0] * (1000 - right), dtype=np.uint8) for t in tasks}

    monkeypatch.setattr(study, "merge_state_dicts", fake_merge)
    monkeypatch.setattr(mt, "multitask_outcomes", fake_outcomes)
    ctx = StudyContext(tiny_config(), out, progress=False)
    df = study.run(ctx)
    merged = df[~df["method"].isin(["Individual", "Pretrained", "Weight Averaging"])]
    assert set(merged["coefficient"]) == {0.3}
    acc = merged[merged["metric"] == "accuracy"]["value"]
    assert acc.tolist() == pytest.approx([0.3] * len(acc))
    assert ("test", 1.0) not in calls and ("val", 1.0) in calls
    assert all(split == "val" for split, c in calls if c == 1.0)
    # 0.3 is the smallest value of the grid [0.3, 1.0]: 0.15 was tried on val, and lost.
    assert ("val", pytest.approx(0.15)) in calls and set(merged["grid_edge"]) == {""}
    note = multitask_tables(Results(df, ctx.outcomes))[0].note
    assert "Chosen coefficients: CART 0.3;" in note and "edge" not in note


@pytest.mark.parametrize(
    ("peak", "extend", "chosen", "edge"),
    [(4.0, 2, 4.0, "top"), (4.0, 3, 4.0, ""), (2.0, 0, 1.0, "top"), (0.14, 2, 0.15, "")],
)
def test_grid_extends_past_its_edge_on_val(out, monkeypatch, peak, extend, chosen, edge) -> None:
    """Val accuracy peaks at ``peak``; the grid is [0.3, 1.0], doubled or halved past its
    edge up to ``extend`` times while val improves; the tables name a choice left at the
    edge."""

    def fake_merge(method, models, base=None, *, params=None, model_params=None):
        params = params or {}
        value = params.get("lambda", params.get("alpha"))
        return {"coef": torch.tensor(-1.0 if value is None else float(value))}

    def fake_outcomes(state, heads, tasks=None, *, split="test", device="cpu"):
        c = float(state["coef"]) if "coef" in state else -1.0
        score = 0.5 if c < 0 else 1.0 - abs(c - peak) / 10
        right = round(score * 1000)
        return {t: np.array([1] * right + [0] * (1000 - right), dtype=np.uint8) for t in tasks}

    monkeypatch.setattr(study, "merge_state_dicts", fake_merge)
    monkeypatch.setattr(mt, "multitask_outcomes", fake_outcomes)
    config = tiny_config()
    config = config.model_copy(
        update={"multitask": config.multitask.model_copy(update={"extend_grid": extend})}
    )
    ctx = StudyContext(config, out, progress=False)
    df = study.run(ctx)
    merged = df[~df["method"].isin(["Individual", "Pretrained", "Weight Averaging"])]
    assert set(merged["coefficient"]) == {chosen}
    assert set(merged["grid_edge"]) == {edge}
    note = multitask_tables(Results(df, ctx.outcomes))[0].note
    assert ("At the edge of the grid (a wider grid might do better): CART" in note) == bool(edge)


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


RANKS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def _rank_cells(accuracy_of) -> dict:
    cells = {}
    for task in TASK_NAMES:
        cells[("Individual", "methods", None, task)] = _outcomes(0.95, 400, f"ind/{task}")
        for rank in RANKS:
            cells[("CART", "rank", rank, task)] = accuracy_of(rank, task)
    return cells


@pytest.mark.parametrize(("peak", "verdict"), [(0.2, "reproduced"), (0.5, "contradicted")])
def test_rank_claim_can_be_contradicted_and_reproduced(peak: float, verdict: str) -> None:
    def accuracy_of(rank, task):
        return _outcomes(0.9 if rank == peak else 0.7, 400, f"{rank}/{task}")

    spec = next(c for c in CLAIMS if c.key == "multitask_cart_rank")
    assert spec(_results(_rank_cells(accuracy_of))).verdict == verdict


def test_rank_claim_chooses_on_even_examples_and_compares_on_odd() -> None:
    """Rank 0.2 is better than 0.5 on the even examples only: it is chosen, but the odd
    examples, where both answer alike, cannot confirm it: no verdict either way."""
    shared = {task: _outcomes(0.7, 400, f"shared/{task}") for task in TASK_NAMES}

    def accuracy_of(rank, task):
        vec = shared[task].copy()
        if rank == 0.2:
            vec[0::2] = 1  # better on the even examples only
        elif rank != 0.5:
            vec = _outcomes(0.3, 400, f"{rank}/{task}")
        return vec

    claim = next(c for c in CLAIMS if c.key == "multitask_cart_rank")(
        _results(_rank_cells(accuracy_of))
    )
    assert "rank 0.2" in claim.conditions[0].label and "rank 0.5" in claim.conditions[0].label
    assert claim.conditions[0].estimate == pytest.approx(0.0)
    assert claim.verdict == "inconclusive"


def test_several_seeds_train_one_suite_each_and_are_replicates(tmp_path) -> None:
    """Two training seeds: two suites, rows per seed, the claims' units hold both."""
    config = tiny_config()
    spec = config.multitask.model_copy(
        update={"seeds": [0, 1], "methods": ["linear", "ties", "cart"], "ranks": []}
    )
    config = config.model_copy(update={"multitask": spec})
    out = tmp_path / "out"
    run_study(config, out, progress=False)
    df = pd.read_csv(out / "results.csv")
    assert set(df["seed"]) == {0, 1}
    for seed in (0, 1):
        assert (out / "multitask" / f"seed-{seed}" / "manifest.json").is_file()
    a, b = (df[(df["seed"] == s) & (df["method"] == "Individual")] for s in (0, 1))
    assert a["value"].tolist() != b["value"].tolist()  # other inits, other models
    from mergelab.report.claims import _normalized_cells, _task_units
    from mergelab.report.verdicts import Condition

    results = Results.read(out)
    cells = _normalized_cells(results, results.select(study.MULTITASK, metric="accuracy"))
    cond = _task_units(
        Condition("x", "greater"),
        cells,
        ("TIES", "methods", None),
        ("Weight Averaging", "methods", None),
    )
    assert [len(unit.contrasts) for _, unit, _ in cond.units] == [2] * len(TASKS)
    from mergelab.report.claims import seed_note

    assert "Multi-task merging: intervals resample the test examples and the 2 training" in (
        seed_note(results)
    )


def test_several_seeds_with_checkpoints_are_refused(tmp_path) -> None:
    import yaml

    data = {
        "name": "x",
        "multitask": {
            **MULTITASK,
            "seeds": [0, 1],
            "pretrained": "p.safetensors",
            "checkpoints": ["a", "b", "c"],
        },
    }
    data["multitask"].pop("pretrain"), data["multitask"].pop("finetune")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"multitask\.seeds: several seeds with checkpoints"):
        load_config(path)
