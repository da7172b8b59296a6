"""Reading torch ``.pt/.pth/.bin`` checkpoints as data, never as code.

``torch.load(weights_only=True)`` refuses any pickle that would run code; with ``mmap=True``
(zip format) only the small pickle is parsed up front and tensor storage stays on disk until
used. Training scripts often wrap the state dict (``{"state_dict": ...}``, ``{"model": ...}``)
and DataParallel/``torch.compile`` prefix every key with ``module.``/``_orig_mod.``: both are
detected (here only, for merges and model loading alike), or chosen explicitly.
"""

from __future__ import annotations

import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mergelab.checks import regular_file
from mergelab.errors import MergeError
from mergelab.io.checkpoint import ArrayCheckpoint
from mergelab.io.dtypes import STORAGE, TORCH_NAMES

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "ema")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and _is_tensor(v) for k, v in obj.items())
    )


def _not_a_state_dict(obj: Any, label: str) -> MergeError:
    """Why detection failed: a mapping that mixes tensors with other values is named by its
    first odd entry; anything else by its top-level keys."""
    if isinstance(obj, Mapping) and any(_is_tensor(v) for v in obj.values()):
        for k, v in obj.items():
            if not isinstance(k, str):
                return MergeError(f"{label}: key {k!r} is not a string ({type(k).__name__})")
            if not _is_tensor(v):
                return MergeError(
                    f"{label}: entry {k!r} is a {type(v).__name__}, not a tensor, so it cannot "
                    f"be merged; --key '' takes only the tensors of the top level"
                )
    keys = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
    return MergeError(
        f"{label}: no state dict found (top-level keys: {keys}); choose one with --key"
    )


def _strip(found: Mapping[str, Any], label: str, strip_prefix: str | None) -> dict[str, Any]:
    state = dict(found)
    if strip_prefix is None:  # each wrapper prefix that every key carries, in turn
        stripped = True
        while stripped and state:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if all(k.startswith(prefix) for k in state):
                    state = {k[len(prefix) :]: v for k, v in state.items()}
                    stripped = True
        return state
    if strip_prefix:
        missing = [k for k in state if not k.startswith(strip_prefix)]
        if missing:
            raise MergeError(f"{label}: keys without prefix {strip_prefix!r}: {missing[:5]}")
        state = {k[len(strip_prefix) :]: v for k, v in state.items()}
    return state


def find_state_dict(
    obj: Any, label: str, key: str | None = None, strip_prefix: str | None = None
) -> tuple[dict[str, Any], str | None]:
    """The state dict inside a loaded checkpoint object, and a note when the choice was not
    the only one (which key was used, which others hold a state dict).

    ``key``: dotted path to the state dict (``"state_dict"``, ``"model.ema"``); ``""`` means
    the top level; ``None`` detects it (wrappers of wrappers too). ``strip_prefix``: removed
    from every key; ``None`` strips ``module.``/``_orig_mod.`` when every key carries it,
    ``""`` strips nothing.
    """
    note = None
    if key is None:
        found = obj
        if not _is_state_dict(obj):
            candidates = _wrapped(obj)
            if not candidates:
                raise _not_a_state_dict(obj, label)
            used, found = candidates[0]
            if len(candidates) > 1:
                others = ", ".join(repr(k) for k, _ in candidates[1:])
                note = (
                    f"{label}: used the state dict under {used!r}; the file also holds {others} "
                    f"(choose another with --key {candidates[1][0]})"
                )
    else:
        found = obj
        for part in filter(None, key.split(".")):
            if not isinstance(found, Mapping) or part not in found:
                raise MergeError(f"{label}: key {key!r} not found (missing {part!r})")
            found = found[part]
        if isinstance(found, Mapping):
            found = {k: v for k, v in found.items() if _is_tensor(v)}
        if not _is_state_dict(found):
            raise MergeError(f"{label}: {key or 'top level'!r} does not hold a dict of tensors")
    return _strip(found, label, strip_prefix), note


def _wrapped(obj: Any, where: str = "") -> list[tuple[str, Mapping[str, Any]]]:
    """(dotted key, state dict) of every wrapper under ``obj``, in WRAPPER_KEYS order."""
    if not isinstance(obj, Mapping):
        return []
    found = []
    for k in WRAPPER_KEYS:
        value = obj.get(k)
        path = f"{where}.{k}" if where else k
        if _is_state_dict(value):
            found.append((path, value))
        elif where.count(".") < 3:  # nested wrappers, a few levels at most
            found += _wrapped(value, path)
    return found


