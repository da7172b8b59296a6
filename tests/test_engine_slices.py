"""Layer slices (mergekit's ``slices``): stacking with passthrough, merging layer ranges,
schedules over a slice's own layers, the config's layer count, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file, save_file

from mergelab.cli import main
from mergelab.engine import merge_state_dicts

LAYERS = 4


def _model(folder: Path, seed: int, *, gpt2: bool = False) -> Path:
    """A Llama-named (or GPT-2-named) model folder with LAYERS layers and a config."""
    rng = np.random.default_rng(seed)

    def arr(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    if gpt2:
        tensors = {"transformer.wte.weight": arr(10, 4), "transformer.wpe.weight": arr(8, 4)}
        tensors |= {f"transformer.h.{i}.mlp.c_fc.weight": arr(4, 6) for i in range(LAYERS)}
        tensors |= {"transformer.ln_f.weight": arr(4)}
        config = {"model_type": "gpt2", "n_layer": LAYERS}
    else:
        tensors = {"model.embed_tokens.weight": arr(10, 4), "lm_head.weight": arr(10, 4)}
        for i in range(LAYERS):
            tensors[f"model.layers.{i}.self_attn.q_proj.weight"] = arr(4, 4)
            tensors[f"model.layers.{i}.mlp.up_proj.weight"] = arr(6, 4)
        tensors["model.norm.weight"] = arr(4)
        config = {"model_type": "llama", "num_hidden_layers": LAYERS}
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _merge(tmp_path: Path, recipe: dict, name: str = "out") -> dict[str, np.ndarray]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["merge", str(path), "--out", str(tmp_path / name)]) == 0
    return load_file(str(tmp_path / name / "model.safetensors"))


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    return load_file(str(folder / "model.safetensors"))


def test_passthrough_stacks_and_renumbers_layers(tmp_path: Path):
    a, b = _model(tmp_path / "a", 0), _model(tmp_path / "b", 1)
    recipe = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": str(a), "layer_range": [0, 3]}]},
            {"sources": [{"model": str(b), "layer_range": [1, 4]}]},
        ],
    }
    out = _merge(tmp_path, recipe)
    ta, tb = _tensors(a), _tensors(b)
    for j in range(6):  # output layers 0-2 are a's 0-2, 3-5 are b's 1-3
        src, i = (ta, j) if j < 3 else (tb, j - 2)
        for part in ("self_attn.q_proj", "mlp.up_proj"):
            np.testing.assert_array_equal(
                out[f"model.layers.{j}.{part}.weight"], src[f"model.layers.{i}.{part}.weight"]
            )
    np.testing.assert_array_equal(out["model.embed_tokens.weight"], ta["model.embed_tokens.weight"])
    np.testing.assert_array_equal(out["lm_head.weight"], tb["lm_head.weight"])  # "post"
    np.testing.assert_array_equal(out["model.norm.weight"], tb["model.norm.weight"])
    assert len(out) == 6 * 2 + 3
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["num_hidden_layers"] == 6
    # The record repeats the merge byte for byte.
    record = tmp_path / "out" / "mergelab.yaml"
    assert main(["merge", str(record), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (
        tmp_path / "out" / "model.safetensors"
    ).read_bytes()


def test_gpt2_names_embeddings_first_final_norm_last(tmp_path: Path):
    a, b = _model(tmp_path / "a", 0, gpt2=True), _model(tmp_path / "b", 1, gpt2=True)
    recipe = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": str(a), "layer_range": [0, 2]}]},
            {"sources": [{"model": str(b), "layer_range": [2, 4]}]},
        ],
    }
    out = _merge(tmp_path, recipe)
    ta, tb = _tensors(a), _tensors(b)
    np.testing.assert_array_equal(out["transformer.wpe.weight"], ta["transformer.wpe.weight"])
    np.testing.assert_array_equal(out["transformer.ln_f.weight"], tb["transformer.ln_f.weight"])
    np.testing.assert_array_equal(
        out["transformer.h.3.mlp.c_fc.weight"], tb["transformer.h.3.mlp.c_fc.weight"]
    )
    assert json.loads((tmp_path / "out" / "config.json").read_text())["n_layer"] == 4


def test_a_slice_of_every_layer_equals_the_models_recipe(tmp_path: Path):
    """mergekit's gradient-slerp example, written with slices and with models."""
    a, b = _model(tmp_path / "a", 0), _model(tmp_path / "b", 1)
    t = [
        {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
        {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
        {"value": 0.5},
    ]
    common = {"merge_method": "slerp", "base_model": str(a), "parameters": {"t": t}}
    sliced = {
        **common,
        "slices": [
            {
                "sources": [
                    {"model": str(a), "layer_range": [0, LAYERS]},
                    {"model": str(b), "layer_range": [0, LAYERS]},
                ]
            }
        ],
    }
    one = _merge(tmp_path, sliced, "sliced")
    two = _merge(tmp_path, {**common, "models": [str(a), str(b)]}, "models")
    assert set(one) == set(two)
    for k in one:
        np.testing.assert_array_equal(one[k], two[k])


def test_a_schedule_runs_over_the_slices_own_layers(tmp_path: Path):
    a, b = _model(tmp_path / "a", 0), _model(tmp_path / "b", 1)
    recipe = {
        "merge_method": "linear",
        "slices": [
            {"sources": [{"model": str(a), "layer_range": [0, 1]}]},
            {
                "sources": [
                    {"model": str(a), "layer_range": [1, 4], "parameters": {"weight": [1, 0]}},
                    {"model": str(b), "layer_range": [1, 4], "parameters": {"weight": [0, 1]}},
                ]
            },
        ],
    }
    out = _merge(tmp_path, recipe)
    ta, tb = _tensors(a), _tensors(b)
    name = "model.layers.{}.mlp.up_proj.weight"
    for j, t in ((1, 0.0), (2, 0.5), (3, 1.0)):  # the slice's layers at t = 0, 1/2, 1
        expected = merge_state_dicts(
            "linear",
            [{"w": ta[name.format(j)]}, {"w": tb[name.format(j)]}],
            model_params=[{"weight": 1 - t}, {"weight": t}],
        )["w"]
        np.testing.assert_array_equal(out[name.format(j)], expected)


@pytest.mark.parametrize(
    "slices, message",
    [
        (
            [
                {
                    "sources": [
                        {"model": "A", "layer_range": [0, 2]},
                        {"model": "B", "layer_range": [0, 3]},
                    ]
                }
            ],
            "slices[0]: every source must give the same number of layers",
        ),
        (
            [{"sources": [{"model": "A", "layer_range": [2, 9]}]}],
            "slices[0].sources[0].layer_range: [2, 9] outside the 4 layers of",
        ),
    ],
)
def test_bad_slices_are_one_line(tmp_path: Path, capsys, slices, message):
    a, b = _model(tmp_path / "a", 0), _model(tmp_path / "b", 1)
    text = yaml.safe_dump({"merge_method": "passthrough", "slices": slices})
    path = tmp_path / "r.yaml"
    path.write_text(text.replace(": A", f": {a}").replace(": B", f": {b}"))
    assert main(["merge", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mergelab: error:") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_models_and_slices_together_are_refused(tmp_path: Path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(
        "merge_method: linear\nmodels: [a]\n"
        "slices: [{sources: [{model: a, layer_range: [0, 1]}]}]\n"
    )
    assert main(["merge", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mergelab: error: give either models or slices (exactly one of them), not both"


def test_transformers_loads_a_stacked_model(tmp_path: Path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    cfg = transformers.LlamaConfig(
        vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8,
    )  # fmt: skip
    for seed, name in enumerate(("a", "b")):
        torch.manual_seed(seed)
        transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / name)
    recipe = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": str(tmp_path / "a"), "layer_range": [0, 3]}]},
            {"sources": [{"model": str(tmp_path / "b"), "layer_range": [1, 3]}]},
        ],
    }
    _merge(tmp_path, recipe, "stack")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "stack")
    assert model.config.num_hidden_layers == 5 and len(model.model.layers) == 5
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 16)
