"""Every core operation and its errors, single-threaded, on both cores."""

from __future__ import annotations

import math
from typing import Any

import pytest

from _support.cores import STATS_KEYS, TIME_KEYS, snapshot
from _support.fakes import FakeConn, NoWeakConn, new_bytearray
from pypool.errors import (
    ConfigurationError,
    InvalidSlot,
    NotBorrowed,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyRequests,
)


def cycle_works(pool: Any) -> None:
    """The pool still hands out and takes back a connection."""
    conn = pool.try_acquire()
    assert conn is not None
    assert pool.release(conn) is True


def states(pool: Any, core_module: Any) -> dict[int, list[int]]:
    return {
        name: pool.slots(getattr(core_module, name))
        for name in ("EMPTY", "CREATING", "IDLE", "BUSY", "RESERVED")
    }


# ------------------------------------------------------------- construction


def test_module_constants(core_module: Any) -> None:
    m = core_module
    assert [m.EMPTY, m.CREATING, m.IDLE, m.BUSY, m.RESERVED] == [0, 1, 2, 3, 4]
    assert m.MAX_SIZE == 64 * 4096
    assert m.DEFAULT_HANDOFF_AFTER == 0.002


def test_defaults(CorePool: Any, core_module: Any) -> None:
    pool = CorePool(3)
    assert pool.max_size == 3
    assert pool.max_waiting == 0
    assert pool.lifo is True
    assert pool.handoff_after == core_module.DEFAULT_HANDOFF_AFTER
    assert pool.closed is False
    assert pool.generation == 0
    assert (pool.size, pool.idle, pool.in_use, pool.connecting, pool.claimed) == (0, 0, 0, 0, 0)
    assert pool.waiting == 0
    assert pool.slots() == []
    assert pool.try_acquire() is None


def test_keyword_arguments(CorePool: Any) -> None:
    calls: list[Any] = []
    pool = CorePool(
        max_size=5,
        max_waiting=7,
        lifo=False,
        handoff_after=0.25,
        on_wait=lambda: calls.append("wait"),
        on_abandon=calls.append,
    )
    assert (pool.max_size, pool.max_waiting, pool.lifo, pool.handoff_after) == (5, 7, False, 0.25)
    assert pool.stats()["max_waiting"] == 7


@pytest.mark.parametrize("value", [0, -1, 1.0, 2.5, "3", None, True, False, 64 * 4096 + 1, 2**64])
def test_bad_max_size(CorePool: Any, value: Any) -> None:
    with pytest.raises(ConfigurationError):
        CorePool(value)


def test_max_size_bounds(CorePool: Any, core_module: Any) -> None:
    assert CorePool(1).max_size == 1
    assert CorePool(core_module.MAX_SIZE).max_size == core_module.MAX_SIZE


@pytest.mark.parametrize("value", [-1, 1.0, "0", None, True, 2**31, 2**64])
def test_bad_max_waiting(CorePool: Any, value: Any) -> None:
    with pytest.raises(ConfigurationError):
        CorePool(2, max_waiting=value)


@pytest.mark.parametrize("value", [-0.001, -1, math.nan, "0.1", None, True, [1]])
def test_bad_handoff_after(CorePool: Any, value: Any) -> None:
    with pytest.raises(ConfigurationError):
        CorePool(2, handoff_after=value)


def test_handoff_after_accepts_int_and_zero(CorePool: Any) -> None:
    assert CorePool(2, handoff_after=0).handoff_after == 0.0
    assert CorePool(2, handoff_after=1).handoff_after == 1.0


@pytest.mark.parametrize("hook", ["on_wait", "on_abandon"])
@pytest.mark.parametrize("value", [1, "print", object()])
def test_bad_hooks(CorePool: Any, hook: str, value: Any) -> None:
    with pytest.raises(ConfigurationError):
        CorePool(2, **{hook: value})


# ------------------------------------------------------- acquire / release


def test_try_acquire_release(make_core_pool: Any, conn_type: Any) -> None:
    pool, conns = make_core_pool(2, conn_type=conn_type)
    assert (pool.size, pool.idle, pool.in_use) == (2, 2, 0)
    a = pool.try_acquire()
    b = pool.try_acquire()
    assert {id(a), id(b)} == {id(c) for c in conns}
    assert pool.try_acquire() is None
    assert (pool.size, pool.idle, pool.in_use) == (2, 0, 2)
    assert pool.release(a) is True
    assert pool.release(b) is True
    assert (pool.size, pool.idle, pool.in_use) == (2, 2, 0)
    assert pool.stats()["acquires"] == 2


def test_acquire_returns_idle_at_once(make_core_pool: Any, conn_type: Any) -> None:
    pool, conns = make_core_pool(1, conn_type=conn_type)
    assert pool.acquire() is conns[0]
    pool.release(conns[0])
    assert pool.acquire(timeout=0) is conns[0]
    pool.release(conns[0])
    assert pool.acquire(0.5) is conns[0]
    pool.release(conns[0])
    assert pool.acquire(float("inf")) is conns[0]
    assert pool.stats()["waits"] == 0


