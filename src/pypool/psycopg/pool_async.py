"""``AsyncConnectionPool``: psycopg_pool's asyncio pool, on pypool's
``AsyncPool``."""

from __future__ import annotations

import asyncio
import warnings
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from .. import _core, errors
from .._weak import WeakMethod
from ..pool import AsyncPool
from ..pool.aio import AsyncPoolMethods
from ..pool.settings import ClassSignature
from .base import (
    IDLE,
    AsyncConnect,
    AsyncPsycopgAdapter,
    Lease,
    PsycopgStats,
    check_connection_async,
    check_sizes,
    left_idle,
    logger,
    psycopg_error,
    psycopg_init,
    user_stacklevel,
)
from .errors import PoolClosed, PoolTimeout
from .settings import docstring_section, signature

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

__all__ = ["AsyncConnectionPool"]

#: The connection type of a pool: what its ``connection_class`` makes.
ACT = TypeVar("ACT", bound="psycopg.AsyncConnection[Any]")


class AsyncPsycopgMethods(PsycopgStats, AsyncPoolMethods[ACT]):
    """Everything of AsyncConnectionPool but the core's hot path."""

    _null = False

    _connect_type = AsyncConnect
    _adapter_type = AsyncPsycopgAdapter

    # The keywords, their defaults and their bounds are pypool.psycopg.settings.
    # PSYCOPG_SETTINGS (AsyncConnectionPool.__signature__).
    __init__ = psycopg_init(psycopg.AsyncConnection)

    def _start(self, open: bool | None) -> None:
        if open:
            self._warn_open_async()
        if open or open is None:
            # As psycopg_pool: a pool opened (implicitly too) needs a loop.
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError(f"{type(self).__name__} open with no running loop") from None
        if open:
            self._opened = True
        elif open is None:
            self.getconn = WeakMethod(self._getconn_warn)  # type: ignore[method-assign]
            self._opened = True
        else:
            self.getconn = WeakMethod(self._getconn_not_open)  # type: ignore[method-assign]

    getconn = AsyncPoolMethods.acquire
    putconn = AsyncPoolMethods.release

    def _warn_open_async(self) -> None:
        warnings.warn(
            f"opening the async pool {type(self).__name__} in the constructor is deprecated"
            " and will not be supported anymore in a future release. Please use `await "
            "pool.open()`, or use the pool as context manager using: `async with "
            f"{type(self).__name__}(...) as pool: `...",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )

    async def _getconn_warn(self, timeout: float | None = None) -> Any:
        self.__dict__.pop("getconn", None)
        self._warn_open_async()
        return await self.getconn(timeout)

    async def _getconn_not_open(self, timeout: float | None = None) -> Any:
        raise PoolClosed(f"the pool {self.name!r} is not open yet")

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:  # type: ignore[override]
        """Opens the pool on the running loop: connects ``min_size``
        connections and accepts clients; with ``wait``, as :meth:`wait`."""
        if self._core.closed:
            raise PoolClosed("pool has already been opened/closed and cannot be reused")
        self.__dict__.pop("getconn", None)
        self._opened = True
        await AsyncPoolMethods.open(self)
        if wait:
            await self.wait(timeout)

    async def wait(self, timeout: float = 30.0) -> None:  # type: ignore[override]
        """Waits for ``min_size`` connections; if they are not ready within
        ``timeout`` seconds, closes the pool and raises PoolTimeout."""
        refused = self._not_usable()
        if refused is not None:
            raise refused
        try:
            await AsyncPoolMethods.wait(self, timeout)
        except errors.PoolTimeout as exc:
            await self.close()
            raise PoolTimeout(f"pool initialization incomplete after {timeout} sec") from (
                exc.__cause__
            )
        except errors.PoolClosed:  # closed meanwhile
            raise PoolClosed(f"the pool {self.name!r} is already closed") from None

    async def close(self, timeout: float = 5.0) -> None:
        """Close the pool and make it unavailable to new clients: waiting and
        future tasks get PoolClosed; borrowed connections are closed when
        returned. A pool never opened is left as it is (it may be opened
        later), as psycopg_pool's."""
        if not self._opened:
            return
        await AsyncPoolMethods.close(self, timeout)

    async def __aenter__(self) -> Any:
        self.__dict__.pop("getconn", None)
        await self.open()
        return self

    def connection(self, timeout: float | None = None) -> AbstractAsyncContextManager[ACT]:
        """Context manager to obtain a connection from the pool: commit on
        success, rollback on error, then back to the pool."""
        return Lease(self, timeout)

    async def _end_lease(self, conn: Any, exc_type: type[BaseException] | None) -> None:
        """The end of psycopg's connection block (commit on success, rollback
        on error), then the connection goes back, whatever is raised."""
        try:
            if not conn.closed and conn.pgconn.transaction_status != IDLE:
                if exc_type is None:
                    await conn.commit()
                else:
                    try:
                        await conn.rollback()
                    except Exception as exc2:
                        logger.warning("error ignored in rollback on %s: %s", conn, exc2)
        finally:
            await self.putconn(conn)

    def _failed(self, exc: Exception, timeout: float) -> BaseException:
        return psycopg_error(self, exc, timeout)

    def _after_fork_in_child(self) -> None:
        AsyncPoolMethods._after_fork_in_child(self)
        self._forget_failures()  # the parent's, and its lock maybe held at the fork

    async def _configure_new(self, conn: Any) -> None:
        configure = self._user_configure
        if configure is not None:
            result = configure(conn)
            if hasattr(result, "__await__"):
                await result
            left_idle(conn, "configure", configure)

    async def resize(self, min_size: int, max_size: int | None = None) -> None:  # type: ignore[override]
        """Change the size of the pool during runtime."""
        min_size, max_size = check_sizes(min_size, max_size, self._null)
        if not self._resize_not_running(min_size, max_size):
            AsyncPoolMethods.resize(self, min_size, max_size)

    async def drain(self) -> None:
        """Replace every connection: idle ones now, borrowed ones when they
        are returned (nothing to do on a closed pool)."""
        if not self._core.closed:
            await AsyncPoolMethods.drain(self)

    async def check(self) -> None:
        """Verify the state of the connections currently in the pool: each
        one that works goes back, a broken one is replaced."""
        core = self._core
        for index in core.slots(_core.IDLE):
            conn = core.claim(index)
            if conn is None:
                continue
            try:
                await self.check_connection(conn)
            except Exception as exc:
                core.retire(index)
                logger.warning("discarding broken connection: %s", conn)
                await self._close_connection(conn, "check", exc)
            except BaseException:  # cancelled mid-check: its state unknown
                core.retire(index)
                await self._close_on_the_way_out(conn, "discarded")
                raise
            else:
                if not core.restore(index):
                    await self._close_connection(conn, "closed", None)
        self._wake_workers()

    @staticmethod
    async def check_connection(conn: Any) -> None:
        """A simple check to verify that a connection is still working: an
        empty query in autocommit. Also usable as the ``check`` callback."""
        await check_connection_async(conn)


class AsyncConnectionPool(AsyncPsycopgMethods[ACT], AsyncPool[ACT]):
    """psycopg_pool's ``AsyncConnectionPool``, on pypool's core.

    ``await getconn()`` / ``await putconn()`` are the pool's own acquire and
    release; you must ``putconn()`` every connection you ``getconn()`` (or
    use ``connection()``). Open it with ``await pool.open()`` or ``async
    with``, as psycopg_pool recommends.
    """

    __module__ = "pypool.psycopg"
    __signature__ = ClassSignature(signature(psycopg.AsyncConnection))


AsyncConnectionPool.__doc__ = (
    f"{AsyncConnectionPool.__doc__}\n{docstring_section(psycopg.AsyncConnection)}\n"
)
