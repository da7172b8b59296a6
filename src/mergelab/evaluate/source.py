"""A model to evaluate, named by its content so cached outputs follow the weights, not the path.

Two files with the same bytes share cache entries; a checkpoint overwritten in place gets a new
hash and is evaluated again. In-memory state dicts are hashed over their tensors' names, dtypes,
shapes and bytes, so a soup recomputed in a later run finds its cached outputs too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mergelab.errors import MergeError
from mergelab.hashing import file_sha256, state_dict_sha256

__all__ = ["ModelSource", "file_sha256", "state_dict_sha256"]


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
