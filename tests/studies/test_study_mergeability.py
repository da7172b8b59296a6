"""``mergelab study mergeability``: every task pair measured and merged, the predictors
fitted leave-one-task-out, and claims whose verdicts follow the data (reproduced,
contradicted, inconclusive)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mergeability_fakes import pair_rows, reproducing, with_fits
from user_suite_fakes import IMG_SIZE, IN_CHANS, file_bytes, write_medmnist, write_user_suite

from mergelab.cli import main
from mergelab.diagnose import PAPER_METRICS, diagnose
from mergelab.report import Results, evaluate_claims, study_tables
from mergelab.report.mergeability import GRADIENT_L2, task_range
from mergelab.studies.config import load_config
from mergelab.studies.mergeability import PAIR
from mergelab.studies.plan import plan_study

N_TASKS = 5
CLASSES = 3


def _config(tasks: list[str]) -> dict:
    return {
        "name": "my-mergeability",
        "datasets": [],
        "archs": [],
        "templates": {"enabled": False},
        "magnitude": {"enabled": False},
        "weight_stats": False,
        "multitask": {
            "arch": "mlp",
            "pretrained": "ckpt/pre.safetensors",
            "tasks": tasks,
            "checkpoints": [f"ckpt/task{i}.safetensors" for i in range(len(tasks))],
        },
        "mergeability": {"enabled": True, "samples": 16, "methods": ["linear", "ties"]},
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A user's folder: five MedMNIST-format tasks, a pre-trained mlp and its fine-tunes."""
    root = tmp_path_factory.mktemp("mergeability")
    tasks = {}
    for i in range(N_TASKS):
        path = root / "data" / f"t{i}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_medmnist(path, sizes=(12, 20, 24), n_classes=CLASSES, seed=i)
        tasks[f"dermamnist:{path}"] = CLASSES
    write_user_suite(root / "ckpt", tasks)
    rel = [f"dermamnist:data/t{i}.npz" for i in range(N_TASKS)]
    (root / "my.yaml").write_text(yaml.safe_dump(_config(rel), sort_keys=False))
    return root


@pytest.fixture(scope="module")
def study(root):
    before = file_bytes([root / "ckpt", root / "data"])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert main(["study", "my.yaml", "--out", "out", "--no-progress"]) == 0
    return pd.read_csv(root / "out" / "results.csv", low_memory=False), before


def test_every_pair_is_measured_and_merged(study):
    df, _ = study
    rows = df[df["study"] == "mergeability"]
    pairs = set(zip(rows["dataset"], rows["other_dataset"], strict=True))
    assert len(pairs) == N_TASKS * (N_TASKS - 1) // 2
    merged = rows[rows["method"] != PAIR]
    assert set(merged["method"]) == {"Weight Averaging", "TIES"}
    assert len(merged) == 2 * len(pairs)
    metrics = rows[rows["method"] == PAIR]
    assert set(PAPER_METRICS) <= set(metrics["metric"])
    assert metrics.groupby(["dataset", "other_dataset"]).size().eq(len(PAPER_METRICS) + 1).all()


def test_weight_averaging_row_equals_a_plain_evaluation(root, study, monkeypatch):
    """The pair's normalized accuracy = mean over its tasks of (merged acc / own acc),
    with the merged backbone the plain mean of the two, computed here with torch."""
    from mergelab.data import ImageSpec, as_tensors, load_dataset
    from mergelab.io import load_state_dict
    from mergelab.models import build_model

    df, _ = study
    monkeypatch.chdir(root)
    a, b = "dermamnist:data/t0.npz", "dermamnist:data/t3.npz"
    states = [load_state_dict(Path(f"ckpt/task{i}.safetensors")) for i in (0, 3)]
    mean = {k: (states[0][k] + states[1][k]) / 2 for k in states[0] if not k.startswith("head.")}

    def acc(state: dict, task: str) -> float:
        model = build_model("mlp", CLASSES, in_chans=IN_CHANS, img_size=IMG_SIZE)
        model.load_state_dict(state)
        x, y = as_tensors(load_dataset(task).split("test", ImageSpec(IN_CHANS, IMG_SIZE)))
        with torch.no_grad():
            return (model.eval()(x).argmax(1) == y).double().mean().item()

    expected = []
    for task, state in zip((a, b), states, strict=True):
        head = {k: v for k, v in state.items() if k.startswith("head.")}
        expected.append(acc({**mean, **head}, task) / acc(state, task))
    row = df[
        (df["study"] == "mergeability")
        & (df["method"] == "Weight Averaging")
        & (df["dataset"] == a)
        & (df["other_dataset"] == b)
    ]
    assert len(row) == 1
    assert row["value"].iloc[0] == pytest.approx(np.mean(expected), abs=1e-12)


