"""``AsyncNullConnectionPool``: psycopg_pool's asyncio null pool."""

from __future__ import annotations

from typing import Any

import psycopg

from ..pool.aio import AsyncPoolMethods
from ..pool.settings import ClassSignature
from .base import NullShared, psycopg_init
from .errors import PoolTimeout
from .pool_async import ACT, AsyncConnectionPool, AsyncPsycopgMethods
from .settings import docstring_section, signature

__all__ = ["AsyncNullConnectionPool"]


class _AsyncNullMethods(NullShared, AsyncPsycopgMethods[Any]):
    """What makes an AsyncConnectionPool a null pool."""

    # PSYCOPG_SETTINGS, with min_size 0 (AsyncNullConnectionPool.__signature__).
    __init__ = psycopg_init(psycopg.AsyncConnection, null=True)

    async def resize(self, min_size: int, max_size: int | None = None) -> None:  # type: ignore[override]
        """Change max_size during runtime; min_size must remain 0."""
        max_size = self._null_resize(min_size, max_size)
        if not self._resize_not_running(0, max_size):
            AsyncPoolMethods.resize(self, 0, max_size)

    async def putconn(self, conn: Any) -> None:
        """Return a connection: closed, unless a task waits for one."""
        core = self._core
        if core.waiting and not core.closed:
            await self.release(conn)
        else:
            await self.discard(conn)

    async def wait(self, timeout: float = 30.0) -> None:  # type: ignore[override]
        """Checks that a connection can be made: one is made and closed (a
        null pool keeps none); if not within ``timeout`` seconds, closes the
        pool and raises PoolTimeout."""
        refused = self._not_usable()
        if refused is not None:
            raise refused
        try:
            conn = await self.getconn(timeout)
        except PoolTimeout as exc:
            await self.close()
            raise PoolTimeout(f"pool initialization incomplete after {timeout} sec") from (
                exc.__cause__
            )
        await self.putconn(conn)


class AsyncNullConnectionPool(_AsyncNullMethods, AsyncConnectionPool[ACT]):
    """psycopg_pool's ``AsyncNullConnectionPool``: no connection is kept;
    each is made on demand and closed when returned (or handed straight to a
    task waiting for one)."""

    __module__ = "pypool.psycopg"
    __signature__ = ClassSignature(signature(psycopg.AsyncConnection, null=True))


AsyncNullConnectionPool.__doc__ = (
    f"{AsyncNullConnectionPool.__doc__}\n{docstring_section(psycopg.AsyncConnection, null=True)}\n"
)
