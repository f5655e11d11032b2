"""``pypool.AsyncPool``: the connection pool for asyncio, on the same core.

It shares :class:`pypool.Pool`'s settings, their validation, the connect
demand rule, the counters and the statistics (:mod:`pypool.pool.settings`,
:mod:`pypool.pool.policy`). What
differs is only how it waits and where the I/O runs:

- a task that finds no idle connection takes a *ticket* in the core's wait
  queue (``CorePool.enqueue``) and awaits a future that the core resolves,
  through ``loop.call_soon_threadsafe``, when a connection is handed to it:
  no thread blocks while a task waits, and tickets share the queue, the
  ``max_waiting`` bound and the fairness of threads;
- connects run in ``num_workers`` tasks, never in the caller's: a caller
  cancelled while a connect it asked for is in flight does not cancel the
  connect, and the connection joins the pool;
- maintenance is one task.

Factories, ``configure``, ``check``, resets and ``close`` may be coroutine
functions or plain ones. The pool binds to the event loop that opens it or
first uses it; using it from another loop raises :class:`PoolError` at once
rather than hanging.

The hot path is the core's, as for :class:`pypool.Pool`: handing out an
idle connection the verdicts pass (``PoolBase._take``) and taking one back
(``PoolBase._give``) are one native call each; only waiting, checks, async
resets, connects and closes run here. Maintenance, events, leak reports and
statistics are :class:`pypool.Pool`'s (:class:`pypool.pool.shared.PoolShared`).

Cancellation is safe: a task cancelled while waiting leaves the queue (a
connection handed to it at that moment is passed on); one cancelled while it
holds a connection inside ``async with pool.connection()`` gives it back;
one cancelled during the reset of a connection it returns gets the
connection discarded (its state is unknown), never pooled.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from .. import _core
from ..errors import ConfigurationError, ConnectionFailed, PoolError, PoolTimeout
from .policy import jitter, make_core
from .protocols import ConnT
from .settings import (
    ClassSignature,
    Settings,
    check_run,
    docstring_section,
    signature,
    take_keywords,
)
from .shared import USER_CHECK_FLOOR, HotPath, PoolShared, Steps, core_module_of

__all__ = ["AsyncPool", "AsyncPoolMethods"]

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from typing_extensions import Self

T = TypeVar("T")


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


#: What stops a task rather than fails a connect: re-raised, never counted.
_STOPS = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)

#: The types a timeout in seconds may have on the fast path (not bool).
_SECONDS = (int, float)


def _resolve(future: asyncio.Future[bool], handed: bool) -> None:
    if not future.done():
        future.set_result(handed)


# Waits that never swallow a cancellation. On Python 3.10 and 3.11,
# asyncio.wait_for(aw, timeout) returns aw's result instead of raising
# CancelledError when the cancellation arrives in the loop iteration in which
# aw completes: a task cancelled by asyncio.run()'s shutdown just as its
# event was set went on running, and asyncio.run() waited for it forever.
# Here a task awaits a plain future, resolved by the event or by a timer
# (loop.call_later): a cancellation always reaches the task, since a task
# cancelled while its future is already resolved gets CancelledError at its
# next step.


class _Signal:
    """``asyncio.Event``, with a timeout on :meth:`wait` that needs no
    ``asyncio.wait_for``, and :meth:`pulse` to wake the current waiters
    without staying set. Loop thread only."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: set[asyncio.Future[bool]] = set()

    def set(self) -> None:
        self._set = True
        self.pulse()

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def pulse(self) -> None:
        """Wakes every task waiting now."""
        for future in list(self._waiters):
            _resolve(future, True)

    async def wait(self, timeout: float | None = None) -> bool:
        """Until set (or pulsed), or ``timeout`` seconds: True unless timed out."""
        if self._set:
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _resolve, future, False)
        self._waiters.add(future)
        try:
            return await future
        finally:
            self._waiters.discard(future)
            if timer is not None:
                timer.cancel()


