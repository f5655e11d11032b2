"""Vetting connections, on ``pypool.Pool`` and ``pypool.AsyncPool``, on both
cores: ``keepalive`` (idle connections checked by maintenance, the broken
ones replaced), ``check`` / ``check_after`` (a connection idle for a while is
checked before it is handed out; ``check=False`` and a ``check`` callable)
and ``reset`` (on return: the adapter's, a callable, ``False``, and a reset
that fails).

Each scenario runs on both flavours through ``_support.pools`` over fake
connections; one test (marker ``db``) finds, by keepalive, an asyncpg
backend terminated from another session.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import pypool.asyncpg
from _support.events import C, Recorder
from _support.pools import Pools, each_pool, retired, take
from _support.waiting import eventually
from pypool import stats

# ------------------------------------------------------------------ keepalive


@pytest.mark.timeout(30)
@each_pool
async def test_keepalive_replaces_an_idle_connection_that_fails_its_check(pools: Pools) -> None:
    pool, factory = pools.make(min_size=1, max_size=1, keepalive=0.1, check_after=None)
    rec = Recorder(pool, ("close",))
    await pool.open(wait=True, timeout=5)
    first = factory.conns[0]
    assert await eventually(lambda: first.checks >= 1)  # the adapter's check
    assert not first.closed
    assert await eventually(lambda: pool.idle == 1)
    assert retired(pool) == {}

    first.fail_check = True
    assert await eventually(lambda: first.closed)
    assert first.closes == 1
    assert rec.of("close") == [(C(first), "check")]
    assert retired(pool) == {"check": 1}
    assert pool.stats()[stats.LOST] == 1
    assert await eventually(lambda: pool.idle == 1 and factory.made == 2)
    second = factory.conns[1]
    async with pool.connection() as conn:
        assert conn is second
        assert not conn.closed


@pytest.mark.timeout(30)
@each_pool
async def test_keepalive_period_and_check_callable(pools: Pools) -> None:
    keepalive = 0.08
    checked: list[tuple[int, float]] = []

    # AsyncPool takes a coroutine function as check= (tested here); Pool
    # takes a plain callable.
    async def async_check(conn: Any) -> None:
        checked.append((conn.serial, time.monotonic()))
        await asyncio.sleep(0)

    def check(conn: Any) -> None:
        checked.append((conn.serial, time.monotonic()))

    pool, factory = pools.make(
        min_size=1,
        max_size=1,
        keepalive=keepalive,
        check=async_check if pools.is_async else check,
        check_after=None,
    )
    rec = Recorder(pool, ("close",))
    await pool.open(wait=True, timeout=5)
    held = await pool.acquire()
    checked.clear()
    await asyncio.sleep(3 * keepalive)  # a borrowed connection is never checked
    assert checked == []
    released_at = time.monotonic()
    await pool.release(held)

    assert await eventually(lambda: len(checked) >= 3)
    times = [t for _, t in checked[:3]]
    assert {serial for serial, _ in checked} == {held.serial}
    # unused for keepalive seconds first, then once a period at most
    assert times[0] - released_at >= keepalive * 0.9, times[0] - released_at
    assert times[1] - times[0] >= keepalive * 0.9, times
    assert times[2] - times[1] >= keepalive * 0.9, times
    assert held.checks == 0, "check= replaces the adapter's check"
    assert not held.closed and factory.made == 1
    assert rec.of("close") == [] and retired(pool) == {}
    async with pool.connection() as conn:
        assert conn is held


@pytest.mark.timeout(30)
@each_pool
async def test_keepalive_none_never_checks(pools: Pools) -> None:
    # max_idle makes maintenance run often; min_size keeps one connection.
    pool, factory = pools.make(min_size=1, max_size=2, max_idle=0.1, keepalive=None)
    rec = Recorder(pool, ("close",))
    a = await pool.acquire()
    b = await pool.acquire()
    await pool.release(a)
    await pool.release(b)
    assert await eventually(lambda: len(rec.of("close")) == 1)  # maintenance ran
    assert rec.of("close")[0][1] == "idle"
    await asyncio.sleep(0.15)
    assert [c.checks for c in factory.conns] == [0] * factory.made


@pytest.mark.db
@pytest.mark.timeout(60)
@each_pool(flavours=("async",))  # asyncpg is an asyncio driver
async def test_keepalive_replaces_a_terminated_asyncpg_connection(pools: Pools, dsn: str) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    pool, _ = pools.make(
        lambda: asyncpg.connect(dsn),
        adapter=pypool.asyncpg,
        min_size=1,
        max_size=1,
        keepalive=0.2,
        check_after=None,
    )
    closed: list[tuple[Any, str]] = []
    pool.add_listener("close", lambda p, conn, reason: closed.append((conn, reason)))
    await pool.open(wait=True, timeout=10)
    old = await pool.acquire()
    old_pid = await old.fetchval("SELECT pg_backend_pid()")
    await pool.release(old)
    admin = await asyncpg.connect(dsn)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", old_pid)
        assert await eventually(lambda: retired(pool).get("check") == 1, 15.0), retired(pool)
        assert closed == [(old, "check")]
        assert old.is_closed()
        assert await eventually(lambda: pool.idle == 1, 10.0)
        async with pool.connection(timeout=5) as conn:  # no check at hand-out
            assert conn is not old
            new_pid = await conn.fetchval("SELECT pg_backend_pid()")
            assert new_pid != old_pid
        alive = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", old_pid
        )
        assert alive == 0
        assert retired(pool) == {"check": 1}
    finally:
        await admin.close()


# ------------------------------------------------------------------ check


@pytest.mark.timeout(30)
@each_pool
async def test_check_only_after_check_after(pools: Pools) -> None:
    pool, _ = pools.make(max_size=1, check_after=0.05)
    conn = await take(pool)
    await pool.release(conn)
    again = await take(pool)
    assert again is conn and conn.checks == 0  # used a moment ago: no check
    await pool.release(again)
    await asyncio.sleep(0.1)
    again = await take(pool)
    assert again is conn and conn.checks == 1
    await pool.release(again)
    again = await take(pool)
    assert conn.checks == 1
    await pool.release(again)


@pytest.mark.timeout(30)
@each_pool
async def test_failed_check_discards_and_caller_still_served(pools: Pools) -> None:
    pool, _ = pools.make(max_size=2, check_after=0.05)
    held = [await take(pool) for _ in range(2)]
    for conn in held:
        conn.fail_check = True
        await pool.release(conn)
    await asyncio.sleep(0.1)
    started = time.monotonic()
    conn = await take(pool, timeout=2.0)
    assert time.monotonic() - started < 2.0
    assert conn not in held
    assert all(c.checks == 1 and c.closes == 1 for c in held)
    assert retired(pool).get("check") == 2
    assert pool.in_use == 1 and conn.checks == 0  # a new one: not checked
    await pool.release(conn)


@pytest.mark.timeout(30)
@each_pool
async def test_check_false_never_checks_and_custom_check_is_used(pools: Pools) -> None:
    pool, _ = pools.make(check=False, check_after=0.01, max_size=1)
    conn = await take(pool)
    conn.fail_check = True
    await pool.release(conn)
    await asyncio.sleep(0.05)
    assert await take(pool) is conn and conn.checks == 0

    checked: list[Any] = []
    pool2, _ = pools.make(check=checked.append, check_after=0.01, max_size=1)
    conn2 = await take(pool2)
    await pool2.release(conn2)
    checked.clear()
    await asyncio.sleep(0.05)
    assert await take(pool2) is conn2
    assert checked == [conn2] and conn2.checks == 0  # the adapter's check is not run


# ------------------------------------------------------------------ reset


@pytest.mark.timeout(30)
@each_pool
async def test_reset_failure_discards_and_closes(pools: Pools) -> None:
    pool, _ = pools.make(max_size=1)
    bad = await take(pool)
    bad.fail_reset = True
    await pool.release(bad)
    assert await pools.closed_by_now(bad)
    assert bad.rollbacks == 1 and bad.closes == 1
    assert pool.size == 0 and pool.in_use == 0
    assert retired(pool).get("reset_failed") == 1
    for _ in range(5):
        conn = await take(pool)
        assert conn is not bad
        await pool.release(conn)
    assert bad.closes == 1


@pytest.mark.timeout(30)
@each_pool
async def test_lost_connection_refilled_to_min_size(pools: Pools) -> None:
    pool, factory = await pools.open(min_size=2, max_size=4)
    assert await eventually(lambda: pool.idle == 2)
    bad = await take(pool)
    bad.fail_reset = True
    await pool.release(bad)
    assert await pools.closed_by_now(bad)
    assert await eventually(lambda: pool.idle == 2)
    assert factory.calls == 3 and pool.size == 2


@pytest.mark.timeout(30)
@each_pool
async def test_reset_callable_and_false(pools: Pools) -> None:
    resets: list[Any] = []
    pool, _ = pools.make(reset=resets.append, max_size=1)
    conn = await take(pool)
    await pool.release(conn)
    assert resets == [conn] and conn.rollbacks == 0
    pool2, _ = pools.make(reset=False, max_size=1)
    conn2 = await take(pool2)
    await pool2.release(conn2)
    assert conn2.rollbacks == 0 and pool2.idle == 1
