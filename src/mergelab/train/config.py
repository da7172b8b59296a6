"""What one training run is: a frozen, hashable description (``TrainConfig``).

The hash of a config names its checkpoint in the cache, so it must change whenever the
weights could: every field, the trainer's version, and the *content* of the starting
checkpoint (not its path, which may move or be rewritten) all go into it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from mergelab.hashing import file_sha256

__all__ = [
    "MAX_SEED",
    "MAX_SIDE",
    "TRAINER_VERSION",
    "TrainConfig",
    "TrainSettings",
    "file_sha256",
    "is_config_hash",
]

# Bump whenever the training loop changes what a config produces, so old caches are not reused.
TRAINER_VERSION = 2

_HASH = re.compile(r"[0-9a-f]{64}")

MAX_SEED = 2**32 - 1
"""The largest seed a user gives (recipe ``seed``/``split_seed``): the usual 32-bit range,
far inside what torch and NumPy take once the trainer's per-run offsets are added."""
MAX_SIDE = 4096
"""The largest image side (``img_size``) and crop padding: beyond it one image alone takes
gigabytes, and a typo (``img_size: 100000``) fails inside torch instead of here."""


def is_config_hash(text: str) -> bool:
    """True for a 64-hex config hash that is not also an existing path."""
    return bool(_HASH.fullmatch(text)) and not Path(text).exists()


class TrainSettings(BaseModel):
    """Optimisation settings shared by single runs and by recipe sections.

    Length is ``epochs`` (may be fractional) or ``steps``, not both; neither means 1 epoch.
    One epoch is ``len(train) // batch_size`` steps (the last partial batch is dropped so
    every step sees the same batch size, which BatchNorm likes).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    epochs: float | None = Field(None, gt=0)
    steps: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=1)
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    """Steps of linear lr warm-up; shorter than the run (``steps``) when that is given."""
    step_milestones: tuple[float, ...] = (0.5, 0.75)
    """``schedule: step``: fractions of the run after which the lr is multiplied by gamma."""
    step_gamma: float = Field(0.1, gt=0, le=1)
    augment: bool = False
    """Random crop (zero padding) + optional flip; only applied to images >= 16 px."""
    augment_flip: bool = True
    """Horizontal flips when augmenting; turn off for digits and text-like images."""
    augment_padding: int | None = Field(None, ge=0, le=MAX_SIDE)
    """Crop padding in pixels; None = side // 8 (4 px for 32, 3 for 28)."""
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    train_slice: tuple[float, float] = (0.0, 1.0)
    """``[lo, hi)``: train on the items whose position in a fixed (seed 0) class-stratified
    order lies in that range of each class, so ``[0, 0.5]`` and ``[0.5, 1]`` are disjoint
    halves that together cover every item once (a pre-training and its fine-tunes on
    different data). Multi-label targets: one fixed order of all items."""
    patience: int | None = Field(None, ge=1)
    """Early stopping: measure the primary metric on the dataset's ``val`` split after every
    epoch, stop once it has not improved for ``patience`` epochs (``epochs``/``steps`` is
    then the maximum, and the lr schedule is defined over it) and keep the weights of the
    best epoch (ties: the earliest). None: no val pass, train the full length."""
    track_val: bool = False
    """Measure the primary metric on ``val`` after every epoch and keep the curve (in the
    run's sidecar JSON), without stopping early or changing the weights: the evidence that
    a run's validation accuracy had plateaued."""
    amp: bool = False
    """Mixed precision on CUDA: forward pass and loss under bfloat16 autocast (weights,
    gradients and optimizer state stay float32; no loss scaling is needed). About twice the
    throughput of float32 on recent GPUs. No effect on the CPU, where the run is float32."""

    @model_validator(mode="before")
    @classmethod
    def _one_length(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "train_fraction" in data:
                raise ValueError(
                    "train_fraction was replaced by train_slice: [lo, hi) of every class "
                    f"(train_fraction: {data['train_fraction']} -> "
                    f"train_slice: [0, {data['train_fraction']}])"
                )
            epochs, steps = data.get("epochs"), data.get("steps")
            if epochs is not None and steps is not None:
                raise ValueError("give epochs or steps, not both")
            if epochs is None and steps is None:
                data = {**data, "epochs": 1.0}
        return data

    @field_validator("warmup_steps")
    @classmethod
    def _warmup_inside_the_run(cls, warmup: int, info: ValidationInfo) -> int:
        steps = info.data.get("steps")
        if warmup and steps is not None and warmup >= steps:
            raise ValueError(
                f"{warmup} is not shorter than the run (steps: {steps}); the lr would never "
                f"leave the warm-up (allowed: 0 to {steps - 1})"
            )
        return warmup

    @model_validator(mode="after")
    def _check_milestones(self) -> TrainSettings:
        if any(not 0 < m < 1 for m in self.step_milestones):
            raise ValueError(f"step_milestones must lie in (0, 1), got {self.step_milestones}")
        lo, hi = self.train_slice
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(
                f"train_slice must be [lo, hi] with 0 <= lo < hi <= 1, got [{lo}, {hi}]"
            )
        return self


class TrainConfig(TrainSettings):
    """One training run: data, model, optimisation, seeds and starting point.

    ``seed`` fixes the initialisation and dropout; ``data_seed`` the batch order and the
    augmentation. ``init`` is None (fresh seeded init), a checkpoint path, or the config hash
    of another run in the same cache (how fine-tunes point at their pre-training).
    ``reset_head``: after loading ``init``, re-initialise the final Linear (a fresh head per
    run, seeded by ``seed``); head tensors of ``init`` with another shape (a source with
    another number of classes) are then skipped instead of failing. No effect without
    ``init`` (a fresh init has a fresh head anyway).
    """

    steps: int | None = Field(None, ge=0)
    """0: a run that only saves its seeded init (a recipe's shared start without pretrain)."""
    dataset: str = "digits"
    split: str = "train"
    split_seed: int = Field(0, ge=0, lt=2**63)
    """Seed of the dataset's train/val/test split (``load_dataset(seed=)``)."""
    arch: str = "mlp"
    model_kwargs: dict[str, Any] = {}
    in_chans: Literal[1, 3] | None = None
    """Model input channels; None = the dataset's."""
    img_size: int | None = Field(None, ge=1, le=MAX_SIDE)
    """Model input side; None = the dataset's."""
    seed: int = Field(0, ge=0, lt=2**63)
    data_seed: int = Field(0, ge=0, lt=2**63)
    """Seeds go to torch (which takes < 2**64, so ``data_seed`` + an offset fits) and NumPy
    (which takes no negative seed)."""
    init: str | None = None
    reset_head: bool = False

    def canonical_json(self) -> str:
        """Sorted, compact JSON of every field (``amp`` only when on): the text that is
        hashed and stored."""
        body = self.model_dump(mode="json")
        if not body.get("amp"):
            body.pop("amp", None)
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    def init_identity(self) -> str:
        """What the starting point *is*: none, another run's hash, or a file's content hash."""
        if self.init is None:
            return "none"
        if is_config_hash(self.init):
            return f"config:{self.init}"
        path = Path(self.init).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"init checkpoint not found: {path}")
        return f"sha256:{file_sha256(path)}"

    def config_hash(self) -> str:
        """sha256 of (trainer version, canonical JSON without the init path, init identity)."""
        body = json.loads(self.canonical_json())  # without amp when off: runs cached
        body.pop("init", None)  # before amp existed keep their hash
        text = json.dumps(
            {"trainer": TRAINER_VERSION, "config": body, "init": self.init_identity()},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(text.encode()).hexdigest()