async def _within(awaitable: Awaitable[T], timeout: float) -> T:
    """``await awaitable``, in a task of its own, for at most ``timeout``
    seconds (then ``asyncio.TimeoutError``); the task is cancelled when the
    caller is, or times out. Unlike ``asyncio.wait_for`` on 3.10 and 3.11, a
    cancellation of the caller is never swallowed, and a timeout returns at
    the deadline without waiting for the task to take its cancellation (a
    driver stuck in I/O may not)."""
    task = asyncio.ensure_future(awaitable)
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[bool] = loop.create_future()
    task.add_done_callback(lambda _task: _resolve(finished, True))
    timer = loop.call_later(timeout, _resolve, finished, False)
    try:
        in_time = await finished
    except BaseException:
        _abandon(task)
        raise
    finally:
        timer.cancel()
    if not in_time:
        _abandon(task)
        raise asyncio.TimeoutError(f"not done within {timeout:.3f} s")
    return task.result()


def _abandon(task: asyncio.Future[Any]) -> None:
    """Cancels a task nobody will await any more; its outcome is read when
    it ends, so that none is reported as never retrieved."""
    task.cancel()
    task.add_done_callback(_consume)


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class _Lease:
    """``async with pool.connection() as conn``: a connection, given back on
    exit (also when the block raises or the task is cancelled)."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: Any, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None

    async def __aenter__(self) -> Any:
        if self._conn is not None:
            raise PoolError("this connection() block is in use already")
        self._conn = await self._pool.acquire(self._timeout)
        return self._conn

    async def __aexit__(self, *exc_info: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Not shielded (a task a call): the return does not suspend
            # unless the reset must await, and a cancellation there discards
            # the connection (its state unknown) rather than losing it.
            await self._pool.release(conn)


class AsyncPoolMethods(PoolShared, Generic[ConnT]):
    """Everything of AsyncPool but the hot path, which comes from PoolBase."""

    if TYPE_CHECKING:  # from the core's PoolBase

        def _take(self) -> ConnT | None: ...
        def _give(self, conn: Any, /) -> Any: ...
        def _give_back(self, conn: Any, /) -> None: ...
        def _set_thread(self, ident: int) -> None: ...

        _unchecked: Any

    @overload
    def __init__(self, factory: Callable[[], Awaitable[ConnT]], **settings: Any) -> None: ...
    @overload
    def __init__(self, factory: Callable[[], ConnT], **settings: Any) -> None: ...
    def __init__(self, factory: Callable[[], Any], **settings: Any) -> None:
        # The keywords, their defaults and their bounds are
        # pypool.pool.settings.SETTINGS (AsyncPool.__signature__).
        public = type(self).__dict__.get("_public", type(self))
        take_keywords(public.__name__, settings)
        if settings.get("adapter") is None:
            settings["adapter"] = _GenericAsyncAdapter()
        strict = public.__init__ is AsyncPoolMethods.__init__  # the user's keywords, as given
        config = Settings(factory, settings, strict=strict)
        core_module = core_module_of(type(self))
        core = make_core(config, core_module, self._on_wait, self._on_abandon)
        core_module.PoolBase.__init__(self, core, config.timeout, None)
        self._adopt(config, core)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._demand: _Signal | None = None
        self._stop: _Signal | None = None
        self._ready: _Signal | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closers: set[asyncio.Task[None]] = set()  # closes run in the background
        self._loop_thread = 0
        self._closing = False
        _live_async_pools.add(self)

    def _after_fork_in_child(self) -> None:
        """In a forked child: the core forgot the parent's connections;
        forget the parent's loop, tasks and counters too. The pool binds to
        the child's running loop at its next use, as a new pool does."""
        self._set_thread(0)
        self._loop = None
        self._demand = self._stop = self._ready = None
        self._tasks = []
        self._closers = set()
        self._loop_thread = 0
        self._unchecked = None
        self._forget_parent()

    # ------------------------------------------------------------- lifecycle

    def _bind(self) -> None:
        """Binds the pool to the running loop (once) and starts its tasks."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None:
            raise PoolError(
                f"pool {self.name!r} belongs to another event loop: make one pool per loop"
            )
        if self._core.closed:
            raise self._closed_error()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._set_thread(self._loop_thread)  # the hot path serves this thread only
        self._demand = _Signal()
        self._stop = _Signal()
        self._ready = _Signal()
        ref = weakref.ref(self)
        for i in range(self._settings.num_workers):
            self._tasks.append(
                loop.create_task(
                    _connect_worker(ref, self._demand, self._stop),
                    name=f"pypool-{self.name}-connect-{i}",
                )
            )
        self._tasks.append(
            loop.create_task(
                _maintenance_worker(ref, self._stop), name=f"pypool-{self.name}-maintenance"
            )
        )
        self._log.info("pool %r opened (%s core, asyncio)", self.name, self.core)
        self._wake_workers()

    def _loop_ended(self) -> None:
        """The pool's tasks were cancelled by their loop's shutdown (as
        ``asyncio.run()`` does on exit), not by :meth:`close`: the hot path
        stops serving, so that a use from the next loop on this thread gets
        the slow path's clear error instead of a connection of the dead
        loop."""
        if not self._closing:
            self._set_thread(0)

    async def open(
        self, wait: bool = False, timeout: float = 30.0, fail_fast: bool = False
    ) -> None:
        """Starts the connect and maintenance tasks on the running loop (also
        done on first use). With ``wait``, waits as :meth:`wait` does; if
        that fails (:class:`PoolTimeout`, or :class:`ConnectionFailed` with
        ``fail_fast``), the pool is closed before the error is raised. (A
        direct :meth:`wait` leaves the pool open.)"""
        self._bind()
        if wait:
            try:
                await AsyncPoolMethods.wait(self, timeout, fail_fast)
            except (PoolTimeout, ConnectionFailed) as exc:
                self._log.info("pool %r could not open, closing it: %s", self.name, exc)
                await self.close()
                raise

    async def wait(self, timeout: float = 30.0, fail_fast: bool = False) -> None:
        """Waits until ``min_size`` connections are open, for a service that
        must not start against a dead database. Raises :class:`PoolTimeout`
        (with the last connection error as its cause) after ``timeout``
        seconds, or with ``fail_fast`` :class:`ConnectionFailed` as soon as a
        connect has failed (at once if the last one already had). When it
        raises, the pool stays open and connecting, as
        :meth:`pypool.Pool.wait` does."""
        self._bind()
        ready = self._ready
        assert ready is not None
        deadline = time.monotonic() + timeout
        while not self._open_enough():
            if self._core.closed:
                raise self._closed_error()
            # Pulsed by every connect that ends.
            await ready.wait(self._wait_left(deadline, timeout, fail_fast))

    async def close(self, timeout: float = 5.0) -> None:
        """Closes the pool: idle connections at once, borrowed ones when they
        are returned; waiting tasks get :class:`PoolClosed`. Waits up to
        ``timeout`` seconds for the pool's tasks to end. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self._set_thread(0)
        idle = self._core.close()
        unchecked, self._unchecked = self._unchecked, None
        if unchecked is not None:
            self._core.discard(unchecked)
            idle.append(unchecked)
        if self._stop is not None:
            self._stop.set()
        if self._demand is not None:
            self._demand.set()  # connect workers sleep on demand: let them see the stop
        for conn in idle:
            await self._close_connection(conn, "closed", None)
        waiting_for = [*self._tasks, *self._closers]
        if waiting_for:
            _done, pending = await asyncio.wait(waiting_for, timeout=timeout)
            for task in pending:
                task.cancel()
        for conn in self._core.close():
            await self._close_connection(conn, "closed", None)
        self._log.info("pool %r closed", self.name)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __del__(self) -> None:
        # Dropped unclosed: nothing references the pool any more (its tasks
        # and its core hold it weakly), so it goes at once; its tasks stop
        # and its idle connections are closed, on its loop.
        if getattr(self, "_closing", True) or not hasattr(self, "_core"):
            return
        with contextlib.suppress(Exception):  # pragma: no cover - interpreter shutdown
            _close_dropped(self)

    # ------------------------------------------------------------- borrowing

    async def acquire(self, timeout: float | None = None) -> ConnT:
        """A connection, yours until you give it back with :meth:`release`.

        Waits up to ``timeout`` seconds (None: the pool's timeout), then
        raises :class:`PoolTimeout`; :class:`TooManyRequests` when the wait
        queue is full, :class:`PoolClosed` when the pool is closed.
        """
        if timeout is None or (type(timeout) in _SECONDS and timeout >= 0):
            conn = self._take()
            if conn is not None:
                return conn
        return await self._acquire_slow(timeout)  # also says what is wrong with timeout

    async def _acquire_slow(self, timeout: float | None) -> ConnT:
        unchecked, self._unchecked = self._unchecked, None
        try:
            if timeout is None:
                wait_for = self._settings.timeout
            elif (
                isinstance(timeout, bool)
                or not isinstance(timeout, (int, float))
                or not timeout >= 0
            ):
                raise ConfigurationError(
                    f"timeout must be a number of seconds >= 0, not {timeout!r}"
                )
            else:
                wait_for = float(timeout)
            self._bind()
        except BaseException:
            if unchecked is not None:  # still to be checked, by the next taker
                self._core.release(unchecked)
            raise
        try:
            return await self._acquire_until_one(unchecked, wait_for)
        except PoolError as exc:
            error = self._failed(exc, wait_for)
        try:
            raise error
        finally:
            del error  # held here, it would hold this frame, and the pool, in a cycle

    async def _acquire_until_one(self, conn: ConnT | None, wait_for: float) -> ConnT:
        """Until a connection passes: the one set aside for a check, an idle
        one, or one handed over after a wait in the core's queue."""
        core = self._core
        deadline = time.monotonic() + wait_for
        while True:
            if conn is None:
                conn = self._take()
                if conn is not None:
                    return conn
                conn, self._unchecked = self._unchecked, None
            if conn is None:
                conn = await self._wait_for_one(deadline)
                verdict = core.verdict(core.slot_of(conn), True)
                if verdict == _core.OK:
                    self._hand_over(conn)
                    return conn
                if verdict != _core.CHECK:
                    core.discard(conn)
                    self._rejected(conn, verdict, None)
                    conn = None
                    continue
            try:
                failure = await self._vet(conn, max(0.0, deadline - time.monotonic()))
            except BaseException:
                # Cancelled or interrupted mid-check: the connection may be
                # mid-exchange with the server, so it is closed, not pooled,
                # before the task goes (the loop may be ending).
                core.discard(conn)
                self._policy.rejected += 1
                await self._close_on_the_way_out(conn, "discarded")
                self._wake_workers()
                raise
            if failure is None:
                self._hand_over(conn)
                return conn
            core.discard(conn)
            self._rejected(conn, _core.CHECK, failure)
            conn = None

    def _hand_over(self, conn: Any) -> None:
        """The checkout hook on a connection about to go out; a hook that
        raises (a ``KeyboardInterrupt`` too) gets it given back first."""
        try:
            self._checked_out(conn)
        except BaseException:
            if not self._core.release(conn):  # the pool closed meanwhile
                self._close_later(conn, "closed", None)
            raise

    async def _wait_for_one(self, deadline: float) -> ConnT:
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[bool] = loop.create_future()
        loop_thread = self._loop_thread

        def wake(_ticket: Any) -> None:
            # On the loop's own thread (a release by another task) the future
            # is resolved at once; from any other thread, through the loop.
            if threading.get_ident() == loop_thread:
                _resolve(future, True)
            else:
                loop.call_soon_threadsafe(_resolve, future, True)

        ticket = self._core.enqueue(wake)
        timer = loop.call_later(max(0.0, deadline - time.monotonic()), _resolve, future, False)
        try:
            handed = await future
        except BaseException:
            ticket.cancel()  # passes on a connection handed at this moment
            raise
        finally:
            timer.cancel()
        if not handed:
            # The core decides, under its lock: a timeout with the idle
            # connections it counted, or the connection handed meanwhile.
            timed_out = ticket.time_out()
            if timed_out is not None:
                raise timed_out
        conn: ConnT = ticket.result()
        return conn

    async def release(self, conn: ConnT) -> None:
        """Gives back a connection from :meth:`acquire`: it is reset, and
        retired instead of kept if the thresholds say so. Raises
        :class:`NotBorrowed` for a connection not borrowed from this pool."""
        if self._closing:
            await self._release_closed(conn)
            return
        pending = self._give(conn)
        if pending is not None:
            await self._finish_reset(conn, pending)

    async def _release_closed(self, conn: Any) -> None:
        """A return after :meth:`close`: the connection is closed before the
        call returns (a close task could be cancelled by the loop's end)."""
        if not self._core.release(conn):
            await self._close_connection(conn, "closed", None)

    async def _finish_reset(self, conn: Any, pending: Any) -> None:
        """Awaits the reset the core handed back, then ends the return; a
        failed or interrupted reset leaves the state unknown: discarded."""
        try:
            if inspect.isawaitable(pending):
                await pending
        except BaseException as exc:
            self._core.discard(conn)
            if not isinstance(exc, Exception):
                await self._close_on_the_way_out(conn, "reset_failed")
                self._wake_workers()
                raise
            self._retire(conn, _core.RESET_FAILED, exc)
            return
        self._give_back(conn)

    def connection(self, timeout: float | None = None) -> AbstractAsyncContextManager[ConnT]:
        """``async with pool.connection() as conn:`` a connection from
        :meth:`acquire`, given back on exit (also on error or cancellation)."""
        return _Lease(self, timeout)

    async def discard(self, conn: Any, exc: BaseException | None = None) -> None:
        """Closes a borrowed connection you know is broken, instead of giving
        it back; the pool makes a new one as needed."""
        slot = self._core.slot_of(conn)
        self._core.discard(conn)
        self._leases.pop(slot, None)
        await self._close_connection(conn, "broken" if exc is not None else "discarded", exc)
        self._wake_workers()

    async def run(
        self,
        fn: Callable[[ConnT], Awaitable[T]],
        *,
        retries: int = 2,
        backoff: float = 0.1,
        timeout: float | None = None,
    ) -> T:
        """``await fn(conn)`` on a pooled connection, retried on a fresh one
        when the connection breaks; as :meth:`pypool.Pool.run`."""
        check_run(retries, backoff)
        attempt = 0
        while True:
            conn = await self.acquire(timeout)
            try:
                result = await fn(conn)
            except Exception as exc:
                try:
                    broken = await self._is_broken(conn, exc)
                except BaseException:  # cancelled or interrupted meanwhile
                    await asyncio.shield(self.release(conn))
                    raise
                if broken:
                    await self.discard(conn, exc)
                else:
                    await self.release(conn)
                if not broken or attempt >= retries:
                    raise
                attempt += 1
                await asyncio.sleep(self._retry_pause(attempt, retries, backoff))
                continue
            except BaseException:
                await asyncio.shield(self.release(conn))
                raise
            await self.release(conn)
            return result

    def resize(self, min_size: int, max_size: int) -> None:
        """Changes the sizes while the pool is in use. Growth happens on
        demand (and at once up to ``min_size``); when shrinking, idle
        connections over ``max_size`` are closed now and borrowed ones when
        they are returned."""
        hi = self._set_sizes(min_size, max_size)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # The closes run on the pool's loop, whichever thread asks.
            if threading.get_ident() == self._loop_thread:
                self._shrink(hi)
            else:
                loop.call_soon_threadsafe(self._shrink, hi)
        self._wake_workers()

    def _shrink(self, keep: int) -> None:
        for conn in self._claim_over(keep):
            self._close_later(conn, "shrunk", None)

    async def drain(self) -> None:
        """Replaces every connection: idle ones now, borrowed ones on return."""
        for conn in self._claim_stale():
            await self._close_connection(conn, "drained", None)
        self._wake_workers()

    # --------------------------------------------------------------- hooks

    async def _vet(self, conn: Any, timeout: float) -> BaseException | None:
        check = self._settings.check
        try:
            if check is None:
                pending = self._settings.adapter.check(conn)
            elif check is not False:
                pending = check(conn)
            else:
                return None
            if inspect.isawaitable(pending):
                # A check of the user's gets at least what it gets in Pool.
                floor = 0.001 if check is None else USER_CHECK_FLOOR
                await _within(pending, max(timeout, floor))
        except Exception as exc:
            return exc
        return None

    async def _is_broken(self, conn: Any, exc: BaseException) -> bool:
        try:
            return bool(await _maybe_await(self._settings.adapter.is_broken(conn, exc)))
        except Exception:
            self._log.exception("pool %r: adapter.is_broken() failed", self.name)
            return True

    def _close_retired(self, conn: Any, reason: str, exc: BaseException | None) -> None:
        """Closes a connection the core dropped (:meth:`PoolShared._retire`):
        in a task of its own (:meth:`_close_later`)."""
        self._close_later(conn, reason, exc)

    async def _close_on_the_way_out(self, conn: Any, reason: str) -> None:
        """Closes a connection dropped by a task that is being cancelled or
        interrupted, before the task goes: a close task of its own could be
        destroyed unrun by the end of the loop. Shielded (a second
        cancellation leaves the close running in its task) and silent: the
        caller raises what stopped it."""
        with contextlib.suppress(BaseException):
            await asyncio.shield(self._close_connection(conn, reason, None))

    def _on_wait(self) -> None:
        self._wake_workers()

    def _wake_workers(self) -> None:
        demand = self._demand
        loop = self._loop
        if demand is None or loop is None or not self._policy.wants_connection():
            return
        if threading.get_ident() == self._loop_thread:
            demand.set()
        elif not loop.is_closed():  # from another thread (a finalizer): hop onto the loop
            loop.call_soon_threadsafe(demand.set)

    # ------------------------------------------------------------ connects

    async def _connect_into(self, slot: int) -> bool:
        """Connects into a reserved slot; False (the slot given back) when the
        connect failed.

        Whatever the factory or ``configure`` raises fails this connect, as
        does anything the pool cannot take as a new connection (None, a
        connection already in the pool); the worker task lives on. A
        cancellation, ``KeyboardInterrupt`` or ``SystemExit`` is not a
        failed connect: the new connection is closed, its slot given back,
        and the exception goes on (it ends the worker, or the program)."""
        settings = self._settings
        core = self._core
        started = time.monotonic()
        conn = None
        try:
            conn = await _maybe_await(settings.factory())
            self._refuse_new(conn, sync=False)
            if settings.configure is not None:
                await _maybe_await(settings.configure(conn))
            self._learn(conn)
        except _STOPS:
            if core.slot_info(slot).state == _core.CREATING:
                core.abandon(slot)
            if conn is not None and not self._in_pool(conn):
                # Shielded, and never in place of what stops the task.
                with contextlib.suppress(BaseException):
                    await asyncio.shield(_maybe_await(settings.adapter.close(conn)))
            raise
        except BaseException as exc:
            self._connect_failed(slot, exc)
            await self._close_new(conn)
            self._tell_ready()
            return False
        filled = self._fill(slot, conn, time.monotonic() - started)
        if filled is None:  # the pool closed meanwhile
            await self._close_connection(conn, "closed", None)
        elif not filled:
            await self._close_new(conn)
        self._tell_ready()
        return filled is not False

    async def _close_new(self, conn: Any) -> None:
        """Closes a connection a failed connect made, unless it is not one or
        belongs to the pool already."""
        if conn is None or self._in_pool(conn):
            return
        await _close_quietly(self._settings.adapter, conn, self._log, self.name)

    def _tell_ready(self) -> None:
        ready = self._ready
        if ready is not None:
            ready.pulse()

    def _close_later(self, conn: Any, reason: str, exc: BaseException | None) -> None:
        """Closes a dropped connection in a task of its own: a caller never
        waits for the close of a connection it did not get (a close can take
        long when the server stopped answering)."""
        loop = self._loop or asyncio.get_running_loop()
        task = loop.create_task(self._close_connection(conn, reason, exc))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _close_connection(self, conn: Any, reason: str, exc: BaseException | None) -> None:
        self._policy.retired_one(reason, exc)
        self._emit("close", conn, reason)
        await _close_quietly(self._settings.adapter, conn, self._log, self.name)

    # --------------------------------------------------------- maintenance

    async def _maintain(self) -> None:
        """One pass of the maintenance task: the steps of
        :meth:`PoolShared._maintenance`, each awaited in turn."""
        steps = Steps(self._maintenance())
        for name, args in steps:
            try:
                steps.result = await getattr(self, name)(*args)
            except BaseException as exc:
                steps.error = exc

    #: How repr() names the class.
    _repr_kind = "pypool.AsyncPool"


