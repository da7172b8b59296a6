"""Plan, check and run a merge, one tensor (and one chunk) at a time.

Flow: open every checkpoint (headers only) -> check names, shapes, dtypes, base and
hyperparameters -> plan -> optional whole-model statistics pass -> for each tensor: optional
per-tensor statistics, then chunks read (in a background thread, one chunk ahead), merged
and written in place. Peak memory follows the chunk size and the largest tensor, never the
size of the model.
"""

from __future__ import annotations

import json
import math
import platform
import queue
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import ValidationError
from tqdm import tqdm

from mergelab.checks import finite_number
from mergelab.errors import MergeError
from mergelab.io.checkpoint import ArrayCheckpoint, Checkpoint, TensorInfo
from mergelab.io.dtypes import (
    STORAGE,
    compute_dtype,
    dtype_name,
    from_compute,
    is_float,
    parse_dtype,
    to_compute,
)
from mergelab.io.open import open_checkpoint
from mergelab.io.writer import SafetensorsWriter, check_output, is_file_output
from mergelab.methods import DeltaAccess, MergeMethod, TensorContext, get_method
from mergelab.recipe import Recipe

CHUNK_ELEMENTS = 1 << 20  # 4 MiB of float32 per input; the DARE mask block divides it
DEFAULT_SHARD_BYTES = 5 * 1024**3
PREFETCH_MIN_BYTES = 64 * 1024**2  # below this, reading ahead in a thread costs more than it saves
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
        """Working memory of the merge itself (the Python runtime comes on top)."""
        merged = [t for t in self.tensors if t.merged] or self.tensors
        if not merged:
            return 0
        largest = max(t.numel * t.compute_dtype.itemsize for t in merged)
        n_in = len(self.inputs)
        if self.method.elementwise:
            chunk = min(largest, CHUNK_ELEMENTS * 8)
            peak = chunk * (2 * n_in + 6)  # two buffer slots, output, temporaries
            if self.method.uses_tensor_statistics:
                peak += 3 * largest
        else:
            peak = largest * (2 * n_in + 3)
        return peak

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
        merged = sum(t.merged for t in self.tensors)
        lines += [
            f"tensors     {len(self.tensors)} ({merged} merged, {len(self.tensors) - merged} "
            f"copied from the first model)",
            f"read        {_size(self.bytes_read)}",
            f"write       {_size(self.bytes_written)}",
            f"peak memory ~{_size(self.peak_bytes_estimate())} for the merge "
            f"(plus the Python runtime, ~0.1 GB)",
        ]
        lines += [f"note        {n}" for n in self.notes]
        shown = self.tensors if verbose else self.tensors[:MAX_LISTED]
        for t in shown:
            how = "merge" if t.merged else "copy "
            lines.append(
                f"  {how} {t.name} {list(t.shape)} "
                f"{dtype_name(t.in_dtype)}->{dtype_name(t.out_dtype)}"
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


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f", ... ({len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else "")


def build_plan(
    method_name: str,
    models: Sequence[Checkpoint],
    base: Checkpoint | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    model_params: Sequence[Mapping[str, Any]] | None = None,
    dtype: str | None = None,
    recipe: Recipe | None = None,
) -> MergePlan:
    """Check everything that can be checked from headers, and decide what to do per tensor."""
    if not models:
        raise MergeError("no models to merge: give at least one model")
    model_params = list(model_params) if model_params is not None else [{} for _ in models]
    if len(model_params) != len(models):
        raise MergeError(f"{len(model_params)} sets of model parameters for {len(models)} models")
    method = _instantiate(method_name, dict(params or {}), model_params, [m.label for m in models])
    if method.base_policy == "required" and base is None:
        raise MergeError(f"{method_name}: needs a base model (--base / base_model)")
    if method.base_policy == "unused" and base is not None:
        raise MergeError(
            f"{method_name}: does not use a base model; list {base.label} under the models "
            f"to include it"
        )
    try:
        method.check_counts(len(models), base is not None)
        out_dtype = parse_dtype(dtype) if dtype is not None else None
    except ValueError as exc:
        raise MergeError(str(exc) if dtype is None else f"--dtype: {exc}") from None
    check_inputs(models, base)
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
        if len(dtypes) > 1 and out_dtype is None:
            mixed.append(
                f"{name}: "
                + ", ".join(f"{ckpt.label} {dtype_name(ckpt.infos[name].dtype)}" for ckpt in inputs)
            )
            continue
        target = out_dtype or info.dtype
        tensors.append(
            TensorPlan(name, info.shape, info.dtype, target, compute_dtype(dtypes), True, offset)
        )
        offset += info.numel
    if mixed:
        more = f"; ... ({len(mixed) - 3} more)" if len(mixed) > 3 else ""
        raise MergeError(
            "inputs mix dtypes; choose the output dtype with --dtype (e.g. --dtype float32): "
            + "; ".join(mixed[:3])
            + more
        )
    return MergePlan(method, list(models), base, tensors, recipe)


# -- running ---------------------------------------------------------------------------------


class Sink(Protocol):
    def write(self, name: str, start: int, values: np.ndarray) -> None: ...


class MemorySink:
    """Collects merged tensors in memory (for merging state dicts from Python)."""

    def __init__(self, plan: MergePlan) -> None:
        self.arrays = {t.name: np.empty(t.numel, dtype=STORAGE[t.out_dtype]) for t in plan.tensors}

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        self.arrays[name][start : start + values.size] = values


def _chunks(numel: int, whole: bool) -> list[tuple[int, int]]:
    if whole or numel <= CHUNK_ELEMENTS:
        return [(0, numel)]
    return [(s, min(s + CHUNK_ELEMENTS, numel)) for s in range(0, numel, CHUNK_ELEMENTS)]


class _Reader:
    """The engine's only path to tensor data: reads, converts to the compute dtype, checks
    for NaN/Inf, counts progress. Reads straight into the caller's buffer where no
    conversion is needed; otherwise through a per-thread scratch buffer."""

    def __init__(self, plan: MergePlan, progress: tqdm) -> None:
        self.plan = plan
        self.progress = progress
        self._local = threading.local()

    def _scratch(self, dtype: np.dtype, size: int) -> np.ndarray:
        buffers = self._local.__dict__.setdefault("buffers", {})
        buf = buffers.get(dtype)
        if buf is None or buf.size < size:
            buf = buffers[dtype] = np.empty(max(size, CHUNK_ELEMENTS), dtype=dtype)
        return buf[:size]

    def read_into(self, ckpt: Checkpoint, t: TensorPlan, start: int, out: np.ndarray) -> np.ndarray:
        stored = ckpt.infos[t.name].dtype
        stop = start + out.size
        if STORAGE[stored] == out.dtype and stored not in ("BF16",):
            ckpt.read(t.name, start, stop, out=out)
        else:
            raw = ckpt.read(t.name, start, stop, out=self._scratch(STORAGE[stored], out.size))
            to_compute(raw, stored, out)
        self.progress.update(out.size * STORAGE[stored].itemsize)
        # A sum is finite only if every value is (or it overflowed): cheap test, exact confirm.
        if out.size and not math.isfinite(float(out.sum())) and not np.isfinite(out).all():
            raise MergeError(f"{ckpt.label}: tensor {t.name!r} contains NaN or Inf")
        return out

    def read(self, ckpt: Checkpoint, t: TensorPlan, start: int, stop: int) -> np.ndarray:
        return self.read_into(ckpt, t, start, np.empty(stop - start, dtype=t.compute_dtype))

    def delta(
        self, i: int, t: TensorPlan, start: int, stop: int, base: np.ndarray | None = None
    ) -> np.ndarray:
        values = self.read(self.plan.models[i], t, start, stop)
        if self.plan.base is not None:
            values -= self.read(self.plan.base, t, start, stop) if base is None else base
        return values


class _Slots:
    """Reusable input buffers (one stack of model chunks plus a base chunk per slot): filling
    fresh memory for every chunk costs page faults that rival the copy itself."""

    def __init__(self, n_models: int, has_base: bool, size: int) -> None:
        self.n_models, self.has_base, self.size = n_models, has_base, size
        self.free: dict[np.dtype, queue.SimpleQueue] = {}

    def take(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray | None]:
        pool = self.free.setdefault(dtype, queue.SimpleQueue())
        try:
            return pool.get_nowait()
        except queue.Empty:
            stack = np.empty((self.n_models, self.size), dtype=dtype)
            base = np.empty(self.size, dtype=dtype) if self.has_base else None
            return stack, base

    def give(self, slot: tuple[np.ndarray, np.ndarray | None]) -> None:
        self.free[slot[0].dtype].put(slot)


# Magnitude from which a value rounds to Inf (or NaN) in each float output dtype narrower
# than float64 (float32 matters only when the merge computes in float64).
_OVERFLOW_AT = {
    "F32": 3.4028235677973366e38 * (1 + 2.0**-25),
    "F16": 65520.0,
    "BF16": 3.3961775292304957e38,
    "F8_E4M3": 464.0,
    "F8_E5M2": 61440.0,
}


def _check_output(t: TensorPlan, out: np.ndarray, method: MergeMethod) -> None:
    """Refuse a merged chunk that is not finite in the output dtype: a silently NaN model is
    worse than an error naming the tensor. One pass: a sum is finite only if every value
    is (a finite sum that overflowed is confirmed exactly); narrow dtypes check the range."""
    if not out.size:
        return
    limit = _OVERFLOW_AT.get(t.out_dtype)
    if limit is not None and out.dtype.itemsize <= STORAGE[t.out_dtype].itemsize:
        limit = None  # the output dtype holds every finite value computed
    if limit is None:
        if math.isfinite(float(out.sum())) or np.isfinite(out).all():
            return
        problem = "NaN or Inf values"
    else:
        low, high = float(out.min()), float(out.max())  # NaN propagates through both
        if math.isfinite(low) and math.isfinite(high) and max(-low, high) < limit:
            return
        problem = (
            f"values up to {max(-low, high):.3g} overflow {dtype_name(t.out_dtype)}"
            if math.isfinite(low) and math.isfinite(high)
            else "NaN or Inf values"
        )
    params = method.params.model_dump(by_alias=True)
    raise MergeError(
        f"merged tensor {t.name!r} has {problem} ({method.name} with {params}, finite "
        f"inputs); nothing was written. Check the method parameters and model weights"
    )


def execute(plan: MergePlan, sink: Sink, *, progress: bool = True) -> list[str]:
    """Run a checked plan, writing every output tensor to ``sink``. Returns the names of
    the integer tensors that differ between the models (copied from the first)."""
    differing: list[str] = []
    method = plan.method
    bar = tqdm(
        total=plan.bytes_read,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="merging",
        disable=not progress,
        dynamic_ncols=True,
    )
    reader = _Reader(plan, bar)
    merged = [t for t in plan.tensors if t.merged]
    largest = max((t.numel for t in merged), default=0)
    slots = _Slots(len(plan.models), plan.base is not None, min(largest, CHUNK_ELEMENTS))
    model_stats = None
    if method.uses_model_statistics:

        def stream(i: int) -> Iterator[tuple[TensorContext, np.ndarray]]:
            for t in merged:
                for start, stop in _chunks(t.numel, False):
                    ctx = TensorContext(t.name, t.shape, start, model_offset=t.model_offset)
                    yield ctx, reader.delta(i, t, start, stop)

        total = sum(t.numel for t in merged)
        model_stats = method.model_statistics(
            DeltaAccess(len(plan.models), stream=stream, total_numel=total)
        )

    def load(item: tuple[TensorPlan, int, int]) -> Any:
        t, start, stop = item
        if not t.merged:
            first = plan.models[0].read(t.name, start, stop)
            same = all(np.array_equal(first, m.read(t.name, start, stop)) for m in plan.models[1:])
            return first, same
        if not method.elementwise:
            stack = np.empty((len(plan.models), stop - start), dtype=t.compute_dtype)
            base = None if plan.base is None else np.empty(stop - start, dtype=t.compute_dtype)
            slot = None
        else:
            slot = slots.take(t.compute_dtype)
            stack, base = (
                slot[0][:, : stop - start],
                None if slot[1] is None else slot[1][: stop - start],
            )
        for i, ckpt in enumerate(plan.models):
            reader.read_into(ckpt, t, start, stack[i])
        if plan.base is not None:
            reader.read_into(plan.base, t, start, base)
        return stack, base, slot

    def tensor_stats(t: TensorPlan, ctx: TensorContext) -> Any:
        base_full = None if plan.base is None else reader.read(plan.base, t, 0, t.numel)
        access = DeltaAccess(
            len(plan.models), tensor=lambda i: reader.delta(i, t, 0, t.numel, base_full)
        )
        return method.tensor_statistics(ctx, access)

    work = [
        (t, start, stop)
        for t in plan.tensors
        for start, stop in _chunks(t.numel, not method.elementwise or not t.merged)
    ]
    # Reading ahead in a thread pays off for files; for small in-memory merges (soups in a
    # study) the thread hand-offs cost more than the work.
    in_memory = all(isinstance(c, ArrayCheckpoint) for c in plan.inputs)
    background = plan.bytes_read > PREFETCH_MIN_BYTES and not in_memory
    # Overflow is reported once, naming the tensor (_check_output), not as numpy warnings.
    try:
        with (
            np.errstate(over="ignore", invalid="ignore"),
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergelab-read") as pool,
        ):

            def fetch(index: int) -> Future | None:
                if index >= len(work):
                    return None
                if background:
                    return pool.submit(load, work[index])
                done: Future = Future()
                done.set_result(load(work[index]))
                return done

            upcoming = fetch(0)
            stats_for, stats = None, None
            for index, (t, start, _) in enumerate(work):
                assert upcoming is not None
                loaded = upcoming.result()
                upcoming = fetch(index + 1)
                if not t.merged:
                    values, same = loaded
                    bar.update(values.nbytes)
                    sink.write(t.name, start, values)
                    if not same and t.name not in differing:
                        differing.append(t.name)
                    continue
                ctx = TensorContext(t.name, t.shape, start, model_offset=t.model_offset)
                if model_stats is not None:
                    ctx.model_stats = method.model_stats_for(model_stats, ctx)
                if method.uses_tensor_statistics:
                    if stats_for != t.name:
                        stats, stats_for = tensor_stats(t, ctx), t.name
                    ctx.stats = stats
                stack, base, slot = loaded
                if not method.elementwise:
                    stack = stack.reshape(len(plan.models), *t.shape)
                    base = None if base is None else base.reshape(t.shape)
                out = method.merge(stack, base, ctx)
                if slot is not None:
                    slots.give(slot)
                _check_output(t, np.asarray(out), method)
                sink.write(t.name, start, from_compute(np.asarray(out).reshape(-1), t.out_dtype))
    finally:
        bar.close()
    return differing


# -- entry points ------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    from mergelab import __version__

    return {
        "mergelab": __version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def open_recipe(recipe: Recipe) -> MergePlan:
    """Open the recipe's checkpoints (headers only) and plan the merge."""
    options = {"key": recipe.key, "strip_prefix": recipe.strip_prefix}
    base_path = recipe.base_model
    entries = list(recipe.models)
    notes = []
    if base_path is not None and method_class(recipe.merge_method).base_policy != "unused":
        # As in mergekit, the base listed among the models is the base, not another input.
        same = [e for e in entries if Path(e.model).resolve() == Path(base_path).resolve()]
        if same:
            entries = [e for e in entries if e not in same]
            notes.append(f"{base_path} is the base; not merged again as a model")
            if not entries:
                raise MergeError(
                    f"{base_path} is the base and the only model; list the models to merge "
                    f"besides it"
                )
    base = open_checkpoint(base_path, **options) if base_path is not None else None
    models = [open_checkpoint(e.model, **options) for e in entries]
    plan = build_plan(
        recipe.merge_method,
        models,
        base,
        params=dict(recipe.parameters),
        model_params=[dict(e.parameters) for e in entries],
        dtype=recipe.dtype,
        recipe=recipe,
    )
    plan.notes += notes
    return plan


def _record(plan: MergePlan) -> tuple[Recipe, dict[str, str]]:
    """The recipe with absolute paths and resolved parameters, as stored with the output."""
    assert plan.recipe is not None
    recipe = plan.recipe.model_copy(
        update={
            "models": [
                e.model_copy(update={"model": str(Path(e.model).resolve())})
                for e in plan.recipe.models
            ],
            "base_model": None
            if plan.recipe.base_model is None
            else str(Path(plan.recipe.base_model).resolve()),
        }
    )
    metadata = {
        "mergelab.recipe": json.dumps(recipe.model_dump(exclude_defaults=True), sort_keys=True),
        "mergelab.method_params": json.dumps(plan.method.params.model_dump(by_alias=True)),
        "mergelab.versions": json.dumps(versions(), sort_keys=True),
    }
    return recipe, metadata


def _recipe_name(out: str | Path) -> str:
    """The recipe record: ``NAME.mergelab.yaml`` beside a file, else ``mergelab.yaml``."""
    return f"{Path(out).stem}.mergelab.yaml" if is_file_output(out) else "mergelab.yaml"


def _input_paths(plan: MergePlan) -> list[Path]:
    """Every path the merge reads: as the recipe gives them, and the files behind them."""
    paths = [Path(p) for ckpt in plan.inputs for p in ckpt.files]
    if plan.recipe is not None:
        paths += [Path(e.model) for e in plan.recipe.models]
        if plan.recipe.base_model is not None:
            paths.append(Path(plan.recipe.base_model))
    return paths


def merge(
    recipe: Recipe | str | Path,
    out: str | Path,
    *,
    force: bool = False,
    max_shard_bytes: int | None = DEFAULT_SHARD_BYTES,
    progress: bool = True,
) -> Path:
    """Merge checkpoints on disk into ``out`` (a ``.safetensors`` file or a model folder).

    The output appears only when complete; an existing one is replaced only with ``force``.
    A ``mergelab.yaml`` (``<name>.mergelab.yaml`` beside a single file) records the recipe.
    """
    if not isinstance(recipe, Recipe):
        recipe = Recipe.from_yaml(recipe)
    plan = open_recipe(recipe)
    try:
        record, metadata = _record(plan)
        header = "".join(f"# {k} {v}\n" for k, v in versions().items())
        yaml_name = _recipe_name(out)
        out = Path(out)
        infos = [TensorInfo(t.name, t.shape, t.out_dtype) for t in plan.tensors]
        writer = SafetensorsWriter(
            out,
            infos,
            metadata=metadata,
            max_shard_bytes=max_shard_bytes,
            force=force,
            extra_files={yaml_name: record.to_yaml(header)},
            inputs=_input_paths(plan),
        )
        try:
            differing = execute(plan, writer, progress=progress)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        if differing:
            print(
                f"mergelab: note: {len(differing)} integer tensor(s) differ between the models "
                f"and were copied from {plan.models[0].label} (integers are never averaged): "
                f"{_listing(differing)}",
                file=sys.stderr,
            )
    finally:
        for ckpt in plan.inputs:
            ckpt.close()
    return out


def merge_state_dicts(
    method: str,
    models: Sequence[Mapping[str, Any]],
    base: Mapping[str, Any] | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    model_params: Sequence[Mapping[str, Any]] | None = None,
    dtype: str | None = None,
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Merge in-memory state dicts (torch tensors or NumPy arrays) with the same checks and
    code path as files. Returns torch tensors if the inputs were torch tensors. ``labels``
    name the models in errors (their files, say); default ``model 1``, ``model 2``, ..."""
    names = list(labels) if labels is not None else [f"model {i + 1}" for i in range(len(models))]
    checkpoints = [ArrayCheckpoint(sd, name) for sd, name in zip(models, names, strict=True)]
    base_ckpt = None if base is None else ArrayCheckpoint(base, "base")
    plan = build_plan(
        method, checkpoints, base_ckpt, params=params, model_params=model_params, dtype=dtype
    )
    sink = MemorySink(plan)
    execute(plan, sink, progress=False)
    arrays = {t.name: sink.arrays[t.name].reshape(t.shape) for t in plan.tensors}
    first = next(iter(models[0].values()), None)
    if first is None or isinstance(first, np.ndarray):
        return arrays
    import torch

    from mergelab.io.dtypes import to_torch

    return {
        t.name: torch.from_numpy(arrays[t.name]).view(to_torch(t.out_dtype)) for t in plan.tensors
    }


def check_plan_output(
    plan: MergePlan, out: str | Path, *, force: bool, max_shard_bytes: int | None
) -> list[str]:
    """The files a merge into ``out`` would write, after every check the real run makes
    (an input in the way, a file mergelab did not write); nothing is touched."""
    infos = [TensorInfo(t.name, t.shape, t.out_dtype) for t in plan.tensors]
    return check_output(
        out,
        infos,
        max_shard_bytes=max_shard_bytes,
        force=force,
        extra_names=[_recipe_name(out)],
        inputs=_input_paths(plan),
    )