def test_metric_rows_equal_diagnose(root, study, monkeypatch):
    df, _ = study
    monkeypatch.chdir(root)
    a, b = "dermamnist:data/t1.npz", "dermamnist:data/t2.npz"
    split = Path("out/multitask")
    from mergelab.train.multitask import _file_name

    got = diagnose(
        split / "backbones" / _file_name(a),
        split / "backbones" / _file_name(b),
        split / "pretrained.safetensors",
        data=[a, b],
        arch="mlp",
        heads=[split / "heads" / _file_name(a), split / "heads" / _file_name(b)],
        samples=16,
    ).metrics()
    rows = df[
        (df["study"] == "mergeability")
        & (df["method"] == PAIR)
        & (df["dataset"] == a)
        & (df["other_dataset"] == b)
    ].set_index("metric")["value"]
    for name in ("cosine", "l2_distance", "singular_value_overlap", GRADIENT_L2):
        assert rows[name] == pytest.approx(got[name], rel=1e-9, abs=1e-12)


def test_fits_claims_and_report(root, study):
    df, before = study
    fits = df[df["study"] == "mergeability_fit"]
    full = fits[fits["left_out"] == "none"]
    assert set(full["predictor"]) == {"sparse_pearson", "lasso"}
    folds = full[(full["predictor"] == "sparse_pearson") & (full["metric"] == "fold_r")]
    assert len(folds) == 2 * N_TASKS  # two methods, one fold per task
    assert set(fits["left_out"]) == {"none", *(f"dermamnist:data/t{i}.npz" for i in range(5))}
    claims = (root / "out" / "claims.md").read_text()
    assert "Demystifying Mergeability" in claims
    assert "encoder_gradient_l2 net sign =" in claims
    # the other papers' claims are one sentence, not rows of "not measured"
    assert "Not measured, as their studies did not run here: the" in claims
    assert "Ens Logits" not in claims
    html = (root / "out" / "report.html").read_text()
    assert "mergeability.png" in html
    assert (root / "out" / "figures" / "mergeability.png").stat().st_size > 10_000
    assert file_bytes([root / "ckpt", root / "data"]) == before  # inputs only read


# -- the claims, on constructed rows ---------------------------------------------------------


def _verdicts(pairs: pd.DataFrame) -> dict[str, str]:
    rows = with_fits(pairs)
    return {c.key: c.verdict for c in evaluate_claims(rows) if c.key.startswith("mergeability")}


def test_claims_reproduced_when_gradient_l2_drives_every_method():
    v = _verdicts(pair_rows(reproducing))
    assert set(v.values()) == {"reproduced"}


def test_gradient_claims_contradicted_when_its_sign_is_positive():
    def target(m, method, rng):
        return 0.6 * m[GRADIENT_L2] - m["cosine"] + 0.02 * rng.normal()

    v = _verdicts(pair_rows(target))
    assert v["mergeability_predictable"] == "reproduced"
    assert v["mergeability_gradient_sign"] == "contradicted"
    assert v["mergeability_gradient_top"] != "reproduced"  # cosine is as consistent


def test_gradient_top_contradicted_when_another_metric_drives_every_merge():
    v = _verdicts(pair_rows(lambda m, method, rng: -m["cosine"] + 0.02 * rng.normal()))
    assert v["mergeability_gradient_top"] == "contradicted"
    assert v["mergeability_gradient_sign"] != "reproduced"


def test_noise_gives_no_reproduced_verdict():
    v = _verdicts(pair_rows(lambda m, method, rng: rng.normal()))
    assert v["mergeability_predictable"] != "reproduced"
    assert "reproduced" not in {v["mergeability_gradient_sign"], v["mergeability_gradient_top"]}


