"""Waiter tickets (``CorePool.enqueue``): the non-blocking wait of the asyncio pool."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

import pytest

from _support.cores import snapshot
from _support.fakes import FakeConn
from pypool.errors import (
    ConfigurationError,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyRequests,
)


class Recorder:
    """A ticket callback that records each call and the thread it ran in."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, int]] = []
        self.event = threading.Event()

    def __call__(self, ticket: Any) -> None:
        self.calls.append((ticket, threading.get_ident()))
        self.event.set()


def test_immediate_handoff_when_idle(make_core_pool: Any, conn_type: Any) -> None:
    waits: list[int] = []
    pool, (conn,) = make_core_pool(1, conn_type=conn_type, on_wait=lambda: waits.append(1))
    rec = Recorder()
    ticket = pool.enqueue(rec)
    assert rec.calls == [(ticket, threading.get_ident())]  # before enqueue returned
    assert ticket.done
    assert pool.waiting == 0
    assert waits == []
    assert ticket.result() is conn
    assert pool.in_use == 1
    stats = pool.stats()
    assert (stats["acquires"], stats["waits"]) == (1, 0)
    assert pool.release(conn) is True


def test_ticket_type(make_core_pool: Any, core_module: Any) -> None:
    pool, _ = make_core_pool(1)
    ticket = pool.enqueue(lambda t: None)
    assert isinstance(ticket, core_module.WaiterTicket)
    assert "WaiterTicket" in repr(ticket)


def test_waiting_ticket_completed_from_another_thread(make_core_pool: Any, conn_type: Any) -> None:
    waits: list[int] = []
    pool, (conn,) = make_core_pool(1, conn_type=conn_type, on_wait=lambda: waits.append(1))
    assert pool.try_acquire() is conn
    rec = Recorder()
    ticket = pool.enqueue(rec)
    assert not ticket.done
    assert rec.calls == []
    assert pool.waiting == 1
    assert waits == [1]  # on_wait runs when a ticket starts waiting

    releaser: list[int] = []

    def release() -> None:
        releaser.append(threading.get_ident())
        assert pool.release(conn) is True

    thread = threading.Thread(target=release)
    thread.start()
    thread.join(10)
    assert rec.event.wait(10)
    assert rec.calls == [(ticket, releaser[0])]  # once, from the releasing thread
    assert ticket.done
    assert pool.waiting == 0
    assert ticket.result() is conn
    assert (pool.in_use, pool.idle) == (1, 0)
    stats = pool.stats()
    assert (stats["acquires"], stats["waits"]) == (2, 1)
    assert pool.release(conn) is True
    assert len(rec.calls) == 1


def test_result_while_waiting_and_twice(make_core_pool: Any) -> None:
    pool, (conn,) = make_core_pool(1)
    pool.try_acquire()
    ticket = pool.enqueue(lambda t: None)
    before = snapshot(pool)
    with pytest.raises(PoolError) as info:
        ticket.result()
    assert type(info.value) is PoolError
    assert snapshot(pool) == before
    pool.release(conn)
    assert ticket.result() is conn
    with pytest.raises(PoolError) as info:
        ticket.result()
    assert type(info.value) is PoolError
    assert pool.in_use == 1


def test_cancel_while_waiting(make_core_pool: Any) -> None:
    pool, (conn,) = make_core_pool(1)
    pool.try_acquire()
    rec = Recorder()
    t1 = pool.enqueue(rec)
    t2 = pool.enqueue(rec)
    assert pool.waiting == 2
    assert t1.cancel() is True
    assert pool.waiting == 1
    assert t1.done
    assert pool.stats()["timeouts"] == 0
    with pytest.raises(PoolError):
        t1.result()
    assert t1.cancel() is False
    pool.release(conn)  # skips the cancelled ticket
    assert rec.calls == [(t2, threading.get_ident())]
    assert t2.result() is conn


