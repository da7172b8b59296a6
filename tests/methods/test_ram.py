"""RAM and RAM+ worked by hand: lone contributions whole, shared ones averaged, and RAM+'s
boost from each model's shared/unique counts."""

from __future__ import annotations

import numpy as np
import pytest

from mergelab.engine import merge_state_dicts

BASE = np.zeros(5)
A = np.array([1.0, 2.0, 0.0, 0.0, 4.0])
B = np.array([0.0, 4.0, 3.0, 0.0, 0.0])
C = np.array([0.0, 6.0, 0.0, 0.0, 0.0])


def _merge(method: str, **params) -> np.ndarray:
    models = [{"w": BASE + m} for m in (A, B, C)]
    return merge_state_dicts(method, models, {"w": BASE}, params=params)["w"]


def test_ram_by_hand():
    # element 0: A alone (1); 1: A, B, C share (2 + 4 + 6) / 3; 2: B alone; 3: none; 4: A
    np.testing.assert_allclose(_merge("ram"), [1.0, 4.0, 3.0, 0.0, 4.0])
    # epsilon 1.5: A's 1 no longer counts
    np.testing.assert_allclose(_merge("ram", epsilon=1.5), [0.0, 4.0, 3.0, 0.0, 4.0])


def test_ramplus_by_hand():
    # A: shared 1 (element 1), unique 2 (0, 4): rho 0.5 -> clipped 0.2 -> lambda 1.02
    # B: shared 1, unique 1: rho 1 -> 0.2 -> 1.02;  C: shared 1, unique 0: rho 1/eps
    lam = 1 + 0.1 * 0.2
    got = _merge("ramplus_tl")
    np.testing.assert_allclose(got, [lam * 1.0, 4.0, lam * 3.0, 0.0, lam * 4.0])
    got = _merge("ramplus_tl", r=1.0, alpha=10.0)
    # A: 1 + min(0.5, 10) = 1.5; B: 1 + 1 = 2
    np.testing.assert_allclose(got, [1.5, 4.0, 6.0, 0.0, 6.0])


@pytest.mark.parametrize("method", ["ram", "ramplus_tl"])
def test_an_unchanged_model_changes_nothing(method):
    models = [{"w": BASE + A}, {"w": BASE.copy()}]
    got = merge_state_dicts(method, models, {"w": BASE})["w"]
    expected = A if method == "ram" else A * (1 + 0.1 * 0.0)  # no shared elements: rho 0
    np.testing.assert_allclose(got, expected)
