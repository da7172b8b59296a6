"""Merge methods: one module each, registered by name."""

from mergelab.methods import linear, model_stock, slerp, task_vectors  # noqa: F401  (register)
from mergelab.methods.base import (
    REGISTRY,
    DeltaAccess,
    MergeMethod,
    MethodParams,
    ModelParams,
    TensorContext,
    get_method,
    register,
)

__all__ = [
    "REGISTRY",
    "DeltaAccess",
    "MergeMethod",
    "MethodParams",
    "ModelParams",
    "TensorContext",
    "get_method",
    "register",
]
