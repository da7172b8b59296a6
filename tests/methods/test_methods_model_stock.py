"""Model Stock merged in chunks from a statistics pass agrees with the whole-tensor
computation it replaced (kept below verbatim, as the reference)."""

from __future__ import annotations

import numpy as np
import pytest

import mergelab.engine.plan as engine_plan
from mergelab.engine import merge_state_dicts
from mergelab.methods.model_stock import _row_pieces, ratios_from_gram


def whole_tensor_model_stock(tensors: np.ndarray, base: np.ndarray, filter_wise: bool):
    """The previous implementation (whole tensors in their shape)."""
    n = tensors.shape[0]
    rows = base.shape[0] if filter_wise and base.ndim >= 2 else 1  # a vector: one row
    flat_base = base.reshape(rows, -1)
    models = tensors.reshape(n, rows, -1)
    offsets = models - flat_base
    norms = np.linalg.norm(offsets, axis=-1)  # [n, rows]
    cosines = [
        np.clip((offsets[i] * offsets[j]).sum(-1) / np.maximum(norms[i] * norms[j], 1e-6), -1, 1)
        for i in range(n)
        for j in range(i + 1, n)
    ]
    cos = np.mean(cosines, axis=0)
    denominator = 1 + (n - 1) * cos
    singular = np.abs(denominator) < 1e-6
    t = np.where(singular, 0.0, n * cos / np.where(singular, 1.0, denominator))
    t = t.astype(tensors.dtype)[:, None]
    return (t * models.mean(0) + (1 - t) * flat_base).reshape(base.shape)


SHAPES = {"w": (57, 31), "v": (300,), "k": (6, 5, 7), "s": (), "one_row": (1, 40)}


@pytest.mark.parametrize("chunk", [None, 16, 31, 100])
@pytest.mark.parametrize("filter_wise", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_models", [2, 3, 5])
def test_chunked_model_stock_matches_the_whole_tensor_one(
    chunk, filter_wise, dtype, n_models, monkeypatch
):
    rng = np.random.default_rng(n_models)
    base = {k: np.asarray(rng.standard_normal(s), dtype=dtype) for k, s in SHAPES.items()}
    common = {k: 0.05 * rng.standard_normal(s) for k, s in SHAPES.items()}
    models = [
        {
            k: np.asarray(v + common[k] + 0.05 * rng.standard_normal(v.shape), dtype=dtype)
            for k, v in base.items()
        }
        for _ in range(n_models)
    ]
    if chunk is not None:
        monkeypatch.setattr(engine_plan, "CHUNK_ELEMENTS", chunk)
    out = merge_state_dicts("model_stock", models, base, params={"filter_wise": filter_wise})
    for name, b in base.items():
        stack = np.stack([m[name] for m in models])
        expected = whole_tensor_model_stock(stack, b, filter_wise)
        scale = max(float(np.abs(expected).max(initial=0)), 1.0)
        assert out[name].dtype == dtype and out[name].shape == b.shape
        assert float(np.abs(out[name] - expected).max(initial=0)) / scale < 1e-6, name


def test_opposed_task_vectors_give_the_base():
    """1 + (N - 1) cos = 0 (two exactly opposed task vectors): t = 0, the base."""
    base = {"w": np.zeros(8, dtype=np.float32)}
    tau = np.arange(1, 9, dtype=np.float32)
    out = merge_state_dicts("model_stock", [{"w": tau}, {"w": -tau}], base)
    assert np.array_equal(out["w"], base["w"])


def test_ratios_from_gram_follow_the_formula():
    gram = np.array([[[4.0, 2.0], [2.0, 4.0]]])  # |tau| = 2, cos = 0.5
    assert ratios_from_gram(gram) == pytest.approx([2 * 0.5 / 1.5])
    zero = ratios_from_gram(np.zeros((3, 2, 2)))
    assert np.array_equal(zero, np.zeros(3))


@pytest.mark.parametrize(("start", "stop", "row"), [(0, 10, 5), (3, 17, 5), (7, 9, 5), (0, 7, 8)])
def test_row_pieces_cover_the_range_in_order(start, stop, row):
    pieces = _row_pieces(start, stop, row)
    covered = [start + i for _, lo, hi in pieces for i in range(lo, hi)]
    assert covered == list(range(start, stop))
    for first, lo, hi in pieces:
        assert first == (start + lo) // row
        part_of_one_row = (start + hi - 1) // row == first
        whole_rows = (start + lo) % row == 0 and (hi - lo) % row == 0
        assert part_of_one_row or whole_rows
