"""Read a checkpoint's input channels, fixed image size and classes from its tensor shapes.

A user's checkpoint already says what it was trained on: ``conv1.weight (64, 3, 7, 7)`` takes
3 channels, ``fc.weight (10, 512)`` gives 10 classes, a ViT's position embedding fixes the
image size. Asking the user to repeat that (``--in-chans 3``) only invites a mismatch.

Which tensors to read comes from the architecture itself, built once on the meta device (no
memory, no weights): the first ``Conv2d`` (the stem, the one ``build_model`` adapts to
``in_chans``), the classifier ``Linear`` (:func:`find_head`), and a 3-D ``pos_embed`` /
``pos_embedding`` parameter. Built-in flat models (``linear``, ``mlp``) take ``C*S*S``
inputs, which fix both: ``C*S*S`` has at most one solution with ``C`` in (1, 3).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mergelab.models.builtin import LinearClassifier, MLPClassifier
from mergelab.models.registry import build_model
from mergelab.models.split import find_head
from mergelab.models.weights import read_checkpoint

__all__ = ["CheckpointInput", "Fact", "checkpoint_shapes", "read_input"]

_PROBE_SIZE = 224  # every classifier builds at this size; only names and ratios are used
_POS_EMBED_NAMES = ("pos_embed", "pos_embedding")
_MAX_PREFIX_TOKENS = 16  # class, distillation and register tokens
CHANNELS = (1, 3)


@dataclass(frozen=True)
class Fact:
    """One value read from a checkpoint, with the tensor that says so (for messages)."""

    value: int
    tensor: str
    shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.tensor} {self.shape}"


@dataclass(frozen=True)
class CheckpointInput:
    """What a checkpoint fixes about its input and output; ``None`` where it fixes nothing
    (``img_size`` of a convolutional net) or the tensor is absent (a wrong architecture,
    which loading the weights then reports in full)."""

    in_chans: Fact | None = None
    img_size: Fact | None = None
    num_classes: Fact | None = None

    def facts(self) -> dict[str, Fact]:
        return {
            name: fact
            for name in ("in_chans", "img_size", "num_classes")
            if (fact := getattr(self, name)) is not None
        }


@dataclass(frozen=True)
class _Layout:
    """Names of the tensors that carry the facts, in an architecture's state dict."""

    stem: str | None = None  # first Conv2d weight: (out, in_chans, k, k)
    flat: str | None = None  # first Linear weight of a flat model: (out, C*S*S)
    pos_embed: str | None = None  # (1, prefix + grid*grid, D), with ``stem`` the patch conv
    prefix_tokens: int = 0
    patch: int | None = None  # patch side when it is not the stem's kernel
    head: str | None = None  # classifier weight: (classes, D)


def checkpoint_shapes(source: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, tuple]:
    """Tensor shapes of a checkpoint, named as :func:`read_checkpoint` names them (wrappers and
    ``module.`` prefixes stripped). A ``.safetensors`` file is read for its header only."""
    if isinstance(source, str | os.PathLike):
        from mergelab.io import open_checkpoint

        with open_checkpoint(source) as ckpt:  # meta tensors: shapes without data
            source = {n: torch.empty(i.shape, device="meta") for n, i in ckpt.infos.items()}
    return {k: tuple(int(d) for d in v.shape) for k, v in read_checkpoint(source).items()}


@functools.cache
def _layout(arch: str, head: str | None) -> _Layout:
    try:
        with torch.device("meta"):
            model = build_model(arch, 10, in_chans=3, img_size=_PROBE_SIZE)
    except Exception:  # best effort: building the model for real reports the error
        return _Layout()
    try:
        head_name: str | None = head if head is not None else find_head(model)
    except ValueError:
        head_name = None
    stem_name, stem = next(
        ((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None)
    )
    flat = None
    if isinstance(model, LinearClassifier | MLPClassifier):
        flat = next(n for n, m in model.named_modules() if isinstance(m, nn.Linear))
    pos_name, prefix, patch = None, 0, None
    if stem is not None and stem.groups == 1:
        stride = int(stem.stride[0])
        for name, p in model.named_parameters():
            if name.rpartition(".")[2] in _POS_EMBED_NAMES and p.dim() == 3:
                extra = int(p.shape[-2]) - (_PROBE_SIZE // stride) ** 2
                if 0 <= extra <= _MAX_PREFIX_TOKENS:  # else the stem is no patch embedding
                    pos_name, prefix = name, extra
                    # Patches as wide as the kernel: the checkpoint's kernel is the patch
                    # (built-in ViTs choose it by image size); else the stride is.
                    patch = None if tuple(stem.kernel_size) == tuple(stem.stride) else stride
                break
    return _Layout(
        stem=f"{stem_name}.weight" if stem is not None and stem.groups == 1 else None,
        flat=f"{flat}.weight" if flat is not None else None,
        pos_embed=pos_name,
        prefix_tokens=prefix,
        patch=patch,
        head=f"{head_name}.weight" if head_name is not None else None,
    )


def _flat_input(n: int) -> tuple[int, int] | None:
    """(C, S) with C in (1, 3) and C*S*S == n; unique because 3 is not a square."""
    for c in CHANNELS:
        s = math.isqrt(n // c)
        if n % c == 0 and s > 0 and c * s * s == n:
            return c, s
    return None


def read_input(
    arch: str, shapes: Mapping[str, tuple[int, ...]], *, head: str | None = None
) -> CheckpointInput:
    """What the checkpoint with tensor ``shapes`` (see :func:`checkpoint_shapes`) fixes for
    ``arch``: input channels, image size (ViTs and flat models only) and classes."""
    lay = _layout(arch, head)

    def shape(name: str | None, dims: int) -> tuple[int, ...] | None:
        found = shapes.get(name) if name is not None else None
        return tuple(found) if found is not None and len(found) == dims else None

    in_chans = img_size = num_classes = None
    if (stem := shape(lay.stem, 4)) is not None:
        in_chans = Fact(stem[1], lay.stem, stem)  # type: ignore[arg-type]
        pos = shape(lay.pos_embed, 3)
        tokens = pos[-2] - lay.prefix_tokens if pos is not None else 0
        if tokens > 0 and math.isqrt(tokens) ** 2 == tokens:
            patch = lay.patch or stem[-1]
            img_size = Fact(math.isqrt(tokens) * patch, lay.pos_embed, pos)  # type: ignore[arg-type]
    if (flat := shape(lay.flat, 2)) is not None and (cs := _flat_input(flat[1])) is not None:
        in_chans = Fact(cs[0], lay.flat, flat)  # type: ignore[arg-type]
        img_size = Fact(cs[1], lay.flat, flat)  # type: ignore[arg-type]
    if (out := shape(lay.head, 2)) is not None:
        num_classes = Fact(out[0], lay.head, out)  # type: ignore[arg-type]
    return CheckpointInput(in_chans, img_size, num_classes)
