"""What the psycopg pools share, sync and async, pool and null pool: the
adapters, the connection factories, the connection block (one lease type),
psycopg_pool's size rules, errors and statistics, and the constructor (its
keywords are :data:`pypool.psycopg.settings.PSYCOPG_SETTINGS`)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import types
from collections.abc import Callable, Mapping
from contextlib import suppress
from types import TracebackType
from typing import Any, ClassVar

import psycopg
from psycopg.pq import TransactionStatus

from .. import _core, errors
from .. import stats as names
from .._secrets import Secrets, mask_dsn
from .._weak import PoolLink, WeakMethod
from ..dbapi import PSYCOPG, DBAPIAdapter, dsn_keys
from ..pool.settings import check_transaction_pooling
from ..pool.shared import PoolShared
from .errors import PoolClosed, PoolTimeout, TooManyRequests
from .settings import (
    OPTION_DEFAULTS,
    OPTIONS,
    PSYCOPG_SETTINGS,
    defaults,
    signature,
    take_keywords,
)

logger = logging.getLogger("psycopg.pool")

IDLE = TransactionStatus.IDLE
INTRANS = TransactionStatus.INTRANS
INERROR = TransactionStatus.INERROR

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_stacklevel() -> int:
    """The ``stacklevel`` that attributes a warning raised here to the first
    caller outside pypool (the user's line), however deep in pypool the
    warning is decided."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        _PACKAGE_DIR + os.sep
    ):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def called_by_pypool() -> bool:
    """True when the caller of the function calling this is pypool's own
    code (such as the pool opening itself on first use), not the user's."""
    filename = sys._getframe(2).f_code.co_filename
    return os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep)


#: The time bounds every connect of the psycopg pools gets, as
#: :func:`pypool.dbapi.connect_factory` gives them: ``connect_timeout`` (10 s,
#: unless ``PGCONNECT_TIMEOUT`` is set), and from ``io_timeout`` (30 s) TCP
#: keepalives and ``tcp_user_timeout``; each only where neither the conninfo
#: nor ``kwargs`` sets it.
CONNECT_BOUNDS: Mapping[str, float] = {"connect_timeout": 10.0, "io_timeout": 30.0}

_default_adapter = DBAPIAdapter()


# ----------------------------------------------------------------- checks


def check_connection(conn: Any) -> None:
    """psycopg_pool's ``check_connection``: an empty query in autocommit."""
    if conn.autocommit:
        conn.execute("")
    else:
        conn.autocommit = True
        try:
            conn.execute("")
        finally:
            with suppress(Exception):
                conn.autocommit = False


async def check_connection_async(conn: Any) -> None:
    """:func:`check_connection` for an ``AsyncConnection``."""
    if conn.autocommit:
        await conn.execute("")
    else:
        await conn.set_autocommit(True)
        try:
            await conn.execute("")
        finally:
            with suppress(Exception):
                await conn.set_autocommit(False)


def left_idle(conn: Any, role: str, function: object) -> None:
    """Raises psycopg's ``ProgrammingError`` (the connection is discarded)
    if the user's ``function`` (its ``role``: reset or configure) left
    ``conn`` in a transaction, as psycopg_pool does."""
    status = conn.pgconn.transaction_status
    if status != IDLE:
        raise psycopg.ProgrammingError(
            f"connection left in status {TransactionStatus(status).name} "
            f"by {role} function {function}: discarded"
        )


# --------------------------------------------------------------- adapters


def _unusable(conn: Any, status: int) -> errors.UnusableConnection:
    """The error that discards a connection returned mid-command (ACTIVE) or
    closed (BAD): the pool logs it once, a WARNING under ``psycopg.pool``,
    in psycopg_pool's words (with the connection, whose repr names its
    status, taken now, before it is closed)."""
    if status == TransactionStatus.ACTIVE:
        return errors.UnusableConnection(f"closing returned connection: {conn}")
    return errors.UnusableConnection(f"discarding closed connection: {conn}")


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
            if status in (INTRANS, INERROR):
                logger.warning("rolling back returned connection: %s", conn)
                conn.rollback()
            elif status != IDLE:  # ACTIVE (returned mid-command) or UNKNOWN (closed)
                raise _unusable(conn, status)
            if user_reset is not None:
                user_reset(conn)
                left_idle(conn, "reset", user_reset)

        return reset

    def close(self, conn: Any) -> None:
        conn._pool = None
        super().close(conn)


