"""The contract between the merge engine and a merge method, and the registry of methods.

A method sees one parameter at a time: the stacked values of that parameter in every input
model (``tensors``, a float32/float64 NumPy array of shape ``[n, ...]`` that the method may
overwrite) and the base model's (``base``), and returns the merged values. An *elementwise*
method (every output element depends only on the same element of the inputs, given
statistics gathered beforehand) is fed flat chunks, so memory stays bounded however large a
tensor is; other methods get whole tensors in their shape.

Statistics come in two scopes. ``tensor_statistics`` sees one parameter of every model
before its chunks are merged (TIES's per-tensor top-k threshold, Model Stock's angles), in
full (``DeltaAccess.tensor``) or chunk by chunk (``DeltaAccess.chunks``, memory bounded by
the chunk); ``model_statistics`` streams over the whole model first (TIES's whole-model
top-k, the TIES paper's variant). Both return typed objects (subclasses of
:class:`TensorStatistics` and :class:`ModelStatistics`), which the engine hands back through
:class:`TensorContext`.

The dry run's peak-memory estimate asks a method for its own workspace
(:meth:`MergeMethod.workspace_bytes`): what it allocates beyond its inputs and output (an
SVD's factors, say).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from mergelab.io.dtypes import round_to

BasePolicy = Literal["required", "optional", "unused", "ignored"]
"""Whether a method takes a base model. ``ignored``: a base is accepted (a command written
for task-vector methods works unchanged) and checked against the models' headers, but never
read, because it cancels out of the result; ``base_ignored_reason`` says why."""


class MethodParams(BaseModel):
    """Global hyperparameters of a method. Frozen, and unknown names are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class ModelParams(BaseModel):
    """Per-input-model hyperparameters (``weight`` for all; more per method)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: float = 1.0


@dataclass(frozen=True)
class TensorStatistics:
    """What ``tensor_statistics`` returns for one parameter: subclass with typed fields."""


@dataclass(frozen=True)
class ModelStatistics:
    """What ``model_statistics`` returns (and ``model_stats_for`` narrows per parameter)."""


@dataclass
class TensorContext:
    """Where a chunk sits: its parameter, its flat range, and the statistics gathered for it."""

    name: str
    shape: tuple[int, ...]
    start: int = 0
    stats: TensorStatistics | None = None  # from tensor_statistics
    model_stats: ModelStatistics | None = None  # from model_statistics, via model_stats_for
    model_offset: int = 0  # position of this tensor's first element in the whole model
    rounding: str | None = None  # --compat mergekit: the dtype mergekit computes in

    def round(self, values: np.ndarray) -> np.ndarray:
        """``values`` rounded in place to mergekit's compute dtype under ``--compat
        mergekit`` (a no-op otherwise, and for float32/float64): methods call it where
        mergekit's torch code, working in that dtype, rounds an intermediate result."""
        if self.rounding is not None:
            if not isinstance(values, np.ndarray):  # a NumPy scalar cannot change in place
                values = np.array(values)
            round_to(values, self.rounding)
        return values

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class DeltaAccess:
    """What statistics see: task vectors (model minus base, or the raw model without base).

    Tensor scope: ``tensor(i)`` gives model i's whole parameter (flat, a fresh array);
    ``chunks()`` yields ``(start, values)`` over the parameter, ``values`` the ``[n, length]``
    task vectors of every model for the flat range from ``start`` (memory: one chunk).
    Model scope: ``stream(i)`` yields ``(TensorContext, values)`` over every merged parameter
    of model i. ``inputs()`` is ``chunks()`` of the stored values themselves, not task
    vectors: ``[n_models (+ 1 for the base, last), length]`` (slerp's angle needs them).
    """

    n_models: int
    tensor: Callable[[int], np.ndarray] | None = None
    stream: Callable[[int], Iterable[tuple[TensorContext, np.ndarray]]] | None = None
    chunks: Callable[[], Iterable[tuple[int, np.ndarray]]] | None = None
    inputs: Callable[[], Iterable[tuple[int, np.ndarray]]] | None = None
    total_numel: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class MergeMethod(ABC):
    """One merge method: typed hyperparameters plus a pure function over stacked tensors."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    PerModel: ClassVar[type[ModelParams]] = ModelParams
    base_policy: ClassVar[BasePolicy] = "unused"
    base_ignored_reason: ClassVar[str] = ""
    """Why a base cannot change the result, where ``base_policy`` is ``ignored``."""
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = None
    elementwise: ClassVar[bool] = True
    whole_tensor_statistics: ClassVar[bool] = True
    """Whether ``tensor_statistics`` reads whole parameters (``DeltaAccess.tensor``) rather
    than chunks (``DeltaAccess.chunks``): the dry run counts their memory."""
    example_params: ClassVar[dict[str, Any]] = {}
    """Values for parameters without a default (mergekit requires them too), for the
    registry-generated tests and the demo."""
    identical_inputs_give_input: ClassVar[bool] = True
    """With default parameters, n identical models (and any base) merge to that model
    (to float rounding). The registry-generated tests hold every method to it."""
    identical_inputs_reason: ClassVar[str] = ""
    """Why not, where ``identical_inputs_give_input`` is False."""

    @classmethod
    def mergekit_params(cls, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The recipe's global parameters as mergekit reads them (``--compat mergekit``),
        where its meaning or default differs from mergelab's, and a note saying so."""
        return params, None

    def mergekit_workspace_bytes(self, numel: int, n_models: int) -> int:
        """Memory ``--compat mergekit`` takes beyond :meth:`workspace_bytes` for a tensor of
        ``numel`` values: mergekit's kernels, run by torch on whole tensors (copies in its
        dtypes, float32 results)."""
        return 0 if self.elementwise else 2 * 4 * numel

    mergekit_result_dtype: ClassVar[str | None] = None
    """The dtype mergekit's result has whatever its compute dtype (torch promoted it), where
    it has one: ``--compat mergekit`` writes it when the recipe names no ``out_dtype``,
    and does not round the result to the compute dtype."""

    def __init__(self, params: MethodParams, per_model: list[ModelParams]) -> None:
        self.params = params
        self.per_model = per_model

    def check_counts(self, n_models: int, has_base: bool) -> None:
        """Raise ValueError when the number of input models does not suit the method."""
        most = self.max_models
        if n_models < self.min_models or (most is not None and n_models > most):
            bound = f"at least {self.min_models}" + ("" if most is None else f" and at most {most}")
            raise ValueError(f"{self.name}: needs {bound} models besides the base; got {n_models}")

    @property
    def uses_tensor_statistics(self) -> bool:
        return False

    @property
    def uses_model_statistics(self) -> bool:
        return False

    def tensor_statistics(self, ctx: TensorContext, deltas: DeltaAccess) -> TensorStatistics | None:
        """Statistics of one parameter over its whole extent, for every model."""
        return None

    def model_statistics(self, deltas: DeltaAccess) -> ModelStatistics | None:
        """Statistics over whole models, computed before any tensor is merged."""
        return None

    def model_stats_for(self, stats: Any, ctx: TensorContext) -> Any:
        """The part of the model statistics that one tensor needs."""
        return stats

    def workspace_bytes(
        self, name: str, shape: tuple[int, ...], n_models: int, itemsize: int
    ) -> int:
        """Memory the method allocates for parameter ``name`` of ``shape`` beyond the inputs
        it is given and the output it returns (factors of an SVD, say): the dry run adds the
        largest over the parameters to its peak-memory estimate. The name matters where a
        method treats parameters differently by name (SVD methods' low-rank scope).
        ``itemsize``: bytes per value of the compute dtype. Elementwise methods count per
        chunk (``shape`` is then the chunk's, flat)."""
        return 0

    @abstractmethod
    def merge(self, tensors: np.ndarray, base: np.ndarray | None, ctx: TensorContext) -> np.ndarray:
        """Merged values of one chunk (elementwise methods) or one whole tensor."""

    def weights(self, like: np.ndarray) -> np.ndarray:
        """Per-model weights shaped to broadcast over ``like`` (``[n, ...]``)."""
        w = np.array([p.weight for p in self.per_model], dtype=like.dtype)
        return w.reshape(-1, *([1] * (like.ndim - 1)))


def seeded_generator(seed: int, *parts: object) -> np.random.Generator:
    """A generator whose state depends only on ``seed`` and ``parts`` (a tensor name, a model
    index, a block): random masks are the same however the work is chunked."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


REGISTRY: dict[str, type[MergeMethod]] = {}


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    if cls.name in REGISTRY:
        raise ValueError(f"merge method {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[MergeMethod]:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"unknown merge method {name!r}; available: {known}") from None
