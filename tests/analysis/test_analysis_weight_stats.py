"""Per-layer max |w| and variance of models and of their average."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergelab.analysis import layer_stats, stats_frame


def test_exact_values_against_numpy():
    a = {"w": torch.tensor([[1.0, -4.0], [2.0, 3.0]]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([[-2.0, 1.0], [0.5, 0.0]]), "n": torch.tensor(4)}
    (row,) = layer_stats([a, b])  # the integer tensor is skipped
    wa, wb = a["w"].double().numpy(), b["w"].double().numpy()
    mean = (wa + wb) / 2
    assert row["layer"] == "w" and row["numel"] == 4 and row["n_models"] == 2
    assert row["max_abs"] == (4.0, 2.0)
    assert row["var"] == pytest.approx((np.var(wa), np.var(wb)))
    assert row["avg_max_abs"] == pytest.approx(np.abs(mean).max())
    assert row["avg_var"] == pytest.approx(np.var(mean))
    assert row["max_abs_largest"] == 4.0
    assert row["var_largest"] == pytest.approx(max(np.var(wa), np.var(wb)))
    assert row["var_independent"] == pytest.approx((np.var(wa) + np.var(wb)) / 4)
    assert row["max_abs_bound_holds"] and row["variance_bound_holds"]


@pytest.mark.parametrize("stds", [(1.0, 2.0), (0.5, 0.5, 1.0, 3.0)])
def test_independent_weights_match_the_prediction(stds):
    g = torch.Generator().manual_seed(0)
    sds = [{"layer.weight": torch.randn(400, 500, generator=g) * s + 0.3} for s in stds]
    (row,) = layer_stats(sds)
    predicted = sum(s * s for s in stds) / len(stds) ** 2
    assert row["var_independent"] == pytest.approx(predicted, rel=0.02)
    assert row["avg_var"] == pytest.approx(predicted, rel=0.02)
    assert row["var_ratio"] == pytest.approx(1.0, abs=0.02)
    assert row["avg_max_abs"] < row["max_abs_largest"]
    assert row["max_abs_bound_holds"] and row["variance_bound_holds"]


def test_identical_models_are_fully_correlated():
    w = torch.randn(50, 20, generator=torch.Generator().manual_seed(2))
    (row,) = layer_stats([{"w": w}] * 4)
    assert row["var_ratio"] == pytest.approx(4.0)
    assert row["avg_var"] == pytest.approx(row["var_largest"])
    assert row["variance_bound_holds"]  # equality is within the bound


def test_bounds_hold_for_correlated_random_models_and_a_given_average():
    from mergelab.engine import merge_state_dicts

    g = torch.Generator().manual_seed(1)
    base = torch.randn(64, 32, generator=g)
    sds = [
        {
            "a.weight": base + 0.3 * torch.randn(64, 32, generator=g),
            "a.bias": torch.randn(32, generator=g),
        }
        for _ in range(5)
    ]
    merged = merge_state_dicts("linear", sds)
    rows = layer_stats(sds, merged)
    assert [r["layer"] for r in rows] == ["a.weight", "a.bias"]
    assert all(r["max_abs_bound_holds"] and r["variance_bound_holds"] for r in rows)
    assert rows[0]["var_ratio"] > 3  # mostly shared: far above the independent prediction


def test_bounds_report_false_when_the_average_is_not_one():
    g = torch.Generator().manual_seed(3)
    sds = [{"w": torch.randn(10, 10, generator=g)}, {"w": torch.randn(10, 10, generator=g)}]
    (row,) = layer_stats(sds, {"w": 3 * sds[0]["w"]})
    assert not row["max_abs_bound_holds"]
    assert not row["variance_bound_holds"]


def test_mismatched_models_are_rejected():
    with pytest.raises(ValueError, match="missing"):
        layer_stats([{"w": torch.ones(2)}, {"v": torch.ones(2)}])
    with pytest.raises(ValueError, match="shape"):
        layer_stats([{"w": torch.ones(2)}, {"w": torch.ones(3)}])
    with pytest.raises(ValueError):
        layer_stats([])


def test_stats_frame_has_one_column_per_model():
    sds = [{"w": torch.full((3, 3), float(i))} for i in range(3)]
    frame = stats_frame(layer_stats(sds))
    assert {"max_abs_0", "max_abs_2", "var_1", "avg_var", "layer"} <= set(frame.columns)
    assert len(frame) == 1