class AsyncPsycopgAdapter(PsycopgAdapter):
    """:class:`PsycopgAdapter` for ``psycopg.AsyncConnection``: the same
    decisions, awaited."""

    def reset_for(self, conn: Any) -> Callable[[Any], Any]:
        user_reset = self.user_reset

        def reset(conn: Any) -> Any:
            # Plain when there is nothing to do (the common case); a
            # coroutine only when a rollback or a reset of the user's awaits.
            if user_reset is None and conn.pgconn.transaction_status == IDLE:
                return None
            return areset(conn)

        async def areset(conn: Any) -> None:
            status = conn.pgconn.transaction_status
            if status in (INTRANS, INERROR):
                logger.warning("rolling back returned connection: %s", conn)
                await conn.rollback()
            elif status != IDLE:  # ACTIVE (returned mid-command) or UNKNOWN (closed)
                raise _unusable(conn, status)
            if user_reset is not None:
                result = user_reset(conn)
                if hasattr(result, "__await__"):
                    await result
                left_idle(conn, "reset", user_reset)

        return reset

    async def check(self, conn: Any, timeout: float | None = None) -> None:  # type: ignore[override]
        if conn.closed or conn.broken:
            raise errors.UnusableConnection("psycopg connection is closed or broken")
        await check_connection_async(conn)

    def is_broken(self, conn: Any, exc: BaseException | None = None) -> bool:
        return bool(conn.broken or conn.closed)

    async def close(self, conn: Any) -> None:  # type: ignore[override]
        conn._pool = None
        try:
            await conn.close()
        except Exception as exc:
            logger.warning("error closing a connection: %s", mask_dsn(str(exc)))


# ------------------------------------------------------------ factories


def _resolve(value: Any) -> Any:
    return value() if callable(value) else value


class Connect:
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
        self.pool: Any = None  # a PoolLink to the pool, set once the pool exists

    def _arguments(self, conninfo: Any, kwargs: Any) -> dict[str, Any]:
        """The keyword arguments of a connect: the user's; the time bounds
        of :func:`pypool.dbapi.connect_factory` that neither they nor the
        conninfo set (:data:`CONNECT_BOUNDS`); and, behind a transaction
        pooler, ``prepare_threshold=None`` unless the user chose a value
        (PgBouncer before 1.21 cannot follow prepared statements)."""
        arguments = dict(kwargs or {})
        if self.transaction_pooling:
            arguments.setdefault("prepare_threshold", None)
        bounds = _default_adapter.time_bounds(PSYCOPG, **CONNECT_BOUNDS)
        given = set(arguments)
        if any(key not in given for key in bounds):
            given |= dsn_keys(PSYCOPG, conninfo)
            for key, value in bounds.items():
                if key not in given:
                    arguments[key] = value
        return arguments

    def __call__(self) -> Any:
        conninfo = _resolve(self.conninfo) or ""
        kwargs = self._arguments(conninfo, _resolve(self.kwargs))
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


class AsyncConnect(Connect):
    async def __call__(self) -> Any:
        conninfo = self.conninfo() if callable(self.conninfo) else self.conninfo
        if hasattr(conninfo, "__await__"):
            conninfo = await conninfo
        kwargs = self.kwargs() if callable(self.kwargs) else self.kwargs
        if hasattr(kwargs, "__await__"):
            kwargs = await kwargs
        kwargs = self._arguments(conninfo, kwargs)
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


# ------------------------------------------------------- connection block


class Lease:
    """``with pool.connection() as conn`` (or ``async with``): ``getconn()``,
    then the end of psycopg's connection block, ``pool._end_lease`` (commit
    on success, rollback on error, then back to the pool). The sync pools
    use it until they are opened explicitly (an open pool's block is the
    core's lease: see ``ConnectionPool.connection``); the async pools always."""

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
        await self._pool._end_lease(conn, exc_type)


# ------------------------------------------------------ errors and stats


def psycopg_error(pool: Any, exc: Exception, timeout: float) -> BaseException:
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


#: The keywords a psycopg pool keeps as public attributes, as psycopg_pool's.
_PUBLIC_ATTRIBUTES = (
    "conninfo", "kwargs", "connection_class", "close_returns",
    "reconnect_timeout", "num_workers", "max_lifetime", "max_idle",
)  # fmt: skip


