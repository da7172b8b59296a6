"""Per-layer schedules and name filters, as mergekit reads them: each value against a hand
computation, and merges whose every tensor equals the merge of that tensor alone with
its own parameters."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file, save_file

from mergelab.cli import main
from mergelab.engine import merge_state_dicts
from mergelab.errors import MergeError
from mergelab.schedules import (
    evaluate,
    layer_of,
    positions,
    problems,
    resolve,
    stack_of,
    stacks,
)

NAMES = [
    "model.embed_tokens.weight",
    *(
        f"model.layers.{i}.{part}.weight"
        for i in range(3)
        for part in ("self_attn.q_proj", "mlp.up_proj")
    ),
    "model.norm.weight",
]


def test_gradients_interpolate_between_neighbours():
    g = [0, 0.3, 0.7, 1]
    assert evaluate(g, "x", 0.0) == 0
    assert evaluate(g, "x", 0.5) == pytest.approx(0.5 * 0.3 + 0.5 * 0.7)
    assert evaluate(g, "x", 1 / 6) == pytest.approx(0.5 * 0 + 0.5 * 0.3)
    assert evaluate(g, "x", 1.0) == 1
    assert evaluate(["a", "b", "c"], "x", 0.9) == "b"  # words: int(t * (k - 1))
    assert evaluate(0.25, "x", 0.7) == 0.25


def test_filters_take_the_first_match_and_fall_through():
    f = [{"filter": "self_attn", "value": [0, 1]}, {"filter": "mlp", "value": 0.2}]
    assert evaluate(f, "model.layers.1.self_attn.q_proj.weight", 0.5) == 0.5
    assert evaluate(f, "model.layers.1.mlp.up_proj.weight", 0.5) == 0.2
    assert evaluate(f, "model.norm.weight", 0.5) is None
    assert evaluate([*f, {"value": 0.9}], "model.norm.weight", 0.5) == 0.9
    assert evaluate([{"filter": "*", "value": 3}], "anything", 0.0) == 3


def test_layer_positions_from_names():
    assert layer_of("model.layers.12.mlp.up_proj.weight") == 12
    assert layer_of("transformer.h.3.attn.c_attn.weight") == 3  # GPT-2
    assert layer_of("model.embed_tokens.weight") is None
    t = positions(NAMES)
    assert t["model.layers.0.mlp.up_proj.weight"] == 0.0
    assert t["model.layers.1.mlp.up_proj.weight"] == 0.5
    assert t["model.layers.2.mlp.up_proj.weight"] == 1.0
    assert t["model.embed_tokens.weight"] == t["model.norm.weight"] == 0.0  # mergekit: t = 0


# A LLaVA with 3 text layers and 2 vision layers, as transformers 5 saves it.
VLM = [
    "language_model.model.embed_tokens.weight",
    *(f"language_model.model.layers.{i}.self_attn.q_proj.weight" for i in range(3)),
    "language_model.model.norm.weight",
    "language_model.lm_head.weight",
    "multi_modal_projector.linear_1.weight",
    "vision_tower.embeddings.patch_embedding.weight",
    *(f"vision_tower.encoder.layers.{i}.self_attn.q_proj.weight" for i in range(2)),
    "vision_tower.post_layernorm.weight",
]


@pytest.mark.parametrize(
    "name, layer, stack",
    [
        ("language_model.model.layers.7.mlp.up_proj.weight", 7, "language_model.model.layers."),
        ("model.language_model.layers.7.mlp.up_proj.weight", 7, "model.language_model.layers."),
        ("vision_tower.encoder.layers.3.mlp.fc1.weight", 3, "vision_tower.encoder.layers."),
        (
            "vision_tower.vision_model.encoder.layers.3.mlp.fc1.weight",
            3,
            "vision_tower.vision_model.encoder.layers.",
        ),
        ("model.visual.blocks.5.attn.qkv.weight", 5, "model.visual.blocks."),  # Qwen2-VL
        ("encoder.block.2.layer.0.SelfAttention.q.weight", 2, "encoder.block."),  # T5
        ("model.layers.0.block_sparse_moe.experts.3.w1.weight", 0, "model.layers."),
        ("multi_modal_projector.linear_1.weight", None, None),
        ("language_model.lm_head.weight", None, None),
        ("vision_tower.embeddings.position_embedding.weight", None, None),
    ],
)
def test_layer_and_stack_of_vlm_and_encoder_decoder_names(name, layer, stack):
    assert layer_of(name) == layer
    assert stack_of(name) == stack


def test_each_layer_stack_has_its_own_positions():
    """mergekit gives each module (text decoder, vision tower) its own layers: text layer i
    of 3 at i / 2, vision layer i of 2 at i / 1; the rest at 0."""
    assert stacks(VLM) == {"language_model.model.layers.": 3, "vision_tower.encoder.layers.": 2}
    assert stacks(NAMES) == {"model.layers.": 3}
    t = positions(VLM)
    assert [t[f"language_model.model.layers.{i}.self_attn.q_proj.weight"] for i in range(3)] == [
        0.0,
        0.5,
        1.0,
    ]
    assert [t[f"vision_tower.encoder.layers.{i}.self_attn.q_proj.weight"] for i in range(2)] == [
        0.0,
        1.0,
    ]
    assert {t[n] for n in VLM if layer_of(n) is None} == {0.0}
    one = positions(["a.layers.0.w", "b.layers.0.w", "b.layers.1.w"])
    assert one == {"a.layers.0.w": 1.0, "b.layers.0.w": 0.0, "b.layers.1.w": 1.0}  # n = 1: t = 1


def test_a_gradient_over_a_vlm():
    got = resolve({"t": [0, 1]}, [{}], VLM)
    assert got["language_model.model.layers.1.self_attn.q_proj.weight"][0] == {"t": 0.5}
    assert got["vision_tower.encoder.layers.1.self_attn.q_proj.weight"][0] == {"t": 1.0}
    assert got["multi_modal_projector.linear_1.weight"][0] == {"t": 0.0}


def test_slices_refuse_a_checkpoint_with_several_layer_stacks(tmp_path, capsys):
    """A layer range would cut the text and vision layers at once (mergekit refuses too)."""
    rng = np.random.default_rng(0)
    save_file(
        {n: rng.normal(size=(2, 2)).astype(np.float32) for n in VLM},
        str(tmp_path / "v.safetensors"),
    )
    recipe = {
        "slices": [
            {"sources": [{"model": str(tmp_path / "v.safetensors"), "layer_range": [0, 2]}]}
        ],
        "merge_method": "passthrough",
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["merge", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "\n" not in err
        and "v.safetensors: 2 layer stacks (language_model.model.layers.N (3 " in err
    )
    assert "vision_tower.encoder.layers.N (2 layers)" in err and "models: instead" in err
    assert not (tmp_path / "o.safetensors").exists()


def test_a_models_unmatched_filter_falls_back_to_the_global_value():
    got = resolve(
        {"density": 0.5},
        [{"density": [{"filter": "mlp", "value": 0.1}]}, {}],
        ["model.layers.0.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight"],
    )
    assert got["model.layers.0.mlp.up_proj.weight"][1] == [{"density": 0.1}, {}]
    assert got["model.layers.0.self_attn.q_proj.weight"][1] == [{}, {}]  # global 0.5 applies


def test_a_gradient_without_layer_names_is_one_line():
    with pytest.raises(MergeError, match="weight: a per-layer gradient, but no tensor name"):
        resolve({}, [{"weight": [0, 1]}], ["encoder.weight", "head.weight"])


@pytest.mark.parametrize(
    "value, message",
    [
        ({"filter": "mlp", "value": 1}, "p: a mapping; give filters as a list"),
        ([{"filter": "mlp"}], "p[0]: a filter is {filter: NAME, value: V}"),
        ([{"filter": 3, "value": 1}], "p[0].filter: a name fragment"),
        ([{"value": {"a": 1}}], "p[0].value: a number or a list of numbers"),
        ([], "p: give a number, a list of numbers, or a list of filters"),
    ],
)
def test_malformed_settings_are_named(value, message):
    assert any(message in p for p in problems(value, "p"))


# -- merges --------------------------------------------------------------------------------


def _models(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{k: rng.normal(size=(4, 3)).astype(np.float32) for k in NAMES} for _ in range(n)]


def test_linear_weight_gradients_match_tensor_by_tensor_merges():
    """mergekit's classic: model A from 1 to 0 over the layers, B from 0 to 1."""
    a, b = _models(2)
    got = merge_state_dicts("linear", [a, b], model_params=[{"weight": [1, 0]}, {"weight": [0, 1]}])
    for name in NAMES:
        t = positions(NAMES)[name]
        expected = ((1 - t) * a[name].astype(np.float64) + t * b[name]) / 1.0
        np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got["model.embed_tokens.weight"], a["model.embed_tokens.weight"])


