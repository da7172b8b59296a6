"""Executors on this machine: in this process, or in a pool of worker processes."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from typing import Any

from mergelab.executor.base import Executor, Finished
from mergelab.executor.units import Unit, call_unit

__all__ = ["InProcess", "ProcessPool", "local_executor"]


class InProcess(Executor):
    """One unit at a time, in this process (the default: needs nothing else)."""

    name = "in-process"

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


class ProcessPool(Executor):
    """Up to ``workers`` units at once in processes of a "spawn" context (with GPUs:
    ``gpus * units_per_gpu`` GPU units at once, each on ``cuda:N`` by its slot)."""

    name = "processes"

    def __init__(self, workers: int, **kw: Any) -> None:
        super().__init__(**kw)
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._pool: cf.ProcessPoolExecutor | None = None

    @property
    def slots(self) -> int:
        return self.workers

    def _submit(self, unit: Unit, kwargs: dict[str, Any]) -> cf.Future:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        try:
            return self._pool.submit(call_unit, unit.fn, unit.args, kwargs, self.threads)
        except cf.process.BrokenProcessPool:  # a worker died (killed, out of memory): anew
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            return self._submit(unit, kwargs)

    def _wait(self, handles: list[Any]) -> list[Finished]:
        finished, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        out: list[Finished] = []
        for fut in finished:
            try:
                value, seconds, where = fut.result()
            except Exception as exc:  # raised by the unit, or a worker that died
                out.append((fut, None, exc, 0.0, "worker process"))
            else:
                out.append((fut, value, None, seconds, where))
        return out

    def _close(self, cancel: bool) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None


def local_executor(workers: int = 1, **kw: Any) -> Executor:
    """:class:`InProcess` for one worker, else a :class:`ProcessPool`."""
    return InProcess(**kw) if workers == 1 else ProcessPool(workers, **kw)