def test_cancel_timed_out_counts_a_timeout(make_core_pool: Any) -> None:
    pool, (_conn,) = make_core_pool(1)
    pool.try_acquire()
    ticket = pool.enqueue(lambda t: None)
    assert ticket.cancel(timed_out=True) is True
    assert pool.stats()["timeouts"] == 1
    assert ticket.cancel(timed_out=True) is False
    assert pool.stats()["timeouts"] == 1
    assert pool.waiting == 0


def test_time_out_while_waiting(make_core_pool: Any) -> None:
    """The core decides the timeout of a ticket as it does a thread's: the
    same PoolTimeout, with the idle connections it counted, and a timeout in
    the statistics."""
    pool, (conn,) = make_core_pool(1)
    pool.try_acquire()
    ticket = pool.enqueue(lambda t: None)
    other = pool.enqueue(lambda t: None)
    exc = ticket.time_out()
    assert isinstance(exc, PoolTimeout)
    assert exc.idle == 0
    assert "no connection available after" in str(exc) and "idle 0" in str(exc)
    assert ticket.done and pool.waiting == 1
    assert pool.stats()["timeouts"] == 1
    assert ticket.time_out() is None  # decided once
    assert pool.stats()["timeouts"] == 1
    with pytest.raises(PoolError):
        ticket.result()
    pool.release(conn)  # skips the timed-out ticket
    assert other.result() is conn


def test_time_out_after_handoff_leaves_the_connection_to_take(make_core_pool: Any) -> None:
    """A connection handed just before the timer fired wins: no timeout."""
    pool, (conn,) = make_core_pool(1)
    pool.try_acquire()
    ticket = pool.enqueue(lambda t: None)
    pool.release(conn)
    assert ticket.time_out() is None
    assert pool.stats()["timeouts"] == 0
    assert ticket.result() is conn
    assert pool.in_use == 1


def test_time_out_after_close(make_core_pool: Any) -> None:
    pool, (_conn,) = make_core_pool(1)
    pool.try_acquire()
    ticket = pool.enqueue(lambda t: None)
    pool.close()
    assert ticket.time_out() is None
    with pytest.raises(PoolClosed):
        ticket.result()
    assert pool.stats()["timeouts"] == 0


def test_cancel_after_handoff_passes_to_next_waiter(make_core_pool: Any, conn_type: Any) -> None:
    pool, (conn,) = make_core_pool(1, conn_type=conn_type)
    pool.try_acquire()
    rec = Recorder()
    t1 = pool.enqueue(rec)
    t2 = pool.enqueue(rec)
    pool.release(conn)
    assert [t for t, _ in rec.calls] == [t1]
    assert t1.cancel() is True  # handed but not taken: passed on
    assert [t for t, _ in rec.calls] == [t1, t2]
    assert t2.result() is conn
    with pytest.raises(PoolError):
        t1.result()
    assert t1.cancel() is False
    assert (pool.in_use, pool.idle, pool.waiting) == (1, 0, 0)
    assert pool.stats()["acquires"] == 3  # try_acquire, t1, t2


def test_cancel_after_handoff_without_waiter_goes_idle(make_core_pool: Any, conn_type: Any) -> None:
    pool, (_a, _b) = make_core_pool(2, conn_type=conn_type)
    x = pool.try_acquire()
    y = pool.try_acquire()
    ticket = pool.enqueue(lambda t: None)
    pool.release(y)
    assert ticket.done
    assert ticket.cancel(timed_out=True) is True
    assert pool.stats()["timeouts"] == 0  # it had been served: not a timeout
    assert (pool.idle, pool.in_use) == (1, 1)
    assert pool.try_acquire() is y
    pool.release(x)
    pool.release(y)
    assert (pool.idle, pool.in_use) == (2, 0)


def test_tickets_served_first_in_first_out(make_core_pool: Any) -> None:
    pool, _conns = make_core_pool(3)
    held = [pool.try_acquire() for _ in range(3)]
    rec = Recorder()
    tickets = [pool.enqueue(rec) for _ in range(3)]
    for conn in held:
        pool.release(conn)
    assert [t for t, _ in rec.calls] == tickets
    assert [t.result() for t in tickets] == held
    assert pool.idle == 0


