"""Will A and B merge well? The pairwise metrics of "Demystifying Mergeability", measured.

:func:`diagnose` computes, for two fine-tunes A and B of one base:

* weight-only metrics (no data, no torch): one pass over the checkpoints, tensor by tensor
  and chunk by chunk, accumulating float64 sums (the task vectors' Gram matrix, ||A - B||,
  per-tensor moments); for an m x n weight with m >= n <= ``gram_max`` the n x n float64
  A^T A, B^T B and A^T B are added chunk by chunk (row-aligned) and nothing else is kept;
  other 2-D weights (m < n, or over the cap) hold their two task vectors (float32) while
  their spectra are taken, so memory follows the largest tensor, not the model;
* data metrics (``data=``): activations, encoder and input gradients, each model on its own
  task's samples with its own head, and the loss barrier along the line from A to B.

The formulas are in :mod:`mergelab.analysis.mergeability` (and in the JSON's
``descriptions``). Paths or in-memory state dicts are accepted alike.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mergelab.analysis.mergeability import (
    DESCRIPTIONS,
    GramPair,
    GramSums,
    compare_activations,
    compare_vectors,
    loss_barrier,
    mean_metrics,
    pair_metrics,
    stacked_metrics,
)
from mergelab.checks import written_by
from mergelab.engine.plan import CHUNK_ELEMENTS, check_inputs
from mergelab.errors import ConfigError, MergeError
from mergelab.io.checkpoint import ArrayCheckpoint, Checkpoint, TensorInfo
from mergelab.io.dtypes import is_float, to_compute
from mergelab.io.open import open_checkpoint
from mergelab.methods.svd import matrix_shape

__all__ = [
    "METRIC_NAMES",
    "PAPER_METRICS",
    "Diagnosis",
    "data_metrics",
    "diagnose",
    "weight_metrics",
]

ModelLike = str | Path | Mapping[str, Any]

WEIGHT_METRICS = (
    "cosine",
    "l2_distance",
    "dot",
    "angle_deg",
    "magnitude_ratio",
    "effective_rank",
    "effective_rank_score",
    "stable_rank",
    "spectral_gap",
    "singular_value_ratio",
    "layerwise_effective_rank",
    "layerwise_effective_rank_score",
)
LAYER_METRICS = (
    "singular_value_overlap",
    "left_subspace_overlap",
    "right_subspace_overlap_top",
    "right_subspace_overlap_bottom",
    "interaction_overlap_top",
    "interaction_overlap_bottom",
)
DATA_METRICS = (
    "activation_l2",
    "activation_cosine",
    "activation_dot",
    "activation_magnitude_ratio",
    "encoder_gradient_cosine",
    "encoder_gradient_l2",
    "encoder_gradient_dot",
    "input_gradient_cosine",
    "input_gradient_l2",
    "input_gradient_dot",
)
PAPER_METRICS = WEIGHT_METRICS + LAYER_METRICS + DATA_METRICS
"""The 28 pairwise metrics of "Demystifying Mergeability" (the predictors' features)."""
METRIC_NAMES = (*PAPER_METRICS, "loss_barrier")
"""Every name :meth:`Diagnosis.metrics` can hold."""


@dataclass
class Diagnosis:
    """The metrics of one pair, grouped by what they need, and how they were obtained."""

    models: dict[str, str]
    weights: dict[str, float]
    layers: dict[str, Any]
    weight_stats: list[dict[str, Any]]
    data: dict[str, float] | None = None
    barrier: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Every metric by name, in one flat map (features for a predictor)."""
        out = {**self.weights}
        out.update({k: v for k, v in self.layers.items() if k in LAYER_METRICS})
        out.update(self.data or {})
        if self.barrier is not None:
            out["loss_barrier"] = self.barrier["loss_barrier"]
        return out

    def weight_stats_summary(self) -> dict[str, float]:
        """Means over tensors of avg/larger max |w| and avg/larger variance, and of the
        variance of the average over the independent-weights prediction (s_A^2 + s_B^2) / 4."""
        rows = self.weight_stats

        def ratio(num: str, den: str) -> float:
            values = [r[num] / r[den] for r in rows if r[den] > 0]
            return float(np.mean(values)) if values else math.nan

        return {
            "tensors": len(rows),
            "max_abs_avg_over_larger": ratio("avg_max_abs", "max_abs_largest"),
            "var_avg_over_larger": ratio("avg_var", "var_largest"),
            "var_avg_over_independent": ratio("avg_var", "var_independent"),
        }

    def to_dict(self) -> dict[str, Any]:
        used = self.metrics()
        return {
            **written_by("diagnose"),
            "models": self.models,
            "settings": self.settings,
            "weights": self.weights,
            "layers": self.layers,
            "data": self.data,
            "barrier": self.barrier,
            "weight_stats": {"summary": self.weight_stats_summary(), "tensors": self.weight_stats},
            "skipped": self.skipped,
            "notes": self.notes,
            "descriptions": {k: DESCRIPTIONS[k] for k in DESCRIPTIONS if k in used},
        }

    def to_json(self) -> str:
        return json.dumps(_jsonable(self.to_dict()), indent=2) + "\n"

    def table(self) -> str:
        """The readable report: one line per metric, grouped by what it needs."""
        lines = [f"A     {self.models['a']}", f"B     {self.models['b']}"]
        lines.append(f"base  {self.models['base']}")
        lines += ["", "weights only (tau_X = X - base, the whole model as one vector)"]
        lines += [_line(k, self.weights[k]) for k in WEIGHT_METRICS]
        lay = self.layers
        lines += [
            "",
            f"weights only, per 2-D weight (mean over {lay['matrices']} weights; "
            f"top {self.settings['spectrum_k']} singular values, k = "
            f"{self.settings['subspace_k']} singular vectors)",
        ]
        lines += [_line(k, lay[k]) for k in LAYER_METRICS]
        if self.data is not None:
            lines += ["", f"with data ({self.settings['data_note']})"]
            lines += [_line(k, self.data[k]) for k in DATA_METRICS]
        stats = self.weight_stats_summary()
        lines += [
            "",
            f"weight statistics (per tensor, mean over {stats['tensors']} tensors; "
            "avg = (A + B) / 2)",
            _line("max|avg| / larger max|w|", stats["max_abs_avg_over_larger"]),
            _line("var(avg) / larger var(w)", stats["var_avg_over_larger"]),
            _line("var(avg) / ((s_A^2 + s_B^2) / 4)", stats["var_avg_over_independent"]),
        ]
        if self.barrier is not None:
            b = self.barrier
            lines += ["", f"loss barrier ({b['mode']})", _line("loss_barrier", b["loss_barrier"])]
            curve = "  ".join(
                f"{a:g}:{v:.4f}" for a, v in zip(b["alphas"], b["losses"], strict=True)
            )
            lines.append(f"  loss(alpha)  {curve}")
        for text in self.skipped:
            lines.append(f"skipped: {text}")
        for text in self.notes:
            lines.append(f"note: {text}")
        return "\n".join(lines)


def _line(name: str, value: float) -> str:
    return f"  {name:<34} {_fmt(value)}"


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.4e}"
    return f"{value:.6f}"


def _jsonable(value: Any) -> Any:
    """NaN is not JSON: written as null."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


# -- weights only -----------------------------------------------------------------------------


@dataclass
class _Headers:
    """A checkpoint's label and the headers of the tensors compared (for ``check_inputs``)."""

    label: str
    infos: dict[str, TensorInfo]


class _Moments:
    """max |x|, mean and population variance of a tensor read in chunks (Chan et al.'s
    pairwise update, float64)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2, self.max_abs = 0, 0.0, 0.0, 0.0

    def add(self, x: np.ndarray) -> None:
        if not x.size:
            return
        n, mean = x.size, float(x.mean())
        m2 = float(((x - mean) ** 2).sum())
        delta, total = mean - self.mean, self.n + n
        self.m2 += m2 + delta * delta * self.n * n / total
        self.mean += delta * n / total
        self.n = total
        self.max_abs = max(self.max_abs, float(np.abs(x).max()))

    @property
    def var(self) -> float:
        return self.m2 / self.n if self.n else 0.0


def _stats_row(name: str, numel: int, a: _Moments, b: _Moments, avg: _Moments) -> dict[str, Any]:
    """The columns of :func:`mergelab.analysis.weight_stats.layer_stats` for two models."""
    independent = (a.var + b.var) / 4
    return {
        "layer": name,
        "numel": numel,
        "max_abs": (a.max_abs, b.max_abs),
        "var": (a.var, b.var),
        "avg_max_abs": avg.max_abs,
        "avg_var": avg.var,
        "max_abs_largest": max(a.max_abs, b.max_abs),
        "var_largest": max(a.var, b.var),
        "var_independent": independent,
        "var_ratio": avg.var / independent if independent > 0 else math.nan,
    }


def _open(source: ModelLike | Checkpoint, label: str, options: Mapping[str, Any]) -> Checkpoint:
    if isinstance(source, Checkpoint):
        return source
    if isinstance(source, Mapping):
        return ArrayCheckpoint(source, label)
    return open_checkpoint(source, **options)


def _read(ckpt: Checkpoint, name: str, start: int, stop: int) -> np.ndarray:
    raw = ckpt.read(name, start, stop)
    out = to_compute(raw, ckpt.infos[name].dtype, np.empty(raw.size, dtype=np.float64))
    if out.size and not math.isfinite(float(out.sum())) and not np.isfinite(out).all():
        raise MergeError(f"{ckpt.label}: tensor {name!r} contains NaN or Inf")
    return out


def weight_metrics(
    a: ModelLike | Checkpoint,
    b: ModelLike | Checkpoint,
    base: ModelLike | Checkpoint,
    *,
    exclude: str | None = None,
    spectrum_k: int = 100,
    subspace_k: int = 10,
    gram_max: int = 1024,
    key: str | None = None,
    strip_prefix: str | None = None,
) -> tuple[dict[str, float], dict[str, Any], list[dict[str, Any]], list[str]]:
    """The weight-only metrics: (whole-model metrics, per-layer means and counts, weight
    statistics per tensor, notes). One streaming pass; checkpoints opened here are closed."""
    if spectrum_k < 1 or subspace_k < 1:
        raise ConfigError(f"spectrum_k and subspace_k must be >= 1, got {spectrum_k}, {subspace_k}")
    if gram_max < 0:
        raise ConfigError(f"gram_max must be >= 0, got {gram_max}")
    try:
        pattern = re.compile(exclude) if exclude else None
    except re.error as exc:
        raise ConfigError(f"--exclude {exclude!r}: not a regular expression ({exc})") from None
    options = {"key": key, "strip_prefix": strip_prefix}
    opened: list[Checkpoint] = []
    try:
        ckpts = []
        for source, label in ((a, "A"), (b, "B"), (base, "base")):
            ckpt = _open(source, label, options)
            if ckpt is not source:
                opened.append(ckpt)
            ckpts.append(ckpt)
        return _weight_pass(*ckpts, pattern, spectrum_k, subspace_k, gram_max)
    finally:
        for ckpt in opened:
            ckpt.close()


def _weight_pass(
    ca: Checkpoint,
    cb: Checkpoint,
    cbase: Checkpoint,
    pattern: re.Pattern[str] | None,
    spectrum_k: int,
    subspace_k: int,
    gram_max: int,
) -> tuple[dict[str, float], dict[str, Any], list[dict[str, Any]], list[str]]:
    def kept(ckpt: Checkpoint) -> _Headers:
        infos = {n: i for n, i in ckpt.infos.items() if not (pattern and pattern.search(n))}
        return _Headers(ckpt.label, infos)

    try:
        check_inputs([kept(ca), kept(cb)], kept(cbase))  # type: ignore[list-item,arg-type]
    except MergeError as exc:
        hint = "" if pattern else " (--exclude REGEX leaves task-specific tensors, e.g. heads, out)"
        raise MergeError(f"{exc}{hint}") from None
    names = [n for n, i in kept(ca).infos.items() if is_float(i.dtype)]
    if not names:
        raise MergeError(f"{ca.label}: no floating-point tensors to compare")
    total = GramSums()
    tensor_ranks: list[float] = []
    layer_rows: list[dict[str, float]] = []
    stats: list[dict[str, Any]] = []
    zero = 0
    bottom = {"bottom": 0, "rank_deficient": 0, "over_cap": 0}
    pair: GramPair | None = None
    taus: list[np.ndarray] | None = None
    for name in names:
        pair = taus = None  # the last tensor's, freed before this one's are allocated
        info = ca.infos[name]
        numel = info.numel
        shape = matrix_shape(name, info.shape, "", "", True)
        matrix = shape if shape is not None and min(shape) >= 2 else None
        # m >= n under the cap: A^T A, B^T B, A^T B from row blocks, nothing held; else the
        # two task vectors are held (in float32 unless a checkpoint stores float64).
        streamed = matrix is not None and matrix[1] <= min(matrix[0], gram_max)
        pair = GramPair(matrix[1]) if streamed and matrix else None
        dtype = (
            np.float64 if "F64" in {c.infos[name].dtype for c in (ca, cb, cbase)} else np.float32
        )
        taus = [np.empty(numel, dtype), np.empty(numel, dtype)] if matrix and not pair else None
        step = max(1, CHUNK_ELEMENTS // matrix[1]) * matrix[1] if pair else CHUNK_ELEMENTS
        sums, moments = GramSums(), [_Moments(), _Moments(), _Moments()]
        for start in range(0, numel, step):
            stop = min(start + step, numel)
            xa, xb, xbase = (_read(c, name, start, stop) for c in (ca, cb, cbase))
            moments[0].add(xa)
            moments[1].add(xb)
            moments[2].add((xa + xb) / 2)
            xa -= xbase
            xb -= xbase
            sums.add(xa, xb)
            if pair is not None:
                pair.add(xa, xb)
            if taus is not None:
                taus[0][start:stop] = xa
                taus[1][start:stop] = xb
        total += sums
        stats.append(_stats_row(name, numel, *moments))
        if sums.aa > 0 or sums.bb > 0:
            tensor_ranks.append(stacked_metrics(sums.aa, sums.bb, sums.ab)["effective_rank"])
        if matrix is None:
            continue
        if sums.aa == 0 or sums.bb == 0:
            zero += 1
            continue
        if pair is not None:
            row, determined = pair.metrics(
                transposed=False, spectrum_k=spectrum_k, subspace_k=subspace_k
            )
            how = "bottom" if determined else "rank_deficient"
        else:
            assert taus is not None
            row, how = pair_metrics(
                taus[0].reshape(matrix),
                taus[1].reshape(matrix),
                spectrum_k=spectrum_k,
                subspace_k=subspace_k,
                gram_max=gram_max,
            )
        bottom[how] += 1
        layer_rows.append(row)
    weights = {**compare_vectors(total.aa, total.bb, total.ab, total.dd)}
    weights.update(stacked_metrics(total.aa, total.bb, total.ab))
    layerwise = float(np.mean(tensor_ranks)) if tensor_ranks else math.nan
    weights["layerwise_effective_rank"] = layerwise
    weights["layerwise_effective_rank_score"] = 2.0 - layerwise
    layers: dict[str, Any] = mean_metrics(layer_rows, list(LAYER_METRICS))
    layers.update(
        matrices=len(layer_rows),
        bottom_matrices=bottom["bottom"],
        bottom_rank_deficient=bottom["rank_deficient"],
        bottom_over_cap=bottom["over_cap"],
        zero_skipped=zero,
    )
    notes = []
    if bottom["over_cap"]:
        notes.append(
            f"bottom-k overlaps: {bottom['over_cap']} of {len(layer_rows)} 2-D weights skipped "
            f"(min(m, n) > --gram-max {gram_max}; their top-k metrics use a randomized SVD); "
            f"raise --gram-max to include them"
        )
    if bottom["rank_deficient"]:
        notes.append(
            f"bottom-k overlaps: {bottom['rank_deficient']} of {len(layer_rows)} 2-D weights "
            f"left out: a task vector is rank-deficient there (more than k singular values "
            f"below 1e-5 s_1), so its bottom-k singular vectors are not determined"
        )
    for label, norm in ((ca.label, total.aa), (cb.label, total.bb)):
        if norm == 0:
            notes.append(
                f"{label} equals the base in every tensor compared (its task vector is 0: is "
                f"--base one of the models?); cosine, angle and the per-layer overlaps are n/a"
            )
    if zero:
        notes.append(f"{zero} 2-D weight(s) left out of the per-layer metrics: a task vector is 0")
    if not layer_rows:
        notes.append("no 2-D weights with non-zero task vectors: per-layer metrics are n/a")
    if pattern is not None:
        left = len(ca.infos) - len(kept(ca).infos)
        notes.append(f"--exclude '{pattern.pattern}': {left} tensor(s) of A left out")
    return weights, layers, stats, notes


# -- with data --------------------------------------------------------------------------------


def _infer_arch(source: ModelLike) -> str | None:
    """The architecture a mergelab-trained checkpoint records in its metadata, if any."""
    if isinstance(source, Mapping) or not str(source).endswith(".safetensors"):
        return None
    from mergelab.train.trainer import read_train_config

    try:
        return read_train_config(source).arch
    except Exception:  # not trained by mergelab: the caller asks for --arch
        return None


def _state_dict(source: ModelLike, label: str) -> dict[str, Any]:
    import torch

    from mergelab.models import read_checkpoint

    try:
        state = read_checkpoint(source)
    except FileNotFoundError as exc:
        raise MergeError(f"{label}: {exc}") from None
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}


@dataclass
class _Task:
    """One model on its own task: the model, its split in two, and its samples."""

    label: str
    state: dict[str, Any]
    model: Any
    fh: Any
    x: Any
    y: Any
    multilabel: bool


def _build(arch: str, state: Mapping[str, Any], label: str, info: Any, head: str | None) -> Any:
    from mergelab.models import build_model, load_weights
    from mergelab.models.infer import read_input

    facts = read_input(arch, {k: tuple(v.shape) for k, v in state.items()}, head=head)
    classes = info.num_classes
    if facts.num_classes is not None and facts.num_classes.value != classes:
        raise ConfigError(
            f"{label} has {facts.num_classes} ({facts.num_classes.value} classes), but its "
            f"data {info.name} has {classes}; give each model its own task with --data A B"
        )
    chans = facts.in_chans.value if facts.in_chans is not None else info.channels
    size = facts.img_size.value if facts.img_size is not None else info.image_size[0]
    try:
        model = build_model(arch, classes, in_chans=chans, img_size=size)
    except (ValueError, TypeError, ImportError) as exc:
        raise ConfigError(f"cannot build {arch!r}: {exc}") from None
    try:
        load_weights(model, state)
    except ValueError as exc:
        detail = str(exc).partition(" does not fit ")[2].partition(": ")[2]
        raise MergeError(f"{label} does not fit {arch}: {detail}") from None
    return model.eval(), chans, size


def _loss(logits: Any, y: Any, multilabel: bool) -> Any:
    """Per-sample loss: cross-entropy, or binary cross-entropy averaged over labels."""
    import torch.nn.functional as F

    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, y.float(), reduction="none").mean(1)
    return F.cross_entropy(logits, y, reduction="none")


def _batches(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def _gradients(task: _Task, batch_size: int, device: Any) -> tuple[np.ndarray, np.ndarray]:
    """(encoder gradient of the mean loss, mean per-sample input gradient), float64."""
    import torch

    model, n = task.model, len(task.x)
    prefix = task.fh.head_prefix
    encoder = [(k, p) for k, p in model.named_parameters() if not k.startswith(prefix)]
    model.zero_grad(set_to_none=True)
    input_grad = None
    for part in _batches(n, batch_size):
        x = task.x[part].to(device).requires_grad_(True)
        loss = _loss(model(x), task.y[part].to(device), task.multilabel).sum() / n
        loss.backward()
        g = x.grad.sum(0)
        input_grad = g if input_grad is None else input_grad + g
    enc = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).detach().double().cpu().ravel()
        for _, p in encoder
    ]
    model.zero_grad(set_to_none=True)
    assert input_grad is not None
    return torch.cat(enc).numpy(), input_grad.detach().double().cpu().numpy().ravel()


def _activations(task: _Task, x: Any, layer: str | None, batch_size: int, device: Any) -> Any:
    """Mean over samples (and positions) of the chosen layer's output."""
    import torch

    captured: list[Any] = []
    hook = None
    if layer is not None:
        try:
            module = task.model.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in task.model.named_modules() if n][:12]
            raise ConfigError(
                f"--layer {layer!r}: no such module in the model (e.g. {', '.join(names)})"
            ) from None

        def grab(mod: Any, inputs: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)

        hook = module.register_forward_hook(grab)
    total = None
    try:
        with torch.no_grad():
            for part in _batches(len(x), batch_size):
                xb = x[part].to(device)
                if layer is None:
                    out = task.fh.features(xb)
                else:
                    captured.clear()
                    task.model(xb)
                    out = captured[0]
                out = out.double()
                if out.ndim == 4:  # (B, C, H, W): average the positions
                    out = out.mean((2, 3))
                elif out.ndim == 3:  # (B, tokens, D)
                    out = out.mean(1)
                s = out.reshape(len(xb), -1).sum(0)
                total = s if total is None else total + s
    finally:
        if hook is not None:
            hook.remove()
    return (total / len(x)).cpu().numpy()


