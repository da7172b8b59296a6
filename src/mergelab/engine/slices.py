"""Layer slices (mergekit's ``slices``): output layers stacked from ranges of the inputs'.

Each slice takes the same number of layers ``[start, stop)`` from each of its sources and
puts them, in order, after the previous slice's: one source is copied (``passthrough``),
several are merged layer by layer by the recipe's method (the source that is the recipe's
``base_model`` is the base). Layer ``start + j`` of a source becomes output layer
``offset + j``; inside a slice a per-layer schedule runs over its own layers (t = j /
(n - 1)), as in mergekit. Tensors outside the layers come from the first slice's sources
when they are embeddings (``embed``, ``wte``, ``wpe`` in the name: mergekit's "pre"
weights) and from the last slice's otherwise (final norm, LM head: "post"), at t = 0.

Every slice is a :class:`~mergelab.engine.plan.MergePlan` over renamed views of the
inputs (:class:`Renamed`), so the checks, methods and streaming are the plain merge's.

A checkpoint with more than one layer stack (a VLM's text decoder and vision tower, an
encoder-decoder) is refused: a layer range would cut every stack at once. mergekit refuses
it too ("must use modules: config syntax to work with slices"); merge such models with
``models:``, where each stack keeps its own layers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mergelab.engine.plan import MergePlan, build_plan
from mergelab.errors import MergeError
from mergelab.io.checkpoint import Checkpoint, TensorInfo
from mergelab.io.open import open_checkpoint
from mergelab.recipe import Recipe
from mergelab.schedules import LAYER, layer_of, stacks

__all__ = ["PRE_WEIGHTS", "Renamed", "layer_count", "plan_slices"]

PRE_WEIGHTS = re.compile(r"embed|(?:^|\.)wte\.|(?:^|\.)wpe\.")


class Renamed(Checkpoint):
    """Some tensors of ``inner`` under other names (``names``: new name -> inner name)."""

    def __init__(self, inner: Checkpoint, names: Mapping[str, str]) -> None:
        self.inner = inner
        self.names = dict(names)
        self.label = inner.label
        self.files = inner.files
        self.infos = {
            new: TensorInfo(new, inner.infos[old].shape, inner.infos[old].dtype)
            for new, old in self.names.items()
        }

    def read(
        self, name: str, start: int = 0, stop: int | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        return self.inner.read(self.names[name], start, stop, out)

    def close(self) -> None:
        self.inner.close()


def _renumber(name: str, layer: int) -> str:
    m = LAYER.search(name)
    assert m is not None
    return name[: m.start(1)] + str(layer) + name[m.end(1) :]


def layer_count(ckpt: Checkpoint) -> int:
    """Layers of a checkpoint: one more than the largest layer index in its names; one
    line naming the stacks when it has several (see the module's docstring)."""
    found = stacks(ckpt.infos)
    if len(found) > 1:
        listed = ", ".join(f"{stack}N ({n} layers)" for stack, n in found.items())
        raise MergeError(
            f"{ckpt.label}: {len(found)} layer stacks ({listed}); slices take layer ranges "
            f"of one stack (mergekit: modules:, which mergelab does not read): merge this "
            f"model with models: instead"
        )
    return next(iter(found.values()), 0)


def _base_index(base: str | None, paths: list[str], where: str) -> int | None:
    """Which source is the base: the slice's ``base_model``, else the recipe's."""
    if base is None:
        return None
    target = Path(base).resolve()
    found = [i for i, p in enumerate(paths) if Path(p).resolve() == target]
    if not found and where.endswith(".base_model"):
        raise MergeError(f"{where}: {base} is not one of the slice's sources")
    return found[0] if found else None


def plan_slices(recipe: Recipe, options: Mapping[str, object]) -> tuple[list[MergePlan], int]:
    """One plan per slice, then one for the embeddings and one for the other tensors
    outside the layers (those that exist); and the output's layer count."""
    assert recipe.slices
    opened: dict[str, Checkpoint] = {}
    plans: list[MergePlan] = []
    offset = 0
    try:
        for path in recipe.inputs:
            opened[path] = open_checkpoint(path, **options)
        counts = {p: layer_count(c) for p, c in opened.items()}
        for k, sl in enumerate(recipe.slices):
            lengths = {src.layer_range[1] - src.layer_range[0] for src in sl.sources}
            if len(lengths) != 1:
                raise MergeError(
                    f"slices[{k}]: every source must give the same number of layers; got "
                    + ", ".join(f"{s.model} {list(s.layer_range)}" for s in sl.sources)
                )
            n = lengths.pop()
            for j, src in enumerate(sl.sources):
                a, b = src.layer_range
                if not 0 <= a < b <= counts[src.model]:
                    raise MergeError(
                        f"slices[{k}].sources[{j}].layer_range: {[a, b]} outside the "
                        f"{counts[src.model]} layers of {src.model}"
                    )
            views = []
            for src in sl.sources:
                a = src.layer_range[0]
                ckpt = opened[src.model]
                names = {
                    _renumber(name, offset + i - a): name
                    for name in ckpt.infos
                    if (i := layer_of(name)) is not None and a <= i < src.layer_range[1]
                }
                views.append(Renamed(ckpt, names))
            t = {
                name: 1.0 if n == 1 else (layer_of(name) - offset) / (n - 1)  # type: ignore[operator]
                for name in views[0].infos
            }
            plans.append(_plan(recipe, sl, views, t, f"slices[{k}]"))
            offset += n
        first, last = recipe.slices[0], recipe.slices[-1]
        outside = [n for n in opened[first.sources[0].model].infos if layer_of(n) is None]
        for part, sl in (
            ([n for n in outside if PRE_WEIGHTS.search(n)], first),
            ([n for n in outside if not PRE_WEIGHTS.search(n)], last),
        ):
            if not part:
                continue
            views = [Renamed(opened[s.model], {n: n for n in part}) for s in sl.sources]
            plans.append(_plan(recipe, sl, views, dict.fromkeys(part, 0.0), ""))
    except BaseException:
        for ckpt in opened.values():
            ckpt.close()
        raise
    return plans, offset


def _plan(recipe, sl, views, t, where: str) -> MergePlan:
    sources, slice_params = sl.sources, sl.parameters
    paths = [s.model for s in sources]
    own = f"{where or 'slices'}.base_model" if sl.base_model is not None else ""
    base_i = _base_index(sl.base_model or recipe.base_model, paths, own)
    models = [v for i, v in enumerate(views) if i != base_i]
    if not models:
        raise MergeError(
            f"{where or 'slices'}: the base model is the slice's only source; add the models "
            f"to merge with it"
        )
    params = {**recipe.parameters, **slice_params}
    model_params = [dict(s.parameters) for i, s in enumerate(sources) if i != base_i]
    try:
        return build_plan(
            recipe.merge_method,
            models,
            None if base_i is None else views[base_i],
            params=params,
            model_params=model_params,
            dtype=recipe.output_dtype,
            recipe=recipe,
            positions=t,
        )
    except MergeError as exc:
        if not where:
            raise
        raise MergeError(f"{where}: {exc}") from None