def test_fill_hands_to_waiting_ticket(CorePool: Any, core_module: Any) -> None:
    waits: list[int] = []
    pool = CorePool(1, on_wait=lambda: waits.append(1))
    rec = Recorder()
    ticket = pool.enqueue(rec)
    assert waits == [1]
    slot = pool.reserve()
    conn = FakeConn()
    pool.fill(slot, conn)
    assert ticket.done
    assert ticket.result() is conn
    assert pool.slot_info(slot)[0] == core_module.BUSY
    assert pool.slot_info(slot)[4] == 1


def test_restore_hands_to_waiting_ticket(make_core_pool: Any) -> None:
    pool, (a, b) = make_core_pool(2)
    assert pool.claim(0) is a
    x = pool.try_acquire()
    assert x is b
    ticket = pool.enqueue(lambda t: None)
    assert pool.restore(0) is True
    assert ticket.result() is a
    assert (pool.claimed, pool.idle, pool.in_use) == (0, 0, 2)


def test_close_completes_tickets(make_core_pool: Any) -> None:
    pool, (conn,) = make_core_pool(1)
    pool.try_acquire()
    rec = Recorder()
    tickets = [pool.enqueue(rec) for _ in range(3)]
    assert pool.close() == []
    assert [t for t, _ in rec.calls] == tickets
    assert pool.waiting == 0
    for t in tickets:
        assert t.done
        with pytest.raises(PoolClosed):
            t.result()
        assert t.cancel() is False
    assert pool.release(conn) is False
    assert len(rec.calls) == 3


def test_ticket_handed_before_close_then_cancelled(make_core_pool: Any) -> None:
    pool, (conn,) = make_core_pool(1)
    pool.try_acquire()
    ticket = pool.enqueue(lambda t: None)
    pool.release(conn)
    assert pool.close() == []
    # Cancelled after the close: the connection is passed on into the idle
    # list, where a second close() finds it.
    assert ticket.cancel() is True
    assert pool.close() == [conn]
    assert pool.size == 0


def test_ticket_handed_before_close_then_taken(make_core_pool: Any) -> None:
    pool, (conn,) = make_core_pool(1)
    pool.try_acquire()
    ticket = pool.enqueue(lambda t: None)
    pool.release(conn)
    pool.close()
    assert ticket.result() is conn
    assert pool.release(conn) is False
    assert pool.size == 0


def test_tickets_count_toward_max_waiting(make_core_pool: Any) -> None:
    pool, (conn,) = make_core_pool(1, max_waiting=2)
    pool.try_acquire()
    t1 = pool.enqueue(lambda t: None)
    t2 = pool.enqueue(lambda t: None)
    before = snapshot(pool)
    with pytest.raises(TooManyRequests):
        pool.enqueue(lambda t: None)
    with pytest.raises(TooManyRequests):
        pool.acquire(timeout=1)
    assert snapshot(pool) == before
    t1.cancel()
    t3 = pool.enqueue(lambda t: None)
    assert pool.waiting == 2
    pool.release(conn)
    assert t2.result() is conn
    assert not t3.done


def test_enqueue_when_max_waiting_reached_but_idle(make_core_pool: Any) -> None:
    pool, (a, _b) = make_core_pool(2, max_waiting=1)
    pool.try_acquire()
    ticket = pool.enqueue(lambda t: None)  # idle: served, never queued
    assert ticket.result() is a
    t2 = pool.enqueue(lambda t: None)
    assert pool.waiting == 1
    t2.cancel()


@pytest.mark.parametrize("callback", [None, 1, "cb"])
def test_enqueue_bad_callback(make_core_pool: Any, callback: Any) -> None:
    pool, _ = make_core_pool(1)
    before = snapshot(pool)
    with pytest.raises(ConfigurationError):
        pool.enqueue(callback)
    assert snapshot(pool) == before


def test_enqueue_after_close(make_core_pool: Any) -> None:
    pool, _ = make_core_pool(1)
    pool.close()
    with pytest.raises(PoolClosed):
        pool.enqueue(lambda t: None)