def test_ties_differs_follows_the_coefficients():
    def apart(m, method, rng):
        if method == "TIES":
            return m["activation_l2"] + m["stable_rank"] + m["dot"] + 0.05 * rng.normal()
        return -m[GRADIENT_L2] - m["cosine"] - m["spectral_gap"] + 0.05 * rng.normal()

    def alike(m, method, rng):
        return -m[GRADIENT_L2] - m["cosine"] - m["spectral_gap"] + 0.05 * rng.normal()

    assert _verdicts(pair_rows(apart))["mergeability_ties_differs"] == "reproduced"
    assert _verdicts(pair_rows(alike))["mergeability_ties_differs"] != "reproduced"


@pytest.mark.parametrize("seed", [0, 1])
def test_ties_differs_contradicted_when_ties_shares_every_methods_top_metric(seed):
    # each other method follows two metrics of its own; TIES follows one of each of theirs,
    # so its top metrics overlap with every method's while theirs do not overlap at all
    m = list(PAPER_METRICS)
    own = {"Weight Averaging": m[0:2], "Task Arithmetic": m[2:4], "TSV-M": m[4:6], "DARE": m[6:8]}

    def target(metrics, method, rng):
        drivers = m[0:8:2] if method == "TIES" else own[method]
        return sum(metrics[k] for k in drivers) + 0.05 * rng.normal()

    assert _verdicts(pair_rows(target, seed=seed))["mergeability_ties_differs"] == "contradicted"


def test_tables_hold_the_rows_and_the_papers_figures():
    frame = with_fits(pair_rows(lambda m, method, rng: -m[GRADIENT_L2] + rng.normal()))
    tables = study_tables(Results(frame))
    (acc,) = tables["mergeability"]
    assert "normalized test accuracy" in acc.title
    ties = frame[(frame["method"] == "TIES") & (frame["metric"] == "normalized_accuracy")]
    assert acc.frame.loc[("mean", ""), "TIES"] == pytest.approx(100 * ties["value"].mean())
    r_table = next(t for t in tables["mergeability_fit"] if "leave-one-task-out" in t.title)
    pooled = frame[
        (frame["study"] == "mergeability_fit")
        & (frame["predictor"] == "lasso")
        & (frame["left_out"] == "none")
        & (frame["method"] == "DARE")
        & (frame["metric"] == "pooled_r")
    ]["value"]
    assert r_table.frame.loc["DARE", "Lasso: pooled r"] == pytest.approx(pooled.iloc[0])
    overlap = next(t for t in tables["mergeability_fit"] if "overlap" in t.title)
    assert "paper 64.0%" in overlap.note and "paper 79.3%" in overlap.note


def test_task_range():
    iv = task_range(2.5, [1.0, 2.0, float("nan"), 4.0, 3.0])
    assert (iv.estimate, iv.low, iv.high) == (2.5, 1.0, 4.0)
    assert task_range(5.0, [1.0, 2.0, 3.0]).high == 5.0  # the full fit counts too
    assert task_range(1.0, [1.0, 2.0]) is None


# -- config and dry run ----------------------------------------------------------------------


def test_preset_and_dry_run_counts():
    config, _ = load_config("mergeability")
    assert config.mergeability.enabled and not config.multitask.enabled
    plan = plan_study(config)
    tally = plan.studies["mergeability"]
    assert tally.runs == 8  # pre-training + seven fine-tunes
    # per task: its own backbone, and 5 methods x the 6 pairs it is in, on test
    assert tally.passes == 7 * (1 + 6 * 5)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"methods": ["linear", "nope"]}, "mergeability.methods: nope unknown"),
        ({"features": ["cosine", "nope"]}, "mergeability.features: nope unknown"),
        ({"dare_density": 1.5}, "mergeability.dare_density"),
        ("three tasks", "multitask.tasks: 3 tasks; the mergeability study needs at least 4"),
        (
            {"params": {"ties": {"lambda": 0.3, "bogus": 1}}},
            "mergeability.params.ties: bogus: no such parameter of ties",
        ),
    ],
)
def test_bad_sections_are_one_line(tmp_path, capsys, section, message):
    cfg = {"name": "m", "datasets": [], "archs": [], "weight_stats": False}
    cfg["templates"] = {"enabled": False}
    cfg["magnitude"] = {"enabled": False}
    if section == "three tasks":
        cfg["multitask"] = {"tasks": ["mt-mnist", "mt-digits", "mt-rotated"]}
        section = {}
    cfg["mergeability"] = {"enabled": True, **section}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["study", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mergelab: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()
