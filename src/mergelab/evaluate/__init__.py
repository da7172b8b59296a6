"""Evaluate each checkpoint once per split; keep logits and features for every combination.

* :class:`Evaluator` - eval-mode, no-grad, batched passes (CUDA when present) whose outputs
  are cached on disk by checkpoint content + split + architecture; :class:`PassCounter`
  records every forward pass.
* :mod:`mergelab.evaluate.metrics` - accuracy, mean AUROC (multi-label), NLL, ECE.
* :class:`ModelSource` - a checkpoint path or state dict with its content hash.
"""

from mergelab.evaluate.cache import OutputCache, Outputs, default_cache_dir
from mergelab.evaluate.evaluator import (
    CheckpointMismatchError,
    Evaluator,
    PassCounter,
    PassRecord,
    default_device,
)
from mergelab.evaluate.metrics import (
    AurocResult,
    accuracy,
    compute_metrics,
    ece,
    mean_auroc,
    nll,
    primary_metric,
)
from mergelab.evaluate.source import ModelSource
from mergelab.hashing import file_sha256, state_dict_sha256

__all__ = [
    "AurocResult",
    "CheckpointMismatchError",
    "Evaluator",
    "ModelSource",
    "OutputCache",
    "Outputs",
    "PassCounter",
    "PassRecord",
    "accuracy",
    "compute_metrics",
    "default_cache_dir",
    "default_device",
    "ece",
    "file_sha256",
    "mean_auroc",
    "nll",
    "primary_metric",
    "state_dict_sha256",
]
