"""``--compat mergekit``: mergekit's arithmetic in a float16/bfloat16 compute dtype, checked
against torch computing mergekit's formulas directly (no mergekit needed; the parity test
compares with mergekit itself)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from mergelab.cli import main
from mergelab.engine.api import open_plans
from mergelab.io.dtypes import round_to
from mergelab.recipe import Recipe

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402


@pytest.mark.parametrize("dtype, torch_dtype", [("F16", "float16"), ("BF16", "bfloat16")])
def test_round_to_is_torchs_cast(dtype, torch_dtype):
    x = np.random.default_rng(0).standard_normal(50_000).astype(np.float32) * 10
    x[:4] = [0.0, -0.0, 1e-30, 65519.0]
    want = torch.from_numpy(x).to(getattr(torch, torch_dtype)).float().numpy()
    assert np.array_equal(round_to(x.copy(), dtype), want)


def _write(folder, tensors: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    return str(folder)


def _merge(tmp_path, recipe: dict, *options: str) -> dict:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out.safetensors"
    assert main(["merge", str(path), "--out", str(out), "--force", *options]) == 0
    return load_file(str(out))


def test_linear_accumulates_as_mergekit_does(tmp_path):
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(64, 48, generator=gen) * 0.05 for _ in range(3)]
    paths = [_write(tmp_path / f"m{i}", {"w": x}) for i, x in enumerate(xs)]
    weights = [1.0, 0.3, 0.5]
    recipe = {
        "merge_method": "linear",
        "models": [
            {"model": p, "parameters": {"weight": w}} for p, w in zip(paths, weights, strict=True)
        ],
        "dtype": "float16",
    }
    # mergekit's linear: inputs cast to float16, a float32 accumulator, addcmul per model,
    # the division, the result cast back.
    w = torch.tensor(weights)
    acc = torch.zeros(64, 48)
    for x, c in zip(xs, w.unbind(0), strict=True):
        acc.addcmul_(x.half(), c)
    want = (acc / w.sum()).half()
    ours = _merge(tmp_path, recipe, "--compat", "mergekit")["w"]
    assert ours.dtype == torch.float16 and torch.equal(ours, want)
    plain = _merge(tmp_path, recipe)["w"]  # float32 throughout, rounded once: not the same
    assert not torch.equal(plain, want)


def _ties_as_mergekit(base, models, density: float, weights) -> torch.Tensor:
    """mergekit's TIES in bfloat16 written out in torch: task vectors, the top-k of each by
    magnitude in torch's argsort order, weights, the elected sign, the normalised sum."""
    dt = torch.bfloat16
    b = base.to(dt)
    deltas = []
    for x in models:
        d = x.to(dt) - b
        k = max(1, int(density * d.numel()))
        mask = torch.zeros(d.numel(), dtype=dt)
        mask[torch.argsort(d.abs().reshape(-1).float(), descending=True)[:k]] = 1
        deltas.append(d * mask.reshape(d.shape))
    stacked = torch.stack(deltas)
    w = torch.tensor(weights, dtype=dt).reshape(-1, 1, 1)
    stacked = stacked * w
    elected = (stacked.sum(dim=0) >= 0).to(dt) * 2 - 1
    agree = stacked.sign() == elected
    mixed = (stacked * agree).sum(dim=0)
    divisor = (w * agree).sum(dim=0)
    divisor[divisor == 0] = 1
    return b + mixed / divisor


def test_ties_keeps_torchs_choice_among_equal_magnitudes(tmp_path):
    """bfloat16 task vectors from a few levels: most magnitudes at the top-k threshold are
    ties, and which of them survive is torch's sort order, not position."""
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(40, 50, generator=gen)
    levels = torch.tensor([-0.5, -0.25, 0.25, 0.5])
    models = [base + levels[torch.randint(0, 4, (40, 50), generator=gen)] for _ in range(3)]
    weights = [1.0, 0.7, 0.4]
    paths = [_write(tmp_path / f"m{i}", {"w": x}) for i, x in enumerate(models)]
    recipe = {
        "merge_method": "ties",
        "base_model": _write(tmp_path / "base", {"w": base}),
        "models": [
            {"model": p, "parameters": {"weight": w, "density": 0.3}}
            for p, w in zip(paths, weights, strict=True)
        ],
        "dtype": "bfloat16",
    }
    want = _ties_as_mergekit(base, models, 0.3, weights)
    ours = _merge(tmp_path, recipe, "--compat", "mergekit")["w"]
    assert torch.equal(ours, want)
    plain = _merge(tmp_path, recipe)["w"]  # ties kept by position: other elements survive
    assert not torch.equal(plain, want)


