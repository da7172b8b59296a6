"""Where a study's units of work run: in this process, in worker processes, or on Ray.

Every executor runs :class:`Unit` s the same way (needs first, retries, a record per
unit); results are written to content-addressed caches, so which executor ran them
changes the wall time only.
"""

from mergelab.errors import MergelabError
from mergelab.executor.base import Executor
from mergelab.executor.local import InProcess, ProcessPool, local_executor
from mergelab.executor.units import Resources, Unit, UnitRecord, UnitsFailed

__all__ = [
    "EXECUTORS",
    "Executor",
    "InProcess",
    "ProcessPool",
    "Resources",
    "Unit",
    "UnitRecord",
    "UnitsFailed",
    "local_executor",
    "make_executor",
]

EXECUTORS = ("local", "ray")


def make_executor(
    name: str = "local",
    *,
    workers: int = 1,
    address: str | None = None,
    gpus: int = 0,
    units_per_gpu: int = 1,
    retries: int = 2,
) -> Executor:
    """``"local"``: :func:`local_executor` with ``workers``; ``"ray"``: a
    :class:`~mergelab.executor.on_ray.RayExecutor` on ``address`` (None: a local instance
    with ``workers`` cores)."""
    if name == "local":
        if address is not None:
            raise MergelabError("--address is for --executor ray")
        return local_executor(workers, gpus=gpus, units_per_gpu=units_per_gpu, retries=retries)
    if name == "ray":
        from mergelab.executor.on_ray import RayExecutor, _ray

        _ray()  # not installed: one line now, before the study claims its folder
        executor = RayExecutor(
            address,
            num_cpus=None if address else workers,
            units_per_gpu=units_per_gpu,
            retries=retries,
        )
        executor.connect()  # a cluster that does not answer: one line, before any folder
        return executor
    raise MergelabError(f"unknown executor {name!r}; use one of: {', '.join(EXECUTORS)}")
