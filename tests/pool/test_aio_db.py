"""Cancellation and timeouts of the asyncio pools on a real PostgreSQL.

Two pool kinds (the ``kind`` fixture), each on both cores (``core_module``):

- ``asyncpg``: :class:`pypool.AsyncPool` with ``adapter=pypool.asyncpg``
  over ``asyncpg.connect(dsn)``;
- ``psycopg``: :class:`pypool.psycopg.AsyncConnectionPool` of
  ``psycopg.AsyncConnection`` (made with ``open=False``, then opened with
  ``await pool.open(wait=True)``).

A task is cancelled while it waits for a connection, while it holds one
running ``pg_sleep``, and while the connect it caused is in flight; a wait
times out; a thousand tasks share ten connections. Every pool gets
its own ``application_name``, so that ``pg_stat_activity`` tells its
backends apart from the test's own admin connection.

Tests are plain functions that drive their coroutine with ``asyncio.run``;
every pool is closed, on the loop that made it, in a ``finally``.

Needs PostgreSQL (``dsn`` fixture): skipped with the reason when it cannot be
reached, unless ``PYPOOL_REQUIRE_DB=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from types import ModuleType
from typing import Any

import pytest

import pypool
import pypool.asyncpg
from _support.waiting import eventually
from pypool import AsyncPool
from pypool import stats as names

asyncpg = pytest.importorskip("asyncpg")
psycopg = pytest.importorskip("psycopg")

import pypool.psycopg  # noqa: E402

pytestmark = pytest.mark.db

#: A generous bound for what happens "soon" (a connect, a background close).
SOON = 5.0


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def new_app_name() -> str:
    return f"pypool-aio-db-{uuid.uuid4().hex[:12]}"


# ------------------------------------------------------------------ the two kinds


class Kind:
    """One kind of asyncio pool on the real database, and the few calls that
    differ between the two (borrowing, a one-value query, the timeout error).
    """

    def __init__(self, name: str, core: ModuleType, dsn: str) -> None:
        self.name = name
        self.core = core
        self.dsn = dsn

    def __repr__(self) -> str:
        return f"<Kind {self.name} on {self.core.__name__}>"

    @property
    def timeout_error(self) -> type[BaseException]:
        return pypool.psycopg.PoolTimeout if self.name == "psycopg" else pypool.PoolTimeout

    def make(
        self,
        *,
        app: str,
        max_size: int,
        min_size: int = 0,
        timeout: float = 30.0,
        connect_delay: float = 0.0,
        on_connect: Callable[[], None] | None = None,
        autocommit: bool = True,
    ) -> Any:
        """A pool, not open yet; every connect calls ``on_connect()`` then
        sleeps ``connect_delay`` seconds before connecting for real."""
        if self.name == "asyncpg":
            dsn = self.dsn

            async def factory() -> Any:
                if on_connect is not None:
                    on_connect()
                if connect_delay:
                    await asyncio.sleep(connect_delay)
                return await asyncpg.connect(dsn, server_settings={"application_name": app})

            return AsyncPool.with_core(self.core)(
                factory,
                adapter=pypool.asyncpg,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout,
            )

        class SlowConnection(psycopg.AsyncConnection):  # type: ignore[misc]
            @classmethod
            async def connect(cls, *args: Any, **kwargs: Any) -> Any:
                if on_connect is not None:
                    on_connect()
                if connect_delay:
                    await asyncio.sleep(connect_delay)
                return await super().connect(*args, **kwargs)

        return pypool.psycopg.AsyncConnectionPool.with_core(self.core)(
            self.dsn,
            connection_class=SlowConnection,
            kwargs={"application_name": app, "autocommit": autocommit},
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            open=False,
        )

    async def open(self, pool: Any) -> None:
        await pool.open(wait=True, timeout=10)

    async def acquire(self, pool: Any, timeout: float | None = None) -> Any:
        if self.name == "psycopg":
            return await pool.getconn(timeout)
        return await pool.acquire(timeout)

    async def release(self, pool: Any, conn: Any) -> None:
        if self.name == "psycopg":
            await pool.putconn(conn)
        else:
            await pool.release(conn)

    async def value(self, conn: Any, sql: str) -> Any:
        """The first column of the first row of ``sql``."""
        if self.name == "psycopg":
            cur = await conn.execute(sql)
            row = await cur.fetchone()
            assert row is not None
            return row[0]
        return await conn.fetchval(sql)

    async def pid(self, conn: Any) -> int:
        return int(await self.value(conn, "SELECT pg_backend_pid()"))

    @contextlib.asynccontextmanager
    async def opened(self, **kw: Any) -> AsyncIterator[Any]:
        """``async with kind.opened(...) as pool``: made, opened, and closed
        at the end whatever happens."""
        pool = self.make(**kw)
        try:
            await self.open(pool)
            yield pool
        finally:
            await pool.close(timeout=5)


@pytest.fixture(params=["asyncpg", "psycopg"])
def kind(request: pytest.FixtureRequest, core_module: ModuleType, dsn: str) -> Kind:
    return Kind(request.param, core_module, dsn)


@contextlib.asynccontextmanager
async def admin_connection(dsn: str) -> AsyncIterator[Any]:
    """A connection of the test's own, outside every pool."""
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "pypool-aio-db-admin"})
    try:
        yield conn
    finally:
        await conn.close(timeout=5)


