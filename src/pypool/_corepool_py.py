"""The pure-Python core: the readable specification of ``pypool._corepool``.

Both cores expose the same classes, functions and behaviour, and raise the same
exceptions (from :mod:`pypool.errors`). The native core mirrors the data
structures below one for one (slot states, the idle list with lazily dropped
stale entries, the empty-slot stack, segments of 64 slots), so the two hand out
the same slot for the same sequence of operations; the stateful tests
(``tests/test_core_stateful.py``) hold them to it. Change both in the same commit.

The core knows nothing of databases. It stores objects ("connections") in
slots, hands them out and takes them back, and makes callers wait when none is
idle. Deciding when to connect, check, reset or retire a connection is the
policy layer's job.

Slot states and moves (every slot is in exactly one state)::

    EMPTY --reserve()--> CREATING --fill(slot, conn)--> IDLE --acquire--> BUSY
      ^                      |                           ^  <--release(conn)--'
      '---abandon(slot)------'                           |
      ^                                     claim(slot): IDLE -> RESERVED, then
      '-------------discard(conn) / retire(slot)-------- restore(slot) -> IDLE

Concurrency: one mutex guards all state. It is never held while waiting, and
never while calling out to code the core does not own (ticket callbacks and
the ``on_wait`` / ``on_abandon`` hooks run after it is released).
"""

from __future__ import annotations

import _thread
import math
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from .errors import (
    ConfigurationError,
    InvalidSlot,
    NotBorrowed,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyRequests,
)

__all__ = [
    "BUSY",
    "CHECK",
    "CLOSED",
    "CREATING",
    "DEFAULT_HANDOFF_AFTER",
    "EMPTY",
    "EXPIRED",
    "IDLE",
    "IDLE_TOO_LONG",
    "MAX_SIZE",
    "OK",
    "REASONS",
    "RESERVED",
    "RESET_FAILED",
    "SHRUNK",
    "STALE",
    "USED_UP",
    "CorePool",
    "PoolBase",
    "WaiterTicket",
]

# Slot states.
EMPTY: Final = 0
CREATING: Final = 1
IDLE: Final = 2
BUSY: Final = 3
RESERVED: Final = 4
_STATE_NAMES: Final = ("EMPTY", "CREATING", "IDLE", "BUSY", "RESERVED")

# Verdicts on a connection at hand-out and at return (the policy thresholds
# the core holds decide them); every one but OK and CHECK retires it.
OK: Final = 0
CHECK: Final = 1  # idle longer than check_after: check it before hand-out
EXPIRED: Final = 2  # older than its lifetime
IDLE_TOO_LONG: Final = 3  # idle longer than max_idle
USED_UP: Final = 4  # handed out max_uses times
STALE: Final = 5  # made before the last advance_generation()
SHRUNK: Final = 6  # returned while the pool is over max_size
RESET_FAILED: Final = 7  # its reset raised
CLOSED: Final = 8  # returned after close()
#: Names of the verdicts, for logs and statistics.
REASONS: Final = (
    "ok",
    "check",
    "expired",
    "idle",
    "used_up",
    "stale",
    "shrunk",
    "reset_failed",
    "closed",
)

#: Slots are added in segments of this many (the native core allocates them so).
SEGMENT: Final = 64
#: The largest ``max_size`` a core accepts (4096 segments of 64 slots).
MAX_SIZE: Final = SEGMENT * 4096
#: How long (seconds) a waiting thread may be overtaken by callers that take an
#: idle connection ahead of it; after that, the next connection returned is
#: handed to it directly. Short enough that no waiter starves, long enough that
#: a busy pool does not pay a thread switch for every release.
DEFAULT_HANDOFF_AFTER: Final = 0.002
#: Longest single sleep of a waiting thread: bounds how late a signal handler
#: (Ctrl-C) runs on platforms where a lock wait is not interrupted by signals.
_WAIT_SLICE: Final = 0.05

# Waiter states.
_WAITING: Final = 0
_HANDED: Final = 1  # a connection was handed to it
_CLOSED: Final = 2  # the pool closed while it waited
_DONE: Final = 3  # left the queue: took its connection, timed out or was cancelled

_clock = time.monotonic


