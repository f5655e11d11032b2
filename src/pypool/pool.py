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
interpreter exit is closed then, without waiting.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import logging
import math
import os
import queue
import random
import threading
import time
import traceback
import types
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from . import _core, stats
from ._policy import Policy, Settings, _one_line, check_sizes, make_core
from .errors import (
    ConfigurationError,
    ConnectionFailed,
    PoolClosed,
    PoolError,
    PoolTimeout,
    UnusableConnection,
)

if TYPE_CHECKING:
    from ._records import SlotInfo

__all__ = ["EVENTS", "Pool"]

T = TypeVar("T")

#: The events a pool emits to listeners added with :meth:`Pool.add_listener`,
#: and the arguments each listener gets after the pool.
EVENTS = {
    "connect": "(pool, conn): a new connection, after configure",
    "checkout": "(pool, conn): handed out",
    "checkin": "(pool, conn): given back, before its reset",
    "reset": "(pool, conn): reset on return succeeded",
    "close": "(pool, conn, reason): closed by the pool; reason as in stats",
    "leak": "(pool, info): borrowed longer than leak_timeout; info has the stack",
    "abandon": "(pool, slot): a borrowed connection was garbage-collected",
    "reconnect_failed": "(pool,): connects kept failing for reconnect_timeout",
}

_live_pools: weakref.WeakSet[Any] = weakref.WeakSet()


class _Borrowed:
    """What a pool with ``leak_timeout`` remembers of a borrowed connection,
    for its leak report: when it went out (the core's ``checked_out``, which
    also tells a later borrow of the same slot apart), where from, and
    whether it was reported already (once per borrow)."""

    __slots__ = ("checked_out", "reported", "stack")

    def __init__(self, checked_out: float, stack: traceback.StackSummary) -> None:
        self.checked_out = checked_out
        self.stack = stack
        self.reported = False


