"""Execution: run a checked plan, one tensor (and one chunk) at a time.

Optional whole-model statistics pass -> for each tensor: optional per-tensor statistics,
then chunks read (in a background thread, one chunk ahead where it pays), merged, checked
finite and written. Integer tensors are copied from the first model.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from mergelab.engine import plan as plan_module
from mergelab.engine.plan import MergePlan, TensorPlan
from mergelab.errors import MergeError
from mergelab.io.checkpoint import ArrayCheckpoint, Checkpoint
from mergelab.io.dtypes import STORAGE, dtype_name, from_compute, round_to, to_compute
from mergelab.methods import (
    DeltaAccess,
    MergeMethod,
    ModelStatistics,
    TensorContext,
    TensorStatistics,
)

PREFETCH_MIN_BYTES = 64 * 1024**2  # below this, reading ahead in a thread costs more than it saves


class Sink(Protocol):
    def write(self, name: str, start: int, values: np.ndarray) -> None: ...


class MemorySink:
    """Collects merged tensors in memory (for merging state dicts from Python)."""

    def __init__(self, plan: MergePlan) -> None:
        self.arrays = {t.name: np.empty(t.numel, dtype=STORAGE[t.out_dtype]) for t in plan.tensors}

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        self.arrays[name][start : start + values.size] = values


def _chunks(numel: int, whole: bool) -> list[tuple[int, int]]:
    size = plan_module.CHUNK_ELEMENTS
    if whole or numel <= size:
        return [(0, numel)]
    return [(s, min(s + size, numel)) for s in range(0, numel, size)]


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
            buf = buffers[dtype] = np.empty(max(size, plan_module.CHUNK_ELEMENTS), dtype=dtype)
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
        if t.rounding is not None:  # mergekit casts its inputs to the compute dtype
            round_to(out, t.rounding)
        return out

    def read(self, ckpt: Checkpoint, t: TensorPlan, start: int, stop: int) -> np.ndarray:
        return self.read_into(ckpt, t, start, np.empty(stop - start, dtype=t.compute_dtype))

    def delta(
        self, i: int, t: TensorPlan, start: int, stop: int, base: np.ndarray | None = None
    ) -> np.ndarray:
        values = self.read(self.plan.models[i], t, start, stop)
        if self.plan.base is not None:
            values -= self.read(self.plan.base, t, start, stop) if base is None else base
            if t.rounding is not None:  # the task vector, computed in the compute dtype
                round_to(values, t.rounding)
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


# A chunk as loaded: (values, all models equal) for a copied tensor; (stack of the models,
# base, buffer slot to give back or None) for a merged one.
Loaded = Any
WorkItem = tuple[TensorPlan, int, int]


def _prefetched(
    work: list[WorkItem], load: Callable[[WorkItem], Loaded], background: bool
) -> Iterator[tuple[WorkItem, Loaded]]:
    """``(item, load(item))`` in order, loading the next item in a thread while the caller
    works on this one (``background``), or in line."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergelab-read") as pool:

        def fetch(index: int) -> Future | None:
            if index >= len(work):
                return None
            if background:
                return pool.submit(load, work[index])
            done: Future = Future()
            done.set_result(load(work[index]))
            return done

        upcoming = fetch(0)
        for index, item in enumerate(work):
            assert upcoming is not None
            loaded = upcoming.result()
            upcoming = fetch(index + 1)
            yield item, loaded


