"""Training many runs: dependency order, duplicates, caching, failures, and parallel
processes that give the same bytes as serial training."""

from __future__ import annotations

import pytest

from mergelab.train import (
    IngredientRecipe,
    TrainConfig,
    TrainingError,
    train_model,
    train_recipes,
    train_runs,
)


def tiny(**kw) -> TrainConfig:
    base = {
        "dataset": "digits",
        "arch": "mlp",
        "model_kwargs": {"hidden": [32]},
        "steps": 20,
        "batch_size": 32,
        "lr": 0.05,
    }
    return TrainConfig(**{**base, **kw})


def start_and_runs(n: int = 3) -> tuple[TrainConfig, list[TrainConfig]]:
    start = tiny(steps=40)
    runs = [
        tiny(init=start.config_hash(), reset_head=True, seed=1 + i, data_seed=7 + i, augment=True)
        for i in range(n)
    ]
    return start, runs


def test_serial_pool_trains_starts_first_once_each_and_in_input_order(tmp_path):
    start, runs = start_and_runs()
    configs = [runs[0], start, runs[1], runs[0], runs[2]]  # a fine-tune before its start
    lines: list[str] = []
    paths = train_runs(
        configs, cache_dir=tmp_path, progress=False, log=lines.append, labels=list("abcde")
    )
    assert [p.stem for p in paths] == [c.config_hash() for c in configs]
    assert paths[0] == paths[3]
    assert len(lines) == 4  # the duplicate trained once
    assert lines[0].startswith("trained 1/4: b (")  # the start before anything needing it
    assert [line.split(":")[1].split(" (")[0].strip() for line in lines] == ["b", "a", "c", "e"]
    # everything cached: nothing trains, nothing is logged
    lines.clear()
    assert train_runs(configs, cache_dir=tmp_path, progress=False, log=lines.append) == paths
    assert lines == []
    # a start only in the cache (not listed) is fine; one that is nowhere is refused up front
    more = tiny(init=start.config_hash(), seed=9)
    assert train_runs([more], cache_dir=tmp_path, progress=False)[0].is_file()
    with pytest.raises(TrainingError, match="neither listed nor trained"):
        train_runs([tiny(init="f" * 64)], cache_dir=tmp_path, progress=False)


def test_a_failing_run_is_named(tmp_path):
    bad = tiny(lr=1e12, steps=25, weight_decay=0.0, seed=3)
    with pytest.raises(TrainingError, match=r"mlp on digits, seed 3.*lower the learning rate"):
        train_runs([tiny(), bad], cache_dir=tmp_path, progress=False)
    assert (tmp_path / f"{tiny().config_hash()}.safetensors").is_file()  # the good one stays


@pytest.mark.slow
def test_two_workers_give_the_bytes_of_serial_training(tmp_path):
    start, runs = start_and_runs(3)
    patient = tiny(steps=None, epochs=3, batch_size=100, patience=1, seed=11)
    configs = [*runs, start, patient]
    serial = [
        train_model(c, cache_dir=tmp_path / "serial", progress=False)
        for c in [start, *runs, patient]
    ]
    lines: list[str] = []
    parallel = train_runs(
        configs, cache_dir=tmp_path / "pool", workers=2, progress=False, log=lines.append
    )
    assert [p.name for p in parallel] == [p.name for p in [*serial[1:4], serial[0], serial[4]]]
    by_name = {p.name: p.read_bytes() for p in serial}
    assert all(p.read_bytes() == by_name[p.name] for p in parallel)
    assert len(lines) == 5 and lines[-1].startswith("trained 5/5: ")
    # the start finished before any of its fine-tunes did (they could not start earlier)
    start_line = next(i for i, line in enumerate(lines) if "seed 0" in line)
    fine_lines = [i for i, line in enumerate(lines) if any(f"seed {s}," in line for s in (1, 2, 3))]
    assert all(start_line < i for i in fine_lines)
    # a failure in a worker process is named as well, and nothing else is left running
    bad = tiny(lr=1e12, steps=25, weight_decay=0.0, seed=3, data_seed=99)
    with pytest.raises(TrainingError, match=r"mlp on digits, seed 3.*lower the learning rate"):
        train_runs([bad, tiny(seed=21), tiny(seed=22)], cache_dir=tmp_path / "x", workers=2)
    # recipes share one pool; their ingredients are the serial bytes too
    r = IngredientRecipe(
        dataset="digits",
        arch="mlp",
        model_kwargs={"hidden": [16]},
        n_models=2,
        pretrain={"steps": 10, "batch_size": 32},
        train={"steps": 5, "batch_size": 32},
    )
    [got] = train_recipes([r], cache_dir=tmp_path / "r2", workers=2, progress=False)
    [want] = train_recipes([r], cache_dir=tmp_path / "r1", workers=1, progress=False)
    assert [p.read_bytes() for p in got] == [p.read_bytes() for p in want]
