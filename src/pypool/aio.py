"""``pypool.AsyncPool``: the connection pool for asyncio, on the same core.

It shares :class:`pypool.Pool`'s settings, their validation, the connect
demand rule, the counters and the statistics (``pypool._policy``). What
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
import random
import threading
import time
import types
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from . import _core
from ._policy import Policy, Settings, check_sizes, make_core
from .errors import ConfigurationError, PoolClosed, PoolError, PoolTimeout
from .pool import _core_name, _maintenance_interval

__all__ = ["AsyncPool"]

T = TypeVar("T")


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _resolve(future: asyncio.Future[bool], handed: bool) -> None:
    if not future.done():
        future.set_result(handed)


class _Lease:
    """``async with pool.connection() as conn``: a connection, given back on
    exit (also when the block raises or the task is cancelled)."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: AsyncPool, timeout: float | None) -> None:
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
            # Not shielded (a task a call): release() does not suspend unless
            # the reset must await, and a cancellation there discards the
            # connection (its state unknown) rather than losing it.
            await self._pool.release(conn)


class AsyncPool:
    """A pool of database connections for asyncio tasks.

    The settings are :class:`pypool.Pool`'s, with the same defaults and the
    same meaning; ``factory`` (and ``configure``, ``check``, ``reset``) may be
    coroutine functions. Borrow with ``async with pool.connection() as
    conn:``, or ``await pool.acquire()`` and ``await pool.release(conn)``:
    you must release every connection you acquire, or the pool runs dry.
    ``adapter`` supplies the driver knowledge (``pypool.asyncpg`` for
    asyncpg); without one, the pool resets with ``conn.rollback()``, checks
    nothing it does not know how to and closes with ``conn.close()``.
    """

    def __init__(
        self,
        factory: Callable[[], Any],
        *,
        adapter: Any = None,
        min_size: int = 0,
        max_size: int = 10,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float | None = 3600.0,
        max_idle: float | None = 600.0,
        max_uses: int = 0,
        check: Any = None,
        check_after: float | None = 1.0,
        reset: Any = None,
        configure: Any = None,
        num_workers: int = 2,
        name: str | None = None,
        lifo: bool = True,
        reconnect_timeout: float = 300.0,
        reconnect_failed: Callable[[Any], object] | None = None,
        _core: types.ModuleType | None = None,
    ) -> None:
        if adapter is None:
            adapter = _GenericAsyncAdapter()
        self._settings = settings = Settings(
            factory,
            adapter=adapter,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            max_uses=max_uses,
            check=check,
            check_after=check_after,
            reset=reset,
            configure=configure,
            num_workers=num_workers,
            name=name,
            lifo=lifo,
            reconnect_timeout=reconnect_timeout,
            reconnect_failed=reconnect_failed,
        )
        core_module = _core if _core is not None else _core_module()
        self._core = core = make_core(settings, core_module, self._on_wait, self._on_abandon)
        self._log = logging.getLogger("pypool")
        self._policy = Policy(settings, core, self._log)
        self._reset_plan: Any = None if settings.reset in (None, False) else settings.reset
        self._reset_known = settings.reset is not None
        self._leaks = 0
        self._interval = _maintenance_interval(settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._demand: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._ready: asyncio.Condition | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closers: set[asyncio.Task[None]] = set()  # closes run in the background
        self._loop_thread = 0
        self._closing = False

    # ------------------------------------------------------------ properties

    name = property(lambda self: self._settings.name)
    timeout = property(lambda self: self._settings.timeout)
    min_size = property(lambda self: self._policy.min_size)
    max_size = property(lambda self: int(self._core.max_size))
    closed = property(lambda self: bool(self._core.closed))
    size = property(lambda self: int(self._core.size))
    idle = property(lambda self: int(self._core.idle))
    in_use = property(lambda self: int(self._core.in_use))
    waiting = property(lambda self: int(self._core.waiting))

    @property
    def core(self) -> str:
        """Which core runs this pool: ``"native"`` or ``"python"``."""
        return _core_name(type(self._core))

    def stats(self) -> dict[str, Any]:
        """The statistics :meth:`pypool.Pool.stats` returns, same names."""
        from .pool import _PoolMethods

        return _PoolMethods.stats(self)  # type: ignore[arg-type]

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
            raise PoolClosed(f"pool {self.name!r} is closed")
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._demand = asyncio.Event()
        self._stop = asyncio.Event()
        self._ready = asyncio.Condition()
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

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Starts the connect and maintenance tasks on the running loop (also
        done on first use). With ``wait``, waits as :meth:`wait` does."""
        self._bind()
        if wait:
            await self.wait(timeout)

    async def wait(self, timeout: float = 30.0) -> None:
        """Waits until ``min_size`` connections are open; raises
        :class:`PoolTimeout` (the last connection error as its cause) after
        ``timeout`` seconds."""
        self._bind()
        assert self._ready is not None
        core = self._core
        deadline = time.monotonic() + timeout
        async with self._ready:
            while core.idle + core.in_use + core.claimed < self._policy.min_size:
                if core.closed:
                    raise PoolClosed(f"pool {self.name!r} is closed")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PoolTimeout(
                        f"pool {self.name!r}: {core.idle + core.in_use} of min_size "
                        f"{self._policy.min_size} connections ready after {timeout:.3f} s"
                    ) from self._policy.last_error
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), min(remaining, 0.5))

    async def close(self, timeout: float = 5.0) -> None:
        """Closes the pool: idle connections at once, borrowed ones when they
        are returned; waiting tasks get :class:`PoolClosed`. Waits up to
        ``timeout`` seconds for the pool's tasks to end. Idempotent."""
        if self._closing:
            return
        self._closing = True
        idle = self._core.close()
        if self._stop is not None:
            self._stop.set()
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

    async def __aenter__(self) -> AsyncPool:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------- borrowing

    async def acquire(self, timeout: float | None = None) -> Any:
        """A connection, yours until you give it back with :meth:`release`.

        Waits up to ``timeout`` seconds (None: the pool's timeout), then
        raises :class:`PoolTimeout`; :class:`TooManyRequests` when the wait
        queue is full, :class:`PoolClosed` when the pool is closed.
        """
        core = self._core
        if self._loop is asyncio.get_running_loop() and not core.closed:
            conn = core.try_acquire()
            if conn is not None and core.verdict(core.slot_of(conn), True) == _core.OK:
                return conn
        else:
            conn = None  # first use, a second loop, or closed: the slow path says
        return await self._acquire_slow(conn, timeout)

    async def _acquire_slow(self, conn: Any, timeout: float | None) -> Any:
        if timeout is None:
            wait_for = self._settings.timeout
        else:
            if (
                isinstance(timeout, bool)
                or not isinstance(timeout, (int, float))
                or not timeout >= 0
            ):
                raise ConfigurationError(
                    f"timeout must be a number of seconds >= 0, not {timeout!r}"
                )
            wait_for = float(timeout)
        try:
            return await self._acquire_loop(conn, wait_for)
        except PoolError as exc:
            error = self._failed(exc, wait_for)
        raise error

    def _failed(self, exc: PoolError, timeout: float) -> BaseException:
        """The exception a caller that got no connection sees (``exc`` is the
        core's PoolTimeout, PoolClosed or TooManyRequests, or a loop error)."""
        if isinstance(exc, PoolTimeout):
            return self._policy.timeout_error(exc, timeout)
        return exc

    async def _acquire_loop(self, conn: Any, wait_for: float) -> Any:
        self._bind()
        core = self._core
        deadline = time.monotonic() + wait_for
        while True:
            if conn is None:
                conn = await self._wait_for_one(deadline)
            verdict = core.verdict(core.slot_of(conn), True)
            if verdict == _core.OK:
                return conn
            if verdict == _core.CHECK:
                failure = await self._vet(conn, max(0.0, deadline - time.monotonic()))
                if failure is None:
                    return conn
                self._policy.check_failed(failure)
            else:
                failure = None
            core.discard(conn)
            self._policy.rejected += 1
            self._close_later(conn, _core.REASONS[verdict], failure)
            self._wake_workers()
            conn = core.try_acquire()

    async def _wait_for_one(self, deadline: float) -> Any:
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
        if not handed and not ticket.done:
            ticket.cancel(timed_out=True)
            raise PoolTimeout("timed out")
        return ticket.result()

    async def release(self, conn: Any) -> None:
        """Gives back a connection from :meth:`acquire`: it is reset, and
        retired instead of kept if the thresholds say so. Raises
        :class:`NotBorrowed` for a connection not borrowed from this pool."""
        core = self._core
        index = core.slot_of(conn)
        if core.closed:
            if not core.release(conn):
                await self._close_connection(conn, "closed", None)
            return
        plan = self._reset_plan
        if plan is not None:
            try:
                # A reset may be plain, or return an awaitable (only when it
                # has I/O to do: the common case costs no coroutine).
                result = getattr(conn, plan)() if isinstance(plan, str) else plan(conn)
                if result is not None and inspect.isawaitable(result):
                    await result
            except BaseException as exc:
                # A failed or interrupted reset leaves the state unknown.
                core.discard(conn)
                self._close_later(conn, "reset_failed", exc)
                self._wake_workers()
                if not isinstance(exc, Exception):
                    raise
                return
        verdict = core.verdict(index, False)
        if verdict != _core.OK:
            core.discard(conn)
            self._close_later(conn, _core.REASONS[verdict], None)
            self._wake_workers()
        elif not core.release(conn):
            await self._close_connection(conn, "closed", None)

    def connection(self, timeout: float | None = None) -> _Lease:
        """``async with pool.connection() as conn:`` a connection from
        :meth:`acquire`, given back on exit (also on error or cancellation)."""
        return _Lease(self, timeout)

    async def run(
        self,
        fn: Callable[[Any], Awaitable[T]],
        *,
        retries: int = 2,
        backoff: float = 0.1,
        timeout: float | None = None,
    ) -> T:
        """``await fn(conn)`` on a pooled connection, retried on a fresh one
        when the connection breaks; as :meth:`pypool.Pool.run`."""
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(f"retries must be an integer >= 0, not {retries!r}")
        attempt = 0
        while True:
            conn = await self.acquire(timeout)
            try:
                result = await fn(conn)
            except Exception as exc:
                broken = await self._is_broken(conn, exc)
                if broken:
                    self._core.discard(conn)
                    await self._close_connection(conn, "broken", exc)
                    self._wake_workers()
                else:
                    await self.release(conn)
                if not broken or attempt >= retries:
                    raise
                attempt += 1
                await asyncio.sleep(backoff * 2 ** (attempt - 1) * (0.5 + 0.5 * random.random()))
                continue
            except BaseException:
                await asyncio.shield(self.release(conn))
                raise
            await self.release(conn)
            return result

    def resize(self, min_size: int, max_size: int) -> None:
        """Changes the sizes while the pool is in use (growth on demand and
        up to ``min_size``; borrowed extras are closed when returned)."""
        lo, hi = check_sizes(min_size, max_size)
        self._core.max_size = hi
        self._core.min_size = lo
        self._policy.min_size = lo
        self._wake_workers()

    def invalidate(self) -> None:
        """Marks every connection made before now for replacement at its next
        hand-out or return."""
        self._core.advance_generation()

    async def drain(self) -> None:
        """Replaces every connection: idle ones now, borrowed ones on return."""
        core = self._core
        core.advance_generation()
        for index in core.slots(_core.IDLE):
            conn = core.claim(index)
            if conn is not None:
                core.retire(index)
                await self._close_connection(conn, "drained", None)
        self._wake_workers()

    # --------------------------------------------------------------- hooks

    async def _vet(self, conn: Any, timeout: float) -> BaseException | None:
        check = self._settings.check
        try:
            if check is None:
                await asyncio.wait_for(
                    _maybe_await(self._settings.adapter.check(conn)), max(timeout, 0.001)
                )
            elif check is not False:
                await asyncio.wait_for(_maybe_await(check(conn)), max(timeout, 0.001))
        except Exception as exc:
            return exc
        return None

    async def _is_broken(self, conn: Any, exc: BaseException) -> bool:
        try:
            return bool(await _maybe_await(self._settings.adapter.is_broken(conn, exc)))
        except Exception:
            return True

    def _on_wait(self) -> None:
        self._wake_workers()

    def _on_abandon(self, slot: int) -> None:
        self._policy.retired_one("abandoned", None)
        self._log.warning(
            "pool %r: a borrowed connection was garbage-collected without being returned "
            "(slot %d); give connections back with release(), or use connection()",
            self.name,
            slot,
        )
        self._wake_workers()

    def _wake_workers(self) -> None:
        demand = self._demand
        loop = self._loop
        if demand is None or loop is None or not self._policy.wants_connection():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            demand.set()
        else:  # from another thread (a finalizer): hop onto the loop
            loop.call_soon_threadsafe(demand.set)

    async def _connect_into(self, slot: int) -> bool:
        settings = self._settings
        core = self._core
        started = time.monotonic()
        conn = None
        try:
            conn = await _maybe_await(settings.factory())
            if settings.configure is not None:
                await _maybe_await(settings.configure(conn))
            if not self._reset_known:
                self._reset_plan = settings.adapter.reset_for(conn)
                self._reset_known = True
        except Exception as exc:
            core.abandon(slot)
            if conn is not None:
                await _maybe_await(settings.adapter.close(conn))
            if self._policy.connect_failed(exc) and settings.reconnect_failed is not None:
                try:
                    settings.reconnect_failed(self)
                except Exception:
                    self._log.exception("pool %r: reconnect_failed callback failed", self.name)
            await self._tell_ready()
            return False
        except BaseException:
            core.abandon(slot)
            if conn is not None:
                await asyncio.shield(_maybe_await(settings.adapter.close(conn)))
            raise
        self._policy.connected(time.monotonic() - started)
        try:
            core.fill(slot, conn, self._policy.lifetime())
        except PoolClosed:
            await self._close_connection(conn, "closed", None)
        await self._tell_ready()
        return True

    async def _tell_ready(self) -> None:
        ready = self._ready
        if ready is not None:
            async with ready:
                ready.notify_all()

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
        try:
            await _maybe_await(self._settings.adapter.close(conn))
        except Exception as error:
            self._log.warning("pool %r: error closing a connection: %s", self.name, error)

    async def _maintain(self) -> None:
        """One pass: idle connections past max_idle retired down to
        min_size, idle ones past their lifetime retired, refill."""
        core = self._core
        now = core.now()
        infos = sorted(
            ((i, core.slot_info(i)) for i in core.slots(_core.IDLE)), key=lambda item: item[1][3]
        )
        max_idle = self._settings.max_idle
        for index, info in infos:
            expired = bool(info[6]) and info[6] <= now
            idle_out = bool(max_idle) and now - info[3] >= max_idle
            if not expired and not (idle_out and core.size > self._policy.min_size):
                continue
            conn = core.claim(index)
            if conn is not None:
                core.retire(index)
                await self._close_connection(conn, "expired" if expired else "idle", None)
        self._wake_workers()

    def __repr__(self) -> str:
        core = self._core
        state = "closed" if core.closed else "open"
        return (
            f"<pypool.AsyncPool {self.name!r} {state} core={self.core} "
            f"size={core.size}/{core.max_size} min={self._policy.min_size} "
            f"idle={core.idle} in_use={core.in_use} waiting={core.waiting}>"
        )


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


def _core_module() -> types.ModuleType:
    import sys

    return sys.modules[_core.CorePool.__module__]


# ----------------------------------------------------------------- tasks


async def _connect_worker(
    ref: weakref.ref[AsyncPool], demand: asyncio.Event, stop: asyncio.Event
) -> None:
    backoff = 0.0
    while not stop.is_set():
        pool = ref()
        if pool is None:
            return
        if not pool._policy.wants_connection():
            demand.clear()
            del pool
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(demand.wait(), 1.0)
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
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), backoff * (0.5 + 0.5 * random.random()))


async def _maintenance_worker(ref: weakref.ref[AsyncPool], stop: asyncio.Event) -> None:
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
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
