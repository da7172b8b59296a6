"""The same recipe through mergekit and mergelab, on generated pico Llama models (the
configurations of mergekit's tests/test_basic_merges.py and its examples): the same
tensors, to the tolerance each method's arithmetic allows, and for random methods the
same statistics. Needs mergekit (``pip install -e ".[bench]"``); marked ``mergekit``."""

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
from safetensors.torch import load_file as torch_load_file  # noqa: E402

from mergelab.cli import main  # noqa: E402

pytestmark = pytest.mark.mergekit


@pytest.fixture(scope="module")
def others(tmp_path_factory) -> dict[str, str]:
    """Pico GPT-2 and Granite models (two of each), as mergekit's own tests use."""
    root = tmp_path_factory.mktemp("pico-others")
    configs = {
        "gpt2": transformers.GPT2Config(
            vocab_size=64, n_positions=32, n_embd=32, n_layer=4, n_head=4
        ),
        "granite": transformers.GraniteConfig(
            vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32,
        ),
    }  # fmt: skip
    out = {}
    for kind, cfg in configs.items():
        for i in range(2):
            torch.manual_seed(20 + i)
            model = transformers.AutoModelForCausalLM.from_config(cfg)
            model.save_pretrained(root / f"{kind}{i}")
            out[f"{kind}{i}"] = str(root / f"{kind}{i}")
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """base, and a, b, c: the base plus seeded noise (fine-tunes of one start)."""
    root = tmp_path_factory.mktemp("pico")
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32,
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(cfg)
    base.save_pretrained(root / "base")
    out = {"base": str(root / "base")}
    for i, name in enumerate("abc"):
        gen = torch.Generator().manual_seed(10 + i)
        model = transformers.LlamaForCausalLM(cfg)
        model.load_state_dict(
            {
                k: v + 0.02 * torch.randn(v.shape, generator=gen)
                for k, v in base.state_dict().items()
            }
        )
        model.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def _both_files(recipe: dict, tmp_path: Path, *options: str) -> Path:
    """Merge ``recipe`` with mergekit into ``tmp_path/mk`` and mergelab (with ``options``)
    into ``.../ml``."""
    config = mergekit_config.MergeConfiguration.model_validate(recipe)
    mk = tmp_path / "mk"
    mergekit_merge.run_merge(config, out_path=str(mk), options=mergekit_merge.MergeOptions())
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["merge", str(path), "--out", str(tmp_path / "ml"), *options]) == 0
    return mk


def _both(recipe: dict, tmp_path: Path) -> tuple[dict, dict, dict]:
    """(mergekit's tensors, mergelab's, the base's) for ``recipe``."""
    mk = _both_files(recipe, tmp_path)
    theirs = {}
    for f in sorted(mk.glob("*.safetensors")):
        theirs |= load_file(str(f))
    ours = load_file(str(tmp_path / "ml" / "model.safetensors"))
    base = recipe.get("base_model")
    return theirs, ours, load_file(str(Path(base) / "model.safetensors")) if base else {}


def _two(m, method, base=None, **params):
    recipe = {
        "merge_method": method,
        "models": [
            {"model": m["a"], "parameters": {"weight": 0.6}},
            {"model": m["b"], "parameters": {"weight": 0.4}},
        ],
        "dtype": "float32",
    }
    if base:
        recipe["base_model"] = m[base]
    if params:
        recipe["parameters"] = params
    return recipe


def _per_model(recipe: dict, **params) -> dict:
    for entry in recipe["models"]:
        entry["parameters"].update(params)
    return recipe


