"""psycopg 3 pools with psycopg_pool's interface, on pypool's core.

Switching is a change of import::

    # from psycopg_pool import ConnectionPool, PoolTimeout
    from pypool.psycopg import ConnectionPool, PoolTimeout

    with ConnectionPool("postgresql://app@db/app", min_size=4) as pool:
        with pool.connection() as conn:          # commit on success, rollback on error
            conn.execute("INSERT INTO t VALUES (1)")

``ConnectionPool`` and ``NullConnectionPool`` take psycopg_pool 3.3's
constructor arguments and offer its methods (``open``, ``close``, ``wait``,
``connection``, ``getconn``, ``putconn``, ``resize``, ``check``,
``check_connection``, ``drain``, ``get_stats``, ``pop_stats``) and properties;
``PoolTimeout``, ``PoolClosed`` and ``TooManyRequests`` subclass both pypool's
errors and ``psycopg.OperationalError``, as psycopg_pool's do, so existing
``except`` clauses keep working. They log under ``psycopg.pool``. Where they
deliberately differ from psycopg_pool, ``docs/psycopg-migration.md`` says so
(lifetime is also enforced at hand-out; a connection idle longer than
``check_after`` is checked before hand-out even without a ``check``
callback; the most recently returned connection is reused first).

State hygiene: a reset leaves no transaction, but session state (settings,
``SET ROLE``, temporary tables, prepared statements, ``LISTEN``, advisory
locks) survives it unless a reset policy clears it: pass ``reset=discard_all``
(everything, one round trip) or ``reset=reset_session`` (the same without
dropping temporary tables' and sequences' caches) to the pool.

Behind PgBouncer in transaction mode, pass ``transaction_pooling=True`` (a
pypool setting; psycopg_pool has none): the reset is then a rollback only (a
session-state reset is refused with ``ConfigurationError``), and connections
are made with ``prepare_threshold=None`` unless ``kwargs`` sets it, since
PgBouncer 1.18 cannot follow prepared statements (``docs/scaling-out.md``).
"""

from __future__ import annotations

import logging
import threading
import types
import warnings
from collections.abc import Callable, Mapping
from contextlib import suppress
from types import TracebackType
from typing import Any, ClassVar

import psycopg
from psycopg.pq import TransactionStatus

from . import _core, errors
from . import stats as names
from .dbapi import DBAPIAdapter, Secrets, mask_dsn
from .pool import AsyncPool, Pool
from .pool.aio import AsyncPoolMethods as _AsyncPoolMethods
from .pool.settings import check_transaction_pooling, session_state_reset
from .pool.shared import PoolShared as _PoolShared
from .pool.threaded import PoolMethods as _PoolMethods

__all__ = [
    "AsyncConnectionPool",
    "AsyncNullConnectionPool",
    "ConnectionPool",
    "NullConnectionPool",
    "PoolClosed",
    "PoolTimeout",
    "PsycopgAdapter",
    "TooManyRequests",
    "discard_all",
    "reset_session",
]

logger = logging.getLogger("psycopg.pool")

_IDLE = TransactionStatus.IDLE
_INTRANS = TransactionStatus.INTRANS
_INERROR = TransactionStatus.INERROR


# ------------------------------------------------------------------ errors


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


# --------------------------------------------------------------- hygiene


def _in_autocommit(conn: Any, sql: str, prepare: bool | None = None) -> None:
    """Runs ``sql`` outside any transaction (switching autocommit is local),
    through psycopg's own ``execute``."""
    if conn.autocommit:
        conn.execute(sql, prepare=prepare)
        return
    conn.autocommit = True
    try:
        conn.execute(sql, prepare=prepare)
    finally:
        with suppress(Exception):
            conn.autocommit = False


def _forget_prepared(conn: Any) -> None:
    """Makes psycopg forget the statements it prepared on ``conn``, which a
    ``DISCARD ALL`` has just deallocated on the server.

    psycopg notices a ``DISCARD ALL`` only the first time it runs a query
    text; afterwards its cache would name statements the server no longer
    has. Its cache is private: cleared here field by field (no ``DEALLOCATE
    ALL`` queued, the server has none left), or through its own ``clear()``.
    """
    prepared = getattr(conn, "_prepared", None)
    if prepared is None:
        return
    try:
        prepared._counts.clear()
        prepared._names.clear()
        prepared._to_flush.clear()
    except AttributeError:  # another psycopg layout: its own way
        prepared.clear()


