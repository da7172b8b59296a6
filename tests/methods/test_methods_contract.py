"""The contract every registered method keeps, generated from the registry: a new module in
``mergelab.methods`` is held to it without being listed here.

For every method, with default parameters (a base where the method needs one): shapes and
dtypes are kept; n identical models merge to that model where the method promises it
(``identical_inputs_give_input``; a reason where not); two runs give the same bytes;
elementwise methods give the same bytes however the tensors are chunked; the dry run's
peak-memory estimate counts the method's declared workspace.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import numpy as np
import pytest

import mergelab.engine.plan as engine_plan
import mergelab.methods
from mergelab.engine import build_plan, merge_state_dicts
from mergelab.io.checkpoint import ArrayCheckpoint
from mergelab.methods import REGISTRY, MergeMethod

METHODS = sorted(REGISTRY)
SHAPES: dict[str, tuple[int, ...]] = {
    "embed.weight": (37, 8),
    "layers.0.attn.weight": (33, 17),
    "layers.0.attn.bias": (33,),
    "layers.0.conv.weight": (4, 3, 5),
    "layers.0.norm.weight": (17,),
    "scale": (),
    "empty": (0,),
    "head.weight": (5, 17),
}


def inputs_for(cls: type[MergeMethod]) -> tuple[int, bool]:
    """(number of models, with a base) for a default run of ``cls``."""
    has_base = cls.base_policy == "required"
    most = cls.max_models if cls.max_models is not None else 3
    return max(cls.min_models, min(3, most)), has_base


def state(seed: int, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {n: np.asarray(rng.standard_normal(s), dtype=dtype) for n, s in SHAPES.items()}
    out["steps"] = np.array([seed], dtype=np.int64)
    return out


def finetune(base: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        k: np.asarray(v + 0.1 * rng.standard_normal(v.shape), dtype=v.dtype)
        if v.dtype.kind == "f"
        else v
        for k, v in base.items()
    }


def run(name: str, dtype=np.float32, identical: bool = False) -> dict[str, np.ndarray]:
    n, has_base = inputs_for(REGISTRY[name])
    base = state(0, dtype)
    first = finetune(base, 1)
    models = [first if identical else finetune(base, 1 + i) for i in range(n)]
    params = REGISTRY[name].example_params
    return merge_state_dicts(name, models, base if has_base else None, params=params)


def test_every_module_of_the_package_is_imported_and_registered():
    names = [m.name for m in pkgutil.iter_modules(mergelab.methods.__path__)]
    assert all(f"mergelab.methods.{n}" in sys.modules for n in names if not n.startswith("_"))
    for cls in REGISTRY.values():
        module = importlib.import_module(cls.__module__)
        assert module.__name__.startswith("mergelab.methods."), cls


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("method", METHODS)
def test_shapes_and_dtypes_are_kept(method, dtype):
    out = run(method, dtype)
    reference = state(0, dtype)
    assert list(out) == list(reference)
    for name, value in reference.items():
        assert out[name].shape == value.shape and out[name].dtype == value.dtype, name
        if value.dtype.kind == "f":
            assert np.isfinite(out[name].astype(np.float64)).all(), name
    assert out["steps"].item() == 0  # integers are copied from the first model


@pytest.mark.parametrize("method", METHODS)
def test_identical_models_give_that_model_back_where_promised(method):
    cls = REGISTRY[method]
    if not cls.identical_inputs_give_input:
        assert cls.identical_inputs_reason, f"{method}: say why identical inputs differ"
        pytest.skip(f"{method}: {cls.identical_inputs_reason}")
    out = run(method, identical=True)
    model = finetune(state(0), 1)
    for name, value in model.items():
        np.testing.assert_allclose(out[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("method", METHODS)
def test_two_runs_give_the_same_bytes(method):
    a, b = run(method), run(method)
    assert all(a[n].tobytes() == b[n].tobytes() for n in a)


@pytest.mark.parametrize("method", METHODS)
def test_elementwise_methods_do_not_depend_on_chunking(method, monkeypatch):
    if not REGISTRY[method].elementwise:
        pytest.skip(f"{method} merges whole tensors")
    whole = run(method)
    monkeypatch.setattr(engine_plan, "CHUNK_ELEMENTS", 16)  # rows of 17 straddle chunks
    chunked = run(method)
    for name in whole:
        assert whole[name].tobytes() == chunked[name].tobytes(), name


@pytest.mark.parametrize("method", METHODS)
def test_workspace_is_a_count_of_bytes_and_the_dry_run_adds_it(method, monkeypatch):
    cls = REGISTRY[method]
    n, has_base = inputs_for(cls)
    base = state(0)
    models = [ArrayCheckpoint(finetune(base, 1 + i), f"model {i + 1}") for i in range(n)]
    base_ckpt = ArrayCheckpoint(base, "base") if has_base else None
    plan = build_plan(method, models, base_ckpt, params=REGISTRY[method].example_params)
    for name, shape in SHAPES.items():
        own = plan.method.workspace_bytes(name, shape, n, 4)
        assert isinstance(own, int) and own >= 0, shape
    declared = plan.peak_bytes_estimate()
    monkeypatch.setattr(cls, "workspace_bytes", lambda self, name, shape, n_models, itemsize: 0)
    engine_only = plan.peak_bytes_estimate()
    assert declared >= engine_only > 0
    monkeypatch.setattr(cls, "workspace_bytes", lambda self, name, shape, n_models, itemsize: 10**9)
    assert plan.peak_bytes_estimate() == engine_only + 10**9  # the same for every tensor