# (recipe builder, relative tolerance, share of elements allowed beyond it): 0, 0 means
# the same bytes. arcee_fusion's mask is a threshold on a score mergekit computes in float32
# and mergelab in float64: elements at the threshold may fall either side.
DETERMINISTIC = {
    "linear": (lambda m: _two(m, "linear"), 1e-6),
    "linear_uniform": (lambda m: _per_model(_two(m, "linear"), weight=1.0), 0.0),
    "task_arithmetic": (lambda m: _two(m, "task_arithmetic", "c"), 0.0),
    "ties": (lambda m: _per_model(_two(m, "ties", "c"), density=0.3), 0.0),
    "breadcrumbs": (lambda m: _two(m, "breadcrumbs", "c"), 0.0),
    "slerp": (lambda m: _two(m, "slerp", "a", t=0.35), 1e-6),
    "nuslerp": (lambda m: _two(m, "nuslerp"), 1e-6),
    "multislerp": (lambda m: _two(m, "multislerp", "c"), 1e-6),
    "karcher": (lambda m: _two(m, "karcher"), 1e-6),
    "sce": (lambda m: _two(m, "sce", "c", select_topk=0.5), 1e-6),
    "ram": (lambda m: _two(m, "ram", "c"), 0.0),
    "ramplus_tl": (lambda m: _two(m, "ramplus_tl", "c"), 1e-6),
    "model_stock": (lambda m: _two(m, "model_stock", "base"), 1e-6),
    "nearswap": (
        lambda m: {
            "merge_method": "nearswap",
            "base_model": m["a"],
            "models": [{"model": m["a"]}, {"model": m["b"]}],
            "parameters": {"t": 0.01},
            "dtype": "float32",
        },
        0.0,
    ),
    "arcee_fusion": (
        lambda m: {
            **_two(m, "arcee_fusion", "a"),
            "models": [{"model": m["a"]}, {"model": m["b"]}],
        },
        (1e-6, 1e-3),
    ),
    "gradient_slerp": (
        lambda m: {
            "slices": [
                {
                    "sources": [
                        {"model": m["a"], "layer_range": [0, 4]},
                        {"model": m["b"], "layer_range": [0, 4]},
                    ]
                }
            ],
            "merge_method": "slerp",
            "base_model": m["a"],
            "parameters": {
                "t": [
                    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                    {"value": 0.5},
                ]
            },
            "dtype": "float32",
        },
        1e-6,
    ),
    "passthrough_stack": (
        lambda m: {
            "slices": [
                {"sources": [{"model": m["a"], "layer_range": [0, 3]}]},
                {"sources": [{"model": m["b"], "layer_range": [1, 4]}]},
            ],
            "merge_method": "passthrough",
            "dtype": "float32",
        },
        0.0,
    ),
}


def _example_linear(m):
    return {
        "models": [
            {"model": m["a"], "parameters": {"weight": 1.0}},
            {"model": m["b"], "parameters": {"weight": 0.3}},
            {"model": m["c"], "parameters": {"weight": 0.5}},
        ],
        "merge_method": "linear",
        "dtype": "float16",
    }


def _example_ties(m):
    return {
        "models": [
            {"model": m["a"], "parameters": {"density": [1, 0.7, 0.1], "weight": 1.0}},
            {"model": m["b"], "parameters": {"density": 0.5, "weight": [0, 0.3, 0.7, 1]}},
            {
                "model": m["c"],
                "parameters": {
                    "density": 0.33,
                    "weight": [{"filter": "mlp", "value": 0.5}, {"value": 0}],
                },
            },
        ],
        "merge_method": "ties",
        "base_model": m["base"],
        "parameters": {"normalize": True, "int8_mask": True},
        "dtype": "float16",
    }


def _example_bio(m):
    return {
        "models": [
            {"model": m["a"], "parameters": {"density": 0.5, "weight": 0.5}},
            {"model": m["b"], "parameters": {"density": 0.5, "weight": 0.5}},
        ],
        "merge_method": "ties",
        "base_model": m["base"],
        "parameters": {"normalize": False, "int8_mask": True},
        "dtype": "float16",
    }


def _example_fusion(m):
    return {
        "models": [{"model": m["a"]}, {"model": m["b"]}],
        "merge_method": "arcee_fusion",
        "base_model": m["a"],
        "dtype": "bfloat16",
    }


EXAMPLES = {
    "linear.yml": _example_linear,
    "ties.yml": _example_ties,
    "bio-merge.yml": _example_bio,
    "arcee_fusion.yml": _example_fusion,
}
"""mergekit's example recipes (examples/*.yml), on the pico models."""


def _float32(build):
    return lambda m: {**build(m), "dtype": "float32"}


