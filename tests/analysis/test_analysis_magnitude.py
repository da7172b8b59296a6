"""Scaling state dicts by the paper's magnitude factors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergelab.analysis import FACTORS, scale_models, scale_state_dict


def sample_sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 1, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "bn.weight": torch.rand(4, generator=g) + 0.5,
        "bn.bias": torch.randn(4, generator=g),
        "bn.running_mean": torch.randn(4, generator=g),
        "bn.running_var": torch.rand(4, generator=g) + 0.1,
        "bn.num_batches_tracked": torch.tensor(17, dtype=torch.int64),
        "head.weight": torch.randn(3, 4, generator=g).half(),
        "head.bias": torch.randn(3, generator=g),
    }


EXPECTED = {
    "all": {
        "conv.weight",
        "conv.bias",
        "bn.weight",
        "bn.bias",
        "bn.running_mean",
        "bn.running_var",
        "head.weight",
        "head.bias",
    },
    "weights": {"conv.weight", "head.weight"},
    "no_norm_stats": {
        "conv.weight",
        "conv.bias",
        "bn.weight",
        "bn.bias",
        "head.weight",
        "head.bias",
    },
}


@pytest.mark.parametrize("tensors", ["all", "weights", "no_norm_stats"])
def test_scale_state_dict_options(tensors):
    sd = sample_sd()
    out = scale_state_dict(sd, 7.0, tensors=tensors)
    assert set(out) == set(sd)
    for name, value in sd.items():
        assert out[name].dtype == value.dtype
        if name in EXPECTED[tensors]:
            torch.testing.assert_close(out[name], value * 7.0)
            assert not torch.equal(out[name], value)
        else:
            assert torch.equal(out[name], value)
    assert out["bn.num_batches_tracked"].item() == 17
    assert out["bn.num_batches_tracked"].dtype == torch.int64
    torch.testing.assert_close(sd["conv.weight"], sample_sd()["conv.weight"])  # input untouched


def test_scale_numpy_arrays_and_bad_option():
    sd = {"fc.weight": np.ones((2, 3), np.float32), "steps": np.array([5], np.int32)}
    out = scale_state_dict(sd, 2.5)
    assert out["fc.weight"].dtype == np.float32 and (out["fc.weight"] == 2.5).all()
    assert (out["steps"] == 5).all() and out["steps"].dtype == np.int32
    with pytest.raises(ValueError):
        scale_state_dict(sd, 2.0, tensors="everything")  # type: ignore[arg-type]


def test_scaled_model_logits_scale_for_a_linear_model():
    layer = torch.nn.Linear(5, 3)
    x = torch.randn(4, 5)
    scaled = scale_state_dict(layer.state_dict(), 10.0)
    other = torch.nn.Linear(5, 3)
    other.load_state_dict(scaled)
    torch.testing.assert_close(other(x), 10.0 * layer(x))


@pytest.mark.parametrize(
    ("which", "scaled"), [("all", [1, 1, 1]), ("first", [1, 0, 0]), ("all_but_first", [0, 1, 1])]
)
def test_scale_models_which(which, scaled):
    sds = [{"w": torch.full((2, 2), float(i + 1))} for i in range(3)]
    out = scale_models(sds, 3.0, which=which)
    for i, (flag, sd) in enumerate(zip(scaled, out, strict=True)):
        assert (sd["w"] == (i + 1) * (3.0 if flag else 1.0)).all()
    with pytest.raises(ValueError):
        scale_models(sds, 2.0, which="last")  # type: ignore[arg-type]


def test_paper_factors():
    assert FACTORS == (1, 2, 5, 10, 20, 50, 70, 90, 100, 110, 130, 150)