def test_acquire_timeout_zero_fails_at_once(make_core_pool: Any) -> None:
    pool, (conn,) = make_core_pool(1)
    assert pool.try_acquire() is conn
    with pytest.raises(PoolTimeout) as info:
        pool.acquire(timeout=0)
    assert isinstance(info.value, TimeoutError)
    assert "size 1/1" in str(info.value)
    stats = pool.stats()
    assert stats["timeouts"] == 1
    assert stats["waiting"] == 0
    assert stats["waits"] == 0


@pytest.mark.parametrize("timeout", [-1, -0.5, math.nan, "1", True, [0.1]])
def test_acquire_bad_timeout(make_core_pool: Any, timeout: Any) -> None:
    pool, _ = make_core_pool(1)
    before = snapshot(pool)
    with pytest.raises(ConfigurationError):
        pool.acquire(timeout)
    with pytest.raises(ConfigurationError):
        pool.acquire(timeout=timeout)
    assert snapshot(pool) == before
    cycle_works(pool)


def test_lifo_reuse_order(make_core_pool: Any, conn_type: Any) -> None:
    pool, (a, b, c) = make_core_pool(3, conn_type=conn_type)
    # Filled in slot order: the last filled is the most recently returned.
    assert pool.try_acquire() is c
    assert pool.try_acquire() is b
    assert pool.try_acquire() is a
    for conn in (b, a, c):
        pool.release(conn)
    assert [pool.try_acquire() for _ in range(3)] == [c, a, b]


def test_fifo_reuse_order(make_core_pool: Any, conn_type: Any) -> None:
    pool, (a, b, c) = make_core_pool(3, conn_type=conn_type, lifo=False)
    assert pool.lifo is False
    assert pool.try_acquire() is a
    assert pool.try_acquire() is b
    assert pool.try_acquire() is c
    for conn in (b, a, c):
        pool.release(conn)
    assert [pool.try_acquire() for _ in range(3)] == [b, a, c]


def test_hot_connection_stays_hot(make_core_pool: Any) -> None:
    pool, conns = make_core_pool(4)
    hot = pool.try_acquire()
    for _ in range(10):
        pool.release(hot)
        assert pool.try_acquire() is hot
    pool.release(hot)
    assert pool.slot_info(pool.slot_of(hot))[4] == 11
    assert all(pool.slot_info(pool.slot_of(c))[4] == 0 for c in conns if c is not hot)


def test_fifo_round_robin(make_core_pool: Any) -> None:
    pool, conns = make_core_pool(3, lifo=False)
    seen = []
    for _ in range(6):
        conn = pool.try_acquire()
        seen.append(conn)
        pool.release(conn)
    assert seen == conns + conns


def test_identity_not_equality(make_core_pool: Any) -> None:
    # Empty bytearrays are all equal (and unhashable): only identity tells them apart.
    pool, (a, b) = make_core_pool(2, conn_type=new_bytearray)
    assert a == b
    x = pool.try_acquire()
    assert x is b
    with pytest.raises(NotBorrowed):
        pool.release(a)  # equal to the borrowed one, but idle
    with pytest.raises(NotBorrowed):
        pool.release(bytearray())
    assert pool.release(b) is True
    assert pool.in_use == 0


@pytest.mark.parametrize("kind", ["foreign", "none", "idle", "twice", "other_pool"])
def test_release_not_borrowed(make_core_pool: Any, conn_type: Any, kind: str) -> None:
    pool, conns = make_core_pool(2, conn_type=conn_type)
    other, other_conns = make_core_pool(1, conn_type=conn_type)
    borrowed = pool.try_acquire()
    if kind == "twice":
        pool.release(borrowed)
        borrowed = pool.try_acquire()  # same one again (LIFO)
        pool.release(borrowed)
        obj = borrowed
    elif kind == "idle":
        obj = next(c for c in conns if c is not borrowed)
    elif kind == "foreign":
        obj = conn_type()
    elif kind == "none":
        obj = None
    else:
        obj = other.try_acquire()
        assert obj is other_conns[0]
    before = snapshot(pool)
    with pytest.raises(NotBorrowed) as info:
        pool.release(obj)
    assert isinstance(info.value, ValueError)
    with pytest.raises(NotBorrowed):
        pool.discard(obj)
    assert snapshot(pool) == before
    cycle_works(pool)


# -------------------------------------------------- reserve / fill / abandon


def test_reserve_fill_abandon(CorePool: Any, core_module: Any, conn_type: Any) -> None:
    pool = CorePool(3)
    assert pool.reserve() == 0
    assert pool.reserve() == 1
    assert (pool.size, pool.connecting, pool.idle) == (2, 2, 0)
    assert pool.slot_info(0)[0] == core_module.CREATING
    conn = conn_type()
    pool.fill(1, conn)
    assert (pool.size, pool.connecting, pool.idle) == (2, 1, 1)
    assert pool.slot_of(conn) == 1
    pool.abandon(0)
    assert (pool.size, pool.connecting, pool.idle) == (1, 0, 1)
    assert pool.slot_info(0)[0] == core_module.EMPTY
    assert pool.try_acquire() is conn


