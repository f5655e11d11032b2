"""Borrowed connections dropped without being returned.

For objects that allow weak references the core holds a borrowed connection
only weakly: when the borrower drops it, it is finalized, its slot becomes
EMPTY again, the ``abandoned`` counter grows and ``on_abandon(slot)`` runs.
Objects without weak references are held strongly while borrowed: a dropped
one is never finalized and its slot stays BUSY (the policy layer's
``leak_timeout`` reports those).

The finalizer only records the death: the slot is reaped, and ``on_abandon``
runs, in the next slow-path operation (``reap`` below calls one), never in
the finalizer itself.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest

from _support.fakes import FakeConn, NoWeakConn

finalized: list[str] = []


class TracedConn(FakeConn):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __del__(self) -> None:
        finalized.append(self.name)


class TracedNoWeakConn:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __del__(self) -> None:
        finalized.append(self.name)


def reap(pool: Any) -> None:
    """Collects garbage, then runs an operation that reaps (as the
    maintenance worker's calls do)."""
    gc.collect()
    pool.stats()


@pytest.fixture(autouse=True)
def _clear_finalized() -> None:
    gc.collect()  # what earlier tests left behind is finalized now, not during this one
    finalized.clear()


def test_dropped_borrowed_connection_is_recovered(CorePool: Any, core_module: Any) -> None:
    reports: list[int] = []
    pool = CorePool(3, on_abandon=reports.append)
    for name in ("a", "b", "c"):
        pool.fill(pool.reserve(), TracedConn(name))
    conn = pool.try_acquire()
    assert conn.name == "c"
    slot = pool.slot_of(conn)
    assert slot == 2
    del conn
    reap(pool)
    assert finalized == ["c"]
    assert reports == [slot]
    assert pool.slot_info(slot)[0] == core_module.EMPTY
    stats = pool.stats()
    assert (stats["abandoned"], stats["size"], stats["in_use"], stats["idle"]) == (1, 2, 0, 2)
    # The slot can be reserved and filled again.
    assert pool.reserve() == slot
    new = FakeConn()
    pool.fill(slot, new)
    assert pool.try_acquire() is new
    assert pool.release(new) is True
    assert pool.stats()["abandoned"] == 1


def test_dropped_in_a_reference_cycle(CorePool: Any, core_module: Any) -> None:
    reports: list[int] = []
    pool = CorePool(2, on_abandon=reports.append)
    pool.fill(pool.reserve(), FakeConn())
    conn = pool.try_acquire()
    conn.me = conn  # only the cycle collector can free it
    probe = weakref.ref(conn)
    del conn
    assert probe() is not None
    reap(pool)
    assert probe() is None
    assert reports == [0]
    assert pool.slot_info(0)[0] == core_module.EMPTY
    assert (pool.size, pool.in_use, pool.stats()["abandoned"]) == (0, 0, 1)


def test_recovered_without_hook(CorePool: Any) -> None:
    pool = CorePool(1)
    pool.fill(pool.reserve(), FakeConn())
    conn = pool.try_acquire()
    del conn
    reap(pool)
    assert (pool.size, pool.stats()["abandoned"]) == (0, 1)
    assert pool.reserve() == 0


def test_abandoned_slot_lets_a_waiting_ticket_be_served(CorePool: Any) -> None:
    pool = CorePool(1)
    pool.fill(pool.reserve(), FakeConn())
    conn = pool.try_acquire()
    ticket = pool.enqueue(lambda t: None)
    del conn
    reap(pool)
    assert pool.size == 0
    assert pool.waiting == 1  # the waiter is still owed a connection
    new = FakeConn()
    pool.fill(pool.reserve(), new)
    assert ticket.result() is new


def test_dropped_after_close_is_recovered(CorePool: Any) -> None:
    reports: list[int] = []
    pool = CorePool(1, on_abandon=reports.append)
    pool.fill(pool.reserve(), FakeConn())
    conn = pool.try_acquire()
    pool.close()
    del conn
    reap(pool)
    assert reports == [0]
    assert (pool.size, pool.in_use) == (0, 0)


def test_returned_or_discarded_then_dropped_is_not_abandoned(CorePool: Any) -> None:
    reports: list[int] = []
    pool = CorePool(2, on_abandon=reports.append)
    for _ in range(2):
        pool.fill(pool.reserve(), FakeConn())
    a = pool.try_acquire()
    b = pool.try_acquire()
    pool.release(a)
    pool.discard(b)
    del a, b
    gc.collect()
    assert reports == []
    assert pool.stats()["abandoned"] == 0
    assert (pool.size, pool.idle, pool.in_use) == (1, 1, 0)


def test_no_weakref_connection_is_not_recovered(CorePool: Any, core_module: Any) -> None:
    # Without weak references the core must hold a borrowed connection
    # strongly, so dropping it finalizes nothing: it stays BUSY, and only the
    # policy layer's leak_timeout can report it.
    reports: list[int] = []
    pool = CorePool(2, on_abandon=reports.append)
    pool.fill(pool.reserve(), TracedNoWeakConn("x"))
    pool.fill(pool.reserve(), NoWeakConn())
    conn = pool.try_acquire()
    assert not isinstance(conn, TracedNoWeakConn)
    conn = pool.try_acquire()
    assert isinstance(conn, TracedNoWeakConn)
    del conn
    gc.collect()
    assert finalized == []
    assert reports == []
    assert pool.slot_info(0)[0] == core_module.BUSY
    stats = pool.stats()
    assert (stats["abandoned"], stats["in_use"], stats["size"]) == (0, 2, 2)


def test_builtin_without_weakref_is_not_recovered(CorePool: Any) -> None:
    pool = CorePool(1)
    pool.fill(pool.reserve(), bytearray())
    conn = pool.try_acquire()
    del conn
    gc.collect()
    assert (pool.in_use, pool.stats()["abandoned"]) == (1, 0)


def test_idle_connections_are_never_finalized(CorePool: Any) -> None:
    pool = CorePool(3)
    probes = []
    for name in ("a", "b", "c"):
        conn = TracedConn(name)
        probes.append(weakref.ref(conn))
        pool.fill(pool.reserve(), conn)
    del conn
    # Claimed ones neither.
    assert pool.claim(0) is not None
    gc.collect()
    assert finalized == []
    assert all(p() is not None for p in probes)
    borrowed = pool.try_acquire()
    assert borrowed is probes[2]()
    assert pool.restore(0) is True
    assert pool.stats()["abandoned"] == 0
    assert pool.release(borrowed) is True


def test_core_collected_before_its_borrowed_connection(CorePool: Any) -> None:
    # A borrowed connection may outlive the pool: dropping it then is harmless.
    gc.collect()
    pool = CorePool(1)
    pool.fill(pool.reserve(), TracedConn("late"))
    conn = pool.try_acquire()
    pool_ref = weakref.ref(pool)
    del pool
    gc.collect()
    assert pool_ref() is None
    assert "late" not in finalized
    del conn
    gc.collect()
    assert "late" in finalized


def test_many_abandoned(CorePool: Any) -> None:
    reports: list[int] = []
    pool = CorePool(100, on_abandon=reports.append)
    for _ in range(100):
        pool.fill(pool.reserve(), FakeConn())
    held = [pool.try_acquire() for _ in range(100)]
    slots = sorted(pool.slot_of(c) for c in held)
    held.clear()
    reap(pool)
    assert sorted(reports) == slots == list(range(100))
    assert (pool.size, pool.in_use, pool.stats()["abandoned"]) == (0, 0, 100)


def test_dropped_pool_lets_go_of_its_connections(CorePool: Any) -> None:
    # The core holds idle connections only as long as it lives itself.
    pool = CorePool(2)
    idle, borrowed = FakeConn(), FakeConn()
    probes = [weakref.ref(idle), weakref.ref(borrowed)]
    pool.fill(pool.reserve(), idle)
    pool.fill(pool.reserve(), borrowed)
    assert pool.try_acquire() is borrowed
    pool_probe = weakref.ref(pool)
    del pool, idle
    gc.collect()
    assert pool_probe() is None
    assert probes[0]() is None
    assert probes[1]() is borrowed
