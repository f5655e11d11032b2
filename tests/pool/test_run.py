"""``run()`` against a real PostgreSQL, on ``Pool`` (psycopg 3) and
``AsyncPool`` (asyncpg), both cores: a backend terminated under the work is
retried on a new connection, a failed query is not retried (and its
connection is kept), and the retries are bounded.

Needs PostgreSQL (marker ``db``, ``dsn`` fixture): skipped with the reason
when it cannot be reached, unless ``PYPOOL_REQUIRE_DB=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import pypool.asyncpg
from _support.pools import Facade, Pools, assert_whole, drive, each_pool
from _support.waiting import wait_until
from pypool import stats

pytestmark = pytest.mark.db


class Pg:
    """PostgreSQL through the driver of the flavour: psycopg 3 for ``Pool``,
    asyncpg for ``AsyncPool``, with an admin connection of the same driver.
    Its calls are awaited alike (the sync ones block, never suspend)."""

    def __init__(self, pools: Pools, dsn: str) -> None:
        self.pools = pools
        self.dsn = dsn
        self.admin: Any = None
        if pools.is_async:
            self.driver = pytest.importorskip("asyncpg")
            self.division_by_zero: type[BaseException] = self.driver.DivisionByZeroError
            # A terminated backend: the query fails and the connection is
            # closed; which error asyncpg raises depends on when the server's
            # notice of the end arrives (during the query, or before it).
            self.lost: tuple[type[BaseException], ...] = (
                self.driver.PostgresConnectionError,
                self.driver.InterfaceError,
                self.driver.InternalClientError,
            )
        else:
            self.driver = pytest.importorskip("psycopg")
            self.division_by_zero = self.driver.errors.DivisionByZero
            self.lost = (self.driver.OperationalError,)

    async def connect(self) -> Any:
        if self.pools.is_async:
            return await self.driver.connect(self.dsn)
        return self.driver.connect(self.dsn, autocommit=True)

    def make(self, **kw: Any) -> Facade:
        """A pool of the flavour on the test database (10 s timeout)."""
        kw.setdefault("timeout", 10.0)
        if self.pools.is_async:
            dsn = self.dsn
            pool, _ = self.pools.make(
                lambda: self.driver.connect(dsn), adapter=pypool.asyncpg, **kw
            )
        else:
            from pypool.dbapi import connect_factory

            factory = connect_factory(self.driver.connect, self.dsn, connect_timeout=5)
            pool, _ = self.pools.make(factory, adapter=None, **kw)  # None: pypool.dbapi
        return pool

    async def open(self, **kw: Any) -> Facade:
        """:meth:`make`, then wait for ``min_size``."""
        pool = self.make(**kw)
        await pool.wait(5.0)
        return pool

    def work(self, body: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Any]:
        """``body`` (``async def body(conn)``) as the flavour's work for ``run()``."""
        if self.pools.is_async:
            return body
        return lambda conn: drive(body(conn))  # type: ignore[arg-type]

    async def value(self, conn: Any, sql: str) -> Any:
        """The first column of the first row of ``sql``."""
        if self.pools.is_async:
            return await conn.fetchval(sql)
        return conn.execute(sql).fetchone()[0]

    async def pid(self, conn: Any) -> int:
        return int(await self.value(conn, "SELECT pg_backend_pid()"))

    async def terminate(self, pid: int) -> None:
        """Ends the backend ``pid`` and waits until it is gone."""
        if self.pools.is_async:
            await self.admin.execute("SELECT pg_terminate_backend($1)", pid)
            deadline = time.monotonic() + 5.0
            while await self.admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
            ):
                assert time.monotonic() < deadline, f"backend {pid} still there"
                await asyncio.sleep(0.02)
            return
        self.admin.execute("SELECT pg_terminate_backend(%s)", [pid])

        def gone() -> bool:
            return not self.admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]
            ).fetchone()[0]

        assert wait_until(gone, 5.0), f"backend {pid} still there"


@contextlib.asynccontextmanager
async def postgres(pools: Pools, dsn: str) -> AsyncIterator[Pg]:
    pg = Pg(pools, dsn)
    pg.admin = await pg.connect()
    try:
        yield pg
    finally:
        if pools.is_async:
            await pg.admin.close()
        else:
            pg.admin.close()


@pytest.mark.timeout(60)
@each_pool
async def test_run_retries_when_the_backend_is_terminated(pools: Pools, dsn: str) -> None:
    async with postgres(pools, dsn) as pg:
        # check=False: the dead connection is found by the work, not a check
        pool = await pg.open(min_size=1, max_size=1, check=False)
        backends: list[int] = []

        async def body(conn: Any) -> int:
            backends.append(await pg.pid(conn))
            if len(backends) == 1:
                await pg.terminate(backends[0])  # from another connection
            return int(await pg.value(conn, "SELECT 40 + 2"))

        assert await pool.run(pg.work(body), retries=2, backoff=0.01) == 42
        assert len(backends) == 2 and backends[0] != backends[1]
        s = pool.stats()
        assert s[stats.RETIRED].get("broken") == 1
        assert s[stats.COUNT]["used"] == 0
        assert_whole(pool, 1)


@pytest.mark.timeout(60)
@each_pool
async def test_run_does_not_retry_a_failed_query(pools: Pools, dsn: str) -> None:
    async with postgres(pools, dsn) as pg:
        pool = await pg.open(min_size=1, max_size=1)
        backends: list[int] = []

        async def body(conn: Any) -> Any:
            backends.append(await pg.pid(conn))
            return await pg.value(conn, "SELECT 1 / 0")

        with pytest.raises(pg.division_by_zero):
            await pool.run(pg.work(body), retries=3, backoff=0.01)
        assert len(backends) == 1
        assert pool.stats()[stats.CLOSED] == 0, "a healthy connection is kept"
        assert_whole(pool, 1)

        async def again(conn: Any) -> tuple[int, int]:
            return await pg.pid(conn), await pg.value(conn, "SELECT 2")

        assert await pool.run(pg.work(again)) == (backends[0], 2)


@pytest.mark.timeout(60)
@each_pool
async def test_run_retries_are_bounded(pools: Pools, dsn: str) -> None:
    async with postgres(pools, dsn) as pg:
        pool = await pg.open(min_size=1, max_size=2)
        backends: list[int] = []

        async def always_broken(conn: Any) -> Any:
            backends.append(await pg.pid(conn))
            await pg.terminate(backends[-1])
            return await pg.value(conn, "SELECT 1")

        with pytest.raises(pg.lost):
            await pool.run(pg.work(always_broken), retries=2, backoff=0.01)
        assert len(backends) == 3, "retries + 1 attempts"
        assert len(set(backends)) == 3
        assert pool.stats()[stats.RETIRED].get("broken") == 3

        async def one(conn: Any) -> Any:
            return await pg.value(conn, "SELECT 1")

        assert await pool.run(pg.work(one)) == 1
