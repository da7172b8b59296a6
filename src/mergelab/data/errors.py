"""Dataset errors: part of the MergelabError family so the CLI prints them plainly."""

import pickle

from mergelab.errors import MergelabError


class DatasetError(MergelabError):
    """A dataset could not be loaded or used as asked; the message says what to fix."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A file or folder a loader needs is missing; the message names it.

    Also a FileNotFoundError so callers that catch OS errors still see it.
    """


class UnsafePickleError(DatasetError, pickle.UnpicklingError):
    """A pickle asked for something other than plain data (a function, a class, ...)."""
