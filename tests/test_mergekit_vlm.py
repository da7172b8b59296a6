"""The VLM configurations of mergekit's tests/test_basic_merges.py (``*_VLM_merge``) through
mergekit and mergelab, on pico LLaVA models built as mergekit's ``make_picoLlaVa`` builds
them: the same tensors, to the tolerances tests/test_mergekit_parity.py uses for each
method, and for dare_ties the same statistics; transformers loads every output.

Transformers 5 saves a LLaVA in its legacy layout (``language_model.model.layers.N.``,
``vision_tower.encoder.layers.N.``). mergekit 0.1.5 looks tensors up by the model layout's
names (``model.language_model.layers.N.``, the names of ``state_dict()``); transformers' key
mapping for llava takes it from the saved vision tower and projector to those, but not from
``language_model.model.*``, so it takes the language model and LM head for optional weights
and silently writes a model without them (43 of 64 tensors). So mergelab merges the models
as saved, while mergekit merges copies in the model layout, where it sees every tensor; its
output is compared under the saved names. ``test_the_legacy_layout`` checks what mergekit
does write from the saved models. Needs mergekit; marked ``mergekit``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

mergekit_merge = pytest.importorskip("mergekit.merge")
mergekit_config = pytest.importorskip("mergekit.config")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from test_mergekit_parity import _two  # noqa: E402

from mergelab.cli import main  # noqa: E402

pytestmark = pytest.mark.mergekit

SAVED_NAMES = (  # model layout -> the layout save_pretrained writes (transformers 5)
    ("lm_head.", "language_model.lm_head."),
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)


def _saved_name(name: str) -> str:
    for model, saved in SAVED_NAMES:
        if name.startswith(model):
            return saved + name[len(model) :]
    raise AssertionError(f"{name}: no rule for its saved name")


def _pico_llava_config(vision_layers: int = 2):
    """mergekit's tests/common.py ``make_picoLlaVa`` (``vision_layers``: 2 there)."""
    vision_config = transformers.CLIPVisionConfig(
        image_size=32, patch_size=4, num_hidden_layers=vision_layers, num_attention_heads=2,
        hidden_size=64, intermediate_size=128,
    )  # fmt: skip
    text_config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_attention_heads=16,
        num_hidden_layers=2,
    )  # fmt: skip
    return transformers.LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_seq_length=16
    )


def _family(root: Path, names: list[str], vision_layers: int) -> dict[str, str]:
    """The first of ``names`` a seeded LLaVA, the others it plus seeded noise (fine-tunes of
    one start), each saved by ``save_pretrained`` (``X``) and in the model layout for
    mergekit (``X/mk``)."""
    torch.manual_seed(0)
    first = transformers.LlavaForConditionalGeneration(_pico_llava_config(vision_layers))
    out = {}
    for i, name in enumerate(names):
        model = first
        if i:
            gen = torch.Generator().manual_seed(10 + i)
            model = transformers.LlavaForConditionalGeneration(_pico_llava_config(vision_layers))
            model.load_state_dict(
                {
                    k: v + 0.02 * torch.randn(v.shape, generator=gen)
                    for k, v in first.state_dict().items()
                }
            )
        model.save_pretrained(root / name, safe_serialization=True)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        saved = load_file(str(root / name / "model.safetensors"))
        assert {_saved_name(k) for k in state} == set(saved), "the saved layout changed"
        (root / name / "mk").mkdir()
        save_file(state, str(root / name / "mk" / "model.safetensors"))
        (root / name / "mk" / "config.json").write_bytes((root / name / "config.json").read_bytes())
        out[name] = str(root / name)
        out[f"{name}/mk"] = str(root / name / "mk")
    return out


@pytest.fixture(scope="module")
def vlms(tmp_path_factory) -> dict[str, str]:
    """vlm_a, vlm_b, vlm_c as mergekit's tests build them (here b and c: a plus noise)."""
    return _family(tmp_path_factory.mktemp("pico-llava"), ["vlm_a", "vlm_b", "vlm_c"], 2)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> dict[str, str]:
    """Two pico LLaVAs whose vision tower has 3 layers beside the text decoder's 2: a
    per-layer schedule runs over each stack's own layers."""
    return _family(tmp_path_factory.mktemp("pico-llava-3"), ["vlm_a", "vlm_b"], 3)


def _recipe(m, method, a="vlm_a", b="vlm_b", base=None, **params) -> dict:
    """mergekit's ``two_model_config`` (weights 0.6, 0.4), in float32: the parity test's."""
    named = {"a": m[a], "b": m[b], **({"base": m[base]} if base else {})}
    return _two(named, method, "base" if base else None, **params)