async def _in_autocommit_async(conn: Any, sql: str, prepare: bool | None = None) -> None:
    if conn.autocommit:
        await conn.execute(sql, prepare=prepare)
        return
    await conn.set_autocommit(True)
    try:
        await conn.execute(sql, prepare=prepare)
    finally:
        with suppress(Exception):
            await conn.set_autocommit(False)


async def _discard_all_async(conn: Any) -> None:
    await _in_autocommit_async(conn, "DISCARD ALL", prepare=False)
    _forget_prepared(conn)


@session_state_reset
def discard_all(conn: Any) -> Any:
    """A reset that clears every trace of the previous borrower:
    ``DISCARD ALL`` (one round trip). For an ``AsyncConnection`` it returns a
    coroutine (the async pools await it).

    It runs ``SET SESSION AUTHORIZATION DEFAULT`` and ``RESET ALL`` (roles and
    every setting), ``DEALLOCATE ALL`` (prepared statements: psycopg forgets
    its own too and prepares again when needed), ``CLOSE ALL`` (cursors),
    ``UNLISTEN *``, ``SELECT pg_advisory_unlock_all()``, ``DISCARD PLANS``,
    ``DISCARD SEQUENCES`` and ``DISCARD TEMP`` (temporary tables). Behind
    PgBouncer in transaction mode a session is not yours across
    transactions, so there session state must not be relied on at all, and
    ``DISCARD ALL`` there only resets the server connection it lands on: a
    pool with ``transaction_pooling=True`` refuses this reset.
    """
    if isinstance(conn, psycopg.AsyncConnection):
        return _discard_all_async(conn)  # the async pools await it
    _in_autocommit(conn, "DISCARD ALL", prepare=False)
    _forget_prepared(conn)
    return None


_RESET_SESSION = (
    "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; CLOSE ALL; "
    "UNLISTEN *; SELECT pg_advisory_unlock_all()"
)


@session_state_reset
def reset_session(conn: Any) -> Any:
    """A narrower reset than :func:`discard_all`, in one round trip: roles,
    settings, prepared statements, cursors, ``LISTEN`` registrations and
    session advisory locks; temporary tables are kept (and cached plans of
    statements not prepared explicitly). For an ``AsyncConnection`` it
    returns a coroutine (the async pools await it)."""
    if isinstance(conn, psycopg.AsyncConnection):
        return _in_autocommit_async(conn, _RESET_SESSION)
    _in_autocommit(conn, _RESET_SESSION)
    return None


# --------------------------------------------------------------- adapter


class PsycopgAdapter(DBAPIAdapter):
    """psycopg 3 knowledge for the pool: the transaction status decides the
    reset (no round trip), a broken or closed connection is discarded without
    one, the check is one bounded round trip, and closing a connection first
    detaches it from the pool (so ``close_returns`` cannot send it back)."""

    def __init__(self, reset: Callable[[Any], object] | None = None) -> None:
        self.user_reset = reset

    def reset_for(self, conn: Any) -> Callable[[Any], None]:
        user_reset = self.user_reset

        def reset(conn: Any) -> None:
            status = conn.pgconn.transaction_status
            if status in (_INTRANS, _INERROR):
                logger.warning("rolling back returned connection: %s", conn)
                conn.rollback()
            elif status != _IDLE:  # ACTIVE (returned mid-command) or UNKNOWN (closed)
                raise errors.UnusableConnection(
                    f"connection returned in state {TransactionStatus(status).name}"
                )
            if user_reset is not None:
                user_reset(conn)
                status = conn.pgconn.transaction_status
                if status != _IDLE:
                    raise psycopg.ProgrammingError(
                        f"connection left in status {TransactionStatus(status).name} "
                        f"by reset function {user_reset}: discarded"
                    )

        return reset

    def close(self, conn: Any) -> None:
        conn._pool = None
        super().close(conn)


# ------------------------------------------------------------- the pools


def _resolve(value: Any) -> Any:
    return value() if callable(value) else value