class PsycopgStats:
    """What psycopg_pool's sync and async pools share: their public
    attributes and their statistics, from pypool's."""

    _logger_name = "psycopg.pool"  # the pool's own records too, as psycopg_pool's
    _reconnect_failed_level = logging.WARNING
    _core: Any
    _policy: Any
    _settings: Any
    _opened: bool
    _null = False
    name: str

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
        self._set_timeout(value)  # type: ignore[attr-defined]  # the core's
        self._settings.timeout = float(value)

    @property
    def max_waiting(self) -> int:
        """How many callers may wait at once (0: no limit); may be set."""
        return int(self._core.max_waiting)

    @max_waiting.setter
    def max_waiting(self, value: int) -> None:
        self._core.max_waiting = value

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__name__} {self.name!r} at 0x{id(self):x}>"

    def _not_usable(self) -> PoolClosed | None:
        """psycopg_pool's refusal of a pool closed or not open yet."""
        if self._core.closed:
            return PoolClosed(f"the pool {self.name!r} is already closed")
        if not self._opened:
            return PoolClosed(f"the pool {self.name!r} is not open yet")
        return None

    def _resize_not_running(self, min_size: int, max_size: int) -> bool:
        """A resize of a pool closed or not open yet changes the sizes only
        (as psycopg_pool's does; nothing is opened or refused). True if the
        pool was in that state."""
        if self._core.closed:
            return True
        if self._opened:
            return False
        core = self._core
        if max_size < core.min_size:
            core.min_size = min_size
            core.max_size = max_size
        else:
            core.max_size = max_size
            core.min_size = min_size
        self._policy.min_size = min_size
        return True

    _max_size_asked = 0
    _stats_base: dict[str, int]
    _failure_lock: threading.Lock
    _failures: dict[str, float]

    #: What a flavour (sync or async) makes: its connection factory and
    #: adapter types, and the keywords only its pypool base takes.
    _connect_type: ClassVar[type[Connect]]
    _adapter_type: ClassVar[type[PsycopgAdapter]]
    _base_keywords: ClassVar[Mapping[str, Any]] = {}

    def _start(self, open: bool | None) -> None:
        """Opens the new pool, or not, as ``open`` and the flavour say."""
        raise NotImplementedError

    def _construct(self, conninfo: Any, given: dict[str, Any], defaults: Mapping[str, Any]) -> Any:
        """The constructor of every psycopg pool, sync and async, pool and
        null pool: takes the keywords of :data:`PSYCOPG_SETTINGS` (``given``
        over ``defaults``) and pypool's other settings, checks the sizes by
        psycopg_pool's rules, keeps psycopg_pool's public attributes and
        makes the pypool pool. Returns ``open``, for the flavour to act on."""
        public = type(self).__dict__.get("_public", type(self))
        take_keywords(public.__name__, given)
        options = {name: given.pop(name) for name in OPTIONS if name in given}
        values = {**defaults, **given}
        min_size, max_size = check_sizes(values["min_size"], values["max_size"], self._null)
        self._max_size_asked = max_size
        if self._null:
            values["close_returns"] = False  # as psycopg_pool: returning means closing here
        reset, transaction_pooling = values["reset"], values["transaction_pooling"]
        check_transaction_pooling(transaction_pooling, reset)
        for name, value in OPTION_DEFAULTS.items():
            options.setdefault(name, value)
        if values["check"] is not None:
            # The user's contract, as psycopg_pool's: every hand-out is
            # checked, a new connection's too (unless check_after is given).
            options.setdefault("check_after", 0.0)
        values["conninfo"] = conninfo
        for name in _PUBLIC_ATTRIBUTES:
            setattr(self, name, values[name])
        self._user_configure = values["configure"]
        self._forget_failures()
        factory = self._connect_type(
            conninfo, values["connection_class"], values["kwargs"], transaction_pooling
        )
        fed = {s.feeds: values[s.name] for s in PSYCOPG_SETTINGS if s.feeds is not None}
        fed["min_size"] = min_size
        fed["max_size"] = _core.MAX_SIZE if self._null and max_size == 0 else max_size
        fed["configure"] = WeakMethod(self._configure_new)  # type: ignore[attr-defined]
        super().__init__(  # type: ignore[call-arg]  # the flavour's pypool pool
            factory,
            adapter=self._adapter_type(reset),
            **fed,
            **self._base_keywords,
            **options,
        )
        factory.pool = PoolLink(self)  # weakly: no cycle through the settings
        self._opened = False
        self._stats_base = {}
        return values["open"]

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
        s = PoolShared.stats(self)  # type: ignore[arg-type]
        retired = s[names.RETIRED]
        with self._failure_lock:
            failed = dict(self._failures)
        # A request is counted from the moment it waits, as psycopg_pool
        # does: the core counts it once served (or timed out), so the ones
        # waiting now are added.
        waiting = int(self._core.waiting)
        return {
            "requests_num": s[names.REQUESTS] + failed["requests"] + waiting,
            "requests_queued": s[names.REQUESTS_WAITED] + failed["waits"] + waiting,
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


def check_sizes(min_size: int, max_size: int | None, null: bool) -> tuple[int, int]:
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


class NullShared:
    """What makes a psycopg pool, sync or async, a null pool: psycopg_pool's
    size rules (``min_size`` 0; ``max_size`` 0 or None: no limit, read back
    as 0)."""

    _null = True
    _max_size_asked = 0

    @property
    def max_size(self) -> int:
        """The most connections open at once (0: no limit)."""
        return self._max_size_asked

    def _null_resize(self, min_size: int, max_size: int | None) -> int:
        """Checks a resize; returns the core's ``max_size`` for it."""
        min_size, max_size = check_sizes(min_size, max_size, True)
        self._max_size_asked = max_size
        return max_size or _core.MAX_SIZE


def psycopg_init(connection_class: type, *, null: bool = False) -> Callable[..., None]:
    """The ``__init__`` of a psycopg pool flavour (the pools or the null
    pools, making ``connection_class`` connections): one body,
    :meth:`PsycopgStats._construct`, and the signature of
    :data:`PSYCOPG_SETTINGS`, which ``inspect.signature`` and ``help()``
    show."""
    values = defaults(connection_class, null=null)

    def __init__(self: PsycopgStats, conninfo: Any = "", **settings: Any) -> None:
        self._start(self._construct(conninfo, settings, values))

    __init__.__signature__ = signature(connection_class, null=null, method=True)  # type: ignore[attr-defined]
    return __init__
