"""SQLAlchemy pool classes on pypool's core.

``create_engine(url, poolclass=pypool.sqlalchemy.QueuePool)`` (and
``create_async_engine(url, poolclass=pypool.sqlalchemy.AsyncAdaptedQueuePool)``)
swap the storage and the waiting of SQLAlchemy's ``QueuePool`` for pypool's
core; everything else stays SQLAlchemy's. The pools take the same arguments
(``pool_size``, ``max_overflow``, ``pool_timeout``, ``pool_use_lifo``,
``pool_recycle``, ``pool_pre_ping``, ``pool_reset_on_return``, ...), report the
same ``status()``, raise the same ``TimeoutError``, and leave reset on return,
pre-ping, recycle, invalidation and the pool events to SQLAlchemy, which fires
them exactly as it does for its own pools.

What the core stores is SQLAlchemy's connection record (one per connection,
which SQLAlchemy reconnects in place after an invalidation). A checkout takes
an idle record if there is one; else, below ``pool_size + max_overflow``, it
connects on the calling thread (or, for the asyncio pool, in the caller's
greenlet, which asyncio dialects require); else it waits in the core's queue,
which hands returned connections to the longest waiter first once it has
waited a couple of milliseconds (bounded fairness). A return keeps the
connection idle unless ``pool_size`` connections are idle already, in which
case it is closed, as ``QueuePool`` does.

In a child process made by ``os.fork()`` the pool starts afresh: the child
connects its own connections and never hands out, resets, closes or
finalizes one of the parent's; one the parent had checked out is, in the
child, an invalidated connection. ``docs/sqlalchemy.md`` lists every way
the pools differ from SQLAlchemy's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import weakref
from types import ModuleType
from typing import Any, ClassVar

from sqlalchemy import exc as sa_exc
from sqlalchemy import pool as sa_pool
from sqlalchemy.pool.base import _AsyncConnDialect

try:  # SQLAlchemy 2.1
    from sqlalchemy.util.concurrency import await_ as _await
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util.concurrency import await_only as _await

from . import _core
from . import errors as _errors
from ._weak import keep_forever
from .errors import NotBorrowed, PoolClosed, PoolTimeout

__all__ = ["AsyncAdaptedQueuePool", "ConfigurationError", "QueuePool"]

_clock = time.monotonic

_bound_classes: dict[tuple[type, ModuleType], type] = {}

_live_pools: weakref.WeakSet[QueuePool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_live_pools):
        pool._forget_parent()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ConfigurationError(_errors.ConfigurationError, sa_exc.ArgumentError):
    """A pool argument is invalid; the message says which and what to change.

    Both :class:`pypool.ConfigurationError` (a ``ValueError``) and
    :class:`sqlalchemy.exc.ArgumentError`, so either ``except`` catches it.
    Raised when the pool (that is, the engine) is made, for values that
    SQLAlchemy's own pools accept there and then misuse later.
    """

    __module__ = "pypool.sqlalchemy"


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer, not {type(value).__name__}")
    if value < low:
        raise ConfigurationError(f"{name} must be {low} or more, not {value}")
    return value


def _check_timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"timeout (pool_timeout) must be a number of seconds or None, "
            f"not {type(value).__name__}"
        )
    if not value >= 0:  # rejects NaN too
        raise ConfigurationError(
            f"timeout (pool_timeout) must be 0 or more seconds (None: no limit), not {value!r}"
        )
    return value


class QueuePool(sa_pool.QueuePool):
    """SQLAlchemy's ``QueuePool`` with pypool's core as its storage and queue.

    Same arguments and meanings as :class:`sqlalchemy.pool.QueuePool`:
    ``pool_size`` connections are kept, up to ``max_overflow`` more are made
    under load and closed when returned (``-1``: no limit, and ``pool_size=0``
    means no limit at all), a checkout waits up to ``timeout`` seconds before
    ``sqlalchemy.exc.TimeoutError`` (``None``: no limit; ``0``: not at all),
    ``use_lifo`` reuses the most recently returned connection first. Values
    SQLAlchemy's pools would misuse later (a negative size or timeout,
    ``max_overflow`` below -1, ...) raise :class:`ConfigurationError` here.
    """

    #: The core module (``pypool._corepool`` or ``pypool._corepool_py``); None:
    #: the one :mod:`pypool._core` picked. See :meth:`with_core`.
    _core_module: ClassVar[ModuleType | None] = None

    #: Log under SQLAlchemy's own logger name for the pool class (plus
    #: ``.<logging_name>``), so that ``echo_pool``, ``pool_logging_name`` and a
    #: logging configuration for ``sqlalchemy.pool`` work as with its pools.
    _sqla_logger_namespace = f"{sa_pool.QueuePool.__module__}.{sa_pool.QueuePool.__name__}"

    #: Seconds a checkout waits at the limit; None: no limit (SQLAlchemy's
    #: annotation says float, but its pools accept None with that meaning).
    _timeout: float | None  # type: ignore[assignment]

    def __init__(
        self,
        creator: Any,
        pool_size: int = 5,
        max_overflow: int = 10,
        timeout: float | None = 30.0,
        use_lifo: bool = False,
        **kw: Any,
    ) -> None:
        module = self._core_module if self._core_module is not None else _core
        pool_size = _check_int("pool_size", pool_size, 0)
        max_overflow = _check_int("max_overflow", max_overflow, -1)
        timeout = _check_timeout(timeout)
        if pool_size + max(max_overflow, 0) > module.MAX_SIZE:
            raise ConfigurationError(
                f"pool_size + max_overflow must be at most {module.MAX_SIZE} "
                f"(max_overflow=-1: no limit), not {pool_size + max_overflow}"
            )
        sa_pool.Pool.__init__(self, creator, **kw)
        self._pool_size = pool_size
        self._max_overflow = -1 if pool_size == 0 else max_overflow
        self._timeout = timeout
        self._use_lifo = bool(use_lifo)
        if self._max_overflow < 0:
            max_size = module.MAX_SIZE
        else:
            max_size = max(pool_size + self._max_overflow, 1)
        self._idle_state = module.IDLE
        self._creating_state = module.CREATING
        self._core = module.CorePool(max_size, lifo=self._use_lifo)
        self._try_acquire = self._core.try_acquire
        self._release = self._core.release
        # While no more than this many connections exist, a returned one is
        # always kept: the hot path then reads one number.
        self._keep_all_up_to = pool_size if pool_size else module.MAX_SIZE
        self._mode_lock = threading.Lock()
        # Every record this pool made, and (in a fork child) those the parent
        # had checked out at the fork, which may still come back here.
        self._records: weakref.WeakSet[Any] = weakref.WeakSet()
        self._forgotten: weakref.WeakSet[Any] = weakref.WeakSet()
        self._fast_return(True)
        _live_pools.add(self)

    def _create_connection(self) -> Any:
        record = super()._create_connection()
        self._records.add(record)
        return record

    def _forget_parent(self) -> None:
        # In a fork child (the core has forgotten its slots): the parent's
        # connections are never handed out, reset, closed nor finalized here.
        # Each is kept alive for good and dropped from its record; a
        # checked-out one is taken from its proxy too, which SQLAlchemy then
        # treats as invalidated (its return does no I/O; an engine Connection
        # reconnects with a new connection, or raises PendingRollbackError
        # inside a transaction).
        self._mode_lock = threading.Lock()
        self._fast_return(False)
        for record in list(self._records):
            conn = record.dbapi_connection
            if conn is not None:
                keep_forever(conn)
                record.dbapi_connection = None
            record.finalize_callback.clear()
            if record.fairy_ref is not None:  # checked out in the parent
                fairy = record.fairy_ref()
                if fairy is not None:
                    fairy.dbapi_connection = None
                self._forgotten.add(record)
        self._records = weakref.WeakSet()

    def _fast_return(self, fast: bool) -> None:
        # While no overflow connection exists, every returned connection is
        # kept: ``_do_return_conn`` is then the core's ``release`` itself. The
        # mode changes under a lock, each time after reading the size.
        if fast:
            self._do_return_conn = self._release  # type: ignore[method-assign]
        else:
            self.__dict__.pop("_do_return_conn", None)

    @classmethod
    def with_core(cls, module: ModuleType) -> type[QueuePool]:
        """This class bound to one core module (``pypool._corepool`` or
        ``pypool._corepool_py``), whichever :mod:`pypool._core` picks by
        default. ``recreate()`` keeps the binding."""
        key = (cls, module)
        bound = _bound_classes.get(key)
        if bound is None:
            bound = type(
                cls.__name__,
                (cls,),
                {
                    "_core_module": module,
                    "__module__": cls.__module__,
                    "__qualname__": cls.__qualname__,
                },
            )
            _bound_classes[key] = bound
        return bound

    # ------------------------------------------------------------ storage

    def _do_get(self) -> Any:
        record = self._try_acquire()
        if record is not None:
            return record
        return self._get_slow()

    def _get_slow(self) -> Any:
        core = self._core
        deadline = None
        while True:
            slot = core.reserve()
            if slot is not None:
                record = None
                try:
                    if core.size > self._keep_all_up_to:  # an overflow connection
                        with self._mode_lock:
                            if core.size > self._keep_all_up_to:
                                self._fast_return(False)
                    record = self._create_connection()
                    core.fill(slot, record)
                except PoolClosed:  # pragma: no cover - the core is never closed
                    if record is not None:
                        record.close()
                    raise
                except BaseException:
                    # Whatever stopped it (a failed connect, a Ctrl-C), the
                    # slot does not stay "connecting", and a connection made
                    # but not pooled is closed.
                    if core.slot_info(slot).state == self._creating_state:
                        core.abandon(slot)
                        if record is not None:
                            record.close()
                    raise
                # Idle now, or handed to a caller that waited: then look again.
                record = core.try_acquire()
                if record is not None:
                    return record
                continue
            if self._timeout is None:  # pool_timeout=None: wait as long as it takes
                return self._wait(None)
            if deadline is None:
                deadline = _clock() + self._timeout
            try:
                return self._wait(max(0.0, deadline - _clock()))
            except PoolTimeout:
                pass
            raise sa_exc.TimeoutError(
                f"QueuePool limit of size {self.size()} overflow {self.overflow()} reached, "
                f"connection timed out, timeout {self._timeout:0.2f}",
                code="3o7r",
            )

    def _wait(self, timeout: float | None) -> Any:
        return self._core.acquire(timeout)

    def _do_return_conn(self, record: Any) -> None:
        # The slow path, while overflow connections exist or after a fork.
        core = self._core
        try:
            if self._pool_size and core.idle >= self._pool_size and not core.waiting:
                core.discard(record)  # an overflow connection: closed, as QueuePool does
                record.close()
            elif not core.release(record):  # pragma: no cover - the core is never closed
                record.close()
        except NotBorrowed:
            if record in self._forgotten:  # checked out in the parent before a fork
                self._forgotten.discard(record)
                return
            raise
        if core.size <= self._keep_all_up_to and not self._forgotten:
            with self._mode_lock:
                if core.size <= self._keep_all_up_to:
                    self._fast_return(True)

    # ---------------------------------------------------------- management

    def recreate(self) -> QueuePool:
        self.logger.info("Pool recreating")
        return self.__class__(
            self._creator,
            pool_size=self._pool_size,
            max_overflow=self._max_overflow,
            pre_ping=self._pre_ping,
            use_lifo=self._use_lifo,
            timeout=self._timeout,
            recycle=self._recycle,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            _dispatch=self.dispatch,
            dialect=self._dialect,
        )

    def dispose(self) -> None:
        """Closes the idle connections. Checked-out ones stay usable and
        counted; they are pooled again when returned, as with QueuePool."""
        core = self._core
        for index in core.slots(self._idle_state):
            if core.claim(index) is None:  # borrowed meanwhile
                continue
            core.retire(index).close()
        self.logger.info("Pool disposed. %s", self.status())

    def status(self) -> str:
        return (
            f"Pool size: {self.size()}  Connections in pool: {self.checkedin()} "
            f"Current Overflow: {self.overflow()} Current Checked out "
            f"connections: {self.checkedout()}"
        )

    def size(self) -> int:
        return self._pool_size

    def timeout(self) -> float | None:  # type: ignore[override]
        return self._timeout

    def checkedin(self) -> int:
        idle: int = self._core.idle
        return idle

    def overflow(self) -> int:
        return self._core.size - self._pool_size if self._pool_size else 0

    def checkedout(self) -> int:
        core = self._core
        out: int = core.size - core.idle
        return out

    def stats(self) -> dict[str, float | int]:
        """The core's counters and gauges: ``acquires``, ``waits``,
        ``wait_time``, ``wait_time_max``, ``timeouts``, ``use_time`` (seconds
        connections were checked out), ``size``, ``idle``, ``in_use``,
        ``connecting``, ``waiting``, ``max_size``, ..."""
        stats: dict[str, float | int] = self._core.stats()
        return stats


def _settle(future: asyncio.Future[bool], handed: bool) -> None:
    if not future.done():
        future.set_result(handed)


class AsyncAdaptedQueuePool(QueuePool, sa_pool.AsyncAdaptedQueuePool):
    """The asyncio version of :class:`QueuePool`, for ``create_async_engine``.

    It never blocks the event loop: a checkout that must wait takes a ticket
    in the core's queue and awaits it (in the engine's greenlet). A
    cancelled or timed-out wait leaves the queue, passing on a connection
    handed to it at that moment. The pool is bound to no event loop.
    """

    _is_asyncio = True
    _dialect = _AsyncConnDialect()
    _sqla_logger_namespace = (
        f"{sa_pool.AsyncAdaptedQueuePool.__module__}.{sa_pool.AsyncAdaptedQueuePool.__name__}"
    )

    def _wait(self, timeout: float | None) -> Any:
        return _await(self._wait_async(timeout))

    async def _wait_async(self, timeout: float | None) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()

        def callback(ticket: Any) -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                loop.call_soon_threadsafe(_settle, future, True)

        ticket = self._core.enqueue(callback)
        if not ticket.done:
            # A plain future and a timer, not asyncio.wait_for: on Python
            # 3.10 and 3.11 that returns the result of a future resolved in
            # the step the task is cancelled, swallowing the cancellation.
            # timeout None: wait as long as it takes, as SQLAlchemy's pool does.
            timer = None if timeout is None else loop.call_later(timeout, _settle, future, False)
            try:
                handed = await future
            except BaseException:
                ticket.cancel()  # passes on a connection handed at this moment
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            if not handed and not ticket.done:
                assert timeout is not None
                ticket.cancel(timed_out=True)
                raise PoolTimeout(f"no connection available after {timeout:.3f} s")
        return ticket.result()
