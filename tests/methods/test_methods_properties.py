"""Property-based checks: any shapes, any float dtypes, chunked or not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mergelab.engine.plan as engine_plan
from mergelab.engine import merge_state_dicts

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
METHODS = {
    "linear": {},
    "task_arithmetic": {"lambda": 0.5},
    "ties": {"density": 0.3},
    "dare": {"density": 0.5},
    "dare_ties": {"density": 0.5},
    "breadcrumbs": {"density": 0.6, "gamma": 0.05},
    "model_stock": {},
}
BASED = {"task_arithmetic", "ties", "dare", "dare_ties", "breadcrumbs", "model_stock"}

shapes = st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple)


@settings(max_examples=40, deadline=None)
@given(
    shape_list=st.lists(shapes, min_size=1, max_size=4),
    dtype=st.sampled_from(DTYPES),
    method=st.sampled_from(sorted(METHODS)),
    seed=st.integers(0, 2**16),
)
def test_outputs_keep_names_shapes_and_dtypes(shape_list, dtype, method, seed):
    g = torch.Generator().manual_seed(seed)
    base = {f"t{i}": torch.randn(s, generator=g).to(dtype) for i, s in enumerate(shape_list)}
    base["steps"] = torch.tensor(seed)
    models = [
        {
            k: (v + 0.1 * torch.randn(v.shape, generator=g)).to(dtype)
            if v.is_floating_point()
            else v
            for k, v in base.items()
        }
        for _ in range(3)
    ]
    out = merge_state_dicts(
        method, models, base if method in BASED else None, params=METHODS[method]
    )
    assert list(out) == list(base)
    for name, value in base.items():
        assert out[name].shape == value.shape and out[name].dtype == value.dtype, name
        if value.is_floating_point():
            assert torch.isfinite(out[name].float()).all()
    assert int(out["steps"]) == seed  # integer tensors are copied, never averaged


@pytest.mark.parametrize("method", sorted(METHODS))
def test_chunking_does_not_change_the_result(method, monkeypatch):
    g = torch.Generator().manual_seed(0)
    base = {"big": torch.randn(3001, generator=g), "small": torch.randn(5, generator=g)}
    models = [
        {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(3)
    ]
    args = (method, models, base if method in BASED else None)
    whole = merge_state_dicts(*args, params=METHODS[method])
    monkeypatch.setattr(engine_plan, "CHUNK_ELEMENTS", 256)
    monkeypatch.setattr("mergelab.methods.task_vectors.RANDOM_BLOCK", 128)
    monkeypatch.setattr("mergelab.methods.selection.SAMPLE_SIZE", 64)
    chunked = merge_state_dicts(*args, params=METHODS[method])
    if method.startswith("dare"):  # masks are drawn per block: a different block size redraws
        assert all(torch.isfinite(v).all() for v in chunked.values())
        return
    for name in base:
        np.testing.assert_allclose(chunked[name].numpy(), whole[name].numpy(), rtol=1e-6, atol=1e-7)


def test_dare_masks_do_not_depend_on_chunk_size(monkeypatch):
    g = torch.Generator().manual_seed(0)
    base = {"big": torch.zeros(5000)}
    models = [{"big": torch.randn(5000, generator=g)} for _ in range(2)]
    monkeypatch.setattr("mergelab.methods.task_vectors.RANDOM_BLOCK", 512)
    monkeypatch.setattr(engine_plan, "CHUNK_ELEMENTS", 4096)
    a = merge_state_dicts("dare", models, base, params={"density": 0.5})
    monkeypatch.setattr(engine_plan, "CHUNK_ELEMENTS", 1024)
    b = merge_state_dicts("dare", models, base, params={"density": 0.5})
    assert torch.equal(a["big"], b["big"])
