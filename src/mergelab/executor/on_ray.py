"""Run units on Ray: a local instance, or an existing cluster (``address``).

Each unit is one Ray task that asks for the unit's cores, GPU share and memory; Ray places
it and sets ``CUDA_VISIBLE_DEVICES``, so a GPU unit runs on ``cuda``. Tasks read and write
the study folder, so on a cluster that folder must be on storage every node mounts at the
same path (NFS, EFS, a shared disk); a local instance needs nothing. Ray's own retries are
off: a failed task comes back here and is retried by :class:`~mergelab.executor.base.Executor`,
the same way as on every other executor (install with ``pip install "mergelab[ray]"``).
"""

from __future__ import annotations

from typing import Any

from mergelab.errors import MergelabError
from mergelab.executor.base import Executor, Finished
from mergelab.executor.units import Unit, call_unit

__all__ = ["RayExecutor"]


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MergelabError(
            "--executor ray needs Ray, which is not installed: pip install 'mergelab[ray]'"
        ) from None
    return ray


def _reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse an ``address`` whose host:port accepts no connection."""
    import socket

    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise MergelabError(
            f"--address {address}: expected HOST:PORT, ray://HOST:PORT or auto"
        ) from None
    try:
        socket.create_connection((host or "localhost", number), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise MergelabError(
            f"--address {address}: no Ray cluster answers there ({reason}); start one "
            "(`ray start --head`) or leave --address out for a local instance"
        ) from None


class RayExecutor(Executor):
    """Units as Ray tasks.

    Args:
        address: a running cluster (``ray://host:10001``, ``host:6379`` or ``auto``); None
            starts a local instance with ``num_cpus`` cores (default: all) for this run.
        num_cpus, num_gpus: the local instance's resources (ignored with ``address``).
        units_per_gpu: a GPU unit asks for ``1 / units_per_gpu`` of a GPU.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self._started = False
        self._remote: Any = None
        self._cluster_gpus = 0.0

    @property
    def slots(self) -> int:
        return 1 << 30  # Ray queues tasks by their resources

    def describe(self) -> str:
        if self.address is not None:
            return f"Ray cluster at {self.address}"
        return f"local Ray instance, {self.num_cpus or 'all'} cores"

    def connect(self) -> None:
        """Start the local instance or join the cluster now (a study does this before it
        creates its folder); an address nothing answers on is one error line within
        ``timeout`` seconds instead of Ray's endless retries."""
        if self.address not in (None, "auto", "local"):
            _reachable(self.address)
        self._connect()

    def _connect(self) -> Any:
        ray = _ray()
        if self._remote is not None:
            return ray
        if not ray.is_initialized():
            options: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
            }
            if self.address is None:
                options.update(num_cpus=self.num_cpus, num_gpus=self.num_gpus)
            try:
                ray.init(address=self.address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"Ray cluster at {self.address!r}" if self.address else "local Ray"
                raise MergelabError(f"cannot start {where}: {exc}") from None
            self._started = True
        self._remote = ray.remote(call_unit)
        self._cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        return ray

    def _submit(self, unit: Unit, kwargs: dict[str, Any]) -> Any:
        self._connect()
        res = unit.resources
        options: dict[str, Any] = {"num_cpus": res.cpus, "max_retries": 0}
        if res.gpus > 0 and self._cluster_gpus > 0:  # no GPU in the cluster: on its CPUs
            options["num_gpus"] = min(1.0, 1.0 / self.units_per_gpu)
            kwargs = {**kwargs, "device": "cuda"}  # Ray sets CUDA_VISIBLE_DEVICES
        if res.memory_mb is not None:
            options["memory"] = res.memory_mb * 2**20
        return self._remote.options(**options).remote(unit.fn, unit.args, kwargs, self.threads)

    def _wait(self, handles: list[Any]) -> list[Finished]:
        ray = self._connect()
        ready, _ = ray.wait(handles, num_returns=1)
        out: list[Finished] = []
        for ref in ready:
            try:
                value, seconds, where = ray.get(ref)
            except Exception as exc:  # the unit raised, or its worker or node died
                out.append((ref, None, exc, 0.0, "ray"))
            else:
                out.append((ref, value, None, seconds, where))
        return out

    def _close(self, cancel: bool) -> None:
        if self._remote is None:
            return
        ray = _ray()
        self._remote = None
        if self._started:
            ray.shutdown()
            self._started = False