class AsyncPool(AsyncPoolMethods[ConnT], HotPath):
    """A pool of database connections for asyncio tasks.

    The settings are :class:`pypool.Pool`'s, with the same defaults and the
    same meaning; ``factory`` (and ``configure``, ``check``, ``reset``) may be
    coroutine functions. Borrow with ``async with pool.connection() as
    conn:``, or ``await pool.acquire()`` and ``await pool.release(conn)``:
    you must release every connection you acquire, or the pool runs dry.
    ``adapter`` supplies the driver knowledge (``pypool.asyncpg`` for
    asyncpg); without one, the pool resets with ``conn.rollback()``, checks
    with ``conn.ping()`` where there is one and closes with ``conn.close()``.
    Events (:meth:`add_listener`), leak reports (``leak_timeout``),
    keepalive checks and replacement ahead of ``max_lifetime`` work as in
    :class:`pypool.Pool`, from a maintenance task. With
    ``transaction_pooling=True`` and ``adapter=pypool.asyncpg`` the reset is
    a rollback of an open transaction instead of ``Connection.reset()``.
    ``AsyncPool.with_core("python")`` is this class on the Python core.
    """

    __signature__ = ClassSignature(signature("Callable[[], Any]"))


AsyncPool.__doc__ = f"{AsyncPool.__doc__}\n{docstring_section()}\n"
AsyncPoolMethods.__init__.__signature__ = signature("Callable[[], Any]", method=True)  # type: ignore[attr-defined]


