"""``ConnectionPool``: psycopg_pool's sync pool, on pypool's ``Pool``."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import psycopg

from .. import _core, errors
from .._weak import WeakMethod
from ..pool import Pool
from ..pool.settings import ClassSignature
from ..pool.threaded import PoolMethods
from .base import (
    IDLE,
    Connect,
    Lease,
    PsycopgAdapter,
    PsycopgStats,
    called_by_pypool,
    check_connection,
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
    from contextlib import AbstractContextManager

__all__ = ["ConnectionPool"]

#: The connection type of a pool: what its ``connection_class`` makes.
CT = TypeVar("CT", bound="psycopg.Connection[Any]")


class PsycopgMethods(PsycopgStats, PoolMethods[CT]):
    """psycopg_pool's interface over pypool's Pool."""

    _null = False
    _core: Any
    _settings: Any
    _policy: Any

    _connect_type = Connect
    _adapter_type = PsycopgAdapter
    _base_keywords: ClassVar[Mapping[str, Any]] = {"_defer_open": True}
    getconn: Callable[..., Any]

    # The keywords, their defaults and their bounds are
    # pypool.psycopg.settings.PSYCOPG_SETTINGS (ConnectionPool.__signature__).
    __init__ = psycopg_init(psycopg.Connection)

    def _start(self, open: bool | None) -> None:
        if open is None:
            # As psycopg_pool: open now, but warn at the first use unless
            # the pool is used as a context manager.
            # (held weakly, as any attribute of the pool that leads back to it)
            self.getconn = WeakMethod(self._getconn_warn)
            self._open_pool()
        elif open:
            self._open_pool()
        else:
            self.getconn = WeakMethod(self._getconn_not_open)

    # -------------------------------------------------------------- lifecycle

    def _open_pool(self) -> None:
        self._opened = True
        PoolMethods.open(self)

    def open(  # type: ignore[override]
        self, wait: bool = False, timeout: float = 30.0
    ) -> None:
        """Opens the pool: starts connecting (``min_size`` connections) and
        accepting clients. With ``wait``, waits for ``min_size`` connections
        as :meth:`wait` does. A closed pool cannot be opened again."""
        if self._core.closed:
            raise PoolClosed("pool has already been opened/closed and cannot be reused")
        if not called_by_pypool():  # the user's open(): no warning to come
            self.__dict__.pop("getconn", None)
        if not self._opened:
            self._open_pool()
        else:  # idempotent; in a forked child, starts the child's threads
            PoolMethods.open(self)
        if wait:
            self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> None:  # type: ignore[override]
        """Waits for ``min_size`` connections; if they are not ready within
        ``timeout`` seconds, closes the pool and raises PoolTimeout."""
        refused = self._not_usable()
        if refused is not None:
            raise refused
        if "getconn" in self.__dict__ and self.__dict__["getconn"] == self._getconn_warn:
            self.__dict__.pop("getconn")
            self._warn_implicit_open()
        try:
            PoolMethods.wait(self, timeout)
        except errors.PoolTimeout as exc:
            self.close()
            raise PoolTimeout(f"pool initialization incomplete after {timeout} sec") from (
                exc.__cause__
            )
        except errors.PoolClosed:  # closed meanwhile
            raise PoolClosed(f"the pool {self.name!r} is already closed") from None

    def __enter__(self) -> Any:
        self.__dict__.pop("getconn", None)
        self.open()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool and make it unavailable to new clients: waiting and
        future clients get PoolClosed; borrowed connections are closed when
        returned. A pool never opened is left as it is."""
        if not self._opened:
            return
        PoolMethods.close(self, timeout)

    def _getconn_warn(self, timeout: float | None = None) -> Any:
        self.__dict__.pop("getconn", None)
        self._warn_implicit_open()
        return self.getconn(timeout)

    def _warn_implicit_open(self) -> None:
        warnings.warn(
            f"the default for the {type(self).__name__} 'open' parameter will become "
            "'False' in a future release. Please use open={True|False} explicitly, or "
            f"use the pool as context manager using: `with {type(self).__name__}(...) "
            "as pool: ...`",
            DeprecationWarning,
            stacklevel=user_stacklevel(),
        )

    def _getconn_not_open(self, timeout: float | None = None) -> Any:
        raise PoolClosed(f"the pool {self.name!r} is not open yet")

    # -------------------------------------------------------------- borrowing

    def connection(self, timeout: float | None = None) -> AbstractContextManager[CT]:
        """Context manager to obtain a connection from the pool.

        Return the connection immediately if available, otherwise wait up to
        *timeout* or `self.timeout` seconds and throw `PoolTimeout` if a
        connection is not available in time.

        Upon context exit, return the connection to the pool. Apply the normal
        connection context behaviour (commit/rollback the transaction in case
        of success/error). If the connection is no more in working state,
        replace it with a new one.
        """
        if "getconn" in self.__dict__:  # not opened explicitly: as getconn() does
            return Lease(self, timeout)
        # The core's lease: the connection is in its keeping from the
        # moment the core hands it out, so a Ctrl-C cannot land between the
        # hand-out and the block.
        lease: AbstractContextManager[CT] = self._lease(timeout, self._end_lease)
        return lease

    def _end_lease(self, conn: Any, exc_type: type[BaseException] | None) -> None:
        """The end of psycopg's connection block (commit on success, rollback
        on error), then the connection goes back, whatever is raised."""
        try:
            # psycopg's Connection.__exit__, less its no-op commit when no
            # transaction is open (the common autocommit case).
            if not conn.closed and conn.pgconn.transaction_status != IDLE:
                if exc_type is None:
                    conn.commit()
                else:
                    try:
                        conn.rollback()
                    except Exception as exc2:
                        logger.warning("error ignored in rollback on %s: %s", conn, exc2)
        finally:
            self.putconn(conn)  # type: ignore[attr-defined]  # the pool's, or the null pool's

    def _failed(self, exc: Exception, timeout: float) -> BaseException:
        return psycopg_error(self, exc, timeout)

    def _after_fork_in_child(self) -> None:
        PoolMethods._after_fork_in_child(self)
        self._forget_failures()  # the parent's, and its lock maybe held at the fork

    # ------------------------------------------------------------ maintenance

    def _configure_new(self, conn: Any) -> None:
        configure = self._user_configure
        if configure is not None:
            configure(conn)
            left_idle(conn, "configure", configure)

    def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change the size of the pool during runtime."""
        min_size, max_size = check_sizes(min_size, max_size, self._null)
        if not self._resize_not_running(min_size, max_size):
            PoolMethods.resize(self, min_size, max_size)

    def drain(self) -> None:
        """Replace every connection: idle ones now, borrowed ones when they
        are returned (nothing to do on a closed pool)."""
        if not self._core.closed:
            PoolMethods.drain(self)

    def check(self) -> None:
        """Verify the state of the connections currently in the pool.

        Test each connection: if it works return it to the pool, otherwise
        dispose of it and create a new one.
        """
        core = self._core
        for index in core.slots(_core.IDLE):
            conn = core.claim(index)
            if conn is None:
                continue
            try:
                self.check_connection(conn)
            except Exception as exc:
                core.retire(index)
                logger.warning("discarding broken connection: %s", conn)
                self._close_connection(conn, "check", exc)
            except BaseException:  # interrupted mid-check: its state unknown
                core.retire(index)
                self._close_connection(conn, "discarded", None)
                raise
            else:
                if not core.restore(index):
                    self._close_connection(conn, "closed", None)
        self._wake_workers()

    @staticmethod
    def check_connection(conn: Any) -> None:
        """
        A simple check to verify that a connection is still working.

        Return quietly if the connection is still working, otherwise raise
        an exception.

        Used internally by `check()`, but also available for client usage,
        for instance as `!check` callback when a pool is created.
        """
        check_connection(conn)


class ConnectionPool(PsycopgMethods[CT], Pool[CT]):
    """psycopg_pool's ``ConnectionPool``, on pypool's core.

    ``getconn()`` / ``putconn()`` are the native hot path itself; you must
    ``putconn()`` every connection you ``getconn()`` (or use
    ``connection()``): failing to do so will deplete the pool.
    """

    __module__ = "pypool.psycopg"
    __signature__ = ClassSignature(signature(psycopg.Connection))
    _hot_aliases: ClassVar[dict[str, str]] = {"getconn": "acquire", "putconn": "release"}
    if TYPE_CHECKING:  # the core's acquire and release, in the connection type

        def getconn(self, timeout: float | None = None) -> CT: ...
        def putconn(self, conn: CT) -> None: ...

    else:
        getconn = _core.PoolBase.acquire
        putconn = _core.PoolBase.release


ConnectionPool.__doc__ = f"{ConnectionPool.__doc__}\n{docstring_section(psycopg.Connection)}\n"