def _check_seconds(name: str, value: object, *, or_none: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        what = "a number of seconds or None" if or_none else "a number of seconds"
        raise ConfigurationError(f"{name} must be {what}, not {type(value).__name__}")
    if not value >= 0:  # rejects NaN too
        raise ConfigurationError(f"{name} must be >= 0 seconds, not {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int too large for a float: no limit
        return math.inf


def _check_timeout(timeout: object) -> float | None:
    return None if timeout is None else _check_seconds("timeout", timeout, or_none=True)


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise ConfigurationError(f"{name} must be between {low} and {high}, not {value}")
    return value


class _Slot:
    __slots__ = (
        "checked_out",
        "conn",
        "created",
        "expires",
        "generation",
        "index",
        "key",
        "listed",
        "ref",
        "returned",
        "state",
        "uses",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.key = 0  # id() of the object, the key of CorePool._where
        self.state = EMPTY
        self.listed = False  # the index sits in the idle list
        self.conn: Any = None  # strong reference (always while IDLE or RESERVED)
        self.ref: weakref.ref[Any] | None = None  # weak reference, if the type allows
        self.created = 0.0
        self.checked_out = 0.0
        self.returned = 0.0
        self.uses = 0
        self.generation = 0
        self.expires = 0.0  # end of its lifetime (0.0: none)

    def borrowed(self) -> Any:
        """The object of a BUSY slot (None if it was finalized)."""
        if self.ref is not None:
            return self.ref()
        return self.conn


class _Waiter:
    __slots__ = ("_conn", "_lock", "_notified", "_started", "_state")

    def __init__(self, lock: Any) -> None:
        self._lock = lock  # held while the waiter sleeps; released to wake it
        self._state = _WAITING
        self._notified = False  # woken to retry, without a hand-off
        self._conn: Any = None
        self._started = _clock()


class WaiterTicket(_Waiter):
    """A place in the wait queue that does not block a thread (for asyncio).

    Made by :meth:`CorePool.enqueue`. When a connection is handed to the ticket
    or the pool closes, ``callback(ticket)`` runs once, in whatever thread did
    that (use ``loop.call_soon_threadsafe`` in it); then :meth:`result` gives
    the connection. A ticket that is no longer wanted must be cancelled: that
    removes it from the queue, or passes on a connection already handed to it.
    """

    __slots__ = ("__weakref__", "_callback", "_core")

    def __init__(self, core: CorePool, callback: Callable[[WaiterTicket], object]) -> None:
        super().__init__(None)
        self._core = core
        self._callback = callback

    @property
    def done(self) -> bool:
        """True once the ticket no longer waits (handed, closed or cancelled)."""
        return self._state != _WAITING

    def result(self) -> Any:
        """The connection handed to this ticket; the caller now owns it.

        Raises :class:`PoolClosed` if the pool closed while the ticket waited,
        and :class:`PoolError` if the ticket still waits or its connection was
        taken or passed on already.
        """
        with self._core._mutex:
            if self._state == _HANDED:
                conn, self._conn = self._conn, None
                self._state = _DONE
                return conn
            if self._state == _CLOSED:
                raise PoolClosed("the pool was closed while waiting")
            if self._state == _WAITING:
                raise PoolError("the ticket is still waiting")
            raise PoolError("the ticket's connection was taken or passed on already")

    def cancel(self, timed_out: bool = False) -> bool:
        """Leaves the queue; passes on a connection handed but not yet taken.

        ``timed_out`` counts the cancellation as a timeout in the statistics.
        Returns True if the ticket was still waiting or held an untaken
        connection, False if it had finished already.
        """
        core = self._core
        calls: list[Callable[[], object]] = []
        with core._mutex:
            if self._state == _WAITING:
                core._leave_locked(self)
                if timed_out:
                    core._timeouts += 1
                result = True
            elif self._state == _HANDED:
                conn, self._conn = self._conn, None
                self._state = _DONE
                slot = core._slot_of_borrowed(conn)
                core._return_locked(slot, conn, calls)
                result = True
            else:
                self._state = _DONE
                result = False
        core._run(calls)
        return result

    def __repr__(self) -> str:
        names = ("waiting", "handed", "closed", "done")
        return f"<WaiterTicket {names[self._state]}>"


_live_cores: weakref.WeakSet[CorePool] = weakref.WeakSet()
_fork_orphans: list[Any] = []


def _keep_forever(obj: Any) -> None:
    """Make sure ``obj`` is never finalized in this process.

    After a fork the child's copies of the parent's connections share the
    parent's sockets: finalizing one (psycopg2 does so on garbage collection)
    can end the parent's session. An extra reference that is never dropped
    keeps it alive through interpreter shutdown too.
    """
    if sys.implementation.name == "cpython":
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))
    else:  # pragma: no cover - no reference counting to rely on
        _fork_orphans.append(obj)


def _after_fork_in_child() -> None:
    for core in list(_live_cores):
        core._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class CorePool:
    """Slots for up to ``max_size`` objects, handed out and taken back.

    ``max_size`` is a soft limit on the slots in use (not EMPTY): it may be
    changed at any time, also while connections are borrowed; lowering it
    retires nothing by itself (the policy layer retires idle connections).
    ``max_waiting`` bounds how many callers may wait at once (0: no bound).
    ``lifo=True`` reuses the most recently returned connection first;
    ``lifo=False`` reuses them in turn (first returned, first reused).
    ``handoff_after`` bounds unfairness: see :data:`DEFAULT_HANDOFF_AFTER`.
    ``on_wait()`` runs (without any lock held) each time a caller starts
    waiting, so the owner can decide to connect more. ``on_abandon(slot)`` runs
    when a borrowed connection was finalized without being returned; its slot
    is EMPTY again by then.
    """

    def __init__(
        self,
        max_size: int,
        *,
        max_waiting: int = 0,
        lifo: bool = True,
        handoff_after: float = DEFAULT_HANDOFF_AFTER,
        on_wait: Callable[[], object] | None = None,
        on_abandon: Callable[[int], object] | None = None,
    ) -> None:
        self._max_size = _check_int("max_size", max_size, 1, MAX_SIZE)
        self._max_waiting = _check_int("max_waiting", max_waiting, 0, 2**31 - 1)
        handoff = _check_timeout(handoff_after)
        if handoff is None:
            raise ConfigurationError("handoff_after must be a number of seconds")
        self._handoff_after = handoff
        if on_wait is not None and not callable(on_wait):
            raise ConfigurationError("on_wait must be callable or None")
        if on_abandon is not None and not callable(on_abandon):
            raise ConfigurationError("on_abandon must be callable or None")
        self._lifo = bool(lifo)
        self._on_wait = on_wait
        self._on_abandon = on_abandon
        self._closed = False
        self._generation = 0
        self._max_idle = 0.0
        self._min_size = 0
        self._max_uses = 0
        self._check_after: float | None = None
        self._reset_state()
        _live_cores.add(self)

    def _reset_state(self) -> None:
        self._mutex = threading.Lock()
        self._slots: list[_Slot] = []
        self._empty: list[int] = []  # stack of EMPTY slot indices
        self._idle: deque[int] = deque()  # idle list; may hold stale indices
        self._where: dict[int, int] = {}  # id(conn) -> slot index
        self._waiters: deque[_Waiter] = deque()
        self._dead: list[tuple[int, weakref.ref[Any]]] = []  # finalized while borrowed
        self._abandoned_slots: list[int] = []  # reaped; on_abandon not yet called
        self._size = 0  # slots not EMPTY
        self._n_idle = 0
        self._n_busy = 0
        self._n_creating = 0
        self._n_reserved = 0
        self._acquires = 0
        self._waits = 0
        self._wait_time = 0.0
        self._wait_time_max = 0.0
        self._timeouts = 0
        self._abandoned = 0
        self._use_time = 0.0  # seconds borrowed, over every return and discard

    # ------------------------------------------------------------ properties

    @property
    def max_size(self) -> int:
        """The soft limit on slots in use; may be set at any time."""
        return self._max_size

    @max_size.setter
    def max_size(self, value: int) -> None:
        value = _check_int("max_size", value, 1, MAX_SIZE)
        with self._mutex:
            self._check_open()
            self._max_size = value

    @property
    def max_waiting(self) -> int:
        """How many callers may wait at once (0: no bound); may be set."""
        return self._max_waiting

    @max_waiting.setter
    def max_waiting(self, value: int) -> None:
        value = _check_int("max_waiting", value, 0, 2**31 - 1)
        with self._mutex:
            self._check_open()
            self._max_waiting = value

    @property
    def lifo(self) -> bool:
        return self._lifo

    @property
    def handoff_after(self) -> float:
        return self._handoff_after

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def generation(self) -> int:
        """The pool's generation; stamped on every slot when it is reserved."""
        return self._generation

    def advance_generation(self) -> int:
        """Starts a new generation (for drain and invalidate) and returns it:
        every slot reserved before now is of an older one (STALE)."""
        with self._mutex:
            self._check_open()
            self._generation += 1
            return self._generation

    @property
    def max_idle(self) -> float:
        """Seconds idle after which a connection is retired at hand-out
        instead of handed out (0: never); may be set."""
        return self._max_idle

    @max_idle.setter
    def max_idle(self, value: float) -> None:
        self._max_idle = _check_seconds("max_idle", value)

    @property
    def min_size(self) -> int:
        """Connections kept however long idle: a connection idle past
        ``max_idle`` is retired at hand-out only while more than this many
        slots are in use; may be set."""
        return self._min_size

    @min_size.setter
    def min_size(self, value: int) -> None:
        self._min_size = _check_int("min_size", value, 0, MAX_SIZE)

    @property
    def max_uses(self) -> int:
        """Hand-outs after which a connection is retired (0: no limit); may
        be set."""
        return self._max_uses

    @max_uses.setter
    def max_uses(self, value: int) -> None:
        self._max_uses = _check_int("max_uses", value, 0, 2**62)

    @property
    def check_after(self) -> float | None:
        """Seconds idle after which a connection must be checked before it is
        handed out (None: never); may be set."""
        return self._check_after

    @check_after.setter
    def check_after(self, value: float | None) -> None:
        self._check_after = None if value is None else _check_seconds("check_after", value)

    def verdict(self, slot: int, checkout: bool) -> int:
        """What the thresholds say of the connection in ``slot``, at hand-out
        (``checkout``) or at return: OK, CHECK, or a reason to retire it."""
        with self._mutex:
            return self._verdict(self._slot_at(slot, None), checkout)

    @property
    def size(self) -> int:
        """Slots in use: idle, borrowed, being connected or claimed."""
        return self._size

    @property
    def idle(self) -> int:
        return self._n_idle

    @property
    def in_use(self) -> int:
        return self._n_busy

    @property
    def connecting(self) -> int:
        """Slots reserved for a connect that has not finished (CREATING)."""
        return self._n_creating

    @property
    def claimed(self) -> int:
        """Idle slots taken aside by :meth:`claim` (RESERVED)."""
        return self._n_reserved

    @property
    def waiting(self) -> int:
        """Callers (threads and tickets) waiting for a connection now."""
        return len(self._waiters)

    @staticmethod
    def now() -> float:
        """The core's clock, in seconds; the base of every slot time."""
        return _clock()

    def stats(self) -> dict[str, float | int]:
        """Counters since creation (or since a fork) and current gauges."""
        with self._mutex:
            return {
                "acquires": self._acquires,
                "waits": self._waits,
                "wait_time": self._wait_time,
                "wait_time_max": self._wait_time_max,
                "timeouts": self._timeouts,
                "abandoned": self._abandoned,
                "use_time": self._use_time,
                "size": self._size,
                "idle": self._n_idle,
                "in_use": self._n_busy,
                "connecting": self._n_creating,
                "claimed": self._n_reserved,
                "waiting": len(self._waiters),
                "max_size": self._max_size,
                "max_waiting": self._max_waiting,
            }

    # -------------------------------------------------------------- hot path

    def try_acquire(self) -> Any:
        """An idle connection, now, or None. Never waits."""
        with self._mutex:
            if self._closed:
                raise PoolClosed("the pool is closed")
            conn = self._pop_locked()
            if self._dead:
                self._reap_locked()
        if self._abandoned_slots:
            self._run([])
        return conn

    def release(self, conn: Any, /) -> bool:
        """Gives back a borrowed connection.

        Returns True when the pool took it back, False when the pool is closed:
        then the slot is freed and the caller must close the connection.
        Raises :class:`NotBorrowed` (changing nothing) for an object that is
        not borrowed from this pool.
        """
        calls: list[Callable[[], object]] = []
        with self._mutex:
            slot = self._slot_of_borrowed(conn)
            if self._closed:
                self._empty_locked(slot, BUSY)
                result = False
            else:
                slot.returned = _clock()
                self._use_time += slot.returned - slot.checked_out
                self._return_locked(slot, conn, calls)
                result = True
            if self._dead:
                self._reap_locked()
        self._run(calls)
        return result

    def acquire(self, timeout: float | None = None) -> Any:
        """A connection, waiting up to ``timeout`` seconds (None: no limit).

        Raises :class:`PoolTimeout` when none came in time,
        :class:`TooManyRequests` when ``max_waiting`` callers wait already, and
        :class:`PoolClosed` when the pool is or gets closed. A signal handler's
        exception (Ctrl-C) interrupts the wait; a connection handed to the
        waiter at that moment is passed on, never lost.
        """
        wait_for = _check_timeout(timeout)
        with self._mutex:
            if self._closed:
                raise PoolClosed("the pool is closed")
            conn = self._pop_locked()
            if conn is not None:
                return conn
            if wait_for == 0:
                self._timeouts += 1
                raise PoolTimeout(self._timeout_message(0.0))
            if self._max_waiting and len(self._waiters) >= self._max_waiting:
                raise TooManyRequests(
                    f"{len(self._waiters)} callers wait already (max_waiting={self._max_waiting})"
                )
            lock = _thread.allocate_lock()  # looked up now: gevent/eventlet patch it
            lock.acquire()
            waiter = _Waiter(lock)
            self._waiters.append(waiter)
        if self._on_wait is not None:
            self._on_wait()
        return self._wait(waiter, wait_for)

    def _wait(self, waiter: _Waiter, wait_for: float | None) -> Any:
        deadline = None if wait_for is None else waiter._started + wait_for
        try:
            while True:
                if deadline is None:
                    woken = waiter._lock.acquire(True, _WAIT_SLICE)
                else:
                    remaining = deadline - _clock()
                    woken = remaining > 0 and waiter._lock.acquire(
                        True, min(remaining, _WAIT_SLICE)
                    )
                    if not woken and _clock() >= deadline:
                        return self._wait_timed_out(waiter, wait_for or 0.0)
                if not woken:
                    continue
                with self._mutex:
                    if waiter._state == _HANDED:
                        waiter._state = _DONE
                        conn, waiter._conn = waiter._conn, None
                        return conn
                    if waiter._state == _CLOSED:
                        waiter._state = _DONE
                        raise PoolClosed("the pool was closed while waiting")
                    # Woken to retry: a connection was made idle for us, but a
                    # caller that did not wait may have taken it first.
                    waiter._notified = False
                    conn = self._pop_locked()
                    if conn is not None:
                        self._leave_locked(waiter)
                        self._count_wait(waiter)
                        return conn
        except BaseException:
            calls: list[Callable[[], object]] = []
            with self._mutex:
                if waiter._state == _HANDED:  # handed at the moment we were interrupted
                    conn, waiter._conn = waiter._conn, None
                    waiter._state = _DONE
                    self._return_locked(self._slot_of_borrowed(conn), conn, calls)
                elif waiter._state == _WAITING:
                    self._leave_locked(waiter)
            self._run(calls)
            raise

    def _wait_timed_out(self, waiter: _Waiter, waited: float) -> Any:
        with self._mutex:
            if waiter._state == _HANDED:  # handed just in time: take it
                waiter._state = _DONE
                conn, waiter._conn = waiter._conn, None
                return conn
            if waiter._state == _CLOSED:
                waiter._state = _DONE
                raise PoolClosed("the pool was closed while waiting")
            self._leave_locked(waiter)
            self._timeouts += 1
            raise PoolTimeout(self._timeout_message(waited))

    def _timeout_message(self, waited: float) -> str:
        return (
            f"no connection available after {waited:.3f} s "
            f"(size {self._size}/{self._max_size}, idle {self._n_idle}, "
            f"in use {self._n_busy}, connecting {self._n_creating}, "
            f"waiting {len(self._waiters)})"
        )

    # ----------------------------------------------------------- asyncio use

    def enqueue(self, callback: Callable[[WaiterTicket], object]) -> WaiterTicket:
        """Takes a place in the wait queue without blocking; see WaiterTicket.

        If a connection is idle now it is handed to the ticket at once (and
        ``callback`` runs before this returns). Raises TooManyRequests and
        PoolClosed as :meth:`acquire` does.
        """
        if not callable(callback):
            raise ConfigurationError("callback must be callable")
        ticket = WaiterTicket(self, callback)
        with self._mutex:
            if self._closed:
                raise PoolClosed("the pool is closed")
            conn = self._pop_locked()
            if conn is None:
                if self._max_waiting and len(self._waiters) >= self._max_waiting:
                    raise TooManyRequests(
                        f"{len(self._waiters)} callers wait already "
                        f"(max_waiting={self._max_waiting})"
                    )
                self._waiters.append(ticket)
            else:
                ticket._state = _HANDED
                ticket._conn = conn
        if conn is None:
            if self._on_wait is not None:
                self._on_wait()
        else:
            callback(ticket)
        return ticket

    # ------------------------------------------------------- connect workers

    def reserve(self) -> int | None:
        """Claims an EMPTY slot for a connect, if ``size < max_size``.

        Returns the slot index (now CREATING), or None at the limit. The
        caller must then :meth:`fill` or :meth:`abandon` it.
        """
        with self._mutex:
            self._check_open()
            if self._size >= self._max_size:
                return None
            if not self._empty:
                self._grow_locked()
            index = self._empty.pop()
            slot = self._slots[index]
            slot.state = CREATING
            # Stamped now, not at fill(): a connect that began before
            # advance_generation() makes a connection of the old generation.
            slot.generation = self._generation
            self._size += 1
            self._n_creating += 1
            return index

    def fill(self, slot: int, conn: Any, lifetime: float | None = None) -> None:
        """Puts a new connection into a reserved (CREATING) slot.

        It becomes IDLE, or goes straight to a waiter. ``lifetime`` (seconds)
        ends it that long after now (see :meth:`verdict`). If the pool was
        closed meanwhile the slot is freed and :class:`PoolClosed` raised: the
        caller must close the connection.
        """
        if conn is None:
            raise TypeError("a connection cannot be None")
        life = None if lifetime is None else _check_seconds("lifetime", lifetime)
        calls: list[Callable[[], object]] = []
        with self._mutex:
            s = self._slot_at(slot, CREATING)
            other = self._where.get(id(conn))
            if other is not None:
                raise InvalidSlot(f"this object is in the pool already (slot {other})")
            if self._closed:
                self._empty_locked(s, CREATING)
                raise PoolClosed("the pool was closed while connecting")
            now = _clock()
            s.conn = conn
            s.key = id(conn)
            s.ref = self._weakref_for(conn, s.index)
            s.created = s.returned = now
            s.checked_out = 0.0
            s.uses = 0
            s.expires = 0.0 if life is None else now + life
            self._where[id(conn)] = s.index
            self._return_locked(s, conn, calls)
        self._run(calls)

    def abandon(self, slot: int) -> None:
        """Frees a reserved (CREATING) slot whose connect failed."""
        with self._mutex:
            self._empty_locked(self._slot_at(slot, CREATING), CREATING)

    def discard(self, conn: Any, /) -> None:
        """Frees the slot of a borrowed connection that is broken or retired.

        The caller keeps the connection and closes it. Works after close().
        """
        with self._mutex:
            s = self._slot_of_borrowed(conn)
            self._use_time += _clock() - s.checked_out
            self._empty_locked(s, BUSY)

    # ------------------------------------------------------------ maintenance

    def claim(self, slot: int) -> Any:
        """Takes one specific IDLE slot aside (-> RESERVED) and returns its
        connection, or None if that slot is not idle now (it was just borrowed).

        The caller must then :meth:`restore` or :meth:`retire` the slot.
        """
        with self._mutex:
            self._check_open()
            s = self._slot_at(slot, None)
            if s.state != IDLE:
                return None
            s.state = RESERVED
            self._n_idle -= 1
            self._n_reserved += 1
            return s.conn

    def restore(self, slot: int) -> bool:
        """Puts a claimed (RESERVED) slot back: IDLE again, or to a waiter.

        Returns False if the pool was closed meanwhile: the slot is freed and
        the caller must close the connection.
        """
        calls: list[Callable[[], object]] = []
        with self._mutex:
            s = self._slot_at(slot, RESERVED)
            if self._closed:
                self._empty_locked(s, RESERVED)
                return False
            self._return_locked(s, s.conn, calls)
        self._run(calls)
        return True

    def retire(self, slot: int) -> Any:
        """Frees a claimed (RESERVED) slot and returns its connection, which
        the caller must close."""
        with self._mutex:
            s = self._slot_at(slot, RESERVED)
            conn = s.conn
            self._empty_locked(s, RESERVED)
            return conn

    def slot_of(self, conn: Any, /) -> int:
        """The slot holding ``conn`` (idle, borrowed or claimed)."""
        with self._mutex:
            index = self._where.get(id(conn))
            if index is not None:
                s = self._slots[index]
                held = s.borrowed() if s.state == BUSY else s.conn
                if held is conn:
                    return index
        raise NotBorrowed("this object is not in this pool")

    def slot_info(self, slot: int) -> tuple[int, float, float, float, int, int, float]:
        """``(state, created, checked_out, returned, uses, generation,
        expires)`` of a slot; times are :meth:`now` values (0.0: never)."""
        with self._mutex:
            s = self._slot_at(slot, None)
            return (
                s.state,
                s.created,
                s.checked_out,
                s.returned,
                s.uses,
                s.generation,
                s.expires,
            )

    def slots(self, state: int | None = None) -> list[int]:
        """Indices of the slots in ``state`` (all slots when None), ascending."""
        with self._mutex:
            if state is None:
                return [s.index for s in self._slots]
            return [s.index for s in self._slots if s.state == state]

    def close(self) -> list[Any]:
        """Closes the pool and returns its idle connections for the caller to
        close. Every waiter gets :class:`PoolClosed`. Borrowed connections are
        given back later with :meth:`release` (which then returns False);
        claimed ones with :meth:`restore` or :meth:`retire`.

        Calling it again is harmless and returns the connections that came
        back idle since: one handed to a waiter just before the close, whose
        waiter was then interrupted or cancelled, is passed on into the idle
        list, where only another ``close()`` finds it."""
        calls: list[Callable[[], object]] = []
        idle: list[Any] = []
        with self._mutex:
            self._closed = True
            for s in self._slots:
                s.listed = False
                if s.state == IDLE:
                    idle.append(s.conn)
                    self._empty_locked(s, IDLE)
            self._idle.clear()
            while self._waiters:
                w = self._waiters.popleft()
                w._state = _CLOSED
                self._wake(w, calls)
        self._run(calls)
        return idle

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<{type(self).__module__}.CorePool {state} size={self._size}/{self._max_size} "
            f"idle={self._n_idle} in_use={self._n_busy} waiting={len(self._waiters)}>"
        )

    # -------------------------------------------------------------- internals
    # Everything below runs with self._mutex held, unless named otherwise.

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosed("the pool is closed")

    def _slot_at(self, slot: object, state: int | None) -> _Slot:
        if isinstance(slot, bool) or not isinstance(slot, int):
            raise InvalidSlot(f"a slot is an int, not {type(slot).__name__}")
        if not 0 <= slot < len(self._slots):
            raise InvalidSlot(f"no slot {slot}")
        s = self._slots[slot]
        if state is not None and s.state != state:
            raise InvalidSlot(f"slot {slot} is {_STATE_NAMES[s.state]}, not {_STATE_NAMES[state]}")
        return s

    def _slot_of_borrowed(self, conn: Any) -> _Slot:
        index = self._where.get(id(conn))
        if index is not None:
            s = self._slots[index]
            if s.state == BUSY and s.borrowed() is conn:
                return s
            if s.conn is conn:
                raise NotBorrowed("this connection was returned already")
        raise NotBorrowed("this object was not borrowed from this pool")

    def _verdict(self, s: _Slot, checkout: bool) -> int:
        now = _clock()
        if s.expires and now >= s.expires:
            return EXPIRED
        # At hand-out ``uses`` counts this hand-out already.
        if self._max_uses and s.uses >= self._max_uses + checkout:
            return USED_UP
        if s.generation < self._generation:
            return STALE
        if checkout:
            idle = now - s.returned
            if self._max_idle and idle >= self._max_idle and self._size > self._min_size:
                return IDLE_TOO_LONG
            if self._check_after is not None and idle >= self._check_after:
                return CHECK
        elif self._size > self._max_size:
            return SHRUNK
        return OK

    def _grow_locked(self) -> None:
        base = len(self._slots)
        self._slots.extend(_Slot(base + k) for k in range(SEGMENT))
        # Lowest index on top: reserve() takes slots in ascending order.
        self._empty.extend(range(base + SEGMENT - 1, base - 1, -1))

    def _pop_locked(self) -> Any:
        """Takes the next idle slot (IDLE -> BUSY) and returns its object."""
        idle = self._idle
        while idle:
            index = idle.pop() if self._lifo else idle.popleft()
            s = self._slots[index]
            s.listed = False
            if s.state != IDLE:
                continue  # stale: claimed or freed while listed
            self._hand_out(s)
            conn = s.conn
            if s.ref is not None:
                s.conn = None  # keep only the weak reference while borrowed
            return conn
        return None

    def _hand_out(self, s: _Slot) -> None:
        if s.state == IDLE:
            self._n_idle -= 1
        elif s.state == CREATING:
            self._n_creating -= 1
        elif s.state == RESERVED:
            self._n_reserved -= 1
        if s.state != BUSY:
            self._n_busy += 1
        s.state = BUSY
        s.checked_out = _clock()
        s.uses += 1
        self._acquires += 1

    def _return_locked(self, s: _Slot, conn: Any, calls: list[Callable[[], object]]) -> None:
        """A connection is available in slot ``s`` (BUSY, CREATING or
        RESERVED): hand it to a waiter that is owed one, else make it IDLE and
        wake a waiter to come and take it."""
        waiters = self._waiters
        if waiters:
            first = waiters[0]
            if isinstance(first, WaiterTicket) or (
                _clock() - first._started >= self._handoff_after
            ):
                waiters.popleft()
                self._hand_out(s)
                s.conn = None if s.ref is not None else conn
                self._count_wait(first)
                first._state = _HANDED
                first._conn = conn
                self._wake(first, calls)
                return
        if s.state == BUSY:
            self._n_busy -= 1
        elif s.state == CREATING:
            self._n_creating -= 1
        elif s.state == RESERVED:
            self._n_reserved -= 1
        s.state = IDLE
        s.conn = conn
        self._n_idle += 1
        if not s.listed:
            s.listed = True
            self._idle.append(s.index)
        self._notify_one(calls)

    def _notify_one(self, calls: list[Callable[[], object]]) -> None:
        """Wakes the first thread waiter not woken already, to retry."""
        for w in self._waiters:
            if not w._notified and not isinstance(w, WaiterTicket):
                w._notified = True
                w._lock.release()
                return

    def _leave_locked(self, waiter: _Waiter) -> None:
        """Removes a waiter that gives up; passes on a wake-up it received."""
        self._waiters.remove(waiter)
        waiter._state = _DONE
        if waiter._notified and self._n_idle:
            self._notify_one([])

    def _count_wait(self, waiter: _Waiter) -> None:
        waited = _clock() - waiter._started
        self._waits += 1
        self._wait_time += waited
        if waited > self._wait_time_max:
            self._wait_time_max = waited

    def _wake(self, waiter: _Waiter, calls: list[Callable[[], object]]) -> None:
        if isinstance(waiter, WaiterTicket):
            callback = waiter._callback
            calls.append(lambda: callback(waiter))
        elif not waiter._notified:  # a waiter woken to retry is awake already
            waiter._notified = True
            waiter._lock.release()

    def _empty_locked(self, s: _Slot, state: int) -> None:
        """``state`` -> EMPTY: forgets the object and frees the slot."""
        if state == IDLE:
            self._n_idle -= 1
        elif state == BUSY:
            self._n_busy -= 1
        elif state == CREATING:
            self._n_creating -= 1
        elif state == RESERVED:
            self._n_reserved -= 1
        if self._where.get(s.key) == s.index:
            del self._where[s.key]
        s.state = EMPTY
        s.conn = None
        s.ref = None
        self._size -= 1
        self._empty.append(s.index)

    def _weakref_for(self, conn: Any, index: int) -> weakref.ref[Any] | None:
        core = weakref.ref(self)

        def finalized(ref: weakref.ref[Any], core: weakref.ref[CorePool] = core) -> None:
            pool = core()
            if pool is not None:
                pool._finalized(index, ref)

        try:
            return weakref.ref(conn, finalized)
        except TypeError:  # the type allows no weak references
            return None

    def _finalized(self, index: int, ref: weakref.ref[Any]) -> None:
        """A borrowed object died without being returned. This runs in any
        thread, maybe in one that holds the mutex already (a garbage
        collection inside a core operation): then the next operation reaps."""
        self._dead.append((index, ref))
        if self._mutex.acquire(False):
            try:
                self._reap_locked()
            finally:
                self._mutex.release()
            self._run([])

    def _reap_locked(self) -> None:
        dead, self._dead = self._dead, []
        for index, ref in dead:
            s = self._slots[index] if index < len(self._slots) else None
            if s is None or s.state != BUSY or s.ref is not ref:
                continue  # the slot moved on (discarded, refilled, forked)
            self._empty_locked(s, BUSY)
            self._abandoned += 1
            self._abandoned_slots.append(index)

    def _run(self, calls: list[Callable[[], object]]) -> None:
        """Runs callbacks collected under the mutex, after releasing it."""
        for call in calls:
            call()
        if self._abandoned_slots:
            reaped, self._abandoned_slots = self._abandoned_slots, []
            if self._on_abandon is not None:
                for index in reaped:
                    self._on_abandon(index)

    def _forget_after_fork(self) -> None:
        """In a child process: drop every slot without closing or finalizing
        its object (they belong to the parent), start with fresh locks."""
        for s in self._slots:
            held = s.conn if s.conn is not None else (s.ref() if s.ref is not None else None)
            if held is not None:
                _keep_forever(held)
        self._reset_state()