class _Connect:
    """The factory: ``connection_class.connect(conninfo, **kwargs)``, with
    ``conninfo`` and ``kwargs`` re-read for every new connection (they may be
    callables, for rotating credentials). A failed connect is raised with the
    passwords of what it was given masked (:class:`pypool.dbapi.Secrets`)."""

    def __init__(
        self, conninfo: Any, connection_class: type, kwargs: Any, transaction_pooling: bool
    ) -> None:
        self.conninfo = conninfo
        self.connection_class = connection_class
        self.kwargs = kwargs
        self.transaction_pooling = transaction_pooling
        self.pool: Any = None  # set once the pool exists

    def _arguments(self, kwargs: Any) -> dict[str, Any]:
        """The keyword arguments of a connect: the user's, and, behind a
        transaction pooler, ``prepare_threshold=None`` unless the user chose
        a value (PgBouncer before 1.21 cannot follow prepared statements)."""
        arguments = dict(kwargs or {})
        if self.transaction_pooling:
            arguments.setdefault("prepare_threshold", None)
        return arguments

    def __call__(self) -> Any:
        conninfo = _resolve(self.conninfo) or ""
        kwargs = self._arguments(_resolve(self.kwargs))
        try:
            conn = self.connection_class.connect(conninfo, **kwargs)  # type: ignore[attr-defined]
        except Exception as exc:
            Secrets(conninfo, kwargs).scrub(exc)
            raise
        if conn is not None:  # None: the pool says so, as a failed connect
            conn._pool = self.pool
        return conn

    @property
    def secrets(self) -> Secrets:
        """The passwords of the conninfo and kwargs given (not of those a
        callable returns: each connect masks its own)."""
        return Secrets(
            "" if callable(self.conninfo) else self.conninfo,
            None if callable(self.kwargs) else self.kwargs,
        )

    def __repr__(self) -> str:
        conninfo = "<callable>" if callable(self.conninfo) else str(self.conninfo)
        return f"<connect {self.connection_class.__name__} {self.secrets.mask(conninfo)!r}>"


class _Lease:
    """``with pool.connection() as conn`` on a pool not opened explicitly:
    ``getconn()`` (which then raises or warns as psycopg_pool's does) and
    the end of psycopg's connection block. An open pool's block is the
    core's lease instead (:meth:`_PsycopgMethods.connection`)."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: Any, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None

    def __enter__(self) -> Any:
        self._conn = self._pool.getconn(self._timeout)
        return self._conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        self._pool._end_lease(conn, exc_type)


def _psycopg_error(pool: Any, exc: Exception, timeout: float) -> BaseException:
    """The psycopg_pool error a caller that got no connection sees."""
    pool._count_failure(exc, timeout)
    name = pool._settings.name
    if isinstance(exc, errors.PoolTimeout):
        error: BaseException = PoolTimeout(f"couldn't get a connection after {timeout:.2f} sec")
        error.__cause__ = pool._policy.last_error
        return error
    if isinstance(exc, errors.PoolClosed):
        return PoolClosed(f"the pool {name!r} is already closed")
    if isinstance(exc, errors.TooManyRequests):
        return TooManyRequests(
            f"the pool {name!r} has already {pool._core.waiting} requests waiting"
        )
    return exc


class _PsycopgStats:
    """What psycopg_pool's sync and async pools share: their public
    attributes and their statistics, from pypool's."""

    _core: Any
    _policy: Any
    _null = False
    _max_size_asked = 0
    _stats_base: dict[str, int]
    _failure_lock: threading.Lock
    _failures: dict[str, float]

    def _remember(
        self,
        conninfo: Any,
        connection_class: type,
        kwargs: Any,
        min_size: int,
        max_size: int | None,
        configure: Any,
        close_returns: bool,
        reconnect_timeout: float,
        num_workers: int,
        max_lifetime: float,
        max_idle: float,
    ) -> int:
        """Checks the sizes by psycopg_pool's rules and keeps psycopg_pool's
        public attributes; returns the max_size to give the core (a null
        pool without a limit gets the core's largest)."""
        _, max_size = _check_sizes(min_size, max_size, self._null)
        self._max_size_asked = max_size
        self.conninfo = conninfo
        self.kwargs = kwargs
        self.connection_class = connection_class
        self.close_returns = close_returns
        self.reconnect_timeout = reconnect_timeout
        self.num_workers = num_workers
        self.max_lifetime = max_lifetime
        self.max_idle = max_idle
        self._user_configure = configure
        self._forget_failures()
        return _core.MAX_SIZE if self._null and max_size == 0 else max_size

    def _forget_failures(self) -> None:
        # The requests that got no connection, which psycopg_pool's request
        # counters include and the core's (served requests) do not.
        self._failure_lock = threading.Lock()
        self._failures = {"requests": 0, "waits": 0, "wait_time": 0.0, "rejected": 0}

    def _count_failure(self, exc: Exception, timeout: float) -> None:
        """Counts a ``getconn()`` that raised, as psycopg_pool does: in
        ``requests_num``; a timed-out wait also in ``requests_queued`` and
        ``requests_wait_ms`` (the core counts it in ``requests_errors``); a
        ``TooManyRequests`` rejection in ``requests_errors``."""
        with self._failure_lock:
            failures = self._failures
            failures["requests"] += 1
            if isinstance(exc, errors.PoolTimeout) and timeout > 0:
                failures["waits"] += 1
                failures["wait_time"] += timeout
            elif isinstance(exc, errors.TooManyRequests):
                failures["rejected"] += 1

    def _measures(self) -> dict[str, int]:
        s = _PoolShared.stats(self)  # type: ignore[arg-type]
        retired = s[names.RETIRED]
        with self._failure_lock:
            failed = dict(self._failures)
        return {
            "requests_num": s[names.REQUESTS] + failed["requests"],
            "requests_queued": s[names.REQUESTS_WAITED] + failed["waits"],
            "requests_wait_ms": int((s[names.WAIT_TIME]["sum"] + failed["wait_time"]) * 1000),
            "requests_errors": s[names.TIMEOUTS] + failed["rejected"],
            "usage_ms": int(s[names.USE_TIME]["sum"] * 1000),
            "returns_bad": retired.get("reset_failed", 0),
            "connections_num": self._policy.connects,
            "connections_ms": int(s[names.CREATE_TIME]["sum"] * 1000),
            "connections_errors": s[names.CONNECT_ERRORS],
            "connections_lost": retired.get("check", 0),
        }

    def _gauges(self) -> dict[str, int]:
        core = self._core
        return {
            "pool_min": self._policy.min_size,
            "pool_max": self._max_size_asked if self._null else int(core.max_size),
            "pool_size": int(core.size),
            "pool_available": int(core.idle),
            "requests_waiting": int(core.waiting),
        }

    def get_stats(self) -> dict[str, int]:
        """Return current stats about the pool usage (psycopg_pool's names)."""
        counters = self._measures()
        base = self._stats_base
        rv = {k: v - base.get(k, 0) for k, v in counters.items() if v - base.get(k, 0)}
        rv.update(self._gauges())
        return rv

    def pop_stats(self) -> dict[str, int]:
        """Return current stats about the pool usage.

        After the call, all the counters are reset to zero.
        """
        rv = self.get_stats()
        self._stats_base = self._measures()
        return rv


