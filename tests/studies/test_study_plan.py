"""``plan_study``: the dry run counts what the study would train and evaluate, from the
config alone (no on-disk data, no training, no folder)."""

from __future__ import annotations

import json

import pytest

import mergelab.data as data_pkg
import mergelab.data.registry as data_registry
from mergelab.studies import STUDIES, load_config
from mergelab.studies.context import StudyContext
from mergelab.studies.plan import StudyPlan, dataset_facts, plan_study


def _guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to load an on-disk dataset fails the test; embedded sets still load."""
    real = data_registry.load_dataset

    def guarded(spec, *args, **kwargs):
        name, _ = data_registry.parse_spec(spec)
        entry = data_registry.DATASETS.get(name)
        if entry is not None and entry.needs_path:
            raise AssertionError(f"the dry run read on-disk data: {spec}")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(data_registry, "load_dataset", guarded)
    monkeypatch.setattr(data_pkg, "load_dataset", guarded)


@pytest.fixture(autouse=True)
def no_disk_data(monkeypatch):
    _guard(monkeypatch)


@pytest.fixture(scope="module")
def paper():
    config, _ = load_config("paper")
    return config


@pytest.fixture(scope="module")
def paper_plan(paper):
    with pytest.MonkeyPatch.context() as mp:
        _guard(mp)
        return plan_study(paper)


def test_tiny_counts_every_run_the_studies_need_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, _ = load_config("tiny")
    ctx = StudyContext(config, tmp_path / "never")
    recipes = [r for study in STUDIES.values() for r in study.needed_recipes(ctx)]
    runs = {c.config_hash(): c for r in recipes for c in r.all_configs()}
    assert len(runs) < sum(len(r.all_configs()) for r in recipes)  # studies share runs

    plan = plan_study(config)
    assert plan.total.runs == len(runs)
    assert plan.total.steps == sum(c.steps for c in runs.values())  # tiny gives steps
    assert plan.total.passes > 0 and plan.total.eval_flops > 0
    assert sum(t.runs for t in plan.studies.values()) == len(runs)
    assert sum(t.runs for t in plan.settings.values()) == len(runs)
    assert list(tmp_path.iterdir()) == []  # no output folder, nothing written
    assert not ctx.out.exists()


def test_tiny_evaluation_passes_follow_the_config():
    config, _ = load_config("tiny")
    plan = plan_study(config)
    settings = len(config.seeds) * len(config.datasets) * len(config.archs)
    settings += len(config.seeds) * len(config.independent.archs) * len(config.datasets)
    # every ingredient on val and test; per N: uniform soup (val, test), up to N - 1
    # greedy candidates on val and the greedy soup on test
    assert plan.studies["ingredients"].passes == settings * config.n_models * 2
    per_setting = sum(n + 2 for n in config.counts())
    assert plan.studies["weights_vs_features"].passes == settings * per_setting
    assert plan.studies["magnitude"].passes > 0
    assert plan.studies["weight_stats"].passes == 0


def test_gpu_hours_scale_inversely_with_throughput():
    config, _ = load_config("tiny")
    slow = plan_study(config.model_copy(update={"gpu_tflops": 10.0}))
    fast = plan_study(config.model_copy(update={"gpu_tflops": 40.0}))
    assert slow.gpu_hours > 0
    assert slow.gpu_hours == pytest.approx(4 * fast.gpu_hours)
    assert slow.total.flops == pytest.approx(fast.total.flops)


def test_render_and_json():
    config, _ = load_config("tiny")
    plan = plan_study(config)
    text = plan.render()
    assert any(line.startswith("total:") for line in text.splitlines())
    assert "digits" in text and "weights_vs_features" in text
    data = json.loads(plan.to_json())
    assert data["total"]["runs"] == plan.total.runs
    assert data["total"]["gpu_hours"] == pytest.approx(plan.gpu_hours)
    assert {s["dataset"] for s in data["settings"]} >= {"digits"}


def test_paper_plan_lists_every_arch_and_dataset(paper, paper_plan):
    plan: StudyPlan = paper_plan
    labels = {f.label for f in plan.datasets.values()}
    assert {
        "cifar10",
        "cifar100",
        "tinyimagenet",
        "celeba:Smiling",
        "chestxray14",
    } <= labels
    assert any(label.startswith("pathmnist") for label in labels)
    assert any(label.startswith("dermamnist") for label in labels)
    assert all(f.origin.startswith("assumed") for f in plan.datasets.values())
    archs = {a for _, a, _ in plan.settings}
    assert set(paper.archs) <= archs
    for spec in paper.datasets:
        label = plan.datasets[spec].label
        assert {a for d, a, _ in plan.settings if d == label} >= set(paper.archs)
    assert plan.gpu_hours > 0 and plan.total.runs >= len(paper.archs) * len(paper.datasets) * 10
    text = plan.render()
    assert "GPU hours" in text and "total:" in text


def test_paper_magnitude_counts_batchnorm_modes_only_where_there_is_batchnorm(paper, paper_plan):
    # plain VGG19 on CIFAR-100 is evaluated once per option, ResNet-18 once per BN mode
    mag = paper.magnitude
    counts = sorted({min(k, paper.n_models) for k in mag.n_models if k >= 2})
    top = max(counts)
    scaled_factors = sum(1 for c in mag.factors if c != 1)
    models = top + top * scaled_factors
    soups_val = sum(n - 1 for n in counts) * (1 + len(mag.scaled) * scaled_factors)
    soups_test = 2 * len(counts) * (1 + len(mag.scaled) * scaled_factors)
    one_mode = 2 * models + soups_val + soups_test
    assert paper_plan.studies["magnitude"].passes == one_mode * (1 + len(mag.bn))


def test_unknown_on_disk_dataset_without_files_is_a_clear_error(tmp_path):
    from mergelab.errors import MergeError

    with pytest.raises(MergeError, match="not in the dry run's table"):
        dataset_facts(f"imagefolder:{tmp_path / 'missing'}")
    facts = dataset_facts("cifar100:/nowhere")
    assert (facts.train, facts.val, facts.test, facts.num_classes) == (45_000, 5_000, 10_000, 100)
    assert dataset_facts("pathmnist:/x/pathmnist_224.npz").image_size == (224, 224)
    assert dataset_facts("celeba:/x/celeba:all").multilabel


def test_the_run_log_counts_distinct_runs_as_the_dry_run_does(tmp_path, monkeypatch, capsys):
    import mergelab.train.pool as pool

    config, _ = load_config("tiny")
    monkeypatch.setattr(pool, "train_recipes", lambda todo, **kwargs: [[] for _ in todo])

    def log_line(ctx: StudyContext) -> str:
        recipes = [r for study in STUDIES.values() for r in study.needed_recipes(ctx)]
        ctx.prepare(recipes)
        lines = [x for x in capsys.readouterr().err.splitlines() if "ingredients:" in x]
        assert len(lines) == 1
        return lines[0]

    runs = plan_study(config).total.runs
    ctx = StudyContext(config, tmp_path / "out", workers=2)
    recipes = {r.model_dump_json(): r for s in STUDIES.values() for r in s.needed_recipes(ctx)}
    line = log_line(ctx)
    assert f"{len(recipes)} recipes, {runs} training runs, 2 worker(s)" in line
    assert "cached" not in line

    keys = sorted({c.config_hash() for r in recipes.values() for c in r.all_configs()})
    assert len(keys) == runs
    ctx.runs_dir.mkdir(parents=True)
    for key in keys[:5]:
        (ctx.runs_dir / f"{key}.safetensors").touch()
    line = log_line(StudyContext(config, ctx.out, workers=2))
    assert f"{runs} training runs (5 cached, {runs - 5} to train)" in line
    for key in keys[5:]:
        (ctx.runs_dir / f"{key}.safetensors").touch()
    line = log_line(StudyContext(config, ctx.out, workers=2))
    assert line.endswith(f"ingredients: all {runs} training runs cached ({len(recipes)} recipes)")


@pytest.mark.parametrize("seeds", [None, [3, 4]])
def test_multitask_dry_run_counts_its_training_and_every_merge_pass(seeds) -> None:
    """3 tasks, pre-training 30 steps and fine-tunes 15; 7 methods (linear: no grid, the
    6 others 2 coefficients), 2 CART ranks, one 2-task subset merged by linear and cart;
    one suite, or two (two training seeds: twice everything)."""
    from mergelab.studies.config import StudyConfig

    config = StudyConfig(
        name="mt",
        templates={"enabled": False},
        magnitude={"enabled": False},
        weight_stats=False,
        multitask={
            "enabled": True,
            "tasks": ["mt-mnist", "mt-rotated", "mt-inverted"],
            "arch": "mlp",
            "pretrain": {"steps": 30},
            "finetune": {"steps": 15},
            "coefficients": [0.3, 1.0],
            "ranks": [0.05, 0.2],
            "task_counts": [2],
            "count_methods": ["linear", "cart"],
            "seeds": seeds,
        },
    )
    t = plan_study(config).studies["multitask"]
    k = 1 if seeds is None else 2
    assert (t.runs, t.steps) == (4 * k, (30 + 3 * 15) * k)
    # A grid of 2, extended past its edge at most twice: 4 merges. Each task of all three:
    # val 1 + 6 * 4 (methods) + 2 * 4 (ranks) = 33, test 7 + 2 + 2 (own and pre-trained
    # backbones) = 11; each task of the pair: val 1 + 4, test 2.
    assert (t.val_passes, t.test_passes) == ((3 * 33 + 2 * 5) * k, (3 * 11 + 2 * 2) * k)


def test_multitask_dry_run_counts_what_it_can_when_a_task_is_not_on_disk(tmp_path) -> None:
    """The user's suite names an ImageFolder task that is not there yet: the dry run says
    so in a note, counts the other task, and lists the files a real run would read."""
    from mergelab.studies.config import StudyConfig

    missing = tmp_path / "pets"
    config = StudyConfig(
        name="mt",
        templates={"enabled": False},
        magnitude={"enabled": False},
        weight_stats=False,
        multitask={
            "enabled": True,
            "tasks": [f"imagefolder:{missing}", "mt-parity"],
            "arch": "mlp",
            "pretrained": str(tmp_path / "pre.safetensors"),
            "checkpoints": [str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")],
            "methods": ["linear"],
            "ranks": [],
            "task_counts": [],
        },
    )
    plan = plan_study(config)
    t = plan.studies["multitask"]
    assert t.runs == 0 and t.test_passes == 3  # mt-parity: own, pre-trained, linear
    notes = "\n".join(plan.notes)
    assert f"multitask: imagefolder:{missing} not counted" in notes
    assert f"reads multitask.checkpoints[1]: {tmp_path / 'b.safetensors'}" in notes
