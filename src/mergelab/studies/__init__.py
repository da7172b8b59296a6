"""The studies: the perspectives of "Rethinking Weight-Averaged Model-merging", each a
function from a shared context to tidy rows, and the runner that writes the report."""

from mergelab.studies.config import PRESETS, StudyConfig, load_config
from mergelab.studies.runner import PERSPECTIVES, run_study

__all__ = ["PERSPECTIVES", "PRESETS", "StudyConfig", "load_config", "run_study"]