def _check_sizes(min_size: int, max_size: int | None, null: bool) -> tuple[int, int]:
    """psycopg_pool's size rules (ValueError), before pypool's own."""
    if max_size is None:
        max_size = min_size
    if null and min_size:
        raise ValueError("null pools must have min_size = 0")
    if isinstance(min_size, int) and min_size < 0:
        raise ValueError("min_size cannot be negative")
    if isinstance(max_size, int) and isinstance(min_size, int) and max_size < min_size:
        raise ValueError("max_size must be greater or equal than min_size")
    if min_size == max_size == 0 and not null:
        raise ValueError("if min_size is 0 max_size must be greater than 0")
    return min_size, max_size


class _PsycopgMethods(_PsycopgStats, _PoolMethods):
    """psycopg_pool's interface over pypool's Pool."""

    _logger_name = "psycopg.pool"
    _null = False
    _core: Any
    _settings: Any
    _policy: Any

    def __init__(
        self,
        conninfo: str | Callable[[], str] = "",
        *,
        connection_class: type = psycopg.Connection,
        kwargs: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        min_size: int = 4,
        max_size: int | None = None,
        open: bool | None = None,
        configure: Callable[[Any], object] | None = None,
        check: Callable[[Any], object] | None = None,
        reset: Callable[[Any], object] | None = None,
        name: str | None = None,
        close_returns: bool = False,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 60 * 60.0,
        max_idle: float = 10 * 60.0,
        reconnect_timeout: float = 5 * 60.0,
        reconnect_failed: Callable[[Any], object] | None = None,
        num_workers: int = 3,
        transaction_pooling: bool = False,
        **options: Any,
    ) -> None:
        check_transaction_pooling(transaction_pooling, reset)
        max_size = self._remember(
            conninfo, connection_class, kwargs, min_size, max_size, configure, close_returns,
            reconnect_timeout, num_workers, max_lifetime, max_idle,
        )  # fmt: skip
        factory = _Connect(conninfo, connection_class, kwargs, transaction_pooling)
        super().__init__(
            factory,
            adapter=PsycopgAdapter(reset),
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            check=check,
            configure=self._configure_new,
            num_workers=num_workers,
            name=name,
            reconnect_timeout=reconnect_timeout,
            reconnect_failed=reconnect_failed,
            transaction_pooling=transaction_pooling,
            _defer_open=True,
            **options,
        )
        factory.pool = self
        self._opened = False
        self._stats_base: dict[str, int] = {}
        if open is None:
            # As psycopg_pool: open now, but warn at the first use unless
            # the pool is used as a context manager.
            self.getconn = self._getconn_warn
            self._open_pool()
        elif open:
            self._open_pool()
        else:
            self.getconn = self._getconn_not_open

    # -------------------------------------------------------------- lifecycle

    def _open_pool(self) -> None:
        self._opened = True
        _PoolMethods.open(self)

    __class_getitem__: ClassVar[Any] = classmethod(types.GenericAlias)  # ConnectionPool[...]

    @property
    def closed(self) -> bool:
        """True if the pool is closed, or not open yet."""
        return bool(self._core.closed) or not self._opened

    @property
    def timeout(self) -> float:
        """Seconds getconn() waits by default; may be set."""
        return float(self._settings.timeout)

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._set_timeout(value)
        self._settings.timeout = float(value)

    @property
    def max_waiting(self) -> int:
        """How many callers may wait at once (0: no limit); may be set."""
        return int(self._core.max_waiting)

    @max_waiting.setter
    def max_waiting(self, value: int) -> None:
        self._core.max_waiting = value

    def open(  # type: ignore[override]
        self, wait: bool = False, timeout: float = 30.0
    ) -> None:
        """Opens the pool: starts connecting (``min_size`` connections) and
        accepting clients. With ``wait``, waits for ``min_size`` connections
        as :meth:`wait` does. A closed pool cannot be opened again."""
        if self._core.closed:
            raise PoolClosed("pool has already been opened/closed and cannot be reused")
        self.__dict__.pop("getconn", None)
        if not self._opened:
            self._open_pool()
        if wait:
            self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> None:  # type: ignore[override]
        """Waits for ``min_size`` connections; if they are not ready within
        ``timeout`` seconds, closes the pool and raises PoolTimeout."""
        if not self._opened:
            raise PoolClosed(f"the pool {self.name!r} is not open yet")
        if "getconn" in self.__dict__ and self.__dict__["getconn"] == self._getconn_warn:
            self.__dict__.pop("getconn")
            self._warn_implicit_open()
        try:
            _PoolMethods.wait(self, timeout)
        except errors.PoolTimeout as exc:
            self.close()
            raise PoolTimeout(f"pool initialization incomplete after {timeout} sec") from (
                exc.__cause__
            )
        except errors.PoolClosed as exc:
            raise PoolClosed(str(exc)) from None

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
        _PoolMethods.close(self, timeout)

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
            stacklevel=3,
        )

    def _getconn_not_open(self, timeout: float | None = None) -> Any:
        raise PoolClosed(f"the pool {self.name!r} is not open yet")

    # -------------------------------------------------------------- borrowing

    def connection(self, timeout: float | None = None) -> Any:
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
            return _Lease(self, timeout)
        # The core's lease: the connection is in its keeping from the
        # moment the core hands it out, so a Ctrl-C cannot land between the
        # hand-out and the block.
        return self._lease(timeout, self._end_lease)

    def _end_lease(self, conn: Any, exc_type: type[BaseException] | None) -> None:
        """The end of psycopg's connection block (commit on success, rollback
        on error), then the connection goes back, whatever is raised."""
        try:
            # psycopg's Connection.__exit__, less its no-op commit when no
            # transaction is open (the common autocommit case).
            if not conn.closed and conn.pgconn.transaction_status != _IDLE:
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
        return _psycopg_error(self, exc, timeout)

    def _after_fork_in_child(self) -> None:
        _PoolMethods._after_fork_in_child(self)
        self._forget_failures()  # the parent's, and its lock maybe held at the fork

    # ------------------------------------------------------------ maintenance

    def _configure_new(self, conn: Any) -> None:
        configure = self._user_configure
        if configure is not None:
            configure(conn)
            status = conn.pgconn.transaction_status
            if status != _IDLE:
                raise psycopg.ProgrammingError(
                    f"connection left in status {TransactionStatus(status).name} "
                    f"by configure function {configure}: discarded"
                )

    def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change the size of the pool during runtime."""
        _PoolMethods.resize(self, min_size, min_size if max_size is None else max_size)

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
        if conn.autocommit:
            conn.execute("")
        else:
            conn.autocommit = True
            try:
                conn.execute("")
            finally:
                with suppress(Exception):
                    conn.autocommit = False

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__name__} {self.name!r} at 0x{id(self):x}>"


class ConnectionPool(_PsycopgMethods, Pool):
    """psycopg_pool's ``ConnectionPool``, on pypool's core.

    ``getconn()`` / ``putconn()`` are the native hot path itself; you must
    ``putconn()`` every connection you ``getconn()`` (or use
    ``connection()``): failing to do so will deplete the pool.
    """

    _mixins: tuple[type, ...] = (_PsycopgMethods, _PoolMethods)
    _hot_aliases: ClassVar[dict[str, str]] = {"getconn": "acquire", "putconn": "release"}
    getconn = _core.PoolBase.acquire
    putconn = _core.PoolBase.release


class _NullMethods:
    _null = True
    _core: Any

    def __init__(
        self,
        conninfo: str | Callable[[], str] = "",
        *,
        min_size: int = 0,
        max_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        _check_sizes(min_size, max_size, True)
        kwargs["close_returns"] = False  # as psycopg_pool: returning means closing here
        super().__init__(conninfo, min_size=0, max_size=max_size or 0, **kwargs)  # type: ignore[call-arg]

    def putconn(self, conn: Any) -> None:
        """Return a connection: closed, unless a caller waits for one."""
        if self._core.waiting and not self._core.closed:
            self.release(conn)  # type: ignore[attr-defined]
        else:
            self.discard(conn)  # type: ignore[attr-defined]

    @property
    def max_size(self) -> int:
        """The most connections open at once (0: no limit)."""
        return self._max_size_asked

    def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change max_size during runtime; min_size must remain 0."""
        min_size, max_size = _check_sizes(min_size, max_size, True)
        self._max_size_asked = max_size
        _PoolMethods.resize(self, 0, max_size or _core.MAX_SIZE)  # type: ignore[arg-type]

    def wait(self, timeout: float = 30.0) -> None:
        """Checks that a connection can be made: one is made and closed
        (a null pool keeps none); PoolTimeout (the pool closed) otherwise."""
        if not self._opened:  # type: ignore[attr-defined]
            raise PoolClosed(f"the pool {self.name!r} is not open yet")  # type: ignore[attr-defined]
        try:
            conn = self.getconn(timeout)  # type: ignore[attr-defined]
        except PoolTimeout as exc:
            self.close()  # type: ignore[attr-defined]
            raise PoolTimeout(f"pool initialization incomplete after {timeout} sec") from (
                exc.__cause__
            )
        self.putconn(conn)


