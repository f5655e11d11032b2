"""The types the policy layer speaks in: the connection type a pool is
generic in, and :class:`Adapter`, what a pool calls on its ``adapter``.

``Pool[ConnT]`` and ``AsyncPool[ConnT]`` take ``ConnT`` from the factory's
return type (``AsyncPool`` also from a coroutine function's result), so that
``acquire()``, ``connection()`` and ``run()`` hand out that type to a type
checker. At run time nothing here is on the hot path: the protocol is only
read by type checkers (and by ``isinstance``, which nothing in the pool does).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

__all__ = ["Adapter", "ConnT"]

#: The type of the connections a pool holds: what its factory returns.
ConnT = TypeVar("ConnT")


class Adapter(Protocol):
    """What a pool calls on its ``adapter=``: the driver knowledge.

    Implemented (structurally: no base class to derive from) by the module
    :mod:`pypool.dbapi` and its :class:`~pypool.dbapi.DBAPIAdapter`, by
    :mod:`pypool.asyncpg`, and by the psycopg pools' adapters. With an
    :class:`~pypool.AsyncPool` each method may return an awaitable instead
    (a coroutine function), which the pool awaits. The return types are
    ``object`` so that both kinds fit; what each returns is said below.
    """

    def reset_for(self, conn: Any, /) -> object:
        """How to reset ``conn`` on every return, asked once per new
        connection: ``None`` (nothing to do), the name of a method of the
        connection to call (``"rollback"``), or a callable taking it."""
        ...

    def check(self, conn: Any, /) -> object:
        """Raises if ``conn`` is not usable (a ping); returns nothing, or an
        awaitable for an asyncio pool. An adapter whose ``check`` also takes
        ``timeout=`` gets what is left of the caller's wait."""
        ...

    def is_broken(self, conn: Any, exc: BaseException | None = None, /) -> object:
        """Whether ``exc``, raised while ``conn`` was in use, means the
        connection is broken (true) rather than the work failing (false);
        a bool, or an awaitable of one."""
        ...

    def close(self, conn: Any, /) -> object:
        """Closes ``conn``, ignoring the errors of a connection already
        broken; nothing, or an awaitable."""
        ...
