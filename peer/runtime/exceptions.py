"""What a trio nursery raised, unwrapped.

A nursery wraps whatever its tasks raise in an ``ExceptionGroup``, nested
once per nursery, even when one task failed alone. Callers that promise a
plain exception (a run's error, a CLI's message, ``Node``'s own errors) look
at the leaves, in the order the tasks raised them.
"""

from __future__ import annotations


def leaf_exceptions(error: BaseException) -> list[BaseException]:
    """The exceptions inside a (nested) group, depth first; a plain
    exception is its own only leaf."""
    if not isinstance(error, BaseExceptionGroup):
        return [error]
    return [leaf for inner in error.exceptions for leaf in leaf_exceptions(inner)]