def _mean_loss(model: Any, x: Any, y: Any, multilabel: bool, batch_size: int, device: Any) -> float:
    import torch

    total = 0.0
    with torch.no_grad():
        for part in _batches(len(x), batch_size):
            out = model(x[part].to(device))
            total += float(_loss(out, y[part].to(device), multilabel).double().sum())
    return total / len(x)


def _barrier(
    ta: _Task, tb: _Task, one_task: bool, alphas: np.ndarray, batch_size: int, device: Any
) -> dict[str, Any]:
    """Loss along (1 - alpha) A + alpha B: the whole model on one task, else the encoder
    interpolated under each task's own head, the two tasks' losses averaged."""
    head_a = ta.fh.head_prefix
    sa, sb = ta.state, tb.state
    shared = [k for k in sa if sa[k].is_floating_point() and (one_task or not k.startswith(head_a))]
    for k in shared:
        if k not in sb or tuple(sb[k].shape) != tuple(sa[k].shape):
            raise MergeError(f"barrier: {k!r} differs in shape or is missing in {tb.label}")
    losses = []
    for alpha in alphas:
        mix = {k: (1 - float(alpha)) * sa[k] + float(alpha) * sb[k] for k in shared}
        values = []
        for task in (ta,) if one_task else (ta, tb):
            own = {k: v for k, v in task.state.items() if k not in mix}
            task.model.load_state_dict({**own, **mix})
            values.append(
                _mean_loss(task.model, task.x, task.y, task.multilabel, batch_size, device)
            )
        losses.append(float(np.mean(values)))
    for task in (ta, tb):  # put the models' own weights back
        task.model.load_state_dict(task.state)
    mode = (
        "whole model interpolated, loss on the shared data"
        if one_task
        else "encoder interpolated, each task scored with its own model's head, losses averaged"
    )
    return {
        "mode": mode,
        "alphas": [float(a) for a in alphas],
        "losses": losses,
        "loss_barrier": loss_barrier(alphas, np.array(losses)),
    }


