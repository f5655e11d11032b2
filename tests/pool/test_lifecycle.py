"""A pool's life, on ``Pool`` and ``AsyncPool``, both cores: ``open`` and
``wait`` (an ``open(wait=True)`` that fails closes the pool, a ``wait()``
that fails leaves it open), ``close`` (waiters woken, idle connections and a
connect in flight closed, the workers ended, idempotent), the context manager
and ``repr``. Fake connections throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from _support.fakes import AsyncFakeConn, FakeConn, FakeError
from _support.pools import Pools, each_pool
from _support.waiting import eventually
from pypool.errors import ConnectionFailed, PoolClosed, PoolTimeout


def workers_ended(pools: Pools, pool: Any) -> bool:
    """The pool's workers (threads of Pool, tasks of AsyncPool) have all ended."""
    if pools.is_async:
        return all(t.done() for t in pool._tasks)
    return all(not t.is_alive() for t in pool._threads)


# --------------------------------------------------------- open and wait


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fail_fast", [False, True], ids=["timeout", "fail_fast"])
@pytest.mark.parametrize("min_size_at_init", [False, True], ids=["open", "init-then-open"])
@each_pool
async def test_failed_open_wait_closes_the_pool(
    pools: Pools, fail_fast: bool, min_size_at_init: bool
) -> None:
    """``open(wait=True)`` that fails (PoolTimeout, or ConnectionFailed with
    ``fail_fast``) closes the pool before it raises: no worker goes on
    connecting in the background of a service that did not start."""
    error = FakeError("database is down")
    factory = pools.factory()
    factory.fail = error
    if min_size_at_init:
        pool, _ = pools.make(factory, min_size=2, max_size=2)
        if not pools.is_async:
            # A Pool with min_size opens when it is made: open(wait=True)
            # then only waits. (An AsyncPool opens at open(), on its loop.)
            assert await eventually(lambda: factory.calls >= 1)
    else:
        pool, _ = pools.make(factory, max_size=2)
        pool._policy.min_size = 2  # as resize(2, 2) would, without opening it
    expected = ConnectionFailed if fail_fast else PoolTimeout
    started = time.monotonic()
    with pytest.raises(expected) as info:
        # fail_fast: at the first failure, long before the timeout
        await pool.open(wait=True, timeout=10 if fail_fast else 0.25, fail_fast=fail_fast)
    assert time.monotonic() - started < 5.0
    assert info.value.__cause__ is error
    assert factory.calls >= 1
    assert pool.closed
    assert workers_ended(pools, pool)
    calls = factory.calls
    await asyncio.sleep(0.2)
    assert factory.calls == calls  # nothing connects any more
    with pytest.raises(PoolClosed):
        await pool.acquire(0.1)
    with pytest.raises(PoolClosed):
        await pool.wait(timeout=1)


@pytest.mark.timeout(30)
@each_pool
async def test_wait_that_fails_leaves_the_pool_open_and_connecting(pools: Pools) -> None:
    """A direct ``wait()`` is a question (are min_size connections ready?),
    asked of a pool that may be serving already: when it raises, the pool
    stays open and keeps connecting, so it recovers when the database
    does."""
    error = FakeError("database is down")
    factory = pools.factory()
    factory.fail = error
    pool, _ = pools.make(factory, min_size=2, max_size=2)
    with pytest.raises(ConnectionFailed) as failed:
        await pool.wait(timeout=10, fail_fast=True)  # at the first failure
    assert failed.value.__cause__ is error
    with pytest.raises(PoolTimeout) as timed_out:
        await pool.wait(timeout=0.3)
    assert timed_out.value.__cause__ is error
    with pytest.raises(ConnectionFailed):
        await pool.wait(timeout=5.0, fail_fast=True)  # at once: the last connect failed
    assert not pool.closed
    factory.fail = None
    await pool.wait(timeout=5.0)
    assert pool.idle == 2


# ------------------------------------------------------------------- close


