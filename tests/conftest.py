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
