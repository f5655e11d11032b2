"""A network that silently drops packets (through a TCP proxy the test
controls), on ``Pool`` and ``AsyncPool``, both cores: while it is cut,
``acquire(timeout=1.0)`` raises ``PoolTimeout`` on time; once it is back,
the pool is whole again within seconds.

PostgreSQL through psycopg 3 for ``Pool`` and asyncpg for ``AsyncPool``
(``dsn`` fixture, ``PYPOOL_TEST_DSN``); MariaDB/MySQL through PyMySQL, a
blocking driver, for ``Pool`` only (``PYPOOL_TEST_MYSQL``). Every test needs
its server (marker ``db``): an unreachable one skips it, unless
``PYPOOL_REQUIRE_DB=1``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

import pypool.asyncpg
from _support import databases
from _support.blackhole import BlackHoleProxy
from _support.pools import Facade, Pools, each_pool
from _support.waiting import eventually
from pypool import stats
from pypool.dbapi import connect_factory
from pypool.errors import PoolTimeout

pytestmark = pytest.mark.db


def open_count(pool: Any) -> int:
    """Connections open now: idle, borrowed, or claimed by maintenance."""
    s = pool.stats()[stats.COUNT]
    return int(s["idle"] + s["used"])


def via(dsn: str, port: int) -> str:
    """``dsn`` (a URL) through the local port ``port``."""
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def proxy_to() -> Iterator[Callable[[str, int], BlackHoleProxy]]:
    made: list[BlackHoleProxy] = []

    def make(host: str, port: int) -> BlackHoleProxy:
        proxy = BlackHoleProxy((host, port))
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


async def blackhole_scenario(
    pool: Facade, proxy: BlackHoleProxy, probe: Callable[[Any], Awaitable[object]]
) -> None:
    """While ``proxy`` is cut, ``acquire(timeout=1.0)`` times out in about
    a second; after ``restore()`` the pool is whole again within seconds.
    ``probe(conn)`` asserts that ``conn`` answers a query."""
    async with pool.connection() as conn:
        await probe(conn)
    await asyncio.sleep(0.05)  # idle longer than check_after: every hand-out checks
    proxy.cut()
    took = []
    for _ in range(2):
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            await pool.acquire(timeout=1.0)
        took.append(time.monotonic() - started)
    cut_at = time.monotonic()
    await asyncio.sleep(1.0)
    proxy.restore()
    restored = time.monotonic()

    async def whole() -> bool:
        try:
            async with pool.connection(timeout=1.0) as conn:
                await probe(conn)
        except (PoolTimeout, asyncio.TimeoutError):
            return False
        return open_count(pool) >= pool.min_size

    deadline = restored + 10.0
    while not await whole():
        assert time.monotonic() < deadline, f"pool did not recover: {pool.raw!r}"
        await asyncio.sleep(0.05)
    recovery = time.monotonic() - restored
    outage = restored - cut_at + sum(took)
    print(
        f"\n{pool.core}: acquire(timeout=1.0) while cut raised PoolTimeout after "
        + ", ".join(f"{t:.3f} s" for t in took)
        + f"; whole again {recovery:.2f} s after restore() (cut {outage:.1f} s)"
    )
    assert all(t < 1.6 for t in took), took
    assert recovery < 10.0
    assert pool.stats()[stats.RETIRED].get("check", 0) >= 1
    held = [await pool.acquire(timeout=5.0) for _ in range(pool.min_size)]
    for conn in held:
        await probe(conn)
    for conn in held:
        await pool.release(conn)
    assert await eventually(lambda: pool.idle == pool.size >= pool.min_size, 20.0), pool.raw


@pytest.mark.timeout(90)
@each_pool
async def test_silent_network_postgresql(pools: Pools, dsn: str, proxy_to: Any) -> None:
    parts = urlsplit(dsn)
    proxy = proxy_to(parts.hostname or "127.0.0.1", parts.port or 5432)
    target = via(dsn, proxy.port)
    if pools.is_async:
        asyncpg = pytest.importorskip("asyncpg")
        factory: Any = lambda: asyncpg.connect(target, timeout=2)  # noqa: E731
        adapter: Any = pypool.asyncpg

        async def probe(conn: Any) -> None:
            assert await asyncio.wait_for(conn.fetchval("SELECT 1"), 2) == 1

    else:
        psycopg = pytest.importorskip("psycopg")
        factory = connect_factory(psycopg.connect, target, connect_timeout=2, io_timeout=2)
        adapter = None  # the pool's own: pypool.dbapi

        async def probe(conn: Any) -> None:
            assert conn.execute("SELECT 1").fetchone() == (1,)

    pool, _ = await pools.open(
        factory, adapter=adapter, min_size=2, max_size=4, check_after=0, timeout=10.0
    )
    await blackhole_scenario(pool, proxy, probe)


@pytest.fixture(scope="session")
def mysql_params() -> dict[str, Any]:
    """``pymysql.connect`` arguments for the MariaDB/MySQL test database
    (``PYPOOL_TEST_MYSQL``): the shared helper, once per session."""
    return databases.mysql_params()


@pytest.mark.timeout(90)
@each_pool(flavours=("sync",))  # PyMySQL is a blocking driver
async def test_silent_network_pymysql(
    pools: Pools, mysql_params: dict[str, Any], proxy_to: Any
) -> None:
    import pymysql

    proxy = proxy_to(mysql_params["host"], mysql_params["port"])
    params = {**mysql_params, "host": "127.0.0.1", "port": proxy.port}
    factory = connect_factory(pymysql.connect, connect_timeout=2, io_timeout=2, **params)

    async def probe(conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)

    pool, _ = await pools.open(
        factory, adapter=None, min_size=2, max_size=4, check_after=0, timeout=10.0
    )
    await blackhole_scenario(pool, proxy, probe)
