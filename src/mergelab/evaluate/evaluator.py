"""Run a model once per split and keep its logits and penultimate features.

Every combination in :mod:`mergelab.combine` is computed from these stored outputs, so each
checkpoint costs one forward pass per split, ever (the cache is keyed by content). Only new
weights (soups) need passes of their own; :class:`PassCounter` records every pass so that
claim can be checked.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mergelab.data import DatasetSplits, ImageSpec, make_loader
from mergelab.device import choose_device
from mergelab.errors import MergeError
from mergelab.evaluate.cache import OutputCache, Outputs
from mergelab.evaluate.source import ModelSource

__all__ = ["CheckpointMismatchError", "Evaluator", "PassCounter", "PassRecord", "default_device"]

# torch < 2.5 has the error under torch.cuda only.
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

# Adapted images of a split are kept in memory (and reused by every model) below this size.
MEMORY_BATCH_LIMIT = 1 << 30


class CheckpointMismatchError(MergeError):
    """A checkpoint does not fit the architecture; the message is ``load_weights``'s listing."""


def default_device() -> torch.device:
    """CUDA when present, else the CPU (:func:`mergelab.device.choose_device`)."""
    return choose_device(None)


@dataclass(frozen=True)
class PassRecord:
    """One model run over one whole split (``kind``: "model", "soup" or "bn")."""

    kind: str
    label: str
    split: str
    batches: int
    samples: int
    seconds: float


@dataclass
class PassCounter:
    """Every forward pass an Evaluator ran; ``hooks`` are called with each new record."""

    records: list[PassRecord] = field(default_factory=list)
    hooks: list[Callable[[PassRecord], None]] = field(default_factory=list)

    def add(self, record: PassRecord) -> None:
        self.records.append(record)
        for hook in self.hooks:
            hook(record)

    def select(self, kind: str | None = None, split: str | None = None) -> list[PassRecord]:
        return [
            r
            for r in self.records
            if (kind is None or r.kind == kind) and (split is None or r.split == split)
        ]

    def passes(self, kind: str | None = None, split: str | None = None) -> int:
        """Number of split-passes (one model over one whole split)."""
        return len(self.select(kind, split))

    def batches(self, kind: str | None = None, split: str | None = None) -> int:
        """Number of batched model calls."""
        return sum(r.batches for r in self.select(kind, split))

    def samples(self, kind: str | None = None, split: str | None = None) -> int:
        """Number of images forwarded."""
        return sum(r.samples for r in self.select(kind, split))

    def seconds(self, kind: str | None = None, split: str | None = None) -> float:
        """Wall time spent in forward passes (data transfer included)."""
        return sum(r.seconds for r in self.select(kind, split))