async def sleeping_backends(admin: Any, app: str) -> list[int]:
    """The backends of ``app`` busy in a ``pg_sleep``."""
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity"
        " WHERE application_name = $1 AND state = 'active' AND query ILIKE '%pg_sleep%'",
        app,
    )
    return [row["pid"] for row in rows]


async def backend_alive(admin: Any, pid: int) -> bool:
    return bool(await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid))


# ---------------------------------------------------- 1. cancelled while waiting


@pytest.mark.timeout(60)
@pytest.mark.parametrize("way", ["acquire", "connection"])
def test_cancelled_while_waiting_loses_nothing(kind: Kind, way: str) -> None:
    async def main() -> None:
        async with kind.opened(app=new_app_name(), min_size=1, max_size=1) as pool:
            held = await kind.acquire(pool, 5)
            held_pid = await kind.pid(held)
            entered = asyncio.Event()

            async def wait_for_one() -> None:
                if way == "acquire":
                    conn = await kind.acquire(pool, 10)
                    entered.set()  # never reached: cancelled in the wait
                    await kind.release(pool, conn)
                else:
                    async with pool.connection(timeout=10):
                        entered.set()

            waiter = asyncio.ensure_future(wait_for_one())
            assert await eventually(lambda: pool.waiting == 1)
            assert pool.stats()[names.PENDING_REQUESTS] == 1
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert not entered.is_set()
            assert pool.waiting == 0
            assert pool.stats()[names.PENDING_REQUESTS] == 0
            assert (pool.size, pool.in_use, pool.idle) == (1, 1, 0)

            await kind.release(pool, held)
            assert (pool.size, pool.in_use, pool.idle) == (1, 0, 1)

            # The same connection comes back at once: nothing was lost to the
            # cancelled waiter, and nothing new was connected.
            again = await kind.acquire(pool, 2)
            try:
                assert again is held
                assert await kind.pid(again) == held_pid
                assert pool.size == 1
            finally:
                await kind.release(pool, again)
            assert (pool.size, pool.in_use, pool.idle, pool.waiting) == (1, 0, 1, 0)
            stats = pool.stats()
            assert stats[names.CREATED] == 1
            assert stats[names.REQUESTS] == 2, stats
            assert stats[names.TIMEOUTS] == 0
            assert stats[names.COUNT] == {"idle": 1, "used": 0}
            assert stats[names.RETIRED] == {}

    run(main())


# ---------------------------------------------------- 2. cancelled while holding


