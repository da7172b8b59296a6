"""Weights as templates ("Rethinking Weight-Averaged Model-merging", perspective 1).

A linear classifier scores class c by the dot product of its row ``W[c]`` with the image,
so each row, reshaped to the image, is a template of what the class looks like; trained
rows correlate with the class-mean images. Averaging two classifiers averages their
templates (a Mixup in weight space), and first-layer conv kernels can be looked at the same
way. Everything here returns NumPy arrays ready for ``imshow``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "averaged_templates",
    "class_means",
    "correlation_matrix",
    "half_mixed_templates",
    "identified",
    "kernel_grid",
    "linear_templates",
    "merged_templates",
    "own_class_margin",
    "template_correlation",
    "tile_images",
]


def _array(value: Any) -> np.ndarray:
    """A torch tensor or array-like as a float64 NumPy array (detached, on the CPU)."""
    if hasattr(value, "detach"):
        value = value.detach().to("cpu").double().numpy()
    return np.asarray(value, dtype=np.float64)


def linear_templates(weight: Any, image_shape: Sequence[int]) -> np.ndarray:
    """Rows of a linear classifier ``weight`` [C, D] as images [C, ch, H, W]; ``D`` must be
    ``ch * H * W`` (the model flattens images in that order, as ``x.flatten(1)`` does)."""
    w = _array(weight)
    shape = tuple(int(s) for s in image_shape)
    if w.ndim != 2:
        raise ValueError(f"expected a [classes, features] weight, got shape {w.shape}")
    if len(shape) != 3:
        raise ValueError(f"image_shape must be (channels, H, W), got {shape}")
    if w.shape[1] != math.prod(shape):
        raise ValueError(
            f"weight has {w.shape[1]} inputs per class, image {shape} has {math.prod(shape)}"
        )
    return w.reshape(w.shape[0], *shape)


def class_means(split: Any, num_classes: int | None = None) -> np.ndarray:
    """Mean image per class [C, ch, H, W] of a dataset split of (image, int target).

    ``split`` is a ``SplitDataset`` (or any map-style dataset), or an ``(X, y)`` pair of
    tensors/arrays. Images are taken as served (normalised, as the model saw them). A class
    with no images gets NaN.
    """
    if isinstance(split, tuple) and len(split) == 2:
        x, y = _array(split[0]), _array(split[1])
    else:
        from mergelab.data import as_tensors

        xt, yt = as_tensors(split)
        x, y = _array(xt), _array(yt)
    if y.ndim != 1:
        raise ValueError("class_means needs single-label targets (one class per image)")
    labels = y.astype(np.int64)
    c = int(num_classes) if num_classes is not None else int(labels.max()) + 1
    out = np.full((c, *x.shape[1:]), np.nan)
    for k in range(c):
        mask = labels == k
        if mask.any():
            out[k] = x[mask].mean(axis=0)
    return out


def template_correlation(templates: Any, means: Any) -> np.ndarray:
    """Pearson r per class between each template and the matching mean image (flattened);
    NaN where either is constant."""
    t = _array(templates)
    m = _array(means)
    if t.shape != m.shape:
        raise ValueError(f"templates {t.shape} and means {m.shape} differ in shape")
    a = t.reshape(len(t), -1)
    b = m.reshape(len(m), -1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / denom
    return np.where(denom > 0, r, np.nan)


def correlation_matrix(templates: Any, means: Any) -> np.ndarray:
    """Pearson r of every template (rows) with every mean image (columns), [C, C'];
    NaN where either is constant. Row i's arg-max is the class template i looks most like."""
    a = _array(templates)
    b = _array(means)
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"templates have {a.shape[1]} values each, means {b.shape[1]}")
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    na = np.sqrt((a * a).sum(axis=1))
    nb = np.sqrt((b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a @ b.T) / np.outer(na, nb)
    return np.where(np.outer(na, nb) > 0, r, np.nan)


def own_class_margin(templates: Any, means: Any) -> np.ndarray:
    """Per template i: its correlation with class mean i minus its mean correlation with
    the other class means. Class-specific resemblance: an image that looks like every
    class a little (the grand mean) has margins that average exactly 0."""
    r = correlation_matrix(templates, means)
    c = len(r)
    if c < 2 or r.shape[1] != c:
        raise ValueError(f"need a square correlation matrix of >= 2 classes, got {r.shape}")
    own = np.diag(r)
    others = (np.nansum(r, axis=1) - own) / (c - 1)
    return own - others


def identified(templates: Any, means: Any) -> np.ndarray:
    """1 for each template whose best-correlated mean image is its own class's (row i
    against column i), else 0; a NaN row counts as not identified."""
    r = correlation_matrix(templates, means)
    best = np.argmax(np.where(np.isnan(r), -np.inf, r), axis=1)
    ok = ~np.isnan(r).all(axis=1)
    return ((best == np.arange(len(r))) & ok).astype(np.uint8)


def half_mixed_templates(templates: Any) -> np.ndarray:
    """Class i averaged with class i + C/2, for i < C/2: the paper's "Mixup in weight space"
    (a classifier for the first half of the classes averaged with one for the second).
    Works on any [C, ...] array, e.g. class means, to get the matching mixed images."""
    t = _array(templates)
    c = len(t)
    if c % 2:
        raise ValueError(f"need an even number of classes to pair halves, got {c}")
    half = c // 2
    return (t[:half] + t[half:]) / 2.0


def averaged_templates(*templates: Any) -> np.ndarray:
    """Element-wise mean of the templates of separately trained classifiers (what a uniform
    soup of their linear layers holds)."""
    if not templates:
        raise ValueError("give at least one set of templates")
    arrays = [_array(t) for t in templates]
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"template shapes differ: {[a.shape for a in arrays]}")
    return np.mean(arrays, axis=0)