class NullConnectionPool(_NullMethods, ConnectionPool):  # type: ignore[misc]
    """psycopg_pool's ``NullConnectionPool``: no connection is kept; each is
    made on demand and closed when returned (or handed straight to a caller
    waiting for one), while ``max_size`` bounds how many are open at once."""

    _mixins: tuple[type, ...] = (_NullMethods, _PsycopgMethods, _PoolMethods)
    _hot_aliases: ClassVar[dict[str, str]] = {"getconn": "acquire"}


# ------------------------------------------------------------ asyncio pools


class AsyncPsycopgAdapter(PsycopgAdapter):
    """:class:`PsycopgAdapter` for ``psycopg.AsyncConnection``: the same
    decisions, awaited."""

    def reset_for(self, conn: Any) -> Callable[[Any], Any]:
        user_reset = self.user_reset

        def reset(conn: Any) -> Any:
            # Plain when there is nothing to do (the common case); a
            # coroutine only when a rollback or a reset of the user's awaits.
            if user_reset is None and conn.pgconn.transaction_status == _IDLE:
                return None
            return areset(conn)

        async def areset(conn: Any) -> None:
            status = conn.pgconn.transaction_status
            if status in (_INTRANS, _INERROR):
                logger.warning("rolling back returned connection: %s", conn)
                await conn.rollback()
            elif status != _IDLE:
                raise errors.UnusableConnection(
                    f"connection returned in state {TransactionStatus(status).name}"
                )
            if user_reset is not None:
                result = user_reset(conn)
                if hasattr(result, "__await__"):
                    await result
                status = conn.pgconn.transaction_status
                if status != _IDLE:
                    raise psycopg.ProgrammingError(
                        f"connection left in status {TransactionStatus(status).name} "
                        f"by reset function {user_reset}: discarded"
                    )

        return reset

    async def check(self, conn: Any, timeout: float | None = None) -> None:  # type: ignore[override]
        if conn.closed or conn.broken:
            raise errors.UnusableConnection("psycopg connection is closed or broken")
        await AsyncConnectionPool.check_connection(conn)

    def is_broken(self, conn: Any, exc: BaseException | None = None) -> bool:
        return bool(conn.broken or conn.closed)

    async def close(self, conn: Any) -> None:  # type: ignore[override]
        conn._pool = None
        try:
            await conn.close()
        except Exception as exc:
            logger.warning("error closing a connection: %s", mask_dsn(str(exc)))