def _for_mergekit(recipe: dict) -> dict:
    """``recipe`` on the model-layout copies."""
    out = json.loads(json.dumps(recipe))
    for entry in out["models"]:
        entry["model"] += "/mk"
    if "base_model" in out:
        out["base_model"] += "/mk"
    return out


def _mergekit(recipe: dict, out: Path) -> None:
    config = mergekit_config.MergeConfiguration.model_validate(recipe)
    mergekit_merge.run_merge(config, out_path=str(out), options=mergekit_merge.MergeOptions())


def _run_mergekit(recipe: dict, out: Path) -> dict[str, np.ndarray]:
    _mergekit(recipe, out)
    theirs = {}
    for f in sorted(out.glob("*.safetensors")):
        theirs |= load_file(str(f))
    return theirs


def _run_mergelab(recipe: dict, tmp_path: Path, *options: str) -> dict[str, np.ndarray]:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["merge", str(path), "--out", str(tmp_path / "ml"), *options]) == 0
    return load_file(str(tmp_path / "ml" / "model.safetensors"))


def _both(recipe: dict, tmp_path: Path, *options: str) -> tuple[dict, dict, dict]:
    """(mergekit's tensors under the saved names, mergelab's, the base's) for ``recipe``."""
    theirs = _run_mergekit(_for_mergekit(recipe), tmp_path / "mk")
    ours = _run_mergelab(recipe, tmp_path, *options)
    base = recipe.get("base_model")
    return (
        {_saved_name(k): v for k, v in theirs.items()},
        ours,
        load_file(str(Path(base) / "model.safetensors")) if base else {},
    )


def _beyond(ours: dict, theirs: dict, rtol: float) -> tuple[int, int, float]:
    """(values differing beyond ``rtol`` of their tensor's scale, all values, the largest
    difference relative to its tensor's scale)."""
    beyond = total = 0
    worst = 0.0
    for k in theirs:
        a, b = ours[k].astype(np.float64), theirs[k].astype(np.float64)
        scale = max(float(np.abs(b).max()), 1e-12)
        beyond += int(np.sum(np.abs(a - b) > rtol * scale))
        worst = max(worst, float(np.abs(a - b).max()) / scale)
        total += a.size
    return beyond, total, worst


def _nuslerp(m, base, row_wise, flatten, weights=(0.6, 0.4)):
    recipe = _recipe(m, "nuslerp", base=base, nuslerp_row_wise=row_wise, nuslerp_flatten=flatten)
    for entry, w in zip(recipe["models"], weights, strict=True):
        entry["parameters"]["weight"] = w
    return recipe


# The test_*_VLM_merge configurations of mergekit's tests/test_basic_merges.py: (recipe,
# relative tolerance, share of values allowed beyond it), the tolerance as
# tests/test_mergekit_parity.py has it for the method (0, 0: the same bytes). nuslerp along
# the last axis slerps the patch embedding kernel's rows of 4 values; with a base, a few of
# those task-vector rows are nearly opposite (167 degrees), where mergekit's float32 sines
# lose digits: there mergelab (float64) equals mergekit's own formula run in float64, and
# mergekit's float32 result is 1.7e-6 away. Every value is within 1e-5 in all cases.
NUSLERP_SHARE = 1e-4
DETERMINISTIC = {
    "linear": (lambda m: _recipe(m, "linear"), 1e-6, 0.0),
    "slerp": (lambda m: _recipe(m, "slerp", base="vlm_a", t=0.35), 1e-6, 0.0),
    **{
        f"nuslerp base={b} row_wise={r} flatten={f}": (
            lambda m, b=b, r=r, f=f: _nuslerp(m, b, r, f),
            1e-6,
            NUSLERP_SHARE,
        )
        for b in (None, "vlm_c")
        for r in (False, True)
        for f in (False, True)
    },
    "nuslerp weights summing to 0": (
        lambda m: _nuslerp(m, "vlm_c", False, False, (-0.5, 0.5)),
        1e-6,
        NUSLERP_SHARE,
    ),
    "task_arithmetic": (lambda m: _recipe(m, "task_arithmetic", base="vlm_c"), 0.0, 0.0),
    "breadcrumbs": (lambda m: _recipe(m, "breadcrumbs", base="vlm_c"), 0.0, 0.0),
    "ties": (lambda m: _recipe(m, "ties", base="vlm_c", density=0.3), 0.0, 0.0),
    "model_stock": (
        lambda m: _recipe(m, "model_stock", "vlm_b", "vlm_c", base="vlm_a"),
        1e-6,
        0.0,
    ),
}