class _PoolShared:
    """What the thread pool and the asyncio pool share: their settings,
    statistics, events, leak reports, and the choices of maintenance (which
    connections are due); each does its own I/O and waiting."""

    _core: Any
    _policy: Policy
    _settings: Settings
    _log: logging.Logger
    _leases: dict[int, _Borrowed]  # slot -> the borrow, for leak reports
    _last_check: dict[int, float]  # slot -> last keepalive check
    #: The logger a pool logs to (driver-compatible pools use the driver's).
    _logger_name = "pypool"

    if TYPE_CHECKING:  # from the core's PoolBase, and from each pool

        def _set_observe(self, observe: bool) -> None: ...
        def _set_reset(self, reset: Any) -> None: ...
        def _retire(self, conn: Any, reason: int, exc: BaseException | None) -> None: ...
        def _drop_unknown(self, conn: Any) -> None: ...
        def _wake_workers(self) -> None: ...

    def _adopt(self, settings: Settings, core: Any) -> None:
        """The part of ``__init__`` both pools share, once their PoolBase
        holds ``core``."""
        self._settings = settings
        self._log = logging.getLogger(self._logger_name)
        self._policy = Policy(settings, core, self._log)
        self._reset_plan: Any = None if settings.reset in (None, False) else settings.reset
        self._reset_known = settings.reset is not None
        self._listeners: dict[str, list[Callable[..., object]]] = {e: [] for e in EVENTS}
        self._leaks = 0
        self._leases = {}
        self._last_check = {}
        self._interval = _maintenance_interval(settings)
        self._apply_hot_path()

    # ----------------------------------------------------------- properties

    @property
    def name(self) -> str:
        return self._settings.name

    @property
    def core(self) -> str:
        """Which core runs this pool: ``"native"`` or ``"python"``."""
        return _core_name(type(self._core))

    @property
    def min_size(self) -> int:
        return self._policy.min_size

    @property
    def max_size(self) -> int:
        return int(self._core.max_size)

    @property
    def timeout(self) -> float:
        return self._settings.timeout

    @property
    def closed(self) -> bool:
        return bool(self._core.closed)

    @property
    def size(self) -> int:
        """Connections open or being opened."""
        return int(self._core.size)

    @property
    def idle(self) -> int:
        return int(self._core.idle)

    @property
    def in_use(self) -> int:
        return int(self._core.in_use)

    @property
    def waiting(self) -> int:
        return int(self._core.waiting)

    def stats(self) -> dict[str, Any]:
        """Counters and gauges, named as :mod:`pypool.stats` documents
        (OpenTelemetry's ``db.client.connection.*`` where one fits)."""
        core = self._core.stats()
        counters = self._policy.counters()
        retired: dict[str, int] = counters["retired"]
        served = core["acquires"] - self._policy.rejected
        finished = served - core["in_use"]
        return {
            stats.POOL_NAME: self._settings.name,
            stats.COUNT: {"idle": core["idle"] + core["claimed"], "used": core["in_use"]},
            stats.MAX: core["max_size"],
            stats.IDLE_MAX: core["max_size"],
            stats.IDLE_MIN: self._policy.min_size,
            stats.PENDING_REQUESTS: core["waiting"],
            stats.TIMEOUTS: core["timeouts"],
            stats.CREATE_TIME: {
                "count": counters["connections_created"],
                "sum": counters["connect_time"],
            },
            stats.WAIT_TIME: {
                "count": served,
                "sum": core["wait_time"],
                "max": core["wait_time_max"],
            },
            stats.USE_TIME: {"count": finished, "sum": core["use_time"]},
            stats.CONNECTING: core["connecting"],
            stats.REQUESTS: served,
            stats.REQUESTS_WAITED: core["waits"],
            stats.CREATED: counters["connections_created"],
            stats.CLOSED: counters["connections_closed"],
            stats.LOST: sum(n for r, n in retired.items() if r in stats.LOST_REASONS),
            stats.RETIRED: retired,
            stats.CONNECT_ERRORS: counters["connect_errors"],
            stats.LEAKS: self._leaks,
            stats.CORE: self.core,
        }

    def invalidate(self) -> None:
        """Marks every connection made before now for replacement at its next
        hand-out or return (for example after the database restarted)."""
        self._core.advance_generation()

    # ------------------------------------------------------------ events

    def add_listener(self, event: str, listener: Callable[..., object]) -> None:
        """Calls ``listener(pool, ...)`` on ``event`` (see :data:`EVENTS`).
        An exception in a listener is logged and never breaks the pool.
        Checkout and checkin listeners put Python code on the hot path."""
        if event not in EVENTS:
            raise ConfigurationError(f"unknown event {event!r}: one of {', '.join(EVENTS)}")
        if not callable(listener):
            raise ConfigurationError("listener must be callable")
        if inspect.iscoroutinefunction(listener):
            raise ConfigurationError(
                "listeners are called synchronously, on the pool's hot path: a coroutine "
                "function cannot be one (start a task from a plain function instead)"
            )
        self._listeners[event].append(listener)
        self._apply_hot_path()

    def remove_listener(self, event: str, listener: Callable[..., object]) -> None:
        if event not in EVENTS:
            raise ConfigurationError(f"unknown event {event!r}: one of {', '.join(EVENTS)}")
        try:
            self._listeners[event].remove(listener)
        except ValueError:
            raise ConfigurationError(f"{listener!r} does not listen to {event!r}") from None
        self._apply_hot_path()

    def _emit(self, event: str, *args: Any) -> None:
        for listener in self._listeners[event]:
            try:
                listener(self, *args)
            except Exception:
                self._log.exception("pool %r: %s listener %r failed", self.name, event, listener)

    def _apply_hot_path(self) -> None:
        """Puts Python hooks on the hot path only when something needs them."""
        listeners = self._listeners
        self._set_observe(
            self._settings.leak_timeout is not None
            or bool(listeners["checkout"])
            or bool(listeners["checkin"])
        )
        plan = self._reset_plan
        if plan is not None and listeners["reset"]:
            inner = plan
            ref = weakref.ref(self)  # the core holds this: no cycle through it

            def reset_and_tell(conn: Any) -> Any:
                result = getattr(conn, inner)() if isinstance(inner, str) else inner(conn)
                pool = ref()
                if pool is None:
                    return result
                if result is not None and inspect.isawaitable(result):
                    return _then_emit(result, pool, "reset", conn)  # an async reset
                pool._emit("reset", conn)
                return None

            plan = reset_and_tell
        self._set_reset(plan)

    # ------------------------------------------------------------- hooks

    def _checked_out(self, conn: Any) -> None:
        if self._settings.leak_timeout is not None:
            core = self._core
            slot = core.slot_of(conn)
            self._leases[slot] = _Borrowed(core.slot_info(slot).checked_out, _caller_stack())
        if self._listeners["checkout"]:
            self._emit("checkout", conn)

    def _checking_in(self, conn: Any) -> None:
        if self._leases:
            self._leases.pop(self._core.slot_of(conn), None)
        if self._listeners["checkin"]:
            self._emit("checkin", conn)

    def _failed(self, exc: Exception, timeout: float) -> BaseException:
        if isinstance(exc, PoolTimeout):
            return self._policy.timeout_error(exc, timeout)
        return exc

    def _rejected(self, conn: Any, reason: int, exc: BaseException | None) -> None:
        self._policy.rejected += 1
        if exc is not None and not isinstance(exc, Exception):
            # A check cut short (KeyboardInterrupt...): its state is unknown,
            # not known bad; closed all the same, as "discarded".
            self._drop_unknown(conn)
            return
        if exc is not None:
            self._policy.check_failed(exc)
        self._retire(conn, reason, exc)

    def _on_abandon(self, slot: int) -> None:
        self._leases.pop(slot, None)
        self._policy.retired_one("abandoned", None)
        self._log.warning(
            "pool %r: a borrowed connection was garbage-collected without being "
            "returned (slot %d); give connections back with release(), or use "
            "connection()",
            self.name,
            slot,
        )
        self._emit("abandon", slot)
        self._wake_workers()

    # ------------------------------------------------------ failed connects

    def _refuse_new(self, conn: Any, *, sync: bool) -> None:
        """Raises :class:`ConnectionFailed`, saying what the factory
        returned, when ``conn`` cannot be a new connection: None, an
        awaitable (for a pool that cannot await it), or a connection that is
        in the pool already."""
        name = self.name
        if conn is None:
            raise ConnectionFailed(
                f"pool {name!r}: the factory returned None instead of a new connection"
            )
        if sync and inspect.isawaitable(conn):
            raise ConnectionFailed(
                f"pool {name!r}: the factory returned a {_describe(conn, short=True)}, which a "
                "pool of threads cannot await: use pypool.AsyncPool for a coroutine function"
            )
        if self._in_pool(conn):
            raise ConnectionFailed(
                f"pool {name!r}: the factory returned {_describe(conn)}, a connection that is "
                f"in the pool already: a factory must make a new connection at every call"
            )

    def _refused(self, conn: Any, exc: BaseException) -> ConnectionFailed:
        """The failure to record when the core refused what the factory
        returned (``exc`` says why, and is the cause)."""
        error = ConnectionFailed(
            f"pool {self.name!r}: the factory returned {_describe(conn)}, which the pool "
            f"cannot hold: {_one_line(exc)}"
        )
        error.__cause__ = exc
        return error

    def _in_pool(self, conn: Any) -> bool:
        try:
            self._core.slot_of(conn)
        except PoolError:
            return False
        return True

    def _connect_failed(self, slot: int, exc: BaseException) -> None:
        """A failed connect: its slot given back (if the core has not freed
        it already), the failure counted and logged."""
        core = self._core
        if core.slot_info(slot).state == _core.CREATING:
            core.abandon(slot)
        if self._policy.connect_failed(exc):
            self._reconnect_failed()

    #: The level of the record saying connects failed for reconnect_timeout
    #: (the psycopg pools: WARNING, as psycopg_pool).
    _reconnect_failed_level = logging.ERROR

    def _reconnect_failed(self) -> None:
        self._log.log(
            self._reconnect_failed_level,
            "reconnection attempt in pool %r failed after %.1f sec (reconnect_timeout); "
            "still trying",
            self.name,
            self._settings.reconnect_timeout,
        )
        callback = self._settings.reconnect_failed
        if callback is not None:
            try:
                callback(self)
            except Exception:
                self._log.exception("pool %r: reconnect_failed callback failed", self.name)
        self._emit("reconnect_failed")

    # -------------------------------------------------- maintenance choices

    def _claim_idle(self, due: Callable[[SlotInfo], bool], keep: int) -> Iterator[Any]:
        """Claims and retires, one at a time, the idle connections for which
        ``due(slot_info)`` holds, the longest idle first, while more than
        ``keep`` are open; yields each for the caller to close. Borrowers
        keep taking the others meanwhile."""
        core = self._core
        infos = [(i, core.slot_info(i)) for i in core.slots(_core.IDLE)]
        for index, info in sorted(infos, key=lambda item: item[1].returned):
            if core.size <= keep:
                return
            if not due(info):
                continue
            conn = core.claim(index)
            if conn is not None:
                core.retire(index)
                yield conn

    def _expiring(self, now: float) -> tuple[int, list[int]]:
        """For the replacement of connections close to the end of their
        lifetime, so that their retirement never takes the pool below
        ``min_size``: how many replacements to connect first (as many as the
        expiring ones, idle or borrowed, would leave missing below
        ``min_size``; a borrowed one is retired at its return), and the idle
        expiring slots, the nearest expiry first."""
        core = self._core
        life = self._settings.max_lifetime
        assert life is not None
        lead = min(60.0, 0.1 * life) + 2 * self._interval
        expiring = [
            (i, info)
            for i, info in ((i, core.slot_info(i)) for i in core.slots())
            if info.state in (_core.IDLE, _core.BUSY)
            and info.expires
            and info.expires - now <= lead
        ]
        # Only what the expiring ones will take away: refilling an empty or
        # failing pool is the connect workers' job (with their backoff).
        deficit = min(len(expiring), self._policy.min_size - (core.size - len(expiring)))
        idle = sorted(
            ((i, info) for i, info in expiring if info.state == _core.IDLE),
            key=lambda item: item[1].expires,
        )
        return deficit, [i for i, _info in idle]

    def _due_for_keepalive(self, now: float) -> Iterator[tuple[int, Any]]:
        """Claims, one at a time, the idle connections unused for
        ``keepalive`` seconds, for the caller to check and then hand to
        :meth:`_kept_alive`."""
        core = self._core
        keepalive = self._settings.keepalive
        assert keepalive is not None
        for index in core.slots(_core.IDLE):
            info = core.slot_info(index)
            if now - max(info.returned, self._last_check.get(index, 0.0)) < keepalive:
                continue
            conn = core.claim(index)
            if conn is not None:
                yield index, conn

    def _kept_alive(self, index: int, failure: BaseException | None) -> str | None:
        """Puts back a connection that passed its keepalive check, or retires
        one that failed it; the reason to close it with, or None."""
        core = self._core
        if failure is None:
            self._last_check[index] = core.now()
            return None if core.restore(index) else "closed"
        core.retire(index)
        self._last_check.pop(index, None)
        return "check"

    def _report_leaks(self, now: float) -> None:
        core = self._core
        leak_timeout = self._settings.leak_timeout
        assert leak_timeout is not None
        for slot, borrowed in list(self._leases.items()):
            info = core.slot_info(slot)
            if info.state != _core.BUSY or info.checked_out != borrowed.checked_out:
                self._leases.pop(slot, None)  # returned or lost meanwhile
                continue
            held = now - borrowed.checked_out
            if borrowed.reported or held < leak_timeout:
                continue
            borrowed.reported = True
            self._leaks += 1
            where = "".join(traceback.format_list(borrowed.stack))
            self._log.warning(
                "pool %r: a connection has been borrowed for %.1f s (leak_timeout %.1f s); "
                "it was taken at:\n%s",
                self.name,
                held,
                leak_timeout,
                where,
            )
            self._emit("leak", {"slot": slot, "held": held, "stack": borrowed.stack})


