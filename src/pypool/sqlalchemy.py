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

In a child process made by ``os.fork()`` the core forgets the parent's
connections: the child connects its own, and never closes or reuses one it
shares with the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import weakref
from types import ModuleType
from typing import Any, ClassVar, Literal

from sqlalchemy import exc as sa_exc
from sqlalchemy import pool as sa_pool
from sqlalchemy.pool.base import _AsyncConnDialect

try:  # SQLAlchemy 2.1
    from sqlalchemy.util.concurrency import await_ as _await
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util.concurrency import await_only as _await

from . import _core
from .errors import NotBorrowed, PoolClosed, PoolTimeout

__all__ = ["AsyncAdaptedQueuePool", "QueuePool"]

_clock = time.monotonic

#: Records returned in a fork child that were borrowed in the parent: their
#: connections share the parent's sockets, so they are kept here, never
#: closed nor finalized, for the life of the process.
_fork_orphans: list[Any] = []

_bound_classes: dict[tuple[type, ModuleType], type] = {}

_live_pools: weakref.WeakSet[QueuePool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_live_pools):
        pool._fast_return(False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class QueuePool(sa_pool.QueuePool):
    """SQLAlchemy's ``QueuePool`` with pypool's core as its storage and queue.

    Same arguments and meanings as :class:`sqlalchemy.pool.QueuePool`:
    ``pool_size`` connections are kept, up to ``max_overflow`` more are made
    under load and closed when returned (``-1``: no limit, and ``pool_size=0``
    means no limit at all), a checkout waits up to ``timeout`` seconds before
    ``sqlalchemy.exc.TimeoutError``, ``use_lifo`` reuses the most recently
    returned connection first.
    """

    #: The core module (``pypool._corepool`` or ``pypool._corepool_py``); None:
    #: the one :mod:`pypool._core` picked. See :meth:`with_core`.
    _core_module: ClassVar[ModuleType | None] = None

    def __init__(
        self,
        creator: Any,
        pool_size: int = 5,
        max_overflow: int = 10,
        timeout: float = 30.0,
        use_lifo: bool = False,
        **kw: Any,
    ) -> None:
        sa_pool.Pool.__init__(self, creator, **kw)
        module = self._core_module if self._core_module is not None else _core
        self._pool_size = pool_size
        self._max_overflow = -1 if pool_size == 0 else max_overflow
        self._timeout = timeout
        self._use_lifo = bool(use_lifo)
        if self._max_overflow < 0:
            max_size = module.MAX_SIZE
        else:
            max_size = min(max(pool_size + self._max_overflow, 1), module.MAX_SIZE)
        self._idle_state = module.IDLE
        self._creating_state = module.CREATING
        self._core = module.CorePool(max_size, lifo=self._use_lifo)
        self._try_acquire = self._core.try_acquire
        self._release = self._core.release
        # While no more than this many connections exist, a returned one is
        # always kept: the hot path then reads one number.
        self._keep_all_up_to = pool_size if pool_size else module.MAX_SIZE
        self._pid = os.getpid()
        self._mode_lock = threading.Lock()
        self._fast_return(True)
        _live_pools.add(self)

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
                    if core.slot_info(slot)[0] == self._creating_state:
                        core.abandon(slot)
                        if record is not None:
                            record.close()
                    raise
                # Idle now, or handed to a caller that waited: then look again.
                record = core.try_acquire()
                if record is not None:
                    return record
                continue
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

    def _wait(self, timeout: float) -> Any:
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
            if os.getpid() != self._pid:  # borrowed in the parent before a fork
                _fork_orphans.append(record)
                return
            raise
        if core.size <= self._keep_all_up_to and os.getpid() == self._pid:
            with self._mode_lock:
                if core.size <= self._keep_all_up_to:
                    self._fast_return(True)

    def _inc_overflow(self) -> bool:  # the core counts: kept for API parity
        return True

    def _dec_overflow(self) -> Literal[True]:
        return True

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

    def timeout(self) -> float:
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

    def _wait(self, timeout: float) -> Any:
        return _await(self._wait_async(timeout))

    async def _wait_async(self, timeout: float) -> Any:
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
            timer = loop.call_later(timeout, _settle, future, False)
            try:
                handed = await future
            except BaseException:
                ticket.cancel()  # passes on a connection handed at this moment
                raise
            finally:
                timer.cancel()
            if not handed and not ticket.done:
                ticket.cancel(timed_out=True)
                raise PoolTimeout(f"no connection available after {timeout:.3f} s")
        return ticket.result()
