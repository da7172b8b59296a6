"""Train one model from a ``TrainConfig`` into a cached, content-named checkpoint.

The data is loaded once per process as tensors and mini-batches are cut from them with a
seeded ``torch.Generator`` (no per-item DataLoader: for the embedded sets this is what makes
ten ingredients train in seconds). A finished checkpoint is ``cache_dir/<hash>.safetensors``;
its presence means "done", so a rerun or a resumed recipe does no training.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mergelab.errors import MergeError
from mergelab.train.config import TrainConfig, is_config_hash

__all__ = [
    "TrainingError",
    "checkpoint_path",
    "default_train_cache",
    "fit",
    "lr_factor",
    "read_train_config",
    "resolve_device",
    "total_steps",
    "train_model",
]

AUGMENT_MIN_SIZE = 16
_META_CONFIG = "mergelab.train_config"
_META_HASH = "mergelab.config_hash"
_META_INIT = "mergelab.init"


class TrainingError(MergeError):
    """A run that cannot finish (diverged loss, empty data, missing start)."""


def default_train_cache() -> Path:
    """``$MERGELAB_CACHE/ingredients``, else ``$XDG_CACHE_HOME/mergelab/ingredients``."""
    env = os.environ.get("MERGELAB_CACHE")
    if env:
        return Path(env).expanduser() / "ingredients"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mergelab" / "ingredients"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> CUDA when present, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' asked for, but torch sees no CUDA device")
    return dev


def checkpoint_path(config: TrainConfig, cache_dir: str | os.PathLike[str]) -> Path:
    """Where ``config``'s checkpoint lives (or will live) in ``cache_dir``."""
    return Path(cache_dir).expanduser() / f"{config.config_hash()}.safetensors"


def read_train_config(path: str | os.PathLike[str]) -> TrainConfig:
    """The ``TrainConfig`` stored in a checkpoint written by :func:`train_model`."""
    from mergelab.io import SafetensorsFile

    with SafetensorsFile(path) as f:
        text = f.metadata.get(_META_CONFIG)
    if text is None:
        raise MergeError(f"{path}: no mergelab training config in its metadata")
    return TrainConfig.model_validate_json(text)


# ----------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=4)
def _splits(dataset: str, split_seed: int) -> Any:
    from mergelab.data import load_dataset

    return load_dataset(dataset, seed=split_seed)


_TENSORS: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
_TENSORS_KEEP = 2


def _image_spec(config: TrainConfig, info: Any) -> Any:
    from mergelab.data import ImageSpec

    if config.in_chans is None and config.img_size is None:
        return None
    return ImageSpec(
        channels=config.in_chans if config.in_chans is not None else info.channels,
        size=config.img_size if config.img_size is not None else info.image_size[0],
    )


def _stratified_subset(y: torch.Tensor, fraction: float) -> torch.Tensor:
    """Fixed positions of a class-stratified ``fraction`` (seed 0: the same for every run)."""
    rng = np.random.default_rng(0)
    if y.dim() != 1:  # multi-label: a plain random subset
        n = len(y)
        return torch.from_numpy(np.sort(rng.permutation(n)[: max(1, round(fraction * n))]))
    labels = y.numpy()
    keep: list[np.ndarray] = []
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        keep.append(rng.permutation(pos)[: max(1, round(fraction * len(pos)))])
    return torch.from_numpy(np.sort(np.concatenate(keep)))