def _plan(tmp_path, stored: torch.dtype, **recipe):
    a = _write(tmp_path / "a", {"w": torch.ones(4, 4, dtype=stored)})
    b = _write(tmp_path / "b", {"w": torch.zeros(4, 4, dtype=stored)})
    entries = [{"model": a}, {"model": b}]
    r = Recipe.model_validate({"models": entries, "compat": "mergekit", **recipe})
    (plan,), _ = open_plans(r)
    return plan


def test_the_compute_and_output_dtypes_are_mergekits(tmp_path):
    # No dtype: mergekit computes in the inputs' dtype.
    plan = _plan(tmp_path, torch.bfloat16, merge_method="linear")
    assert [(t.rounding, t.out_dtype) for t in plan.tensors] == [("BF16", "BF16")]
    assert "compute     bfloat16 as mergekit does" in plan.describe()
    # dtype is the compute dtype; out_dtype the output's.
    plan = _plan(tmp_path, torch.float32, merge_method="linear", dtype="float16", out_dtype="F32")
    assert [(t.rounding, t.out_dtype) for t in plan.tensors] == [("F16", "F32")]
    # arcee_fusion's result is float32 in mergekit (a float32 mask promotes it).
    plan = _plan(
        tmp_path, torch.float32, merge_method="arcee_fusion", base_model=str(tmp_path / "a"),
        dtype="bfloat16",
    )  # fmt: skip
    assert [(t.rounding, t.out_dtype) for t in plan.tensors] == [("BF16", "F32")]
    # float32 compute: nothing to round, mergekit's order of operations all the same.
    plan = _plan(tmp_path, torch.float32, merge_method="linear", dtype="float32")
    assert [t.rounding for t in plan.tensors] == ["F32"]
    assert "compute     float32 as mergekit does" in plan.describe()
    # Without compat: mergelab's own arithmetic.
    r = Recipe.model_validate({"merge_method": "linear", "models": [str(tmp_path / "a")]})
    (plan,), _ = open_plans(r)
    assert [t.rounding for t in plan.tensors] == [None]
    assert "\ncompute " not in plan.describe()


def test_a_low_precision_recipe_says_how_it_computes(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("merge_method: linear\nmodels: [a, b]\ndtype: bfloat16\n")
    recipe = Recipe.from_yaml(path)
    assert any("--compat mergekit computes as mergekit does" in n for n in recipe.notes)
    assert not recipe.model_copy(update={"compat": "mergekit"}).notes


def test_an_unknown_compat_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["merge", "--method", "linear", "--models", "a", "--out", "o", "--compat", "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--compat" in err and "mergekit" in err


def test_dare_rescales_as_mergekit_does(tmp_path):
    """mergekit's DARE restores each task vector's L1 norm (its ``rescale: true``, the
    default); mergelab's own default is the paper's 1/density, and a YAML recipe says so."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(100, 100, generator=gen)
    model = base + 0.1 * torch.randn(100, 100, generator=gen)
    recipe = {
        "merge_method": "dare_linear",
        "base_model": _write(tmp_path / "base", {"w": base}),
        "models": [{"model": _write(tmp_path / "m", {"w": model}), "parameters": {"density": 0.5}}],
        "dtype": "float32",
    }
    before = float((model - base).abs().sum())
    ours = _merge(tmp_path, recipe, "--compat", "mergekit")["w"]
    assert float((ours - base).abs().sum()) == pytest.approx(before, rel=1e-5)
    plain = _merge(tmp_path, recipe)["w"]
    assert float((plain - base).abs().sum()) != pytest.approx(before, rel=1e-3)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    (plan,), _ = open_plans(Recipe.from_yaml(path))
    assert any("restores each task vector's L1 norm" in n for n in plan.notes)
    (plan,), _ = open_plans(Recipe.from_yaml(path).model_copy(update={"compat": "mergekit"}))
    assert plan.method.params.rescale == "norm"
    assert any("rescale as mergekit's" in n for n in plan.notes)


def test_a_method_mergekit_does_not_have_is_refused(tmp_path, capsys):
    paths = [_write(tmp_path / n, {"w": torch.ones(3, 3)}) for n in ("a", "b", "base")]
    args = ["merge", "--method", "tsv", "--base", paths[2], "--models", *paths[:2]]
    assert main([*args, "--out", str(tmp_path / "o"), "--compat", "mergekit"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "mergelab: error: --compat mergekit: tsv is not a mergekit method, so there is no "
        "mergekit arithmetic to follow; merge without --compat"
    )
    assert not (tmp_path / "o").exists()