def _check_data_options(
    a: ModelLike,
    data: str | Sequence[str],
    arch: str | None,
    samples: int,
    alphas: int,
    batch_size: int,
    label: str,
) -> tuple[list[str], str]:
    """(dataset specs, architecture) once the data options are known to be usable: checked
    before the weight pass, which takes minutes on a large model."""
    from mergelab.data import known_datasets, parse_spec
    from mergelab.data.errors import DatasetError
    from mergelab.data.subset import split_subset

    specs = [data] if isinstance(data, str) else list(data)
    if len(specs) not in (1, 2):
        raise ConfigError(
            f"--data: give one dataset spec, or two (one per model); got {len(specs)}"
        )
    for spec in specs:
        name = parse_spec(split_subset(spec)[0])[0]
        if name not in known_datasets():
            raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(known_datasets())}")
    if samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {samples}")
    if alphas < 2:
        raise ConfigError(f"--alphas must be >= 2 (0 and 1 at least), got {alphas}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if arch is None:
        arch = _infer_arch(a) if not isinstance(a, Mapping) else None
        if arch is None:
            raise ConfigError(
                f"--arch is needed for the data metrics: {label} does not record its "
                f"architecture (e.g. --arch cnn; see `mergelab compare --help` for the names)"
            )
    return specs, arch


def data_metrics(
    a: ModelLike,
    b: ModelLike,
    *,
    data: str | Sequence[str],
    arch: str | None = None,
    heads: Sequence[ModelLike] | None = None,
    head: str | None = None,
    samples: int = 256,
    seed: int = 0,
    split: str = "val",
    layer: str | None = None,
    alphas: int = 11,
    batch_size: int = 256,
    device: str | None = None,
    labels: Sequence[str] = ("A", "B"),
) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
    """(data metrics, loss barrier, settings) of models A and B, each on its own task's
    samples (``data`` = one spec for both, or one per model), on the CPU unless CUDA is
    present. ``heads`` adds each model's head tensors (backbone-only checkpoints)."""
    import torch

    from mergelab.data import ImageSpec, load_dataset
    from mergelab.device import choose_device
    from mergelab.models import split_model

    specs, arch = _check_data_options(a, data, arch, samples, alphas, batch_size, labels[0])
    dev = choose_device(device)
    torch.manual_seed(seed)
    splits = [load_dataset(s, seed=seed) for s in specs]
    tasks: list[_Task] = []
    shape: tuple[int, int] | None = None
    for i, (source, label) in enumerate(zip((a, b), labels, strict=True)):
        state = _state_dict(source, label)
        if heads is not None:
            state.update(_state_dict(heads[i], f"head of {label}"))
        ds = splits[min(i, len(splits) - 1)]
        model, chans, size = _build(arch, state, label, ds.info, head)
        if shape is None:
            shape = (chans, size)
        info = ds.info
        native = (info.channels, info.image_size[0]) == shape and len(set(info.image_size)) == 1
        image = None if native else ImageSpec(channels=shape[0], size=shape[1])
        part = ds.split(split, image)
        n = len(part)
        # One task: both models on the same draw; two: each task its own, both seeded.
        rng = np.random.default_rng(seed + (i if len(specs) == 2 else 0))
        idx = np.sort(rng.choice(n, size=min(samples, n), replace=False)).tolist()
        x, y = part.get_batch(idx)
        model = model.to(dev)
        try:
            fh = split_model(model, head)
        except ValueError as exc:
            raise ConfigError(f"{arch}: {exc}") from None
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        tasks.append(_Task(label, state, model, fh, x, y, info.multilabel))
    ta, tb = tasks
    one_task = len(specs) == 1
    x_all = ta.x if one_task else torch.cat([ta.x, tb.x])
    act = compare_activations(
        _activations(ta, x_all, layer, batch_size, dev),
        _activations(tb, x_all, layer, batch_size, dev),
    )
    (ga, ha), (gb, hb) = (_gradients(t, batch_size, dev) for t in tasks)
    if ga.shape != gb.shape:
        raise MergeError(
            f"encoder gradients differ in size ({ga.size} vs {gb.size}): A and B are not one "
            f"architecture below their heads"
        )
    enc, inp = compare_activations(ga, gb), compare_activations(ha, hb)
    metrics = {
        "activation_l2": act["l2_distance"],
        "activation_cosine": act["cosine"],
        "activation_dot": act["dot"],
        "activation_magnitude_ratio": act["magnitude_ratio"],
        "encoder_gradient_cosine": enc["cosine"],
        "encoder_gradient_l2": enc["l2_distance"],
        "encoder_gradient_dot": enc["dot"],
        "input_gradient_cosine": inp["cosine"],
        "input_gradient_l2": inp["l2_distance"],
        "input_gradient_dot": inp["dot"],
    }
    same_head = tuple(ta.fh.head_module.weight.shape) == tuple(tb.fh.head_module.weight.shape)
    barrier = _barrier(
        ta, tb, one_task and same_head, np.linspace(0.0, 1.0, alphas), batch_size, dev
    )
    where = specs[0] if one_task else f"A on {specs[0]}, B on {specs[1]}"
    settings = {
        "arch": arch,
        "data": specs,
        "split": split,
        "samples": [len(ta.x), len(tb.x)],
        "seed": seed,
        "layer": layer or "penultimate features",
        "device": str(dev),
        "data_note": f"{where}, {split} split, {len(ta.x)} + {len(tb.x)} samples, "
        f"layer: {layer or 'penultimate features'}, device {dev}",
    }
    return metrics, barrier, settings


# -- both -------------------------------------------------------------------------------------


def diagnose(
    a: ModelLike,
    b: ModelLike,
    base: ModelLike,
    *,
    data: str | Sequence[str] | None = None,
    arch: str | None = None,
    heads: Sequence[ModelLike] | None = None,
    head: str | None = None,
    exclude: str | None = None,
    samples: int = 256,
    seed: int = 0,
    split: str = "val",
    layer: str | None = None,
    alphas: int = 11,
    batch_size: int = 256,
    device: str | None = None,
    spectrum_k: int = 100,
    subspace_k: int = 10,
    gram_max: int = 1024,
    key: str | None = None,
    strip_prefix: str | None = None,
) -> Diagnosis:
    """Every pairwise metric of A and B (fine-tunes of ``base``): paths (safetensors, torch
    files, folders) or state dicts. The data metrics and the barrier need ``data`` (and an
    ``arch``, unless A records it); without data they are listed in ``skipped``."""
    if heads is not None and len(heads) != 2:
        raise ConfigError(f"--heads: give two head checkpoints (A's, B's), got {len(heads)}")
    if data is not None:
        _check_data_options(a, data, arch, samples, alphas, batch_size, "A")
    weights, layers, stats, notes = weight_metrics(
        a,
        b,
        base,
        exclude=exclude,
        spectrum_k=spectrum_k,
        subspace_k=subspace_k,
        gram_max=gram_max,
        key=key,
        strip_prefix=strip_prefix,
    )
    settings: dict[str, Any] = {
        "spectrum_k": spectrum_k,
        "subspace_k": subspace_k,
        "gram_max": gram_max,
        "exclude": exclude,
    }
    result = Diagnosis(
        models={"a": _name(a, "A"), "b": _name(b, "B"), "base": _name(base, "base")},
        weights=weights,
        layers=layers,
        weight_stats=stats,
        settings=settings,
        notes=notes,
    )
    if data is None:
        result.skipped += [
            "activation metrics (l2, cosine, dot, magnitude ratio): need data; pass --data SPEC "
            "(or --data SPEC_A SPEC_B) and --arch",
            "encoder- and input-gradient metrics (cosine, l2, dot): need data; pass --data and "
            "--arch",
            "loss barrier along (1 - alpha) A + alpha B: needs data; pass --data and --arch",
        ]
        return result
    result.data, result.barrier, more = data_metrics(
        a,
        b,
        data=data,
        arch=arch,
        heads=heads,
        head=head,
        samples=samples,
        seed=seed,
        split=split,
        layer=layer,
        alphas=alphas,
        batch_size=batch_size,
        device=device,
    )
    settings.update(more)
    return result


def _name(source: ModelLike, label: str) -> str:
    return f"<{label} state dict>" if isinstance(source, Mapping) else str(source)