DETERMINISTIC |= {
    f"{name} (float32)": (
        _float32(build),
        (1e-6, 1e-3) if "fusion" in name else 1e-6 if "linear" in name else 0.0,
    )
    for name, build in EXAMPLES.items()
}


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_the_same_tensors_as_mergekit(name, models, tmp_path):
    build, tol = DETERMINISTIC[name]
    rtol, share = tol if isinstance(tol, tuple) else (tol, 0.0)
    theirs, ours, _ = _both(build(models), tmp_path)
    assert set(ours) == set(theirs)
    beyond = total = 0
    for k in theirs:
        a, b = ours[k].astype(np.float64), theirs[k].astype(np.float64)
        scale = max(float(np.abs(b).max()), 1e-12)
        beyond += int(np.sum(np.abs(a - b) > rtol * scale))
        total += a.size
    assert beyond <= share * total, f"{name}: {beyond} of {total} values differ beyond {rtol:g}"


@pytest.mark.parametrize(
    "method, params",
    [
        ("dare_ties", {"density": 0.66}),
        ("della", {"density": 0.66, "epsilon": 0.05}),
    ],
)
def test_random_methods_have_mergekits_statistics(method, params, models, tmp_path):
    recipe = _per_model(
        _two(models, method, "c", **({"lambda": 0.5} if method == "della" else {})), **params
    )
    theirs, ours, base = _both(recipe, tmp_path)
    for k in theirs:
        if theirs[k].size < 1000:
            continue
        same_theirs = np.mean(theirs[k] == base[k])
        same_ours = np.mean(ours[k] == base[k])
        assert abs(same_theirs - same_ours) < 0.05, k
        norm = np.linalg.norm(theirs[k] - base[k]), np.linalg.norm(ours[k] - base[k])
        assert abs(norm[0] - norm[1]) <= 0.1 * norm[0] + 1e-9, k


def test_a_float16_recipe_differs_by_one_rounding_step(models, tmp_path):
    """mergekit computes in the recipe's dtype, mergelab in float32 and rounds once at the
    end (README): with ``dtype: float16`` the linear example differs by at most one float16
    step at the tensor's scale (2^-10 of its largest value) here and there."""
    theirs, ours, _ = _both(_example_linear(models), tmp_path)
    differ = 0
    for k in theirs:
        a, b = ours[k].astype(np.float64), theirs[k].astype(np.float64)
        assert ours[k].dtype == np.float16
        assert np.abs(a - b).max() <= 1.01 * 2.0**-10 * np.abs(b).max(), k
        differ += int(np.sum(a != b))
    assert differ > 0  # the dtypes' rounding does show


def _nuslerp(m, base: bool, row_wise: bool, flatten: bool, weights=(0.6, 0.4)):
    recipe = _two(m, "nuslerp", "c" if base else None)
    recipe["parameters"] = {"nuslerp_row_wise": row_wise, "nuslerp_flatten": flatten}
    for entry, w in zip(recipe["models"], weights, strict=True):
        entry["parameters"]["weight"] = w
    return recipe


MORE = {
    **{
        f"nuslerp base={b} row_wise={r} flatten={f}": lambda m, b=b, r=r, f=f: _nuslerp(m, b, r, f)
        for b in (False, True)
        for r in (False, True)
        for f in (False, True)
    },
    "nuslerp weights summing to 0": lambda m: _nuslerp(m, True, False, False, (-0.5, 0.5)),
    "model_stock filter_wise": lambda m: _two(m, "model_stock", "base", filter_wise=True),
    "slices with a base each": lambda m: {
        "slices": [
            {
                "sources": [
                    {"model": m["a"], "layer_range": [0, 2], "parameters": {"weight": 0.5}},
                    {"model": m["b"], "layer_range": [2, 4], "parameters": {"weight": 0.5}},
                    {"model": m["c"], "layer_range": [0, 2]},
                ],
                "base_model": m["c"],
            },
            {
                "sources": [
                    {"model": m["a"], "layer_range": [2, 4], "parameters": {"weight": 0.5}},
                    {"model": m["b"], "layer_range": [0, 2], "parameters": {"weight": 0.5}},
                    {"model": m["base"], "layer_range": [2, 4]},
                ],
                "base_model": m["base"],
            },
        ],
        "merge_method": "ties",
        "base_model": m["base"],
        "parameters": {"density": 0.5},
        "dtype": "float32",
    },
    "passthrough scale filter": lambda m: {
        "merge_method": "passthrough",
        "models": [
            {
                "model": m["a"],
                "parameters": {"scale": [{"filter": "o_proj", "value": 0}, {"value": 1}]},
            }
        ],
        "dtype": "float32",
    },
}


