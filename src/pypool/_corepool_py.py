"""The pure-Python core: the readable specification of ``pypool._corepool``.

Both cores expose the same classes, functions and behaviour, and raise the same
exceptions (from :mod:`pypool.errors`). The native core mirrors the data
structures below one for one (slot states, the idle list with lazily dropped
stale entries, the empty-slot stack, segments of 64 slots), so the two hand out
the same slot for the same sequence of operations; the stateful tests
(``tests/core/test_core_stateful.py``) hold them to it. Change both in the same commit.

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

The waiting protocol
--------------------

Callers that find no idle connection wait in one FIFO queue: threads (a
``_Waiter`` with a lock they sleep on) and tickets (``WaiterTicket``, for
asyncio: a callback instead of a sleep). A connection that becomes available
(``release``, ``fill``, ``restore``, a cancelled ticket passing one on) is
handed directly to the first waiter if that waiter is owed one (a ticket, or
a thread that has waited longer than ``handoff_after``); otherwise it goes
idle and a waiter is woken to come and take it, in competition with callers
that did not wait (bounded unfairness: see :data:`DEFAULT_HANDOFF_AFTER`).
A caller that finds nothing idle while nobody is queued first lets other
threads run a few times (``_YIELDS``), retrying the pop after each: with the
GIL, a holder switched out while holding a connection can only give it back
once it runs again, and that is cheaper than a park and a wake-up.

What may run Python code inside an operation. Besides the hooks and callbacks
the core calls on purpose (``on_wait``, ``on_abandon``, a ticket's callback,
a gevent lock's ``release``), any allocation can run a garbage collection,
whose finalizers and weak-reference callbacks run arbitrary code (they may
give a connection back, abandon one, close the pool, or raise); a signal
handler (Ctrl-C) may raise; and any Python code lets another thread run.
The core is written so that none of this can break it:

1. *A waiter never sleeps while a connection it could take is idle.* Python
   code between "the free list is empty" and "I am queued" may release a
   connection that then sees no waiter: the waiter is made first and the pop
   is retried in the same step that queues it, and every wait slice, woken
   or not, retries the pop before sleeping again or timing out. Whenever
   more connections are idle than woken waiters are on their way to take,
   the next sleeping thread is woken or the next ticket handed one
   (``_serve_locked``): after a release, after a waiter leaves with a
   wake-up it did not use, and after a woken waiter was handed a different
   connection (its wake-up was overtaken and is passed on).
2. *Every exit unlinks.* A hook, callback or signal that raises after a
   waiter is queued (``on_wait``, a callback inside ``enqueue``, Ctrl-C in a
   wait) gives the waiter up (``_give_up``): it leaves the queue, and a
   connection handed to it meanwhile is passed on. ``close()`` and every
   hand-off complete whatever a callback raises, and re-raise after.
3. *Finalizers do no policy work.* A borrowed connection's weak-reference
   callback only records the death (``_finalized``); the slot is reaped and
   ``on_abandon`` runs before the next slow-path operation does anything
   (``_report``), never in the finalizer, where a lock the thread holds
   (Policy.lock) would deadlock, and never in ``try_acquire``, ``release``
   or ``discard``, which a finalizer may call (nor in a ticket's ``result``
   or ``cancel``, which run where a connection must not be stranded). A
   dead object's address is free for a new one at once.
4. *Deadlines are counted from the call*, hooks and allocations included.
5. *Python code never runs inside the core's critical section* on purpose:
   callbacks and hooks run after the mutex is released, with the state
   consistent; what is handed to them is settled first. Nothing is handed
   out twice: a slot goes to a borrower only through its state (IDLE ->
   BUSY, or straight to BUSY for a hand-off), under the mutex.

The mutex is re-entrant for one reason: garbage collection can run inside any
allocation, also one made while the mutex is held, and a finalizer it runs
may give a connection back (SQLAlchemy returns connections from a weak
reference's callback). Such a ``release()`` or ``discard()`` finds the mutex
held by its own thread, in the middle of an operation whose state is not
consistent: it checks what it can, records the call and returns at once; the
interrupted operation completes it when it leaves its critical section
(``_drain``), as does the next operation of any thread. Any other operation
run from there raises :class:`PoolError`. (Pure Python cannot keep a signal
handler's exception out of a critical section; the native core's critical
sections are C code, which signal handlers do not interrupt.)

The named call-out points are where an operation may run Python code it
does not own, each with the state consistent; the native core has the same
points under the same names, and a test-only hook
(:func:`_set_interleave_hook`) runs at each, never on the hot path:

- ``acquire.empty``: the free list was empty; the waiter is not made yet;
- ``acquire.queued``: the waiter is queued, ``on_wait`` has not run;
- ``enqueue.queued``: a ticket is queued, ``on_wait`` has not run;
- ``wait.sleep``: before each wait slice;
- ``wait.woken`` / ``wait.slice_out``: after a slice that a wake-up ended,
  or that ran out; the pop is retried next;
- ``close.waiter``: in ``close()``, between the wake-ups of two waiters;
- ``return.handoff``: a connection was just handed to a waiter (by a
  release, fill, restore or cancel), which is not woken yet;
- ``wake.callback``: before a ticket's callback;
- ``reap.on_abandon``: a dead slot was reaped; before its ``on_abandon``.

The hot path (``try_acquire``, and ``release`` with nobody waiting) takes the
mutex once and calls out to nothing.
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

from ._records import SlotInfo
from ._weak import keep_forever
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
    "SlotInfo",
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
#: How many times a caller that finds no idle connection lets other threads
#: run (and retries the pop) before it queues and sleeps: with the GIL, a
#: holder that was switched out while holding a connection can only give it
#: back once it runs again, and a few yields cost less than a park and a wake.
_YIELDS: Final = 16
#: Gives the processor (and the GIL) to another ready thread, if there is one.
_yield: Final = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))
#: Longest single sleep of a waiting thread: bounds how late a signal handler
#: (Ctrl-C) runs on platforms where a lock wait is not interrupted by signals.
_WAIT_SLICE: Final = 0.05

# Waiter states.
_WAITING: Final = 0
_HANDED: Final = 1  # a connection was handed to it
_CLOSED: Final = 2  # the pool closed while it waited
_DONE: Final = 3  # left the queue: took its connection, timed out or was cancelled

_clock = time.monotonic
#: The latest end of a lifetime (the native core counts in int64
#: nanoseconds, and saturates there): a longer lifetime never ends.
_NEVER: Final = (2**63 - 1) / 1e9

#: The named call-out points of the slow paths: the places where a core
#: operation may run Python code it does not own (an allocation that collects
#: garbage, a hook, a callback, a lock of gevent's) with its state consistent.
#: The test hook (:func:`_set_interleave_hook`) runs at each; the native core
#: has the same points under the same names.
_CALL_OUT_POINTS: Final = (
    "acquire.empty",  # the free list was empty; the waiter is not made yet
    "acquire.queued",  # the waiter is queued; on_wait has not run
    "enqueue.queued",  # a ticket is queued; on_wait has not run
    "close.waiter",  # close(): between the wake-ups of two waiters
    "return.handoff",  # a connection was just handed to a waiter, not yet woken
    "wake.callback",  # before a ticket's callback
    "reap.on_abandon",  # a dead slot was reaped; before its on_abandon
    "wait.sleep",  # before each wait slice
    "wait.woken",  # after a slice that a wake-up or a hand-off ended
    "wait.slice_out",  # after a slice that ran out; the pop is retried next
)

_interleave: Callable[[str, Any], object] | None = None


def _set_interleave_hook(hook: Callable[[str, Any], object] | None) -> Any:
    """For tests only: ``hook(point, core)`` runs at each of the named
    call-out points (:data:`_CALL_OUT_POINTS`), None turns it off. Returns
    the hook it replaces. The hot path never looks at it."""
    global _interleave
    if hook is not None and not callable(hook):
        raise ConfigurationError("the interleave hook must be callable or None")
    previous, _interleave = _interleave, hook
    return previous


class _Unraisable:
    """What ``sys.unraisablehook`` is given (the interpreter's own type has no
    public constructor)."""

    def __init__(self, exc: BaseException, message: str) -> None:
        self.exc_type = type(exc)
        self.exc_value = exc
        self.exc_traceback = exc.__traceback__
        self.err_msg = f"Exception ignored in {message}"
        self.object = None


def _unraisable(exc: BaseException, message: str) -> None:
    sys.unraisablehook(_Unraisable(exc, message))  # type: ignore[arg-type]


def _call_out(point: str, core: Any) -> None:
    """Runs the test hook at ``point``, if one is set."""
    if _interleave is not None:
        _interleave(point, core)


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

    __slots__ = ("__weakref__", "_callback", "_core", "_epoch")

    def __init__(self, core: CorePool, callback: Callable[[WaiterTicket], object]) -> None:
        super().__init__(None)
        self._core = core
        self._callback = callback
        self._epoch = core._epoch  # a ticket from before a fork is done in the child

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
        with self._core._locked("WaiterTicket.result", report=False):
            if self._epoch != self._core._epoch:
                raise PoolError("the ticket was made before a fork: it is done in this process")
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
        with core._locked("WaiterTicket.cancel", report=False):
            if self._epoch != core._epoch:  # made before a fork: not ours
                self._state = _DONE
                result = False
            elif self._state == _WAITING:
                core._leave_locked(self, calls)
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

    def time_out(self) -> PoolTimeout | None:
        """Gives up a wait that ran out of time: leaves the queue, counts a
        timeout in the statistics and returns the :class:`PoolTimeout` for the
        caller to raise, as :meth:`CorePool.acquire` raises it, with ``idle``
        counted at this decision. Returns None, the ticket left as it is, when
        it no longer waits: a connection handed to it meanwhile is then the
        caller's, from :meth:`result` (which also says if the pool closed).
        """
        core = self._core
        calls: list[Callable[[], object]] = []
        with core._locked("WaiterTicket.time_out", report=False):
            if self._epoch != core._epoch or self._state != _WAITING:
                return None
            idle = core._n_idle  # 0, unless the protocol is broken
            core._leave_locked(self, calls)
            core._timeouts += 1
            exc = core._timeout_locked(_clock() - self._started, idle)
        core._run(calls)
        return exc

    def __repr__(self) -> str:
        names = ("waiting", "handed", "closed", "done")
        return f"<WaiterTicket {names[self._state]}>"


_live_cores: weakref.WeakSet[CorePool] = weakref.WeakSet()


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
        self._epoch = 0  # forks survived: tickets from an older epoch are done
        self._reset_state()
        _live_cores.add(self)

    def _reset_state(self) -> None:
        # Re-entrant only so that a finalizer inside a critical section can
        # tell that it is nested (see the module docstring).
        self._mutex: Any = threading.RLock()  # Any: typeshed lacks RLock._is_owned
        self._deferred: deque[tuple[bool, Any, bool]] = deque()  # (release?, conn, taken)
        self._slots: list[_Slot] = []
        self._empty: list[int] = []  # stack of EMPTY slot indices
        self._idle: deque[int] = deque()  # idle list; may hold stale indices
        self._where: dict[int, int] = {}  # id(conn) -> slot index
        self._waiters: deque[_Waiter] = deque()
        self._n_notified = 0  # thread waiters queued and woken, not yet run
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
        with self._locked("CorePool.max_size"):
            self._check_open()
            self._max_size = value

    @property
    def max_waiting(self) -> int:
        """How many callers may wait at once (0: no bound); may be set."""
        return self._max_waiting

    @max_waiting.setter
    def max_waiting(self, value: int) -> None:
        value = _check_int("max_waiting", value, 0, 2**31 - 1)
        with self._locked("CorePool.max_waiting"):
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
        with self._locked("CorePool.advance_generation"):
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
        if self._dead or self._abandoned_slots:
            self._report()
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
        if self._mutex._is_owned():
            raise self._nested("CorePool.try_acquire")
        if self._deferred:
            self._drain()
        with self._mutex:
            if self._closed:
                raise PoolClosed("the pool is closed")
            conn = self._pop_locked()
        if self._deferred:
            self._drain()
        return conn

    def release(self, conn: Any, /) -> bool:
        """Gives back a borrowed connection.

        Returns True when the pool took it back, False when the pool is closed:
        then the slot is freed and the caller must close the connection.
        Raises :class:`NotBorrowed` (changing nothing) for an object that is
        not borrowed from this pool.
        """
        if self._mutex._is_owned():
            return self._defer(True, conn)
        if self._deferred:
            self._drain()
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
        self._run(calls)
        if self._deferred:
            self._drain()
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
        if self._mutex._is_owned():
            raise self._nested("CorePool.acquire")
        if self._deferred:
            self._drain()
        try:
            with self._mutex:
                if self._closed:
                    raise PoolClosed("the pool is closed")
                conn = self._pop_locked()
                if conn is None:
                    if wait_for == 0:
                        self._timeouts += 1
                        raise self._timeout_locked(0.0, 0)
                    self._check_waiting_locked()
        finally:
            if self._deferred:
                self._drain()
        if conn is not None:
            return conn
        started = _clock()  # the deadline counts from here, hooks included
        for _ in range(_YIELDS):
            if self._waiters:
                break  # others wait already: they are served first
            _yield()
            with self._mutex:
                if self._closed:
                    raise PoolClosed("the pool is closed")
                conn = self._pop_locked()
            if conn is not None:
                return conn
        if self._dead or self._abandoned_slots:
            self._report()
        # Call-out: making the waiter allocates, and an allocation may run
        # any Python code (a garbage collection and its finalizers), which
        # may give a connection back. The pop is retried once it is queued.
        if _interleave is not None:
            _interleave("acquire.empty", self)
        lock = _thread.allocate_lock()  # looked up now: gevent/eventlet patch it
        lock.acquire()
        waiter = _Waiter(lock)
        waiter._started = started
        try:
            with self._mutex:
                if self._closed:
                    raise PoolClosed("the pool is closed")
                conn = self._pop_locked()
                if conn is None:
                    self._check_waiting_locked()
                    self._waiters.append(waiter)
        finally:
            if self._deferred:
                self._drain()
        if conn is not None:
            return conn
        try:
            if _interleave is not None:
                _interleave("acquire.queued", self)
            if self._on_wait is not None:
                self._on_wait()
        except BaseException:
            self._give_up(waiter)  # no exit leaves a waiter queued
            raise
        return self._wait(waiter, wait_for)

    def _check_waiting_locked(self) -> None:
        if self._max_waiting and len(self._waiters) >= self._max_waiting:
            raise TooManyRequests(
                f"{len(self._waiters)} callers wait already (max_waiting={self._max_waiting})"
            )

    def _wait(self, waiter: _Waiter, wait_for: float | None) -> Any:
        """Sleeps in slices until the waiter is handed a connection, the pool
        closes or the deadline passes. Every slice, woken or not, ends with a
        retry of the pop: a waiter never sleeps again, nor times out, while a
        connection it could take is idle."""
        deadline = None if wait_for is None else waiter._started + wait_for
        lock = waiter._lock
        try:
            while True:
                if self._deferred:
                    self._drain()
                if self._dead or self._abandoned_slots:
                    self._report()
                pause = _WAIT_SLICE if deadline is None else min(deadline - _clock(), _WAIT_SLICE)
                if _interleave is not None:
                    _interleave("wait.sleep", self)
                woken = pause > 0 and lock.acquire(True, pause)
                if _interleave is not None:
                    _interleave("wait.woken" if woken else "wait.slice_out", self)
                calls: list[Callable[[], object]] = []
                timed_out: PoolTimeout | None = None
                with self._mutex:
                    if waiter._state == _HANDED:
                        waiter._state = _DONE
                        conn, waiter._conn = waiter._conn, None
                        return conn
                    if waiter._state == _CLOSED:
                        waiter._state = _DONE
                        raise PoolClosed("the pool was closed while waiting")
                    if woken and waiter._notified:
                        # Woken to retry: a connection was made idle for us.
                        # The lock is ours again, ready for the next wake-up.
                        waiter._notified = False
                        self._n_notified -= 1
                    conn = self._pop_locked()
                    if conn is not None:
                        self._leave_locked(waiter, calls)
                        self._count_wait(waiter)
                    elif deadline is not None and _clock() >= deadline:
                        idle = self._n_idle  # 0: the pop just failed
                        self._leave_locked(waiter, calls)
                        self._timeouts += 1
                        timed_out = self._timeout_locked(wait_for or 0.0, idle)
                try:
                    self._run(calls)
                except BaseException:
                    if conn is not None:
                        # A wake-up it passed on raised: this caller leaves
                        # with the exception, so the connection goes back.
                        self._give_back(conn)
                    raise
                if conn is not None:
                    return conn
                if timed_out is not None:
                    try:
                        raise timed_out
                    finally:
                        del timed_out  # held here, it would make a cycle with the frames above
        except BaseException:
            self._give_up(waiter)
            raise

    def _give_up(self, waiter: _Waiter) -> None:
        """A waiter's caller is leaving with an exception (a hook's, a signal
        handler's): unlinks it, and passes on a connection handed to it
        meanwhile or a wake-up it did not use."""
        calls: list[Callable[[], object]] = []
        with self._mutex:
            if waiter._state == _HANDED:  # handed at the moment we were interrupted
                conn, waiter._conn = waiter._conn, None
                waiter._state = _DONE
                self._return_locked(self._slot_of_borrowed(conn), conn, calls)
            elif waiter._state == _WAITING:
                self._leave_locked(waiter, calls)
            else:
                waiter._state = _DONE
        self._run(calls)
        if self._deferred:
            self._drain()

    def _timeout_locked(self, waited: float, idle: int) -> PoolTimeout:
        """The PoolTimeout of a caller the core just gave up on, with ``idle``,
        the idle connections counted at that decision (0, unless the protocol
        is broken)."""
        exc = PoolTimeout(
            f"no connection available after {waited:.3f} s "
            f"(size {self._size}/{self._max_size}, idle {idle}, "
            f"in use {self._n_busy}, connecting {self._n_creating}, "
            f"waiting {len(self._waiters)})"
        )
        exc.idle = idle
        return exc

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
        with self._locked("CorePool.enqueue"):
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
        try:
            if conn is None:
                if _interleave is not None:
                    _interleave("enqueue.queued", self)
                if self._on_wait is not None:
                    self._on_wait()
            else:
                callback(ticket)
        except BaseException:
            # The caller never gets the ticket, so it cannot cancel it: leave
            # the queue, or pass on the connection handed to it.
            self._give_up(ticket)
            raise
        return ticket

    # ------------------------------------------------------- connect workers

    def reserve(self) -> int | None:
        """Claims an EMPTY slot for a connect, if ``size < max_size``.

        Returns the slot index (now CREATING), or None at the limit. The
        caller must then :meth:`fill` or :meth:`abandon` it.
        """
        with self._locked("CorePool.reserve"):
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
        with self._locked("CorePool.fill"):
            s = self._slot_at(slot, CREATING)
            other = self._where.get(id(conn))
            if other is not None:
                o = self._slots[other]
                if (o.borrowed() if o.state == BUSY else o.conn) is conn:
                    raise InvalidSlot(f"this object is in the pool already (slot {other})")
                # Else the address of an object that died borrowed, its death
                # recorded but not reaped yet: the new object takes it over.
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
            s.expires = 0.0 if life is None else min(now + life, _NEVER)
            self._where[id(conn)] = s.index
            self._return_locked(s, conn, calls)
        self._run(calls)

    def abandon(self, slot: int) -> None:
        """Frees a reserved (CREATING) slot whose connect failed."""
        with self._locked("CorePool.abandon"):
            self._empty_locked(self._slot_at(slot, CREATING), CREATING)

    def discard(self, conn: Any, /) -> None:
        """Frees the slot of a borrowed connection that is broken or retired.

        The caller keeps the connection and closes it. Works after close().
        """
        if self._mutex._is_owned():
            self._defer(False, conn)
            return
        with self._mutex:
            s = self._slot_of_borrowed(conn)
            self._use_time += _clock() - s.checked_out
            self._empty_locked(s, BUSY)
        if self._deferred:
            self._drain()

    # ------------------------------------------------------------ maintenance

    def claim(self, slot: int) -> Any:
        """Takes one specific IDLE slot aside (-> RESERVED) and returns its
        connection, or None if that slot is not idle now (it was just borrowed).

        The caller must then :meth:`restore` or :meth:`retire` the slot.
        """
        with self._locked("CorePool.claim"):
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
        with self._locked("CorePool.restore"):
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
        with self._locked("CorePool.retire"):
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

    def slot_info(self, slot: int) -> SlotInfo:
        """A :class:`SlotInfo`, ``(state, created, checked_out, returned, uses,
        generation, expires)``, of a slot; times are :meth:`now` values (0.0:
        never)."""
        with self._mutex:
            s = self._slot_at(slot, None)
            return SlotInfo(
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
        if self._dead or self._abandoned_slots:
            self._report()
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
        with self._locked("CorePool.close"):
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
                if _interleave is not None:
                    calls.append(lambda: _call_out("close.waiter", self))
            self._n_notified = 0
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

    def _locked(self, name: str, report: bool = True) -> Any:
        """The mutex, for an operation that changes state; refused inside a
        finalizer that interrupted a critical section of this thread. With
        ``report``, deaths recorded since the last operation are reaped and
        reported first (see ``_report``)."""
        if self._mutex._is_owned():
            raise self._nested(name)
        if self._deferred:
            self._drain()
        if report and (self._dead or self._abandoned_slots):
            self._report()
        return self._mutex

    @staticmethod
    def _nested(name: str) -> PoolError:
        return PoolError(
            f"{name}() cannot run from a finalizer that interrupted a core "
            "operation in the same thread; only release() and discard() can"
        )

    def _defer(self, release: bool, conn: Any) -> bool:
        """release() or discard() from a finalizer that runs inside a critical
        section of this thread: checked as far as the interrupted state
        allows, recorded, and completed by ``_drain`` when that section ends.
        Returns what release() returns: False when the pool is closed."""
        self._slot_of_borrowed(conn)
        if any(pending is conn for _, pending, _ in self._deferred):
            raise NotBorrowed("this connection was returned already")
        taken = release and not self._closed
        self._deferred.append((release, conn, taken))
        return taken

    def _drain(self) -> None:
        """Completes the releases and discards that finalizers deferred (see
        ``_defer``). A no-op when called inside a critical section."""
        if self._mutex._is_owned():
            return  # the interrupted operation drains when it leaves
        calls: list[Callable[[], object]] = []
        with self._mutex:
            while self._deferred:
                release, conn, taken = self._deferred.popleft()
                try:
                    s = self._slot_of_borrowed(conn)
                except NotBorrowed:
                    continue  # reaped meanwhile
                if not release:
                    self._use_time += _clock() - s.checked_out
                    self._empty_locked(s, BUSY)
                elif self._closed and not taken:
                    self._empty_locked(s, BUSY)  # its caller was told to close it
                else:
                    # Closed meanwhile, after the caller was told True: it
                    # goes idle, where the next close() finds it.
                    s.returned = _clock()
                    self._use_time += s.returned - s.checked_out
                    self._return_locked(s, conn, calls)
        # These releases were a finalizer's: what their wake-ups raise is
        # reported as a finalizer's exception is, not raised into whichever
        # operation completes them.
        for call in calls:
            try:
                call()
            except BaseException as exc:
                _unraisable(exc, "a wake-up of a release deferred from a finalizer")

    def _give_back(self, conn: Any) -> None:
        """Returns a connection just handed to a caller that leaves with an
        exception instead."""
        calls: list[Callable[[], object]] = []
        with self._mutex:
            self._return_locked(self._slot_of_borrowed(conn), conn, calls)
        self._run(calls)

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
                if first._notified:
                    self._n_notified -= 1
                self._hand_out(s)
                s.conn = None if s.ref is not None else conn
                self._count_wait(first)
                first._state = _HANDED
                first._conn = conn
                if _interleave is not None:
                    calls.append(lambda: _call_out("return.handoff", self))
                self._wake(first, calls)
                # If it had been woken for an idle connection, that wake-up
                # was overtaken: it goes to the next waiter.
                self._serve_locked(calls)
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
        self._serve_locked(calls)

    def _serve_locked(self, calls: list[Callable[[], object]]) -> None:
        """While more connections are idle than woken thread waiters are on
        their way to take, wakes the next sleeping thread waiter to come and
        take one, or hands one to the next ticket (a ticket cannot come).

        This is what keeps "a waiter never sleeps while a connection it could
        take is idle" after every change: a connection made idle, a waiter
        that leaves with a wake-up it did not use, a woken waiter handed a
        different connection."""
        while self._n_idle > self._n_notified:
            for w in self._waiters:
                if isinstance(w, WaiterTicket):
                    conn = self._pop_locked()
                    assert conn is not None  # _n_idle > 0
                    self._waiters.remove(w)
                    self._count_wait(w)
                    w._state = _HANDED
                    w._conn = conn
                    if _interleave is not None:
                        calls.append(lambda: _call_out("return.handoff", self))
                    self._wake(w, calls)
                    break
                if not w._notified:
                    w._notified = True
                    self._n_notified += 1
                    w._lock.release()
                    break
            else:
                return  # every waiter is woken already

    def _leave_locked(self, waiter: _Waiter, calls: list[Callable[[], object]]) -> None:
        """Removes a waiter that gives up or takes a connection itself;
        passes on a wake-up it did not use."""
        self._waiters.remove(waiter)
        waiter._state = _DONE
        if waiter._notified:
            self._n_notified -= 1
            self._serve_locked(calls)

    def _count_wait(self, waiter: _Waiter) -> None:
        waited = _clock() - waiter._started
        self._waits += 1
        self._wait_time += waited
        if waited > self._wait_time_max:
            self._wait_time_max = waited

    def _wake(self, waiter: _Waiter, calls: list[Callable[[], object]]) -> None:
        """Wakes a waiter taken off the queue, whose state says why: a thread
        by releasing its lock (unless woken already), a ticket by its callback
        (collected in ``calls``, run after the mutex is released)."""
        if isinstance(waiter, WaiterTicket):
            callback = waiter._callback

            def wake() -> None:
                _call_out("wake.callback", self)
                callback(waiter)

            calls.append(wake)
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
        """A borrowed object died without being returned. This runs in a
        finalizer: in any thread, inside any allocation, maybe while this
        thread holds the mutex or a lock of the policy's. It only records the
        death (a list append needs no lock); ``_report`` reaps the slot and
        runs ``on_abandon`` in the next slow-path operation."""
        self._dead.append((index, ref))

    def _report(self) -> None:
        """Reaps the slots whose borrowed object died unreturned, then runs
        ``on_abandon`` for each (every one, whatever the others raise; the
        first exception is re-raised after). Runs before a slow-path
        operation does anything, and at every wait slice; never in a
        finalizer, nor in try_acquire(), release() or discard(), which a
        finalizer may call."""
        if self._dead and not self._mutex._is_owned():
            with self._mutex:
                self._reap_locked()
        if not self._abandoned_slots:
            return
        reaped, self._abandoned_slots = self._abandoned_slots, []
        error: BaseException | None = None
        if self._on_abandon is not None:
            for index in reaped:
                try:
                    _call_out("reap.on_abandon", self)
                    self._on_abandon(index)
                except BaseException as exc:
                    if error is None:
                        error = exc
        if error is not None:
            raise error

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
        """Runs the wake-up callbacks collected under the mutex, after
        releasing it. Each runs whatever the one before it raised; the first
        exception is re-raised at the end, when the operation is complete."""
        error: BaseException | None = None
        for call in calls:
            try:
                call()
            except BaseException as exc:
                if error is None:
                    error = exc
        if error is not None:
            raise error

    def _forget_after_fork(self) -> None:
        """In a child process: drop every slot without closing or finalizing
        its object (they belong to the parent), mark the parent's waiters and
        tickets done, start with fresh locks."""
        for w in self._waiters:
            w._state = _DONE
            w._conn = None
        self._epoch += 1
        for s in self._slots:
            held = s.conn if s.conn is not None else (s.ref() if s.ref is not None else None)
            if held is not None:
                keep_forever(held)
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
        try:
            raise error
        finally:
            del error  # held here, it would hold this frame, and the pool, in a cycle

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