class _Run:
    """One execution of a plan: the reader, the buffers, the statistics, the loop."""

    def __init__(self, plan: MergePlan, sink: Sink, bar: tqdm) -> None:
        self.plan = plan
        self.method = plan.method
        self.sink = sink
        self.bar = bar
        self.reader = _Reader(plan, bar)
        self.merged = [t for t in plan.tensors if t.merged]
        largest = max((t.numel for t in self.merged), default=0)
        self.slots = _Slots(
            len(plan.models), plan.base is not None, min(largest, plan_module.CHUNK_ELEMENTS)
        )
        self.differing: list[str] = []

    # -- statistics ------------------------------------------------------------------------

    def model_statistics(self) -> ModelStatistics | None:
        """The whole-model pass, streaming every merged tensor of each model in chunks."""
        if not self.method.uses_model_statistics:
            return None
        reader = self.reader

        def stream(i: int) -> Iterator[tuple[TensorContext, np.ndarray]]:
            for t in self.merged:
                for start, stop in _chunks(t.numel, False):
                    ctx = TensorContext(
                        t.name, t.shape, start, model_offset=t.model_offset, rounding=t.rounding
                    )
                    yield ctx, reader.delta(i, t, start, stop)

        total = sum(t.numel for t in self.merged)
        return self.method.model_statistics(
            DeltaAccess(len(self.plan.models), stream=stream, total_numel=total)
        )

    def tensor_statistics(self, t: TensorPlan, ctx: TensorContext) -> TensorStatistics | None:
        """One tensor's statistics: task vectors whole (the base read once, when first
        asked for) or chunk by chunk, as the method asks."""
        plan, reader = self.plan, self.reader
        base_full: list[np.ndarray | None] = []

        def tensor(i: int) -> np.ndarray:
            if not base_full:
                base = plan.base
                base_full.append(None if base is None else reader.read(base, t, 0, t.numel))
            return reader.delta(i, t, 0, t.numel, base_full[0])

        def chunks(raw: bool = False) -> Iterator[tuple[int, np.ndarray]]:
            """Task vectors, or (``raw``) the values of every input: models, then base."""
            rows = plan.inputs if raw else plan.models
            for start, stop in _chunks(t.numel, False):
                stack = np.empty((len(rows), stop - start), dtype=t.compute_dtype)
                for i, ckpt in enumerate(rows):
                    reader.read_into(ckpt, t, start, stack[i])
                if plan.base is not None and not raw:
                    stack -= reader.read(plan.base, t, start, stop)
                    if t.rounding is not None:
                        round_to(stack, t.rounding)
                yield start, stack

        access = DeltaAccess(
            len(plan.models), tensor=tensor, chunks=chunks, inputs=lambda: chunks(True)
        )
        return plan.method_for(t.name).tensor_statistics(ctx, access)

    # -- the chunks ---------------------------------------------------------------------------

    def work(self) -> list[WorkItem]:
        """Every (tensor, start, stop) to load: whole tensors for whole-tensor methods and
        for copied (integer) tensors, chunks otherwise."""
        whole = not self.method.elementwise
        return [
            (t, start, stop)
            for t in self.plan.tensors
            for start, stop in _chunks(t.numel, whole or not t.merged)
        ]

    def load(self, item: WorkItem) -> Loaded:
        plan, method = self.plan, self.method
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
            slot = self.slots.take(t.compute_dtype)
            stack, base = (
                slot[0][:, : stop - start],
                None if slot[1] is None else slot[1][: stop - start],
            )
        for i, ckpt in enumerate(plan.models):
            self.reader.read_into(ckpt, t, start, stack[i])
        if plan.base is not None:
            self.reader.read_into(plan.base, t, start, base)
        return stack, base, slot

    def copy(self, t: TensorPlan, start: int, loaded: Loaded) -> None:
        values, same = loaded
        self.bar.update(values.nbytes)
        self.sink.write(t.name, start, values)
        if not same and t.name not in self.differing:
            self.differing.append(t.name)

    def merge(self, t: TensorPlan, ctx: TensorContext, loaded: Loaded) -> None:
        method = self.plan.method_for(t.name)
        stack, base, slot = loaded
        if not method.elementwise:
            stack = stack.reshape(len(self.plan.models), *t.shape)
            base = None if base is None else base.reshape(t.shape)
        out = method.merge(stack, base, ctx)
        if slot is not None:
            self.slots.give(slot)
        if t.rounding is not None and method.mergekit_result_dtype is None:
            # mergekit's result is in its compute dtype
            out = round_to(np.array(out, dtype=t.compute_dtype), t.rounding)
        _check_output(t, np.asarray(out), method)
        self.sink.write(t.name, ctx.start, from_compute(np.asarray(out).reshape(-1), t.out_dtype))

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> list[str]:
        plan, method = self.plan, self.method
        model_stats = self.model_statistics()
        work = self.work()
        # Reading ahead in a thread pays off for files; for small in-memory merges (soups in
        # a study) the thread hand-offs cost more than the work.
        in_memory = all(isinstance(c, ArrayCheckpoint) for c in plan.inputs)
        background = plan.bytes_read > PREFETCH_MIN_BYTES and not in_memory
        stats_for, stats = None, None
        # Overflow is reported once, naming the tensor (_check_output), not as numpy warnings.
        items = _prefetched(work, self.load, background)
        with np.errstate(over="ignore", invalid="ignore"), contextlib.closing(items):
            for (t, start, _), loaded in items:
                if not t.merged:
                    self.copy(t, start, loaded)
                    continue
                ctx = TensorContext(
                    t.name, t.shape, start, model_offset=t.model_offset, rounding=t.rounding
                )
                if model_stats is not None:
                    ctx.model_stats = method.model_stats_for(model_stats, ctx)
                if plan.method_for(t.name).uses_tensor_statistics:
                    if stats_for != t.name:
                        stats, stats_for = self.tensor_statistics(t, ctx), t.name
                    ctx.stats = stats
                self.merge(t, ctx, loaded)
        return self.differing


def execute(plan: MergePlan, sink: Sink, *, progress: bool = True) -> list[str]:
    """Run a checked plan, writing every output tensor to ``sink``. Returns the names of
    the integer tensors that differ between the models (copied from the first)."""
    bar = tqdm(
        total=plan.bytes_read,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="merging",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        return _Run(plan, sink, bar).run()
    finally:
        bar.close()
