"""pypool: a database connection pool with a native hot path.

``pypool.CORE`` says which core is in use: ``"native"`` (the compiled
``pypool._corepool``) or ``"python"`` (``pypool._corepool_py``, used where the
extension is absent, on interpreters other than CPython, or when
``PYPOOL_NO_EXTENSIONS=1`` is set).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import asyncpg, dbapi, stats
from ._core import CORE, CorePool, SlotInfo, WaiterTicket
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
from .pool import Adapter, AsyncPool, Pool

__all__ = [
    "CORE",
    "Adapter",
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
    "SlotInfo",
    "TooManyRequests",
    "UnusableConnection",
    "WaiterTicket",
    "__version__",
    "asyncpg",
    "dbapi",
    "stats",
]

if TYPE_CHECKING:
    #: The installed distribution's version (``pyproject.toml`` is its one source).
    __version__: str
else:

    def __getattr__(name: str) -> str:
        # __version__ is read from the installed metadata when first asked
        # for: importlib.metadata costs a third of pypool's own import time.
        if name != "__version__":
            raise AttributeError(f"module 'pypool' has no attribute {name!r}")
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("pypool")
        except PackageNotFoundError:  # imported from a source tree never installed
            value = "0+unknown"
        globals()["__version__"] = value
        return value
