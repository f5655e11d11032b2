"""How many connections a pool makes and keeps, on ``Pool`` and ``AsyncPool``,
both cores: growth on demand up to ``max_size`` (the factory runs on the
pool's workers, at most ``num_workers`` at once), ``min_size`` filled without
demand, ``resize``, ``drain``, ``invalidate``, and the order idle connections
are handed out in (``lifo`` or round-robin). Fake connections throughout.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from typing import Any

import pytest

from _support.events import C, Recorder
from _support.pools import Pools, each_pool, retired
from _support.waiting import eventually
from pypool import stats as names
from pypool.errors import ConfigurationError, PoolTimeout


async def retired_in_time(pools: Pools, done: Callable[[], bool]) -> bool:
    """Whether the connections a pool retires are closed: at once by Pool
    (in the call that retires them), soon by AsyncPool (a close is a
    coroutine, which may run in a task of its own)."""
    if pools.is_async:
        return await eventually(done)
    return done()


def nothing_connecting(pool: Any) -> bool:
    return pool.stats()[names.CONNECTING] == 0  # type: ignore[no-any-return]


def where() -> tuple[str, str]:
    """Where the code runs: the thread's name and the task's ("" outside one)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop
        task = None
    return threading.current_thread().name, "" if task is None else task.get_name()


# ---------------------------------------------------------------- growth


@pytest.mark.timeout(30)
@each_pool
async def test_factory_runs_on_workers_and_growth_stops_at_max_size(pools: Pools) -> None:
    sizes: list[int] = []
    places: list[tuple[str, str]] = []
    holder: list[Any] = []

    def on_call() -> None:
        sizes.append(holder[0].size)
        places.append(where())

    pool, factory = pools.make(pools.factory(delay=0.01, on_call=on_call), max_size=4)
    holder.append(pool)
    assert factory.calls == 0 and pool.size == 0  # min_size=0: nothing yet

    callers: set[tuple[str, str]] = {where()}
    go = False
    got: list[Any] = []

    async def borrow() -> None:
        callers.add(where())
        conn = await pool.acquire(5.0)
        got.append(conn)
        sizes.append(pool.size)
        await eventually(lambda: go, timeout=5.0)
        await pool.release(conn)

    actors = [pools.spawn(borrow) for _ in range(6)]
    assert await eventually(lambda: len(got) == 4)
    await asyncio.sleep(0.1)  # no fifth connection arrives
    assert len(got) == 4 and pool.size == 4 and pool.waiting == 2
    go = True
    await asyncio.wait_for(asyncio.gather(*actors), 5.0)  # no errors
    assert len(got) == 6
    assert factory.calls == 4 and len({id(c) for c in got}) == 4
    assert max(sizes) <= 4
    # The factory runs on the pool's workers (threads of Pool, tasks of
    # AsyncPool), never in a caller.
    assert places and not set(places) & callers
    worker = 1 if pools.is_async else 0
    assert all(p[worker].startswith("pypool-") for p in places), places
    if not pools.is_async:
        threads = {thread for thread, _ in callers}
        assert all(c.thread.name not in threads for c in factory.conns)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("num_workers", [1, 3, None], ids=["1", "3", "default"])
@each_pool
async def test_num_workers_bounds_concurrent_connects(
    pools: Pools, num_workers: int | None
) -> None:
    places: set[tuple[str, str]] = set()
    factory = pools.factory(delay=0.03, on_call=lambda: places.add(where()))
    kw = {} if num_workers is None else {"num_workers": num_workers}
    pool, _ = pools.make(factory, max_size=6, **kw)
    go = False
    done: list[Any] = []

    async def borrow() -> None:
        async with pool.connection(timeout=5.0) as conn:
            done.append(conn)
            await eventually(lambda: go, timeout=5.0)

    actors = [pools.spawn(borrow) for _ in range(6)]
    assert await eventually(lambda: len(done) == 6, timeout=5.0)
    go = True
    await asyncio.wait_for(asyncio.gather(*actors), 5.0)
    if num_workers is None:
        assert factory.peak_active == 2  # two workers unless told
    else:
        assert factory.peak_active <= num_workers
        assert factory.peak_active >= min(num_workers, 2)  # they do run in parallel
        assert len(places) <= num_workers


@pytest.mark.timeout(30)
@each_pool
async def test_one_caller_makes_one_connection(pools: Pools) -> None:
    """A lone caller on an empty pool needs one connection: once it is made
    (and idle, or handed over), no worker may start another for that caller,
    however fast the factory is."""
    made = []
    for _ in range(15):
        pool, factory = pools.make(max_size=10)
        conn = await pool.acquire(2.0)
        await pool.release(conn)
        assert await eventually(functools.partial(nothing_connecting, pool))
        await asyncio.sleep(0.01)
        made.append(factory.calls)
        await pool.close()
    assert made == [1] * 15, f"connections made for one acquire: {made}"


@pytest.mark.timeout(30)
@each_pool
async def test_min_size_fills_without_demand(pools: Pools) -> None:
    pool, factory = pools.make(min_size=3, max_size=5)
    if pools.is_async:
        # An AsyncPool needs a loop for its tasks: it opens at open() (or
        # first use); a Pool with min_size opens when it is made.
        await pool.open()
    assert await eventually(lambda: pool.idle == 3)
    await asyncio.sleep(0.05)
    assert pool.size == 3 and factory.calls == 3


# ------------------------------------------------------- drain, invalidate