def unwrap_state_dict(
    obj: Any, label: str, key: str | None = None, strip_prefix: str | None = None
) -> dict[str, Any]:
    """:func:`find_state_dict` without the note."""
    return find_state_dict(obj, label, key, strip_prefix)[0]


def _reason(exc: BaseException) -> str:
    """The informative sentence of torch's (often multi-paragraph) error message."""
    lines = [re.sub(r"^.*WeightsUnpickler error:", "", s).strip() for s in str(exc).splitlines()]
    lines = [s for s in lines if s and "weights_only" not in s and "Weights only" not in s]
    line = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", lines[0] if lines else "")
    return line.split(". ")[0].rstrip(".")[:300] or type(exc).__name__


# torch's refusals of a global (a function or class the pickle names), not of garbage
_CODE = re.compile(r"GLOBAL |allowlisted")


def _what_it_is(path: Path, head: bytes) -> str | None:
    """Why ``path`` cannot be a torch checkpoint, judged from its first bytes; None if it
    might be one (a zip archive, or a pickle as the legacy format writes): torch then says."""
    if head.startswith((b"PK", b"\x80")) or zipfile.is_zipfile(path):
        return None
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer; fetch the file with git lfs pull"
    if not head.strip(b"\0"):
        return "it holds only zero bytes"
    return f"neither a zip archive nor a pickle; it starts with {head[:16]!r}"


def load_torch_file(path: Path) -> Any:
    """``torch.load`` with code execution refused, memory-mapped where the format allows."""
    regular_file(path, "expected a torch checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise MergeError(f"{path}: cannot read ({exc.strerror})") from None
    if not head:
        raise MergeError(f"{path}: empty file (0 bytes); not a torch checkpoint")
    why = _what_it_is(path, head)
    if why is not None:
        raise MergeError(f"{path}: not a torch checkpoint ({why})")

    import torch

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols, sparse checks
            warnings.simplefilter("ignore")
            return torch.load(
                path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
            )
    except OSError as exc:
        raise MergeError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # torch parsing untrusted bytes: any failure is the file's
        reason = _reason(exc)
        if _CODE.search(str(exc)):
            raise MergeError(
                f"{path}: refused to load: this pickle needs code execution to unpickle "
                f"({reason}). Checkpoints are loaded as data only; re-save it as a plain "
                f"state dict or as safetensors."
            ) from None
        raise MergeError(f"{path}: not a readable torch checkpoint ({reason})") from None


def _check_tensors(tensors: Mapping[str, Any], label: str) -> None:
    """Refuse, by name, entries the merge cannot read as plain arrays."""
    import torch

    supported = {getattr(torch, TORCH_NAMES[d]) for d in STORAGE}
    for name, t in tensors.items():
        if t.layout != torch.strided:
            layout = str(t.layout).removeprefix("torch.")
            raise MergeError(
                f"{label}: entry {name!r} is a {layout} tensor; only dense tensors can be "
                f"merged (re-save it with .to_dense())"
            )
        if t.dtype not in supported:
            raise MergeError(
                f"{label}: entry {name!r} has dtype {str(t.dtype).removeprefix('torch.')}, "
                f"which cannot be merged (supported: {', '.join(TORCH_NAMES[d] for d in STORAGE)})"
            )
        if t.device.type != "cpu":
            raise MergeError(f"{label}: entry {name!r} holds no data (device {t.device.type})")


class TorchFile(ArrayCheckpoint):
    """A torch checkpoint file behind the lazy-checkpoint interface.

    ``note`` says which state dict was used when the file holds several (also printed to
    stderr, since picking one of several silently could merge the wrong weights).
    """

    def __init__(
        self, path: str | Path, key: str | None = None, strip_prefix: str | None = None
    ) -> None:
        self.path = Path(path)
        label = str(self.path)
        tensors, self.note = find_state_dict(load_torch_file(self.path), label, key, strip_prefix)
        _check_tensors(tensors, label)
        if self.note:
            print(f"mergelab: note: {self.note}", file=sys.stderr)
        super().__init__(tensors, label=label)
