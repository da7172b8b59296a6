"""Where models run: one choice for the trainer, the evaluator and every command.

A device that is asked for but absent is one clear error up front, not a CUDA traceback
from deep inside the first forward pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergelab.errors import MergelabError

if TYPE_CHECKING:
    import torch

__all__ = ["choose_device"]


def choose_device(name: str | torch.device | None = None) -> torch.device:
    """The ``torch.device`` to use: ``None`` -> CUDA when torch sees one, else the CPU;
    otherwise ``name`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a torch.device),
    refused with one line when it is not a device or is not present here."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise MergelabError(
            f"device {str(name)!r} is not a device; use cpu, cuda, cuda:N or mps"
        ) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise MergelabError(
                f"device {str(name)!r} asked for, but torch sees no CUDA device here "
                "(leave the device unset or use cpu)"
            )
        if dev.index is not None and dev.index >= count:
            raise MergelabError(
                f"device {str(name)!r} asked for, but torch sees only {count} CUDA device(s) "
                f"(cuda:0 to cuda:{count - 1})"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise MergelabError(f"device {str(name)!r} asked for, but MPS is not available here")
    elif dev.type != "cpu":
        raise MergelabError(f"device {str(name)!r} is not supported; use cpu, cuda, cuda:N or mps")
    return dev
