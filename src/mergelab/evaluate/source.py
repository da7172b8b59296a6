"""A model to evaluate, named by its content so cached outputs follow the weights, not the path.

Two files with the same bytes share cache entries; a checkpoint overwritten in place gets a new
hash and is evaluated again. In-memory state dicts are hashed over their tensors' names, dtypes,
shapes and bytes, so a soup recomputed in a later run finds its cached outputs too.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mergelab.errors import MergeError

__all__ = ["ModelSource", "file_sha256", "state_dict_sha256"]

_CHUNK = 1 << 22
# (resolved path, size, mtime_ns) -> digest: hashing a big checkpoint twice in one process is waste.
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _hash_file_into(h: Any, path: Path) -> None:
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes; for a folder (a Hugging Face model), of every file in it
    with its relative path, in sorted order."""
    p = Path(path)
    if not p.exists():
        raise MergeError(f"{p}: no such file or folder")
    st = p.stat()
    memo = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if not p.is_dir() and memo in _FILE_HASHES:
        return _FILE_HASHES[memo]
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(f.relative_to(p).as_posix().encode() + b"\0")
            _hash_file_into(h, f)
        return h.hexdigest()
    _hash_file_into(h, p)
    _FILE_HASHES[memo] = h.hexdigest()
    return _FILE_HASHES[memo]


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().cpu().contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    elif t.dtype.itemsize == 1 and t.dtype not in (torch.uint8, torch.int8, torch.bool):
        t = t.view(torch.uint8)  # float8 kinds: hash the raw bytes
    return memoryview(np.ascontiguousarray(t.numpy()).reshape(-1).view(np.uint8))


def state_dict_sha256(state_dict: Mapping[str, Any]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        h.update(f"{name}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        h.update(_tensor_bytes(value))
    return h.hexdigest()


class ModelSource:
    """One checkpoint (a path or an in-memory state dict) with a content hash.

    The state dict of a path is read only when first needed (a fully cached evaluation reads
    just the file bytes for the hash), then kept on the CPU for merges and head averages.
    """

    def __init__(
        self,
        name: str,
        *,
        path: str | os.PathLike[str] | None = None,
        state_dict: Mapping[str, Any] | None = None,
        digest: str | None = None,
    ) -> None:
        if (path is None) == (state_dict is None):
            raise ValueError("give exactly one of path= and state_dict=")
        self.name = name
        self.path = Path(path) if path is not None else None
        self._state: dict[str, torch.Tensor] | None = None
        if state_dict is not None:
            self._state = _to_cpu(state_dict)
        self._digest = digest

    @classmethod
    def of(cls, obj: Any, name: str | None = None, index: int = 0) -> ModelSource:
        """A ModelSource from a path, a state dict, or a ModelSource (returned as is)."""
        if isinstance(obj, ModelSource):
            return obj
        if isinstance(obj, str | os.PathLike):
            p = Path(obj)
            return cls(name or (p.stem if p.is_file() else p.name) or f"model{index + 1}", path=p)
        if isinstance(obj, Mapping):
            return cls(name or f"model{index + 1}", state_dict=obj)
        raise MergeError(
            f"model {index + 1}: expected a checkpoint path or a state dict, "
            f"got {type(obj).__name__}"
        )

    @property
    def digest(self) -> str:
        """Content hash: of the file bytes for a path, of the tensors for a state dict."""
        if self._digest is None:
            if self.path is not None:
                self._digest = file_sha256(self.path)
            else:
                assert self._state is not None
                self._digest = state_dict_sha256(self._state)
        return self._digest

    @property
    def label(self) -> str:
        """How error messages name this model."""
        return f"{self.name} ({self.path})" if self.path is not None else self.name

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights as CPU tensors, with training wrappers (``module.``, ...) stripped."""
        if self._state is None:
            assert self.path is not None
            from mergelab.io import load_state_dict
            from mergelab.models import read_checkpoint

            if not self.path.exists():
                raise MergeError(f"{self.path}: no such file or folder")
            self._state = _to_cpu(read_checkpoint(load_state_dict(self.path)))
        return self._state

    def release(self) -> None:
        """Drop the in-memory weights of a path source (they are read again when needed)."""
        if self.path is not None:
            self._state = None

    def __repr__(self) -> str:
        return f"ModelSource({self.label!r})"


def _to_cpu(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    from mergelab.models import read_checkpoint

    out = {}
    for k, v in read_checkpoint(state_dict).items():
        t = v if isinstance(v, torch.Tensor) else torch.as_tensor(v)
        out[k] = t.detach().cpu()
    return out
