"""Planning: check everything that headers tell (names, shapes, dtypes, base, parameters)
and decide, per tensor, what the merge will do, before any tensor data is read.

The chunk size lives here (``CHUNK_ELEMENTS``): execution reads it when it runs, and the
dry run's peak-memory estimate counts it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from mergelab import schedules
from mergelab.checks import finite_number
from mergelab.errors import MergeError
from mergelab.io.checkpoint import Checkpoint
from mergelab.io.dtypes import (
    STORAGE,
    compute_dtype,
    dtype_name,
    is_float,
    parse_dtype,
    promoted,
)
from mergelab.methods import MergeMethod, get_method
from mergelab.recipe import Recipe

CHUNK_ELEMENTS = 1 << 20  # 4 MiB of float32 per input; the DARE mask block divides it
MAX_LISTED = 20


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: merged from every input, or copied from the first (integers)."""

    name: str
    shape: tuple[int, ...]
    in_dtype: str
    out_dtype: str
    compute_dtype: np.dtype
    merged: bool
    model_offset: int = 0
    rounding: str | None = None
    """``--compat mergekit``: the dtype mergekit computes in; inputs, the method's
    intermediate results where mergekit's rounds them, and the result are rounded to it
    (float16/bfloat16; float32 and float64 follow mergekit's order of operations). None:
    mergelab's own arithmetic, rounded once to the output dtype."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class MergePlan:
    """Everything checked and decided before any tensor data is read."""

    method: MergeMethod
    models: list[Checkpoint]
    base: Checkpoint | None
    tensors: list[TensorPlan]
    recipe: Recipe | None = None
    notes: list[str] = field(default_factory=list)
    ignored_base: str | None = None
    """Label of a base given to a method whose result does not depend on it (base policy
    ``ignored``): checked against the models' headers, never read, not in ``inputs``."""
    per_tensor: dict[str, MergeMethod] = field(default_factory=dict)
    """Per-layer schedules: the method (with that tensor's parameters) of each merged
    tensor; tensors not listed use ``method``."""

    def method_for(self, name: str) -> MergeMethod:
        return self.per_tensor.get(name, self.method)

    @property
    def inputs(self) -> list[Checkpoint]:
        return [*self.models, *([self.base] if self.base is not None else [])]

    @property
    def bytes_read(self) -> int:
        """Bytes read from the inputs, counting statistics passes."""
        passes = 1 + (1 if self.method.uses_tensor_statistics else 0)
        passes += 2 if self.method.uses_model_statistics else 0
        total = 0
        for t in self.tensors:
            each = [c.infos[t.name].nbytes for c in self.inputs]
            total += sum(each) * passes if t.merged else each[0]
        return total

    @property
    def bytes_written(self) -> int:
        return sum(t.numel * STORAGE[t.out_dtype].itemsize for t in self.tensors)

    def peak_bytes_estimate(self) -> int:
        """Working memory of the merge itself (the Python runtime comes on top): the largest
        over the tensors of the engine's buffers plus the method's own workspace."""
        merged = [t for t in self.tensors if t.merged] or self.tensors
        return max((self._tensor_peak(t) for t in merged), default=0)

    def _tensor_peak(self, t: TensorPlan) -> int:
        method = self.method
        itemsize = t.compute_dtype.itemsize
        size = t.numel * itemsize
        n_in = len(self.inputs)
        if method.elementwise:
            chunk = min(size, CHUNK_ELEMENTS * 8)
            peak = chunk * (2 * n_in + 6)  # two buffer slots, output, temporaries
            if method.uses_tensor_statistics:
                if method.whole_tensor_statistics:
                    peak += 3 * size  # the base, one task vector, its magnitudes
                else:  # one chunk of every input, in float64
                    peak += min(t.numel, CHUNK_ELEMENTS) * (n_in * (itemsize + 8) + itemsize)
            shape: tuple[int, ...] = (min(t.numel, CHUNK_ELEMENTS),)
        else:
            peak = size * (2 * n_in + 3)
            shape = t.shape
        if t.rounding is not None:
            peak += method.mergekit_workspace_bytes(t.numel, len(self.models))
        return peak + method.workspace_bytes(t.name, shape, len(self.models), itemsize)

    @property
    def _compat(self) -> bool:
        return any(t.rounding is not None for t in self.tensors)

    def describe(self, verbose: bool = False) -> str:
        """The dry-run report: what would be read, computed and written."""
        m = self.method
        lines = [
            f"method      {m.name}: {m.summary}",
            f"parameters  {m.params.model_dump(by_alias=True)}",
        ]
        for ckpt, p in zip(self.models, m.per_model, strict=True):
            lines.append(f"model       {ckpt.label}  {p.model_dump(exclude_none=True)}")
        if self.base is not None:
            lines.append(f"base        {self.base.label}")
        if self.ignored_base is not None:
            lines.append(f"base        {self.ignored_base} (accepted, not read)")
        merged = sum(t.merged for t in self.tensors)
        lines += [
            f"tensors     {len(self.tensors)} ({merged} merged, {len(self.tensors) - merged} "
            f"copied from the first model)",
            f"read        {_size(self.bytes_read)}",
            f"write       {_size(self.bytes_written)}",
            f"peak memory ~{_size(self.peak_bytes_estimate())} for the merge "
            f"(plus the Python runtime, ~0.1 GB"
            + (
                "; up to ~0.6 GB more for torch, where mergekit's kernels need it)"
                if self._compat
                else ")"
            ),
        ]
        rounded = sorted({dtype_name(t.rounding) for t in self.tensors if t.rounding})
        if rounded:
            lines.append(
                f"compute     {', '.join(rounded)} as mergekit does (--compat mergekit): "
                f"its order of operations, rounded where its torch code rounds"
            )
        lines += [f"note        {n}" for n in self.notes]
        shown = self.tensors if verbose else self.tensors[:MAX_LISTED]
        for t in shown:
            how = "merge" if t.merged else "copy "
            own = ""
            if t.name in self.per_tensor:
                m = self.per_tensor[t.name]
                own = f"  {m.params.model_dump(by_alias=True)}" + "".join(
                    f" {p.model_dump(exclude_none=True)}" for p in m.per_model
                )
            lines.append(
                f"  {how} {t.name} {list(t.shape)} "
                f"{dtype_name(t.in_dtype)}->{dtype_name(t.out_dtype)}{own}"
            )
        if len(shown) < len(self.tensors):
            lines.append(f"  ... {len(self.tensors) - len(shown)} more (--verbose lists all)")
        return "\n".join(lines)