@pytest.mark.parametrize("name", sorted(MORE))
def test_more_configurations_of_mergekits_tests(name, models, tmp_path):
    theirs, ours, _ = _both(MORE[name](models), tmp_path)
    assert set(ours) == set(theirs)
    for k in theirs:
        scale = max(float(np.abs(theirs[k]).max()), 1e-12)
        assert np.abs(ours[k].astype(np.float64) - theirs[k]).max() <= 1e-6 * scale, (name, k)


def _other(m, kind, method, **extra):
    recipe = {"merge_method": method, "dtype": "float32", **extra}
    if "models" not in extra and "slices" not in extra:
        recipe["models"] = [
            {"model": m[f"{kind}0"], "parameters": {"weight": 0.6}},
            {"model": m[f"{kind}1"], "parameters": {"weight": 0.4}},
        ]
    return recipe


OTHER_ARCHS = {
    "gpt2 copy": lambda m: _other(m, "gpt2", "passthrough", models=[{"model": m["gpt20"]}]),
    "gpt2 stack": lambda m: _other(
        m,
        "gpt2",
        "passthrough",
        slices=[{"sources": [{"model": m["gpt20"], "layer_range": [0, 4]}]}] * 2,
    ),
    "granite copy": lambda m: _other(
        m, "granite", "passthrough", models=[{"model": m["granite0"]}]
    ),
    "granite linear": lambda m: _other(m, "granite", "linear"),
    "granite slerp": lambda m: _other(
        m, "granite", "slerp", base_model=m["granite0"], parameters={"t": 0.5}
    ),
}


@pytest.mark.parametrize("name", sorted(OTHER_ARCHS))
def test_gpt2_and_granite(name, others, tmp_path):
    recipe = OTHER_ARCHS[name](others)
    theirs, ours, _ = _both(recipe, tmp_path)
    assert set(ours) == set(theirs)
    for k in theirs:
        scale = max(float(np.abs(theirs[k]).max()), 1e-12)
        assert np.abs(ours[k].astype(np.float64) - theirs[k]).max() <= 1e-6 * scale, (name, k)
    if name == "gpt2 stack":
        config = json.loads((tmp_path / "ml" / "config.json").read_text())
        assert config["n_layer"] == 8


def _in(dtype: str, build):
    return lambda m: {**build(m), "dtype": dtype}


COMPAT_RECIPES = {
    **{name: build for name, (build, _) in DETERMINISTIC.items() if "(float32)" not in name},
    **MORE,
    **EXAMPLES,
}
"""Every deterministic configuration and example: ``--compat mergekit`` gives mergekit's
bytes in any dtype (``python benchmarks/mergekit_parity.py`` runs each in float32, float16
and bfloat16; the test one dtype each, in turn, and the examples as written)."""
COMPAT = {
    **{f"{name} (as written)": build for name, build in EXAMPLES.items()},
    **{
        f"{name} ({dtype})": _in(dtype, build)
        for (name, build), dtype in zip(
            sorted(COMPAT_RECIPES.items()),
            ["bfloat16", "float16", "float32"] * len(COMPAT_RECIPES),
            strict=False,
        )
    },
}


@pytest.mark.parametrize("name", sorted(COMPAT))
def test_compat_mergekit_gives_mergekits_bytes(name, models, tmp_path):
    mk = _both_files(COMPAT[name](models), tmp_path, "--compat", "mergekit")
    theirs, ours = {}, {}
    for folder, into in ((mk, theirs), (tmp_path / "ml", ours)):
        for f in sorted(folder.glob("*.safetensors")):
            into |= torch_load_file(str(f))
    assert set(ours) == set(theirs)
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype, k
        assert torch.equal(ours[k], theirs[k]), f"{name}: {k} differs"
