"""Recycling connections, on ``pypool.Pool`` and ``pypool.AsyncPool``, on both
cores: ``max_lifetime`` (an old connection retired at hand-out, at return,
and replaced ahead of time by maintenance, also while borrowed),
``max_uses`` (retired on its last return) and ``max_idle`` (retired at
hand-out, and by maintenance down to ``min_size``).

Each scenario runs on both flavours through ``_support.pools`` over fake
connections. Idle retirement and replacement under load against a real
PostgreSQL are in test_health.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from _support.events import C, Recorder
from _support.pools import Facade, Pools, each_pool, retired, take
from _support.waiting import eventually
from pypool import stats


def open_count(pool: Facade) -> int:
    """Connections open now: idle, borrowed, or claimed by maintenance."""
    s = pool.stats()[stats.COUNT]
    return int(s["idle"] + s["used"])


def without_maintenance(pools: Pools, pool: Facade) -> None:
    """Makes the pool's maintenance passes do nothing (they retire idle and
    expiring connections ahead of time), so that a scenario sees the checks
    at hand-out and return alone."""

    async def async_pass() -> None:
        return None

    def sync_pass() -> None:
        return None

    pool.raw._maintain = async_pass if pools.is_async else sync_pass


async def retired_at_hand_out(pools: Pools, pool: Facade, old: Any, reason: str) -> None:
    """``old``, idle and not closed yet (nothing closed it ahead of time), is
    retired for ``reason`` by the next hand-out, which gets a new one."""
    assert not old.closed
    new = await take(pool)
    assert new is not old
    assert await pools.closed_by_now(old)
    assert old.closes == 1
    assert retired(pool) == {reason: 1}
    await pool.release(new)


# ------------------------------------------------------------------ lifetime


@pytest.mark.timeout(30)
@each_pool
async def test_max_lifetime_at_hand_out(pools: Pools) -> None:
    pool, _ = pools.make(max_lifetime=0.1, max_size=1)
    without_maintenance(pools, pool)
    old = await take(pool)
    await pool.release(old)
    assert await take(pool) is old  # young enough: handed out again
    await pool.release(old)
    assert not old.closed
    await asyncio.sleep(0.15)
    await retired_at_hand_out(pools, pool, old, "expired")


@pytest.mark.timeout(30)
@each_pool
async def test_max_lifetime_replaced_ahead_by_maintenance(pools: Pools) -> None:
    """An idle connection near the end of its lifetime is replaced without a
    caller, and its replacement is connected first: the pool never drops
    below min_size."""
    pool, factory = pools.make(min_size=1, max_size=2, max_lifetime=0.25)
    log: list[tuple[Any, ...]] = []
    pool.add_listener("connect", lambda p, conn: log.append(("connect", conn.serial)))
    pool.add_listener(
        "close",
        lambda p, conn, reason: log.append(("close", conn.serial, reason, p.idle + p.in_use)),
    )
    await pool.open(wait=True, timeout=5)
    old = factory.conns[0]
    assert await eventually(lambda: old.closed)
    assert old.closes == 1
    closes = [e for e in log if e[0] == "close" and e[1] == old.serial]
    assert len(closes) == 1
    _, _, reason, open_then = closes[0]
    assert reason == "expired"
    assert open_then >= 1, f"below min_size when the old one closed: {log}"
    assert ("connect", 1) in log
    assert log.index(("connect", 1)) < log.index(closes[0]), log
    assert retired(pool).get("expired", 0) >= 1
    assert await eventually(lambda: pool.idle == 1 and len(factory.conns) >= 2)
    async with pool.connection() as conn:
        assert conn is not old and not conn.closed


@pytest.mark.timeout(30)
@each_pool
async def test_expired_idle_connection_retired_by_maintenance(pools: Pools) -> None:
    pool, factory = pools.make(max_size=1, max_lifetime=0.15)
    rec = Recorder(pool, ("close",))
    conn = await pool.acquire()
    await pool.release(conn)
    assert await eventually(lambda: conn.closed)  # no caller needed
    assert rec.of("close") == [(C(conn), "expired")]
    assert retired(pool) == {"expired": 1}
    assert pool.size == 0 and factory.made == 1  # no min_size: not replaced
    again = await pool.acquire()
    assert again is not conn
    await pool.release(again)


@pytest.mark.timeout(30)
@each_pool
async def test_max_lifetime_at_return(pools: Pools) -> None:
    pool, _ = pools.make(max_lifetime=0.1, max_size=1)
    conn = await take(pool)
    await asyncio.sleep(0.15)
    await pool.release(conn)
    assert await pools.closed_by_now(conn)
    assert conn.closes == 1 and pool.size == 0 and pool.idle == 0


@pytest.mark.timeout(30)
@each_pool
async def test_borrowed_connection_replaced_ahead_of_expiry(pools: Pools) -> None:
    """A connection that expires in a borrower's hands is replaced ahead of
    its return: the pool keeps min_size open meanwhile."""
    pool, _ = await pools.open(min_size=2, max_size=4, max_lifetime=0.2)
    conn = await pool.acquire()
    await asyncio.sleep(0.25)  # borrowed past its lifetime
    await pool.release(conn)  # expired: retired now
    assert retired(pool).get("expired", 0) >= 1
    assert pool.size >= 2 and open_count(pool) >= 2, pool


# ------------------------------------------------------------------ uses


@pytest.mark.timeout(30)
@each_pool
async def test_max_uses(pools: Pools) -> None:
    pool, factory = pools.make(max_size=1, max_uses=3)
    served = []
    for i in range(7):
        conn = await take(pool)
        served.append(conn)
        await pool.release(conn)
        if i % 3 == 2:  # retired on its third return
            assert await pools.closed_by_now(conn)
            assert conn.closes == 1
            assert pool.size == 0
    a, b, c = factory.conns
    assert served == [a, a, a, b, b, b, c]
    assert not c.closed
    assert retired(pool) == {"used_up": 2}


# ------------------------------------------------------------------ idle


@pytest.mark.timeout(30)
@each_pool
async def test_max_idle_at_hand_out(pools: Pools) -> None:
    pool, _ = pools.make(max_idle=0.1, check=False, max_size=1)
    without_maintenance(pools, pool)
    conn = await take(pool)
    await pool.release(conn)
    for _ in range(5):  # kept while it is used more often than max_idle
        await asyncio.sleep(0.03)
        assert await take(pool) is conn
        await pool.release(conn)
    await asyncio.sleep(0.15)
    await retired_at_hand_out(pools, pool, conn, "idle")


@pytest.mark.timeout(30)
@each_pool
async def test_max_idle_retired_by_maintenance_down_to_min_size(pools: Pools) -> None:
    pool, factory = pools.make(max_idle=0.1, min_size=1, max_size=3)
    rec = Recorder(pool, ("close",))
    held = [await take(pool) for _ in range(3)]
    for conn in held:
        await pool.release(conn)
    assert await eventually(lambda: pool.size == 1)  # no caller needed
    await asyncio.sleep(0.15)
    assert pool.size == 1 and pool.idle == 1  # min_size stays
    assert sum(c.closed for c in held) == 2
    assert factory.made == 3
    assert retired(pool) == {"idle": 2}
    assert [reason for _, reason in rec.of("close")] == ["idle", "idle"]
    # the one kept for min_size is handed out, though idle past max_idle
    (kept,) = [c for c in held if not c.closed]
    async with pool.connection() as conn:
        assert conn is kept
    assert retired(pool) == {"idle": 2}
