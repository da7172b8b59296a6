"""Ingredient recipes: shared starts, cycling of lrs/augment, resuming, the CLI."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from mergelab.errors import MergeError
from mergelab.io import load_state_dict
from mergelab.train import (
    IngredientRecipe,
    make_ingredients,
    read_train_config,
    start_checkpoint,
)
from mergelab.train import trainer as trainer_module
from mergelab.train_cli import add_train_parser

SMALL = {
    "dataset": "digits",
    "arch": "mlp",
    "model_kwargs": {"hidden": [32]},
}


def flat(path) -> torch.Tensor:
    sd = load_state_dict(path)
    return torch.cat([v.flatten().double() for v in sd.values() if v.is_floating_point()])


def recipe(**kw) -> IngredientRecipe:
    base = {
        **SMALL,
        "n_models": 3,
        "mode": "shared",
        "pretrain": {"steps": 60, "lr": 0.1, "batch_size": 32},
        "train": {"steps": 15, "lr": 0.02, "batch_size": 32},
    }
    return IngredientRecipe(**{**base, **kw})


def test_lrs_and_augment_are_cycled_and_seeds_differ():
    r = recipe(n_models=5, lrs=[0.05, 0.1, 0.02], augment=[True, False])
    configs = r.ingredient_configs()
    assert [c.lr for c in configs] == [0.05, 0.1, 0.02, 0.05, 0.1]
    assert [c.augment for c in configs] == [True, False, True, False, True]
    assert len({c.seed for c in configs}) == 5
    assert len({c.data_seed for c in configs}) == 5
    assert len({c.config_hash() for c in configs}) == 5
    start = r.start_config()
    assert start is not None and start.steps == 60 and start.init is None
    assert all(c.init == start.config_hash() for c in configs)
    assert all(c.steps == 15 for c in configs)
    plain = recipe(n_models=2).ingredient_configs()
    assert [c.lr for c in plain] == [0.02, 0.02]
    assert [c.augment for c in plain] == [False, False]


def test_shared_ingredients_start_from_the_pretrained_weights(tmp_path):
    shared = make_ingredients(recipe(), cache_dir=tmp_path, progress=False)
    start = start_checkpoint(recipe(), tmp_path)
    assert start is not None and start.is_file()
    theta0 = flat(start)
    indep = make_ingredients(
        recipe(mode="independent", pretrain=None), cache_dir=tmp_path, progress=False
    )
    assert start_checkpoint(recipe(mode="independent", pretrain=None), tmp_path) is None
    shared_dist = [float((flat(p) - theta0).norm()) for p in shared]
    indep_dist = [float((flat(p) - theta0).norm()) for p in indep]
    assert all(d > 0 for d in shared_dist)  # the fine-tunes did train
    assert max(shared_dist) < 0.2 * min(indep_dist)
    assert len({p.name for p in shared + indep}) == 6
    # zero fine-tuning steps: every ingredient *is* the shared start
    frozen = make_ingredients(recipe(train={"steps": 0}), cache_dir=tmp_path, progress=False)
    assert all(torch.equal(flat(p), theta0) for p in frozen)
    assert all(read_train_config(p).init == start.stem for p in frozen)


def test_shared_without_pretrain_shares_one_seeded_init(tmp_path):
    r = recipe(pretrain=None, train={"steps": 0})
    paths = make_ingredients(r, cache_dir=tmp_path, progress=False)
    start = start_checkpoint(r, tmp_path)
    assert all(torch.equal(flat(p), flat(start)) for p in paths)
    indep = make_ingredients(
        recipe(mode="independent", pretrain=None, train={"steps": 0}),
        cache_dir=tmp_path,
        progress=False,
    )
    assert not torch.equal(flat(indep[0]), flat(indep[1]))


def test_interrupted_recipe_resumes_with_finished_runs_reused(tmp_path, monkeypatch):
    real_fit = trainer_module.fit
    calls: list[int] = []

    def failing_fit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # start and ingredient 0 done, ingredient 1 dies
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "fit", failing_fit)
    with pytest.raises(KeyboardInterrupt):
        make_ingredients(recipe(), cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    assert not list(tmp_path.glob(".*"))

    def counting_fit(*args, **kwargs):
        calls.append(1)
        return real_fit(*args, **kwargs)

    calls.clear()
    monkeypatch.setattr(trainer_module, "fit", counting_fit)
    paths = make_ingredients(recipe(), cache_dir=tmp_path, progress=False)
    assert len(calls) == 2  # only ingredients 1 and 2 were trained
    calls.clear()
    assert make_ingredients(recipe(), cache_dir=tmp_path, progress=False) == paths
    assert calls == []


def test_recipe_validation():
    with pytest.raises(ValueError, match="independent"):
        IngredientRecipe(mode="independent", pretrain={"steps": 1})
    with pytest.raises(ValueError):
        IngredientRecipe(lrs=[])
    with pytest.raises(ValueError):
        IngredientRecipe(lrs=[0.1, -1])
    with pytest.raises(ValueError):
        IngredientRecipe(n_models=0)


def test_recipe_yaml_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: mlp\ntrain: {epochs: 1, steps: 3}\n")
    with pytest.raises(MergeError, match="train"):
        IngredientRecipe.from_yaml(bad)
    bad.write_text("arch: mlp\nlearning_rate: 0.1\n")
    with pytest.raises(MergeError, match="learning_rate"):
        IngredientRecipe.from_yaml(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(MergeError, match="mapping"):
        IngredientRecipe.from_yaml(bad)


def test_cli_writes_ingredients_into_out(tmp_path, capsys):
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(
        "dataset: digits\narch: mlp\nmodel_kwargs: {hidden: [32]}\nn_models: 3\n"
        "mode: shared\npretrain: {steps: 20, batch_size: 32}\n"
        "train: {steps: 5, batch_size: 32}\nlrs: [0.05, 0.02]\n"
    )
    parser = argparse.ArgumentParser(prog="mergelab")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["train", str(recipe_file), "--out", str(out), "--cache-dir", str(cache)]
    args = parser.parse_args([*argv, "--no-progress"])
    assert args.run(args) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(p.split("/")[-1] for p in printed)
    assert names == [
        "ingredient-00.safetensors",
        "ingredient-01.safetensors",
        "ingredient-02.safetensors",
        "start.safetensors",
    ]
    manifest = json.loads((out / "ingredients.json").read_text())
    for i, stem in enumerate(manifest["ingredients"]):
        cached = cache / f"{stem}.safetensors"
        assert (out / f"ingredient-{i:02d}.safetensors").read_bytes() == cached.read_bytes()
        assert read_train_config(cached).lr == [0.05, 0.02][i % 2]
    # a second run trains nothing and replaces the files in place
    args = parser.parse_args([*argv, "--no-progress"])
    assert args.run(args) == 0
    assert len(list(cache.glob("*.safetensors"))) == 4
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    bad = parser.parse_args(["train", str(tmp_path / "missing.yaml"), "--out", str(out)])
    with pytest.raises(MergeError, match="cannot read"):
        bad.run(bad)
