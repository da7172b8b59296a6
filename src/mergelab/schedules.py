"""Per-layer parameter schedules and name filters, read as mergekit reads them.

A recipe parameter (global, or one model's) is a number (or word), or:

* a **gradient**, a list of numbers: interpolated over the layers. A tensor of layer ``i``
  of ``n`` sits at ``t = i / (n - 1)`` (``t = 1`` when there is one layer); the list's
  ``k`` values are spread evenly over t in [0, 1] and read by linear interpolation
  between neighbours. A list of words or booleans picks ``value[int(t * (k - 1))]``;
* a list of **filters**, ``[{filter: self_attn, value: ...}, {filter: mlp, value: ...},
  {value: ...}]``: the first entry whose ``filter`` is a substring of the tensor's name
  (or is absent, or ``*``) gives the value (itself a number or a gradient). When none
  matches, the parameter falls back as if absent here: a model's own value to the global
  one, the global one to the method's default.

Tensors outside the layers (embeddings, the final norm, the LM head, a VLM's projector)
sit at ``t = 0``, as mergekit's "pre" and "post" weights do. The layer index comes from the
tensor's name: ``model.layers.N.`` (Llama, Mistral, Qwen2, Gemma, Granite, and most
decoders), ``transformer.h.N.`` (GPT-2), ``...blocks.N.`` / ``...block.N.`` / ``...layer.N.``
(ViT, T5, BERT-style encoders). The name before the index is the layer's **stack**: a VLM
has two (LLaVA: ``language_model.model.layers.`` and ``vision_tower.encoder.layers.``; in
the model layout ``model.language_model.layers.`` and ``model.vision_tower.encoder.layers.``),
an encoder-decoder two, and ``n`` counts the layers of the tensor's own stack, as mergekit
gives each module (its text decoder, vision tower, ...) its own layers. Source: mergekit
0.1.5, ``config.evaluate_setting``, ``plan.plan_slice`` and ``architecture.auto``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mergelab.errors import MergeError

__all__ = [
    "LAYER",
    "concrete",
    "evaluate",
    "is_schedule",
    "layer_of",
    "positions",
    "problems",
    "resolve",
    "stack_of",
    "stacks",
]

LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|layer)\.(\d+)\.")
Scalar = float | int | bool | str


def is_schedule(value: Any) -> bool:
    return isinstance(value, list | tuple | dict)


def layer_of(name: str) -> int | None:
    """The layer index in a tensor's name (``model.layers.7.mlp...`` -> 7), or None."""
    m = LAYER.search(name)
    return int(m.group(1)) if m else None


def stack_of(name: str) -> str | None:
    """The layer stack of a tensor: its name up to the layer index
    (``vision_tower.encoder.layers.1.mlp...`` -> ``vision_tower.encoder.layers.``), or None
    outside the layers."""
    m = LAYER.search(name)
    return name[: m.start(1)] if m else None


def stacks(names: Iterable[str]) -> dict[str, int]:
    """Each layer stack among ``names`` and its layer count (one more than its largest
    index), in order of first appearance."""
    counts: dict[str, int] = {}
    for n in names:
        m = LAYER.search(n)
        if m is not None:
            stack = n[: m.start(1)]
            counts[stack] = max(counts.get(stack, 0), int(m.group(1)) + 1)
    return counts


def _scalar(v: Any) -> bool:
    return isinstance(v, float | int | bool | str)


def problems(value: Any, where: str) -> list[str]:
    """What is wrong with a parameter's value, as one-line problems naming ``where``."""
    if _scalar(value):
        return []
    if isinstance(value, dict):
        return [f"{where}: a mapping; give filters as a list: [{{filter: NAME, value: V}}, ...]"]
    if not isinstance(value, list) or not value:
        return [f"{where}: give a number, a list of numbers, or a list of filters"]
    if all(_scalar(v) for v in value):
        return []
    out = []
    for i, cond in enumerate(value):
        if not isinstance(cond, dict) or "value" not in cond or set(cond) - {"filter", "value"}:
            out.append(f"{where}[{i}]: a filter is {{filter: NAME, value: V}} (filter optional)")
            continue
        if cond.get("filter") is not None and not isinstance(cond["filter"], str):
            out.append(f"{where}[{i}].filter: a name fragment (text)")
        inner = cond["value"]
        if not (_scalar(inner) or (isinstance(inner, list) and inner and all(map(_scalar, inner)))):
            out.append(f"{where}[{i}].value: a number or a list of numbers")
    return out


def evaluate(value: Any, tensor: str, t: float) -> Scalar | None:
    """The value of a parameter for ``tensor`` at layer position ``t`` (None: no filter
    matches; the parameter falls back)."""
    if _scalar(value):
        return value
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        scaled = t * (len(value) - 1)
        i0 = int(scaled)
        i1 = min(len(value) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * value[i0] + frac * value[i1]
    if all(_scalar(v) for v in value):
        return value[int(t * (len(value) - 1))]
    for cond in value:
        f = cond.get("filter")
        if f is None or f == "*" or f in tensor:
            return evaluate(cond["value"], tensor, t)
    return None


def positions(names: Iterable[str]) -> dict[str, float]:
    """``t`` of every tensor: its layer's place among the layers of its stack (a VLM's
    vision layer i of 24 at i / 23 beside text layers at i / 31, as mergekit's modules),
    0 outside the layers."""
    names = list(names)
    count = stacks(names)
    out = {}
    for n in names:
        stack, i = stack_of(n), layer_of(n)
        if stack is None or i is None:
            out[n] = 0.0
        else:
            out[n] = i / (count[stack] - 1) if count[stack] > 1 else 1.0
    return out


def _gradients(params: Mapping[str, Any]) -> list[str]:
    """Names of the parameters whose value varies with the layer."""

    def varies(v: Any) -> bool:
        if _scalar(v):
            return False
        if all(_scalar(x) for x in v):
            return len(v) > 1
        return any(varies(c["value"]) for c in v)

    return [k for k, v in params.items() if varies(v)]


def resolve(
    params: Mapping[str, Any],
    model_params: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    at: Mapping[str, float] | None = None,
) -> dict[str, tuple[dict[str, Scalar], list[dict[str, Scalar]]]]:
    """Per tensor name, the concrete global parameters and each model's own, with the
    schedules evaluated (a filter that matches nothing leaves the parameter out). ``at``
    gives each tensor's t instead of :func:`positions` (a layer slice: its own layers)."""
    t_of = positions(names) if at is None else dict(at)
    varying = _gradients(params) + [g for own in model_params for g in _gradients(own)]
    if varying and at is None and all(layer_of(n) is None for n in names):
        raise MergeError(
            f"{varying[0]}: a per-layer gradient, but no tensor name carries a layer index "
            f"(model.layers.N., transformer.h.N., ...; e.g. {names[0]!r}); give one number "
            f"or filters on names"
        )
    return {
        name: (
            concrete(params, name, t_of[name]),
            [concrete(own, name, t_of[name]) for own in model_params],
        )
        for name in names
    }


def concrete(params: Mapping[str, Any], name: str, t: float) -> dict[str, Scalar]:
    """``params`` with every schedule evaluated for ``name`` at ``t`` (unmatched filters
    left out)."""
    values = {k: evaluate(v, name, t) for k, v in params.items()}
    return {k: v for k, v in values.items() if v is not None}