class _GenericAsyncAdapter:
    """For connections pypool knows nothing of: reset by ``rollback()``,
    check by ``ping()`` when there is one (else nothing to check), broken
    when ``is_closed()``/``closed`` says so, ``close()`` to close."""

    def reset_for(self, conn: Any) -> Any:
        return "rollback" if hasattr(conn, "rollback") else None

    async def check(self, conn: Any) -> None:
        ping = getattr(conn, "ping", None)
        if callable(ping):
            await _maybe_await(ping())

    def is_broken(self, conn: Any, exc: BaseException | None = None) -> bool:
        is_closed = getattr(conn, "is_closed", None)
        if callable(is_closed):
            return bool(is_closed())
        return bool(getattr(conn, "closed", False))

    async def close(self, conn: Any) -> None:
        await _maybe_await(conn.close())


# ----------------------------------------------------------------- tasks


async def _connect_worker(
    ref: weakref.ref[AsyncPoolMethods[Any]], demand: _Signal, stop: _Signal
) -> None:
    try:
        await _connect_loop(ref, demand, stop)
    except asyncio.CancelledError:
        _tell_loop_ended(ref)
        raise


async def _connect_loop(
    ref: weakref.ref[AsyncPoolMethods[Any]], demand: _Signal, stop: _Signal
) -> None:
    backoff = 0.0
    while not stop.is_set():
        pool = ref()
        if pool is None:
            return
        if not pool._policy.wants_connection():
            demand.clear()
            del pool
            await demand.wait(1.0)
            continue
        slot = pool._core.reserve()
        if slot is None:
            del pool
            await asyncio.sleep(0)
            continue
        if await pool._connect_into(slot):
            backoff = 0.0
            continue
        backoff = pool._policy.backoff(backoff)
        del pool
        await stop.wait(jitter(backoff))


