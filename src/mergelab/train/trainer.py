"""Train one model from a ``TrainConfig`` into a cached, content-named checkpoint.

The data is loaded once per process as tensors and mini-batches are cut from them with a
seeded ``torch.Generator`` (no per-item DataLoader: for the embedded sets this is what makes
ten ingredients train in seconds). A finished checkpoint is ``cache_dir/<hash>.safetensors``;
its presence means "done", so a rerun or a resumed recipe does no training. It carries the
sha256 of its tensors in its metadata, checked whenever it is reused: an edited or damaged
run is reported, removed and trained again rather than trusted.
"""

from __future__ import annotations

import collections
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

from mergelab.atomic import atomic_write_text
from mergelab.device import choose_device
from mergelab.errors import MergeError, MergelabError
from mergelab.hashing import checkpoint_sha256, discard
from mergelab.train.config import TrainConfig, is_config_hash

__all__ = [
    "TrainingError",
    "checkpoint_path",
    "default_train_cache",
    "fit",
    "lr_factor",
    "read_train_config",
    "reinit_head",
    "resolve_device",
    "run_config_hash",
    "slice_positions",
    "total_steps",
    "train_model",
    "val_score",
    "verified_run",
]

AUGMENT_MIN_SIZE = 16
_META_CONFIG = "mergelab.train_config"
_META_HASH = "mergelab.config_hash"
_META_INIT = "mergelab.init"
_META_SHA = "mergelab.tensors_sha256"


class TrainingError(MergelabError):
    """A run that cannot finish (diverged loss, empty data, missing start)."""


def default_train_cache() -> Path:
    """``$MERGELAB_CACHE/ingredients``, else ``$XDG_CACHE_HOME/mergelab/ingredients``."""
    from mergelab.evaluate.cache import cache_root

    return cache_root() / "ingredients"


resolve_device = choose_device  # the name mergelab.train exports


def run_config_hash(path: Path) -> str | None:
    """The config hash a checkpoint written by :func:`train_model` records; None for any
    other (or unreadable) file."""
    from mergelab.io import SafetensorsFile

    try:
        with SafetensorsFile(path) as f:
            return f.metadata.get(_META_HASH)
    except (MergelabError, OSError):
        return None


def verified_run(path: Path) -> bool:
    """True if ``path`` is a trained run whose tensors match the sha256 in its metadata and
    whose config hash is its name. A file that fails is reported and removed (False), so it
    is trained again; an absent one is just False."""
    from mergelab.io import SafetensorsFile

    if not path.exists():
        return False
    try:
        with SafetensorsFile(path) as f:
            stored = f.metadata.get(_META_SHA)
            if stored is None:
                problem = "trained run without a content hash (an older mergelab wrote it)"
            elif f.metadata.get(_META_HASH) != path.stem:
                problem = "trained run whose config hash is not its name"
            elif checkpoint_sha256(f) != stored:
                problem = "trained run does not match its content hash (edited or damaged)"
            else:
                return True
    except (MergelabError, OSError) as exc:
        problem = f"unreadable trained run ({exc})"
    discard(path, problem)
    return False


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


_TENSORS: OrderedDict[str, tuple[Any, torch.Tensor]] = OrderedDict()
_TENSORS_KEEP = 4
# A split whose adapted float32 images would take more than this many bytes is not held in
# memory: its images are read and adapted batch by batch (``$MERGELAB_TRAIN_MEMORY_GB``).
MEMORY_LIMIT_BYTES = int(float(os.environ.get("MERGELAB_TRAIN_MEMORY_GB", "4")) * (1 << 30))


class LazyImages:
    """The images of a split, read and adapted on access: what training uses instead of one
    tensor when the split would not fit in memory (CelebA at 224 px is about 100 GB).

    Supports what the training loop needs of a tensor: ``len``, ``shape``, ``dim()``,
    ``to(device)``, and indexing by a tensor of positions or a slice (a batch).
    """

    def __init__(self, dataset: Any, positions: np.ndarray | None = None, device: Any = "cpu"):
        self.dataset = dataset
        self.positions = np.arange(len(dataset), dtype=np.int64) if positions is None else positions
        self.device = torch.device(device)
        first, _ = dataset.get_batch([0])
        self.shape = (len(self.positions), *first.shape[1:])

    def __len__(self) -> int:
        return len(self.positions)

    def dim(self) -> int:
        return len(self.shape)

    def to(self, device: Any) -> LazyImages:
        return LazyImages(self.dataset, self.positions, device)

    def subset(self, idx: torch.Tensor | np.ndarray) -> LazyImages:
        return LazyImages(self.dataset, self.positions[np.asarray(idx)], self.device)

    def __getitem__(self, idx: Any) -> torch.Tensor:
        chosen = (
            self.positions[idx]
            if isinstance(idx, slice)
            else self.positions[np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx)]
        )
        x, _ = self.dataset.get_batch(chosen.tolist())
        return x.to(self.device)