class _AsyncConnect(_Connect):
    async def __call__(self) -> Any:
        conninfo = self.conninfo() if callable(self.conninfo) else self.conninfo
        if hasattr(conninfo, "__await__"):
            conninfo = await conninfo
        kwargs = self.kwargs() if callable(self.kwargs) else self.kwargs
        if hasattr(kwargs, "__await__"):
            kwargs = await kwargs
        kwargs = self._arguments(kwargs)
        try:
            conn = await self.connection_class.connect(  # type: ignore[attr-defined]
                conninfo or "", **kwargs
            )
        except Exception as exc:
            Secrets(conninfo, kwargs).scrub(exc)
            raise
        if conn is not None:  # None: the pool says so, as a failed connect
            conn._pool = self.pool
        return conn


class _AsyncLease:
    """``async with pool.connection() as conn``: psycopg's connection block,
    then the connection goes back."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: Any, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None

    async def __aenter__(self) -> Any:
        self._conn = await self._pool.getconn(self._timeout)
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        try:
            if not conn.closed and conn.pgconn.transaction_status != _IDLE:
                if exc_type is None:
                    await conn.commit()
                else:
                    try:
                        await conn.rollback()
                    except Exception as exc2:
                        logger.warning("error ignored in rollback on %s: %s", conn, exc2)
        finally:
            await self._pool.putconn(conn)


class _AsyncPsycopgMethods(_PsycopgStats, _AsyncPoolMethods):
    """Everything of AsyncConnectionPool but the core's hot path."""

    _null = False

    def __init__(
        self,
        conninfo: Any = "",
        *,
        connection_class: type = psycopg.AsyncConnection,
        kwargs: Any = None,
        min_size: int = 4,
        max_size: int | None = None,
        open: bool | None = None,
        configure: Callable[[Any], Any] | None = None,
        check: Callable[[Any], Any] | None = None,
        reset: Callable[[Any], Any] | None = None,
        name: str | None = None,
        close_returns: bool = False,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 60 * 60.0,
        max_idle: float = 10 * 60.0,
        reconnect_timeout: float = 5 * 60.0,
        reconnect_failed: Callable[[Any], Any] | None = None,
        num_workers: int = 3,
        transaction_pooling: bool = False,
        **options: Any,
    ) -> None:
        check_transaction_pooling(transaction_pooling, reset)
        max_size = self._remember(
            conninfo, connection_class, kwargs, min_size, max_size, configure, close_returns,
            reconnect_timeout, num_workers, max_lifetime, max_idle,
        )  # fmt: skip
        factory = _AsyncConnect(conninfo, connection_class, kwargs, transaction_pooling)
        super().__init__(
            factory,
            adapter=AsyncPsycopgAdapter(reset),
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            check=check,
            configure=self._configure_new,
            num_workers=num_workers,
            name=name,
            reconnect_timeout=reconnect_timeout,
            reconnect_failed=reconnect_failed,
            transaction_pooling=transaction_pooling,
            **options,
        )
        factory.pool = self
        self._stats_base = {}
        self._opened = False
        if open:
            self._warn_open_async()
            self._opened = True
        elif open is None:
            self.getconn = self._getconn_warn  # type: ignore[method-assign]
            self._opened = True
        else:
            self.getconn = self._getconn_not_open  # type: ignore[method-assign]

    getconn = _AsyncPoolMethods.acquire
    putconn = _AsyncPoolMethods.release

    def _warn_open_async(self) -> None:
        warnings.warn(
            f"opening the async pool {type(self).__name__} in the constructor is deprecated"
            " and will not be supported anymore in a future release. Please use `await "
            "pool.open()`, or use the pool as context manager using: `async with "
            f"{type(self).__name__}(...) as pool: `...",
            RuntimeWarning,
            stacklevel=3,
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
        await _AsyncPoolMethods.open(self)
        if wait:
            await self.wait(timeout)

    async def wait(self, timeout: float = 30.0) -> None:  # type: ignore[override]
        """Waits for ``min_size`` connections; if they are not ready within
        ``timeout`` seconds, closes the pool and raises PoolTimeout."""
        try:
            await _AsyncPoolMethods.wait(self, timeout)
        except errors.PoolTimeout as exc:
            await self.close()
            raise PoolTimeout(f"pool initialization incomplete after {timeout} sec") from (
                exc.__cause__
            )

    async def __aenter__(self) -> Any:
        self.__dict__.pop("getconn", None)
        await self.open()
        return self

    def connection(self, timeout: float | None = None) -> _AsyncLease:  # type: ignore[override]
        """Context manager to obtain a connection from the pool: commit on
        success, rollback on error, then back to the pool."""
        return _AsyncLease(self, timeout)

    def _failed(self, exc: Exception, timeout: float) -> BaseException:
        return _psycopg_error(self, exc, timeout)

    async def _configure_new(self, conn: Any) -> None:
        configure = self._user_configure
        if configure is not None:
            result = configure(conn)
            if hasattr(result, "__await__"):
                await result
            status = conn.pgconn.transaction_status
            if status != _IDLE:
                raise psycopg.ProgrammingError(
                    f"connection left in status {TransactionStatus(status).name} "
                    f"by configure function {configure}: discarded"
                )

    async def resize(self, min_size: int, max_size: int | None = None) -> None:  # type: ignore[override]
        """Change the size of the pool during runtime."""
        min_size, max_size = _check_sizes(min_size, max_size, self._null)
        _AsyncPoolMethods.resize(self, min_size, max_size)

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
        if conn.autocommit:
            await conn.execute("")
        else:
            await conn.set_autocommit(True)
            try:
                await conn.execute("")
            finally:
                with suppress(Exception):
                    await conn.set_autocommit(False)

    @property
    def closed(self) -> bool:
        """True if the pool is closed, or not open yet."""
        return bool(self._core.closed) or not self._opened

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__name__} {self.name!r} at 0x{id(self):x}>"


