"""Slerp merged chunk by chunk from a statistics pass equals the whole-tensor formula,
written plainly below (float64, no chunking)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import mergelab.engine.plan as engine_plan
from mergelab.engine import merge_state_dicts
from mergelab.methods import get_method

SHAPES = {"w": (57, 31), "v": (300,), "k": (6, 5, 7), "s": (), "big": (2000,)}


def plain_slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    v0, v1 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    n0, n1 = np.linalg.norm(v0), np.linalg.norm(v1)
    u = v0 / n0 if n0 > 1e-8 else v0
    v = v1 / n1 if n1 > 1e-8 else v1
    dot = float(np.clip(u @ v, -1, 1))
    if abs(dot) > 0.9995:
        out = (1 - t) * v0 + t * v1
    else:
        omega = math.acos(dot)
        out = (math.sin((1 - t) * omega) * v0 + math.sin(t * omega) * v1) / math.sin(omega)
    return out.reshape(a.shape)


def assert_matches(out: np.ndarray, expected: np.ndarray, rel: float) -> None:
    scale = max(float(np.abs(expected).max(initial=0)), 1e-30)
    worst = float(np.abs(out.astype(np.float64) - expected).max(initial=0))
    assert worst <= rel * scale, (worst, scale)


def pair(seed: int, dtype) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    a = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    b = {k: v + 0.8 * rng.standard_normal(v.shape) for k, v in a.items()}
    b["s"] = np.asarray(-2.0)  # one element: opposed, so the collinear fallback
    b["v"] = 3 * a["v"]  # collinear: linear interpolation
    a["k"] = np.zeros(SHAPES["k"])  # a zero tensor has no direction: norm taken as 1
    return (
        {k: np.asarray(v, dtype=dtype) for k, v in a.items()},
        {k: np.asarray(v, dtype=dtype) for k, v in b.items()},
    )


@pytest.mark.parametrize("chunk", [None, 7, 64, 1000])
@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_chunked_slerp_matches_the_whole_tensor_formula(chunk, with_base, t, dtype, monkeypatch):
    if chunk is not None:
        monkeypatch.setattr(engine_plan, "CHUNK_ELEMENTS", chunk)
    a, b = pair(1, dtype)
    if with_base:  # the base is the start point, the one model the end point
        out = merge_state_dicts("slerp", [b], a, params={"t": t})
    else:
        out = merge_state_dicts("slerp", [a, b], params={"t": t})
    rel = 2e-3 if dtype == np.float16 else 1e-6
    for name in SHAPES:
        assert out[name].dtype == dtype and out[name].shape == a[name].shape
        assert_matches(out[name], plain_slerp(a[name], b[name], t), rel)


def test_bfloat16_inputs():
    torch = pytest.importorskip("torch")
    a, b = pair(2, np.float32)
    ta = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in a.items()}
    tb = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in b.items()}
    out = merge_state_dicts("slerp", [ta, tb], params={"t": 0.6})
    for name in SHAPES:
        assert out[name].dtype == torch.bfloat16
        expected = plain_slerp(ta[name].float().numpy(), tb[name].float().numpy(), 0.6)
        assert_matches(out[name].float().numpy(), expected, 2**-7)


def test_fallbacks_follow_the_formula_exactly():
    """Collinear inputs interpolate linearly; a zero start point gives the quarter-circle
    coefficients sin((1-t) pi/2) and sin(t pi/2)."""
    v = np.arange(1, 9, dtype=np.float64)
    lerp = merge_state_dicts("slerp", [{"w": v}, {"w": 2 * v}], params={"t": 0.25})["w"]
    np.testing.assert_array_equal(lerp, 0.75 * v + 0.25 * (2 * v))
    zero = merge_state_dicts("slerp", [{"w": 0 * v}, {"w": v}], params={"t": 0.25})["w"]
    np.testing.assert_allclose(zero, math.sin(0.25 * math.pi / 2) * v, rtol=1e-15)


def test_slerp_is_merged_in_chunks(monkeypatch):
    """Memory follows the chunk, not the tensor: the method never sees a whole tensor."""
    monkeypatch.setattr(engine_plan, "CHUNK_ELEMENTS", 64)
    method = get_method("slerp")
    seen = []
    merge = method.merge

    def spy(self, tensors, base, ctx):
        seen.append(tensors.shape)
        return merge(self, tensors, base, ctx)

    monkeypatch.setattr(method, "merge", spy)
    a, b = pair(3, np.float32)
    out = merge_state_dicts("slerp", [b], a, params={"t": 0.5})
    assert max(shape[-1] for shape in seen) == 64 and len(seen) > len(SHAPES)
    assert_matches(out["big"], plain_slerp(a["big"], b["big"], 0.5), 1e-6)