def test_reserve_none_at_max_size(make_core_pool: Any) -> None:
    pool, _conns = make_core_pool(2, n_filled=1)
    assert pool.reserve() == 1
    assert pool.reserve() is None  # CREATING slots count toward the limit
    pool.abandon(1)
    conn = pool.try_acquire()
    assert pool.reserve() == 1
    assert pool.reserve() is None  # BUSY ones too
    pool.fill(1, FakeConn())
    assert pool.reserve() is None
    pool.release(conn)
    assert pool.reserve() is None
    assert pool.size == 2


def test_slot_numbering_and_segments(CorePool: Any, core_module: Any) -> None:
    pool = CorePool(200)
    assert pool.slots() == []
    for expected in range(150):
        slot = pool.reserve()
        assert slot == expected
        pool.fill(slot, FakeConn())
    # Storage grows in segments of 64 slots: three of them hold 150.
    assert pool.slots() == list(range(192))
    assert pool.slots(core_module.IDLE) == list(range(150))
    assert pool.slots(core_module.EMPTY) == list(range(150, 192))
    assert pool.slot_info(191) == (core_module.EMPTY, 0.0, 0.0, 0.0, 0, 0, 0.0)
    with pytest.raises(InvalidSlot):
        pool.slot_info(192)
    assert (pool.size, pool.idle) == (150, 150)
    # Growth while connections are borrowed keeps them valid.
    held = [pool.try_acquire() for _ in range(150)]
    assert pool.try_acquire() is None
    for expected in range(150, 200):
        assert pool.reserve() == expected
        pool.fill(expected, FakeConn())
    assert pool.reserve() is None
    assert len(pool.slots()) == 256
    for conn in held:
        assert pool.release(conn) is True
    assert (pool.size, pool.idle, pool.in_use) == (200, 200, 0)


def test_first_segment_exists_after_first_reserve(CorePool: Any, core_module: Any) -> None:
    pool = CorePool(1)
    assert pool.reserve() == 0
    assert pool.slots() == list(range(64))
    assert pool.slots(core_module.CREATING) == [0]
    assert pool.slots(core_module.IDLE) == []


def test_reserve_reuses_last_freed_slot(make_core_pool: Any) -> None:
    pool, _conns = make_core_pool(5)
    held = [pool.try_acquire() for _ in range(5)]
    by_slot = {pool.slot_of(c): c for c in held}
    pool.discard(by_slot[1])
    pool.discard(by_slot[3])
    # Freed slots form a stack: the last one freed is reserved first.
    assert pool.reserve() == 3
    assert pool.reserve() == 1
    assert pool.reserve() is None


def test_fill_none(CorePool: Any) -> None:
    pool = CorePool(2)
    slot = pool.reserve()
    before = snapshot(pool)
    with pytest.raises(TypeError):
        pool.fill(slot, None)
    assert snapshot(pool) == before
    pool.fill(slot, FakeConn())
    cycle_works(pool)


@pytest.mark.parametrize("where", ["idle", "borrowed", "claimed", "creating"])
def test_fill_object_twice(make_core_pool: Any, conn_type: Any, where: str) -> None:
    pool, (conn,) = make_core_pool(3, n_filled=1, conn_type=conn_type)
    if where == "borrowed":
        assert pool.try_acquire() is conn
    elif where == "claimed":
        assert pool.claim(0) is conn
    slot = pool.reserve()
    if where == "creating":
        conn = conn_type()
        pool.fill(slot, conn)
        slot = pool.reserve()
    before = snapshot(pool)
    with pytest.raises(InvalidSlot):
        pool.fill(slot, conn)
    assert snapshot(pool) == before
    other = conn_type()
    pool.fill(slot, other)
    assert pool.slot_of(other) == slot


def test_fill_object_that_left_the_pool(make_core_pool: Any, conn_type: Any) -> None:
    pool, (conn,) = make_core_pool(1, conn_type=conn_type)
    assert pool.try_acquire() is conn
    pool.discard(conn)
    slot = pool.reserve()
    pool.fill(slot, conn)  # it left the pool: it may come back
    assert pool.try_acquire() is conn


@pytest.mark.parametrize("state", ["EMPTY", "IDLE", "BUSY", "RESERVED"])
def test_fill_and_abandon_need_creating(make_core_pool: Any, core_module: Any, state: str) -> None:
    pool, conns = make_core_pool(3, n_filled=2)
    borrowed = pool.try_acquire()
    idle = next(c for c in conns if c is not borrowed)
    assert pool.claim(pool.slot_of(idle)) is idle
    slot = {
        "EMPTY": 2,
        "BUSY": pool.slot_of(borrowed),
        "RESERVED": pool.slot_of(idle),
    }.get(state)
    if state == "IDLE":
        pool.restore(pool.slot_of(idle))
        slot = pool.slot_of(idle)
    assert pool.slot_info(slot)[0] == getattr(core_module, state)
    before = snapshot(pool)
    with pytest.raises(InvalidSlot):
        pool.fill(slot, FakeConn())
    with pytest.raises(InvalidSlot):
        pool.abandon(slot)
    assert snapshot(pool) == before