def merged_templates(templates: Any, other: Any | None = None) -> np.ndarray:
    """(a) ``other`` None: the halves of one classifier mixed (:func:`half_mixed_templates`);
    (b) else the average of two separately trained classifiers (:func:`averaged_templates`)."""
    if other is None:
        return half_mixed_templates(templates)
    return averaged_templates(templates, other)


def _normalise(tile: np.ndarray) -> np.ndarray:
    lo, hi = float(np.nanmin(tile)), float(np.nanmax(tile))
    if not hi > lo:
        return np.full_like(tile, 0.5)
    return (tile - lo) / (hi - lo)


def tile_images(
    images: Any,
    *,
    ncols: int | None = None,
    gap: int = 1,
    fill: float = 1.0,
    normalize: bool = True,
) -> np.ndarray:
    """Tile [N, ch, h, w] images into one picture with ``gap``-pixel lines of ``fill``.

    Each image is min-max scaled to [0, 1] on its own when ``normalize`` (a constant one
    becomes 0.5), so weak and strong kernels are equally visible. One channel gives a 2-D
    array; three give [H, W, 3] (RGB); any other count is averaged over channels.
    ``ncols`` defaults to ceil(sqrt(N)).
    """
    x = _array(images)
    if x.ndim != 4:
        raise ValueError(f"expected [N, channels, h, w], got shape {x.shape}")
    n, ch, h, w = x.shape
    if ch not in (1, 3):
        x = x.mean(axis=1, keepdims=True)
        ch = 1
    cols = ncols or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    height = rows * h + (rows - 1) * gap
    width = cols * w + (cols - 1) * gap
    grid = np.full((height, width, ch), fill, dtype=np.float64)
    for i in range(n):
        tile = x[i].transpose(1, 2, 0)
        if normalize:
            tile = _normalise(tile)
        r, c = divmod(i, cols)
        top, left = r * (h + gap), c * (w + gap)
        grid[top : top + h, left : left + w] = tile
    return grid[..., 0] if ch == 1 else grid


def kernel_grid(conv_weight: Any, *, ncols: int | None = None, gap: int = 1) -> np.ndarray:
    """First-layer conv kernels [O, I, k, k] as one picture (see :func:`tile_images`): each
    kernel normalised on its own, tiled with 1-px gaps; 2-D for grey input, RGB for 3."""
    w = _array(conv_weight)
    if w.ndim != 4:
        raise ValueError(f"expected a conv weight [out, in, k, k], got shape {w.shape}")
    return tile_images(w, ncols=ncols, gap=gap)