async def _maintenance_worker(ref: weakref.ref[AsyncPoolMethods[Any]], stop: _Signal) -> None:
    try:
        while not stop.is_set():
            pool = ref()
            if pool is None:
                return
            try:
                await pool._maintain()
            except Exception:
                pool._log.exception("pool %r: maintenance failed", pool.name)
            interval = pool._interval
            del pool
            await stop.wait(interval)
    except asyncio.CancelledError:
        _tell_loop_ended(ref)
        raise


#: The closes of the connections of dropped pools, until they end (the loop
#: holds its tasks only weakly).
_dropped_closes: set[asyncio.Task[None]] = set()


def _close_dropped(pool: AsyncPoolMethods[Any]) -> None:
    """What :meth:`AsyncPoolMethods.close` does, for a pool being freed:
    without waiting, and by callbacks and tasks that do not hold the pool.
    Runs in whichever thread dropped the pool; the rest happens on its loop.
    With no loop left to run them, a coroutine close is dropped unrun (the
    connection is then freed as any unreferenced one is)."""
    pool._closing = True
    pool._set_thread(0)
    conns = list(pool._core.close())
    unchecked, pool._unchecked = pool._unchecked, None
    if unchecked is not None:
        conns.append(unchecked)
    adapter, log, name = pool._settings.adapter, pool._log, pool.name
    stop, demand, loop = pool._stop, pool._demand, pool._loop
    if loop is None or loop.is_closed():
        for conn in conns:
            with contextlib.suppress(Exception):
                result = adapter.close(conn)
                if inspect.iscoroutine(result):
                    result.close()
        return

    def finish() -> None:
        if stop is not None:
            stop.set()
        if demand is not None:
            demand.set()
        for conn in conns:
            task = loop.create_task(_close_quietly(adapter, conn, log, name))
            _dropped_closes.add(task)
            task.add_done_callback(_dropped_closes.discard)

    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        finish()
    else:
        loop.call_soon_threadsafe(finish)
    log.info("pool %r dropped without close(): closed", name)


async def _close_quietly(adapter: Any, conn: Any, log: logging.Logger, name: str) -> None:
    try:
        await _maybe_await(adapter.close(conn))
    except Exception as exc:
        log.warning("pool %r: error closing a connection: %s", name, exc)


def _tell_loop_ended(ref: weakref.ref[AsyncPoolMethods[Any]]) -> None:
    pool = ref()
    if pool is not None:
        pool._loop_ended()


_live_async_pools: weakref.WeakSet[Any] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_live_async_pools):
        pool._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
