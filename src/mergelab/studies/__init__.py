"""The studies of ``mergelab study``: each a function from a shared context to tidy rows,
declared once in :mod:`mergelab.studies.registry`, and the runner that writes the report.

Importing this package does not import torch (the report reads the registry); the
runner is loaded on first use.
"""

from typing import Any

from mergelab.studies.config import PRESETS, StudyConfig, load_config
from mergelab.studies.registry import STUDIES, Study

__all__ = ["PRESETS", "STUDIES", "Study", "StudyConfig", "load_config", "run_study"]


def __getattr__(name: str) -> Any:
    if name == "run_study":
        from mergelab.studies.runner import run_study

        return run_study
    raise AttributeError(f"module 'mergelab.studies' has no attribute {name!r}")