def test_tickets_and_thread_waiter_share_the_queue(make_core_pool: Any) -> None:
    started = threading.Event()
    pool, (conn,) = make_core_pool(1, on_wait=started.set)
    pool.try_acquire()
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(pool.acquire(timeout=10)))
    thread.start()
    assert started.wait(10)
    ticket = pool.enqueue(lambda t: None)
    assert pool.waiting == 2
    pool.release(conn)
    thread.join(10)
    assert not thread.is_alive()
    assert got == [conn]  # the thread waited first
    assert not ticket.done
    pool.release(conn)
    assert ticket.result() is conn


# ------------------------------------------------------------------ asyncio


async def _get(pool: Any, timeout: float | None = None) -> Any:
    """How the asyncio pool waits: a ticket whose callback wakes the loop."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def wake(_fut: asyncio.Future[None]) -> None:
        if not _fut.done():
            _fut.set_result(None)

    ticket = pool.enqueue(lambda t: loop.call_soon_threadsafe(wake, fut))
    try:
        await asyncio.wait_for(fut, timeout)
    except BaseException:
        ticket.cancel(timed_out=True)
        raise
    return ticket.result()


def _run_tasks(pool: Any, n_tasks: int, timeout: float | None, release_in_thread: bool) -> dict:
    holders: dict[int, int] = {}
    errors: list[str] = []
    outcome = {"ok": 0, "timeout": 0}

    async def task(i: int) -> None:
        try:
            conn = await _get(pool, timeout)
        except asyncio.TimeoutError:
            outcome["timeout"] += 1
            return
        if id(conn) in holders:
            errors.append(f"task {i}: connection held by task {holders[id(conn)]}")
        holders[id(conn)] = i
        await asyncio.sleep(random.choice((0, 0, 0.001)))
        del holders[id(conn)]
        outcome["ok"] += 1
        if release_in_thread and i % 2:
            await asyncio.get_running_loop().run_in_executor(None, pool.release, conn)
        else:
            pool.release(conn)

    async def main() -> None:
        await asyncio.gather(*(task(i) for i in range(n_tasks)))

    asyncio.run(main())
    assert errors == []
    return outcome


@pytest.mark.timeout(60)
@pytest.mark.parametrize("release_in_thread", [False, True], ids=["loop", "threads"])
def test_asyncio_many_tasks(make_core_pool: Any, release_in_thread: bool) -> None:
    pool, conns = make_core_pool(4)
    outcome = _run_tasks(pool, 200, None, release_in_thread)
    assert outcome == {"ok": 200, "timeout": 0}
    stats = pool.stats()
    assert (stats["idle"], stats["in_use"], stats["waiting"], stats["size"]) == (4, 0, 0, 4)
    assert stats["acquires"] == 200
    assert sorted(map(id, pool.close())) == sorted(map(id, conns))


@pytest.mark.timeout(60)
def test_asyncio_timeouts_lose_nothing(make_core_pool: Any) -> None:
    pool, conns = make_core_pool(4)
    outcome = _run_tasks(pool, 300, 0.002, True)
    assert outcome["ok"] + outcome["timeout"] == 300
    assert outcome["ok"] >= 4
    stats = pool.stats()
    assert (stats["idle"], stats["in_use"], stats["waiting"], stats["size"]) == (4, 0, 0, 4)
    assert stats["acquires"] >= outcome["ok"]
    assert stats["timeouts"] <= outcome["timeout"]
    assert sorted(map(id, pool.close())) == sorted(map(id, conns))


@pytest.mark.timeout(60)
def test_asyncio_close_wakes_tasks(make_core_pool: Any) -> None:
    pool, (_conn,) = make_core_pool(1)
    pool.try_acquire()

    async def main() -> list[Any]:
        tasks = [asyncio.ensure_future(_get(pool)) for _ in range(10)]
        while pool.waiting < 10:
            await asyncio.sleep(0)
        pool.close()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert [type(r) for r in results] == [PoolClosed] * 10
    assert pool.waiting == 0
