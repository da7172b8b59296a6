"""The package's one error family, so the CLI can print every anticipated failure plainly.

Every failure a user can cause (a bad file, option, key or value) raises a
:class:`MergelabError` whose message names the file, tensor, key or option at fault; the
CLI prints it as one ``mergelab: error:`` line. The subclasses only say which part of the
tool failed, for callers of the Python API who want to catch one kind.
"""


class MergelabError(ValueError):
    """Bad input or a failed check: the message names the file, tensor, key or option."""


class MergeError(MergelabError):
    """A merge could not be planned or run (inputs, recipe, method parameters, output)."""


class ConfigError(MergelabError):
    """A study, training or compare configuration is invalid; the message names the key."""
