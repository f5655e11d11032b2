"""What :class:`pypool.Pool` and :class:`pypool.AsyncPool` share above the
core: settings, statistics, events, leak reports, resizing, the readiness
rule of ``wait()``, the retry pause of ``run()``, the bookkeeping of a new
connection and the whole maintenance pass (:class:`PoolShared`); how a pool
class is bound to a core
(:meth:`PoolShared.with_core`); and the process hooks (at exit, the pools
still open are closed, waiting up to 2 s each for a connect in flight; in a
forked child, each pool forgets its parent's threads and connections).

Binding to a core
=================

A public pool class (``Pool``, ``AsyncPool``, the psycopg_pool-compatible
pools, a user's subclass) derives from :class:`HotPath`, which stands for a
core's ``PoolBase`` (the hot path: acquire, release, ``connection()``).
``cls.with_core(module)`` is a real subclass of ``cls`` with
``module.PoolBase`` below it, made once per class and core; making an
instance of the public class makes one of ``cls.with_core(pypool._core's
pick)``. So every pool is an instance of its public class, on either core,
and keeps every attribute its class defines.

Decisions written once, I/O done twice
======================================

Where a decision needs I/O on the way (the maintenance pass: close this one,
connect into that slot, check this one), it is written once, here, as a
generator of *steps*: each step names one of the pool's own I/O methods
(``_close_connection``, ``_connect_into``, ``_vet``,
``_close_on_the_way_out``) and its arguments. :class:`Steps` runs them: the
thread pool calls each step, the asyncio pool awaits it, and each sends
back the result, or what the step raised, to the generator.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import logging
import os
import sys
import time
import traceback
import types
import weakref
from collections.abc import Awaitable, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .. import _core, stats
from .._secrets import mask_dsn
from ..errors import (
    ConfigurationError,
    ConnectionFailed,
    PoolClosed,
    PoolError,
    PoolTimeout,
    UnusableConnection,
)
from .policy import Policy, jitter, one_line
from .settings import Settings, check_sizes

__all__ = [
    "EVENTS",
    "HOT_PATH",
    "HotPath",
    "PoolShared",
    "Step",
    "Steps",
    "accepts_timeout",
    "caller_stack",
    "core_module_of",
    "describe",
    "live_pools",
    "maintenance_interval",
    "run_watched",
]

_P = TypeVar("_P", bound=type)

#: The public methods of a core's ``PoolBase``.
HOT_PATH = ("acquire", "release", "connection")

#: The least time a ``check=`` of the user's gets, however little is left of
#: the caller's timeout (a caller that does not wait, ``timeout=0``, included).
USER_CHECK_FLOOR = 0.05

if TYPE_CHECKING:
    from .._records import SlotInfo

#: A step of I/O that a shared decision asks of its pool: the name of one of
#: the pool's methods and the arguments to call (or await) it with.
Step = tuple[str, tuple[Any, ...]]

if TYPE_CHECKING:
    # A type checker takes the hot path's methods from each pool's own
    # declarations (generic in the connection type), not from the core's.

    class HotPath:
        __slots__ = ()

else:

    class HotPath:
        """Stands for a core's ``PoolBase`` in a public pool class: the class
        that :meth:`PoolShared.with_core` makes puts the core's below it.
        It shows the hot path's public methods (those of the core
        ``pypool._core`` picked), for ``help()`` and the documentation; a
        class bound to a core has that core's own."""

        __slots__ = ()

    for _name in HOT_PATH:
        setattr(HotPath, _name, getattr(_core.PoolBase, _name))
    del _name


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

live_pools: weakref.WeakSet[Any] = weakref.WeakSet()


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


