"""Test helpers: a user's multi-task suite on disk (a pre-trained checkpoint, one fine-tuned
full model per task) and tiny task datasets in their published on-disk layouts."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from mergelab.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from datafakes import write_imagefolder, write_medmnist

__all__ = ["file_bytes", "write_imagefolder", "write_tasks", "write_user_suite"]

ARCH = "mlp"
IN_CHANS, IMG_SIZE = 3, 8  # an mlp's first Linear (64 * ... inputs) fixes both


@dataclass(frozen=True)
class UserSuite:
    tasks: list[str]
    pretrained: Path
    checkpoints: list[Path]
    states: list[dict[str, torch.Tensor]]
    """Each task checkpoint's full state, as saved."""
    pre_state: dict[str, torch.Tensor]


def write_tasks(root: Path) -> dict[str, int]:
    """Two on-disk tasks of different native sizes: an image folder (3 classes, 12 px RGB,
    its own val and test folders) and a DermaMNIST npz (7 classes, 28 px RGB)."""
    write_imagefolder(root / "pets", counts={"train": 4, "val": 5, "test": 6}, size=12)
    write_medmnist(root / "dermamnist.npz", sizes=(14, 14, 70), n_classes=7)
    return {f"imagefolder:{root / 'pets'}": 3, f"dermamnist:{root / 'dermamnist.npz'}": 7}


def model_state(arch: str, classes: int, seed: int, **kw) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    kw = {"in_chans": IN_CHANS, "img_size": IMG_SIZE, **kw}
    return {k: v.clone() for k, v in build_model(arch, classes, **kw).state_dict().items()}


def write_user_suite(
    root: Path,
    tasks: dict[str, int],
    *,
    arch: str = ARCH,
    torch_files: tuple[int, ...] = (),
    **kw,
) -> UserSuite:
    """``root/pre.safetensors`` (with a 5-class head of its own) and ``root/task<i>``: the
    pre-trained backbone plus a seeded perturbation, and a fresh head of the task's
    classes; ``torch_files``: indices saved with ``torch.save`` (``.pt``) instead."""
    root.mkdir(parents=True, exist_ok=True)
    pre = model_state(arch, 5, 0, **kw)
    pre_path = root / "pre.safetensors"
    save_file(pre, str(pre_path))
    paths, states = [], []
    for i, classes in enumerate(tasks.values()):
        gen = torch.Generator().manual_seed(100 + i)
        fresh = model_state(arch, classes, 10 + i, **kw)
        state = {
            k: (pre[k] + 0.2 * torch.randn(v.shape, generator=gen))
            if k in pre and "head" not in k
            else v
            for k, v in fresh.items()
        }
        if i in torch_files:
            path = root / f"task{i}.pt"
            torch.save(state, path)
        else:
            path = root / f"task{i}.safetensors"
            save_file(state, str(path))
        paths.append(path)
        states.append(state)
    return UserSuite(list(tasks), pre_path, paths, states, pre)


def file_bytes(paths) -> dict[str, bytes]:
    """Every file under each of ``paths`` (files or folders), by path."""
    out = {}
    for p in map(Path, paths):
        for f in [p] if p.is_file() else sorted(p.rglob("*")):
            if f.is_file():
                out[str(f)] = f.read_bytes()
    return out