@pytest.mark.timeout(60)
def test_cancelled_while_holding_a_running_query(kind: Kind, dsn: str) -> None:
    app = new_app_name()

    async def main() -> None:
        async with (
            admin_connection(dsn) as admin,
            kind.opened(app=app, min_size=1, max_size=1, autocommit=False) as pool,
        ):
            inside = asyncio.Event()
            pids: list[int] = []
            finished: list[bool] = []

            async def hold() -> None:
                async with pool.connection(timeout=5) as conn:
                    pids.append(await kind.pid(conn))
                    inside.set()
                    await kind.value(conn, "SELECT pg_sleep(5)")
                    finished.append(True)

            task = asyncio.ensure_future(hold())
            await asyncio.wait_for(inside.wait(), SOON)
            await asyncio.sleep(0.2)
            (first,) = pids
            # The query is running on the server: the scenario is the real one.
            deadline = time.monotonic() + SOON
            while first not in await sleeping_backends(admin, app):
                assert time.monotonic() < deadline, "pg_sleep never showed as running"
                await asyncio.sleep(0.02)
            assert pool.in_use == 1

            cancelled_at = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not finished
            assert await eventually(lambda: pool.in_use == 0)
            assert pool.size <= pool.max_size == 1

            # The next borrower is served at once, well before pg_sleep(5) ends.
            async with pool.connection(timeout=3) as conn:
                assert await asyncio.wait_for(kind.value(conn, "SELECT 1"), 3) == 1
                second = await kind.pid(conn)
                # Read while borrowed: what happened to the first one only.
                stats = pool.stats()
            served_after = time.monotonic() - cancelled_at
            assert served_after < 3.0, f"next borrower served {served_after:.2f} s after"
            assert pool.in_use == 0
            assert pool.size <= 1

            # No backend of this pool still sleeping ~2 s after the cancel.
            await asyncio.sleep(max(0.0, cancelled_at + 2.0 - time.monotonic()))
            assert await sleeping_backends(admin, app) == []

            # The statistics tell the same story as the backend pids.
            retired = {r: n for r, n in stats[names.RETIRED].items() if n}
            lost = sum(n for r, n in retired.items() if r in names.LOST_REASONS)
            assert stats[names.LOST] == lost
            assert stats[names.COUNT] == {"idle": 0, "used": 1}
            assert stats[names.REQUESTS] == 2, stats
            if second == first:  # reset and kept
                assert stats[names.CREATED] == 1, stats
                assert stats[names.CLOSED] == 0, stats
                assert retired == {}, stats
            else:  # discarded and replaced
                assert stats[names.CREATED] == 2, stats
                assert stats[names.CLOSED] == 1, stats
                assert sum(retired.values()) == 1, stats
                assert set(retired) <= names.LOST_REASONS | {"discarded"}, stats
                deadline = time.monotonic() + SOON
                while await backend_alive(admin, first):
                    assert time.monotonic() < deadline, "the discarded backend was not closed"
                    await asyncio.sleep(0.02)

    run(main())


# ------------------------------------------------- 3. cancelled while connecting


@pytest.mark.timeout(60)
def test_cancelled_while_connecting_the_connection_joins(kind: Kind) -> None:
    async def main() -> None:
        started = asyncio.Event()
        connects: list[float] = []

        def on_connect() -> None:
            connects.append(time.monotonic())
            started.set()

        async with kind.opened(
            app=new_app_name(), min_size=0, max_size=1, connect_delay=0.3, on_connect=on_connect
        ) as pool:
            assert pool.size == 0
            caller = asyncio.ensure_future(kind.acquire(pool, 10))
            await asyncio.wait_for(started.wait(), SOON)
            await asyncio.sleep(0.05)
            stats = pool.stats()
            assert stats[names.CONNECTING] == 1, stats
            assert stats[names.CREATED] == 0, stats
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
            assert pool.waiting == 0

            # Nobody asks again: the connect finishes and the connection joins.
            assert await eventually(lambda: pool.idle == 1), pool
            assert (pool.size, pool.in_use, pool.waiting) == (1, 0, 0)
            stats = pool.stats()
            assert stats[names.CREATED] == 1, stats
            assert stats[names.CONNECTING] == 0, stats
            assert stats[names.CONNECT_ERRORS] == 0, stats
            assert stats[names.REQUESTS] == 0, stats
            assert len(connects) == 1

            # It is a working connection, and it is the one handed out next.
            conn = await kind.acquire(pool, 2)
            try:
                assert await kind.value(conn, "SELECT 1") == 1
            finally:
                await kind.release(pool, conn)
            assert len(connects) == 1
            assert pool.stats()[names.CREATED] == 1
            assert (pool.size, pool.in_use, pool.idle) == (1, 0, 1)

    run(main())