def test_ties_density_filters_equal_separate_merges():
    base, *fts = _models(4, seed=1)
    density = [{"filter": "mlp", "value": [0.2, 0.8]}, {"value": 0.5}]
    got = merge_state_dicts("ties", fts, base, params={"density": density, "lambda": 0.7})
    t = positions(NAMES)
    for name in NAMES:
        d = evaluate(density, name, t[name])
        alone = merge_state_dicts(
            "ties",
            [{name: m[name]} for m in fts],
            {name: base[name]},
            params={"density": d, "lambda": 0.7},
        )
        np.testing.assert_array_equal(got[name], alone[name])


def test_slerp_recipe_with_filters_from_the_cli(tmp_path, capsys):
    base, other = _models(2, seed=2)
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file(other, str(tmp_path / "other.safetensors"))
    t_setting = [
        {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
        {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
        {"value": 0.5},
    ]
    recipe = {
        "merge_method": "slerp",
        "base_model": str(tmp_path / "base.safetensors"),
        "models": [str(tmp_path / "base.safetensors"), str(tmp_path / "other.safetensors")],
        "parameters": {"t": t_setting},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "m.safetensors"
    assert main(["merge", str(tmp_path / "r.yaml"), "--out", str(out)]) == 0
    got = load_file(str(out))
    pos = positions(NAMES)
    for name in NAMES:
        expected = merge_state_dicts(
            "slerp",
            [{name: other[name]}],
            {name: base[name]},
            params={"t": evaluate(t_setting, name, pos[name])},
        )
        np.testing.assert_array_equal(got[name], expected[name])
    assert "t:" in (tmp_path / "m.mergelab.yaml").read_text()  # the schedule is recorded
