"""Merging files: formats in and out, the record kept beside the output, determinism."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import yaml
from ckpt_helpers import finetunes, random_state
from safetensors import safe_open
from safetensors.torch import load_file

import mergelab.engine as engine
from mergelab.engine import merge, open_recipe
from mergelab.io import SafetensorsFile, load_state_dict, save_state_dict
from mergelab.recipe import Recipe


@pytest.fixture
def setup(write_st):
    base = random_state(0)
    base["bn.num_batches_tracked"] = np.array(17, dtype=np.int64)
    models = finetunes({k: v for k, v in base.items() if v.dtype != np.int64}, 3)
    for i, m in enumerate(models):
        m["bn.num_batches_tracked"] = np.array(100 + i, dtype=np.int64)
    return (
        base,
        models,
        write_st("base", base),
        [write_st(f"m{i}", m) for i, m in enumerate(models)],
    )


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ties_file_merge_matches_in_memory_and_copies_integers(setup, tmp_path):
    base, models, base_path, paths = setup
    r = Recipe(
        merge_method="ties",
        base_model=str(base_path),
        models=[{"model": str(p), "parameters": {"density": 0.4}} for p in paths],
        parameters={"lambda": 0.8},
    )
    out = merge(r, tmp_path / "merged.safetensors", progress=False)
    got = load_file(str(out))
    expected = engine.merge_state_dicts(
        "ties", models, base, params={"lambda": 0.8}, model_params=[{"density": 0.4}] * 3
    )
    for name in base:
        np.testing.assert_array_equal(got[name].numpy(), expected[name])
    assert int(got["bn.num_batches_tracked"]) == 100  # the first model's, not an average


def test_same_recipe_gives_the_same_bytes_and_the_record_repeats_it(setup, tmp_path, monkeypatch):
    _, _, base_path, paths = setup
    r = Recipe(
        merge_method="dare_ties",
        base_model=str(base_path),
        models=[str(p) for p in paths],
        parameters={"density": 0.5, "seed": 7},
    )
    first = merge(r, tmp_path / "a.safetensors", progress=False)
    second = merge(r, tmp_path / "b.safetensors", progress=False)
    assert sha(first) == sha(second)
    record = tmp_path / "a.mergelab.yaml"
    assert record.is_file()
    text = record.read_text()
    assert text.startswith("# mergelab ")
    saved = yaml.safe_load(text)
    assert saved["merge_method"] == "dare_ties" and saved["parameters"]["seed"] == 7
    monkeypatch.chdir(tmp_path.parent)  # absolute paths: the record reruns from anywhere
    again = merge(record, tmp_path / "c.safetensors", progress=False)
    assert sha(again) == sha(first)
    with safe_open(str(first), "np") as f:
        meta = f.metadata()
    assert json.loads(meta["mergelab.recipe"])["merge_method"] == "dare_ties"
    assert "numpy" in json.loads(meta["mergelab.versions"])


def test_folder_output_is_sharded_and_loadable(setup, tmp_path):
    base, models, _, paths = setup
    r = Recipe(merge_method="linear", models=[str(p) for p in paths])
    out = merge(r, tmp_path / "merged", max_shard_bytes=200, progress=False)
    assert (out / "model.safetensors.index.json").is_file()
    assert (out / "mergelab.yaml").is_file()
    assert len(list(out.glob("model-*.safetensors"))) > 2
    merged = load_state_dict(out)
    for name in base:
        if name != "bn.num_batches_tracked":
            expected = np.mean([m[name] for m in models], axis=0)
            np.testing.assert_allclose(merged[name].numpy(), expected, rtol=1e-6)


def test_inputs_in_every_format(setup, tmp_path):
    _base, models, _, paths = setup
    torch_state = {k: torch.from_numpy(v) for k, v in models[1].items()}
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in torch_state.items()}}, tmp_path / "m1.pt"
    )
    hf = tmp_path / "hf-model"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    save_state_dict(models[2], hf / "model.safetensors")
    r = Recipe(merge_method="linear", models=[str(paths[0]), str(tmp_path / "m1.pt"), str(hf)])
    got = load_file(str(merge(r, tmp_path / "o.safetensors", progress=False)))
    reference = load_file(
        str(
            merge(
                Recipe(merge_method="linear", models=[str(p) for p in paths]),
                tmp_path / "ref.safetensors",
                progress=False,
            )
        )
    )
    assert all(torch.equal(got[k], reference[k]) for k in reference)


def test_bf16_inputs_stay_bf16(write_st, tmp_path):
    a = {k: torch.from_numpy(v).bfloat16() for k, v in random_state(1).items()}
    b = {k: torch.from_numpy(v).bfloat16() for k, v in random_state(2).items()}
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_state_dict(a, pa)
    save_state_dict(b, pb)
    out = load_file(
        str(
            merge(
                Recipe(merge_method="linear", models=[str(pa), str(pb)]),
                tmp_path / "o.safetensors",
                progress=False,
            )
        )
    )
    for name in a:
        assert out[name].dtype == torch.bfloat16
        expected = ((a[name].float() + b[name].float()) / 2).bfloat16()
        assert torch.equal(out[name], expected)


def test_base_listed_among_models_is_not_merged_twice(setup):
    _, _, base_path, paths = setup
    r = Recipe(
        merge_method="task_arithmetic",
        base_model=str(base_path),
        models=[str(base_path), *map(str, paths)],
    )
    plan = open_recipe(r)
    assert len(plan.models) == 3
    assert any("is the base" in n for n in plan.notes)


def test_dry_run_reads_no_tensor_data(setup, monkeypatch):
    _, _, base_path, paths = setup

    def forbidden(*args, **kwargs):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(SafetensorsFile, "read", forbidden)
    plan = open_recipe(
        Recipe(
            merge_method="ties",
            base_model=str(base_path),
            models=[str(p) for p in paths],
            parameters={"density": 0.2},
        )
    )
    text = plan.describe()
    assert "ties" in text and "copied from the first model" in text
    assert plan.bytes_read > 0 and plan.bytes_written > 0 and plan.peak_bytes_estimate() > 0


def test_recipe_names_every_unsupported_field_in_one_line(tmp_path):
    from mergelab.errors import MergeError

    bad = tmp_path / "r.yaml"
    bad.write_text(
        "merge_method: ties\nmodels: [{model: a, parameters: {weight: {x: 1}}}]\n"
        "parameters: {density: [{filter: mlp}]}\n"
        "tokenizer: {source: union, tokens: {x: {force: maybe}}}\n"
        "foo: 1\n"
    )
    with pytest.raises(MergeError) as err:
        Recipe.from_yaml(bad)
    allowed = (
        "merge_method, models, slices, base_model, parameters, dtype, out_dtype, compat, key, "
        "strip_prefix, tokenizer_source, chat_template, tokenizer"
    )
    assert str(err.value) == (
        f"{bad}: not supported: "
        "tokenizer.tokens.x.force: Input should be a valid boolean, unable to interpret input; "
        f"foo: unknown key (allowed: {allowed}); "
        "parameters.density[0]: a filter is {filter: NAME, value: V} (filter optional); "
        "models[0].parameters.weight: a mapping; give filters as a list: "
        "[{filter: NAME, value: V}, ...]"
    )


def test_mergekit_int8_mask_and_out_dtype(setup, tmp_path, capsys):
    """``int8_mask`` (global or per model) changes nothing and says so; ``out_dtype`` is the
    output dtype, and ``dtype`` beside it (mergekit's compute dtype) does not lower the
    float32 sums: the tensors equal those of ``dtype: float16`` alone, computed in float32."""
    from mergelab.cli import main

    _, _, base_path, paths = setup
    models = [{"model": str(p), "parameters": {"density": 0.5}} for p in paths]

    def run(name: str, **extra) -> dict:
        recipe = {"merge_method": "ties", "base_model": str(base_path), "models": models}
        recipe.update(extra)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
        out = tmp_path / f"{name}.safetensors"
        assert main(["merge", str(tmp_path / f"{name}.yaml"), "--out", str(out)]) == 0
        return load_file(out)

    plain = run("plain", dtype="float16")
    capsys.readouterr()
    masked = [{**m, "parameters": {**m["parameters"], "int8_mask": True}} for m in models]
    got = run("mk", models=masked, parameters={"int8_mask": True}, dtype="bfloat16",
              out_dtype="float16")  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("mergelab: note: int8_mask: memory option of mergekit") == 1
    assert "dtype: bfloat16 is mergekit's compute dtype" in err
    assert set(got) == set(plain)
    for k in plain:
        assert got[k].dtype == plain[k].dtype and torch.equal(got[k], plain[k]), k
    record = (tmp_path / "mk.mergelab.yaml").read_text()
    assert "# note: int8_mask" in record and "int8_mask: true" not in record


def test_recipe_with_a_key_given_twice_is_refused(setup, tmp_path, capsys):
    """YAML alone keeps the last ``merge_method`` (linear): a silent change of method."""
    from mergelab.cli import main

    _, _, _, paths = setup
    recipe = tmp_path / "dup.yaml"
    recipe.write_text(
        f"merge_method: ties\nmerge_method: linear\nmodels: {[str(p) for p in paths]}\n"
    )
    out = tmp_path / "out.safetensors"
    assert main(["merge", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"mergelab: error: {recipe}: merge_method: given twice, on lines 1 and 2 (allowed: each "
        "key once; YAML would silently keep the last)"
    ]
    assert not out.exists()
