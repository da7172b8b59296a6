"""Load a user's checkpoint into a built model, with an error that says exactly what differs.

A silent partial load (or torch's terse size-mismatch error) is the usual reason a merge of
"the same architecture" produces garbage, so the message lists every missing key, unexpected key
and shape mismatch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["load_weights", "read_checkpoint"]

_MAX_LISTED = 200


def read_checkpoint(source: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """State dict from a mapping or a ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` file,
    unwrapped as merges unwrap it (:func:`mergelab.io.torch_file.find_state_dict`)."""
    from mergelab.io.torch_file import find_state_dict

    if isinstance(source, str | os.PathLike):
        from mergelab.io import load_state_dict

        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return load_state_dict(path)
    if not isinstance(source, Mapping):
        raise TypeError(f"expected a state dict or a checkpoint path, got {type(source).__name__}")
    state, note = find_state_dict(source, "state dict")
    if note:  # as TorchFile does for files: say which of several state dicts was used
        print(f"mergelab: note: {note}", file=sys.stderr)
    return state


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return shown + more


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(t, "shape", ()))


def load_weights(
    model: nn.Module,
    state_dict_or_path: Mapping[str, Any] | str | os.PathLike[str],
    *,
    strict: bool = True,
) -> nn.Module:
    """Load weights into ``model`` in place and return it.

    Raises ``ValueError`` listing missing keys, unexpected keys (both only when ``strict``) and
    every shape mismatch (always: such a tensor cannot be loaded) as
    ``name: checkpoint (a, b) vs model (c, d)``.
    """
    source = state_dict_or_path
    is_path = isinstance(source, str | os.PathLike)
    where = f"checkpoint {os.fspath(source)!r}" if is_path else "state dict"  # type: ignore[arg-type]
    state = read_checkpoint(source)
    expected = model.state_dict()
    # BatchNorm fills a missing num_batches_tracked itself; old checkpoints lack it.
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {_shape(state[k])} vs model {_shape(v)}"
        for k, v in expected.items()
        if k in state and _shape(state[k]) != _shape(v)
    ]
    problems = []
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): " + ", ".join(mismatched))
    if problems:  # one line: the CLI prints it as one error line
        raise ValueError(f"{where} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=strict)
    return model