@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_the_same_tensors_as_mergekit(name, vlms, tmp_path):
    build, rtol, share = DETERMINISTIC[name]
    theirs, ours, _ = _both(build(vlms), tmp_path)
    assert set(ours) == set(theirs)
    beyond, total, worst = _beyond(ours, theirs, rtol)
    assert beyond <= share * total, f"{name}: {beyond} of {total} values beyond {rtol:g}"
    assert worst <= 1e-5, f"{name}: a value {worst:.3g} of its tensor's scale away"


COMPAT = {
    f"{name} ({dtype})": (lambda m, build=build, dtype=dtype: {**build(m), "dtype": dtype})
    for (name, (build, _, _)), dtype in zip(
        [
            *DETERMINISTIC.items(),
            (
                "model_stock filter_wise",
                (
                    lambda m: _recipe(
                        m, "model_stock", "vlm_b", "vlm_c", base="vlm_a", filter_wise=True
                    ),
                    0.0,
                    0.0,
                ),
            ),
        ],
        ["float16", "float32"] * len(DETERMINISTIC),
        strict=False,
    )
}


@pytest.mark.parametrize("name", list(COMPAT))
def test_compat_mergekit_gives_mergekits_bytes(name, vlms, tmp_path):
    """``--compat mergekit``: every configuration, float16 or float32 in turn (the parity
    test covers bfloat16), byte for byte; the patch-embedding kernel's filter-wise ratios
    run along its last axis, as mergekit's."""
    theirs, ours, _ = _both(COMPAT[name](vlms), tmp_path, "--compat", "mergekit")
    assert set(ours) == set(theirs)
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype and ours[k].tobytes() == theirs[k].tobytes(), k


def _model_stock(base: np.ndarray, models: list[np.ndarray], rows: int) -> np.ndarray:
    """Model Stock of one tensor with one ratio per row of ``base.reshape(rows, -1)``
    (mergekit's formula, in float64)."""
    w0 = base.reshape(rows, -1).astype(np.float64)
    ws = [w.reshape(rows, -1).astype(np.float64) for w in models]
    a, b = (w - w0 for w in ws)
    norms = np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-6)
    cos = np.clip((a * b).sum(-1) / norms, -1, 1)[:, None]
    t = 2 * cos / (1 + cos)
    return (t * (ws[0] + ws[1]) / 2 + (1 - t) * w0).reshape(base.shape)


