"""mergelab: combine trained networks in weight space and feature space, and explain why."""

from mergelab.errors import MergeError

__version__ = "0.1.0"

__all__ = ["MergeError", "__version__"]