BAD_SLOTS = [-1, 64, 10**6, 2**64, -(2**64), "0", 0.0, None, True, False]


@pytest.mark.parametrize("bad", BAD_SLOTS, ids=repr)
def test_bad_slot_indices(make_core_pool: Any, bad: Any) -> None:
    pool, _ = make_core_pool(3, n_filled=2)
    assert pool.reserve() == 2
    before = snapshot(pool)
    for op in (pool.abandon, pool.claim, pool.restore, pool.retire, pool.slot_info):
        with pytest.raises(InvalidSlot):
            op(bad)
    with pytest.raises(InvalidSlot):
        pool.fill(bad, FakeConn())
    assert snapshot(pool) == before
    assert pool.slot_info(2)[0] == 1  # still CREATING
    pool.fill(2, FakeConn())
    cycle_works(pool)


def test_slot_ops_on_a_pool_without_slots(CorePool: Any) -> None:
    pool = CorePool(1)
    for op in (pool.abandon, pool.claim, pool.restore, pool.retire, pool.slot_info):
        with pytest.raises(InvalidSlot):
            op(0)


# ------------------------------------------------------------------ discard


def test_discard(make_core_pool: Any, core_module: Any, conn_type: Any) -> None:
    pool, (_a, _b) = make_core_pool(2, conn_type=conn_type)
    conn = pool.try_acquire()
    slot = pool.slot_of(conn)
    pool.discard(conn)
    assert (pool.size, pool.idle, pool.in_use) == (1, 1, 0)
    assert pool.slot_info(slot)[0] == core_module.EMPTY
    with pytest.raises(NotBorrowed):
        pool.slot_of(conn)
    with pytest.raises(NotBorrowed):
        pool.discard(conn)
    with pytest.raises(NotBorrowed):
        pool.release(conn)
    assert pool.reserve() == slot
    assert pool.stats()["abandoned"] == 0


def test_discard_idle_is_refused(make_core_pool: Any) -> None:
    pool, (a, _b) = make_core_pool(2)
    before = snapshot(pool)
    with pytest.raises(NotBorrowed):
        pool.discard(a)
    assert snapshot(pool) == before


# ---------------------------------------------------- claim / restore / retire


def test_claim_restore_retire(make_core_pool: Any, core_module: Any, conn_type: Any) -> None:
    pool, (a, b, c) = make_core_pool(3, conn_type=conn_type)
    assert pool.claim(1) is b
    assert (pool.idle, pool.claimed, pool.size) == (2, 1, 3)
    assert pool.slot_info(1)[0] == core_module.RESERVED
    assert pool.slots(core_module.RESERVED) == [1]
    assert pool.slot_of(b) == 1
    # A claimed slot is never handed out.
    got = [pool.try_acquire(), pool.try_acquire(), pool.try_acquire()]
    assert got == [c, a, None]
    assert pool.restore(1) is True
    assert (pool.idle, pool.claimed) == (1, 0)
    assert pool.try_acquire() is b
    for conn in (a, b, c):
        pool.release(conn)
    assert pool.claim(0) is a
    assert pool.retire(0) is a
    assert (pool.size, pool.idle, pool.claimed) == (2, 2, 0)
    assert pool.slot_info(0)[0] == core_module.EMPTY
    with pytest.raises(NotBorrowed):
        pool.slot_of(a)
    assert pool.reserve() == 0


def test_claim_non_idle_returns_none(make_core_pool: Any) -> None:
    pool, (a, b) = make_core_pool(3, n_filled=2)
    borrowed = pool.try_acquire()
    creating = pool.reserve()
    assert pool.claim(pool.slot_of(b if borrowed is a else a)) is not None
    claimed = pool.slots(4)[0]
    before = snapshot(pool)
    assert pool.claim(pool.slot_of(borrowed)) is None  # BUSY
    assert pool.claim(creating) is None  # CREATING
    assert pool.claim(claimed) is None  # RESERVED already
    assert pool.claim(63) is None  # EMPTY
    assert snapshot(pool) == before


@pytest.mark.parametrize("op", ["restore", "retire"])
def test_restore_retire_need_reserved(make_core_pool: Any, op: str) -> None:
    pool, (_a, _b) = make_core_pool(3, n_filled=2)
    pool.try_acquire()
    creating = pool.reserve()
    before = snapshot(pool)
    for slot in (0, 1, creating, 63):  # BUSY/IDLE, CREATING, EMPTY
        with pytest.raises(InvalidSlot):
            getattr(pool, op)(slot)
    assert snapshot(pool) == before