class AsyncConnectionPool(_AsyncPsycopgMethods, AsyncPool):  # type: ignore[misc]
    """psycopg_pool's ``AsyncConnectionPool``, on pypool's core.

    ``await getconn()`` / ``await putconn()`` are the pool's own acquire and
    release; you must ``putconn()`` every connection you ``getconn()`` (or
    use ``connection()``). Open it with ``await pool.open()`` or ``async
    with``, as psycopg_pool recommends.
    """

    _mixins: tuple[type, ...] = (_AsyncPsycopgMethods, _AsyncPoolMethods)


class _AsyncNullMethods(_AsyncPsycopgMethods):
    """What makes an AsyncConnectionPool a null pool."""

    _null = True

    def __init__(
        self, conninfo: Any = "", *, min_size: int = 0, max_size: int | None = None, **kwargs: Any
    ) -> None:
        _check_sizes(min_size, max_size, True)
        super().__init__(conninfo, min_size=0, max_size=max_size or 0, **kwargs)

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
        try:
            conn = await self.getconn(timeout)
        except PoolTimeout as exc:
            await self.close()
            raise PoolTimeout(f"pool initialization incomplete after {timeout} sec") from (
                exc.__cause__
            )
        await self.putconn(conn)


class AsyncNullConnectionPool(_AsyncNullMethods, AsyncConnectionPool):  # type: ignore[misc]
    """psycopg_pool's ``AsyncNullConnectionPool``: no connection is kept;
    each is made on demand and closed when returned (or handed straight to a
    task waiting for one)."""

    _mixins: tuple[type, ...] = (_AsyncNullMethods,)
