"""Plan, check and run a merge, one tensor (and one chunk) at a time.

Flow: open every checkpoint (headers only) -> check names, shapes, dtypes, base and
hyperparameters -> plan (:mod:`mergelab.engine.plan`) -> optional whole-model statistics
pass -> for each tensor: optional per-tensor statistics, then chunks read (in a background
thread, one chunk ahead), merged and written in place (:mod:`mergelab.engine.execute`).
Peak memory follows the chunk size and the largest tensor, never the size of the model.
The entry points (files, state dicts, the dry run) are in :mod:`mergelab.engine.api`.

The chunk size is ``mergelab.engine.plan.CHUNK_ELEMENTS`` (read at run time: patch it
there).
"""

from mergelab.engine.api import (
    DEFAULT_SHARD_BYTES,
    check_plan_output,
    merge,
    merge_state_dicts,
    open_recipe,
    versions,
)
from mergelab.engine.execute import MemorySink, Sink, execute
from mergelab.engine.plan import (
    CHUNK_ELEMENTS,
    MergePlan,
    TensorPlan,
    build_plan,
    check_inputs,
    method_class,
)

__all__ = [
    "CHUNK_ELEMENTS",
    "DEFAULT_SHARD_BYTES",
    "MemorySink",
    "MergePlan",
    "Sink",
    "TensorPlan",
    "build_plan",
    "check_inputs",
    "check_plan_output",
    "execute",
    "merge",
    "merge_state_dicts",
    "method_class",
    "open_recipe",
    "versions",
]