def test_claimed_slot_keeps_its_place_in_the_idle_list(make_core_pool: Any) -> None:
    pool, (a, b, c) = make_core_pool(3)
    for _ in range(3):
        pool.try_acquire()
    for conn in (a, b, c):
        pool.release(conn)  # most recent: c, b, a
    assert pool.claim(0) is a
    assert pool.restore(0) is True
    # a went back to its old place (oldest), not to the top.
    assert [pool.try_acquire() for _ in range(4)] == [c, b, a, None]


def test_claimed_slot_skipped_then_restored_to_the_top(make_core_pool: Any) -> None:
    pool, (a, b, c) = make_core_pool(3)
    assert pool.claim(1) is b
    assert pool.try_acquire() is c
    assert pool.try_acquire() is a  # slot 1's entry was skipped and dropped
    pool.release(a)
    assert pool.restore(1) is True  # b comes back after a: b is the most recent
    assert [pool.try_acquire() for _ in range(3)] == [b, a, None]


def test_retired_slot_refilled_keeps_the_old_place(make_core_pool: Any) -> None:
    pool, (a, b, c) = make_core_pool(3)
    assert pool.claim(1) is b
    assert pool.retire(1) is b
    slot = pool.reserve()
    assert slot == 1
    d = FakeConn()
    pool.fill(slot, d)
    # Slot 1's old entry in the idle list still stands, so d takes b's place.
    assert [pool.try_acquire() for _ in range(4)] == [c, d, a, None]


def test_fifo_claim_restore_keeps_order(make_core_pool: Any) -> None:
    pool, (a, b, c) = make_core_pool(3, lifo=False)
    assert pool.claim(0) is a
    assert pool.restore(0) is True
    assert [pool.try_acquire() for _ in range(4)] == [a, b, c, None]


# ---------------------------------------------------------------- max_size


def test_max_size_raised_and_lowered_while_borrowed(make_core_pool: Any) -> None:
    pool, (_a, _b) = make_core_pool(2)
    held = [pool.try_acquire(), pool.try_acquire()]
    assert pool.reserve() is None
    pool.max_size = 4
    assert pool.max_size == 4
    assert pool.stats()["max_size"] == 4
    s = pool.reserve()
    assert s == 2
    c = FakeConn()
    pool.fill(s, c)
    pool.max_size = 1  # lowering retires nothing by itself
    assert (pool.size, pool.idle, pool.in_use) == (3, 1, 2)
    assert pool.reserve() is None
    for conn in held:
        assert pool.release(conn) is True
    assert (pool.size, pool.idle) == (3, 3)
    # Retiring idle ones brings the size under the new limit.
    for slot in (0, 1, 2):
        pool.claim(slot)
        pool.retire(slot)
    assert pool.size == 0
    assert pool.reserve() == 2
    assert pool.reserve() is None


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", None, True, 64 * 4096 + 1])
def test_max_size_setter_bad(make_core_pool: Any, value: Any) -> None:
    pool, _ = make_core_pool(2)
    before = snapshot(pool)
    with pytest.raises(ConfigurationError):
        pool.max_size = value
    assert pool.max_size == 2
    assert snapshot(pool) == before


# -------------------------------------------------------------- max_waiting


def test_max_waiting(make_core_pool: Any) -> None:
    pool, (conn,) = make_core_pool(1, max_waiting=1)
    assert pool.try_acquire() is conn
    ticket = pool.enqueue(lambda t: None)
    assert pool.waiting == 1
    before = snapshot(pool)
    with pytest.raises(TooManyRequests):
        pool.enqueue(lambda t: None)
    with pytest.raises(TooManyRequests):
        pool.acquire(timeout=5)
    assert snapshot(pool) == before
    with pytest.raises(PoolTimeout):  # timeout=0 never queues
        pool.acquire(timeout=0)
    pool.max_waiting = 2
    second = pool.enqueue(lambda t: None)
    assert pool.waiting == 2
    pool.max_waiting = 0  # no bound
    third = pool.enqueue(lambda t: None)
    assert pool.waiting == 3
    for t in (ticket, second, third):
        assert t.cancel() is True
    assert pool.waiting == 0


@pytest.mark.parametrize("value", [-1, 1.0, "1", None, True, 2**31])
def test_max_waiting_setter_bad(make_core_pool: Any, value: Any) -> None:
    pool, _ = make_core_pool(1, max_waiting=3)
    with pytest.raises(ConfigurationError):
        pool.max_waiting = value
    assert pool.max_waiting == 3


# --------------------------------------------------------------- generation


def test_generation(make_core_pool: Any) -> None:
    pool, (_a,) = make_core_pool(3, n_filled=1)
    assert pool.generation == 0
    assert pool.slot_info(0)[5] == 0
    assert pool.advance_generation() == 1
    assert pool.advance_generation() == 2
    assert pool.generation == 2
    assert pool.slot_info(0)[5] == 0  # stamped when filled, never after
    slot = pool.reserve()
    pool.fill(slot, FakeConn())
    assert pool.slot_info(slot)[5] == 2
    conn = pool.try_acquire()
    pool.release(conn)
    assert pool.slot_info(slot)[5] == 2


