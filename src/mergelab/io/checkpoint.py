"""What every checkpoint reader offers: tensor names, shapes and dtypes from the header,
and the data of one tensor (or a flat range of it) only when asked."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mergelab.io.dtypes import STORAGE, from_torch


@dataclass(frozen=True)
class TensorInfo:
    """Header facts about one stored tensor: enough to plan a merge without its data.

    ``dtype`` is the safetensors name (``F32``, ``BF16``, ``I64`` ...).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * STORAGE[self.dtype].itemsize


class Checkpoint(ABC):
    """A lazily read set of named tensors. ``label`` names it in every error message."""

    label: str
    infos: dict[str, TensorInfo]
    files: tuple[Path, ...] = ()  # every file read (set by open_checkpoint)

    @abstractmethod
    def read(
        self, name: str, start: int = 0, stop: int | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Elements ``[start, stop)`` of the flattened tensor, in its storage dtype
        (bfloat16 as uint16), as a 1-D array the caller owns; into ``out`` when given."""

    def read_array(self, name: str) -> np.ndarray:
        """The whole tensor, shaped, in its storage dtype."""
        return self.read(name).reshape(self.infos[name].shape)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release open files."""

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_range(self, name: str, start: int, stop: int | None) -> tuple[TensorInfo, int]:
        try:
            info = self.infos[name]
        except KeyError:
            raise KeyError(f"{self.label}: no tensor named {name!r}") from None
        stop = info.numel if stop is None else stop
        if not 0 <= start <= stop <= info.numel:
            raise IndexError(f"{self.label}: range [{start}, {stop}) outside {name} ({info.numel})")
        return info, stop


def torch_to_numpy(tensor: Any) -> np.ndarray:
    """A CPU torch tensor's storage as a NumPy array (bfloat16/float8 as raw integers)."""
    import torch

    t = tensor.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(np.uint16)
    if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return t.contiguous().view(torch.uint8).numpy()
    return t.numpy()


class ArrayCheckpoint(Checkpoint):
    """Tensors already in memory (NumPy arrays or torch tensors, e.g. a ``state_dict()``)."""

    def __init__(self, tensors: Mapping[str, Any], label: str = "<state dict>") -> None:
        self.label = label
        self._arrays: dict[str, np.ndarray] = {}
        self.infos = {}
        for name, value in tensors.items():
            if isinstance(value, np.ndarray):
                array, dtype = value, _numpy_dtype_name(value.dtype, label, name)
            elif type(value).__module__.startswith("torch") and hasattr(value, "dtype"):
                array, dtype = torch_to_numpy(value), from_torch(value.dtype)
            else:
                raise TypeError(f"{label}: entry {name!r} is {type(value).__name__}, not a tensor")
            self._arrays[name] = np.ascontiguousarray(array).reshape(-1)
            self.infos[name] = TensorInfo(name, tuple(value.shape), dtype)

    def read(
        self, name: str, start: int = 0, stop: int | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        _, stop = self._check_range(name, start, stop)
        part = self._arrays[name][start:stop]
        if out is None:
            return part.copy()
        np.copyto(out, part)
        return out


def _numpy_dtype_name(dtype: np.dtype, label: str, name: str) -> str:
    for key, storage in STORAGE.items():
        if storage == dtype and key not in ("BF16", "F8_E4M3", "F8_E5M2"):
            return key
    raise TypeError(f"{label}: tensor {name!r} has unsupported dtype {dtype}")
