# The native core: pypool._corepool.
#
# The same classes, behaviour, docstrings and exceptions as the pure-Python
# core, src/pypool/_corepool_py.py, which is its readable specification: read
# that first.  Change both in the same commit; tests/test_core_*.py run every
# test on both, and the stateful tests compare them step by step.
#
# Layout
# ------
# * The lock-free part (slot states, the idle list, the empty-slot stack) is
#   plain C in pypool_freelist.h, so that it can be stress-tested without the
#   GIL under ThreadSanitizer (tests/c/stress_freelist.c).
# * Beside it, segments of `Slot` records hold what Python owns: the object,
#   the weak reference to it while borrowed, and the slot's times and counts.
#   They grow segment by segment with the free list and never move.
# * An open-addressing map from an object's address to its slot finds the slot
#   of a returned connection in O(1) for any type, including types that allow
#   neither weak references nor attributes.
#
# The hot path (try_acquire, release with nobody waiting) takes no lock and
# never releases the GIL: a pop or push on the free list, a map lookup, a
# clock read and a few stores.  Waiting is the only thing that blocks, on a
# lock from `_thread.allocate_lock()`, looked up at each wait so that gevent's
# and eventlet's monkey-patching is honoured; its `acquire` releases the GIL
# and lets signal handlers run (Ctrl-C).
#
# Everything else (waiters, tickets, reaping abandoned slots, fork) runs with
# the GIL held, which is what makes the Python-side state consistent; this
# module is therefore not marked free-threading compatible (pypool._core picks
# the Python core on an interpreter without the GIL).
#
# The waiting protocol (the Python core's docstring states it in full)
# --------------------------------------------------------------------
# C code between two calls into Python runs atomically under the GIL. What may
# run Python code: the hooks and callbacks called on purpose (on_wait,
# on_abandon, a ticket's callback, a lock's release, which gevent makes
# Python), and every allocation of a tracked object (a garbage collection, its
# finalizers and weak-reference callbacks), after which any other thread may
# have run any core operation. These are the named call-out points
# (_CALL_OUT_POINTS); at each, the state is consistent, and nothing read
# before it is trusted after it. Hence:
#
# 1. A waiter never sleeps while a connection it could take is idle. acquire()
#    makes its waiter (allocations) before it retries the pop and queues the
#    waiter, with no Python code in between; every wait slice retries the pop;
#    _serve wakes a sleeping thread or serves a ticket whenever more
#    connections are idle than woken waiters are on their way to take (after
#    a release, a waiter that leaves with an unused wake-up, a woken waiter
#    handed a different connection).
# 2. Every exit unlinks (_give_up); close() and every hand-off complete
#    whatever a callback raises, and re-raise after.
# 3. A finalizer only records a death and forgets the address (C only); the
#    reap and on_abandon run before the next slow-path operation (_report),
#    never in try_acquire(), release() or discard(), which a finalizer may call.
# 4. Deadlines count from the call, hooks and allocations included.
# 5. A slot goes to a borrower only through its state word; Python code runs
#    only after the state is settled.

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from cpython.object cimport PyObject, PyTypeObject, traverseproc, visitproc
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport Py_INCREF, Py_DECREF, Py_XDECREF
from cpython.weakref cimport PyWeakref_NewRef

cdef extern from "Python.h":
    object PyObject_CallMethodNoArgs(object obj, object name)
from libc.stdint cimport uint32_t, uint64_t, int64_t, uintptr_t
from libc.stdlib cimport calloc, free

import _thread
import math
import os
import time
import weakref

from pypool.errors import (
    ConfigurationError,
    InvalidSlot,
    NotBorrowed,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyRequests,
)
from pypool._records import SlotInfo

cdef extern from "pypool_freelist.h" nogil:
    ctypedef struct pfl_list:
        pass
    uint32_t PFL_NIL
    uint32_t PFL_SEG_SIZE
    uint32_t PFL_SEG_SHIFT
    uint32_t PFL_MAX_SEGS
    uint32_t PFL_MAX_SLOTS
    uint32_t PFL_EMPTY
    uint32_t PFL_CREATING
    uint32_t PFL_IDLE
    uint32_t PFL_BUSY
    uint32_t PFL_RESERVED
    int64_t pfl_now_ns()
    int64_t pfl_monotonic_ns()
    void pfl_yield()
    int pfl_init(pfl_list *fl, int fifo)
    void pfl_destroy(pfl_list *fl)
    int pfl_grow(pfl_list *fl)
    uint32_t pfl_capacity(pfl_list *fl)
    uint32_t pfl_state(pfl_list *fl, uint32_t i)
    int pfl_move(pfl_list *fl, uint32_t i, uint32_t frm, uint32_t to)
    uint32_t pfl_pop(pfl_list *fl)
    int pfl_push(pfl_list *fl, uint32_t i)
    uint32_t pfl_reserve(pfl_list *fl)
    int pfl_fill(pfl_list *fl, uint32_t i)
    int pfl_abandon(pfl_list *fl, uint32_t i)
    int pfl_discard(pfl_list *fl, uint32_t i)
    int pfl_claim(pfl_list *fl, uint32_t i)
    int pfl_unclaim(pfl_list *fl, uint32_t i)
    int pfl_retire(pfl_list *fl, uint32_t i)
    int pfl_make_empty(pfl_list *fl, uint32_t i, uint32_t frm)

__all__ = [
    "BUSY",
    "CHECK",
    "CLOSED",
    "EXPIRED",
    "IDLE_TOO_LONG",
    "OK",
    "REASONS",
    "RESET_FAILED",
    "SHRUNK",
    "STALE",
    "USED_UP",
    "PoolBase",
    "CREATING",
    "DEFAULT_HANDOFF_AFTER",
    "EMPTY",
    "IDLE",
    "MAX_SIZE",
    "RESERVED",
    "CorePool",
    "SlotInfo",
    "WaiterTicket",
]

EMPTY = 0
CREATING = 1
IDLE = 2
BUSY = 3
RESERVED = 4
_STATE_NAMES = ("EMPTY", "CREATING", "IDLE", "BUSY", "RESERVED")

# Verdicts on a connection at hand-out and at return (see the Python core).
cdef enum:
    _OK = 0
    _CHECK = 1
    _EXPIRED = 2
    _IDLE_TOO_LONG = 3
    _USED_UP = 4
    _STALE = 5
    _SHRUNK = 6
    _RESET_FAILED = 7
    _CLOSED_POOL = 8

