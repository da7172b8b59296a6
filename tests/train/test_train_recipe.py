"""Ingredient recipes: shared starts, fresh heads, other sources, init checkpoints,
cycling of lrs/augment, resuming, the CLI."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from mergelab.errors import MergelabError
from mergelab.io import load_state_dict
from mergelab.train import (
    IngredientRecipe,
    TrainingError,
    make_ingredients,
    read_train_config,
    start_checkpoint,
    train_recipes,
)
from mergelab.train import trainer as trainer_module
from mergelab.train_cli import add_train_parser

SMALL = {
    "dataset": "digits",
    "arch": "mlp",
    "model_kwargs": {"hidden": [32]},
}


# One step too small to move a weight (the smallest run a recipe allows): each ingredient
# keeps the weights it starts from, up to ~1e-30.
STILL = {"steps": 1, "lr": 1e-30}


def flat(path) -> torch.Tensor:
    sd = load_state_dict(path)
    return torch.cat([v.flatten().double() for v in sd.values() if v.is_floating_point()])


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=0, atol=1e-20)


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
    assert all(c.reset_head for c in plain)  # the paper's protocol: a fresh head per run
    assert not any(c.reset_head for c in recipe(head="keep").ingredient_configs())
    indep = recipe(mode="independent", pretrain=None)
    assert not any(c.reset_head or c.init for c in indep.ingredient_configs())
    assert r.all_configs() == [start, *configs]
    assert indep.all_configs() == indep.ingredient_configs()


def body(path) -> torch.Tensor:
    sd = load_state_dict(path)
    return torch.cat([v.flatten().double() for k, v in sd.items() if not k.startswith("head.")])


def head(path) -> torch.Tensor:
    sd = load_state_dict(path)
    return torch.cat([sd["head.weight"].flatten(), sd["head.bias"]])


def test_shared_ingredients_start_from_the_pretrained_weights(tmp_path):
    shared = make_ingredients(recipe(head="keep"), cache_dir=tmp_path, progress=False)
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
    # fine-tunes that do not move: every ingredient is the shared start
    frozen = make_ingredients(recipe(train=STILL, head="keep"), cache_dir=tmp_path, progress=False)
    assert all(same(flat(p), theta0) for p in frozen)
    assert all(read_train_config(p).init == start.stem for p in frozen)


def test_fresh_heads_differ_per_run_over_one_shared_body(tmp_path):
    r = recipe(train=STILL)  # head: fresh is the default
    paths = make_ingredients(r, cache_dir=tmp_path, progress=False)
    start = start_checkpoint(r, tmp_path)
    assert all(same(body(p), body(start)) for p in paths)
    heads = [head(p) for p in [start, *paths]]
    assert all(
        not torch.equal(a, b) for i, a in enumerate(heads) for b in heads[i + 1 :]
    )  # start and every run: a head of its own
    again = make_ingredients(r, cache_dir=tmp_path / "again", progress=False)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]


def test_shared_without_pretrain_shares_one_seeded_init(tmp_path):
    r = recipe(pretrain=None, train=STILL, head="keep")
    paths = make_ingredients(r, cache_dir=tmp_path, progress=False)
    start = start_checkpoint(r, tmp_path)
    assert all(same(flat(p), flat(start)) for p in paths)
    indep = make_ingredients(
        recipe(mode="independent", pretrain=None, train=STILL),
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
    with pytest.raises(ValueError, match="not both"):
        IngredientRecipe(init="start.safetensors", pretrain={"steps": 1})
    with pytest.raises(ValueError, match="independent"):
        IngredientRecipe(mode="independent", init="start.safetensors")
    with pytest.raises(ValueError, match="source"):
        IngredientRecipe(init="start.safetensors", source="mnist5k")
    with pytest.raises(ValueError, match="head"):
        IngredientRecipe(head="new")
    with pytest.raises(ValueError, match="train_slice"):
        IngredientRecipe(pretrain={"train_fraction": 0.5})


def test_sections_carry_their_train_slices():
    r = recipe(
        pretrain={"steps": 5, "train_slice": [0, 0.5]},
        train={"steps": 5, "train_slice": [0.5, 1]},
    )
    start, *runs = r.all_configs()
    assert start.train_slice == (0.0, 0.5)
    assert all(c.train_slice == (0.5, 1.0) for c in runs)


def test_source_dataset_start_is_built_for_the_target_input(tmp_path):
    r = recipe(
        source="mnist5k",
        pretrain={"steps": 10, "batch_size": 32, "train_slice": [0, 0.1]},
        n_models=2,
    )
    start = r.start_config()
    assert start is not None
    assert (start.dataset, start.in_chans, start.img_size) == ("mnist5k", 1, 8)
    runs = r.ingredient_configs()
    assert all((c.dataset, c.in_chans, c.img_size) == ("digits", 1, 8) for c in runs)
    assert all(c.init == start.config_hash() and c.reset_head for c in runs)
    paths = make_ingredients(r, cache_dir=tmp_path, progress=False)
    start_path = start_checkpoint(r, tmp_path)
    sidecar = json.loads(start_path.with_suffix(".json").read_text())
    assert sidecar["config"]["dataset"] == "mnist5k" and sidecar["config"]["img_size"] == 8
    # the start is an mnist5k model of 8x8 inputs: its first layer has 64 inputs
    assert load_state_dict(start_path)["layers.0.weight"].shape == (32, 64)
    assert all(load_state_dict(p)["layers.0.weight"].shape == (32, 64) for p in paths)
    # explicit inputs win; a source equal to the dataset changes nothing
    assert recipe(source="mnist5k", img_size=12).start_config().img_size == 12
    assert recipe(source="digits").all_configs() == recipe().all_configs()
    # independent mode ignores the source
    indep = recipe(mode="independent", pretrain=None, source="mnist5k")
    assert indep.ingredient_configs() == recipe(mode="independent", pretrain=None).all_configs()


def test_init_checkpoint_is_the_shared_start(tmp_path):
    from mergelab.io import save_state_dict
    from mergelab.models import build_model

    torch.manual_seed(3)
    foreign = build_model("mlp", 5, in_chans=1, img_size=8, hidden=[32])  # 5 classes
    ckpt = tmp_path / "pretrained.safetensors"
    save_state_dict(foreign.state_dict(), ckpt)
    r = recipe(init=str(ckpt), pretrain=None, train=STILL, n_models=2)
    assert r.start_config() is None
    assert [c.init for c in r.all_configs()] == [str(ckpt), str(ckpt)]
    paths = make_ingredients(r, cache_dir=tmp_path / "cache", progress=False)
    assert start_checkpoint(r, tmp_path / "cache") == ckpt
    theta = load_state_dict(ckpt)
    for p in paths:
        sd = load_state_dict(p)
        assert same(sd["layers.0.weight"], theta["layers.0.weight"])
        assert sd["head.weight"].shape == (10, 32)  # a fresh 10-class head
    # the hash follows the file's content, not its path
    ckpt.write_bytes(ckpt.read_bytes())
    assert [c.config_hash() for c in r.all_configs()] == [
        read_train_config(p).config_hash() for p in paths
    ]
    with pytest.raises(TrainingError, match="shape mismatches"):
        make_ingredients(
            recipe(init=str(ckpt), pretrain=None, head="keep", train=STILL),
            cache_dir=tmp_path / "cache",
            progress=False,
        )


def test_train_recipes_shares_one_pool_and_dedupes(tmp_path):
    a = recipe(n_models=2)
    b = recipe(n_models=3)  # same start, its first two runs are a's
    lines: list[str] = []
    paths = train_recipes([a, b], cache_dir=tmp_path, progress=False, log=lines.append)
    assert len(paths[0]) == 2 and len(paths[1]) == 3
    assert paths[1][:2] == paths[0]
    assert len(lines) == 4  # start + 3 distinct fine-tunes
    assert "start" in lines[0] and lines[0].startswith("trained 1/4: mlp on digits")
    assert make_ingredients(b, cache_dir=tmp_path, progress=False) == paths[1]


def test_recipe_yaml_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: mlp\ntrain: {epochs: 1, steps: 3}\n")
    with pytest.raises(MergelabError, match="train"):
        IngredientRecipe.from_yaml(bad)
    bad.write_text("arch: mlp\nlearning_rate: 0.1\n")
    with pytest.raises(MergelabError, match="learning_rate"):
        IngredientRecipe.from_yaml(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(MergelabError, match="mapping"):
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
    leftovers = [p for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers in ([], [out / ".mergelab-output"])  # no temp file; the folder's mark
    bad = parser.parse_args(["train", str(tmp_path / "missing.yaml"), "--out", str(out)])
    with pytest.raises(MergelabError, match="cannot read"):
        bad.run(bad)
    bad = parser.parse_args([*argv, "--workers", "0"])
    with pytest.raises(MergelabError, match="--workers"):
        bad.run(bad)


BAD_RECIPES = {
    "arch: resnet9\n": "arch: unknown architecture 'resnet9'; did you mean resnet8? (allowed: "
    "linear, mlp, cnn, resnet_small, resnet8, resnet14, resnet20, vit_small, "
    "tv:<torchvision name>, timm:<timm name>)",
    "arch: tv:resnet181\n": "arch: unknown torchvision classifier 'resnet181'; did you mean "
    "resnet18? (allowed: torchvision.models.list_models(module=torchvision.models))",
    "dataset: nodata\n": "dataset: unknown dataset 'nodata'",
    "dataset: cifar10:/no/such/folder\n": "dataset: /no/such/folder does not exist",
    "init: /no/such.safetensors\n": "init: /no/such.safetensors does not exist; init is a "
    "checkpoint file",
    "train: {batch_size: 0}\n": "train.batch_size: 0 is too small (allowed: >= 1)",
    "train: {lr: .nan}\n": "train.lr: nan is not a finite number (allowed: finite numbers)",
    "train: {epochs: -1}\n": "train.epochs: -1 is too small (allowed: > 0)",
    "train: {epochs: 0}\n": "train.epochs: 0 is too small (allowed: > 0)",
    "train: {steps: 0}\n": "train.steps: 0 is too small (allowed: >= 1)",
    "train: {steps: 2, warmup_steps: 1000}\n": "train.warmup_steps: 1000 is not shorter than "
    "the run (steps: 2); the lr would never leave the warm-up (allowed: 0 to 1)",
    "pretrain: {steps: 5, warmup_steps: 5}\n": "pretrain.warmup_steps: 5 is not shorter than "
    "the run (steps: 5); the lr would never leave the warm-up (allowed: 0 to 4)",
    "seed: 100000000000000000000000\n": "seed: 100000000000000000000000 is too large "
    "(allowed: <= 4294967295)",
    "seed: 1.0e+23\n": "seed: 1e+23 is too large for an integer",
    "seed: -5\n": "seed: -5 is too small (allowed: >= 0)",
    "split_seed: 4294967296\n": "split_seed: 4294967296 is too large (allowed: <= 4294967295)",
    "n_models: 1000000000\n": "n_models: 1000000000 is too large (allowed: <= 999)",
    "img_size: 100000\n": "img_size: 100000 is too large (allowed: <= 4096)",
    "train: {augment_padding: 100000}\n": "train.augment_padding: 100000 is too large "
    "(allowed: <= 4096)",
    "train: {steps: 3}\ntrain: {steps: 4}\n": "train: given twice, on lines 3 and 4 "
    "(allowed: each key once; YAML would silently keep the last)",
    "train: {steps: 3, lr: 0.1, steps: 4}\n": "train.steps: given twice, on lines 3 and 3 "
    "(allowed: each key once; YAML would silently keep the last)",
    "pretrain: {lr: -0.1}\n": "pretrain.lr: -0.1 is too small (allowed: > 0)",
    "n_models: 0\n": "n_models: 0 is too small (allowed: >= 1)",
    "mode: both\n": "mode: 'both' is not a choice (allowed: 'shared' or 'independent')",
    "learning_rate: 0.1\n": "learning_rate: unknown key (allowed: "
    + ", ".join(IngredientRecipe.model_fields)
    + ")",
    "model_kwargs: {depth: 3}\n": "model_kwargs: mlp cannot be built for digits: "
    "MLPClassifier.__init__() got an unexpected keyword argument 'depth' (building it for "
    "1x8x8 input, 10 classes)",
    "arch: tv:vit_b_16\n": "arch: tv:vit_b_16 cannot be built for digits: ",
}


BASE = {"dataset": "digits", "arch": "mlp"}  # in every bad recipe, unless it sets the key


@pytest.mark.parametrize("text", list(BAD_RECIPES))
def test_train_refuses_a_bad_recipe_in_one_line_before_any_work(
    text, tmp_path, capsys, monkeypatch
):
    from mergelab.cli import main
    from mergelab.train import pool

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the recipe was checked")

    monkeypatch.setattr(pool, "train_runs", no_training)
    path = tmp_path / "recipe.yaml"
    base = "".join(f"{k}: {v}\n" for k, v in BASE.items() if not text.startswith(f"{k}:"))
    path.write_text(base + text)
    out = tmp_path / "out"
    assert main(["train", str(path), "--out", str(out), "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = f"mergelab: error: {path}: {BAD_RECIPES[text]}"
    assert len(err) == 1 and err[0].startswith(expected), err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ([float("nan"), 1.0], "tensor 'layers.0.weight' has 1 NaN or infinite value "),
        ([float("inf"), -float("inf")], "tensor 'layers.0.weight' has 2 NaN or infinite values "),
    ],
)
def test_init_checkpoint_with_nan_is_refused_before_training(
    values, problem, tmp_path, capsys, monkeypatch
):
    from mergelab.cli import main
    from mergelab.io import save_state_dict
    from mergelab.models import build_model
    from mergelab.train import pool

    monkeypatch.setattr(pool, "train_runs", lambda *a, **k: pytest.fail("trained"))
    state = build_model("mlp", 10, in_chans=1, img_size=8, hidden=[32]).state_dict()
    state["layers.0.weight"].view(-1)[: len(values)] = torch.tensor(values)
    ckpt = tmp_path / "start.safetensors"
    save_state_dict(state, ckpt)
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"dataset: digits\narch: mlp\nmodel_kwargs: {{hidden: [32]}}\ninit: {ckpt}\n"
        "train: {steps: 5}\n"
    )
    out = tmp_path / "out"
    assert main(["train", str(path), "--out", str(out), "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"mergelab: error: {path}: init: {ckpt}: {problem}(allowed: finite values; a start "
        "with them trains to a NaN loss)"
    ]
    assert not out.exists()
    ckpt.write_text("not a checkpoint")  # garbage: one line naming the file, not a traceback
    assert main(["train", str(path), "--out", str(out), "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mergelab: error: {path}: init: {ckpt}: "), err
