"""NuSLERP against slerp computed plainly: whole tensors, rows, columns, and task vectors
over a base; the position from the weights."""

from __future__ import annotations

import numpy as np

from mergelab.engine import merge_state_dicts


def _slerp(t: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    theta = np.arccos(np.clip(cos, -1, 1))
    return (np.sin((1 - t) * theta) * a + np.sin(t * theta) * b) / np.sin(theta)


def _run(a, b, base=None, weights=(1.0, 3.0), **params):
    return merge_state_dicts(
        "nuslerp",
        [{"w": a}, {"w": b}],
        None if base is None else {"w": base},
        params=params,
        model_params=[{"weight": w} for w in weights],
    )["w"]


def test_whole_rows_and_columns():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    t = 3.0 / 4.0  # weights 1 and 3
    whole = _slerp(t, a.ravel(), b.ravel()).reshape(4, 6)
    np.testing.assert_allclose(_run(a, b), whole, rtol=1e-10)
    rows = np.stack([_slerp(t, a[i], b[i]) for i in range(4)])
    np.testing.assert_allclose(_run(a, b, nuslerp_flatten=False), rows, rtol=1e-10)
    cols = np.stack([_slerp(t, a[:, j], b[:, j]) for j in range(6)], axis=1)
    got = _run(a, b, nuslerp_flatten=False, nuslerp_row_wise=True)
    np.testing.assert_allclose(got, cols, rtol=1e-10)


def test_task_vectors_over_a_base_and_collinear_inputs():
    rng = np.random.default_rng(1)
    base, a, b = (rng.standard_normal(10) for _ in range(3))
    got = _run(base + a, base + b, base, weights=(1.0, 1.0))
    np.testing.assert_allclose(got, base + _slerp(0.5, a, b), rtol=1e-10)
    line = _run(a, 2 * a, weights=(1.0, 1.0))  # same direction: the straight line
    np.testing.assert_allclose(line, 1.5 * a, rtol=1e-12)