class _PoolMethods(_PoolShared):
    """Everything of Pool but the hot path, which comes from PoolBase."""

    if TYPE_CHECKING:  # the hot path, from the core's PoolBase

        def acquire(self, timeout: float | None = None) -> Any: ...
        def release(self, conn: Any, /) -> None: ...
        def _set_timeout(self, timeout: float) -> None: ...
        def _lease(self, timeout: float | None, end: Any) -> Any: ...

    def __init__(
        self,
        factory: Any,
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
        leak_timeout: float | None = None,
        keepalive: float | None = 240.0,
        reconnect_timeout: float = 300.0,
        reconnect_failed: Callable[[Any], object] | None = None,
        transaction_pooling: bool = False,
        _core: types.ModuleType | None = None,
        _defer_open: bool = False,
    ) -> None:
        if adapter is None:
            from . import dbapi

            adapter = dbapi
        settings = Settings(
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
            leak_timeout=leak_timeout,
            keepalive=keepalive,
            reconnect_timeout=reconnect_timeout,
            reconnect_failed=reconnect_failed,
            transaction_pooling=transaction_pooling,
        )
        core_module = _module_of(type(self))
        self._fresh_threading()
        core = make_core(settings, core_module, self._on_wait, self._on_abandon)
        core_module.PoolBase.__init__(self, core, settings.timeout, None)
        self._check_takes_timeout = _accepts_timeout(settings.adapter.check)
        self._in_check: dict[int, _CheckOutlived] = {}  # conn id -> a check left running
        self._adopt(settings, core)
        _live_pools.add(self)
        if settings.min_size and not _defer_open:
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
            raise PoolClosed(f"pool {self.name!r} is closed")
        if not self._started:
            with self._lock:
                if not self._started and not self._core.closed:
                    self._start_threads()
                    self._started = True
                    self._log.info("pool %r opened (%s core)", self.name, self.core)
        if wait:
            try:
                _PoolMethods.wait(self, timeout, fail_fast=fail_fast)
            except (PoolTimeout, ConnectionFailed) as exc:
                self._log.info("pool %r could not open, closing it: %s", self.name, exc)
                self.close()
                raise

    def _start_threads(self) -> None:
        ref = weakref.ref(self)
        for i in range(self._settings.num_workers):
            self._threads.append(
                threading.Thread(
                    target=_connect_worker,
                    args=(ref,),
                    name=f"pypool-{self.name}-connect-{i}",
                    daemon=True,
                )
            )
        self._threads.append(
            threading.Thread(
                target=_maintenance_worker,
                args=(ref,),
                name=f"pypool-{self.name}-maintenance",
                daemon=True,
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
        policy = self._policy
        deadline = time.monotonic() + timeout
        bell = _Bell()
        try:
            self._ready.add(bell)  # rung by every connect that ends
            while True:
                core = self._core
                if core.closed:
                    raise PoolClosed(f"pool {self.name!r} is closed")
                if core.idle + core.in_use + core.claimed >= policy.min_size:
                    return
                if fail_fast and policy.failing:
                    raise ConnectionFailed(
                        f"pool {self.name!r}: could not connect"
                    ) from policy.last_error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PoolTimeout(
                        f"pool {self.name!r}: {core.idle + core.in_use} of min_size "
                        f"{policy.min_size} connections ready after {timeout:.3f} s"
                    ) from policy.last_error
                bell.sleep(min(remaining, 0.5))
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

    def __enter__(self) -> Any:
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
        lo, hi = check_sizes(min_size, max_size)
        self._core.max_size = hi
        self._core.min_size = lo
        self._policy.min_size = lo
        for conn in self._claim_idle(lambda info: True, keep=hi):
            self._close_connection(conn, "shrunk", None)
        if lo:
            self.open()
        self._wake_workers()

    def drain(self) -> None:
        """Replaces every connection: idle ones now, borrowed ones when they
        are returned. New ones are made as needed (and up to ``min_size``)."""
        generation = self._core.advance_generation()
        for conn in self._claim_idle(lambda info: info.generation < generation, keep=0):
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
        fn: Callable[[Any], T],
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
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(f"retries must be an integer >= 0, not {retries!r}")
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
            self._log.info(
                "pool %r: connection broke during run(), retry %d of %d",
                self.name,
                attempt,
                retries,
            )
            time.sleep(backoff * 2 ** (attempt - 1) * (0.5 + 0.5 * random.random()))

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
                    self._bounded_check(check, conn, max(timeout, _USER_CHECK_FLOOR))
        except Exception as exc:
            return exc
        return None

    def _bounded_check(self, check: Callable[[Any], object], conn: Any, timeout: float) -> None:
        """Runs a ``check=`` of the user's within ``timeout`` seconds: bounded
        by the adapter's ``watch`` where it has the means (psycopg 3: the
        socket is shut down at the deadline), else in a thread of its own,
        left at the deadline (:class:`_CheckOutlived`; the connection is
        closed when the check ends)."""
        watch = getattr(self._settings.adapter, "watch", None)
        stop = watch(conn, timeout) if watch is not None else None
        if stop is None:
            _check_in_thread(check, conn, timeout, self.name, self._in_check)
            return
        try:
            check(conn)
        except Exception as exc:
            if stop():
                raise UnusableConnection(f"check not done within {timeout:.3f} s") from exc
            raise
        except BaseException:
            stop()
            raise
        if stop():  # it answered just as its socket was shut: unusable all the same
            raise UnusableConnection(f"check not done within {timeout:.3f} s")

    def _retire(self, conn: Any, reason: int, exc: BaseException | None) -> None:
        self._close_connection(conn, _core.REASONS[reason], exc)
        self._wake_workers()

    def _drop_unknown(self, conn: Any) -> None:
        """Closes a connection dropped because something cut short what was
        done with it (its state unknown)."""
        self._close_connection(conn, "discarded", None)
        self._wake_workers()

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
        core = self._core
        started = time.monotonic()
        conn = None
        try:
            conn = settings.factory()
            self._refuse_new(conn, sync=True)
            if settings.configure is not None:
                settings.configure(conn)
            if not self._reset_known:
                self._reset_plan = settings.adapter.reset_for(conn)
                self._reset_known = True
                self._apply_hot_path()
            self._emit("connect", conn)
        except BaseException as exc:
            self._connect_failed(slot, exc)
            self._close_new(conn)
            self._tell_ready()
            return False
        took = time.monotonic() - started
        self._policy.connected(took)
        try:
            core.fill(slot, conn, self._policy.lifetime())
        except PoolClosed:
            self._close_connection(conn, "closed", None)
        except BaseException as exc:  # the core refused it after all
            self._policy.not_connected(took)
            self._connect_failed(slot, self._refused(conn, exc))
            self._close_new(conn)
            self._tell_ready()
            return False
        self._tell_ready()
        return True

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
        """One pass of the maintenance thread."""
        settings = self._settings
        now = self._core.now()
        if settings.max_idle:
            max_idle = settings.max_idle
            for conn in self._claim_idle(
                lambda info: now - info.returned >= max_idle, keep=self._policy.min_size
            ):
                self._close_connection(conn, "idle", None)
        if settings.max_lifetime is not None:
            self._replace_expiring(now)
        if settings.keepalive is not None:
            for index, conn in self._due_for_keepalive(now):
                try:
                    failure = self._vet(conn, min(settings.timeout, 10.0))
                except BaseException as exc:  # its state is unknown: not kept
                    self._kept_alive(index, exc)
                    self._close_connection(conn, "discarded", None)
                    raise
                reason = self._kept_alive(index, failure)
                if reason is not None:
                    self._close_connection(conn, reason, failure)
        if settings.leak_timeout is not None:
            self._report_leaks(now)
        self._wake_workers()

    def _replace_expiring(self, now: float) -> None:
        """Connects the replacements :meth:`_expiring` asks for, then retires
        idle expiring connections, two a pass; when the pool is full
        (``min_size == max_size``) it dips by one for one connect."""
        core = self._core
        deficit, idle = self._expiring(now)
        while deficit > 0 and core.size < core.max_size:
            slot = core.reserve()
            if slot is None or not self._connect_into(slot):
                return  # the database is away: keep the old ones meanwhile
            deficit -= 1
        for index in idle[:2]:
            conn = core.claim(index)
            if conn is None:
                continue  # borrowed meanwhile: retired at its return or next hand-out
            core.retire(index)
            self._close_connection(conn, "expired", None)
            if core.size < self._policy.min_size or core.waiting:
                slot = core.reserve()
                if slot is not None:
                    self._connect_into(slot)

    # --------------------------------------------------------------- fork

    def _after_fork_in_child(self) -> None:
        """The core forgot the parent's connections; forget the parent's
        threads and locks too. New threads start on first use."""
        closing = self._closing
        self._fresh_threading()
        self._closing = closing
        min_size = self._policy.min_size
        self._policy = Policy(self._settings, self._core, self._log)  # fresh counters
        self._policy.min_size = min_size
        self._leaks = 0
        self._leases = {}  # the parent's borrowers are not this process's
        self._last_check = {}
        self._in_check = {}  # the parent's check threads are not this process's

    def __repr__(self) -> str:
        core = self._core
        state = "closed" if core.closed else "open"
        return (
            f"<pypool.Pool {self.name!r} {state} core={self.core} "
            f"size={core.size}/{core.max_size} min={self._policy.min_size} "
            f"idle={core.idle} in_use={core.in_use} waiting={core.waiting}>"
        )


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
        pool._policy.forget_frames()  # the failed connect's, now that they returned
        stop = pool._stop
        del pool
        # Sleep out the backoff whatever the demand (waiters would ring the
        # wake bell at once); only close() cuts it short.
        if stop.wait(backoff * (0.5 + 0.5 * random.random())):
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
        pool._policy.forget_frames()  # of a connect or check of this pass
        stop, interval = pool._stop, pool._interval
        del pool
        if stop.wait(interval):
            return


def _describe(obj: Any, short: bool = False) -> str:
    """What an object is, for an error message: its type, and (unless
    ``short``) its repr, shortened and with any password masked."""
    from .dbapi import mask_dsn

    kind = type(obj).__name__
    if short:
        return kind
    text = mask_dsn(repr(obj))
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} (a {kind})"


async def _then_emit(reset: Awaitable[Any], pool: _PoolShared, event: str, conn: Any) -> None:
    """An async reset, then its event (only once it succeeded)."""
    await reset
    pool._emit(event, conn)


#: The least time a ``check=`` of the user's gets, however little is left of
#: the caller's timeout (a caller that does not wait, ``timeout=0``, included).
_USER_CHECK_FLOOR = 0.05


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


def _accepts_timeout(check: Callable[..., object]) -> bool:
    try:
        return "timeout" in inspect.signature(check).parameters
    except (TypeError, ValueError):
        return False


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _caller_stack() -> traceback.StackSummary:
    """The stack of the code that borrowed a connection, without pypool's
    own frames."""
    stack = traceback.extract_stack()
    while stack and os.path.abspath(stack[-1].filename).startswith(_PACKAGE_DIR):
        stack.pop()
    return stack


def _maintenance_interval(settings: Settings) -> float:
    """How often maintenance runs: often enough for the shortest threshold it
    enforces, at most once a second."""
    spans = [1.0]
    if settings.max_idle:
        spans.append(settings.max_idle / 4)
    if settings.max_lifetime is not None:
        spans.append(settings.max_lifetime / 20)
    if settings.keepalive is not None:
        spans.append(settings.keepalive / 4)
    if settings.leak_timeout is not None:
        spans.append(settings.leak_timeout / 4)
    return max(0.02, min(spans))


def _close_all_at_exit() -> None:
    """Closes the pools still open at exit. Idle threads stop at once; a
    connect in flight gets a moment to finish, since a driver still
    connecting while the interpreter tears down (OpenSSL above all) can
    crash the process."""
    for pool in list(_live_pools):
        with contextlib.suppress(Exception):  # pragma: no cover
            pool.close(timeout=2.0)


def _after_fork_in_child() -> None:
    for pool in list(_live_pools):
        pool._after_fork_in_child()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ------------------------------------------------------- one class per core


def _core_name(core_type: type) -> str:
    return "python" if core_type.__module__.endswith("_corepool_py") else "native"


def _module_of(pool_type: type) -> types.ModuleType:
    import sys

    for base in pool_type.__mro__:
        if base.__name__ == "PoolBase":
            return sys.modules[base.__module__]
    raise TypeError(f"{pool_type!r} does not derive from a core's PoolBase")


_variants: dict[tuple[type, types.ModuleType], type] = {}


def _variant(cls: type, core_module: types.ModuleType) -> type:
    """``cls`` rebuilt on ``core_module``'s PoolBase (for ``_core=``): the same
    mixins (``cls._mixins``), the other core's hot path. Attributes a class
    lists in ``_hot_aliases`` (such as ``getconn = PoolBase.acquire``) are
    bound to the new core's methods."""
    public = cls.__dict__.get("_public", cls)
    key = (public, core_module)
    variant = _variants.get(key)
    if variant is None:
        namespace: dict[str, Any] = {
            "__module__": public.__module__,
            "__doc__": public.__doc__,
            "__qualname__": public.__qualname__,
            "_public": public,
        }
        for alias, target in getattr(public, "_hot_aliases", {}).items():
            namespace[alias] = getattr(core_module.PoolBase, target)
        variant = type(public.__name__, (*public._mixins, core_module.PoolBase), namespace)
        _variants[key] = variant
    return variant


def _new(cls: type, *args: Any, _core: types.ModuleType | None = None, **kwargs: Any) -> Any:
    if _core is not None and _module_of(cls) is not _core:
        other = _variant(cls, _core)
        self = other.__new__(other)  # type: ignore[call-overload]
        self.__init__(*args, **kwargs)
        return self
    return super(_PoolShared, cls).__new__(cls)  # type: ignore[misc]


class Pool(_PoolMethods, _core.PoolBase):
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

    Defaults, and why:

    - ``adapter=pypool.dbapi``: works with any DB-API 2 driver.
    - ``min_size=0``: connect on demand; set it for a warm pool.
    - ``max_size=10``: a small pool outperforms a large one (the database
      runs at most a few queries per core at once); measure with
      ``pypool sweep``.
    - ``timeout=30.0``: how long ``acquire`` waits before
      :class:`PoolTimeout`, as psycopg_pool and SQLAlchemy do.
    - ``max_waiting=0``: an unbounded queue; set it to shed load with
      :class:`TooManyRequests` instead.
    - ``max_lifetime=3600.0``: replace connections hourly (less up to 5% at
      random, so they do not expire together), below common server and
      proxy limits; None: never.
    - ``max_idle=600.0``: idle connections older than this are closed (down
      to ``min_size``) and never handed out; None: never.
    - ``max_uses=0``: no limit on hand-outs per connection.
    - ``check=None``: the adapter's check (a ping), run before hand-out on
      connections idle more than ``check_after=1.0`` seconds, so a connection
      used a moment ago costs no round trip; ``check=False``: never.
    - ``reset=None``: the adapter's reset on return (roll back an open
      transaction); a method name, a callable, or ``False`` (none).
    - ``configure=None``: ``configure(conn)`` runs once on each new connection.
    - ``num_workers=2``: connects in flight at once; more would only flood a
      recovering database.
    - ``lifo=True``: reuse the most recently returned connection first, so
      surplus ones go idle and are retired; ``False`` for round-robin.
    - ``leak_timeout=None``: with a number, a connection borrowed longer is
      reported once, with the stack that took it (this puts a stack capture
      on every acquire).
    - ``keepalive=240.0``: idle connections unused this long are checked, so
      firewalls and server idle timeouts (often 300 s and more) do not cut
      them silently; None: never.
    - ``reconnect_timeout=300.0``: after connects have failed this long,
      ``reconnect_failed(pool)`` is called (the pool keeps trying).
    - ``transaction_pooling=False``: set it when the connections go through
      a pooler in transaction mode (PgBouncer's ``pool_mode = transaction``),
      which a client cannot detect: the reset then only ends the
      transaction, and a reset that clears session state (such as
      ``pypool.psycopg.discard_all``) is refused with
      :class:`ConfigurationError`, since the session is not the client's
      between transactions. With psycopg, also pass ``prepare_threshold=None``
      to the connect (``docs/scaling-out.md``).
    """

    __new__ = _new
    _mixins: tuple[type, ...] = (_PoolMethods,)


_variants[(Pool, _module_of(Pool))] = Pool
