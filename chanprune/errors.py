"""Errors raised by chanprune; the CLI turns each into one line and exit code 2."""
from __future__ import annotations


class ChanpruneError(Exception):
    """Base class: a bad input or a request chanprune cannot honour, with the fix in the message."""


class UnknownArchError(ChanpruneError, ValueError):
    """An architecture name that the zoo does not know."""


class ArtifactError(ChanpruneError, ValueError):
    """A file that is missing, unreadable, of the wrong kind or of an unknown version."""


class PlanError(ChanpruneError, ValueError):
    """A prune plan that does not fit the model it is applied to."""


class UnsupportedModelError(ChanpruneError):
    """A model whose graph chanprune cannot gate or cut exactly."""
