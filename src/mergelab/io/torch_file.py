"""Reading torch ``.pt/.pth/.bin`` checkpoints as data, never as code.

``torch.load(weights_only=True)`` refuses any pickle that would run code; with ``mmap=True``
(zip format) only the small pickle is parsed up front and tensor storage stays on disk until
used. Training scripts often wrap the state dict (``{"state_dict": ...}``, ``{"model": ...}``)
and DataParallel prefixes every key with ``module.``: both are detected, or chosen explicitly.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

from mergelab.errors import MergeError
from mergelab.io.checkpoint import ArrayCheckpoint

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "ema")


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and _is_tensor(v) for k, v in obj.items())
    )


def unwrap_state_dict(
    obj: Any, label: str, key: str | None = None, strip_prefix: str | None = None
) -> dict[str, Any]:
    """Find the state dict inside a loaded checkpoint object.

    ``key``: dotted path to the state dict (``"state_dict"``, ``"model.ema"``); ``""`` means
    the top level; ``None`` detects it. ``strip_prefix``: removed from every key; ``None``
    strips ``module.`` when every key carries it, ``""`` strips nothing.
    """
    if key is None:
        if _is_state_dict(obj):
            found = obj
        else:
            candidates = [
                k for k in WRAPPER_KEYS if isinstance(obj, dict) and _is_state_dict(obj.get(k))
            ]
            if not candidates:
                keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
                raise MergeError(
                    f"{label}: no state dict found (top-level keys: {keys}); choose one with --key"
                )
            found = obj[candidates[0]]
    else:
        found = obj
        for part in filter(None, key.split(".")):
            if not isinstance(found, dict) or part not in found:
                raise MergeError(f"{label}: key {key!r} not found (missing {part!r})")
            found = found[part]
        if isinstance(found, dict):
            found = {k: v for k, v in found.items() if _is_tensor(v)}
        if not _is_state_dict(found):
            raise MergeError(f"{label}: {key or 'top level'!r} does not hold a dict of tensors")
    if strip_prefix is None:
        strip_prefix = "module." if all(k.startswith("module.") for k in found) else ""
    if strip_prefix:
        missing = [k for k in found if not k.startswith(strip_prefix)]
        if missing:
            raise MergeError(f"{label}: keys without prefix {strip_prefix!r}: {missing[:5]}")
        found = {k[len(strip_prefix) :]: v for k, v in found.items()}
    return found


def load_torch_file(path: Path) -> Any:
    """``torch.load`` with code execution refused, memory-mapped where the format allows."""
    import torch

    try:
        mmap = zipfile.is_zipfile(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise MergeError(
            f"{path}: refused to load: this pickle needs code execution to unpickle "
            f"({first_line}). Checkpoints are loaded as data only; re-save it as a plain "
            f"state dict or as safetensors."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise MergeError(f"{path}: not a readable torch checkpoint ({exc})") from None


class TorchFile(ArrayCheckpoint):
    """A torch checkpoint file behind the lazy-checkpoint interface."""

    def __init__(
        self, path: str | Path, key: str | None = None, strip_prefix: str | None = None
    ) -> None:
        self.path = Path(path)
        tensors = unwrap_state_dict(load_torch_file(self.path), str(self.path), key, strip_prefix)
        super().__init__(tensors, label=str(self.path))
