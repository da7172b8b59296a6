"""One device choice for training and evaluation: an absent device is one clear line."""

from __future__ import annotations

import pytest
import torch

from mergelab.cli import main
from mergelab.device import choose_device
from mergelab.errors import MergelabError


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_default_is_cuda_when_present():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert choose_device(None).type == expected
    assert choose_device("cpu") == torch.device("cpu")


def test_absent_or_unknown_devices_are_one_line(no_cuda, monkeypatch):
    assert choose_device(None).type == "cpu"
    with pytest.raises(MergelabError, match=r"^device 'cuda' asked for, but torch sees no CUDA"):
        choose_device("cuda")
    with pytest.raises(MergelabError, match=r"^device 'gpu' is not a device; use cpu, cuda"):
        choose_device("gpu")
    with pytest.raises(MergelabError, match=r"^device 'meta' is not supported"):
        choose_device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(MergelabError, match=r"sees only 1 CUDA device\(s\) \(cuda:0 to cuda:0\)"):
        choose_device("cuda:3")


def test_evaluator_and_trainer_use_it(no_cuda, digits, tmp_path):
    from mergelab.evaluate import Evaluator
    from mergelab.train import TrainConfig, train_model

    with pytest.raises(MergelabError, match="no CUDA"):
        Evaluator(digits, arch="mlp", device="cuda", progress=False)
    config = TrainConfig(dataset="digits", arch="mlp", steps=1)
    with pytest.raises(MergelabError, match="no CUDA"):
        train_model(config, cache_dir=tmp_path / "runs", device="cuda", progress=False)
    assert not (tmp_path / "runs").exists()


def test_train_cli_with_an_absent_cuda_is_one_error_line(no_cuda, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("dataset: digits\narch: mlp\nn_models: 2\nmode: independent\n")
    argv = ["train", str(recipe), "--out", str(tmp_path / "out"), "--device", "cuda"]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache"), "--workers", "2"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "mergelab: error: device 'cuda' asked for, but torch sees no CUDA device here "
        "(leave the device unset or use cpu)"
    ]
    assert not list((tmp_path / "cache").glob("*.safetensors"))