def _bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class Evaluator:
    """Outputs of checkpoints of one architecture on the splits of one dataset.

    Args:
        splits: the dataset (``mergelab.data.load_dataset``).
        arch, num_classes, model_kwargs: passed to ``build_model``; ``num_classes`` defaults
            to the dataset's.
        head: dotted name of the final Linear, for models ``split_model`` cannot guess.
        spec: input adaptation; None keeps the dataset's native channels and size.
        batch_size: images per forward call.
        cache_dir: folder of cached outputs; None keeps them in memory only.
        device: defaults to CUDA when available (:func:`mergelab.device.choose_device`).
        progress: tqdm bar per pass.
        bn_batches: train batches per BatchNorm recalibration (None: the whole train split).
    """

    def __init__(
        self,
        splits: DatasetSplits,
        *,
        arch: str,
        num_classes: int | None = None,
        head: str | None = None,
        spec: ImageSpec | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        batch_size: int = 256,
        cache_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
        bn_batches: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise MergeError(f"batch_size must be positive, got {batch_size}")
        info = splits.info
        self.splits = splits
        self.arch = arch
        self.num_classes = int(num_classes or info.num_classes)
        if info.multilabel and self.num_classes != info.num_classes:
            raise MergeError(
                f"{info.name} has {info.num_classes} labels but num_classes={self.num_classes}"
            )
        self.head = head
        self.spec = spec
        self.in_chans = spec.channels if spec is not None else info.channels
        self.img_size = spec.size if spec is not None else info.image_size[0]
        self.input_shape = (
            (self.in_chans, self.img_size, self.img_size)
            if spec is not None
            else (info.channels, *info.image_size)
        )
        self.model_kwargs = dict(model_kwargs or {})
        self.batch_size = int(batch_size)
        self.cache = OutputCache(cache_dir)
        self.device = choose_device(device)
        self.progress = progress
        self.bn_batches = bn_batches
        self.counter = PassCounter()
        self.halved = 0
        """Times a batch was halved because the device ran out of memory."""
        self._fits: int | None = None  # the batch size that fitted, within one pass
        self._model: nn.Module | None = None
        self._feature_head: Any = None
        self._split_batches: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._cost: tuple[int, int] | None = None
        self._targets: dict[str, np.ndarray] = {}
        self._bn_stats: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    # -- models ---------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        """A fresh, untrained model of this architecture (on the CPU, eval mode)."""
        from mergelab.models import build_model

        try:
            model = build_model(
                self.arch,
                self.num_classes,
                in_chans=self.in_chans,
                img_size=self.img_size,
                **self.model_kwargs,
            )
        except (ValueError, TypeError, ImportError) as exc:
            raise MergeError(f"cannot build {self.arch!r}: {exc}") from None
        return model.eval()

    @property
    def model(self) -> nn.Module:
        """The one working model on ``device``: every checkpoint is loaded into it in turn."""
        if self._model is None:
            self._model = self.build_model().to(self.device)
            self.feature_head()  # fail early if the head cannot be found
        return self._model

    def feature_head(self, model: nn.Module | None = None) -> Any:
        """``split_model`` of ``model`` (the working model by default)."""
        from mergelab.models import split_model

        if model is None and self._feature_head is not None:
            return self._feature_head
        try:
            fh = split_model(model if model is not None else self.model, self.head)
        except ValueError as exc:
            raise MergeError(f"{self.arch}: {exc}") from None
        if model is None or model is self._model:
            self._feature_head = fh  # loading weights keeps the modules: the split stays valid
        return fh

    @property
    def head_prefix(self) -> str:
        """State-dict prefix of the final Linear, e.g. ``"fc."``."""
        return str(self.feature_head().head_prefix)

    def load(self, source: ModelSource | Mapping[str, Any] | str | Path) -> nn.Module:
        """Load ``source``'s weights into the working model; a misfit raises
        :class:`CheckpointMismatchError` with ``load_weights``'s listing of every difference."""
        from mergelab.models import load_weights

        src = ModelSource.of(source)
        model = self.model
        try:
            load_weights(model, src.state_dict())
        except ValueError as exc:
            raise CheckpointMismatchError(f"{src.label} does not fit {self.arch}: {exc}") from None
        return model.eval()

    def cost(self) -> tuple[int, int]:
        """(parameters, FLOPs per image) of one model of this architecture."""
        if self._cost is None:
            from mergelab.models import count_flops, count_params

            model = self.model
            self._cost = (count_params(model), count_flops(model, self.input_shape))
        return self._cost

    # -- data -------------------------------------------------------------------------------

    def targets(self, split: str) -> np.ndarray:
        """Targets of ``split`` in item order (no image is read)."""
        if split not in self._targets:
            self._targets[split] = self.splits.split(split, self.spec).targets.numpy()
        return self._targets[split]

    def split_key(self, split: str) -> str:
        """``DatasetSplits.key`` of ``split`` under this evaluator's transform."""
        return self.splits.key(split, self.spec)

    def batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of adapted images and targets, in item order. Small splits are adapted once
        and kept, so every model (and soup) reads the same tensors for free."""
        cached = self._split_batches.get(split)
        if cached is not None:
            yield from cached
            return
        dataset = self.splits.split(split, self.spec)
        n_bytes = len(dataset) * 4 * int(np.prod(self.input_shape))
        keep: list[tuple[torch.Tensor, torch.Tensor]] | None = (
            [] if n_bytes <= MEMORY_BATCH_LIMIT else None
        )
        for x, y in make_loader(dataset, batch_size=self.batch_size, shuffle=False):
            if keep is not None:
                keep.append((x, y))
            yield x, y
        if keep is not None:
            self._split_batches[split] = keep

    # -- passes -----------------------------------------------------------------------------

    def cache_key(self, source: ModelSource, split: str, *, bn_recalibrate: bool = False) -> str:
        """Name of ``source``'s outputs on ``split``: content hash, split + transform key,
        architecture, head, model options (and the recalibration, if any)."""
        ident: dict[str, Any] = {
            "model": source.digest,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "img_size": self.img_size,
            "head": self.head,
            "kwargs": self.model_kwargs,
        }
        if bn_recalibrate:
            ident["bn"] = [self.split_key("train"), self.bn_batches]
        blob = json.dumps(ident, sort_keys=True, default=str).encode()
        return f"{self.split_key(split)}--{hashlib.sha256(blob).hexdigest()[:24]}"

    def outputs(
        self,
        source: ModelSource | Mapping[str, Any] | str | Path,
        split: str,
        *,
        bn_recalibrate: bool = False,
        kind: str = "model",
    ) -> Outputs:
        """Logits, features and targets of ``source`` on ``split``, from the cache when
        present; otherwise one forward pass (after a BatchNorm recalibration if asked)."""
        src = ModelSource.of(source)
        key = self.cache_key(src, split, bn_recalibrate=bn_recalibrate)
        targets = self.targets(split)
        hit = self.cache.get(key, targets, self.num_classes)
        if hit is not None:
            return hit
        model = self.load(src)
        if bn_recalibrate:
            self._recalibrated(model, src)
        out = self.forward(model, split, label=src.name, kind=kind, key=key)
        self.cache.put(
            out,
            {"model": src.digest, "name": src.name, "arch": self.arch, "head": self.head},
            memory=kind != "soup",
        )
        return out

    def _recalibrated(self, model: nn.Module, src: ModelSource) -> None:
        """Recalibrate once per weights: the statistics are kept (they are small), so the same
        soup evaluated on val and later on test does not repeat the train pass."""
        stats = self._bn_stats.get(src.digest)
        if stats is not None:
            self._bn_stats.move_to_end(src.digest)
            model.load_state_dict(stats, strict=False)
            return
        self.recalibrate_bn(model, label=src.name)
        names = {
            f"{name}.{buf}"
            for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for buf in ("running_mean", "running_var", "num_batches_tracked")
        }
        self._bn_stats[src.digest] = {
            k: v.detach().clone() for k, v in model.state_dict().items() if k in names
        }
        while len(self._bn_stats) > 16:
            self._bn_stats.popitem(last=False)

    def forward(
        self,
        model: nn.Module,
        split: str,
        *,
        label: str = "model",
        kind: str = "model",
        key: str = "",
    ) -> Outputs:
        """One eval-mode, no-grad pass of ``model`` over ``split`` (never cached)."""
        fh = self.feature_head(model)
        model.eval()
        logits: list[torch.Tensor] = []
        feats: list[torch.Tensor] = []
        n_batches = 0
        self._fits = None
        start = time.perf_counter()
        n = self.splits.size(split)
        with (
            torch.inference_mode(),
            tqdm(
                total=n,
                desc=f"{label} {split}",
                unit="img",
                leave=False,
                disable=not self.progress,
            ) as bar,
        ):
            for x, _ in self.batches(split):
                x = x.to(self.device, non_blocking=True)
                f, z = self._run_batch(fh, x)
                feats.append(f.float().cpu())
                logits.append(z.float().cpu())
                n_batches += 1
                bar.update(len(x))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        self.counter.add(PassRecord(kind, label, split, n_batches, n, seconds))
        return Outputs(
            logits=torch.cat(logits).numpy(),
            features=torch.cat(feats).numpy(),
            targets=self.targets(split),
            split=split,
            key=key or f"{self.split_key(split)}--uncached",
        )

    def _run_batch(self, fh: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and logits of one batch. A batch the device has no memory for runs in
        halves, and the size that fitted is kept for the rest of the pass (eval mode: an
        image's outputs do not depend on the others), so a batch size chosen for a large GPU
        still runs on a small one or beside other units."""
        size = min(len(x), self._fits or len(x))
        feats: list[torch.Tensor] = []
        logits: list[torch.Tensor] = []
        start = 0
        while start < len(x):
            part = x[start : start + size]
            try:
                f = fh.features(part)
                z = fh.head(f)
            except _OUT_OF_MEMORY:
                f = z = None  # leave the handler first: its frames hold the failed pass
            if f is None or z is None:
                if size == 1:
                    raise MergeError(
                        f"{self.arch}: out of {self.device} memory for a single image of shape "
                        f"{tuple(x.shape[1:])}; run fewer units per GPU or use a larger one"
                    )
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                size = max(1, size // 2)
                self._fits = size
                self.halved += 1
                continue
            feats.append(f)
            logits.append(z)
            start += len(part)
        if len(feats) == 1:
            return feats[0], logits[0]
        return torch.cat(feats), torch.cat(logits)

    def recalibrate_bn(self, model: nn.Module, *, label: str = "model") -> nn.Module:
        """Replace BatchNorm running statistics by those of ``model`` itself on train data.

        Averaged running stats do not describe a merged network. Statistics are reset and
        re-estimated as a cumulative average (momentum=None) over train batches, with only
        the BatchNorm layers in train mode (dropout stays off); no gradients. Returns the model
        in eval mode. A model without BatchNorm is returned unchanged (no pass).
        """
        bns = _bn_modules(model)
        if not bns:
            return model.eval()
        momenta = [m.momentum for m in bns]
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        n_batches = n_samples = 0
        start = time.perf_counter()
        try:
            with torch.no_grad():
                for x, _ in self.batches("train"):
                    if self.bn_batches is not None and n_batches >= self.bn_batches:
                        break
                    model(x.to(self.device, non_blocking=True))
                    n_batches += 1
                    n_samples += len(x)
        finally:
            for m, mom in zip(bns, momenta, strict=True):
                m.momentum = mom
            model.eval()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.counter.add(
            PassRecord("bn", label, "train", n_batches, n_samples, time.perf_counter() - start)
        )
        return model

    # -- heads ------------------------------------------------------------------------------

    def head_state(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The final Linear's tensors of a full state dict, keys as in the state dict."""
        prefix = self.head_prefix
        head = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
        if f"{prefix}weight" not in head:
            raise MergeError(f"state dict has no {prefix}weight (the head of {self.arch})")
        return head

    def apply_head(
        self, features: np.ndarray, head_state: Mapping[str, torch.Tensor]
    ) -> np.ndarray:
        """Logits of ``features`` through the head module loaded with ``head_state``
        (a head-prefixed state dict, e.g. averaged over models), on the CPU."""
        prefix = self.head_prefix
        head = copy.deepcopy(self.feature_head().head_module).to("cpu")
        head.load_state_dict({k[len(prefix) :]: v for k, v in head_state.items()})
        with torch.inference_mode():
            z = head(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)))
        return z.numpy()