# --------------------------------------------------------------- 4. timeouts


@pytest.mark.timeout(60)
def test_wait_times_out_on_time_and_the_pool_still_works(kind: Kind) -> None:
    async def main() -> None:
        async with kind.opened(app=new_app_name(), min_size=1, max_size=1) as pool:
            held = await kind.acquire(pool, 5)
            held_pid = await kind.pid(held)
            try:
                attempts: list[Callable[[], Awaitable[Any]]] = [
                    lambda: kind.acquire(pool, 0.3),
                    lambda: pool.connection(timeout=0.3).__aenter__(),
                ]
                for attempt in attempts:
                    start = time.monotonic()
                    with pytest.raises(kind.timeout_error) as info:
                        await attempt()
                    took = time.monotonic() - start
                    assert 0.25 <= took <= 2.0, took
                    assert isinstance(info.value, pypool.PoolTimeout)
                    if kind.name == "psycopg":
                        assert isinstance(info.value, psycopg.OperationalError)
                    assert pool.waiting == 0
                    assert (pool.size, pool.in_use) == (1, 1)
                assert pool.stats()[names.TIMEOUTS] == 2
            finally:
                await kind.release(pool, held)

            conn = await kind.acquire(pool, 2)
            try:
                assert await kind.pid(conn) == held_pid
                assert await kind.value(conn, "SELECT 1") == 1
            finally:
                await kind.release(pool, conn)
            assert (pool.size, pool.in_use, pool.idle, pool.waiting) == (1, 0, 1, 0)
            assert pool.stats()[names.CREATED] == 1
            if kind.name == "psycopg":
                assert pool.get_stats()["requests_errors"] == 2

    run(main())


# ------------------------------------------------------------ 5. many tasks


@pytest.mark.timeout(120)
def test_thousand_tasks_on_ten_connections(kind: Kind) -> None:
    async def main() -> None:
        async with kind.opened(
            app=new_app_name(), min_size=1, max_size=10, timeout=30, autocommit=False
        ) as pool:
            holders: set[int] = set()
            busy_pids: set[int] = set()
            conns: set[int] = set()
            pids: set[int] = set()
            pid_of: dict[int, int] = {}

            async def one() -> None:
                async with pool.connection() as conn:
                    assert id(conn) not in holders, "one connection handed to two tasks"
                    holders.add(id(conn))
                    try:
                        pid = await kind.pid(conn)
                        # the query answers: the driver knows the same pid
                        if kind.name == "psycopg":
                            assert pid == conn.info.backend_pid
                        else:
                            assert pid == conn.get_server_pid()
                        assert pid not in busy_pids, "one backend used by two tasks"
                        assert pid_of.setdefault(id(conn), pid) == pid
                        busy_pids.add(pid)
                        conns.add(id(conn))
                        pids.add(pid)
                        await asyncio.sleep(0)
                        busy_pids.discard(pid)
                    finally:
                        holders.discard(id(conn))

            await asyncio.gather(*(one() for _ in range(1000)))
            assert not holders and not busy_pids
            assert 1 <= len(pids) <= 10, pids
            assert len(conns) <= 10
            assert pool.size <= 10
            if kind.name == "asyncpg":
                # kept from the asyncpg copy of this test; the psycopg copy
                # allowed a pool that had not grown to max_size
                assert pool.size == 10
            assert pool.in_use == 0
            assert pool.waiting == 0
            assert pool.idle == pool.size
            stats = pool.stats()
            assert stats[names.REQUESTS] == 1000
            assert stats[names.COUNT] == {"idle": pool.size, "used": 0}
            assert stats[names.CREATED] <= 10
            if kind.name == "psycopg":
                assert pool.get_stats()["requests_num"] == 1000

    run(main())