# ---------------------------------------------------------- slot information


def test_slot_info_times(make_core_pool: Any, CorePool: Any, core_module: Any) -> None:
    assert CorePool.now() <= CorePool.now()
    t0 = CorePool.now()
    pool, (conn,) = make_core_pool(1)
    state, created, checked_out, returned, uses, generation, expires = pool.slot_info(0)
    assert state == core_module.IDLE
    assert t0 <= created == returned <= pool.now()
    assert (checked_out, uses, generation, expires) == (0.0, 0, 0, 0.0)
    assert pool.try_acquire() is conn
    state, created2, checked_out, returned2, uses, _, _ = pool.slot_info(0)
    assert state == core_module.BUSY
    assert (created2, returned2) == (created, returned)
    assert created <= checked_out <= pool.now()
    assert uses == 1
    pool.release(conn)
    state, _, checked_out2, returned, uses, _, _ = pool.slot_info(0)
    assert state == core_module.IDLE
    assert checked_out2 == checked_out <= returned <= pool.now()
    assert uses == 1
    for i in (1, 2, 3, 6):
        assert isinstance(pool.slot_info(0)[i], float)


def test_slot_info_is_a_named_slot_info(make_core_pool: Any, core_module: Any) -> None:
    """The record has names for its fields, and is still the tuple it was."""
    import pypool

    pool, (conn,) = make_core_pool(1)
    assert pool.try_acquire() is conn
    info = pool.slot_info(0)
    assert type(info) is core_module.SlotInfo is pypool.SlotInfo
    assert isinstance(info, tuple) and len(info) == 7
    assert info._fields == (
        "state",
        "created",
        "checked_out",
        "returned",
        "uses",
        "generation",
        "expires",
    )
    assert tuple(info) == (
        info.state,
        info.created,
        info.checked_out,
        info.returned,
        info.uses,
        info.generation,
        info.expires,
    )
    assert (info.state, info.uses) == (core_module.BUSY, 1)
    assert info.created <= info.checked_out <= pool.now()
    assert pool.slot_info(0) == info  # equal as tuples, field by field


def test_fill_lifetime(CorePool: Any) -> None:
    pool = CorePool(3)
    pool.fill(pool.reserve(), FakeConn(), lifetime=30)
    _, created, *_, expires = pool.slot_info(0)
    assert expires == created + 30.0
    pool.fill(pool.reserve(), FakeConn(), 0.5)
    _, created, *_, expires = pool.slot_info(1)
    assert expires == created + 0.5
    pool.fill(pool.reserve(), FakeConn(), None)
    assert pool.slot_info(2)[6] == 0.0


@pytest.mark.parametrize("lifetime", [-1, math.nan, "1", True])
def test_fill_bad_lifetime(CorePool: Any, lifetime: Any) -> None:
    pool = CorePool(1)
    slot = pool.reserve()
    before = snapshot(pool)
    with pytest.raises(ConfigurationError):
        pool.fill(slot, FakeConn(), lifetime)
    assert snapshot(pool) == before
    pool.fill(slot, FakeConn())
    cycle_works(pool)


# ---------------------------------------------------------------- verdicts


def test_verdict_thresholds(make_core_pool: Any, core_module: Any) -> None:
    m = core_module
    assert m.REASONS[m.OK] == "ok"
    assert len(m.REASONS) == 9
    pool, (_a, _b) = make_core_pool(3, n_filled=2)
    assert (pool.max_idle, pool.max_uses, pool.check_after) == (0.0, 0, None)
    assert pool.verdict(0, True) == pool.verdict(0, False) == m.OK
    pool.check_after = 0  # every idle connection needs a check at hand-out
    assert pool.check_after == 0.0
    assert pool.verdict(0, True) == m.CHECK
    assert pool.verdict(0, False) == m.OK
    pool.check_after = None
    # max_uses: at hand-out the count includes that hand-out already.
    pool.max_uses = 2
    conn = pool.try_acquire()  # slot 1, uses 1
    assert pool.verdict(1, True) == m.OK
    assert pool.verdict(1, False) == m.OK
    pool.release(conn)
    conn = pool.try_acquire()  # uses 2
    assert pool.verdict(1, True) == m.OK
    assert pool.verdict(1, False) == m.USED_UP
    pool.release(conn)
    pool.max_uses = 0
    assert pool.verdict(1, False) == m.OK
    # STALE: made before the last advance_generation().
    pool.advance_generation()
    assert pool.verdict(0, True) == pool.verdict(1, False) == m.STALE
    slot = pool.reserve()
    pool.fill(slot, FakeConn())
    assert pool.verdict(slot, False) == m.OK
    # SHRUNK: returned while the pool is over max_size.
    pool.max_size = 2
    assert pool.verdict(slot, False) == m.SHRUNK
    assert pool.verdict(slot, True) == m.OK
    with pytest.raises(InvalidSlot):
        pool.verdict(64, True)


