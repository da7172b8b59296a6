"""Reading checkpoints lazily and writing safetensors atomically (NumPy only: no torch import
unless a torch file or torch tensors are involved)."""

from mergelab.io.checkpoint import ArrayCheckpoint, Checkpoint, TensorInfo
from mergelab.io.open import load_state_dict, open_checkpoint
from mergelab.io.safetensors_file import SafetensorsFile
from mergelab.io.writer import SafetensorsWriter, save_state_dict

__all__ = [
    "ArrayCheckpoint",
    "Checkpoint",
    "SafetensorsFile",
    "SafetensorsWriter",
    "TensorInfo",
    "load_state_dict",
    "open_checkpoint",
    "save_state_dict",
]
