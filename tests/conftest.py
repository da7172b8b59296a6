"""Suite-wide fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.numpy import save_file


@pytest.fixture
def write_st(tmp_path: Path) -> Callable[..., Path]:
    """Write a dict of arrays as ``tmp_path/NAME.safetensors``."""

    def write(name: str, tensors: dict, metadata: dict | None = None) -> Path:
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        return path

    return write


@pytest.fixture(scope="session")
def digits():
    """The embedded ``digits`` set (1797 8x8 images), loaded once."""
    from mergelab.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread, and far faster than on two when other
    processes share the cores (OpenMP threads then wait on each other)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