@pytest.mark.timeout(30)
@each_pool
async def test_drain_replaces_every_connection(pools: Pools) -> None:
    pool, _ = pools.make(max_size=3)
    rec = Recorder(pool, ("close",))
    a, b, c = [await pool.acquire(2.0) for _ in range(3)]
    await pool.release(a)
    await pool.release(b)
    await pool.drain()
    assert await retired_in_time(pools, lambda: a.closed and b.closed)  # idle: closed now
    assert a.closes == 1 and b.closes == 1
    assert sorted(rec.of("close")) == sorted([(C(a), "drained"), (C(b), "drained")])
    assert not c.closed  # borrowed: closed when it comes back
    assert pool.size == 1
    await pool.release(c)
    assert await retired_in_time(pools, lambda: c.closed)
    assert c.closes == 1 and pool.size == 0
    fresh = [await pool.acquire(2.0) for _ in range(3)]
    assert not {id(x) for x in fresh} & {id(a), id(b), id(c)}
    for conn in fresh:
        await pool.release(conn)
    assert not any(x.closed for x in fresh)
    assert retired(pool).get("drained") == 2


@pytest.mark.timeout(30)
@each_pool
async def test_drain_replaces_a_connection_whose_connect_began_before(pools: Pools) -> None:
    """A connect in flight when drain() runs makes an old connection (after a
    failover it may reach the old server): it is closed, never handed out."""
    pool, factory = pools.make(pools.factory(delay=0.15), max_size=2)
    taker = pools.spawn(lambda: pool.acquire(5))
    assert await eventually(lambda: factory.calls == 1)
    await pool.drain()
    got = await asyncio.wait_for(taker, 5.0)
    first = factory.conns[0]
    assert got is not first
    assert first.closed
    assert first.closes == 1
    await pool.release(got)


@pytest.mark.timeout(30)
@each_pool
async def test_drain_refills_to_min_size(pools: Pools) -> None:
    pool, factory = await pools.open(min_size=2, max_size=2)
    old = list(factory.conns)
    assert len(old) == 2
    await pool.drain()
    assert await eventually(lambda: all(c.closed for c in old))
    assert retired(pool) == {"drained": 2}
    assert await eventually(lambda: pool.idle == 2 and factory.made == 4)
    got = [await pool.acquire() for _ in range(2)]
    assert not {id(x) for x in got} & {id(x) for x in old}
    for conn in got:
        await pool.release(conn)


@pytest.mark.timeout(30)
@each_pool
async def test_invalidate(pools: Pools) -> None:
    pool, _ = pools.make(max_size=2)
    a, b = await pool.acquire(2.0), await pool.acquire(2.0)
    await pool.release(a)
    pool.invalidate()
    assert not a.closed and not b.closed  # nothing closed now
    assert pool.size == 2
    await pool.release(b)
    assert await retired_in_time(pools, lambda: b.closed)  # replaced at return
    assert b.closes == 1
    assert not a.closed
    new = await pool.acquire(2.0)
    assert new is not a
    assert await retired_in_time(pools, lambda: a.closed)  # replaced at hand-out
    assert a.closes == 1
    assert retired(pool).get("stale") == 2
    await pool.release(new)
    assert await pool.acquire(2.0) is new  # new ones are not stale
    await pool.release(new)


# ------------------------------------------------------------------ resize


@pytest.mark.timeout(30)
@each_pool
async def test_resize_down_and_up_while_borrowed(pools: Pools) -> None:
    pool, factory = pools.make(max_size=4)
    rec = Recorder(pool, ("close",))
    held = [await pool.acquire(2.0) for _ in range(4)]
    await pool.resize(0, 2)
    assert pool.max_size == 2 and pool.size == 4
    assert not any(c.closed for c in held)  # borrowed: not closed now
    with pytest.raises(PoolTimeout):
        await pool.acquire(0.1)  # over the new limit: no growth
    for conn in held:
        await pool.release(conn)
    assert await retired_in_time(
        pools, lambda: sum(c.closed for c in held) == 2
    )  # the extras, on return
    assert pool.size == 2 and pool.idle == 2
    assert retired(pool) == {"shrunk": 2}

    await pool.resize(0, 5)
    more = [await pool.acquire(2.0) for _ in range(5)]
    assert pool.size == 5 and factory.calls == 7
    for conn in more:
        await pool.release(conn)
    await pool.resize(0, 3)  # idle extras: closed now
    assert await retired_in_time(pools, lambda: sum(c.closed for c in more) == 2)
    assert pool.size == 3 and pool.idle == 3
    assert retired(pool) == {"shrunk": 4}
    assert [reason for _, reason in rec.of("close")] == ["shrunk"] * 4
    survivors = [await pool.acquire(2.0) for _ in range(3)]
    assert not any(c.closed for c in survivors)
    assert factory.calls == 7


@pytest.mark.timeout(30)
@each_pool
async def test_resize_min_size_refills(pools: Pools) -> None:
    pool, _ = pools.make(max_size=2)
    assert pool.size == 0
    if pools.is_async:
        # An AsyncPool starts its tasks on a loop, at open() or first use; a
        # Pool's resize() opens it.
        await pool.open()
    await pool.resize(3, 6)
    assert pool.min_size == 3 and pool.max_size == 6
    assert await eventually(lambda: pool.idle == 3)
    with pytest.raises(ConfigurationError, match="min_size"):
        await pool.resize(5, 4)
    assert pool.min_size == 3 and pool.max_size == 6


@pytest.mark.timeout(30)
@pytest.mark.parametrize("lifo", [True, False], ids=["lifo", "round-robin"])
@each_pool
async def test_lifo_and_round_robin(pools: Pools, lifo: bool) -> None:
    pool, _ = pools.make(max_size=2, lifo=lifo)
    a, b = await pool.acquire(2.0), await pool.acquire(2.0)
    await pool.release(a)
    await pool.release(b)
    assert await pool.acquire(2.0) is (b if lifo else a)
