"""Fixtures for the evaluator tests: the embedded ``digits`` set and tiny trained MLPs."""

from __future__ import annotations

import pytest
import torch

from mergelab.data import DatasetSplits
from mergelab.evaluate.toy import train_toy_models


@pytest.fixture(scope="session")
def mlps(digits: DatasetSplits) -> list[dict[str, torch.Tensor]]:
    """Three MLPs fine-tuned from one start (seconds on a CPU)."""
    return train_toy_models(digits, arch="mlp", n_models=3, steps=30, pretrain_steps=60)
