"""psycopg_pool's exceptions: each subclasses pypool's error of the same name
and ``psycopg.OperationalError``, so ``except`` clauses written for either
keep working."""

from __future__ import annotations

from typing import Any

import psycopg

from .. import errors

__all__ = ["PoolClosed", "PoolTimeout", "TooManyRequests"]


class PoolClosed(errors.PoolClosed, psycopg.OperationalError):
    """Attempt to get a connection from a closed pool."""

    __module__ = "pypool.psycopg"

    def __init__(self, *args: Any) -> None:
        psycopg.OperationalError.__init__(self, *args)


class PoolTimeout(errors.PoolTimeout, psycopg.OperationalError):
    """The pool couldn't provide a connection in acceptable time."""

    __module__ = "pypool.psycopg"

    def __init__(self, *args: Any) -> None:
        psycopg.OperationalError.__init__(self, *args)


class TooManyRequests(errors.TooManyRequests, psycopg.OperationalError):
    """Too many requests in the queue waiting for a connection from the pool."""

    __module__ = "pypool.psycopg"

    def __init__(self, *args: Any) -> None:
        psycopg.OperationalError.__init__(self, *args)
