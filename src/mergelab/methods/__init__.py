"""Merge methods: one module each, registered by name.

Every module of this package is imported here, so a new module's ``@register`` classes join
the registry (and the registry-generated tests) without being listed anywhere.
"""

import importlib
import pkgutil

from mergelab.methods.base import (
    REGISTRY,
    DeltaAccess,
    MergeMethod,
    MethodParams,
    ModelParams,
    ModelStatistics,
    TensorContext,
    TensorStatistics,
    get_method,
    register,
)

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
del _module

__all__ = [
    "REGISTRY",
    "DeltaAccess",
    "MergeMethod",
    "MethodParams",
    "ModelParams",
    "ModelStatistics",
    "TensorContext",
    "TensorStatistics",
    "get_method",
    "register",
]
