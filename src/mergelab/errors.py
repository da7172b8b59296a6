"""One exception type for every user-facing failure, so the CLI can print it plainly."""


class MergeError(ValueError):
    """Bad input or a failed check: the message names the file, tensor or option at fault."""
