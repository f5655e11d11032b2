"""Stateful property tests: random sequences of every core operation.

``ModelPool`` below is a small, independent model of the core's documented
behaviour (slot states, the idle list with its stale entries, the stack of
empty slots, the ticket queue, the counters), single-threaded. A hypothesis
state machine drives several implementations in lockstep with the same
operations on the same objects and, after every step, compares everything
observable: the exact object each call returned, the slot each reserve()
returned, the exception types raised, the gauges and counters, and the state,
use count and generation of every slot.

- every core against the model;
- the native core against the Python core.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from _support.cores import TIME_KEYS
from _support.fakes import FakeConn, NoWeakConn
from _support.stateful import machine_settings
from pypool.errors import (
    ConfigurationError,
    InvalidSlot,
    NotBorrowed,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyRequests,
)

pytestmark = pytest.mark.stateful

SETTINGS = machine_settings(200, 50, HealthCheck.data_too_large)

EMPTY, CREATING, IDLE, BUSY, RESERVED = range(5)
STATES = (EMPTY, CREATING, IDLE, BUSY, RESERVED)
SEGMENT = 64
MAX_SIZE = SEGMENT * 4096


# ---------------------------------------------------------------- the model


def _check_int(value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigurationError(repr(value))
    return value


class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.state = EMPTY
        self.conn: Any = None
        self.key = 0
        self.listed = False
        self.uses = 0
        self.generation = 0


class ModelTicket:
    def __init__(self, pool: ModelPool, callback: Callable[[Any], object]) -> None:
        self.pool = pool
        self.callback = callback
        self.state = "waiting"
        self.conn: Any = None

    @property
    def done(self) -> bool:
        return self.state != "waiting"

    def result(self) -> Any:
        if self.state == "handed":
            conn, self.conn = self.conn, None
            self.state = "done"
            return conn
        if self.state == "closed":
            raise PoolClosed
        raise PoolError

    def cancel(self, timed_out: bool = False) -> bool:
        pool = self.pool
        calls: list[Callable[[], object]] = []
        if self.state == "waiting":
            pool.waiters.remove(self)
            self.state = "done"
            pool.timeouts += timed_out
            result = True
        elif self.state == "handed":
            conn, self.conn = self.conn, None
            self.state = "done"
            pool._return(pool._borrowed_slot(conn), conn, calls)
            result = True
        else:
            self.state = "done"
            result = False
        for call in calls:
            call()
        return result


class ModelPool:
    """What the core does, as simply as it can be said (one thread, tickets
    only, nothing ever finalized)."""

    def __init__(
        self,
        max_size: int,
        *,
        max_waiting: int = 0,
        lifo: bool = True,
        on_wait: Callable[[], object] | None = None,
    ) -> None:
        self._max_size = _check_int(max_size, 1, MAX_SIZE)
        self._max_waiting = _check_int(max_waiting, 0, 2**31 - 1)
        self.lifo = lifo
        self.on_wait = on_wait
        self.closed = False
        self.generation = 0
        self.all: list[_Slot] = []
        self.empty: list[int] = []
        self.idle_list: deque[int] = deque()
        self.where: dict[int, int] = {}
        self.waiters: deque[ModelTicket] = deque()
        self.acquires = self.waits = self.timeouts = 0

    # gauges
    def _count(self, state: int) -> int:
        return sum(1 for s in self.all if s.state == state)

    size = property(lambda self: sum(1 for s in self.all if s.state != EMPTY))
    idle = property(lambda self: self._count(IDLE))
    in_use = property(lambda self: self._count(BUSY))
    connecting = property(lambda self: self._count(CREATING))
    claimed = property(lambda self: self._count(RESERVED))
    waiting = property(lambda self: len(self.waiters))

    @property
    def max_size(self) -> int:
        return self._max_size

    @max_size.setter
    def max_size(self, value: int) -> None:
        value = _check_int(value, 1, MAX_SIZE)
        self._check_open()
        self._max_size = value

    @property
    def max_waiting(self) -> int:
        return self._max_waiting

    @max_waiting.setter
    def max_waiting(self, value: int) -> None:
        value = _check_int(value, 0, 2**31 - 1)
        self._check_open()
        self._max_waiting = value

    def stats(self) -> dict[str, Any]:
        return {
            "acquires": self.acquires,
            "waits": self.waits,
            "timeouts": self.timeouts,
            "abandoned": 0,
            "size": self.size,
            "idle": self.idle,
            "in_use": self.in_use,
            "connecting": self.connecting,
            "claimed": self.claimed,
            "waiting": self.waiting,
            "max_size": self._max_size,
            "max_waiting": self._max_waiting,
        }

    def slots(self, state: int | None = None) -> list[int]:
        return [s.index for s in self.all if state is None or s.state == state]

    def slot_info(self, index: Any) -> tuple[int, float, float, float, int, int]:
        s = self._slot(index, None)
        return (s.state, 0.0, 0.0, 0.0, s.uses, s.generation)

    def slot_of(self, conn: Any) -> int:
        index = self.where.get(id(conn))
        if index is not None and self.all[index].conn is conn:
            return index
        raise NotBorrowed

    def advance_generation(self) -> int:
        self._check_open()
        self.generation += 1
        return self.generation

    # hand-out and return
    def try_acquire(self) -> Any:
        self._check_open()
        return self._pop()

    def acquire(self, timeout: float) -> Any:
        assert timeout == 0  # one thread: the model never waits
        self._check_open()
        conn = self._pop()
        if conn is None:
            self.timeouts += 1
            raise PoolTimeout
        return conn

    def release(self, conn: Any) -> bool:
        s = self._borrowed_slot(conn)
        if self.closed:
            self._empty(s)
            return False
        calls: list[Callable[[], object]] = []
        self._return(s, conn, calls)
        for call in calls:
            call()
        return True

    def enqueue(self, callback: Callable[[Any], object]) -> ModelTicket:
        if not callable(callback):
            raise ConfigurationError
        ticket = ModelTicket(self, callback)
        self._check_open()
        conn = self._pop()
        if conn is None:
            if self._max_waiting and len(self.waiters) >= self._max_waiting:
                raise TooManyRequests
            self.waiters.append(ticket)
            if self.on_wait is not None:
                self.on_wait()
        else:
            ticket.state = "handed"
            ticket.conn = conn
            callback(ticket)
        return ticket

    # connect workers and maintenance
    def reserve(self) -> int | None:
        self._check_open()
        if self.size >= self._max_size:
            return None
        if not self.empty:
            base = len(self.all)
            self.all.extend(_Slot(base + k) for k in range(SEGMENT))
            self.empty.extend(range(base + SEGMENT - 1, base - 1, -1))
        index = self.empty.pop()
        self.all[index].state = CREATING
        self.all[index].generation = self.generation
        return index

    def fill(self, index: Any, conn: Any) -> None:
        if conn is None:
            raise TypeError
        s = self._slot(index, CREATING)
        if id(conn) in self.where:
            raise InvalidSlot
        if self.closed:
            self._empty(s)
            raise PoolClosed
        s.conn, s.key, s.uses = conn, id(conn), 0
        self.where[id(conn)] = s.index
        calls: list[Callable[[], object]] = []
        self._return(s, conn, calls)
        for call in calls:
            call()

    def abandon(self, index: Any) -> None:
        self._empty(self._slot(index, CREATING))

    def discard(self, conn: Any) -> None:
        self._empty(self._borrowed_slot(conn))

    def claim(self, index: Any) -> Any:
        self._check_open()
        s = self._slot(index, None)
        if s.state != IDLE:
            return None
        s.state = RESERVED
        return s.conn

    def restore(self, index: Any) -> bool:
        s = self._slot(index, RESERVED)
        if self.closed:
            self._empty(s)
            return False
        calls: list[Callable[[], object]] = []
        self._return(s, s.conn, calls)
        for call in calls:
            call()
        return True

    def retire(self, index: Any) -> Any:
        s = self._slot(index, RESERVED)
        conn = s.conn
        self._empty(s)
        return conn

    def close(self) -> list[Any]:
        self.closed = True
        idle = []
        for s in self.all:
            s.listed = False
            if s.state == IDLE:
                idle.append(s.conn)
                self._empty(s)
        self.idle_list.clear()
        calls = []
        while self.waiters:
            ticket = self.waiters.popleft()
            ticket.state = "closed"
            calls.append(lambda t=ticket: t.callback(t))
        for call in calls:
            call()
        return idle

    # internals
    def _check_open(self) -> None:
        if self.closed:
            raise PoolClosed

    def _slot(self, index: Any, state: int | None) -> _Slot:
        if isinstance(index, bool) or not isinstance(index, int):
            raise InvalidSlot
        if not 0 <= index < len(self.all):
            raise InvalidSlot
        s = self.all[index]
        if state is not None and s.state != state:
            raise InvalidSlot
        return s

    def _borrowed_slot(self, conn: Any) -> _Slot:
        index = self.where.get(id(conn))
        if index is not None:
            s = self.all[index]
            if s.state == BUSY and s.conn is conn:
                return s
        raise NotBorrowed

    def _pop(self) -> Any:
        while self.idle_list:
            index = self.idle_list.pop() if self.lifo else self.idle_list.popleft()
            s = self.all[index]
            s.listed = False
            if s.state == IDLE:
                self._hand_out(s)
                return s.conn
        return None

    def _hand_out(self, s: _Slot) -> None:
        s.state = BUSY
        s.uses += 1
        self.acquires += 1

    def _return(self, s: _Slot, conn: Any, calls: list[Callable[[], object]]) -> None:
        if self.waiters:  # only tickets wait here: they are always served directly
            ticket = self.waiters.popleft()
            self._hand_out(s)
            self.waits += 1
            ticket.state = "handed"
            ticket.conn = conn
            calls.append(lambda: ticket.callback(ticket))
            return
        s.state = IDLE
        s.conn = conn
        if not s.listed:
            s.listed = True
            self.idle_list.append(s.index)

    def _empty(self, s: _Slot) -> None:
        if self.where.get(s.key) == s.index:
            del self.where[s.key]
        s.state = EMPTY
        s.conn = None
        self.empty.append(s.index)


# ------------------------------------------------------- the lockstep machine


def new_object(kind: str) -> Any:
    return {"FakeConn": FakeConn, "NoWeakConn": NoWeakConn, "bytearray": bytearray}[kind]()


OBJECT_KINDS = st.sampled_from(["FakeConn", "NoWeakConn", "bytearray"])
BAD_SLOTS = st.sampled_from([-1, 10**6, 2**64, "0", 1.0, None, True])


def lockstep_machine(factories: list[Callable[..., Any]]) -> type[RuleBasedStateMachine]:
    """A state machine that applies each operation to one pool per factory
    and checks that all of them behave the same."""

    class Lockstep(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.pools: list[Any] = []
            self.objects: list[Any] = []  # every object made; kept alive
            self.held: list[Any] = []  # objects the test borrowed
            self.tickets: list[tuple[Any, ...]] = []  # one ticket per pool
            self.woken: list[list[Any]] = [[] for _ in factories]  # tickets called back
            self.on_waits = [0] * len(factories)

        # -------------------------------------------------------- plumbing

        def outcome(self, value: Any) -> Any:
            if value is None or isinstance(value, (bool, int)):
                return value
            if isinstance(value, list):
                return ("list", tuple(self.outcome(v) for v in value))
            if any(value is o for o in self.objects):
                return ("object", id(value))
            if any(any(value is t for t in tup) for tup in self.tickets) or hasattr(
                value, "cancel"
            ):
                return "ticket"
            return ("other", type(value).__name__)

        def each(self, op: Callable[[Any, int], Any]) -> tuple[Any, BaseException | None]:
            """Runs ``op(pool, k)`` on every pool; all must agree. Returns the
            first pool's value (or None) and exception (or None)."""
            results = []
            for k, pool in enumerate(self.pools):
                try:
                    results.append((op(pool, k), None))
                except Exception as exc:
                    results.append((None, exc))
            seen = [
                (self.outcome(v), type(e).__name__ if e is not None else None) for v, e in results
            ]
            assert all(s == seen[0] for s in seen), f"the implementations disagree: {seen}"
            return results[0]

        def values(self, op: Callable[[Any, int], Any]) -> list[Any]:
            return [op(pool, k) for k, pool in enumerate(self.pools)]

        def keep(self, obj: Any) -> None:
            if obj is not None and any(obj is o for o in self.objects):
                self.held.append(obj)

        def forget(self, obj: Any) -> None:
            for i, h in enumerate(self.held):
                if h is obj:
                    del self.held[i]
                    return

        def make(self, kind: str) -> Any:
            obj = new_object(kind)
            self.objects.append(obj)
            return obj

        def slot_choice(self, data: Any, state: int) -> Any:
            """Mostly a slot in the state the operation needs; sometimes any
            slot, one past the end, or something that is no slot at all."""
            in_state = self.pools[0].slots(state)
            n = len(self.pools[0].slots())
            dice = data.draw(st.integers(0, 9))
            if in_state and dice < 7:
                return data.draw(st.sampled_from(in_state))
            if dice < 9:
                return data.draw(st.integers(0, n))
            return data.draw(BAD_SLOTS)

        def some_object(self, data: Any, kind: str) -> Any:
            pick = data.draw(st.sampled_from(["held", "any", "new", "none"]))
            if pick == "held" and self.held:
                return data.draw(st.sampled_from(self.held))
            if pick in ("held", "any") and self.objects:
                return data.draw(st.sampled_from(self.objects))
            if pick == "none":
                return None
            return self.make(kind)

        # ---------------------------------------------------------- rules

        @initialize(
            max_size=st.sampled_from([1, 2, 3, 4, 6]),
            max_waiting=st.sampled_from([0, 0, 1, 2]),
            lifo=st.booleans(),
        )
        def start(self, max_size: int, max_waiting: int, lifo: bool) -> None:
            def on_wait(k: int) -> Callable[[], None]:
                def hook() -> None:
                    self.on_waits[k] += 1

                return hook

            self.pools = [
                factory(max_size, max_waiting=max_waiting, lifo=lifo, on_wait=on_wait(k))
                for k, factory in enumerate(factories)
            ]

        @rule()
        def reserve(self) -> None:
            self.each(lambda p, k: p.reserve())

        @rule(data=st.data(), kind=OBJECT_KINDS)
        def fill(self, data: Any, kind: str) -> None:
            slot = self.slot_choice(data, CREATING)
            pick = data.draw(st.sampled_from(["new", "new", "new", "existing", "none"]))
            if pick == "existing" and self.objects:
                obj = data.draw(st.sampled_from(self.objects))
            elif pick == "none":
                obj = None
            else:
                obj = self.make(kind)
            self.each(lambda p, k: p.fill(slot, obj))

        @rule(kind=OBJECT_KINDS, n=st.integers(1, 70))
        def reserve_and_fill_many(self, kind: str, n: int) -> None:
            for _ in range(n):
                slot, _exc = self.each(lambda p, k: p.reserve())
                if slot is None:
                    break
                obj = self.make(kind)
                self.each(lambda p, k, slot=slot, obj=obj: p.fill(slot, obj))

        @rule(data=st.data())
        def abandon(self, data: Any) -> None:
            slot = self.slot_choice(data, CREATING)
            self.each(lambda p, k: p.abandon(slot))

        @rule()
        def try_acquire(self) -> None:
            conn, _ = self.each(lambda p, k: p.try_acquire())
            self.keep(conn)

        @rule()
        def acquire_no_wait(self) -> None:
            conn, _ = self.each(lambda p, k: p.acquire(0))
            self.keep(conn)

        @rule(data=st.data(), kind=OBJECT_KINDS)
        def release(self, data: Any, kind: str) -> None:
            obj = self.some_object(data, kind)
            _, exc = self.each(lambda p, k: p.release(obj))
            if exc is None:
                self.forget(obj)

        @rule(data=st.data(), kind=OBJECT_KINDS)
        def discard(self, data: Any, kind: str) -> None:
            obj = self.some_object(data, kind)
            _, exc = self.each(lambda p, k: p.discard(obj))
            if exc is None:
                self.forget(obj)

        @rule(data=st.data(), kind=OBJECT_KINDS)
        def slot_of(self, data: Any, kind: str) -> None:
            obj = self.some_object(data, kind)
            self.each(lambda p, k: p.slot_of(obj))

        @rule(data=st.data())
        def claim(self, data: Any) -> None:
            slot = self.slot_choice(data, IDLE)
            self.each(lambda p, k: p.claim(slot))

        @rule(data=st.data())
        def restore(self, data: Any) -> None:
            slot = self.slot_choice(data, RESERVED)
            self.each(lambda p, k: p.restore(slot))

        @rule(data=st.data())
        def retire(self, data: Any) -> None:
            slot = self.slot_choice(data, RESERVED)
            self.each(lambda p, k: p.retire(slot))

        @rule()
        def enqueue(self) -> None:
            made: list[Any] = []

            def op(pool: Any, k: int) -> Any:
                ticket = pool.enqueue(self.woken[k].append)
                made.append(ticket)
                return ticket

            self.each(op)
            if len(made) == len(self.pools):
                self.tickets.append(tuple(made))

        @precondition(lambda self: self.tickets)
        @rule(data=st.data(), timed_out=st.booleans())
        def cancel(self, data: Any, timed_out: bool) -> None:
            tickets = data.draw(st.sampled_from(self.tickets))
            self.each(lambda p, k: tickets[k].cancel(timed_out))

        @precondition(lambda self: self.tickets)
        @rule(data=st.data())
        def result(self, data: Any) -> None:
            tickets = data.draw(st.sampled_from(self.tickets))
            conn, _ = self.each(lambda p, k: tickets[k].result())
            self.keep(conn)

        @rule(value=st.sampled_from([0, 1, 2, 3, 5, 8, 70, 200]))
        def set_max_size(self, value: int) -> None:
            def op(pool: Any, k: int) -> None:
                pool.max_size = value

            self.each(op)

        @rule(value=st.sampled_from([-1, 0, 1, 2, 3]))
        def set_max_waiting(self, value: int) -> None:
            def op(pool: Any, k: int) -> None:
                pool.max_waiting = value

            self.each(op)

        @rule()
        def advance_generation(self) -> None:
            self.each(lambda p, k: p.advance_generation())

        @precondition(lambda self: not self.pools[0].closed)
        @rule(data=st.data())
        def close(self, data: Any) -> None:
            # Closing ends most runs' interest: do it rarely.
            if data.draw(st.integers(0, 4)) == 0:
                self.each(lambda p, k: p.close())

        @rule()
        def close_again(self) -> None:
            if self.pools[0].closed:
                self.each(lambda p, k: p.close())

        # ------------------------------------------------------ invariants

        @invariant()
        def same_observable_state(self) -> None:
            if not self.pools:
                return

            def observe(pool: Any, k: int) -> Any:
                stats = {key: v for key, v in pool.stats().items() if key not in TIME_KEYS}
                gauges = (
                    pool.size,
                    pool.idle,
                    pool.in_use,
                    pool.connecting,
                    pool.claimed,
                    pool.waiting,
                    pool.max_size,
                    pool.max_waiting,
                    pool.closed,
                    pool.generation,
                )
                by_state = tuple(tuple(pool.slots(s)) for s in STATES)
                info = tuple(
                    (i, *(pool.slot_info(i)[j] for j in (0, 4, 5)))
                    for i in pool.slots()
                    if pool.slot_info(i)[0] != EMPTY
                )
                tickets = tuple(t[k].done for t in self.tickets)
                woken = tuple(
                    next(i for i, t in enumerate(self.tickets) if t[k] is w)
                    for w in self.woken[k]
                    if any(t[k] is w for t in self.tickets)
                )
                return (stats, gauges, by_state, info, tickets, woken, self.on_waits[k])

            seen = self.values(observe)
            assert all(s == seen[0] for s in seen), "\n".join(map(repr, seen))
            stats = seen[0][0]
            assert stats["size"] == (
                stats["idle"] + stats["in_use"] + stats["connecting"] + stats["claimed"]
            )
            assert len(self.pools[0].slots()) % SEGMENT == 0

    return Lockstep


def test_core_matches_model(core_module: Any) -> None:
    machine = lockstep_machine([core_module.CorePool, ModelPool])
    run_state_machine_as_test(machine, settings=SETTINGS)


def test_native_and_python_cores_agree(native_module: Any, python_module: Any) -> None:
    machine = lockstep_machine([native_module.CorePool, python_module.CorePool])
    run_state_machine_as_test(machine, settings=SETTINGS)


def test_model_matches_itself_on_a_known_sequence() -> None:
    # A sanity check of the model against a sequence spelled out by hand.
    pool = ModelPool(3)
    a, b, c = FakeConn(), FakeConn(), FakeConn()
    for conn in (a, b, c):
        pool.fill(pool.reserve(), conn)
    assert pool.claim(1) is b
    assert pool.retire(1) is b
    d = FakeConn()
    pool.fill(pool.reserve(), d)
    assert [pool.try_acquire() for _ in range(4)] == [c, d, a, None]