class PoolShared:
    """What the thread pool and the asyncio pool share: their settings,
    statistics, events, leak reports, every decision they take alike
    (resizing, draining, retiring, when ``wait()`` is done) and the
    maintenance pass, as steps (:class:`Steps`); each does its own I/O and
    waiting."""

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
        def _close_retired(self, conn: Any, reason: str, exc: BaseException | None) -> None: ...
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
        self._interval = maintenance_interval(settings)
        self._apply_hot_path()

    def _forget_parent(self) -> None:
        """In a forked child, the part both pools forget alike: the parent's
        counters (the sizes stay), borrowers and keepalive checks."""
        min_size = self._policy.min_size
        self._policy = Policy(self._settings, self._core, self._log)  # fresh counters
        self._policy.min_size = min_size
        self._leaks = 0
        self._leases = {}  # the parent's borrowers are not this process's
        self._last_check = {}

    #: How :meth:`__repr__` names the pool's class.
    _repr_kind = "pypool.Pool"

    def __repr__(self) -> str:
        core = self._core
        state = "closed" if core.closed else "open"
        return (
            f"<{self._repr_kind} {self.name!r} {state} core={self.core} "
            f"size={core.size}/{core.max_size} min={self._policy.min_size} "
            f"idle={core.idle} in_use={core.in_use} waiting={core.waiting}>"
        )

    # ------------------------------------------------------------ cores

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # A public class (not bound to a core) makes an instance of its
        # subclass on the core pypool._core picked; its __init__ then runs
        # as for any instance of cls.
        if "_public" not in cls.__dict__:
            cls = _bind(cls, sys.modules[_core.PoolBase.__module__])
        return super().__new__(cls)

    @classmethod
    def with_core(cls: _P, core: types.ModuleType | str) -> _P:
        """This class on one core: ``"native"``, ``"python"``, or the module
        (``pypool._corepool`` or ``pypool._corepool_py``). A subclass of this
        class, made once per class and core, whose instances run on that
        core's hot path; ``Pool.with_core("python")(factory, ...)`` is a
        :class:`Pool` on the Python core."""
        public = cls.__dict__.get("_public", cls)
        return _bind(public, _core_module(core))  # type: ignore[return-value]

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
            self._leases[slot] = _Borrowed(core.slot_info(slot).checked_out, caller_stack())
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

    def _retire(self, conn: Any, reason: int, exc: BaseException | None) -> None:
        """The core's hook for a connection it dropped (``reason`` one of its
        verdicts): closed, and a replacement connected as needed."""
        self._close_retired(conn, _core.REASONS[reason], exc)
        self._wake_workers()

    def _drop_unknown(self, conn: Any) -> None:
        """Closes a connection dropped because something cut short what was
        done with it (its state unknown)."""
        self._close_retired(conn, "discarded", None)
        self._wake_workers()

    # ------------------------------------------------------------ lifecycle

    def _set_sizes(self, min_size: int, max_size: int) -> int:
        """The sizes of ``resize()``, checked and in force (the core's limits
        and the connect demand); the new ``max_size``, down to which the
        caller then closes idle connections (:meth:`_claim_over`)."""
        lo, hi = check_sizes(min_size, max_size)
        self._core.max_size = hi
        self._core.min_size = lo
        self._policy.min_size = lo
        return hi

    def _claim_over(self, keep: int) -> Iterator[Any]:
        """The idle connections over ``keep`` (after a shrink), claimed and
        retired, the longest idle first, for the caller to close."""
        return self._claim_idle(lambda info: True, keep=keep)

    def _claim_stale(self) -> Iterator[Any]:
        """For ``drain()``: marks every connection made before now for
        replacement, and claims and retires the idle ones, for the caller to
        close (the borrowed ones are retired at their return)."""
        generation = self._core.advance_generation()
        return self._claim_idle(lambda info: info.generation < generation, keep=0)

    def _open_enough(self) -> bool:
        """Whether ``min_size`` connections are open, for ``wait()``."""
        core = self._core
        return bool(core.idle + core.in_use + core.claimed >= self._policy.min_size)

    def _wait_left(self, deadline: float, timeout: float, fail_fast: bool) -> float:
        """For ``wait()``, while fewer than ``min_size`` connections are open:
        how long to sleep before looking again (a connect that ends wakes it
        sooner). Raises :class:`ConnectionFailed` with ``fail_fast`` once a
        connect has failed, :class:`PoolTimeout` past ``deadline``; both with
        the last connection error as the cause."""
        policy = self._policy
        if fail_fast and policy.failing:
            raise ConnectionFailed(f"pool {self.name!r}: could not connect") from policy.last_error
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            core = self._core
            raise PoolTimeout(
                f"pool {self.name!r}: {core.idle + core.in_use} of min_size "
                f"{policy.min_size} connections ready after {timeout:.3f} s"
            ) from policy.last_error
        return min(remaining, 0.5)

    def _closed_error(self) -> PoolClosed:
        return PoolClosed(f"pool {self.name!r} is closed")

    def _retry_pause(self, attempt: int, retries: int, backoff: float) -> float:
        """For ``run()``: logs retry ``attempt`` of ``retries`` after a broken
        connection; the seconds to sleep before it (``backoff``, doubling
        with each attempt, with jitter)."""
        self._log.info(
            "pool %r: connection broke during run(), retry %d of %d",
            self.name,
            attempt,
            retries,
        )
        return jitter(backoff * 2 ** (attempt - 1))

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

    # ------------------------------------------------------------ connects

    def _learn(self, conn: Any) -> None:
        """What follows a connect that worked, before the connection joins the
        pool: the reset plan, learnt from the first connection (unless the
        settings gave one), and the connect event."""
        if not self._reset_known:
            self._reset_plan = self._settings.adapter.reset_for(conn)
            self._reset_known = True
            self._apply_hot_path()
        self._emit("connect", conn)

    def _fill(self, slot: int, conn: Any, took: float) -> bool | None:
        """Puts a new connection, made in ``took`` seconds, into its reserved
        slot, and counts it: True once it is in; None when the pool closed
        meanwhile (the caller closes it, as ``"closed"``); False when the
        core refused it (counted as a failed connect instead; the caller
        closes it as a failed connect's)."""
        policy = self._policy
        policy.connected(took)
        try:
            self._core.fill(slot, conn, policy.lifetime())
        except PoolClosed:
            return None
        except BaseException as exc:  # the core refused it after all
            policy.not_connected(took)
            self._connect_failed(slot, self._refused(conn, exc))
            return False
        return True

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
                f"pool {name!r}: the factory returned a {describe(conn, short=True)}, which a "
                "pool of threads cannot await: use pypool.AsyncPool for a coroutine function"
            )
        if self._in_pool(conn):
            raise ConnectionFailed(
                f"pool {name!r}: the factory returned {describe(conn)}, a connection that is "
                f"in the pool already: a factory must make a new connection at every call"
            )

    def _refused(self, conn: Any, exc: BaseException) -> ConnectionFailed:
        """The failure to record when the core refused what the factory
        returned (``exc`` says why, and is the cause)."""
        error = ConnectionFailed(
            f"pool {self.name!r}: the factory returned {describe(conn)}, which the pool "
            f"cannot hold: {one_line(exc)}"
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

    # -------------------------------------------------------- maintenance

    def _maintenance(self) -> Generator[Step, Any, None]:
        """One pass of maintenance, as steps (:class:`Steps`): retires idle
        connections past ``max_idle`` down to ``min_size`` (the longest idle
        first), replaces connections ahead of their lifetime, checks idle
        ones every ``keepalive`` seconds, reports leaks, and asks for the
        connects that are missing."""
        settings = self._settings
        now = self._core.now()
        if settings.max_idle:
            max_idle = settings.max_idle
            for conn in self._claim_idle(
                lambda info: now - info.returned >= max_idle, keep=self._policy.min_size
            ):
                yield "_close_connection", (conn, "idle", None)
        if settings.max_lifetime is not None:
            yield from self._replacements(now)
        if settings.keepalive is not None:
            for index, conn in self._due_for_keepalive(now):
                try:
                    failure = yield "_vet", (conn, min(settings.timeout, 10.0))
                except BaseException as exc:  # cut short (Ctrl-C, cancelled): not kept
                    self._kept_alive(index, exc)
                    yield "_close_on_the_way_out", (conn, "discarded")
                    raise
                reason = self._kept_alive(index, failure)
                if reason is not None:
                    yield "_close_connection", (conn, reason, failure)
        if settings.leak_timeout is not None:
            self._report_leaks(now)
        self._wake_workers()

    def _replacements(self, now: float) -> Generator[Step, Any, None]:
        """Connects the replacements :meth:`_expiring` asks for, then retires
        idle expiring connections, two a pass; when the pool is full
        (``min_size == max_size``) it dips by one for one connect."""
        core = self._core
        deficit, idle = self._expiring(now)
        while deficit > 0 and core.size < core.max_size:
            slot = core.reserve()
            if slot is None or not (yield "_connect_into", (slot,)):
                return  # the database is away: keep the old ones meanwhile
            deficit -= 1
        for index in idle[:2]:
            conn = core.claim(index)
            if conn is None:
                continue  # borrowed meanwhile: retired at its return or next hand-out
            core.retire(index)
            yield "_close_connection", (conn, "expired", None)
            if core.size < self._policy.min_size or core.waiting:
                slot = core.reserve()
                if slot is not None:
                    yield "_connect_into", (slot,)

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


class Steps:
    """Runs a generator of steps (:data:`Step`) for its pool::

        steps = Steps(self._maintenance())
        for name, args in steps:
            try:
                steps.result = getattr(self, name)(*args)  # or await it
            except BaseException as exc:
                steps.error = exc

    The next step gets the generator's reply to the last one: its
    :attr:`result` sent in, or its :attr:`error` thrown in (then raised
    from the loop, unless the generator handles it)."""

    __slots__ = ("_steps", "error", "result")

    def __init__(self, steps: Generator[Step, Any, None]) -> None:
        self._steps = steps
        self.result: Any = None
        self.error: BaseException | None = None

    def __iter__(self) -> Steps:
        return self

    def __next__(self) -> Step:
        result, self.result = self.result, None
        error, self.error = self.error, None
        if error is None:
            return self._steps.send(result)
        try:
            return self._steps.throw(error)
        finally:
            error = None  # held here, it would hold this frame in a cycle


def describe(obj: Any, short: bool = False) -> str:
    """What an object is, for an error message: its type, and (unless
    ``short``) its repr, shortened and with any password masked."""
    kind = type(obj).__name__
    if short:
        return kind
    text = mask_dsn(repr(obj))
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} (a {kind})"


