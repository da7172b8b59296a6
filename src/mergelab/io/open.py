"""Open any supported checkpoint by path: a .safetensors file, a sharded set through its
``*.index.json``, a torch file, or a Hugging Face model folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mergelab.checks import inside_folder, regular_file
from mergelab.errors import MergeError
from mergelab.io.checkpoint import Checkpoint, TensorInfo
from mergelab.io.safetensors_file import SafetensorsFile
from mergelab.io.torch_file import TorchFile

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Looked for, in this order, inside a model folder.
FOLDER_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


class ShardedCheckpoint(Checkpoint):
    """Several checkpoint files joined by an index's ``weight_map`` (name -> shard file)."""

    def __init__(self, index_path: Path, key: str | None, strip_prefix: str | None) -> None:
        self.label = str(index_path)
        weight_map = _weight_map(index_path)
        shards: dict[str, Checkpoint] = {}
        for shard_name in sorted(set(weight_map.values())):
            # A shard name is a file beside the index, never a path out of its folder.
            shard_path = inside_folder(
                index_path.parent, shard_name, f"{index_path}: shard", _hub_blobs(index_path)
            )
            if not shard_path.is_file():
                raise MergeError(f"{index_path}: shard {shard_name} is missing")
            shards[shard_name] = _open_file(shard_path, key, strip_prefix)
        self.files = (index_path, *(index_path.parent / n for n in shards))
        self._shards = shards
        self._where: dict[str, Checkpoint] = {}
        self.infos: dict[str, TensorInfo] = {}
        for name, shard_name in weight_map.items():
            shard = shards[shard_name]
            if name not in shard.infos:
                raise MergeError(
                    f"{index_path}: {name!r} is mapped to {shard_name}, which lacks it"
                )
            self._where[name] = shard
            self.infos[name] = shard.infos[name]
        for shard_name, shard in shards.items():
            extra = sorted(set(shard.infos) - set(weight_map))
            if extra:
                raise MergeError(f"{index_path}: shard {shard_name} holds unindexed {extra[:5]}")

    def read(
        self, name: str, start: int = 0, stop: int | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        self._check_range(name, start, stop)
        return self._where[name].read(name, start, stop, out)

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()


def _hub_blobs(index_path: Path) -> list[Path]:
    """A Hugging Face cache snapshot links its files into ``../../blobs``: allowed there."""
    folder = index_path.parent
    repo = folder.parent.parent
    blobs = repo / "blobs"
    if (
        folder.parent.name == "snapshots"
        and blobs.is_dir()
        and not blobs.is_symlink()
        and blobs.resolve().parent == repo.resolve()
    ):
        return [blobs]
    return []


def _weight_map(index_path: Path) -> dict[str, str]:
    """The index's ``weight_map``, checked to be a map of tensor names to file names."""
    try:
        index = json.loads(index_path.read_text())
    except OSError as exc:
        raise MergeError(f"{index_path}: cannot read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MergeError(f"{index_path}: not a valid shard index (not JSON: {exc})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise MergeError(
            f'{index_path}: not a valid shard index (needs a "weight_map" object mapping '
            f"tensor names to shard files; found {type(weight_map).__name__})"
        )
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise MergeError(
                f"{index_path}: weight_map entry {name!r} is {shard!r}, not a shard file name"
            )
    return weight_map


def _open_file(path: Path, key: str | None, strip_prefix: str | None) -> Checkpoint:
    regular_file(path, "a checkpoint must be a regular file")
    ckpt: Checkpoint
    if path.suffix == ".safetensors":
        ckpt = SafetensorsFile(path)
    elif path.suffix in TORCH_SUFFIXES:
        ckpt = TorchFile(path, key=key, strip_prefix=strip_prefix)
    else:
        raise MergeError(
            f"{path}: unknown checkpoint format (expected .safetensors, "
            f"{', '.join(TORCH_SUFFIXES)}, a shard index .json, or a model folder)"
        )
    ckpt.files = (path,)
    return ckpt


def open_checkpoint(
    path: str | Path, *, key: str | None = None, strip_prefix: str | None = None
) -> Checkpoint:
    """Open a checkpoint lazily; only headers (or a torch file's pickle) are read now.

    ``key``/``strip_prefix`` choose the state dict inside wrapped torch checkpoints
    (see :func:`mergelab.io.torch_file.unwrap_state_dict`).
    """
    path = Path(path)
    if not path.exists():
        raise MergeError(f"{path}: no such file or folder")
    if path.is_dir():
        for name in FOLDER_FILES:
            candidate = path / name
            if candidate.is_file():
                return open_checkpoint(candidate, key=key, strip_prefix=strip_prefix)
        singles = sorted(path.glob("*.safetensors"))
        if len(singles) == 1:
            return _open_file(singles[0], key, strip_prefix)
        raise MergeError(
            f"{path}: folder holds no checkpoint (looked for {', '.join(FOLDER_FILES)})"
        )
    if path.name.endswith(".index.json"):
        regular_file(path, "a shard index must be a regular file")
        return ShardedCheckpoint(path, key, strip_prefix)
    return _open_file(path, key, strip_prefix)


def load_state_dict(path: str | Path, **options: str | None) -> dict[str, Any]:
    """Read a whole checkpoint into memory as torch tensors (for models small enough to hold)."""
    import torch

    from mergelab.io.dtypes import to_torch

    with open_checkpoint(path, **options) as ckpt:
        return {
            name: torch.from_numpy(ckpt.read_array(name)).view(to_torch(info.dtype))
            for name, info in ckpt.infos.items()
        }