def test_model_stock_filter_wise(vlms, tmp_path):
    """mergekit's ratios run along a tensor's last axis, so a conv kernel [out, in, kh, kw]
    (the patch embedding) gets one per kernel row of kw values; mergelab's documented rule
    (methods/model_stock.py) gives one per output filter. Every other tensor: mergekit's."""
    recipe = _recipe(vlms, "model_stock", "vlm_b", "vlm_c", base="vlm_a", filter_wise=True)
    theirs, ours, base = _both(recipe, tmp_path)
    assert set(ours) == set(theirs)
    kernels = [k for k in theirs if theirs[k].ndim > 2]
    assert kernels == ["vision_tower.embeddings.patch_embedding.weight"]
    rest = [k for k in theirs if k not in kernels]
    assert _beyond({k: ours[k] for k in rest}, {k: theirs[k] for k in rest}, 1e-6)[0] == 0
    inputs = [load_file(str(Path(vlms[n]) / "model.safetensors")) for n in ("vlm_b", "vlm_c")]
    for k in kernels:
        models = [x[k] for x in inputs]
        along_last = _model_stock(base[k], models, base[k].size // base[k].shape[-1])
        per_filter = _model_stock(base[k], models, base[k].shape[0])
        scale = np.abs(along_last).max()
        # mergekit's float32: rows of 4 with cos near -1 make t = 2 cos / (1 + cos) large
        assert np.abs(theirs[k] - along_last).max() <= 1e-5 * scale
        assert np.abs(ours[k] - per_filter).max() <= 1e-6 * scale
        assert np.abs(along_last - per_filter).max() > 1e-3 * scale  # the rules do differ


def test_dare_ties_has_mergekits_statistics(vlms, tmp_path):
    theirs, ours, base = _both(_recipe(vlms, "dare_ties", base="vlm_c", density=0.66), tmp_path)
    assert set(ours) == set(theirs)
    compared = 0
    for k in theirs:
        if theirs[k].size < 1000:
            continue
        compared += 1
        same_theirs = np.mean(theirs[k] == base[k])
        same_ours = np.mean(ours[k] == base[k])
        assert abs(same_theirs - same_ours) < 0.05, k
        norm = np.linalg.norm(theirs[k] - base[k]), np.linalg.norm(ours[k] - base[k])
        assert abs(norm[0] - norm[1]) <= 0.1 * norm[0] + 1e-9, k
    assert compared >= 20


@pytest.mark.parametrize("layout", ["saved", "model"])
def test_a_gradient_runs_over_each_stacks_own_layers(layout, uneven, tmp_path):
    """mergekit gives the text decoder (2 layers) and the vision tower (3) each its own t:
    text layer 1 at t = 1, vision layer 1 at t = 0.5 (one count over both put text layer
    1 at 0.5). mergelab reads either layout's names (``model``: the copies mergekit reads)."""
    recipe = _recipe(uneven, "slerp", base="vlm_a")
    recipe["parameters"] = {
        "t": [
            {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
            {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
            {"value": 0.5},
        ]
    }
    if layout == "saved":
        theirs, ours, _ = _both(recipe, tmp_path)
    else:
        recipe = _for_mergekit(recipe)
        theirs = _run_mergekit(recipe, tmp_path / "mk")
        ours = _run_mergelab(recipe, tmp_path)
    assert set(ours) == set(theirs)
    assert _beyond(ours, theirs, 1e-6)[0] == 0


def test_slices_are_refused_as_mergekit_refuses_them(vlms, tmp_path, capsys):
    """A layer range of a VLM would cut its text and vision layers at once."""
    recipe = {
        "slices": [{"sources": [{"model": vlms["vlm_a"], "layer_range": [0, 2]}]}],
        "merge_method": "passthrough",
        "dtype": "float32",
    }
    config = mergekit_config.MergeConfiguration.model_validate(recipe)
    with pytest.raises(RuntimeError, match="multiple modules"):
        mergekit_merge.run_merge(config, str(tmp_path / "mk"), mergekit_merge.MergeOptions())
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    capsys.readouterr()
    assert main(["merge", str(path), "--out", str(tmp_path / "ml")]) != 0
    err = capsys.readouterr().err.strip()
    assert "2 layer stacks" in err and "vision_tower.encoder.layers.N" in err, err
    assert "\n" not in err and not (tmp_path / "ml").exists()


def test_the_legacy_layout(vlms, tmp_path):
    """mergekit on the models as saved: what it writes is mergelab's (mergekit 0.1.5 with
    transformers 5 writes the vision tower and projector only; mergelab writes all)."""
    recipe = _recipe(vlms, "linear")
    theirs = {_saved_name(k): v for k, v in _run_mergekit(recipe, tmp_path / "mk").items()}
    ours = _run_mergelab(recipe, tmp_path)
    assert set(ours) == set(load_file(str(Path(vlms["vlm_a"]) / "model.safetensors")))
    assert theirs and set(theirs) <= set(ours)
    assert _beyond(ours, theirs, 1e-6)[0] == 0


def test_transformers_loads_the_merge(vlms, tmp_path):
    """mergekit's own VLM tests check the output loads; here also that it holds the merge."""
    ours = _run_mergelab(_recipe(vlms, "slerp", base="vlm_a", t=0.35), tmp_path)
    config = json.loads((tmp_path / "ml" / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    model, info = transformers.LlavaForConditionalGeneration.from_pretrained(
        tmp_path / "ml", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    state = model.state_dict()
    assert {_saved_name(k) for k in state} == set(ours)
    for k, v in state.items():
        np.testing.assert_array_equal(v.numpy(), ours[_saved_name(k)], err_msg=k)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_mergekits_config(dtype, vlms, tmp_path):
    """mergekit writes the base's (here the first model's) config with the recipe's dtype;
    so does mergelab."""
    from mergelab.io.hf_folder import companion_files

    recipe = {**_recipe(vlms, "linear"), "dtype": dtype}
    _mergekit(_for_mergekit(recipe), tmp_path / "mk")
    theirs = json.loads((tmp_path / "mk" / "config.json").read_text())
    assert theirs["dtype"] == dtype
    files, _ = companion_files(None, [vlms["vlm_a"], vlms["vlm_b"]], dtype=dtype)
    assert json.loads(files["config.json"]) == theirs
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["merge", str(path), "--out", str(tmp_path / "ml")]) == 0
    assert json.loads((tmp_path / "ml" / "config.json").read_text()) == theirs
