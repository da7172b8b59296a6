"""Fixtures for the evaluator tests: the embedded ``digits`` set and tiny trained MLPs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("mergelab") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from mergelab.data import DatasetSplits, load_dataset
from mergelab.evaluate.toy import train_toy_models


@pytest.fixture(scope="session")
def digits() -> DatasetSplits:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def mlps(digits: DatasetSplits) -> list[dict[str, torch.Tensor]]:
    """Three MLPs fine-tuned from one start (seconds on a CPU)."""
    return train_toy_models(digits, arch="mlp", n_models=3, steps=30, pretrain_steps=60)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread, and far faster than on two when other
    processes share the cores (OpenMP threads then wait on each other)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
