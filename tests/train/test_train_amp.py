"""Mixed precision (``amp``): its own cache entry, float32 on the CPU, bfloat16 autocast on
CUDA; runs cached before the option existed keep their hash."""

from __future__ import annotations

import json

import pytest
import torch

from mergelab.io import load_state_dict
from mergelab.train import TrainConfig, train_model


def tiny(**kw) -> TrainConfig:
    base = {"dataset": "digits", "arch": "mlp", "model_kwargs": {"hidden": [32]}, "steps": 20}
    return TrainConfig(**{**base, **kw})


def test_amp_is_its_own_run_and_absent_from_the_hash_when_off():
    off, on = tiny(), tiny(amp=True)
    assert off.config_hash() != on.config_hash()
    assert "amp" not in off.canonical_json() and '"amp":true' in on.canonical_json()
    # the hash of a run without amp is the one it had before the option existed
    body = json.loads(off.canonical_json())
    assert set(body) == set(off.model_dump()) - {"amp"}


def test_amp_on_the_cpu_trains_in_float32(tmp_path):
    a = train_model(tiny(), cache_dir=tmp_path, device="cpu", progress=False)
    b = train_model(tiny(amp=True), cache_dir=tmp_path, device="cpu", progress=False)
    sa, sb = load_state_dict(a), load_state_dict(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert json.loads(b.with_suffix(".json").read_text())["amp"] is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_on_cuda_uses_bfloat16_and_learns(tmp_path):
    path = train_model(tiny(amp=True, steps=200), cache_dir=tmp_path, device="cuda", progress=False)
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["amp"] is True and side["final_loss"] < 1.0
    assert all(v.dtype == torch.float32 for v in load_state_dict(path).values())
