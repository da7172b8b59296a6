"""mergelab: combine trained networks in weight space and feature space, and explain why."""

from mergelab.errors import ConfigError, MergeError, MergelabError

__version__ = "0.1.0"

__all__ = ["ConfigError", "MergeError", "MergelabError", "__version__"]
