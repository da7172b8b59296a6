"""The loop every executor shares: start each unit once its needs are done, retry the ones
that fail for a passing reason, keep going with what does not depend on a failure, and
say at the end which units failed.

An executor only says how to start a unit, how to wait for some to finish and how many
can run at once; order, retries, GPU placement and the record are decided here, the same
way for every executor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mergelab.executor.units import (
    Unit,
    UnitRecord,
    UnitsFailed,
    describe,
    retryable,
)

__all__ = ["Executor", "Finished"]

# (handle, value or None, exception or None, seconds, where)
Finished = tuple[Any, Any, BaseException | None, float, str]


class Executor:
    """Runs units; subclasses implement :meth:`_submit`, :meth:`_wait` and :meth:`_close`.

    Args:
        retries: further attempts after a unit raises (not for a ``MergelabError``: bad
            input fails the same way again).
        threads: torch CPU threads per unit (1: results independent of the machine).
        gpus: GPUs this executor places units on (0: none; units then run where they are).
        units_per_gpu: units that share one GPU at once.
    """

    name = "executor"

    def __init__(
        self,
        *,
        retries: int = 2,
        threads: int | None = 1,
        gpus: int = 0,
        units_per_gpu: int = 1,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if units_per_gpu < 1:
            raise ValueError(f"units_per_gpu must be >= 1, got {units_per_gpu}")
        self.retries = retries
        self.threads = threads
        self.gpus = gpus
        self.units_per_gpu = units_per_gpu
        self.records: list[UnitRecord] = []

    def describe(self) -> str:
        """One phrase for logs: where the units run."""
        return f"{self.name} executor"

    # -- what an executor implements ----------------------------------------------------------

    @property
    def slots(self) -> int:
        """Units that may run at once."""
        return 1

    def _submit(self, unit: Unit, kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _wait(self, handles: list[Any]) -> list[Finished]:
        """Block until at least one of ``handles`` finished; return those that did."""
        raise NotImplementedError

    def _close(self, cancel: bool) -> None:
        """Release workers (``cancel``: drop what has not started)."""

    def _lost_worker(self, exc: BaseException) -> bool:
        """Whether ``exc`` says a worker process died, failing every unit it shared."""
        return False

    def _device(self, unit: Unit, slot: int) -> str | None:
        """Where a GPU unit runs: ``cuda:N`` by GPU slot (executors that see the GPUs)."""
        return f"cuda:{slot % max(1, self.gpus)}"

    # -- the loop ----------------------------------------------------------------------------

    def run(
        self,
        units: Sequence[Unit],
        *,
        log: Callable[[str], None] | None = None,
        on_done: Callable[[Unit, Any, float], None] | None = None,
    ) -> dict[str, Any]:
        """Run ``units`` (each after the units it needs; a key listed twice runs once) and
        return their values by key. ``on_done(unit, value, seconds)`` is called in this
        process as each finishes. A unit that raises is tried again up to ``retries``
        times; units that do not need a failed one still run, and then
        :class:`UnitsFailed` names the failures (what finished stays cached, so a rerun
        does only the rest)."""
        todo: dict[str, Unit] = {}
        for unit in units:
            todo.setdefault(unit.key, unit)
        for unit in todo.values():
            missing = [k for k in unit.needs if k not in todo]
            if missing:
                raise ValueError(f"{unit.label} needs unit {missing[0][:12]} that is not listed")
        records = {k: UnitRecord(k, u.label, u.kind) for k, u in todo.items()}
        self.records += records.values()
        order = _order(todo)
        needed = {k for u in todo.values() for k in u.needs}
        position = {k: i for i, k in enumerate(order)}
        # units others wait on first (they unblock the most), then input order
        waiting = sorted(order, key=lambda k: (k not in needed, position[k]))
        results: dict[str, Any] = {}
        failed: dict[str, BaseException] = {}
        dead: set[str] = set()  # failed, or skipped because a need is dead
        suspects: set[str] = set()  # in flight when a worker died: rerun one at a time
        running: dict[Any, tuple[str, int]] = {}
        gpu_free = list(range(self.gpus * self.units_per_gpu))
        try:
            while waiting or running:
                for key in list(waiting):  # in order: a unit comes after what it needs
                    need = next((n for n in todo[key].needs if n in dead), None)
                    if need is not None:
                        records[key].status = f"skipped ({todo[need].label} did not finish)"
                        dead.add(key)
                        waiting.remove(key)
                ready = [k for k in waiting if all(n in results for n in todo[k].needs)]
                if any(k in suspects for k, _ in running.values()):
                    ready = []  # a suspect runs alone
                elif suspects & set(ready):
                    ready = [k for k in ready if k in suspects][:1] if not running else []
                for key in ready:
                    if len(running) >= self.slots:
                        break
                    unit = todo[key]
                    slot = -1
                    kwargs = dict(unit.kwargs)
                    if unit.resources.gpus > 0 and self.gpus:
                        if not gpu_free:
                            continue
                        slot = gpu_free.pop(0)
                        kwargs["device"] = self._device(unit, slot)
                    handle = self._submit(unit, kwargs)
                    records[key].attempts += 1
                    records[key].status = "running"
                    running[handle] = (key, slot)
                    waiting.remove(key)
                if not running:
                    if waiting:  # cannot happen: needs are listed and ordered
                        raise RuntimeError(f"{len(waiting)} units wait on units that never run")
                    break
                in_flight = len(running)
                for handle, value, exc, seconds, where in self._wait(list(running)):
                    key, slot = running.pop(handle)
                    if slot >= 0:
                        gpu_free.append(slot)
                        gpu_free.sort()
                    unit, record = todo[key], records[key]
                    record.seconds, record.where = seconds, where
                    if exc is None:
                        record.status = "done"
                        suspects.discard(key)
                        results[key] = value
                        if on_done is not None:
                            on_done(unit, value, seconds)
                        continue
                    if self._lost_worker(exc) and in_flight > 1 and key not in suspects:
                        # a worker died with several units in flight: which one killed it
                        # is unknown, so none is charged; each runs again, alone
                        record.attempts -= 1
                        suspects.add(key)
                        waiting.insert(0, key)
                        continue
                    record.errors.append(describe(exc))
                    if retryable(exc) and record.attempts <= self.retries:
                        if log is not None:
                            log(
                                f"{unit.label}: attempt {record.attempts} of "
                                f"{self.retries + 1} failed ({describe(exc)}); trying again"
                            )
                        waiting.insert(0, key)
                        continue
                    record.status = "failed"
                    failed[key] = exc
                    dead.add(key)
                    if log is not None:
                        log(f"{unit.label}: failed after {record.attempts} attempt(s)")
        except BaseException:
            for record in records.values():
                if record.status in ("waiting", "running"):
                    record.status = "cancelled"
            self._close(cancel=True)
            raise
        if failed:
            skipped = sum(r.status.startswith("skipped") for r in records.values())
            raise UnitsFailed(
                [(todo[k], e) for k, e in failed.items()], list(records.values()), skipped
            )
        return results

    def close(self) -> None:
        self._close(cancel=False)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close(cancel=exc[0] is not None)


def _order(todo: dict[str, Unit]) -> list[str]:
    """Keys of ``todo`` in input order, each after the units it needs."""
    done: set[str] = set()
    order: list[str] = []

    def visit(key: str, path: tuple[str, ...]) -> None:
        if key in done:
            return
        if key in path:
            raise ValueError(f"units need each other in a cycle: {todo[key].label}")
        for need in todo[key].needs:
            visit(need, (*path, key))
        done.add(key)
        order.append(key)

    for key in todo:
        visit(key, ())
    return order
