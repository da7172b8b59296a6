"""Fixtures shared by the study tests."""

from __future__ import annotations

import pytest

import mergelab.train.pool as pool
import mergelab.train.trainer as trainer


@pytest.fixture
def nothing_trains(monkeypatch):
    """Fail the test if anything trains: configs must be checked before any work."""

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the config was checked")

    monkeypatch.setattr(trainer, "fit", no_training)
    monkeypatch.setattr(pool, "train_runs", no_training)