@pytest.mark.timeout(30)
@each_pool
async def test_close_wakes_waiters_and_is_idempotent(pools: Pools) -> None:
    pool, _ = pools.make(max_size=1)
    held = await pool.acquire(2.0)

    async def wait() -> tuple[str, float]:
        try:
            await pool.acquire(10.0)
        except BaseException as exc:
            return type(exc).__name__, time.monotonic()
        return "got", 0.0

    waiters = [pools.spawn(wait) for _ in range(3)]
    assert await eventually(lambda: pool.waiting == 3)
    closed_at = time.monotonic()
    await pool.close()
    outcomes = await asyncio.wait_for(asyncio.gather(*waiters), 2.0)
    assert [o[0] for o in outcomes] == ["PoolClosed"] * 3
    assert max(o[1] for o in outcomes) - closed_at < 1.0
    assert pool.closed and "closed" in repr(pool.raw)
    await pool.release(held)  # after close: closed, not an error
    assert held.closed and held.closes == 1
    await pool.close()  # idempotent
    assert held.closes == 1
    with pytest.raises(PoolClosed):
        await pool.acquire(1.0)


@pytest.mark.timeout(30)
@each_pool
async def test_close_during_connect_closes_the_new_connection(pools: Pools) -> None:
    pool, factory = pools.make(pools.factory(delay=0.15), max_size=1)

    async def wait() -> str:
        try:
            await pool.acquire(5.0)
        except PoolClosed:
            return "closed"
        return "got"

    waiter = pools.spawn(wait)
    assert await eventually(lambda: factory.active == 1)
    await pool.close()  # waits for the connect in flight
    assert await asyncio.wait_for(waiter, 2.0) == "closed"
    assert len(factory.conns) == 1 and factory.conns[0].closed  # not leaked
    assert pool.size == 0


@pytest.mark.timeout(30)
@each_pool
async def test_close_closes_idle_connections(pools: Pools) -> None:
    pool, _ = pools.make(max_size=3)
    conns = [await pool.acquire(2.0) for _ in range(3)]
    for conn in conns:
        await pool.release(conn)
    await pool.close()
    assert [c.closes for c in conns] == [1, 1, 1]
    assert pool.size == 0


@pytest.mark.timeout(30)
@each_pool
async def test_close_ends_the_pool_workers(pools: Pools) -> None:
    pool, _ = await pools.open(min_size=2, max_size=2)
    await asyncio.sleep(0.05)  # the connect workers are asleep, waiting for demand
    workers = list(pool._tasks if pools.is_async else pool._threads)
    assert workers and not workers_ended(pools, pool)
    await pool.close(timeout=0.5)
    assert workers_ended(pools, pool)
    if pools.is_async:
        assert not any(t.cancelled() for t in workers), workers  # they end, not cancelled


@contextlib.asynccontextmanager
async def entered(pools: Pools, raw: Any) -> AsyncIterator[Any]:
    """``async with raw`` (AsyncPool) or ``with raw`` (Pool)."""
    if pools.is_async:
        async with raw as pool:
            yield pool
    else:
        with raw as pool:
            yield pool


@pytest.mark.timeout(30)
@each_pool
async def test_context_manager(pools: Pools) -> None:
    pool, _ = pools.make(max_size=2)
    async with entered(pools, pool.raw) as raw:
        assert raw is pool.raw
        async with pool.connection(timeout=2.0) as conn:
            assert not pool.closed
    assert pool.closed and conn.closes == 1
    with pytest.raises(PoolClosed):
        await pool.acquire(1.0)


# ------------------------------------------------------------------- repr


def fake_connect(dsn: str) -> FakeConn:
    return FakeConn(-1)


async def async_fake_connect(dsn: str) -> AsyncFakeConn:
    return AsyncFakeConn(-1)


@pytest.mark.timeout(30)
@each_pool
async def test_repr_shows_name_core_sizes_not_password(pools: Pools) -> None:
    secret = "s3cr3t-Pa55"
    dsn = f"postgresql://app:{secret}@db.example/orders"
    connect = async_fake_connect if pools.is_async else fake_connect
    pool, _ = pools.make(functools.partial(connect, dsn), name="orders-db", max_size=7, min_size=1)
    if pools.is_async:
        await pool.open()  # an AsyncPool fills min_size from open() on, on its loop
    assert await eventually(lambda: pool.idle == 1)
    text = repr(pool.raw)
    core = "python" if pools.core.__name__.endswith("_py") else "native"
    assert "orders-db" in text and f"core={core}" in text
    assert "1/7" in text and "min=1" in text
    assert secret not in text and secret not in str(pool.raw)
    assert pool.name == "orders-db"