def test_verdict_expired_comes_first(CorePool: Any, core_module: Any) -> None:
    pool = CorePool(2)
    pool.fill(pool.reserve(), FakeConn(), lifetime=0)
    pool.fill(pool.reserve(), FakeConn(), lifetime=3600)
    pool.max_uses = 1
    pool.advance_generation()
    conn = pool.try_acquire()  # slot 1
    pool.release(conn)
    assert pool.verdict(0, True) == core_module.EXPIRED
    assert pool.verdict(1, False) == core_module.USED_UP  # before STALE


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_idle", -1),
        ("max_idle", math.nan),
        ("max_idle", None),
        ("max_uses", -1),
        ("max_uses", 1.5),
        ("max_uses", True),
        ("check_after", -0.5),
        ("check_after", "1"),
    ],
)
def test_threshold_setters_bad(CorePool: Any, name: str, value: Any) -> None:
    pool = CorePool(1)
    before = getattr(pool, name)
    with pytest.raises(ConfigurationError):
        setattr(pool, name, value)
    assert getattr(pool, name) == before


def test_slot_info_of_creating_slot(CorePool: Any, core_module: Any) -> None:
    pool = CorePool(1)
    pool.advance_generation()
    pool.reserve()
    assert pool.slot_info(0)[0] == core_module.CREATING
    pool.fill(0, FakeConn())
    assert pool.slot_info(0)[5] == 1


def test_uses_reset_when_refilled(make_core_pool: Any) -> None:
    pool, (_conn,) = make_core_pool(1)
    for _ in range(3):
        pool.release(pool.try_acquire())
    assert pool.slot_info(0)[4] == 3
    pool.discard(pool.try_acquire())
    pool.fill(pool.reserve(), FakeConn())
    assert pool.slot_info(0)[4] == 0
    assert pool.slot_info(0)[2] == 0.0


def test_slots_by_state(make_core_pool: Any, core_module: Any) -> None:
    pool, _conns = make_core_pool(6, n_filled=4)
    pool.try_acquire()  # slot 3
    pool.claim(1)
    pool.reserve()  # slot 4
    assert states(pool, core_module) == {
        "EMPTY": list(range(5, 64)),
        "CREATING": [4],
        "IDLE": [0, 2],
        "BUSY": [3],
        "RESERVED": [1],
    }
    assert (pool.idle, pool.in_use, pool.connecting, pool.claimed, pool.size) == (2, 1, 1, 1, 5)


def test_slot_of(make_core_pool: Any, conn_type: Any) -> None:
    pool, conns = make_core_pool(3, conn_type=conn_type)
    assert [pool.slot_of(c) for c in conns] == [0, 1, 2]
    borrowed = pool.try_acquire()
    assert pool.slot_of(borrowed) == 2
    pool.claim(0)
    assert pool.slot_of(conns[0]) == 0
    for obj in (conn_type(), None, object()):
        with pytest.raises(NotBorrowed):
            pool.slot_of(obj)


# -------------------------------------------------------------------- stats


def test_stats_after_known_sequence(make_core_pool: Any) -> None:
    waits: list[str] = []
    pool, (_a, _b) = make_core_pool(3, n_filled=2, max_waiting=5, on_wait=lambda: waits.append("w"))
    assert set(pool.stats()) == STATS_KEYS
    x = pool.acquire()
    y = pool.try_acquire()
    with pytest.raises(PoolTimeout):
        pool.acquire(0)
    calls: list[Any] = []
    ticket = pool.enqueue(calls.append)
    assert waits == ["w"]
    pool.release(x)  # handed to the ticket
    assert calls == [ticket]
    assert ticket.result() is x
    creating = pool.reserve()
    stats = pool.stats()
    assert {k: v for k, v in stats.items() if k not in TIME_KEYS} == {
        "acquires": 3,
        "waits": 1,
        "timeouts": 1,
        "abandoned": 0,
        "size": 3,
        "idle": 0,
        "in_use": 2,
        "connecting": 1,
        "claimed": 0,
        "waiting": 0,
        "max_size": 3,
        "max_waiting": 5,
    }
    assert 0.0 <= stats["wait_time_max"] <= stats["wait_time"]
    assert isinstance(stats["wait_time"], float)
    assert stats["use_time"] >= 0.0  # x went back once (coarse clocks may say 0)
    pool.abandon(creating)
    pool.release(x)
    pool.release(y)
    late = pool.enqueue(calls.append)  # idle: handed at once, no wait counted
    assert late.result() in (x, y)
    later = pool.stats()
    assert (later["acquires"], later["waits"], later["in_use"], later["size"]) == (4, 1, 1, 2)
    assert later["use_time"] >= stats["use_time"]