def _image_spec(config: TrainConfig, info: Any) -> Any:
    from mergelab.data import ImageSpec

    if config.in_chans is None and config.img_size is None:
        return None
    return ImageSpec(
        channels=config.in_chans if config.in_chans is not None else info.channels,
        size=config.img_size if config.img_size is not None else info.image_size[0],
    )


def _cut(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Positions ``[round(lo*n), round(hi*n))``; rounding half up, the same for a boundary
    shared by two slices, so adjacent slices are disjoint and cover every position."""
    return math.floor(lo * n + 0.5), math.floor(hi * n + 0.5)


def slice_positions(y: torch.Tensor | np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Sorted positions of the items in ``[lo, hi)`` of a fixed, class-stratified order.

    Single-label ``y`` (N,): per class, in class order, a permutation of its items drawn from
    one generator seeded 0 (the same for every run); items ``k`` of that permutation with
    ``round(lo*n_c) <= k < round(hi*n_c)`` are kept. Multi-label ``y`` (N, C): one seeded
    permutation of all items, cut the same way. ``[0, .5]`` and ``[.5, 1]`` are disjoint and
    together hold every item exactly once.
    """
    labels = np.asarray(y)
    rng = np.random.default_rng(0)
    if labels.ndim != 1:
        a, b = _cut(lo, hi, len(labels))
        return np.sort(rng.permutation(len(labels))[a:b])
    keep: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        a, b = _cut(lo, hi, len(pos))
        keep.append(rng.permutation(pos)[a:b])
    return np.sort(np.concatenate(keep))


def _tensors(config: TrainConfig, split: str) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(X, y, DatasetInfo) of a whole split, adapted to the model's input; cached per process."""
    from mergelab.data import as_tensors

    splits = _splits(config.dataset, config.split_seed)
    spec = _image_spec(config, splits.info)
    key = splits.key(split, spec)
    if key in _TENSORS:
        _TENSORS.move_to_end(key)
    else:
        dataset = splits.split(split, spec)
        lazy = LazyImages(dataset) if len(dataset) else None
        if lazy is not None and 4 * math.prod(lazy.shape) > MEMORY_LIMIT_BYTES:
            _TENSORS[key] = (lazy, dataset.targets)
        else:
            _TENSORS[key] = as_tensors(dataset)
        while len(_TENSORS) > _TENSORS_KEEP:
            _TENSORS.popitem(last=False)
    x, y = _TENSORS[key]
    return x, y, splits.info


def _train_data(config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(X, y, DatasetInfo) the run trains on: its split, cut to ``train_slice``."""
    x, y, info = _tensors(config, config.split)
    lo, hi = config.train_slice
    if (lo, hi) != (0.0, 1.0):
        idx = torch.from_numpy(slice_positions(y, lo, hi))
        x, y = (x.subset(idx) if isinstance(x, LazyImages) else x[idx]), y[idx]
    if len(x) == 0:
        raise TrainingError(
            f"{config.dataset}: split {config.split!r} has no items in train_slice [{lo}, {hi}]"
        )
    return x, y, info


def _val_data(config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset's whole ``val`` split, with the same input adaptation as training."""
    x, y, _ = _tensors(config, "val")
    if len(x) == 0:
        raise TrainingError(f"{config.dataset}: split 'val' is empty; patience needs it")
    return x, y


# ----------------------------------------------------------------------------- model


def _resolve_init(config: TrainConfig, cache_dir: Path) -> Path | None:
    if config.init is None:
        return None
    if is_config_hash(config.init):
        path = cache_dir / f"{config.init}.safetensors"
        if not verified_run(path):
            raise TrainingError(
                f"init {config.init[:12]}... is a config hash with no checkpoint in {cache_dir}; "
                "train that run first (make_ingredients does this for you)"
            )
        return path
    return Path(config.init).expanduser()


def _load_init(model: nn.Module, init: Path, reset_head: bool) -> None:
    """Load ``init`` into ``model``; with ``reset_head``, head tensors of another shape (a
    source with another class count) are skipped: the model keeps its own."""
    from mergelab.models import load_weights, read_checkpoint, split_model

    if not reset_head:
        load_weights(model, init)
        return
    state = read_checkpoint(init)
    prefix = split_model(model).head_prefix
    expected = model.state_dict()
    for key, value in expected.items():
        ours = tuple(value.shape)
        theirs = tuple(getattr(state.get(key), "shape", ours))
        if key.startswith(prefix) and key in state and theirs != ours:
            state[key] = value  # re-initialised below anyway
    load_weights(model, state)


def reinit_head(model: nn.Module, seed: int) -> None:
    """Re-initialise the final Linear of ``model`` (its own ``reset_parameters``) from a
    generator seeded ``seed``; torch's global random state is left as it was."""
    from mergelab.models import split_model

    head = split_model(model).head_module
    devices = [head.weight.device] if head.weight.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        head.reset_parameters()


def _build(config: TrainConfig, info: Any, init: Path | None) -> nn.Module:
    from mergelab.models import build_model

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
            _load_init(model, init, config.reset_head)
        except (ValueError, FileNotFoundError) as exc:
            raise TrainingError(f"cannot start from {init}: {exc}") from None
        if config.reset_head:
            reinit_head(model, config.seed)
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


EVAL_BATCH = 128  # measured: faster than larger batches for small CPU models


@torch.no_grad()
def val_score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, multilabel: bool) -> float:
    """Primary metric (accuracy, or mean AUROC for multi-label) of ``model`` on ``x, y``,
    in eval mode under no_grad; the model is put back in train mode afterwards."""
    from mergelab.evaluate.metrics import compute_metrics, primary_metric

    model.eval()
    try:
        logits = torch.cat([model(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
    finally:
        model.train()
    name = primary_metric(multilabel)
    targets = y.detach().to("cpu").numpy()
    values = compute_metrics(
        logits.detach().to("cpu", torch.float32).numpy(),
        targets,
        multilabel=multilabel,
        which=(name,),
    )
    return float(values[name])


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    multilabel: bool = False,
    progress: bool = True,
    desc: str | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on tensors ``x, y`` (already on the model's device).

    Without ``config.patience`` the model stays in train mode throughout (no evaluation) and
    the result is ``{"steps", "epochs", "final_loss"}``; ``final_loss`` is the mean over the
    last 10 % of the run's steps. With it, ``val`` (tensors on the model's device) is scored
    after every epoch (:func:`val_score`), training stops once the score has not improved
    for ``patience`` epochs, the best epoch's weights are loaded back (ties: the earliest),
    and the result adds ``val_curve`` (one value per epoch; a trailing partial epoch counts
    as one), ``best_epoch`` (1-based), ``epochs_run`` and ``max_steps``. The lr schedule is
    defined over the full length either way. Raises ``TrainingError`` when the loss stops
    being finite.
    """
    from tqdm.auto import tqdm

    from mergelab.data import augment

    patience = config.patience
    tracking = patience is not None or config.track_val
    if tracking and val is None:
        raise TrainingError(f"{config.arch} on {config.dataset}: patience needs val data")
    device = x.device
    n = len(x)
    total = total_steps(config, n)
    per_epoch = max(1, n // min(config.batch_size, n))
    gen = torch.Generator().manual_seed(config.data_seed)
    aug_gen = torch.Generator().manual_seed(config.data_seed + 0x5EED)
    side = min(int(x.shape[-1]), int(x.shape[-2])) if x.dim() == 4 else 0
    do_augment = config.augment and side >= AUGMENT_MIN_SIZE
    padding = config.augment_padding if config.augment_padding is not None else side // 8
    opt = _optimizer(config, model)
    amp = config.amp and device.type == "cuda"
    model.train()
    batches = _batches(n, config.batch_size, gen)
    tail: collections.deque[torch.Tensor] = collections.deque(maxlen=max(1, total // 10))
    check_every = 25
    curve: list[float] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None  # (score, epoch, state)
    steps_run = 0
    bar = tqdm(range(total), desc=desc or config.arch, disable=not progress, leave=False)
    for step in bar:
        idx = next(batches).to(device)
        xb, yb = x[idx], y[idx]
        if do_augment:
            xb = augment(xb, aug_gen, padding=padding, flip=config.augment_flip)
        lr = config.lr * lr_factor(config, step, total)
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = _loss(model(xb), yb, config.label_smoothing, multilabel)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tail.append(loss.detach())
        steps_run = step + 1
        if steps_run % check_every == 0 or steps_run == total:
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingError(
                    f"{config.arch} on {config.dataset}: loss is {value} at step {steps_run}; "
                    f"lower the learning rate (lr={config.lr})"
                )
            if progress:
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.3g}")
        if tracking and val is not None and (steps_run % per_epoch == 0 or steps_run == total):
            score = val_score(model, val[0], val[1], multilabel=multilabel)
            curve.append(score)
            epoch = len(curve)
            rank = score if math.isfinite(score) else -math.inf  # NaN (no AUROC) never wins
            if best is None or rank > best[0]:
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best = (rank, epoch, state)
            if progress:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", val=f"{score:.4f}")
            if patience is not None and epoch - best[1] >= patience:
                break
    bar.close()
    final = float(torch.stack(list(tail)).mean()) if tail else None  # no step ran: no loss
    stats: dict[str, Any] = {
        "steps": float(steps_run),
        "epochs": steps_run / per_epoch,
        "final_loss": final,
    }
    if tracking:
        if best is not None and patience is not None:
            model.load_state_dict(best[2])
        stats.update(
            {
                "max_steps": float(total),
                "val_curve": curve,
                "best_epoch": best[1] if best is not None else 0,
                "best_val": curve[best[1] - 1] if best is not None else float("nan"),
                "epochs_run": len(curve),
            }
        )
    return stats


def train_model(
    config: TrainConfig,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    threads: int | None = 1,
    desc: str | None = None,
) -> Path:
    """Train ``config`` and return ``cache_dir/<config_hash>.safetensors``.

    If that file exists and passes :func:`verified_run` it is returned at once: nothing is
    trained. The checkpoint is written atomically (a crash leaves no partial file) with the
    config and the sha256 of its tensors as metadata and a
    ``<hash>.json`` sidecar (config, loss, timing; with ``patience`` also ``val_curve``,
    ``best_epoch`` and ``epochs_run``). On the CPU the same config gives the
    same bytes; CUDA (used when present and ``device`` is None) is repeatable only as far
    as its kernels are.

    ``threads``: torch CPU threads during the run (restored after). CPU results depend on
    the thread count, so the default of 1 keeps a cached file's bytes independent of the
    machine; one thread is also the fastest for the small built-ins, and far faster than two
    when other processes share the cores. None leaves torch's setting alone.
    """
    from mergelab.io import save_state_dict
    from mergelab.io.checkpoint import ArrayCheckpoint

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_train_cache()
    key = config.config_hash()
    out = cache / f"{key}.safetensors"
    if verified_run(out):
        return out
    dev = resolve_device(device)
    cache.mkdir(parents=True, exist_ok=True)
    init = _resolve_init(config, cache)
    started = time.perf_counter()
    with _deterministic(dev.type == "cpu", threads):
        x, y, info = _train_data(config)
        val = None
        if config.patience is not None or config.track_val:
            vx, vy = _val_data(config)
            val = (vx.to(dev), vy.to(dev))
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
            val=val,
        )
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        _META_CONFIG: config.canonical_json(),
        _META_HASH: key,
        _META_INIT: config.init_identity(),
        _META_SHA: checkpoint_sha256(ArrayCheckpoint(state)),
    }
    sidecar = {
        "config_hash": key,
        "config": json.loads(config.canonical_json()),
        "init": config.init_identity(),
        "train_items": len(x),
        **stats,
        "seconds": round(time.perf_counter() - started, 3),
        "device": str(dev),
        "amp": bool(config.amp and dev.type == "cuda"),
        "torch": torch.__version__,
    }
    atomic_write_text(cache / f"{key}.json", json.dumps(sidecar, indent=2, sort_keys=True))
    save_state_dict(state, out, metadata=metadata, force=True)
    return out