def _train_data(config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(X, y, DatasetInfo) for the run, adapted to the model's input; cached per process."""
    from mergelab.data import as_tensors

    splits = _splits(config.dataset, config.split_seed)
    spec = _image_spec(config, splits.info)
    key = splits.key(config.split, spec)
    if key in _TENSORS:
        _TENSORS.move_to_end(key)
    else:
        _TENSORS[key] = as_tensors(splits.split(config.split, spec))
        while len(_TENSORS) > _TENSORS_KEEP:
            _TENSORS.popitem(last=False)
    x, y = _TENSORS[key]
    if config.train_fraction < 1.0:
        idx = _stratified_subset(y, config.train_fraction)
        x, y = x[idx], y[idx]
    if len(x) == 0:
        raise TrainingError(f"{config.dataset}: split {config.split!r} is empty")
    return x, y, splits.info


# ----------------------------------------------------------------------------- model


def _resolve_init(config: TrainConfig, cache_dir: Path) -> Path | None:
    if config.init is None:
        return None
    if is_config_hash(config.init):
        path = cache_dir / f"{config.init}.safetensors"
        if not path.is_file():
            raise TrainingError(
                f"init {config.init[:12]}... is a config hash with no checkpoint in {cache_dir}; "
                "train that run first (make_ingredients does this for you)"
            )
        return path
    return Path(config.init).expanduser()


def _build(config: TrainConfig, info: Any, init: Path | None) -> nn.Module:
    from mergelab.models import build_model, load_weights

    in_chans = config.in_chans if config.in_chans is not None else info.channels
    img_size = config.img_size if config.img_size is not None else info.image_size[0]
    model = build_model(
        config.arch,
        info.num_classes,
        in_chans=in_chans,
        img_size=img_size,
        **dict(config.model_kwargs),
    )
    if init is not None:
        try:
            load_weights(model, init)
        except (ValueError, FileNotFoundError) as exc:
            raise TrainingError(f"cannot start from {init}: {exc}") from None
    return model


# ----------------------------------------------------------------------------- loop


def lr_factor(config: TrainConfig, step: int, total: int) -> float:
    """Multiplier of ``config.lr`` at ``step`` (0-based) of ``total``: linear warm-up, then
    the schedule over the remaining steps."""
    warm = min(config.warmup_steps, total)
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if config.schedule == "step":
        return config.step_gamma ** sum(t >= m for m in config.step_milestones)
    return 1.0


def total_steps(config: TrainConfig, n_items: int) -> int:
    """Steps of the run: ``steps``, or ``round(epochs * (n // batch))`` (>= 1 if epochs > 0)."""
    if config.steps is not None:
        return config.steps
    per_epoch = max(1, n_items // config.batch_size)
    epochs = float(config.epochs or 0.0)
    return 0 if epochs == 0 else max(1, round(epochs * per_epoch))


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless index batches: a fresh permutation per epoch, partial last batch dropped."""
    bs = min(batch_size, n)
    per_epoch = n // bs
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(per_epoch):
            yield perm[i * bs : (i + 1) * bs]


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
    )


def _loss(out: torch.Tensor, y: torch.Tensor, smoothing: float, multilabel: bool) -> torch.Tensor:
    if multilabel:
        target = y * (1 - smoothing) + 0.5 * smoothing if smoothing else y
        return F.binary_cross_entropy_with_logits(out, target)
    return F.cross_entropy(out, y, label_smoothing=smoothing)


@contextlib.contextmanager
def _deterministic(enabled: bool, threads: int | None) -> Iterator[None]:
    """Deterministic kernels (CPU) and a fixed thread count, restored afterwards."""
    was = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_threads = torch.get_num_threads()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn)
        torch.set_num_threads(previous_threads)


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    multilabel: bool = False,
    progress: bool = True,
    desc: str | None = None,
) -> dict[str, float]:
    """Train ``model`` in place on tensors ``x, y`` (already on the model's device).

    The model stays in train mode throughout (no evaluation happens here). Returns
    ``{"steps", "epochs", "final_loss"}``; ``final_loss`` is the mean over the last
    10 % of steps. Raises ``TrainingError`` when the loss stops being finite.
    """
    from tqdm.auto import tqdm

    from mergelab.data import augment

    device = x.device
    n = len(x)
    total = total_steps(config, n)
    gen = torch.Generator().manual_seed(config.data_seed)
    aug_gen = torch.Generator().manual_seed(config.data_seed + 0x5EED)
    side = min(int(x.shape[-1]), int(x.shape[-2])) if x.dim() == 4 else 0
    do_augment = config.augment and side >= AUGMENT_MIN_SIZE
    padding = config.augment_padding if config.augment_padding is not None else side // 8
    opt = _optimizer(config, model)
    model.train()
    batches = _batches(n, config.batch_size, gen)
    tail = max(1, total // 10)
    tail_sum = torch.zeros((), device=device)
    check_every = 25
    bar = tqdm(range(total), desc=desc or config.arch, disable=not progress, leave=False)
    for step in bar:
        idx = next(batches).to(device)
        xb, yb = x[idx], y[idx]
        if do_augment:
            xb = augment(xb, aug_gen, padding=padding, flip=config.augment_flip)
        lr = config.lr * lr_factor(config, step, total)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = _loss(model(xb), yb, config.label_smoothing, multilabel)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= total - tail:
            tail_sum += loss.detach()
        if (step + 1) % check_every == 0 or step + 1 == total:
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingError(
                    f"{config.arch} on {config.dataset}: loss is {value} at step {step + 1}; "
                    f"lower the learning rate (lr={config.lr})"
                )
            if progress:
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.3g}")
    bar.close()
    final = float(tail_sum) / tail if total else float("nan")
    per_epoch = max(1, n // min(config.batch_size, n))
    return {"steps": float(total), "epochs": total / per_epoch, "final_loss": final}


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, path)


def train_model(
    config: TrainConfig,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    threads: int | None = 1,
    desc: str | None = 1,
) -> Path:
    """Train ``config`` and return ``cache_dir/<config_hash>.safetensors``.

    If that file exists it is returned at once: nothing is trained. The checkpoint is
    written atomically (a crash leaves no partial file) with the config as metadata and a
    ``<hash>.json`` sidecar (config, loss, timing). On the CPU the same config gives the
    same bytes; CUDA (used when present and ``device`` is None) is repeatable only as far
    as its kernels are.

    ``threads``: torch CPU threads during the run (restored after). CPU results depend on
    the thread count, so the default of 1 keeps a cached file's bytes independent of the
    machine; one thread is also the fastest for the small built-ins, and far faster than two
    when other processes share the cores. None leaves torch's setting alone.
    """
    from mergelab.io import save_state_dict

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_train_cache()
    key = config.config_hash()
    out = cache / f"{key}.safetensors"
    if out.is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    init = _resolve_init(config, cache)
    started = time.perf_counter()
    with _deterministic(dev.type == "cpu", threads):
        x, y, info = _train_data(config)
        torch.manual_seed(config.seed)
        model = _build(config, info, init).to(dev)
        stats = fit(
            model,
            x.to(dev),
            y.to(dev),
            config,
            multilabel=info.multilabel,
            progress=progress,
            desc=desc,
        )
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        _META_CONFIG: config.canonical_json(),
        _META_HASH: key,
        _META_INIT: config.init_identity(),
    }
    sidecar = {
        "config_hash": key,
        "config": json.loads(config.canonical_json()),
        "init": config.init_identity(),
        "train_items": len(x),
        **stats,
        "seconds": round(time.perf_counter() - started, 3),
        "device": str(dev),
        "torch": torch.__version__,
    }
    _atomic_text(cache / f"{key}.json", json.dumps(sidecar, indent=2, sort_keys=True))
    save_state_dict(state, out, metadata=metadata, force=True)
    return out