OK = _OK
CHECK = _CHECK
EXPIRED = _EXPIRED
IDLE_TOO_LONG = _IDLE_TOO_LONG
USED_UP = _USED_UP
STALE = _STALE
SHRUNK = _SHRUNK
RESET_FAILED = _RESET_FAILED
CLOSED = _CLOSED_POOL
REASONS = (
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

SEGMENT = PFL_SEG_SIZE
MAX_SIZE = PFL_MAX_SLOTS
DEFAULT_HANDOFF_AFTER = 0.002
cdef double _WAIT_SLICE = 0.05
# How many times a caller that finds the free list empty lets other threads
# run (and retries the pop) before it queues and sleeps (see _acquire_slow).
cdef int _YIELDS = 16

# Waiter states.
cdef enum:
    _WAITING = 0
    _HANDED = 1
    _CLOSED = 2
    _DONE = 3

_clock = time.monotonic

# The named call-out points of the slow paths (see the Python core): where an
# operation may run Python code it does not own, with its state consistent.
# The test hook runs at each; the hot path never looks at it.
_CALL_OUT_POINTS = (
    "acquire.empty",
    "acquire.queued",
    "enqueue.queued",
    "close.waiter",
    "return.handoff",
    "wake.callback",
    "reap.on_abandon",
    "wait.sleep",
    "wait.woken",
    "wait.slice_out",
)

cdef object _interleave = None


def _set_interleave_hook(hook):
    """For tests only: ``hook(point, core)`` runs at each of the named
    call-out points (:data:`_CALL_OUT_POINTS`), None turns it off. Returns
    the hook it replaces. The hot path never looks at it."""
    global _interleave
    if hook is not None and not callable(hook):
        raise ConfigurationError("the interleave hook must be callable or None")
    previous = _interleave
    _interleave = hook
    return previous


cdef inline double _seconds(int64_t ns) noexcept:
    return <double>ns / 1e9


cdef double _check_seconds(str name, object value, bint or_none=False) except -1.0:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        what = "a number of seconds or None" if or_none else "a number of seconds"
        raise ConfigurationError(f"{name} must be {what}, not {type(value).__name__}")
    if not value >= 0:  # rejects NaN too
        raise ConfigurationError(f"{name} must be >= 0 seconds, not {value!r}")
    try:
        return <double>float(value)
    except OverflowError:  # an int too large for a float: no limit
        return math.inf


cdef double _check_timeout(object timeout) except -2.0:
    """-1.0 for None (no limit), else the timeout in seconds."""
    if timeout is None:
        return -1.0
    return _check_seconds("timeout", timeout, True)


cdef inline int64_t _ns(double seconds) noexcept:
    """Seconds to clock nanoseconds, saturating (inf: never)."""
    if seconds >= 9.2e9:
        return <int64_t>0x7FFFFFFFFFFFFFFF
    return <int64_t>(seconds * 1e9)


cdef inline int64_t _add_ns(int64_t a, int64_t b) noexcept:
    """a + b for non-negative clock values, saturating at the largest."""
    if b > <int64_t>0x7FFFFFFFFFFFFFFF - a:
        return <int64_t>0x7FFFFFFFFFFFFFFF
    return a + b


cdef object _check_int(str name, object value, object low, object high):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise ConfigurationError(f"{name} must be between {low} and {high}, not {value}")
    return value


# ----------------------------------------------------------------- slots

ctypedef struct Slot:
    PyObject *conn      # strong reference: always while IDLE or RESERVED
    PyObject *ref       # weak reference (owned), if the type allows them
    uintptr_t key       # the object's address; 0 once it was finalized
    int64_t created
    int64_t checked_out
    int64_t returned
    uint64_t uses
    int64_t generation
    int64_t expires     # end of its lifetime (0: none)


# ------------------------------------------------------ address -> slot map
# Linear probing, power-of-two capacity, at most half full, deletion by
# backward shift (no tombstones).  Key 0 marks a free cell.

ctypedef struct AddrMap:
    uintptr_t *keys
    uint32_t *values
    size_t mask
    size_t count


cdef inline size_t _hash(uintptr_t key, size_t mask) noexcept nogil:
    cdef uint64_t h = (<uint64_t>key >> 4) * <uint64_t>0x9E3779B97F4A7C15ULL
    return <size_t>(h ^ (h >> 29)) & mask


cdef int _map_init(AddrMap *m, size_t cells) except -1:
    m.keys = <uintptr_t *>calloc(cells, sizeof(uintptr_t))
    m.values = <uint32_t *>calloc(cells, sizeof(uint32_t))
    if m.keys == NULL or m.values == NULL:
        free(m.keys)
        free(m.values)
        m.keys = NULL
        m.values = NULL
        raise MemoryError()
    m.mask = cells - 1
    m.count = 0
    return 0


cdef void _map_free(AddrMap *m) noexcept:
    free(m.keys)
    free(m.values)
    m.keys = NULL
    m.values = NULL
    m.mask = 0
    m.count = 0


cdef inline uint32_t _map_get(AddrMap *m, uintptr_t key) noexcept nogil:
    cdef size_t i = _hash(key, m.mask)
    cdef uintptr_t k
    while True:
        k = m.keys[i]
        if k == key:
            return m.values[i]
        if k == 0:
            return PFL_NIL
        i = (i + 1) & m.mask


cdef int _map_put(AddrMap *m, uintptr_t key, uint32_t value) except -1:
    cdef AddrMap bigger
    cdef size_t i
    if (m.count + 1) * 2 > m.mask + 1:
        _map_init(&bigger, (m.mask + 1) * 2)
        for i in range(m.mask + 1):
            if m.keys[i] != 0:
                _map_put(&bigger, m.keys[i], m.values[i])
        _map_free(m)
        m[0] = bigger
    i = _hash(key, m.mask)
    while m.keys[i] != 0 and m.keys[i] != key:
        i = (i + 1) & m.mask
    if m.keys[i] == 0:
        m.count += 1
    m.keys[i] = key
    m.values[i] = value
    return 0


cdef void _map_del(AddrMap *m, uintptr_t key) noexcept:
    cdef size_t i = _hash(key, m.mask)
    cdef size_t j, home
    while m.keys[i] != key:
        if m.keys[i] == 0:
            return
        i = (i + 1) & m.mask
    # Backward shift: move later members of the cluster into the hole when
    # their home position does not lie (cyclically) between the hole and them.
    j = i
    while True:
        j = (j + 1) & m.mask
        if m.keys[j] == 0:
            break
        home = _hash(m.keys[j], m.mask)
        if (j > i and (home <= i or home > j)) or (j < i and (home <= i and home > j)):
            m.keys[i] = m.keys[j]
            m.values[i] = m.values[j]
            i = j
    m.keys[i] = 0
    m.count -= 1


# ---------------------------------------------------------------- waiters
# The wait queue is an intrusive doubly linked list of _Waiter objects: the
# head, a removal and a walk are C operations. `n_sleeping`, `n_notified` and
# `n_tickets` count the thread waiters not yet woken, those woken and not yet
# run, and the tickets, so that a release walks the queue only when a
# connection is idle that no woken waiter is on its way to take (`_serve`).

cdef class _Waiter:
    cdef object lock        # held while the waiter sleeps; released to wake it
    cdef int state
    cdef bint notified      # woken to retry, without a hand-off
    cdef object conn
    cdef int64_t started    # pfl_monotonic_ns()
    cdef bint is_ticket
    cdef _Waiter prev
    cdef _Waiter next

    def __cinit__(self, *args):
        self.lock = None
        self.state = _WAITING
        self.notified = False
        self.conn = None
        self.started = pfl_monotonic_ns()
        self.is_ticket = False


cdef class WaiterTicket(_Waiter):
    """A place in the wait queue that does not block a thread (for asyncio).

    Made by :meth:`CorePool.enqueue`. When a connection is handed to the ticket
    or the pool closes, ``callback(ticket)`` runs once, in whatever thread did
    that (use ``loop.call_soon_threadsafe`` in it); then :meth:`result` gives
    the connection. A ticket that is no longer wanted must be cancelled: that
    removes it from the queue, or passes on a connection already handed to it.
    """

    cdef CorePool _core
    cdef object _callback
    cdef int64_t _epoch            # a ticket from before a fork is done in the child
    cdef object __weakref__

    def __init__(self, CorePool core, callback):
        self._core = core
        self._callback = callback
        self._epoch = core._epoch
        self.is_ticket = True

    @property
    def done(self):
        """True once the ticket no longer waits (handed, closed or cancelled)."""
        return self.state != _WAITING

    def result(self):
        """The connection handed to this ticket; the caller now owns it.

        Raises :class:`PoolClosed` if the pool closed while the ticket waited,
        and :class:`PoolError` if the ticket still waits or its connection was
        taken or passed on already.
        """
        if self._epoch != self._core._epoch:
            raise PoolError("the ticket was made before a fork: it is done in this process")
        if self.state == _HANDED:
            conn = self.conn
            self.conn = None
            self.state = _DONE
            return conn
        if self.state == _CLOSED:
            raise PoolClosed("the pool was closed while waiting")
        if self.state == _WAITING:
            raise PoolError("the ticket is still waiting")
        raise PoolError("the ticket's connection was taken or passed on already")

    def cancel(self, timed_out=False):
        """Leaves the queue; passes on a connection handed but not yet taken.

        ``timed_out`` counts the cancellation as a timeout in the statistics.
        Returns True if the ticket was still waiting or held an untaken
        connection, False if it had finished already.
        """
        cdef CorePool core = self._core
        cdef uint32_t i
        if self._epoch != core._epoch:  # made before a fork: not ours
            self.state = _DONE
            return False
        if self.state == _WAITING:
            core._leave(self)
            if timed_out:
                core.timeouts += 1
            return True
        if self.state == _HANDED:
            conn = self.conn
            self.conn = None
            self.state = _DONE
            i = core._slot_of_borrowed(conn)
            core._return(i, conn)
            return True
        self.state = _DONE
        return False

    def time_out(self):
        """Gives up a wait that ran out of time: leaves the queue, counts a
        timeout in the statistics and returns the :class:`PoolTimeout` for the
        caller to raise, as :meth:`CorePool.acquire` raises it, with ``idle``
        counted at this decision. Returns None, the ticket left as it is, when
        it no longer waits: a connection handed to it meanwhile is then the
        caller's, from :meth:`result` (which also says if the pool closed).
        """
        cdef CorePool core = self._core
        cdef int idle
        if self._epoch != core._epoch or self.state != _WAITING:
            return None
        idle = core.n_idle  # 0, unless the protocol is broken
        core._leave(self)  # a ticket passes on no wake-up: no call-out
        core.timeouts += 1
        return core._timeout(_seconds(pfl_monotonic_ns() - self.started), idle)

    def __repr__(self):
        names = ("waiting", "handed", "closed", "done")
        return f"<WaiterTicket {names[self.state]}>"


cdef class _Reaper:
    """The weak-reference callback of one slot's object."""

    cdef object core_ref
    cdef uint32_t index

    def __cinit__(self, core_ref, uint32_t index):
        self.core_ref = core_ref
        self.index = index

    def __call__(self, ref):
        cdef CorePool core = self.core_ref()
        if core is not None:
            core._finalized(self.index, ref)


_live_cores = weakref.WeakSet()


def _after_fork_in_child():
    for core in list(_live_cores):
        (<CorePool>core)._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ------------------------------------------------------------------- pool

cdef class CorePool:
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

    cdef pfl_list *fl
    cdef Slot **segs
    cdef uint32_t nsegs
    cdef AddrMap where
    cdef int _max_size
    cdef int _max_waiting
    cdef bint _lifo
    cdef bint _closed
    cdef double _handoff_after
    cdef int64_t handoff_after_ns
    cdef object _on_wait
    cdef object _on_abandon
    cdef _Waiter wq_head           # the wait queue, oldest first
    cdef _Waiter wq_tail
    cdef Py_ssize_t n_waiting
    cdef Py_ssize_t n_sleeping     # thread waiters not woken yet
    cdef Py_ssize_t n_notified     # thread waiters woken, not yet run
    cdef Py_ssize_t n_tickets      # tickets queued
    cdef int _size
    cdef int n_idle
    cdef int n_busy
    cdef int n_creating
    cdef int n_reserved
    cdef uint64_t acquires
    cdef uint64_t waits
    cdef double wait_time
    cdef double wait_time_max
    cdef uint64_t timeouts
    cdef uint64_t abandoned
    cdef int64_t use_time_ns       # borrowed, over every return and discard
    cdef int64_t _generation
    cdef double _max_idle
    cdef int64_t max_idle_ns       # 0: off
    cdef int _min_size
    cdef uint64_t _max_uses        # 0: off
    cdef object _check_after
    cdef int64_t check_after_ns    # -1: never
    cdef list dead                 # [(slot, ref)] finalized while borrowed
    cdef list abandoned_slots      # reaped; on_abandon not yet called
    cdef int64_t _epoch            # forks survived: older tickets are done
    cdef object self_ref
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self.fl = NULL
        self.segs = NULL

    def __init__(
        self,
        max_size,
        *,
        max_waiting=0,
        lifo=True,
        handoff_after=DEFAULT_HANDOFF_AFTER,
        on_wait=None,
        on_abandon=None,
    ):
        self._max_size = _check_int("max_size", max_size, 1, MAX_SIZE)
        self._max_waiting = _check_int("max_waiting", max_waiting, 0, 2**31 - 1)
        if handoff_after is None:
            raise ConfigurationError("handoff_after must be a number of seconds")
        self._handoff_after = _check_timeout(handoff_after)
        self.handoff_after_ns = _ns(self._handoff_after)
        if on_wait is not None and not callable(on_wait):
            raise ConfigurationError("on_wait must be callable or None")
        if on_abandon is not None and not callable(on_abandon):
            raise ConfigurationError("on_abandon must be callable or None")
        if self.fl != NULL:
            raise PoolError("CorePool.__init__ called twice")
        self._lifo = bool(lifo)
        self._on_wait = on_wait
        self._on_abandon = on_abandon
        self._closed = False
        self._generation = 0
        self._max_idle = 0.0
        self.max_idle_ns = 0
        self._min_size = 0
        self._max_uses = 0
        self._check_after = None
        self.check_after_ns = -1
        self.self_ref = weakref.ref(self)
        self._epoch = 0
        self._reset_state()
        _live_cores.add(self)

    cdef int _reset_state(self) except -1:
        self.fl = <pfl_list *>calloc(1, sizeof(pfl_list))
        self.segs = <Slot **>calloc(PFL_MAX_SEGS, sizeof(Slot *))
        if self.fl == NULL or self.segs == NULL or pfl_init(self.fl, 0 if self._lifo else 1) != 0:
            raise MemoryError()
        self.nsegs = 0
        _map_init(&self.where, 64)
        self.wq_head = None
        self.wq_tail = None
        self.n_waiting = 0
        self.n_sleeping = 0
        self.n_notified = 0
        self.n_tickets = 0
        self._size = 0
        self.n_idle = 0
        self.n_busy = 0
        self.n_creating = 0
        self.n_reserved = 0
        self.acquires = 0
        self.waits = 0
        self.wait_time = 0.0
        self.wait_time_max = 0.0
        self.timeouts = 0
        self.abandoned = 0
        self.use_time_ns = 0
        self.dead = []
        self.abandoned_slots = []
        return 0

    cdef void _free_storage(self, bint keep_objects) noexcept:
        """Frees the C storage; drops the references the slots own, or (after
        a fork) keeps their objects alive forever instead."""
        cdef uint32_t s, k
        cdef Slot *slot
        if self.segs != NULL:
            for s in range(self.nsegs):
                for k in range(PFL_SEG_SIZE):
                    slot = &self.segs[s][k]
                    if keep_objects:
                        # An extra reference never dropped: the child must not
                        # finalize the parent's connections, ever.
                        if slot.conn != NULL:
                            Py_INCREF(<object>slot.conn)
                        elif slot.ref != NULL and slot.key != 0:
                            Py_INCREF(<object>(<PyObject *>slot.key))
                    Py_XDECREF(slot.ref)  # first: no callback when the object goes
                    Py_XDECREF(slot.conn)
                free(self.segs[s])
            free(self.segs)
            self.segs = NULL
        self.nsegs = 0
        if self.fl != NULL:
            pfl_destroy(self.fl)
            free(self.fl)
            self.fl = NULL
        _map_free(&self.where)

    def __dealloc__(self):
        self._free_storage(False)

    # ------------------------------------------------------------ properties

    @property
    def max_size(self):
        """The soft limit on slots in use; may be set at any time."""
        return self._max_size

    @max_size.setter
    def max_size(self, value):
        value = _check_int("max_size", value, 1, MAX_SIZE)
        self._before()
        self._check_open()
        self._max_size = value

    @property
    def max_waiting(self):
        """How many callers may wait at once (0: no bound); may be set."""
        return self._max_waiting

    @max_waiting.setter
    def max_waiting(self, value):
        value = _check_int("max_waiting", value, 0, 2**31 - 1)
        self._before()
        self._check_open()
        self._max_waiting = value

    @property
    def lifo(self):
        return self._lifo

    @property
    def handoff_after(self):
        return self._handoff_after

    @property
    def closed(self):
        return self._closed

    @property
    def generation(self):
        """The pool's generation; stamped on every slot when it is reserved."""
        return self._generation

    def advance_generation(self):
        """Starts a new generation (for drain and invalidate) and returns it:
        every slot reserved before now is of an older one (STALE)."""
        self._before()
        self._check_open()
        self._generation += 1
        return self._generation

    @property
    def max_idle(self):
        """Seconds idle after which a connection is retired at hand-out
        instead of handed out (0: never); may be set."""
        return self._max_idle

    @max_idle.setter
    def max_idle(self, value):
        self._max_idle = _check_seconds("max_idle", value)
        self.max_idle_ns = _ns(self._max_idle)

    @property
    def min_size(self):
        """Connections kept however long idle: a connection idle past
        ``max_idle`` is retired at hand-out only while more than this many
        slots are in use; may be set."""
        return self._min_size

    @min_size.setter
    def min_size(self, value):
        self._min_size = _check_int("min_size", value, 0, MAX_SIZE)

    @property
    def max_uses(self):
        """Hand-outs after which a connection is retired (0: no limit); may
        be set."""
        return self._max_uses

    @max_uses.setter
    def max_uses(self, value):
        self._max_uses = _check_int("max_uses", value, 0, 2**62)

    @property
    def check_after(self):
        """Seconds idle after which a connection must be checked before it is
        handed out (None: never); may be set."""
        return self._check_after

    @check_after.setter
    def check_after(self, value):
        if value is None:
            self._check_after = None
            self.check_after_ns = -1
        else:
            self._check_after = _check_seconds("check_after", value)
            self.check_after_ns = _ns(self._check_after)

    def verdict(self, slot, checkout):
        """What the thresholds say of the connection in ``slot``, at hand-out
        (``checkout``) or at return: OK, CHECK, or a reason to retire it."""
        return self._verdict(self._slot_at(slot, PFL_NIL), checkout, pfl_now_ns())

    cdef int _verdict(self, uint32_t i, bint checkout, int64_t now) noexcept:
        cdef Slot *s = self._slot(i)
        cdef int64_t idle
        if s.expires and now >= s.expires:
            return _EXPIRED
        # At hand-out ``uses`` counts this hand-out already.
        if self._max_uses and s.uses >= self._max_uses + checkout:
            return _USED_UP
        if s.generation < self._generation:
            return _STALE
        if checkout:
            idle = now - s.returned
            if self.max_idle_ns and idle >= self.max_idle_ns and self._size > self._min_size:
                return _IDLE_TOO_LONG
            if self.check_after_ns >= 0 and idle >= self.check_after_ns:
                return _CHECK
        elif self._size > self._max_size:
            return _SHRUNK
        return _OK

    @property
    def size(self):
        """Slots in use: idle, borrowed, being connected or claimed."""
        return self._size

    @property
    def idle(self):
        return self.n_idle

    @property
    def in_use(self):
        return self.n_busy

    @property
    def connecting(self):
        """Slots reserved for a connect that has not finished (CREATING)."""
        return self.n_creating

    @property
    def claimed(self):
        """Idle slots taken aside by :meth:`claim` (RESERVED)."""
        return self.n_reserved

    @property
    def waiting(self):
        """Callers (threads and tickets) waiting for a connection now."""
        return self.n_waiting

    @staticmethod
    def now():
        """The core's clock, in seconds; the base of every slot time."""
        return _seconds(pfl_now_ns())

    def stats(self):
        """Counters since creation (or since a fork) and current gauges."""
        self._before()
        return {
            "acquires": self.acquires,
            "waits": self.waits,
            "wait_time": self.wait_time,
            "wait_time_max": self.wait_time_max,
            "timeouts": self.timeouts,
            "abandoned": self.abandoned,
            "use_time": _seconds(self.use_time_ns),
            "size": self._size,
            "idle": self.n_idle,
            "in_use": self.n_busy,
            "connecting": self.n_creating,
            "claimed": self.n_reserved,
            "waiting": self.n_waiting,
            "max_size": self._max_size,
            "max_waiting": self._max_waiting,
        }

    # -------------------------------------------------------------- hot path

    cdef inline Slot *_slot(self, uint32_t i) noexcept:
        return &self.segs[i >> PFL_SEG_SHIFT][i & (PFL_SEG_SIZE - 1)]

    cdef inline object _pop(self):
        """Takes the next idle slot (IDLE -> BUSY) and returns its object,
        or None."""
        cdef uint32_t i = pfl_pop(self.fl)
        if i == PFL_NIL:
            return None
        return self._take(i)

    cdef inline object _take(self, uint32_t i):
        """The object of slot ``i``, just popped (now BUSY): stamp, count,
        and keep only a weak reference where the type allows one."""
        cdef Slot *s = self._slot(i)
        self.n_idle -= 1
        self.n_busy += 1
        s.checked_out = pfl_now_ns()
        s.uses += 1
        self.acquires += 1
        conn = <object>s.conn
        if s.ref != NULL:
            # Keep only the weak reference while borrowed.
            Py_DECREF(conn)
            s.conn = NULL
        return conn

    @cython.always_allow_keywords(False)
    def try_acquire(self):
        """An idle connection, now, or None. Never waits."""
        if self._closed:
            raise PoolClosed("the pool is closed")
        return self._pop()

    @cython.always_allow_keywords(False)
    def release(self, conn, /):
        """Gives back a borrowed connection.

        Returns True when the pool took it back, False when the pool is closed:
        then the slot is freed and the caller must close the connection.
        Raises :class:`NotBorrowed` (changing nothing) for an object that is
        not borrowed from this pool.
        """
        return self._release(conn, pfl_now_ns()) == 1

    cdef int _release(self, object conn, int64_t now) except -1:
        """release(): 1 when taken back, 0 when the pool is closed."""
        cdef uint32_t i = _map_get(&self.where, <uintptr_t><PyObject *>conn)
        cdef Slot *s
        if i == PFL_NIL or pfl_state(self.fl, i) != PFL_BUSY:
            i = self._slot_of_borrowed(conn)  # raises with the right message
        s = self._slot(i)
        if self._closed:
            self._empty(i, PFL_BUSY)
            return 0
        s.returned = now
        self.use_time_ns += now - s.checked_out
        if self.n_waiting == 0:
            if s.ref != NULL:
                Py_INCREF(conn)
                s.conn = <PyObject *>conn
            pfl_push(self.fl, i)
            self.n_busy -= 1
            self.n_idle += 1
        else:
            self._return(i, conn)
        return 1

    def acquire(self, timeout=None):
        """A connection, waiting up to ``timeout`` seconds (None: no limit).

        Raises :class:`PoolTimeout` when none came in time,
        :class:`TooManyRequests` when ``max_waiting`` callers wait already, and
        :class:`PoolClosed` when the pool is or gets closed. A signal handler's
        exception (Ctrl-C) interrupts the wait; a connection handed to the
        waiter at that moment is passed on, never lost.
        """
        cdef double wait_for = _check_timeout(timeout)
        if self._closed:
            raise PoolClosed("the pool is closed")
        conn = self._pop()
        if conn is not None:
            return conn
        return self._acquire_slow(wait_for)

    cdef object _acquire_slow(self, double wait_for):
        # The free list was empty. Everything from here to the enqueue that
        # may run Python code (the allocations: a garbage collection runs
        # finalizers, which may give a connection back) comes first; then the
        # pop is retried and the waiter queued in one step, with no Python
        # code in between, so that no release can slip through unseen.
        cdef _Waiter waiter
        cdef int64_t started = pfl_monotonic_ns()  # the deadline counts from here
        cdef int spins = 0
        if wait_for == 0.0:
            self.timeouts += 1
            raise self._timeout(0.0, 0)
        # With the GIL, a holder that was switched out while holding a
        # connection can only give it back once it runs again: let it run (a
        # few yields of the GIL, retrying the pop after each) rather than pay
        # for a park and a wake-up. Not when others wait already: they are
        # served first.
        while spins < _YIELDS and not self.n_waiting:
            spins += 1
            with nogil:
                pfl_yield()
            if self._closed:
                raise PoolClosed("the pool is closed")
            conn = self._pop()
            if conn is not None:
                return conn
        self._before()
        self._check_waiting()
        if _interleave is not None:
            _interleave("acquire.empty", self)
        lock = _thread.allocate_lock()  # looked up now: gevent/eventlet patch it
        lock.acquire()
        waiter = _Waiter()
        waiter.lock = lock
        waiter.started = started
        if self._closed:
            raise PoolClosed("the pool is closed")
        conn = self._pop()
        if conn is not None:
            return conn
        self._check_waiting()
        self._enqueue(waiter)
        try:
            if _interleave is not None:
                _interleave("acquire.queued", self)
            if self._on_wait is not None:
                self._on_wait()
        except BaseException:
            self._give_up(waiter)  # no exit leaves a waiter queued
            raise
        return self._wait(waiter, wait_for)

    cdef int _check_waiting(self) except -1:
        if self._max_waiting and self.n_waiting >= self._max_waiting:
            raise TooManyRequests(
                f"{self.n_waiting} callers wait already (max_waiting={self._max_waiting})"
            )
        return 0

    cdef object _wait(self, _Waiter waiter, double wait_for):
        # Sleeps in slices until the waiter is handed a connection, the pool
        # closes or the deadline passes. Every slice, woken or not, ends with
        # a retry of the pop: a waiter never sleeps again, nor times out,
        # while a connection it could take is idle.
        # The deadline counts from the call (waiter.started: the moment the
        # free list was found empty), hooks and allocations included.
        cdef int64_t deadline = -1 if wait_for < 0 else _add_ns(waiter.started, _ns(wait_for))
        cdef double pause
        cdef bint woken
        cdef int idle
        lock = waiter.lock
        try:
            while True:
                self._before()
                if deadline < 0:
                    pause = _WAIT_SLICE
                else:
                    pause = min(_seconds(deadline - pfl_monotonic_ns()), _WAIT_SLICE)
                # A signal that came while this thread was not asleep (between
                # slices, or delivered to another thread) did not cut a sleep
                # short, and compiled code never reaches the interpreter's own
                # check between bytecodes: check here, once a slice, or a
                # Ctrl-C during a wait without a deadline is never seen. Its
                # handler is Python code, like the hook below.
                PyErr_CheckSignals()  # declared except -1: a handler's exception propagates
                if _interleave is not None:
                    _interleave("wait.sleep", self)
                woken = pause > 0 and lock.acquire(True, pause)
                if _interleave is not None:
                    _interleave("wait.woken" if woken else "wait.slice_out", self)
                # The decision below is made with no Python code before it.
                if waiter.state == _HANDED:
                    waiter.state = _DONE
                    conn = waiter.conn
                    waiter.conn = None
                    return conn
                if waiter.state == _CLOSED:
                    waiter.state = _DONE
                    raise PoolClosed("the pool was closed while waiting")
                if woken and waiter.notified:
                    # Woken to retry: a connection was made idle for us. The
                    # lock is ours again, ready for the next wake-up.
                    waiter.notified = False
                    self.n_notified -= 1
                    self.n_sleeping += 1
                conn = self._pop()
                if conn is not None:
                    self._count_wait(waiter)
                    try:
                        self._leave(waiter)
                    except BaseException:
                        # A wake-up it passed on raised: this caller leaves
                        # with the exception, so the connection goes back.
                        self._return(self._slot_of_borrowed(conn), conn)
                        raise
                    return conn
                if deadline >= 0 and pfl_monotonic_ns() >= deadline:
                    idle = self.n_idle  # 0: the pop just failed
                    self._leave(waiter)
                    self.timeouts += 1
                    raise self._timeout(wait_for, idle)
        except BaseException:
            self._give_up(waiter)
            raise

    cdef int _give_up(self, _Waiter waiter) except -1:
        """A waiter's caller is leaving with an exception (a hook's, a signal
        handler's): unlinks it, and passes on a connection handed to it
        meanwhile or a wake-up it did not use."""
        if waiter.state == _HANDED:  # handed at the moment we were interrupted
            conn = waiter.conn
            waiter.conn = None
            waiter.state = _DONE
            self._return(self._slot_of_borrowed(conn), conn)
        elif waiter.state == _WAITING:
            self._leave(waiter)
        else:
            waiter.state = _DONE
        return 0

    cdef object _timeout(self, double waited, int idle):
        """The PoolTimeout of a caller the core just gave up on, with ``idle``,
        the idle connections counted at that decision (0, unless the protocol
        is broken)."""
        exc = PoolTimeout(
            f"no connection available after {waited:.3f} s "
            f"(size {self._size}/{self._max_size}, idle {idle}, "
            f"in use {self.n_busy}, connecting {self.n_creating}, "
            f"waiting {self.n_waiting})"
        )
        exc.idle = idle
        return exc

    # ----------------------------------------------------------- asyncio use

    def enqueue(self, callback):
        """Takes a place in the wait queue without blocking; see WaiterTicket.

        If a connection is idle now it is handed to the ticket at once (and
        ``callback`` runs before this returns). Raises TooManyRequests and
        PoolClosed as :meth:`acquire` does.
        """
        if not callable(callback):
            raise ConfigurationError("callback must be callable")
        self._before()
        cdef WaiterTicket ticket = WaiterTicket(self, callback)
        if self._closed:
            raise PoolClosed("the pool is closed")
        conn = self._pop()
        if conn is None:
            self._check_waiting()
            self._enqueue(ticket)
        else:
            ticket.state = _HANDED
            ticket.conn = conn
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

    def reserve(self):
        """Claims an EMPTY slot for a connect, if ``size < max_size``.

        Returns the slot index (now CREATING), or None at the limit. The
        caller must then :meth:`fill` or :meth:`abandon` it.
        """
        cdef uint32_t i
        self._before()
        self._check_open()
        if self._size >= self._max_size:
            return None
        i = pfl_reserve(self.fl)
        if i == PFL_NIL:
            self._grow()
            i = pfl_reserve(self.fl)
            if i == PFL_NIL:
                raise MemoryError()
        self._size += 1
        self.n_creating += 1
        # Stamped now, not at fill(): a connect that began before
        # advance_generation() makes a connection of the old generation.
        self._slot(i).generation = self._generation
        return i

    cdef int _grow(self) except -1:
        cdef Slot *seg
        if self.nsegs >= PFL_MAX_SEGS:
            raise MemoryError()
        seg = <Slot *>calloc(PFL_SEG_SIZE, sizeof(Slot))
        if seg == NULL:
            raise MemoryError()
        if pfl_grow(self.fl) != 0 or pfl_capacity(self.fl) != (self.nsegs + 1) * PFL_SEG_SIZE:
            free(seg)
            raise MemoryError()
        self.segs[self.nsegs] = seg
        self.nsegs += 1
        return 0

    def fill(self, slot, conn, lifetime=None):
        """Puts a new connection into a reserved (CREATING) slot.

        It becomes IDLE, or goes straight to a waiter. ``lifetime`` (seconds)
        ends it that long after now (see :meth:`verdict`). If the pool was
        closed meanwhile the slot is freed and :class:`PoolClosed` raised: the
        caller must close the connection.
        """
        if conn is None:
            raise TypeError("a connection cannot be None")
        self._before()
        cdef double life = -1.0 if lifetime is None else _check_seconds("lifetime", lifetime)
        cdef uint32_t i = self._slot_at(slot, PFL_CREATING)
        cdef uint32_t other
        cdef Slot *s
        # The weak reference is made first: making it allocates, and what that
        # may run (a finalizer that closes the pool) is seen by the checks
        # below, which lead to the fill with no Python code in between.
        ref = self._weakref_for(conn, i)
        i = self._slot_at(slot, PFL_CREATING)
        other = _map_get(&self.where, <uintptr_t><PyObject *>conn)
        if other != PFL_NIL:
            raise InvalidSlot(f"this object is in the pool already (slot {other})")
        if self._closed:
            self._empty(i, PFL_CREATING)
            raise PoolClosed("the pool was closed while connecting")
        s = self._slot(i)
        Py_INCREF(conn)
        s.conn = <PyObject *>conn
        s.key = <uintptr_t><PyObject *>conn
        if ref is not None:
            Py_INCREF(ref)
            s.ref = <PyObject *>ref
        s.created = s.returned = pfl_now_ns()
        s.checked_out = 0
        s.uses = 0
        # created > 0, so never 0; saturating: a very long lifetime never ends.
        s.expires = 0 if life < 0 else _add_ns(s.created, _ns(life))
        _map_put(&self.where, s.key, i)
        self._return(i, conn)

    def abandon(self, slot):
        """Frees a reserved (CREATING) slot whose connect failed."""
        self._before()
        self._empty(self._slot_at(slot, PFL_CREATING), PFL_CREATING)

    @cython.always_allow_keywords(False)
    def discard(self, conn, /):
        """Frees the slot of a borrowed connection that is broken or retired.

        The caller keeps the connection and closes it. Works after close().
        """
        cdef uint32_t i = self._slot_of_borrowed(conn)
        self.use_time_ns += pfl_now_ns() - self._slot(i).checked_out
        self._empty(i, PFL_BUSY)

    # ------------------------------------------------------------ maintenance

    def claim(self, slot):
        """Takes one specific IDLE slot aside (-> RESERVED) and returns its
        connection, or None if that slot is not idle now (it was just borrowed).

        The caller must then :meth:`restore` or :meth:`retire` the slot.
        """
        self._before()
        self._check_open()
        cdef uint32_t i = self._slot_at(slot, PFL_NIL)
        if not pfl_claim(self.fl, i):
            return None
        self.n_idle -= 1
        self.n_reserved += 1
        return <object>self._slot(i).conn

    def restore(self, slot):
        """Puts a claimed (RESERVED) slot back: IDLE again, or to a waiter.

        Returns False if the pool was closed meanwhile: the slot is freed and
        the caller must close the connection.
        """
        self._before()
        cdef uint32_t i = self._slot_at(slot, PFL_RESERVED)
        if self._closed:
            self._empty(i, PFL_RESERVED)
            return False
        self._return(i, <object>self._slot(i).conn)
        return True

    def retire(self, slot):
        """Frees a claimed (RESERVED) slot and returns its connection, which
        the caller must close."""
        self._before()
        cdef uint32_t i = self._slot_at(slot, PFL_RESERVED)
        conn = <object>self._slot(i).conn
        self._empty(i, PFL_RESERVED)
        return conn

    @cython.always_allow_keywords(False)
    def slot_of(self, conn, /):
        """The slot holding ``conn`` (idle, borrowed or claimed)."""
        cdef uint32_t i = _map_get(&self.where, <uintptr_t><PyObject *>conn)
        cdef Slot *s
        if i != PFL_NIL and pfl_state(self.fl, i) != PFL_EMPTY:
            s = self._slot(i)
            if s.key == <uintptr_t><PyObject *>conn:
                return i
        raise NotBorrowed("this object is not in this pool")

    def slot_info(self, slot):
        """A :class:`SlotInfo`, ``(state, created, checked_out, returned, uses,
        generation, expires)``, of a slot; times are :meth:`now` values (0.0:
        never)."""
        cdef uint32_t i = self._slot_at(slot, PFL_NIL)
        cdef Slot *s = self._slot(i)
        return SlotInfo(
            pfl_state(self.fl, i),
            _seconds(s.created),
            _seconds(s.checked_out),
            _seconds(s.returned),
            s.uses,
            s.generation,
            _seconds(s.expires),
        )

    def slots(self, state=None):
        """Indices of the slots in ``state`` (all slots when None), ascending."""
        cdef uint32_t i
        cdef uint32_t n = self.nsegs * PFL_SEG_SIZE
        self._before()
        if state is None:
            return list(range(n))
        return [i for i in range(n) if pfl_state(self.fl, i) == state]

    def close(self):
        """Closes the pool and returns its idle connections for the caller to
        close. Every waiter gets :class:`PoolClosed`. Borrowed connections are
        given back later with :meth:`release` (which then returns False);
        claimed ones with :meth:`restore` or :meth:`retire`.

        Calling it again is harmless and returns the connections that came
        back idle since: one handed to a waiter just before the close, whose
        waiter was then interrupted or cancelled, is passed on into the idle
        list, where only another ``close()`` finds it."""
        cdef list idle = []
        cdef uint32_t i
        cdef _Waiter w
        self._before()
        self._closed = True
        for i in range(self.nsegs * PFL_SEG_SIZE):
            if pfl_claim(self.fl, i):
                self.n_idle -= 1
                self.n_reserved += 1
                idle.append(<object>self._slot(i).conn)
                self._empty(i, PFL_RESERVED)
        # Drop the stale indices left in the idle list (every slot in it is
        # EMPTY, BUSY, CREATING or RESERVED now, so nothing is taken).
        while pfl_pop(self.fl) != PFL_NIL:
            pass
        # Every waiter is unlinked and told first; then each is woken, and
        # whatever a wake-up raises, the others are woken too.
        waking = []
        while self.wq_head is not None:
            w = self.wq_head
            self._unlink(w)
            w.state = _CLOSED
            waking.append(w)
        error = None
        for w in waking:
            try:
                self._wake(w)
                if _interleave is not None:
                    _interleave("close.waiter", self)
            except BaseException as exc:
                if error is None:
                    error = exc
        if error is not None:
            raise error
        return idle

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return (
            f"<pypool._corepool.CorePool {state} size={self._size}/{self._max_size} "
            f"idle={self.n_idle} in_use={self.n_busy} waiting={self.n_waiting}>"
        )

    # -------------------------------------------------------------- internals

    cdef int _check_open(self) except -1:
        if self._closed:
            raise PoolClosed("the pool is closed")
        return 0

    cdef uint32_t _slot_at(self, object slot, uint32_t state) except? 0xFFFFFFFE:
        """The index of ``slot`` checked to exist (and to be in ``state``,
        unless PFL_NIL)."""
        cdef uint32_t i, actual
        if isinstance(slot, bool) or not isinstance(slot, int):
            raise InvalidSlot(f"a slot is an int, not {type(slot).__name__}")
        if not 0 <= slot < self.nsegs * PFL_SEG_SIZE:
            raise InvalidSlot(f"no slot {slot}")
        i = <uint32_t>slot
        if state != PFL_NIL:
            actual = pfl_state(self.fl, i)
            if actual != state:
                raise InvalidSlot(
                    f"slot {slot} is {_STATE_NAMES[actual]}, not {_STATE_NAMES[state]}"
                )
        return i

    cdef uint32_t _slot_of_borrowed(self, object conn) except? 0xFFFFFFFE:
        cdef uintptr_t key = <uintptr_t><PyObject *>conn
        cdef uint32_t i = _map_get(&self.where, key)
        cdef uint32_t state
        if i != PFL_NIL:
            state = pfl_state(self.fl, i)
            if self._slot(i).key == key:
                if state == PFL_BUSY:
                    return i
                if state == PFL_IDLE or state == PFL_RESERVED:
                    raise NotBorrowed("this connection was returned already")
        raise NotBorrowed("this object was not borrowed from this pool")

    cdef void _hand_out(self, uint32_t i, uint32_t state) noexcept:
        """A slot in ``state`` (IDLE, CREATING, RESERVED or BUSY) goes to a
        borrower: BUSY, stamped and counted."""
        cdef Slot *s = self._slot(i)
        if state == PFL_CREATING:
            self.n_creating -= 1
            pfl_move(self.fl, i, PFL_CREATING, PFL_BUSY)
        elif state == PFL_RESERVED:
            self.n_reserved -= 1
            pfl_move(self.fl, i, PFL_RESERVED, PFL_BUSY)
        if state != PFL_BUSY:
            self.n_busy += 1
        s.checked_out = pfl_now_ns()
        s.uses += 1
        self.acquires += 1

    cdef int _return(self, uint32_t i, object conn) except -1:
        """A connection is available in slot ``i`` (BUSY, CREATING or
        RESERVED): hand it to a waiter that is owed one, else make it IDLE and
        wake a waiter to come and take it."""
        cdef Slot *s = self._slot(i)
        cdef uint32_t state = pfl_state(self.fl, i)
        cdef _Waiter first = self.wq_head
        if first is not None:
            if first.is_ticket or (
                pfl_monotonic_ns() - first.started >= self.handoff_after_ns
            ):
                self._unlink(first)
                self._hand_out(i, state)
                if s.ref != NULL and s.conn != NULL:
                    Py_DECREF(<object>s.conn)
                    s.conn = NULL
                self._count_wait(first)
                first.state = _HANDED
                first.conn = conn
                # If it had been woken for an idle connection, that wake-up
                # was overtaken: it goes to the next waiter (_serve), also
                # when the wake-up of this one raises.
                try:
                    if _interleave is not None:
                        _interleave("return.handoff", self)
                    self._wake(first)
                finally:
                    self._serve()
                return 0
        if s.conn == NULL:
            Py_INCREF(conn)
            s.conn = <PyObject *>conn
        if state == PFL_BUSY:
            self.n_busy -= 1
            pfl_push(self.fl, i)
        elif state == PFL_CREATING:
            self.n_creating -= 1
            pfl_fill(self.fl, i)
        elif state == PFL_RESERVED:
            self.n_reserved -= 1
            pfl_unclaim(self.fl, i)
        self.n_idle += 1
        self._serve()
        return 0

    cdef void _enqueue(self, _Waiter waiter) noexcept:
        waiter.prev = self.wq_tail
        waiter.next = None
        if self.wq_tail is None:
            self.wq_head = waiter
        else:
            self.wq_tail.next = waiter
        self.wq_tail = waiter
        self.n_waiting += 1
        if waiter.is_ticket:
            self.n_tickets += 1
        else:
            self.n_sleeping += 1

    cdef void _unlink(self, _Waiter waiter) noexcept:
        if waiter.prev is None:
            self.wq_head = waiter.next
        else:
            waiter.prev.next = waiter.next
        if waiter.next is None:
            self.wq_tail = waiter.prev
        else:
            waiter.next.prev = waiter.prev
        waiter.prev = None
        waiter.next = None
        self.n_waiting -= 1
        if waiter.is_ticket:
            self.n_tickets -= 1
        elif waiter.notified:
            self.n_notified -= 1
        else:
            self.n_sleeping -= 1

    cdef int _serve(self) except -1:
        """While more connections are idle than woken thread waiters are on
        their way to take, wakes the next sleeping thread waiter to come and
        take one, or hands one to the next ticket (a ticket cannot come).

        This keeps "a waiter never sleeps while a connection it could take is
        idle" after every change: a connection made idle, a waiter that leaves
        with a wake-up it did not use, a woken waiter handed a different
        connection. Each wake-up is a call-out (a lock release, a ticket's
        callback) made with the state consistent; the loop then looks at the
        state afresh."""
        cdef _Waiter w
        cdef uint32_t i
        error = None
        while self.n_idle > self.n_notified and (self.n_sleeping or self.n_tickets):
            w = self.wq_head
            while w is not None and not w.is_ticket and w.notified:
                w = w.next
            if w is None:
                break
            if w.is_ticket:
                i = pfl_pop(self.fl)
                if i == PFL_NIL:  # cannot be: n_idle > 0
                    break
                conn = self._take(i)
                self._unlink(w)
                self._count_wait(w)
                w.state = _HANDED
                w.conn = conn
                try:
                    if _interleave is not None:
                        _interleave("return.handoff", self)
                    self._wake(w)
                except BaseException as exc:  # the others are served all the same
                    if error is None:
                        error = exc
            else:
                w.notified = True
                self.n_sleeping -= 1
                self.n_notified += 1
                w.lock.release()
        if error is not None:
            raise error
        return 0

    cdef int _leave(self, _Waiter waiter) except -1:
        """Removes a waiter that gives up or takes a connection itself;
        passes on a wake-up it did not use."""
        cdef bint notified = waiter.notified and not waiter.is_ticket
        self._unlink(waiter)
        waiter.state = _DONE
        if notified:
            self._serve()
        return 0

    cdef void _count_wait(self, _Waiter waiter) noexcept:
        cdef double waited = _seconds(pfl_monotonic_ns() - waiter.started)
        self.waits += 1
        self.wait_time += waited
        if waited > self.wait_time_max:
            self.wait_time_max = waited

    cdef int _wake(self, _Waiter waiter) except -1:
        """Wakes a waiter taken off the queue, whose state says why: a thread
        by releasing its lock (unless woken already), a ticket by its
        callback. Called last, when the core's state is consistent, since a
        callback may call back."""
        cdef WaiterTicket ticket
        if waiter.is_ticket:
            ticket = <WaiterTicket>waiter
            if _interleave is not None:
                _interleave("wake.callback", self)
            ticket._callback(ticket)
        elif not waiter.notified:  # a waiter woken to retry is awake already
            waiter.notified = True
            waiter.lock.release()
        return 0

    cdef int _empty(self, uint32_t i, uint32_t state) except -1:
        """``state`` -> EMPTY: forgets the object and frees the slot."""
        cdef Slot *s = self._slot(i)
        cdef PyObject *conn = s.conn
        cdef PyObject *ref = s.ref
        if state == PFL_IDLE:
            self.n_idle -= 1
        elif state == PFL_BUSY:
            self.n_busy -= 1
        elif state == PFL_CREATING:
            self.n_creating -= 1
        elif state == PFL_RESERVED:
            self.n_reserved -= 1
        if s.key != 0 and _map_get(&self.where, s.key) == i:
            _map_del(&self.where, s.key)
        s.key = 0
        s.conn = NULL
        s.ref = NULL
        self._size -= 1
        pfl_make_empty(self.fl, i, state)
        # Last: dropping references can run arbitrary code.
        Py_XDECREF(ref)
        Py_XDECREF(conn)
        return 0

    cdef object _weakref_for(self, object conn, uint32_t i):
        try:
            return PyWeakref_NewRef(conn, _Reaper(self.self_ref, i))
        except TypeError:  # the type allows no weak references
            return None

    cdef _finalized(self, uint32_t i, object ref):
        """A borrowed object died without being returned. This runs in a
        finalizer: in any thread, inside any allocation, maybe while the
        thread holds a lock of the policy's. It only records the death (and
        forgets the address, which a new object may now take: C only, no
        Python code); _report reaps the slot and runs on_abandon in the next
        slow-path operation."""
        cdef Slot *s
        if i < self.nsegs * PFL_SEG_SIZE:
            s = self._slot(i)
            if s.ref == <PyObject *>ref and s.key != 0:
                if _map_get(&self.where, s.key) == i:
                    _map_del(&self.where, s.key)
                s.key = 0
        self.dead.append((i, ref))

    cdef int _reap(self) except -1:
        cdef list dead = self.dead
        cdef uint32_t i
        cdef Slot *s
        self.dead = []
        for index, ref in dead:
            i = index
            if i >= self.nsegs * PFL_SEG_SIZE:
                continue
            s = self._slot(i)
            if pfl_state(self.fl, i) != PFL_BUSY or s.ref != <PyObject *>ref:
                continue  # the slot moved on (discarded, refilled, forked)
            self._empty(i, PFL_BUSY)
            self.abandoned += 1
            self.abandoned_slots.append(i)
        return 0

    cdef inline int _before(self) except -1:
        if self.dead or self.abandoned_slots:
            self._report()
        return 0

    cdef int _report(self) except -1:
        """Reaps the slots whose borrowed object died unreturned, then runs
        on_abandon for each (every one, whatever the others raise; the first
        exception is re-raised after). Runs before a slow-path operation does
        anything, and at every wait slice; never in a finalizer, nor in
        try_acquire(), release() or discard(), which a finalizer may call."""
        cdef list reaped
        if self.dead:
            self._reap()
        if not self.abandoned_slots:
            return 0
        reaped = self.abandoned_slots
        self.abandoned_slots = []
        error = None
        if self._on_abandon is not None:
            for i in reaped:
                try:
                    if _interleave is not None:
                        _interleave("reap.on_abandon", self)
                    self._on_abandon(i)
                except BaseException as exc:
                    if error is None:
                        error = exc
        if error is not None:
            raise error
        return 0

    cdef _forget_after_fork(self):
        """In a child process: drop every slot without closing or finalizing
        its object (they belong to the parent), mark the parent's waiters and
        tickets done, start with fresh locks."""
        cdef _Waiter w = self.wq_head
        cdef _Waiter after
        while w is not None:
            after = w.next
            w.prev = None
            w.next = None
            w.state = _DONE
            w.conn = None
            w = after
        self._epoch += 1
        self._free_storage(True)
        self._reset_state()


# ------------------------------------------------------------ pool hot path

cdef class _Lease:
    """``with pool.connection() as conn``: a connection, given back on exit
    (also when the block raises)."""

    cdef PoolBase _pool
    cdef object _timeout
    cdef object _end
    cdef object _conn

    def __enter__(self):
        if self._conn is not None:
            raise PoolError("this connection() block is in use already")
        self._conn = self._pool._acquire(self._timeout)
        return self._conn

    def __exit__(self, *exc_info):
        conn = self._conn
        self._conn = None
        if conn is not None:
            if self._end is not None:
                self._end(conn, exc_info[0])
            else:
                self._pool._release(conn, False)

    def _discard(self):
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


cdef class PoolBase:
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

    cdef readonly CorePool _core
    cdef double _timeout
    cdef object _reset_name
    cdef object _reset_fn
    cdef bint _observe
    cdef unsigned long _thread
    cdef public object _unchecked

    def __init__(self, CorePool core, timeout=30.0, reset=None):
        self._core = core
        self._timeout = 30.0
        self._reset_name = None
        self._reset_fn = None
        self._observe = False
        self._thread = 0
        self._unchecked = None
        self._set_timeout(timeout)
        self._set_reset(reset)

    def _set_thread(self, ident):
        """``_take()`` serves calls from thread ``ident`` only (0: none)."""
        self._thread = ident

    def _set_timeout(self, timeout):
        cdef double wait_for = _check_timeout(timeout)
        if wait_for < 0:
            raise ConfigurationError("timeout must be a number of seconds (inf: no limit)")
        self._timeout = wait_for

    def _set_observe(self, observe):
        """With ``observe`` on, ``_checked_out(conn)`` runs after every
        hand-out and ``_checking_in(conn)`` before every return (for leak
        reports and events); off, the hot path calls no Python code."""
        self._observe = bool(observe)

    def _set_reset(self, reset):
        if reset is None or isinstance(reset, str):
            self._reset_name = reset
            self._reset_fn = None
        elif callable(reset):
            self._reset_name = None
            self._reset_fn = reset
        else:
            raise ConfigurationError("reset must be a method name, a callable or None")

    def acquire(self, timeout=None):
        """A connection, yours until you give it back with :meth:`release`.

        You must give it back (or use :meth:`connection`): failing to do so
        depletes the pool. Waits up to ``timeout`` seconds (None: the pool's
        timeout) for one, then raises :class:`PoolTimeout`; raises
        :class:`TooManyRequests` when the wait queue is full and
        :class:`PoolClosed` when the pool is closed.
        """
        return self._acquire(timeout)

    cdef object _acquire(self, object timeout):
        cdef CorePool core = self._core
        cdef uint32_t i
        cdef int verdict
        if timeout is not None:
            _check_timeout(timeout)
        if core._closed:
            return self._acquire_slow(None, PFL_NIL, _OK, timeout)
        i = pfl_pop(core.fl)
        if i == PFL_NIL:
            return self._acquire_slow(None, PFL_NIL, _OK, timeout)
        conn = core._take(i)
        verdict = core._verdict(i, True, core._slot(i).checked_out)
        if verdict == _OK:
            if self._observe:
                self._deliver(conn)
            return conn
        return self._acquire_slow(conn, i, verdict, timeout)

    cdef object _acquire_slow(self, object conn, uint32_t i, int verdict, object timeout):
        cdef double wait_for = self._timeout if timeout is None else _check_timeout(timeout)
        try:
            return self._acquire_loop(conn, i, verdict, wait_for)
        except PoolError as exc:
            error = self._failed(exc, wait_for)
        raise error

    cdef object _acquire_loop(self, object conn, uint32_t i, int verdict, double wait_for):
        cdef CorePool core = self._core
        cdef double deadline = _clock() + wait_for
        while True:
            if conn is None:
                conn = core.acquire(max(0.0, deadline - _clock()))
                i = core._slot_of_borrowed(conn)
                verdict = core._verdict(i, True, pfl_now_ns())
            if verdict == _CHECK:
                try:
                    failure = self._vet(conn, max(0.0, deadline - _clock()))
                except BaseException as exc:
                    # Interrupted mid-check: its state is unknown.
                    core.discard(conn)
                    self._rejected(conn, _CHECK, exc)
                    raise
                if failure is None:
                    verdict = _OK
                else:
                    core.discard(conn)
                    self._rejected(conn, _CHECK, failure)
            elif verdict != _OK:
                core.discard(conn)
                self._rejected(conn, verdict, None)
            if verdict == _OK:
                if self._observe:
                    self._deliver(conn)
                return conn
            conn = core.try_acquire()
            if conn is not None:
                i = core._slot_of_borrowed(conn)
                verdict = core._verdict(i, True, pfl_now_ns())

    cdef int _deliver(self, object conn) except -1:
        """The checkout hook on a connection about to go out; a hook that
        raises gets the connection given back first."""
        try:
            self._checked_out(conn)
        except BaseException:
            self._give_back_unused(conn)
            raise
        return 0

    cdef int _give_back_unused(self, object conn) except -1:
        """A connection handed out but never delivered: back into the pool
        as it was (no reset: nobody used it), or retired if the pool closed."""
        cdef CorePool core = self._core
        if core._release(conn, pfl_now_ns()) == 0:
            self._retire(conn, _CLOSED_POOL, None)
        return 0

    @cython.always_allow_keywords(False)
    def release(self, conn, /):
        """Gives back a connection from :meth:`acquire`.

        It is reset, and retired instead of kept if the thresholds say so.
        Raises :class:`NotBorrowed` (changing nothing) for a connection not
        borrowed from this pool, or given back already.
        """
        self._release(conn, False)

    # The non-blocking halves of acquire() and release(), for pools whose
    # callers must not block (asyncio tasks): the policy layer waits, checks
    # and awaits resets itself, and calls these for everything else.

    def _take(self):
        """A connection that may go out at once, or None.

        None when nothing is idle, the pool is closed, the call is not on the
        thread given to ``_set_thread``, or the connection taken needs a
        check first: that one is set aside in ``_unchecked`` for the
        caller's slow path, which checks it and hands it out or rejects it.
        A connection the verdicts retire goes to ``_rejected`` and the next
        idle one is tried.
        """
        cdef CorePool core = self._core
        cdef uint32_t i
        cdef int verdict
        if self._thread != PyThread_get_thread_ident() or self._unchecked is not None:
            return None
        while not core._closed:
            i = pfl_pop(core.fl)
            if i == PFL_NIL:
                return None
            conn = core._take(i)
            verdict = core._verdict(i, True, core._slot(i).checked_out)
            if verdict == _OK:
                if self._observe:
                    self._deliver(conn)
                return conn
            if verdict == _CHECK:
                self._unchecked = conn
                return None
            core.discard(conn)
            self._rejected(conn, verdict, None)
        return None

    @cython.always_allow_keywords(False)
    def _give(self, conn, /):
        """:meth:`release`, except that a reset returning something (an
        awaitable) is not waited for: it is returned, and the caller awaits
        it, then calls ``_give_back(conn)``. None when the connection is
        back in the pool, or retired."""
        return self._release(conn, True)

    @cython.always_allow_keywords(False)
    def _give_back(self, conn, /):
        """The end of a release whose reset the caller awaited."""
        cdef CorePool core = self._core
        self._return(conn, core._slot_of_borrowed(conn))

    cdef object _release(self, object conn, bint defer):
        cdef CorePool core = self._core
        cdef uint32_t i = _map_get(&core.where, <uintptr_t><PyObject *>conn)
        if i == PFL_NIL or pfl_state(core.fl, i) != PFL_BUSY:
            i = core._slot_of_borrowed(conn)  # raises with the right message
        if core._closed:
            core._empty(i, PFL_BUSY)
            self._retire(conn, _CLOSED_POOL, None)
            return None
        if self._observe:
            self._check_in(conn)
        if self._reset_name is not None or self._reset_fn is not None:
            try:
                if self._reset_fn is not None:
                    result = self._reset_fn(conn)
                else:
                    result = PyObject_CallMethodNoArgs(conn, self._reset_name)
            except BaseException as exc:
                core.discard(conn)
                self._retire(conn, _RESET_FAILED, exc)
                if not isinstance(exc, Exception):
                    raise
                return None
            if defer and result is not None:
                return result
        self._return(conn, i)
        return None

    cdef int _check_in(self, object conn) except -1:
        """The return hook; one that raises gets the connection discarded
        (interrupted before its reset: never pooled unreset)."""
        try:
            self._checking_in(conn)
        except BaseException as exc:
            self._core.discard(conn)
            self._retire(conn, _RESET_FAILED, exc)
            raise
        return 0

    cdef int _return(self, object conn, uint32_t i) except -1:
        cdef CorePool core = self._core
        cdef int64_t now = pfl_now_ns()
        cdef int verdict = core._verdict(i, False, now)
        if verdict != _OK:
            core.discard(conn)
            self._retire(conn, verdict, None)
        elif core._release(conn, now) == 0:
            self._retire(conn, _CLOSED_POOL, None)
        return 0

    def connection(self, timeout=None):
        """``with pool.connection() as conn:`` a connection from
        :meth:`acquire`, given back on exit (also when the block raises)."""
        cdef _Lease lease = _Lease.__new__(_Lease)
        lease._pool = self
        lease._timeout = timeout
        return lease

    def _lease(self, timeout, end):
        """:meth:`connection`, for a pool whose block does more than give the
        connection back (psycopg's commits or rolls back): the block ends
        with ``end(conn, exc_type)`` (``exc_type`` None when the block did
        not raise), which must give the connection back; None: with
        :meth:`release`. The hand-out is the same, so a connection is in the
        block's keeping from the moment the core hands it out."""
        if end is not None and not callable(end):
            raise ConfigurationError("a lease end must be a callable or None")
        cdef _Lease lease = _Lease.__new__(_Lease)
        lease._pool = self
        lease._timeout = timeout
        lease._end = end
        return lease

    def _vet(self, conn, timeout):
        return None

    def _checked_out(self, conn):
        pass

    def _checking_in(self, conn):
        pass

    def _retire(self, conn, reason, exc):
        pass

    def _failed(self, exc, timeout):
        return exc

    def _rejected(self, conn, reason, exc):
        self._retire(conn, reason, exc)


# ------------------------------------------------------- garbage collection
# The slots own references the collector cannot see through Cython's own
# traverse function (they live in C arrays). A cycle through a pooled
# connection (a connection that refers back to its pool, as psycopg's do)
# would then never be collected. The type's traverse visits them too;
# clearing is left to the other members of a cycle (a pool's __dict__).

cdef traverseproc _cython_traverse = (<PyTypeObject *>CorePool).tp_traverse


cdef int _traverse_core(PyObject *o, visitproc visit, void *arg) except -1:
    cdef int r
    cdef uint32_t s, k
    cdef Slot *slot
    cdef CorePool core = <CorePool>o
    if _cython_traverse != NULL:
        r = _cython_traverse(o, visit, arg)
        if r:
            return r
    if core.segs == NULL:
        return 0
    for s in range(core.nsegs):
        for k in range(PFL_SEG_SIZE):
            slot = &core.segs[s][k]
            if slot.conn != NULL:
                r = visit(slot.conn, arg)
                if r:
                    return r
            if slot.ref != NULL:
                r = visit(slot.ref, arg)
                if r:
                    return r
    return 0


(<PyTypeObject *>CorePool).tp_traverse = <traverseproc>_traverse_core