async def _then_emit(reset: Awaitable[Any], pool: PoolShared, event: str, conn: Any) -> None:
    """An async reset, then its event (only once it succeeded)."""
    await reset
    pool._emit(event, conn)


#: pypool's own directory: its frames are left out of a borrower's stack.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def caller_stack() -> traceback.StackSummary:
    """The stack of the code that borrowed a connection, without pypool's
    own frames."""
    stack = traceback.extract_stack()
    while stack and os.path.abspath(stack[-1].filename).startswith(_PACKAGE_DIR):
        stack.pop()
    return stack


def maintenance_interval(settings: Settings) -> float:
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


def accepts_timeout(check: Callable[..., object]) -> bool:
    """Whether ``check`` takes a ``timeout`` keyword."""
    try:
        return "timeout" in inspect.signature(check).parameters
    except (TypeError, ValueError):
        return False


def run_watched(
    check: Callable[[], object], stop: Callable[[], bool] | None, timeout: float | None
) -> None:
    """Runs ``check()`` under a watch of the adapter's (``watch(conn,
    timeout)``), which ``stop()`` ends; unwatched when ``stop`` is None. A
    check the deadline cut short, or that answered just as its socket was
    shut, raises :class:`UnusableConnection`: the connection is unusable."""
    if stop is None:
        check()
        return
    try:
        check()
    except Exception as exc:
        if stop():
            raise UnusableConnection(f"check not done within {timeout:.3f} s") from exc
        raise
    except BaseException:
        stop()
        raise
    if stop():
        raise UnusableConnection(f"check not done within {timeout:.3f} s")