def test_stats_match_properties(make_core_pool: Any) -> None:
    pool, _ = make_core_pool(5, n_filled=3)
    pool.try_acquire()
    pool.claim(0)
    pool.reserve()
    stats = pool.stats()
    assert stats["size"] == pool.size == 4
    assert stats["idle"] == pool.idle == 1
    assert stats["in_use"] == pool.in_use == 1
    assert stats["connecting"] == pool.connecting == 1
    assert stats["claimed"] == pool.claimed == 1
    assert stats["waiting"] == pool.waiting == 0
    assert stats["max_size"] == pool.max_size == 5


def test_repr(make_core_pool: Any) -> None:
    pool, _ = make_core_pool(2, n_filled=1)
    text = repr(pool)
    assert "CorePool" in text and "open" in text
    pool.close()
    assert "closed" in repr(pool)


# -------------------------------------------------------------------- close


def test_close(make_core_pool: Any, core_module: Any, conn_type: Any) -> None:
    pool, conns = make_core_pool(6, n_filled=5, conn_type=conn_type)
    b1 = pool.try_acquire()  # slot 4
    b2 = pool.try_acquire()  # slot 3
    assert pool.claim(1) is conns[1]
    creating = pool.reserve()  # slot 5
    idle = pool.close()
    assert [id(c) for c in idle] == [id(conns[0]), id(conns[2])]  # in slot order
    assert pool.closed is True
    assert (pool.size, pool.idle, pool.in_use, pool.claimed, pool.connecting) == (4, 0, 2, 1, 1)
    assert pool.close() == []  # idempotent

    # Everything that would hand out or take a connection raises PoolClosed.
    for op in (pool.try_acquire, pool.acquire, pool.reserve, pool.advance_generation):
        with pytest.raises(PoolClosed):
            op()
    with pytest.raises(PoolClosed):
        pool.acquire(timeout=1)
    with pytest.raises(PoolClosed):
        pool.acquire(timeout=0)
    with pytest.raises(PoolClosed):
        pool.claim(0)
    with pytest.raises(PoolClosed):
        pool.enqueue(lambda t: None)
    with pytest.raises(PoolClosed):
        pool.max_size = 10
    with pytest.raises(PoolClosed):
        pool.max_waiting = 10
    assert pool.max_size == 6
    assert pool.generation == 0

    # Borrowed connections come back with release() -> False: close them.
    assert pool.release(b1) is False
    assert pool.slot_info(4)[0] == core_module.EMPTY
    with pytest.raises(NotBorrowed):
        pool.release(b1)
    pool.discard(b2)  # still works
    # fill() of a slot reserved before the close frees it and raises.
    late = conn_type()
    with pytest.raises(PoolClosed):
        pool.fill(creating, late)
    assert pool.slot_info(creating)[0] == core_module.EMPTY
    with pytest.raises(NotBorrowed):
        pool.slot_of(late)
    # restore() of a claimed slot frees it and returns False.
    assert pool.restore(1) is False
    assert pool.slot_info(1)[0] == core_module.EMPTY
    assert (pool.size, pool.idle, pool.in_use, pool.claimed, pool.connecting) == (0, 0, 0, 0, 0)
    assert pool.close() == []
    assert pool.stats()["size"] == 0


def test_retire_and_abandon_after_close(make_core_pool: Any, core_module: Any) -> None:
    pool, (a, b) = make_core_pool(3, n_filled=2)
    assert pool.claim(0) is a
    slot = pool.reserve()
    assert pool.close() == [b]
    assert pool.retire(0) is a
    pool.abandon(slot)
    assert pool.size == 0
    assert pool.slots(core_module.EMPTY) == list(range(64))


def test_close_empty_pool(CorePool: Any) -> None:
    pool = CorePool(1)
    assert pool.close() == []
    assert pool.closed
    with pytest.raises(PoolClosed):
        pool.reserve()
    assert isinstance(PoolClosed("x"), PoolError)


def test_validation_before_closed_check(make_core_pool: Any) -> None:
    pool, _ = make_core_pool(1)
    pool.close()
    with pytest.raises(ConfigurationError):
        pool.max_size = 0
    with pytest.raises(ConfigurationError):
        pool.enqueue(42)


# ----------------------------------------------------- objects without weakrefs


@pytest.mark.parametrize("factory", [NoWeakConn, new_bytearray, object])
def test_no_weakref_objects_everywhere(make_core_pool: Any, core_module: Any, factory: Any) -> None:
    pool, _conns = make_core_pool(3, n_filled=2, conn_type=factory)
    a = pool.try_acquire()
    calls: list[Any] = []
    b = pool.try_acquire()
    ticket = pool.enqueue(calls.append)
    assert not ticket.done
    pool.release(a)
    assert ticket.result() is a
    pool.discard(b)
    c = factory()
    pool.fill(pool.reserve(), c)
    assert pool.claim(pool.slot_of(c)) is c
    assert pool.restore(pool.slot_of(c)) is True
    assert pool.try_acquire() is c
    assert pool.release(c) is True
    assert pool.release(a) is True
    assert sorted(map(id, pool.close())) == sorted(map(id, [a, c]))
