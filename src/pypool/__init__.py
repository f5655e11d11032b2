"""pypool: a database connection pool with a native hot path.

``pypool.CORE`` says which core is in use: ``"native"`` (the compiled
``pypool._corepool``) or ``"python"`` (``pypool._corepool_py``, used where the
extension is absent, on interpreters other than CPython, or when
``PYPOOL_NO_EXTENSIONS=1`` is set).
"""

from __future__ import annotations

from . import asyncpg, dbapi, stats
from ._core import CORE, CorePool, WaiterTicket
from .aio import AsyncPool
from .errors import (
    ConfigurationError,
    ConnectionFailed,
    InvalidSlot,
    NotBorrowed,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyRequests,
    UnusableConnection,
)
from .pool import Pool

__version__ = "0.1.0"

__all__ = [
    "CORE",
    "AsyncPool",
    "ConfigurationError",
    "ConnectionFailed",
    "CorePool",
    "InvalidSlot",
    "NotBorrowed",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "TooManyRequests",
    "UnusableConnection",
    "WaiterTicket",
    "__version__",
    "asyncpg",
    "dbapi",
    "stats",
]
