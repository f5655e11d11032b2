"""A pool with every connection borrowed, on ``Pool`` and ``AsyncPool``, both
cores: ``PoolTimeout`` on time (its message and ``idle``), the wait queue's
bound (``max_waiting``: ``TooManyRequests``), a bad ``timeout`` refused
before anything is handed out, and the statistics a pool keeps of its
traffic. Fake connections throughout.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from _support.pools import Pools, assert_whole, each_pool
from _support.waiting import eventually
from pypool import stats as names
from pypool.errors import ConfigurationError, PoolTimeout, TooManyRequests

# ------------------------------------------------------------ saturation


@pytest.mark.timeout(30)
@each_pool
async def test_pool_timeout_when_saturated(pools: Pools) -> None:
    pool, factory = pools.make(max_size=2, timeout=0.1, name="busy")
    held = [await pool.acquire(2.0) for _ in range(2)]
    started = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        await pool.acquire()  # the pool's timeout
    elapsed = time.monotonic() - started
    assert 0.09 <= elapsed < 0.5, elapsed
    message = str(info.value)
    assert "'busy'" in message and "2/2" in message
    assert "pool 'busy': no connection available within 0.100 s" in message
    assert info.value.idle == 0  # the core's count at its decision: none could be taken
    assert info.value.__cause__ is None  # no connect failed
    assert pool.waiting == 0
    assert pool.stats()[names.TIMEOUTS] == 1 and factory.calls == 2

    with pytest.raises(PoolTimeout) as info:
        await pool.acquire(0.05)  # the caller's timeout
    assert "pool 'busy': no connection available within 0.050 s" in str(info.value)
    assert info.value.idle == 0
    assert pool.stats()[names.TIMEOUTS] == 2
    for conn in held:
        await pool.release(conn)
    assert_whole(pool, 2)


@pytest.mark.timeout(30)
@each_pool
async def test_too_many_requests(pools: Pools) -> None:
    pool, _ = pools.make(max_size=1, max_waiting=2)
    held = await pool.acquire(2.0)

    async def wait() -> str:
        async with pool.connection(timeout=5.0):
            return "ok"

    waiters = [pools.spawn(wait) for _ in range(2)]
    assert await eventually(lambda: pool.waiting == 2)
    started = time.monotonic()
    with pytest.raises(TooManyRequests):
        await pool.acquire(5.0)
    assert time.monotonic() - started < 0.5  # refused at once, not after a wait
    await pool.release(held)
    assert await asyncio.wait_for(asyncio.gather(*waiters), 5.0) == ["ok", "ok"]
    assert_whole(pool, 1)


@pytest.mark.timeout(30)
@each_pool
async def test_bad_timeout_is_refused_even_with_a_connection_idle(pools: Pools) -> None:
    pool, _ = await pools.open(min_size=1, max_size=1)
    for bad in ("1", -1, -0.5, float("nan"), True, [1]):
        with pytest.raises(ConfigurationError, match="timeout"):
            await pool.acquire(bad)
        with pytest.raises(ConfigurationError, match="timeout"):
            async with pool.connection(bad):
                pass
        assert pool.idle == 1 and pool.in_use == 0, bad
    for good in (0, 0.5, 2, float("inf")):
        conn = await pool.acquire(good)
        await pool.release(conn)
    assert pool.idle == 1 and pool.in_use == 0


# ------------------------------------------------------------------- stats


@pytest.mark.timeout(30)
@each_pool
async def test_stats(pools: Pools) -> None:
    pool, factory = pools.make(max_size=3, max_uses=4)
    cycles = 30
    for i in range(cycles):
        conns = [await pool.acquire(2.0) for _ in range(1 + i % 3)]
        for conn in conns:
            await pool.release(conn)
    if pools.is_async:
        # An AsyncPool closes a used-up connection in a task of its own (the
        # close is a coroutine); Pool closes it in release().
        assert await eventually(
            lambda: pool.stats()[names.CLOSED] == sum(c.closed for c in factory.conns)
        )
    closed = [c for c in factory.conns if c.closed]
    stats = pool.stats()
    n = sum(1 + i % 3 for i in range(cycles))
    assert stats[names.REQUESTS] >= n and stats[names.WAIT_TIME]["count"] >= n
    assert stats[names.USE_TIME]["count"] == stats[names.REQUESTS]  # all returned
    assert stats[names.CREATED] == len(factory.conns) == factory.calls
    assert stats[names.CREATE_TIME]["count"] == len(factory.conns)
    assert stats[names.CLOSED] == len(closed) > 0
    assert stats[names.RETIRED] == {"used_up": len(closed)}
    assert stats[names.LOST] == 0
    assert stats[names.COUNT] == {"idle": pool.size, "used": 0}
    assert pool.size == len(factory.conns) - len(closed)
    assert stats[names.MAX] == 3 and stats[names.IDLE_MIN] == 0
    assert stats[names.CONNECT_ERRORS] == 0 and stats[names.TIMEOUTS] == 0
    assert stats[names.POOL_NAME] == pool.name and stats[names.CORE] == pool.core
    open_before = pool.size
    await pool.close()
    stats = pool.stats()
    assert stats[names.CLOSED] == len([c for c in factory.conns if c.closed]) == len(factory.conns)
    assert stats[names.RETIRED]["closed"] == open_before
