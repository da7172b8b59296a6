"""CART with a base model (accepted, never read, no effect) and the SVD methods' share of
the dry run's peak-memory estimate (only tensors in the low-rank scope pay for an SVD)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from safetensors.numpy import load_file

from mergelab.cli import main
from mergelab.engine import build_plan
from mergelab.io.checkpoint import ArrayCheckpoint
from mergelab.methods import TensorContext

SHAPES = {"blk.attn.weight": (24, 16), "blk.bias": (16,), "embed.weight": (10, 16)}


def write_models(write_st, n=3, seed=0):
    rng = np.random.default_rng(seed)
    base = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    tasks = [
        {k: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in base.items()}
        for _ in range(n)
    ]
    return write_st("base", base), [write_st(f"t{i}", t) for i, t in enumerate(tasks)], base


def cart_args(paths, out, *extra):
    return [
        "merge",
        "--method",
        "cart",
        *extra,
        "--models",
        *map(str, paths),
        "--param",
        "rank=0.25",
        "--param",
        "lambda=1.5",
        "--out",
        str(out),
    ]


def test_cart_with_a_base_gives_the_same_tensors_and_says_so(write_st, tmp_path, capsys):
    base_path, paths, _ = write_models(write_st)
    without, with_base = tmp_path / "plain.safetensors", tmp_path / "based.safetensors"
    assert main(cart_args(paths, without)) == 0
    assert main(cart_args(paths, with_base, "--base", str(base_path))) == 0
    a, b = load_file(str(without)), load_file(str(with_base))
    assert list(a) == list(b)
    assert all(a[n].tobytes() == b[n].tobytes() for n in a)
    record = (tmp_path / "based.mergelab.yaml").read_text()
    assert f"# note: base {base_path} is accepted but does not change the result" in record
    assert "does not change" not in (tmp_path / "plain.mergelab.yaml").read_text()
    capsys.readouterr()

    assert main([*cart_args(paths, tmp_path / "dry"), "--base", str(base_path), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert f"base        {base_path} (accepted, not read)" in text
    assert "does not change the result, so its tensors are not read (cart: CART centres" in text


def test_a_base_listed_among_the_models_stays_a_model_for_cart(write_st, tmp_path):
    base_path, paths, _ = write_models(write_st)
    listed = [base_path, *paths]
    assert main(cart_args(listed, tmp_path / "a.safetensors")) == 0
    assert main(cart_args(listed, tmp_path / "b.safetensors", "--base", str(base_path))) == 0
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert all(a[n].tobytes() == b[n].tobytes() for n in a)


def test_cart_never_reads_the_base(write_st, tmp_path):
    # A base holding NaN is refused by any merge that reads it (tsv here); cart merges.
    _, paths, base = write_models(write_st)
    poisoned = write_st("poisoned", {k: np.full_like(v, np.nan) for k, v in base.items()})
    out = tmp_path / "out.safetensors"
    assert main(cart_args(paths, out, "--base", str(poisoned))) == 0
    assert np.isfinite(load_file(str(out))["blk.attn.weight"]).all()
    tsv = ["merge", "--method", "tsv", "--base", str(poisoned), "--models", *map(str, paths)]
    assert main([*tsv, "--out", str(tmp_path / "tsv.safetensors")]) == 2


def test_cart_still_checks_the_base_header(write_st, tmp_path, capsys):
    _, paths, base = write_models(write_st)
    wrong = write_st("wrong", {**base, "blk.bias": np.zeros(15, np.float32)})
    assert main(cart_args(paths, tmp_path / "o.safetensors", "--base", str(wrong))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "blk.bias" in err and "[15]" in err


# -- workspace ---------------------------------------------------------------------------------


def plan_for(params, shapes, n=3):
    rng = np.random.default_rng(0)
    models = [
        ArrayCheckpoint({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()})
        for _ in range(n)
    ]
    return build_plan("cart", models, params=params)


def test_an_out_of_scope_embedding_pays_no_svd_workspace():
    m, n = 256, 16  # the embedding: by far the largest tensor
    shapes = {"embed.weight": (m, n), "blk.w": (16, 16)}
    excluded = plan_for({"rank": 0.25}, shapes).peak_bytes_estimate()
    included = plan_for({"rank": 0.25, "exclude": ""}, shapes).peak_bytes_estimate()
    r = n
    # numpy's SVD: a copy of the matrix, U, V^T, gesdd's ~5 r^2 + 8 r; plus CART's average,
    # update and U S V^T product; out of scope only the mean and a scaled copy.
    svd = (m * n + m * r + r * n + 5 * r * r + 8 * r) + 3 * m * n
    mean_only = 2 * m * n
    assert included - excluded == (svd - mean_only) * 4


@pytest.mark.parametrize("svd", ["full", "randomized"])
def test_the_workspace_estimate_bounds_what_cart_allocates(svd):
    m, n, t = 300, 200, 3
    rng = np.random.default_rng(1)
    stack = rng.standard_normal((t, m, n)).astype(np.float32)
    plan = plan_for({"rank": 0.05, "svd": svd}, {"blk.w": (m, n)}, n=t)
    estimate = plan.method.workspace_bytes("blk.w", (m, n), t, 4)
    tracemalloc.start()
    try:
        plan.method.merge(stack, None, TensorContext("blk.w", (m, n)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # NumPy reports its arrays to tracemalloc (LAPACK's scratch is not seen): an upper
    # estimate, and not a loose one. At rank 10 of 200 the randomized SVD's factors are
    # [300, 20]-sized: counting a full SVD instead would be about 3x what it allocates.
    assert peak <= estimate <= 1.4 * peak


def test_randomized_workspace_follows_the_rank():
    shapes = {"blk.w": (300, 200)}
    full = plan_for({"rank": 0.05}, shapes).method.workspace_bytes("blk.w", (300, 200), 3, 4)
    fast = plan_for({"rank": 0.05, "svd": "randomized"}, shapes).method
    assert fast.workspace_bytes("blk.w", (300, 200), 3, 4) < full / 2
    # Where the sketch would cover half the matrix, randomized_svd runs the full SVD.
    wide = plan_for({"rank": 0.5, "svd": "randomized"}, shapes).method
    fullrank = plan_for({"rank": 0.5}, shapes).method
    assert wide.workspace_bytes("blk.w", (300, 200), 3, 4) == fullrank.workspace_bytes(
        "blk.w", (300, 200), 3, 4
    )
