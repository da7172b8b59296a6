"""Executors on this machine: in this process, or in a pool of worker processes."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from typing import Any

from mergelab.executor.base import Executor, Finished
from mergelab.executor.units import Unit, call_unit

__all__ = ["InProcess", "ProcessPool", "local_executor"]


class InProcess(Executor):
    """One unit at a time, in this process (the default: needs nothing else)."""

    name = "in-process"

    def describe(self) -> str:
        return "in this process"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._queue: list[tuple[int, Unit, dict[str, Any]]] = []
        self._next = 0

    def _submit(self, unit: Unit, kwargs: dict[str, Any]) -> int:
        self._next += 1
        self._queue.append((self._next, unit, kwargs))
        return self._next

    def _wait(self, handles: list[Any]) -> list[Finished]:
        handle, unit, kwargs = self._queue.pop(0)
        try:
            value, seconds, where = call_unit(unit.fn, unit.args, kwargs, self.threads)
        except Exception as exc:
            return [(handle, None, exc, 0.0, "in-process")]
        return [(handle, value, None, seconds, where)]

    def _close(self, cancel: bool) -> None:
        self._queue.clear()


def _see_one_gpu(index: int) -> None:
    """Worker initializer: this process sees GPU ``index`` only (as ``cuda``), so it never
    creates a CUDA context on another GPU."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(index)


class ProcessPool(Executor):
    """Up to ``workers`` units at once in processes of a "spawn" context. With GPUs, GPU
    units run in one pool per GPU (``units_per_gpu`` processes that see only that GPU), so
    a worker holds memory on one GPU only."""

    name = "processes"

    def __init__(self, workers: int, **kw: Any) -> None:
        super().__init__(**kw)
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._pools: dict[int | None, cf.ProcessPoolExecutor] = {}
        self._placed: dict[cf.Future, str] = {}
        self._pool_of: dict[cf.Future, int | None] = {}
        self._broken: set[int | None] = set()
        """Pools a unit found broken: replaced before the next submission, since the pool
        may not know yet (its manager thread notices a dead worker late, and a unit
        queued there meanwhile would fail too, charged for a death it did not cause)."""

    @property
    def slots(self) -> int:
        return max(self.workers, self.gpus * self.units_per_gpu)

    def describe(self) -> str:
        gpus = f", {self.units_per_gpu} per GPU on {self.gpus} GPU(s)" if self.gpus else ""
        return f"{self.workers} worker processes{gpus}"

    def _pool(self, gpu: int | None) -> cf.ProcessPoolExecutor:
        if gpu not in self._pools:
            context = multiprocessing.get_context("spawn")
            if gpu is None:
                pool = cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
            else:
                pool = cf.ProcessPoolExecutor(
                    max_workers=self.units_per_gpu,
                    mp_context=context,
                    initializer=_see_one_gpu,
                    initargs=(gpu,),
                )
            self._pools[gpu] = pool
        return self._pools[gpu]

    def _submit(self, unit: Unit, kwargs: dict[str, Any]) -> cf.Future:
        gpu = None
        device = str(kwargs.get("device") or "")
        if unit.resources.gpus > 0 and self.gpus and device.startswith("cuda:"):
            gpu = int(device.split(":")[1])
            kwargs = {**kwargs, "device": "cuda"}  # the only GPU its process sees
        args = (call_unit, unit.fn, unit.args, kwargs, self.threads)
        if gpu in self._broken and gpu in self._pools:
            self._broken.discard(gpu)
            self._pools.pop(gpu).shutdown(wait=True, cancel_futures=True)
        try:
            fut = self._pool(gpu).submit(*args)
        except cf.process.BrokenProcessPool:  # a worker died (killed, out of memory): anew
            self._pools.pop(gpu).shutdown(wait=True, cancel_futures=True)
            fut = self._pool(gpu).submit(*args)
        if gpu is not None:
            self._placed[fut] = device
        self._pool_of[fut] = gpu
        return fut

    def _lost_worker(self, exc: BaseException) -> bool:
        return isinstance(exc, cf.process.BrokenProcessPool)

    def _wait(self, handles: list[Any]) -> list[Finished]:
        finished, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        out: list[Finished] = []
        for fut in finished:
            device = self._placed.pop(fut, None)
            gpu = self._pool_of.pop(fut, None)
            try:
                value, seconds, where = fut.result()
            except Exception as exc:  # raised by the unit, or a worker that died
                if self._lost_worker(exc):
                    self._broken.add(gpu)
                out.append((fut, None, exc, 0.0, device or "worker process"))
            else:
                if device is not None:
                    where = where.replace(":cuda", f":{device}")
                out.append((fut, value, None, seconds, where))
        return out

    def _close(self, cancel: bool) -> None:
        for pool in self._pools.values():
            if cancel:  # interrupted: stop the units in flight too (nothing half-written)
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.terminate()
            pool.shutdown(wait=True, cancel_futures=cancel)
        self._pools.clear()
        self._placed.clear()
        self._pool_of.clear()
        self._broken.clear()


def local_executor(workers: int = 1, **kw: Any) -> Executor:
    """:class:`InProcess` for one worker, else a :class:`ProcessPool`."""
    return InProcess(**kw) if workers == 1 else ProcessPool(workers, **kw)
