"""A unit of work and what running one left behind.

A study is many independent pieces of work (a training run, the outputs of one checkpoint);
each is a :class:`Unit`: a picklable module-level function with its arguments, the units it
must wait for, and the resources it needs. An executor (:mod:`mergelab.executor.local`,
:mod:`mergelab.executor.on_ray`) runs units wherever it likes; since every unit writes its
result into a content-addressed cache (``runs/``, ``cache/``), where it ran changes the
wall time only, and a unit that finished before a failure is never run again.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mergelab.errors import MergelabError

__all__ = ["Resources", "Unit", "UnitRecord", "UnitsFailed", "call_unit", "retryable"]


@dataclass(frozen=True)
class Resources:
    """What one unit needs at once: CPU cores, a share of a GPU (0.25: four units share
    one), and memory in MiB (None: not declared; schedulers then count cores only)."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_mb: int | None = None

    def __post_init__(self) -> None:
        if self.cpus <= 0 or self.gpus < 0 or (self.memory_mb is not None and self.memory_mb < 1):
            raise ValueError(f"bad resources {self}")


@dataclass(frozen=True)
class Unit:
    """One piece of work: ``fn(*args, **kwargs)`` once every unit in ``needs`` finished.

    ``key`` names the unit (a content hash: two units with one key are one unit); ``label``
    names it in logs and errors; ``kind`` groups units in the record ("train", "evaluate").
    A unit with ``resources.gpus > 0`` gets ``device=`` the GPU its executor placed it on.
    ``fn`` must be importable by name (a module-level function) for process and Ray
    executors.
    """

    key: str
    label: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    resources: Resources = Resources()
    kind: str = "unit"


@dataclass
class UnitRecord:
    """How a unit ran: its attempts, the seconds of the last one, where, and how it ended
    ("done", or "failed" with the last error)."""

    key: str
    label: str
    kind: str
    status: str = "waiting"
    attempts: int = 0
    seconds: float = 0.0
    where: str = ""
    errors: list[str] = field(default_factory=list)

    COLUMNS = ("kind", "label", "key", "status", "attempts", "seconds", "where", "errors")

    def row(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "label": self.label,
            "key": self.key,
            "status": self.status,
            "attempts": self.attempts,
            "seconds": round(self.seconds, 3),
            "where": self.where,
            "errors": " | ".join(self.errors),
        }


class UnitsFailed(MergelabError):
    """Units that failed on their last attempt; ``failures`` holds (unit, exception) pairs,
    ``records`` every unit's record (the ones that finished stay cached)."""

    def __init__(
        self,
        failures: list[tuple[Unit, BaseException]],
        records: list[UnitRecord],
        skipped: int,
    ) -> None:
        unit, exc = failures[0]
        more = f"; {len(failures) - 1} more unit(s) failed" if len(failures) > 1 else ""
        after = f"; {skipped} unit(s) that need them did not run" if skipped else ""
        super().__init__(f"{unit.label}: {describe(exc)}{more}{after}")
        self.failures = failures
        self.records = records
        self.skipped = skipped


def cause(exc: BaseException) -> BaseException:
    """The user's exception inside an executor's wrapper (Ray's RayTaskError has it as
    ``cause``)."""
    inner = getattr(exc, "cause", None)
    return inner if isinstance(inner, BaseException) else exc


def describe(exc: BaseException) -> str:
    exc = cause(exc)
    if isinstance(exc, MergelabError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def retryable(exc: BaseException) -> bool:
    """A failure worth another attempt: anything but a :class:`MergelabError`, which names
    bad input or a diverged run and would fail the same way again."""
    return not isinstance(cause(exc), MergelabError)


def call_unit(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    threads: int | None,
) -> tuple[Any, float, str]:
    """Run one unit (in whichever process the executor chose): ``(value, seconds, where)``.

    ``threads``: torch CPU threads during the call (restored after); CPU results depend on
    the thread count, so every executor runs units with the same count and their outputs
    are the same bytes wherever they ran.
    """
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        value = fn(*args, **dict(kwargs))
    finally:
        if threads is not None:
            torch.set_num_threads(before)
    where = f"{socket.gethostname()}:{os.getpid()}"
    if kwargs.get("device") is not None:
        where += f":{kwargs['device']}"
    return value, time.perf_counter() - started, where
