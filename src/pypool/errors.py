"""The exceptions pypool raises.

Defined once here and raised by both cores and by the policy layer, so an
``except pypool.PoolTimeout`` clause works whichever core is in use.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ConnectionFailed",
    "InvalidSlot",
    "NotBorrowed",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "TooManyRequests",
    "UnusableConnection",
]


class PoolError(Exception):
    """Base class of every error pypool raises."""

    __module__ = "pypool"


class PoolClosed(PoolError):
    """The pool is closed: it hands out nothing more.

    Raised by an operation attempted after ``close()``, and in every caller
    that was waiting for a connection when the pool was closed.
    """

    __module__ = "pypool"


class PoolTimeout(PoolError, TimeoutError):
    """No connection became available within the timeout.

    The message says how long the caller waited and what state the pool was
    in; when the pool failed to connect, the last connection error is the
    exception's ``__cause__``.

    ``idle`` is how many connections the pool held idle when it decided
    that this caller timed out (0 when none could be taken; None when the
    exception did not come from that decision).
    """

    __module__ = "pypool"

    #: Idle connections at the moment of the decision (None: not known).
    idle: int | None = None


class TooManyRequests(PoolError):
    """The wait queue is full (``max_waiting`` callers already wait).

    Raised at once instead of queueing the caller: the service is overloaded
    and should shed this request.
    """

    __module__ = "pypool"


class NotBorrowed(PoolError, ValueError):
    """The object given back was not borrowed from this pool.

    Either it never came from this pool, or it was returned (or discarded)
    already. Nothing in the pool was changed.
    """

    __module__ = "pypool"


class InvalidSlot(PoolError, ValueError):
    """A slot operation named a slot that does not exist or is not in the
    state the operation needs (for example ``fill()`` of a slot that was not
    reserved). Nothing in the pool was changed."""

    __module__ = "pypool"


class ConfigurationError(PoolError, ValueError):
    """A setting is invalid; the message says which and what to change."""

    __module__ = "pypool"


class UnusableConnection(PoolError):
    """A reset or check found the connection closed, broken or busy: the pool
    discards it."""

    __module__ = "pypool"


class ConnectionFailed(PoolError):
    """The pool could not connect.

    Raised by ``wait(fail_fast=True)`` (and ``open(wait=True,
    fail_fast=True)``) at the first failed connect, with the driver's error
    as the ``__cause__``. It is also what a connect fails with when the
    factory returns something that cannot be a new connection (None, a
    connection already in the pool): then it is the ``__cause__`` of the
    ``PoolTimeout`` a waiting caller gets, and says what the factory
    returned.
    """

    __module__ = "pypool"
