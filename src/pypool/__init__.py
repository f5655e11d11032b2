"""pypool: a database connection pool with a native hot path.

``pypool.CORE`` says which core is in use: ``"native"`` (the compiled
``pypool._corepool``) or ``"python"`` (``pypool._corepool_py``, used where the
extension is absent, on interpreters other than CPython, or when
``PYPOOL_NO_EXTENSIONS=1`` is set).
"""

from __future__ import annotations

from ._core import CORE, CorePool, WaiterTicket
from .aio import AsyncPool
from .pool import Pool
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
from . import asyncpg, dbapi, stats

__version__ = "0.1.0"

__all__ = [
    "CORE",
    "AsyncPool",
    "ConfigurationError",
    "ConnectionFailed",
    "CorePool",
    "InvalidSlot",
    "NotBorrowed",
    "PoolClosed",
    "Pool",
    "PoolError",
    "PoolTimeout",
    "TooManyRequests",
    "UnusableConnection",
    "WaiterTicket",
    "asyncpg",
    "dbapi",
    "stats",
    "__version__",
]