# ------------------------------------------------------------------ process hooks


def _close_all_at_exit() -> None:
    """Closes the pools still open at exit. Idle threads stop at once; a
    connect in flight gets a moment to finish, since a driver still
    connecting while the interpreter tears down (OpenSSL above all) can
    crash the process."""
    for pool in list(live_pools):
        with contextlib.suppress(Exception):  # pragma: no cover
            pool.close(timeout=2.0)


def _after_fork_in_child() -> None:
    for pool in list(live_pools):
        pool._after_fork_in_child()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ------------------------------------------------------------------ cores


def _core_name(core_type: type) -> str:
    return "python" if core_type.__module__.endswith("_corepool_py") else "native"


def core_module_of(pool_type: type) -> types.ModuleType:
    """The core module whose ``PoolBase`` a bound pool class derives from."""
    for base in pool_type.__mro__:
        if base.__name__ == "PoolBase":
            return sys.modules[base.__module__]
    raise TypeError(f"{pool_type!r} is not bound to a core: use {pool_type.__name__}.with_core()")


_bound: dict[tuple[type, types.ModuleType], type] = {}


def _bind(cls: type, module: types.ModuleType) -> type:
    """``cls`` on ``module``'s PoolBase: a subclass of ``cls``, made once.
    Attributes a class lists in ``_hot_aliases`` (such as ``getconn =
    PoolBase.acquire``) are bound to that core's methods."""
    public = cls.__dict__.get("_public", cls)
    key = (public, module)
    bound = _bound.get(key)
    if bound is None:
        namespace: dict[str, Any] = {
            "__module__": public.__module__,
            "__doc__": public.__doc__,
            "__qualname__": public.__qualname__,
            "_public": public,
        }
        for name in HOT_PATH:  # unless the class has its own (AsyncPool)
            if getattr(public, name, None) is getattr(HotPath, name):
                namespace[name] = getattr(module.PoolBase, name)
        for alias, target in getattr(public, "_hot_aliases", {}).items():
            namespace[alias] = getattr(module.PoolBase, target)
        bound = type(public.__name__, (public, module.PoolBase), namespace)
        # Generic in the connection type as the public class is:
        # Pool.with_core("python")[MyConn] as Pool[MyConn].
        bound.__parameters__ = getattr(public, "__parameters__", ())  # type: ignore[attr-defined]
        _bound[key] = bound
    return bound


def _core_module(core: types.ModuleType | str) -> types.ModuleType:
    if isinstance(core, str):
        if core not in ("native", "python"):
            raise ValueError(f"core must be 'native', 'python' or a core module, not {core!r}")
        import importlib

        return importlib.import_module(
            "pypool._corepool" if core == "native" else "pypool._corepool_py"
        )
    if not isinstance(core, types.ModuleType) or not hasattr(core, "PoolBase"):
        raise TypeError(f"core must be 'native', 'python' or a core module, not {core!r}")
    return core