class _Lease:
    """``with pool.connection() as conn``: a connection, given back on exit
    (also when the block raises)."""

    __slots__ = ("_conn", "_end", "_pool", "_timeout")

    def __init__(
        self,
        pool: PoolBase,
        timeout: float | None,
        end: Callable[[Any, Any], object] | None = None,
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._end = end
        self._conn: Any = None

    def __enter__(self) -> Any:
        if self._conn is not None:
            raise PoolError("this connection() block is in use already")
        self._conn = self._pool.acquire(self._timeout)
        return self._conn

    def __exit__(self, *exc_info: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._end is not None:
                self._end(conn, exc_info[0])
            else:
                self._pool.release(conn)

    def _discard(self) -> Any:
        """Takes the connection out of the block and out of the pool (its
        slot freed, as ``CorePool.discard`` does) and returns it, for the
        caller to close: the block's exit then gives nothing back. For a
        caller that found the connection broken inside the block."""
        conn = self._conn
        if conn is None:
            raise PoolError("this connection() block holds no connection")
        self._pool._core.discard(conn)
        self._conn = None
        return conn


class PoolBase:
    """The hot path of a pool over a :class:`CorePool`: acquire, release and
    connection().

    A healthy connection used recently is handed out and taken back by this
    class alone, on the verdicts of the core's thresholds. The policy layer,
    a subclass, is called only for what needs I/O or judgement:

    - ``_vet(conn, timeout)`` checks a connection idle longer than
      ``check_after`` before it is handed out, within ``timeout`` seconds
      (what is left of the caller's), and returns None if it is fine or the
      exception that shows it is not;
    - ``_retire(conn, reason, exc)`` takes a connection the pool dropped (its
      slot is free already; ``reason`` is one of the verdicts, CHECK for a
      failed check) and must close it; ``_rejected(conn, reason, exc)`` is
      called instead for one dropped at hand-out (it was never served);
    - ``_failed(exc, timeout)`` returns the exception to raise in a caller
      that gets no connection within ``timeout`` seconds (``exc`` is the
      core's PoolTimeout, PoolClosed or TooManyRequests).

    ``reset`` runs on every return before the connection is idle again: a
    method name (``"rollback"``: ``conn.rollback()``), a callable
    ``reset(conn)``, or None.

    Whatever the hooks raise, a connection the core handed out reaches the
    caller or goes back, never neither: a ``_checked_out`` that raises
    (anything: ``KeyboardInterrupt`` too) gives the connection back to the
    pool untouched; a ``_vet`` that raises (not returns) leaves the
    connection's state unknown, so it is discarded (``_rejected`` with
    CHECK and what was raised); a ``_checking_in`` or reset that raises on
    return gets the connection discarded (``_retire`` with RESET_FAILED).
    The exception then goes on. The one window left is a signal whose handler raises inside
    these give-backs themselves (or, in this Python core, between two
    bytecodes of the hand-out); a connection lost there is recovered by the
    garbage collector, as an abandoned one, where its type allows weak
    references.
    """

    def __init__(self, core: CorePool, timeout: float = 30.0, reset: Any = None) -> None:
        self._core = core
        self._timeout = 30.0
        self._reset_name: str | None = None
        self._reset_fn: Callable[[Any], object] | None = None
        self._observe = False
        self._thread = 0
        self._unchecked: Any = None
        self._set_timeout(timeout)
        self._set_reset(reset)

    def _set_thread(self, ident: int) -> None:
        """``_take()`` serves calls from thread ``ident`` only (0: none)."""
        self._thread = ident

    def _set_timeout(self, timeout: float) -> None:
        wait_for = _check_timeout(timeout)
        if wait_for is None:
            raise ConfigurationError("timeout must be a number of seconds (inf: no limit)")
        self._timeout = wait_for

    def _set_observe(self, observe: bool) -> None:
        """With ``observe`` on, ``_checked_out(conn)`` runs after every
        hand-out and ``_checking_in(conn)`` before every return (for leak
        reports and events); off, the hot path calls no Python code."""
        self._observe = bool(observe)

    def _set_reset(self, reset: Any) -> None:
        if reset is None or isinstance(reset, str):
            self._reset_name, self._reset_fn = reset, None
        elif callable(reset):
            self._reset_name, self._reset_fn = None, reset
        else:
            raise ConfigurationError("reset must be a method name, a callable or None")

    def acquire(self, timeout: float | None = None) -> Any:
        """A connection, yours until you give it back with :meth:`release`.

        You must give it back (or use :meth:`connection`): failing to do so
        depletes the pool. Waits up to ``timeout`` seconds (None: the pool's
        timeout) for one, then raises :class:`PoolTimeout`; raises
        :class:`TooManyRequests` when the wait queue is full and
        :class:`PoolClosed` when the pool is closed.
        """
        wait_for = self._timeout if timeout is None else _check_timeout(timeout)
        assert wait_for is not None
        try:
            return self._acquire_loop(wait_for)
        except PoolError as exc:
            error = self._failed(exc, wait_for)
        raise error

    def _acquire_loop(self, wait_for: float) -> Any:
        core = self._core
        deadline = _clock() + wait_for
        conn = core.try_acquire()
        while True:
            if conn is None:
                conn = core.acquire(max(0.0, deadline - _clock()))
            try:
                verdict = core.verdict(core.slot_of(conn), True)
            except BaseException:  # a signal between two bytecodes
                self._give_back_unused(conn)
                raise
            if verdict == CHECK:
                try:
                    failure = self._vet(conn, max(0.0, deadline - _clock()))
                except BaseException as exc:
                    # Interrupted mid-check: its state is unknown.
                    core.discard(conn)
                    self._rejected(conn, CHECK, exc)
                    raise
                if failure is None:
                    verdict = OK
                else:
                    core.discard(conn)
                    self._rejected(conn, CHECK, failure)
                    conn = core.try_acquire()
                    continue
            if verdict == OK:
                if self._observe:
                    self._deliver(conn)
                return conn
            core.discard(conn)
            self._rejected(conn, verdict, None)
            conn = core.try_acquire()

    def _deliver(self, conn: Any) -> None:
        """The checkout hook on a connection about to go out; a hook that
        raises gets the connection given back first."""
        try:
            self._checked_out(conn)
        except BaseException:
            self._give_back_unused(conn)
            raise

    def _give_back_unused(self, conn: Any) -> None:
        """A connection handed out but never delivered: back into the pool
        as it was (no reset: nobody used it), or retired if the pool closed."""
        if not self._core.release(conn):
            self._retire(conn, CLOSED, None)

    def release(self, conn: Any, /) -> None:
        """Gives back a connection from :meth:`acquire`.

        It is reset, and retired instead of kept if the thresholds say so.
        Raises :class:`NotBorrowed` (changing nothing) for a connection not
        borrowed from this pool, or given back already.
        """
        self._release(conn, False)

    # The non-blocking halves of acquire() and release(), for pools whose
    # callers must not block (asyncio tasks): the policy layer waits, checks
    # and awaits resets itself, and calls these for everything else.

    def _take(self) -> Any:
        """A connection that may go out at once, or None.

        None when nothing is idle, the pool is closed, the call is not on the
        thread given to ``_set_thread``, or the connection taken needs a
        check first: that one is set aside in ``_unchecked`` for the
        caller's slow path, which checks it and hands it out or rejects it.
        A connection the verdicts retire goes to ``_rejected`` and the next
        idle one is tried.
        """
        if self._thread != _thread.get_ident() or self._unchecked is not None:
            return None
        core = self._core
        while True:
            try:
                conn = core.try_acquire()
            except PoolClosed:
                return None
            if conn is None:
                return None
            try:
                verdict = core.verdict(core.slot_of(conn), True)
            except BaseException:  # a signal between two bytecodes
                self._give_back_unused(conn)
                raise
            if verdict == OK:
                if self._observe:
                    self._deliver(conn)
                return conn
            if verdict == CHECK:
                self._unchecked = conn
                return None
            core.discard(conn)
            self._rejected(conn, verdict, None)

    def _give(self, conn: Any, /) -> Any:
        """:meth:`release`, except that a reset returning something (an
        awaitable) is not waited for: it is returned, and the caller awaits
        it, then calls ``_give_back(conn)``. None when the connection is
        back in the pool, or retired."""
        return self._release(conn, True)

    def _give_back(self, conn: Any, /) -> None:
        """The end of a release whose reset the caller awaited."""
        self._return(conn, self._core.slot_of(conn))

    def _release(self, conn: Any, defer: bool) -> Any:
        core = self._core
        with core._mutex:
            index = core._slot_of_borrowed(conn).index
            closed = core._closed
        if closed:
            core.release(conn)
            self._retire(conn, CLOSED, None)
            return None
        if self._observe:
            try:
                self._checking_in(conn)
            except BaseException as exc:
                # Interrupted before its reset: never pooled unreset.
                core.discard(conn)
                self._retire(conn, RESET_FAILED, exc)
                raise
        if self._reset_name is not None or self._reset_fn is not None:
            try:
                if self._reset_fn is not None:
                    result = self._reset_fn(conn)
                else:
                    result = getattr(conn, self._reset_name)()  # type: ignore[arg-type]
            except BaseException as exc:
                core.discard(conn)
                self._retire(conn, RESET_FAILED, exc)
                if not isinstance(exc, Exception):
                    raise
                return None
            if defer and result is not None:
                return result
        self._return(conn, index)
        return None

    def _return(self, conn: Any, index: int) -> None:
        core = self._core
        verdict = core.verdict(index, False)
        if verdict != OK:
            core.discard(conn)
            self._retire(conn, verdict, None)
        elif not core.release(conn):
            self._retire(conn, CLOSED, None)

    def connection(self, timeout: float | None = None) -> _Lease:
        """``with pool.connection() as conn:`` a connection from
        :meth:`acquire`, given back on exit (also when the block raises)."""
        return _Lease(self, timeout)

    def _lease(self, timeout: float | None, end: Callable[[Any, Any], object] | None) -> _Lease:
        """:meth:`connection`, for a pool whose block does more than give the
        connection back (psycopg's commits or rolls back): the block ends
        with ``end(conn, exc_type)`` (``exc_type`` None when the block did
        not raise), which must give the connection back; None: with
        :meth:`release`. The hand-out is the same, so a connection is in the
        block's keeping from the moment the core hands it out."""
        if end is not None and not callable(end):
            raise ConfigurationError("a lease end must be a callable or None")
        return _Lease(self, timeout, end)

    def _vet(self, conn: Any, timeout: float) -> BaseException | None:
        return None

    def _checked_out(self, conn: Any) -> None:
        pass

    def _checking_in(self, conn: Any) -> None:
        pass

    def _retire(self, conn: Any, reason: int, exc: BaseException | None) -> None:
        pass

    def _failed(self, exc: PoolError, timeout: float) -> BaseException:
        return exc

    def _rejected(self, conn: Any, reason: int, exc: BaseException | None) -> None:
        self._retire(conn, reason, exc)
