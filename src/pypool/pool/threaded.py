"""``pypool.Pool``: the connection pool for threads.

The hot path (``acquire``, ``release``, ``connection()`` of a healthy
connection) is :class:`PoolBase`, from the core: native code, or its Python
twin. This module adds what needs I/O or time, on background threads that
never hold a lock during I/O:

- connect workers (``num_workers``) make connections while callers wait that
  the connects in flight will not serve, or while the pool is under
  ``min_size``; while the database is down they retry with exponential
  backoff and jitter;
- one maintenance thread retires idle connections past ``max_idle`` down to
  ``min_size`` (the oldest first), replaces connections ahead of their
  lifetime, checks idle ones every ``keepalive`` seconds, and reports
  connections held longer than ``leak_timeout``.

The threads, the core and the connections hold the pool only weakly (see
``pypool._weak``): a pool nobody references is closed as soon as its last
reference goes, by reference counting alone, and one still open at
interpreter exit is closed then (waiting up to 2 s for a connect in flight:
:mod:`pypool.pool.shared`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..errors import ConnectionFailed, PoolTimeout, UnusableConnection
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
from .shared import (
    USER_CHECK_FLOOR,
    HotPath,
    PoolShared,
    Steps,
    accepts_timeout,
    core_module_of,
    live_pools,
    run_watched,
)

__all__ = ["Pool", "PoolMethods"]

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from typing_extensions import Self

T = TypeVar("T")


class PoolMethods(PoolShared, Generic[ConnT]):
    """Everything of Pool but the hot path, which comes from PoolBase."""

    if TYPE_CHECKING:  # the hot path, from the core's PoolBase

        def acquire(self, timeout: float | None = None) -> ConnT:
            """A connection, yours until you give it back with :meth:`release`."""

        def release(self, conn: ConnT, /) -> None:
            """Gives back a connection from :meth:`acquire`."""

        def connection(self, timeout: float | None = None) -> AbstractContextManager[ConnT]:
            """``with pool.connection() as conn:`` a connection from :meth:`acquire`."""

        def _set_timeout(self, timeout: float) -> None: ...
        def _lease(self, timeout: float | None, end: Any) -> Any: ...

    def __init__(self, factory: Callable[[], ConnT], **settings: Any) -> None:
        # The keywords, their defaults and their bounds are
        # pypool.pool.settings.SETTINGS; the public signature is generated
        # from it (Pool.__signature__).
        defer_open = settings.pop("_defer_open", False)
        public = type(self).__dict__.get("_public", type(self))
        take_keywords(public.__name__, settings)
        if settings.get("adapter") is None:
            from .. import dbapi  # the default adapter; layer exception (tests/test_layers.py)

            settings["adapter"] = dbapi
        strict = public.__init__ is PoolMethods.__init__  # the user's keywords, as given
        config = Settings(factory, settings, strict=strict)
        core_module = core_module_of(type(self))
        self._fresh_threading()
        core = make_core(config, core_module, self._on_wait, self._on_abandon)
        core_module.PoolBase.__init__(self, core, config.timeout, None)
        self._check_takes_timeout = accepts_timeout(config.adapter.check)
        self._in_check: dict[int, _CheckOutlived] = {}  # conn id -> a check left running
        self._adopt(config, core)
        live_pools.add(self)
        if config.min_size and not defer_open:
            self.open()

    def _fresh_threading(self) -> None:
        """The pool's threads and locks, new (at creation and in a forked
        child, where the parent's threads do not exist)."""
        self._lock = threading.Lock()  # lifecycle: open, close
        self._wake = _Bell()  # connect workers sleep here
        self._stop = _Bell()  # rung once, by close(): the threads end
        self._ready: set[_Bell] = set()  # one for each wait() under way
        self._threads: list[threading.Thread] = []
        self._started = False
        self._closing = False

    # ------------------------------------------------------------ lifecycle

    def open(self, wait: bool = False, timeout: float = 30.0, fail_fast: bool = False) -> None:
        """Starts the connect workers and the maintenance thread (also done on
        first use). Idempotent.

        With ``wait``, blocks as :meth:`wait` does; if that fails
        (:class:`PoolTimeout`, or :class:`ConnectionFailed` with
        ``fail_fast``), the pool is closed before the error is raised: a
        pool that could not start does not go on connecting in the
        background. (A direct :meth:`wait` leaves the pool open.)"""
        if self._core.closed:
            raise self._closed_error()
        if not self._started:
            with self._lock:
                if not self._started and not self._core.closed:
                    self._start_threads()
                    self._started = True
                    self._log.info("pool %r opened (%s core)", self.name, self.core)
        if wait:
            try:
                PoolMethods.wait(self, timeout, fail_fast=fail_fast)
            except (PoolTimeout, ConnectionFailed) as exc:
                self._log.info("pool %r could not open, closing it: %s", self.name, exc)
                self.close()
                raise

    def _start_threads(self) -> None:
        ref = weakref.ref(self)
        roles = [(_connect_worker, f"connect-{i}") for i in range(self._settings.num_workers)]
        roles.append((_maintenance_worker, "maintenance"))
        for target, role in roles:
            self._threads.append(
                threading.Thread(
                    target=target, args=(ref,), name=f"pypool-{self.name}-{role}", daemon=True
                )
            )
        for t in self._threads:
            t.start()

    def wait(self, timeout: float = 30.0, fail_fast: bool = False) -> None:
        """Blocks until ``min_size`` connections are open, for a service that
        must not start against a dead database. Raises :class:`PoolTimeout`
        (with the last connection error as its cause) after ``timeout``
        seconds, or with ``fail_fast`` :class:`ConnectionFailed` as soon as a
        connect has failed (at once if the last one already had).

        When it raises, the pool stays as it was: open, connecting, and
        serving whoever uses it, so a readiness probe that gives up does not
        take the service down. (psycopg_pool's ``wait()`` closes the pool
        then, and so do the pools of :mod:`pypool.psycopg`.) To close on
        failure, use ``open(wait=True)``, or call :meth:`close`."""
        self.open()
        deadline = time.monotonic() + timeout
        bell = _Bell()
        try:
            self._ready.add(bell)  # rung by every connect that ends
            while True:
                if self._core.closed:
                    raise self._closed_error()
                if self._open_enough():
                    return
                bell.sleep(self._wait_left(deadline, timeout, fail_fast))
        finally:
            self._ready.discard(bell)

    def close(self, timeout: float = 5.0) -> None:
        """Closes the pool: idle connections at once, borrowed ones when they
        are returned; callers still waiting get :class:`PoolClosed`. Waits up
        to ``timeout`` seconds for the pool's threads (and connects in
        flight) to end. Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        idle = self._core.close()
        self._stop.set()
        self._wake.ring(len(self._threads))
        self._tell_ready()
        for conn in idle:
            self._close_connection(conn, "closed", None)
        deadline = time.monotonic() + timeout
        me = threading.current_thread()
        for t in self._threads:
            if t is not me:
                t.join(max(0.0, deadline - time.monotonic()))
        # A connection handed to a waiter that then gave up is passed on as idle.
        for conn in self._core.close():
            self._close_connection(conn, "closed", None)
        self._log.info("pool %r closed", self.name)

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closing", True) or not hasattr(self, "_core"):
            return
        with contextlib.suppress(Exception):  # pragma: no cover - interpreter shutdown
            self.close(timeout=0)

    # --------------------------------------------------------- resizing

    def resize(self, min_size: int, max_size: int) -> None:
        """Changes the sizes while the pool is in use. Growth happens on
        demand (and at once up to ``min_size``); when shrinking, idle
        connections over ``max_size`` are closed now and borrowed ones when
        they are returned."""
        for conn in self._claim_over(self._set_sizes(min_size, max_size)):
            self._close_connection(conn, "shrunk", None)
        if self._policy.min_size:
            self.open()
        self._wake_workers()

    def drain(self) -> None:
        """Replaces every connection: idle ones now, borrowed ones when they
        are returned. New ones are made as needed (and up to ``min_size``)."""
        for conn in self._claim_stale():
            self._close_connection(conn, "drained", None)
        self._wake_workers()

    def discard(self, conn: Any, exc: BaseException | None = None) -> None:
        """Closes a borrowed connection you know is broken, instead of giving
        it back; the pool makes a new one as needed."""
        slot = self._core.slot_of(conn)
        self._core.discard(conn)
        self._dropped(slot, conn, exc)

    def _dropped(self, slot: int, conn: Any, exc: BaseException | None) -> None:
        """The end of a discard: the connection is out of the pool already."""
        self._leases.pop(slot, None)
        self._close_connection(conn, "broken" if exc is not None else "discarded", exc)
        self._wake_workers()

    # ------------------------------------------------------------- retry

    def run(
        self,
        fn: Callable[[ConnT], T],
        *,
        retries: int = 2,
        backoff: float = 0.1,
        timeout: float | None = None,
    ) -> T:
        """Runs ``fn(conn)`` on a pooled connection and returns its result;
        if the *connection* breaks (the adapter's ``is_broken`` says so), the
        connection is discarded and ``fn`` runs again on a fresh one, up to
        ``retries`` times, after ``backoff``, ``2 * backoff``, ... seconds
        (with jitter).

        Only for work that is safe to repeat: a broken connection may have
        committed the work before it broke. An exception from ``fn`` on a
        healthy connection (a failed query, a constraint violation) is raised
        at once, never retried; so is the last failure once retries run out.
        ``timeout`` bounds each acquire.

        The connection is held as in ``with pool.connection()``, from the
        moment the pool hands it out: whatever is raised (in ``fn``, in the
        adapter's ``is_broken``, a Ctrl-C anywhere), it goes back, or is
        discarded if it broke.
        """
        check_run(retries, backoff)
        attempt = 0
        while True:
            # The connection() block holds the connection from the moment the
            # core hands it out: whatever is raised from then on (in fn, in
            # is_broken, a Ctrl-C between two lines here), its exit gives the
            # connection back, unless it was taken out as broken.
            lease = self._lease(timeout, None)
            with lease as conn:
                try:
                    return fn(conn)
                except Exception as exc:
                    if not self._is_broken(conn, exc):
                        raise
                    slot = self._core.slot_of(conn)
                    self._dropped(slot, lease._discard(), exc)
                    if attempt >= retries:
                        raise
            attempt += 1
            time.sleep(self._retry_pause(attempt, retries, backoff))

    def _is_broken(self, conn: Any, exc: BaseException) -> bool:
        try:
            return bool(self._settings.adapter.is_broken(conn, exc))
        except Exception:
            self._log.exception("pool %r: adapter.is_broken() failed", self.name)
            return True

    # ------------------------------------------------------------- hooks

    def _vet(self, conn: Any, timeout: float) -> BaseException | None:
        """Runs the check within ``timeout`` seconds where the adapter can
        bound it; None if the connection is fine, else what showed it is not."""
        check = self._settings.check
        try:
            if check is None:
                adapter = self._settings.adapter
                if self._check_takes_timeout:
                    adapter.check(conn, timeout=max(timeout, 0.001))
                else:
                    adapter.check(conn)
            elif check is not False:
                if timeout == math.inf:
                    check(conn)
                else:
                    self._bounded_check(check, conn, max(timeout, USER_CHECK_FLOOR))
        except Exception as exc:
            return exc
        return None

    def _bounded_check(self, check: Callable[[Any], object], conn: Any, timeout: float) -> None:
        """Runs a ``check=`` of the user's within ``timeout`` seconds: bounded
        by the adapter's ``watch`` where it has the means (``pypool.dbapi``
        with psycopg 3, psycopg2 or PyMySQL: the socket is shut down at the
        deadline), else in a thread of its own, left at the deadline
        (:class:`_CheckOutlived`; the connection is closed when the check
        ends)."""
        watch = getattr(self._settings.adapter, "watch", None)
        stop = watch(conn, timeout) if watch is not None else None
        if stop is None:
            _check_in_thread(check, conn, timeout, self.name, self._in_check)
            return
        run_watched(functools.partial(check, conn), stop, timeout)

    def _close_retired(self, conn: Any, reason: str, exc: BaseException | None) -> None:
        """Closes a connection the core dropped (:meth:`PoolShared._retire`):
        here, at once."""
        self._close_connection(conn, reason, exc)

    def _close_on_the_way_out(self, conn: Any, reason: str) -> None:
        """Closes a connection dropped by what was cut short (a Ctrl-C in a
        check): in a thread, as any other."""
        self._close_connection(conn, reason, None)

    def _on_wait(self) -> None:
        if not self._started:
            self.open()
        self._wake_workers()

    # ----------------------------------------------------------- connects

    def _wake_workers(self) -> None:
        if self._policy.wants_connection():
            if not self._started and not self._core.closed:
                self.open()
            self._wake.ring()

    def _connect_into(self, slot: int) -> bool:
        """Connects into a reserved slot; False (the slot given back) when the
        connect failed.

        It runs on a worker thread, where nothing is there to catch what
        escapes: whatever the factory or ``configure`` raises (an Exception
        or not), and anything the pool cannot take as a new connection
        (None, a coroutine, a connection already in the pool), fails this
        connect, which is counted, logged and retried with backoff."""
        settings = self._settings
        started = time.monotonic()
        conn = None
        try:
            conn = settings.factory()
            self._refuse_new(conn, sync=True)
            if settings.configure is not None:
                settings.configure(conn)
            self._learn(conn)
        except BaseException as exc:
            self._connect_failed(slot, exc)
            self._close_new(conn)
            self._tell_ready()
            return False
        filled = self._fill(slot, conn, time.monotonic() - started)
        if filled is None:  # the pool closed meanwhile
            self._close_connection(conn, "closed", None)
        elif not filled:
            self._close_new(conn)
        self._tell_ready()
        return filled is not False

    def _close_new(self, conn: Any) -> None:
        """Closes a connection a failed connect made, unless it is not one or
        belongs to the pool already."""
        if conn is None or self._in_pool(conn):
            return
        if inspect.iscoroutine(conn):
            conn.close()  # never awaited: say nothing about it
            return
        try:
            self._settings.adapter.close(conn)
        except Exception as exc:
            self._log.warning("pool %r: error closing a connection: %s", self.name, exc)

    def _tell_ready(self) -> None:
        for bell in list(self._ready):
            bell.ring()

    def _close_connection(self, conn: Any, reason: str, exc: BaseException | None) -> None:
        self._policy.retired_one(reason, exc)
        self._emit("close", conn, reason)
        outlived = self._in_check.pop(id(conn), None) if self._in_check else None
        if outlived is not None:  # a check's thread still has it: closed when it ends
            outlived.then(functools.partial(self._settings.adapter.close, conn))
            return
        self._settings.adapter.close(conn)

    # -------------------------------------------------------- maintenance

    def _maintain(self) -> None:
        """One pass of the maintenance thread: the steps of
        :meth:`PoolShared._maintenance`, each called in turn."""
        steps = Steps(self._maintenance())
        for name, args in steps:
            try:
                steps.result = getattr(self, name)(*args)
            except BaseException as exc:
                steps.error = exc

    # --------------------------------------------------------------- fork

    def _after_fork_in_child(self) -> None:
        """The core forgot the parent's connections; forget the parent's
        threads and locks too. New threads start on first use."""
        closing = self._closing
        self._fresh_threading()
        self._closing = closing
        self._forget_parent()
        self._in_check = {}  # the parent's check threads are not this process's


# ------------------------------------------------------------------ threads
# They hold the pool weakly, dropping even that while they sleep.


class _Bell:
    """What the pool's threads sleep on, rung from any thread by one call
    into C (``queue.SimpleQueue.put``).

    ``threading.Condition`` and ``Event`` take and release their lock in
    Python code: a ``KeyboardInterrupt`` landing there, in the main thread
    that rings them (a caller that has to wait, ``close()``), can leave the
    lock held for good and every sleeper on it stuck. Here a ring is kept
    until a sleeper takes it (none is lost between a check and the sleep),
    and :meth:`set` makes the bell stay rung, as an Event's ``set()``."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._set = False

    def ring(self, times: int = 1) -> None:
        """Wakes one sleeper (now, or the next to sleep), ``times`` times."""
        for _ in range(times):
            self._queue.put_nowait(None)

    def sleep(self, timeout: float) -> bool:
        """Up to ``timeout`` seconds, until rung; True if it was."""
        try:
            self._queue.get(timeout=timeout)
        except queue.Empty:
            return False
        return True

    def set(self) -> None:
        """Rung for good: every sleeper wakes, now and from now on."""
        self._set = True
        self._queue.put_nowait(None)

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Up to ``timeout`` seconds, until :meth:`set`; True if it is."""
        if self._set:
            return True
        if self.sleep(timeout) and self.is_set():
            self._queue.put_nowait(None)  # pass it on to the next sleeper
        return self.is_set()


def _connect_worker(ref: weakref.ref[Any]) -> None:
    backoff = 0.0
    while True:
        pool = ref()
        if pool is None or pool._closing:
            return
        if not pool._policy.wants_connection():
            wake = pool._wake
            del pool
            wake.sleep(1.0)  # a ring between the check and here is kept
            continue
        # Re-check at the last moment: a connection returned meanwhile may
        # have served the waiter.
        slot = pool._core.reserve() if pool._policy.wants_connection() else None
        if slot is None:
            continue
        if pool._connect_into(slot):
            backoff = 0.0
            continue
        backoff = pool._policy.backoff(backoff)
        stop = pool._stop
        del pool
        # Sleep out the backoff whatever the demand (waiters would ring the
        # wake bell at once); only close() cuts it short.
        if stop.wait(jitter(backoff)):
            return


def _maintenance_worker(ref: weakref.ref[Any]) -> None:
    while True:
        pool = ref()
        if pool is None or pool._closing:
            return
        try:
            pool._maintain()
        except BaseException:  # on its own thread: nothing above to stop
            pool._log.exception("pool %r: maintenance failed", pool.name)
        stop, interval = pool._stop, pool._interval
        del pool
        if stop.wait(interval):
            return


class _CheckOutlived(UnusableConnection):
    """A ``check=`` of the user's, run in a thread of its own, still running
    at the caller's deadline: the caller goes on without the connection,
    which is closed when the check ends (:meth:`then`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self._lock = threading.Lock()
        self._ended = False
        self._then: Callable[[], object] | None = None

    def then(self, fn: Callable[[], object]) -> None:
        """Calls ``fn`` once the check has ended (now if it has)."""
        with self._lock:
            if not self._ended:
                self._then = fn
                return
        fn()

    def _end(self) -> None:
        with self._lock:
            self._ended = True
            fn, self._then = self._then, None
        if fn is not None:
            fn()


def _check_in_thread(
    check: Callable[[Any], object],
    conn: Any,
    timeout: float,
    name: str,
    in_check: dict[int, _CheckOutlived],
) -> None:
    """``check(conn)`` in a thread of its own, waited for ``timeout`` seconds:
    raises what it raised, or :class:`_CheckOutlived` if it is not done. A
    check left running (timed out, or the wait interrupted) is entered in
    ``in_check``, so that the pool's close of its connection waits for it."""
    lock = threading.Lock()
    ended: list[bool] = [False]
    # Waited for through a SimpleQueue (one C call), as the pool's bells:
    # a Ctrl-C in the wait cannot leave a lock held that run() then needs.
    box: queue.SimpleQueue[None] = queue.SimpleQueue()
    outcome: list[BaseException | None] = [None]
    late: list[_CheckOutlived] = []

    def run() -> None:
        try:
            check(conn)
        except BaseException as exc:
            outcome[0] = exc
        with lock:
            ended[0] = True
            outlived = late[0] if late else None
        box.put(None)
        if outlived is not None:
            outlived._end()

    def leave() -> _CheckOutlived | None:
        with lock:
            if ended[0]:
                return None
            outlived = _CheckOutlived(
                f"check not done within {timeout:.3f} s: the connection is closed when it ends"
            )
            late.append(outlived)
            in_check[id(conn)] = outlived
            return outlived

    threading.Thread(target=run, name=f"pypool-{name}-check", daemon=True).start()
    try:
        box.get(timeout=timeout)
    except queue.Empty:
        outlived = leave()
        if outlived is not None:
            raise outlived from None
    except BaseException:  # interrupted while waiting: the check goes on
        leave()
        raise
    exc = outcome[0]
    if exc is not None:
        try:
            raise exc
        finally:
            exc = None  # no cycle through this frame


class Pool(PoolMethods[ConnT], HotPath):
    """A pool of database connections for threads.

    ``factory()`` makes a new connection; it runs on ``num_workers`` connect
    workers, never on your thread. A factory that raises (anything), or
    returns None or a connection already in the pool, fails that connect:
    it is counted in ``connect_errors``, logged and retried with backoff,
    and a caller that times out meanwhile gets :class:`PoolTimeout` with
    the failure (a :class:`ConnectionFailed` saying what the factory
    returned) as its ``__cause__``. Borrow with ``with pool.connection() as
    conn:`` (or :meth:`acquire` and :meth:`release`: you must release every
    connection you acquire, or the pool runs dry).

    The settings (below) are keyword arguments; an unknown one raises
    ``TypeError``, one out of its bounds :class:`ConfigurationError`.
    ``Pool.with_core("python")`` is this class on the Python core.
    """

    __signature__ = ClassSignature(signature("Callable[[], Any]"))


Pool.__doc__ = f"{Pool.__doc__}\n{docstring_section()}\n"
PoolMethods.__init__.__signature__ = signature("Callable[[], Any]", method=True)  # type: ignore[attr-defined]
