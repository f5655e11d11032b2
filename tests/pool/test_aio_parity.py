"""``pypool.AsyncPool`` does what ``pypool.Pool`` does, on both cores:
``keepalive``,
replacement ahead of ``max_lifetime``, ``max_idle``, ``resize`` and
``drain``; the sync twins of these tests are in test_observability.py,
test_pool.py and test_health.py.

Fake asyncio connections serve every test but one (marker ``db``): a
keepalive check on asyncpg finds a backend terminated from another session.
Tests are plain functions that drive their coroutine with the ``run``
fixture, which closes every pool the test made before the loop ends.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from types import ModuleType
from typing import Any

import pytest

import pypool
import pypool.asyncpg
from _support.fakes import AsyncFactory, AsyncFakeAdapter, AsyncFakeConn
from _support.waiting import eventually
from pypool import AsyncPool, Pool, stats
from pypool.errors import ConfigurationError, PoolTimeout
from pypool.pool import EVENTS

# ------------------------------------------------------------------ fakes


def C(conn: AsyncFakeConn) -> tuple[str, int]:
    """A connection as recorded: by serial number (holding it would keep an
    abandoned one alive)."""
    return ("conn", conn.serial)


class Recorder:
    """Listens to ``events`` of ``pool`` and records ``(event, args)``, with
    connections by serial; checkin and reset also record the connection's
    rollbacks at that moment (was the reset done yet?)."""

    def __init__(self, pool: AsyncPool, events: Iterable[str] = tuple(EVENTS)) -> None:
        self.pool = pool
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.other_pool = 0  # listener calls whose first argument was not the pool
        for event in events:
            pool.add_listener(event, self._listener(event))

    def _listener(self, event: str) -> Callable[..., None]:
        def listener(pool: Any, *args: Any) -> None:
            if pool is not self.pool:
                self.other_pool += 1
            snapshot: tuple[Any, ...] = tuple(
                C(a) if isinstance(a, AsyncFakeConn) else a for a in args
            )
            if event in ("checkin", "reset") and args:
                snapshot = (*snapshot, args[0].rollbacks)
            self.calls.append((event, snapshot))

        return listener

    def of(self, event: str) -> list[tuple[Any, ...]]:
        return [args for e, args in self.calls if e == event]


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def pools() -> list[AsyncPool]:
    """The pools a test made (``run`` closes them)."""
    return []


@pytest.fixture
def make(core_module: ModuleType, pools: list[AsyncPool]) -> Callable[..., Any]:
    """``make(factory=None, **kw) -> (pool, factory)``: an AsyncPool on the
    core under test, with an AsyncFakeAdapter unless ``adapter`` is given."""

    def make(factory: Any = None, **kw: Any) -> tuple[AsyncPool, Any]:
        factory = AsyncFactory() if factory is None else factory
        kw.setdefault("adapter", AsyncFakeAdapter())
        kw.setdefault("timeout", 5.0)
        kw.setdefault("max_size", 4)
        pool = AsyncPool.with_core(core_module)(factory, **kw)
        pools.append(pool)
        return pool, factory

    return make


@pytest.fixture
def run(pools: list[AsyncPool]) -> Callable[[Callable[[], Awaitable[None]]], None]:
    """``run(main)``: ``asyncio.run(main())``, then every pool made is closed
    on that loop (also when the test fails)."""

    def run(main: Callable[[], Awaitable[None]]) -> None:
        async def guarded() -> None:
            try:
                await main()
            finally:
                for pool in pools:
                    await pool.close(timeout=2.0)

        asyncio.run(guarded())

    return run


# ------------------------------------------------------------------ helpers


async def maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def retired(pool: AsyncPool) -> dict[str, int]:
    return dict(pool.stats()[stats.RETIRED])


# ------------------------------------------------------------------ settings


@pytest.mark.timeout(30)
def test_settings_and_defaults_match_pool(core_module: ModuleType) -> None:
    sync = inspect.signature(Pool.__init__).parameters
    aio = inspect.signature(AsyncPool.__init__).parameters
    for name in ("leak_timeout", "keepalive"):
        assert name in aio, f"AsyncPool has no {name} parameter"
    public = {n: p.default for n, p in sync.items() if n != "self" and not n.startswith("_")}
    missing = sorted(n for n in public if n not in aio)
    assert not missing, f"AsyncPool lacks Pool's settings {missing}"
    differ = {n: (d, aio[n].default) for n, d in public.items() if aio[n].default != d}
    assert not differ, f"defaults differ (Pool, AsyncPool): {differ}"
    assert aio["leak_timeout"].default is None
    assert aio["keepalive"].default == 240.0

    AsyncPool.with_core(core_module)(AsyncFactory(), leak_timeout=0.5, keepalive=None)
    for bad in ({"keepalive": -1}, {"keepalive": 0}, {"leak_timeout": 0}, {"leak_timeout": "1"}):
        (name,) = bad
        with pytest.raises(ConfigurationError, match=name):
            AsyncPool.with_core(core_module)(AsyncFactory(), **bad)


# ------------------------------------------------------------------ keepalive


@pytest.mark.timeout(30)
def test_keepalive_replaces_an_idle_connection_that_fails_its_check(make: Any, run: Any) -> None:
    async def main() -> None:
        pool, factory = make(min_size=1, max_size=1, keepalive=0.1, check_after=None)
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

    run(main)


@pytest.mark.timeout(30)
def test_keepalive_period_and_async_check_callable(make: Any, run: Any) -> None:
    keepalive = 0.15
    checked: list[tuple[int, float]] = []

    async def check(conn: AsyncFakeConn) -> None:
        checked.append((conn.serial, time.monotonic()))
        await asyncio.sleep(0)

    async def main() -> None:
        pool, factory = make(
            min_size=1, max_size=1, keepalive=keepalive, check=check, check_after=None
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

    run(main)


@pytest.mark.timeout(30)
def test_keepalive_none_never_checks(make: Any, run: Any) -> None:
    async def main() -> None:
        # max_idle makes maintenance run often; min_size keeps one connection.
        pool, factory = make(min_size=1, max_size=2, max_idle=0.2, keepalive=None)
        rec = Recorder(pool, ("close",))
        a = await pool.acquire()
        b = await pool.acquire()
        await pool.release(a)
        await pool.release(b)
        assert await eventually(lambda: len(rec.of("close")) == 1)  # maintenance ran
        assert rec.of("close")[0][1] == "idle"
        await asyncio.sleep(0.3)
        assert [c.checks for c in factory.conns] == [0] * factory.made

    run(main)


@pytest.mark.db
@pytest.mark.timeout(60)
def test_keepalive_replaces_a_terminated_asyncpg_connection(make: Any, run: Any, dsn: str) -> None:
    asyncpg = pytest.importorskip("asyncpg")

    async def main() -> None:
        pool, _ = make(
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

    run(main)


# ------------------------------------------------------------------ lifetime, idle


@pytest.mark.timeout(30)
def test_max_lifetime_replaced_ahead_by_maintenance(make: Any, run: Any) -> None:
    """An idle connection near the end of its lifetime is replaced without a
    caller, and its replacement is connected first: the pool never drops
    below min_size."""

    async def main() -> None:
        pool, factory = make(min_size=1, max_size=2, max_lifetime=0.4)
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
        assert await eventually(lambda: pool.idle >= 1)
        async with pool.connection() as conn:
            assert conn is not old and not conn.closed

    run(main)


@pytest.mark.timeout(30)
def test_expired_idle_connection_retired_by_maintenance(make: Any, run: Any) -> None:
    async def main() -> None:
        pool, factory = make(max_size=1, max_lifetime=0.3)
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

    run(main)


@pytest.mark.timeout(30)
def test_max_idle_retired_by_maintenance_down_to_min_size(make: Any, run: Any) -> None:
    async def main() -> None:
        pool, factory = make(max_idle=0.1, min_size=1, max_size=3)
        rec = Recorder(pool, ("close",))
        held = [await pool.acquire() for _ in range(3)]
        for conn in held:
            await pool.release(conn)
        assert await eventually(lambda: pool.size == 1)  # no caller needed
        await asyncio.sleep(0.2)
        assert pool.size == 1 and pool.idle == 1  # min_size stays
        assert sum(c.closed for c in held) == 2
        assert factory.made == 3
        assert retired(pool) == {"idle": 2}
        assert [reason for _, reason in rec.of("close")] == ["idle", "idle"]

    run(main)


# ------------------------------------------------------------------ resize, drain


@pytest.mark.timeout(30)
def test_resize_down_closes_idle_extras(make: Any, run: Any) -> None:
    async def main() -> None:
        pool, factory = make(max_size=4)
        rec = Recorder(pool, ("close",))
        held = [await pool.acquire() for _ in range(4)]
        await maybe_await(pool.resize(0, 2))
        assert pool.max_size == 2 and pool.size == 4
        assert not any(c.closed for c in held)  # borrowed: not closed now
        with pytest.raises(PoolTimeout):
            await pool.acquire(timeout=0.1)  # over the new limit: no growth
        for conn in held:
            await pool.release(conn)
        assert await eventually(lambda: sum(c.closed for c in held) == 2)  # on return
        assert pool.size == 2 and pool.idle == 2
        assert retired(pool) == {"shrunk": 2}

        await maybe_await(pool.resize(0, 5))
        more = [await pool.acquire() for _ in range(5)]
        assert pool.size == 5 and factory.made == 7
        for conn in more:
            await pool.release(conn)
        await maybe_await(pool.resize(0, 3))  # idle extras: closed now
        assert await eventually(lambda: sum(c.closed for c in more) == 2)
        assert pool.size == 3 and pool.idle == 3
        assert retired(pool) == {"shrunk": 4}
        assert [reason for _, reason in rec.of("close")] == ["shrunk"] * 4
        survivors = [await pool.acquire() for _ in range(3)]
        assert not any(c.closed for c in survivors)
        assert factory.made == 7

    run(main)


@pytest.mark.timeout(30)
def test_drain_replaces_every_connection(make: Any, run: Any) -> None:
    async def main() -> None:
        pool, _ = make(max_size=3)
        rec = Recorder(pool, ("close",))
        a, b, c = [await pool.acquire() for _ in range(3)]
        await pool.release(a)
        await pool.release(b)
        await pool.drain()
        assert await eventually(lambda: a.closed and b.closed)  # idle: closed now
        assert sorted(rec.of("close")) == sorted([(C(a), "drained"), (C(b), "drained")])
        assert not c.closed  # borrowed: closed when it comes back
        assert pool.size == 1
        await pool.release(c)
        assert await eventually(lambda: c.closed)
        assert c.closes == 1 and pool.size == 0
        fresh = [await pool.acquire() for _ in range(3)]
        assert not {id(x) for x in fresh} & {id(a), id(b), id(c)}
        for conn in fresh:
            await pool.release(conn)
        assert not any(x.closed for x in fresh)
        assert retired(pool).get("drained") == 2

    run(main)


@pytest.mark.timeout(30)
def test_drain_refills_to_min_size(make: Any, run: Any) -> None:
    async def main() -> None:
        pool, factory = make(min_size=2, max_size=2)
        await pool.open(wait=True, timeout=5)
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

    run(main)
