"""``pypool.AsyncPool`` does what ``pypool.Pool`` does, on both cores:
``resize`` and ``drain``; the sync twins of these tests are in test_pool.py.
Events, leaks, ``keepalive``, ``max_lifetime`` and ``max_idle`` are tested on
both pools at once in test_events.py, test_leaks.py, test_checks.py and
test_recycle.py.

Fake asyncio connections serve every test. Tests are plain functions that
drive their coroutine with the ``run`` fixture, which closes every pool the
test made before the loop ends.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable
from types import ModuleType
from typing import Any

import pytest

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