def _size(n: float) -> str:
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError  # pragma: no cover


# -- checks and planning -------------------------------------------------------------------


def method_class(method_name: str) -> type[MergeMethod]:
    """The registered method, or one error line listing the known ones."""
    try:
        return get_method(method_name)
    except ValueError as exc:
        raise MergeError(str(exc)) from None


def _finite_values(where: str, values: Mapping[str, Any]) -> None:
    """Refuse NaN/Inf anywhere in a parameter set (lists and per-layer maps included):
    one such number turns every merged tensor into NaN/Inf."""

    def walk(key: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{key}.{k}", v)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(f"{key}[{i}]", v)
        else:
            finite_number(f"{where}{key}", value, MergeError)

    for name, value in values.items():
        walk(str(name), value)


def _instantiate(
    method_name: str,
    params: dict[str, Any],
    per_model: Sequence[dict[str, Any]],
    labels: Sequence[str] | None = None,
) -> MergeMethod:
    cls = method_class(method_name)
    labels = (
        list(labels) if labels is not None else [f"model {i + 1}" for i in range(len(per_model))]
    )
    per_model_fields = set(cls.PerModel.model_fields)
    defaults = {k: v for k, v in params.items() if k in per_model_fields}
    global_params = {k: v for k, v in params.items() if k not in per_model_fields}
    try:
        method_params = cls.Params.model_validate(global_params)
    except ValidationError as exc:
        raise MergeError(_param_error(method_name, "", exc, cls)) from None
    model_params = []
    for label, own in zip(labels, per_model, strict=True):
        try:
            model_params.append(cls.PerModel.model_validate({**defaults, **own}))
        except ValidationError as exc:
            raise MergeError(_param_error(method_name, f" of {label}", exc, cls)) from None
    # Checked as validated: "inf" or "1e400" given as text become float Inf only there.
    _finite_values("parameter ", method_params.model_dump(by_alias=True))
    for label, own in zip(labels, model_params, strict=True):
        _finite_values(f"{label}: parameter ", own.model_dump())
    try:
        return cls(method_params, model_params)
    except ValueError as exc:
        raise MergeError(str(exc)) from None


def _param_error(method: str, where: str, exc: ValidationError, cls: type[MergeMethod]) -> str:
    known = sorted(
        {f.alias or k for k, f in cls.Params.model_fields.items()} | set(cls.PerModel.model_fields)
    )
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return (
        f"{method}: invalid parameter{where}: {problems} "
        f"(parameters of {method}: {', '.join(known)})"
    )


def check_inputs(models: Sequence[Checkpoint], base: Checkpoint | None) -> None:
    """Same names, shapes and kinds of dtype in every input; errors list every difference."""
    inputs = [*models, *([base] if base is not None else [])]
    reference = inputs[0]
    names = set(reference.infos)
    problems = []
    for ckpt in inputs[1:]:
        missing = sorted(names - set(ckpt.infos))
        extra = sorted(set(ckpt.infos) - names)
        if missing:
            problems.append(f"{ckpt.label}: missing {len(missing)} tensors: {_listing(missing)}")
        if extra:
            problems.append(f"{ckpt.label}: {len(extra)} extra tensors: {_listing(extra)}")
    if problems:
        raise MergeError(f"tensor names differ from {reference.label}: " + "; ".join(problems))
    shapes = []
    for name, info in reference.infos.items():
        for ckpt in inputs[1:]:
            other = ckpt.infos[name]
            if other.shape != info.shape:
                shapes.append(
                    f"{name}: {reference.label} {list(info.shape)} "
                    f"vs {ckpt.label} {list(other.shape)}"
                )
            elif is_float(other.dtype) != is_float(info.dtype) or (
                not is_float(info.dtype) and other.dtype != info.dtype
            ):
                shapes.append(
                    f"{name}: {reference.label} {dtype_name(info.dtype)} vs "
                    f"{ckpt.label} {dtype_name(other.dtype)}"
                )
    if shapes:
        more = f"; ... ({len(shapes) - 5} more)" if len(shapes) > 5 else ""
        raise MergeError(f"tensor shapes or kinds differ: {'; '.join(shapes[:5])}{more}")


def _schedule(
    plan: MergePlan,
    method_name: str,
    params: dict[str, Any],
    model_params: list[Mapping[str, Any]],
    labels: list[str],
    positions: Mapping[str, float] | None = None,
) -> None:
    """Per-layer schedules and filters: each merged tensor's own parameters, one method
    instance per distinct setting (:mod:`mergelab.schedules`)."""
    merged = [t.name for t in plan.tensors if t.merged]
    instances: dict[str, MergeMethod] = {}
    resolved = schedules.resolve(params, model_params, merged, positions)
    for name, (glob, own) in resolved.items():
        key = repr((sorted(glob.items()), [sorted(o.items()) for o in own]))
        if key not in instances:
            instances[key] = _instantiate(method_name, glob, own, labels)
            if instances[key].uses_model_statistics:
                raise MergeError(
                    f"{method_name}: a whole-model selection (scope: model) cannot vary by "
                    f"layer; give its parameters one value each, or scope: tensor"
                )
        plan.per_tensor[name] = instances[key]
    if merged:
        plan.method = plan.per_tensor[merged[0]]
    plan.notes.append(
        f"parameters vary by tensor (per-layer schedules or name filters): {len(instances)} "
        f"distinct settings over {len(merged)} merged tensors; -v lists each tensor's"
    )


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f", ... ({len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else "")


MERGEKIT_METHODS = frozenset(
    {
        "arcee_fusion", "breadcrumbs", "breadcrumbs_ties", "dare_linear", "dare_ties", "della",
        "della_linear", "karcher", "linear", "model_stock", "multislerp", "nearswap",
        "nuslerp", "passthrough", "ram", "ramplus_tl", "sce", "slerp", "task_arithmetic",
        "ties",
    }
)  # fmt: skip
"""The methods mergekit 0.1.5 has under the same name (``--compat mergekit`` follows them)."""


def _mergekit_compute_name(recipe: Recipe, dtypes: set[str]) -> str:
    """mergekit's compute dtype for a tensor stored in ``dtypes``: the recipe's ``dtype``,
    else the inputs' promoted dtype."""
    try:
        return parse_dtype(recipe.dtype) if recipe.dtype is not None else promoted(dtypes)
    except ValueError as exc:
        raise MergeError(f"dtype: {exc}") from None


def _mergekit_out(recipe: Recipe, dtypes: set[str], method: MergeMethod) -> str:
    """mergekit's output dtype: ``out_dtype``, else its result's (the compute dtype, unless
    the method's arithmetic promotes it)."""
    if recipe.out_dtype is not None:
        return parse_dtype(recipe.out_dtype)
    return method.mergekit_result_dtype or _mergekit_compute_name(recipe, dtypes)


def build_plan(
    method_name: str,
    models: Sequence[Checkpoint],
    base: Checkpoint | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    model_params: Sequence[Mapping[str, Any]] | None = None,
    dtype: str | None = None,
    recipe: Recipe | None = None,
    positions: Mapping[str, float] | None = None,
) -> MergePlan:
    """Check everything that can be checked from headers, and decide what to do per tensor.
    ``positions``: each tensor's place t in [0, 1] for per-layer schedules (default: from
    the layer index in its name)."""
    if not models:
        raise MergeError("no models to merge: give at least one model")
    model_params = list(model_params) if model_params is not None else [{} for _ in models]
    if len(model_params) != len(models):
        raise MergeError(f"{len(model_params)} sets of model parameters for {len(models)} models")
    params = dict(params or {})
    compat_note = None
    compat = recipe is not None and recipe.compat == "mergekit"
    if compat:
        if method_name not in MERGEKIT_METHODS:
            raise MergeError(
                f"--compat mergekit: {method_name} is not a mergekit method, so there is no "
                f"mergekit arithmetic to follow; merge without --compat"
            )
        params, compat_note = method_class(method_name).mergekit_params(params)
    elif recipe is not None and recipe.is_mergekit_file:
        theirs = method_class(method_name).mergekit_params(params)[0].get("rescale")
        if theirs == "norm" and params.get("rescale") != "norm":
            compat_note = (
                f"{method_name}: rescales kept values by 1/density (DARE's paper); mergekit "
                f"restores each task vector's L1 norm (rescale: norm, or --compat mergekit)"
            )
    labels = [m.label for m in models]
    scheduled = any(schedules.is_schedule(v) for p in (params, *model_params) for v in p.values())
    first = next(iter(models[0].infos), "")
    if scheduled:  # checked as the first tensor sees them; per tensor below
        probe = [schedules.concrete(p, first, 0.0) for p in model_params]
        method = _instantiate(method_name, schedules.concrete(params, first, 0.0), probe, labels)
    else:
        method = _instantiate(method_name, params, model_params, labels)
    if method.base_policy == "required" and base is None:
        raise MergeError(f"{method_name}: needs a base model (--base / base_model)")
    if method.base_policy == "unused" and base is not None:
        raise MergeError(
            f"{method_name}: does not use a base model; list {base.label} under the models "
            f"to include it"
        )
    ignored_base = base if method.base_policy == "ignored" else None
    try:
        method.check_counts(len(models), base is not None)
        out_dtype = parse_dtype(dtype) if dtype is not None else None
    except ValueError as exc:
        raise MergeError(str(exc) if dtype is None else f"--dtype: {exc}") from None
    check_inputs(models, base)  # an ignored base too: a mismatched one is a wrong file
    if ignored_base is not None:
        base = None  # never read: execution reads the base of a plan wherever there is one
    inputs = [*models, *([base] if base is not None else [])]
    if not inputs[0].infos:
        raise MergeError(f"{inputs[0].label}: holds no tensors; nothing to merge")
    tensors = []
    mixed = []
    offset = 0
    for name, info in inputs[0].infos.items():
        dtypes = {ckpt.infos[name].dtype for ckpt in inputs}
        if not is_float(info.dtype):
            tensors.append(
                TensorPlan(name, info.shape, info.dtype, info.dtype, STORAGE[info.dtype], False)
            )
            continue
        if len(dtypes) > 1 and out_dtype is None and not compat:
            mixed.append(
                f"{name}: "
                + ", ".join(f"{ckpt.label} {dtype_name(ckpt.infos[name].dtype)}" for ckpt in inputs)
            )
            continue
        target = out_dtype or info.dtype
        compute, rounding = compute_dtype(dtypes), None
        if compat:
            assert recipe is not None
            rounding = _mergekit_compute_name(recipe, dtypes)
            compute = np.dtype(np.float64 if rounding == "F64" else np.float32)
            target = _mergekit_out(recipe, dtypes, method)
        tensors.append(
            TensorPlan(name, info.shape, info.dtype, target, compute, True, offset, rounding)
        )
        offset += info.numel
    if mixed:
        more = f"; ... ({len(mixed) - 3} more)" if len(mixed) > 3 else ""
        raise MergeError(
            "inputs mix dtypes; choose the output dtype with --dtype (e.g. --dtype float32): "
            + "; ".join(mixed[:3])
            + more
        )
    plan = MergePlan(method, list(models), base, tensors, recipe)
    if compat_note is not None:
        plan.notes.append(compat_note)
    if scheduled:
        _schedule(plan, method_name, params, model_params, labels, positions)
    if ignored_base is not None:
        plan.ignored_base = ignored_base.label
        plan.notes.append(
            f"base {ignored_base.label} is accepted but does not change the result, so its "
            f"tensors are not read ({method.name}: {method.base_ignored_reason})"
        )
    return plan
