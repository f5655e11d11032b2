"""Borrowing and giving back, on ``Pool`` and ``AsyncPool``, both cores:
``acquire``/``release`` reset a connection and reuse the idle one, the
``connection()`` block gives it back on exit and on error, a ``release``
of something not borrowed (or given back already) changes nothing, and a
spike of requests does not open a connection per request. Fake connections
throughout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from _support.fakes import FakeError
from _support.pools import Pools, each_pool, take
from pypool import stats as names
from pypool.errors import NotBorrowed


def core_name(pools: Pools) -> str:
    return "python" if pools.core.__name__.endswith("_py") else "native"


def steady(pool: Any) -> dict[str, Any]:
    """The statistics that do not depend on timing."""
    stats = pool.stats()
    timed = {names.CREATE_TIME, names.WAIT_TIME, names.USE_TIME}
    result = {k: v for k, v in stats.items() if k not in timed}
    result.update({k: stats[k]["count"] for k in timed})
    return result


# ------------------------------------------------------- acquire / release


@pytest.mark.timeout(30)
@each_pool
async def test_acquire_release_resets(pools: Pools) -> None:
    pool, _ = pools.make(max_size=2)
    assert pool.core == core_name(pools)
    conn = await take(pool)
    assert pool.in_use == 1
    assert conn.rollbacks == 0
    await pool.release(conn)
    assert conn.rollbacks == 1  # reset on return
    assert pool.in_use == 0 and pool.idle >= 1
    again = await take(pool)
    assert again is conn  # the idle one is reused, not a new one made
    await pool.release(again)
    assert conn.rollbacks == 2
    assert not conn.closed


@pytest.mark.timeout(30)
@each_pool
async def test_connection_block_returns_on_exit_and_on_error(pools: Pools) -> None:
    pool, _ = pools.make(max_size=1)
    async with pool.connection() as conn:
        assert pool.in_use == 1
    assert pool.in_use == 0 and conn.rollbacks == 1
    with pytest.raises(FakeError, match="boom"):
        async with pool.connection(timeout=2.0) as conn2:
            assert conn2 is conn
            raise FakeError("boom")
    assert pool.in_use == 0 and pool.idle == 1
    assert conn.rollbacks == 2 and not conn.closed
    # max_size=1: a leaked connection would make this time out
    async with pool.connection(timeout=1.0) as conn3:
        assert conn3 is conn


@pytest.mark.timeout(30)
@each_pool
async def test_not_borrowed_changes_nothing(pools: Pools) -> None:
    pool, _ = pools.make(max_size=2)
    other_pool, _ = pools.make(max_size=1)
    held = await take(pool)
    spare = await take(pool)
    await pool.release(spare)
    foreign = await take(other_pool)
    before = steady(pool)
    rollbacks = (held.rollbacks, spare.rollbacks)
    # type(held)(99): a fake connection of the flavour that no pool made
    for obj in (object(), type(held)(99), foreign, spare):  # spare: given back already
        with pytest.raises(NotBorrowed):
            await pool.release(obj)
    assert steady(pool) == before
    assert (held.rollbacks, spare.rollbacks) == rollbacks
    assert not spare.closed and not held.closed and foreign.rollbacks == 0
    await pool.release(held)  # still borrowed, still returnable
    with pytest.raises(NotBorrowed):
        await pool.release(held)  # double release
    assert held.rollbacks == rollbacks[0] + 1
    await other_pool.release(foreign)


# ------------------------------------------------------------------- spike


@pytest.mark.timeout(60)
@each_pool
async def test_spike_does_not_flood_the_database(pools: Pools) -> None:
    """50 requests at once, connects take 150 ms: a handful of connections
    serve them all (each request holds one for 2 ms), instead of 50 connects."""
    holder: list[Any] = []
    sizes: list[int] = []
    factory = pools.factory(delay=0.15, on_call=lambda: sizes.append(holder[0].size))
    pool, _ = pools.make(factory, max_size=50, timeout=10.0)
    holder.append(pool)
    n = 50
    # Pool: each request is a thread of its own (the loop's default executor
    # is widened to hold them all), started together at a barrier; AsyncPool:
    # tasks made in one go start together anyway (a thread barrier would
    # block their one loop).
    barrier = None
    if not pools.is_async:
        barrier = threading.Barrier(n)
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(n))
    done: list[float] = []
    errors: list[BaseException] = []

    async def request() -> None:
        if barrier is not None:
            barrier.wait(5.0)
        try:
            async with pool.connection():
                sizes.append(pool.size)
                await asyncio.sleep(0.002)
            done.append(time.monotonic())
        except BaseException as exc:
            errors.append(exc)

    await asyncio.wait_for(asyncio.gather(*(pools.spawn(request) for _ in range(n))), 15.0)
    peak = max(sizes)
    print(
        f"\nspike on the {core_name(pools)} core ({pools.flavour}): peak pool size {peak}, "
        f"{factory.calls} connects for {n} requests"
    )
    assert not errors
    assert len(done) == n
    assert peak <= 10
    assert factory.calls <= 10
