"""``pypool.psycopg.AsyncConnectionPool`` against
``psycopg_pool.AsyncConnectionPool``, on real PostgreSQL connections:
measurements, never assertions of speed.

Every pool holds :data:`CONNECTIONS` connections opened with
``autocommit=True`` (``min_size=max_size``), and is full before timing starts.
pypool runs on both cores (``pypool-native``, ``pypool-python``). Each
benchmark runs on its own event loop; a timed call is one
``loop.run_until_complete()`` of many cycles, so the loop's own entry cost is
spread over :data:`INNER` of them. Groups (``--benchmark-group-by=group``):

* ``psycopg async getconn/putconn``: ``await pool.putconn(await
  pool.getconn())``, :data:`INNER` cycles per timed call, one task;
  ``extra_info["ns_per_cycle"]``.
* ``psycopg async connection()``: ``async with pool.connection(): pass``,
  likewise. No query runs, so this is the pool's whole share of a checkout.
* ``psycopg async tasks SELECT 1``: :data:`TASKS` tasks each run ``SELECT
  1`` on a checked-out connection :data:`PER_TASK` times, on a pool of
  :data:`CONNECTIONS` connections, against the same work on
  :data:`CONNECTIONS` persistent connections shared by the tasks through an
  ``asyncio.Queue`` (``queue``). ``extra_info["requests_per_s"]`` is the
  throughput at the median round.

The database is ``PYPOOL_BENCH_DSN``, else ``PYPOOL_TEST_DSN``, else a local
default; the benchmarks are skipped, with the reason, when it cannot be
reached (a failure instead with ``PYPOOL_REQUIRE_DB=1``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from itertools import repeat
from typing import Any

import pytest

from _common import (
    PSYCOPG_POOLS,
    TIMEOUT,
    database,
    psycopg_param,
    psycopg_pool_class,
    psycopg_pool_kwargs,
    record_per_cycle,
    record_rate,
    skip_unless_built,
)

pytestmark = pytest.mark.db

#: Connections in every pool.
CONNECTIONS = 10
#: Checkout cycles per timed call in the single-task benchmarks.
INNER = 1000
#: Concurrent tasks of the SELECT 1 benchmark.
TASKS = 100
#: Requests per task in one round: the same for every contender.
PER_TASK = 100
ROUNDS = 7

# ------------------------------------------------------------------ contenders


class Loop:
    """An event loop owned by one benchmark: ``loop.run(coro)``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


async def make_pool(name: str, dsn: str, size: int) -> Any:
    """A full pool of ``size`` autocommit connections, opened on the running loop."""
    pool_class = psycopg_pool_class(name, asynchronous=True)
    pool = pool_class(dsn, **psycopg_pool_kwargs(size, autocommit=True, open=False))
    await pool.open(wait=True, timeout=TIMEOUT)
    return pool


@pytest.fixture
def looped_pool(request: pytest.FixtureRequest) -> Iterator[tuple[Loop, Any]]:
    skip_unless_built(request.param)
    dsn = database()
    loop = Loop()
    try:
        pool = loop.run(make_pool(request.param, dsn, CONNECTIONS))
        try:
            yield loop, pool
        finally:
            loop.run(pool.close())
    finally:
        loop.close()


# ------------------------------------------------------------------ one task


@pytest.mark.parametrize("looped_pool", PSYCOPG_POOLS, indirect=True)
def test_async_getconn_putconn(benchmark: Any, looped_pool: tuple[Loop, Any]) -> None:
    """``await pool.putconn(await pool.getconn())`` of an idle connection."""
    loop, pool = looped_pool
    getconn, putconn = pool.getconn, pool.putconn

    async def cycles() -> None:
        for _ in repeat(None, INNER):
            await putconn(await getconn())

    benchmark.group = "psycopg async getconn/putconn"
    benchmark(lambda: loop.run(cycles()))
    record_per_cycle(benchmark, INNER)


@pytest.mark.parametrize("looped_pool", PSYCOPG_POOLS, indirect=True)
def test_async_connection_block(benchmark: Any, looped_pool: tuple[Loop, Any]) -> None:
    """``async with pool.connection(): pass``: checkout, the commit-or-rollback
    decision, return."""
    loop, pool = looped_pool
    connection = pool.connection

    async def cycles() -> None:
        for _ in repeat(None, INNER):
            async with connection():
                pass

    benchmark.group = "psycopg async connection()"
    benchmark(lambda: loop.run(cycles()))
    record_per_cycle(benchmark, INNER)


# ------------------------------------------------------------------ many tasks


def _select_on_pool(pool: Any) -> Callable[[], Awaitable[None]]:
    connection = pool.connection

    async def task() -> None:
        for _ in repeat(None, PER_TASK):
            async with connection(TIMEOUT) as conn:
                await conn.execute("SELECT 1")

    async def round_() -> None:
        await asyncio.gather(*(task() for _ in range(TASKS)))

    return round_


class _Queued:
    """CONNECTIONS persistent connections handed around through a queue."""

    def __init__(self, conns: list[Any]) -> None:
        self.conns = conns
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        for conn in conns:
            self.queue.put_nowait(conn)

    async def close(self) -> None:
        for conn in self.conns:
            await conn.close()


async def _make_queued(dsn: str) -> _Queued:
    import psycopg

    conns = [
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(CONNECTIONS)
    ]
    return _Queued(conns)


def _select_on_queue(queued: _Queued) -> Callable[[], Awaitable[None]]:
    get, put = queued.queue.get, queued.queue.put_nowait

    async def task() -> None:
        for _ in repeat(None, PER_TASK):
            conn = await get()
            try:
                await conn.execute("SELECT 1")
            finally:
                put(conn)

    async def round_() -> None:
        await asyncio.gather(*(task() for _ in range(TASKS)))

    return round_


@pytest.fixture
def select_round(request: pytest.FixtureRequest) -> Iterator[tuple[Loop, Callable[[], Any]]]:
    skip_unless_built(request.param)
    dsn = database()
    loop = Loop()
    try:
        if request.param == "queue":
            queued = loop.run(_make_queued(dsn))
            try:
                yield loop, _select_on_queue(queued)
            finally:
                loop.run(queued.close())
        else:
            pool = loop.run(make_pool(request.param, dsn, CONNECTIONS))
            try:
                yield loop, _select_on_pool(pool)
            finally:
                loop.run(pool.close())
    finally:
        loop.close()


@pytest.mark.parametrize("select_round", [*PSYCOPG_POOLS, psycopg_param("queue")], indirect=True)
def test_async_tasks_select_1(benchmark: Any, select_round: tuple[Loop, Callable[[], Any]]) -> None:
    """TASKS tasks run ``SELECT 1`` per checkout on a pool of CONNECTIONS
    connections (or on CONNECTIONS connections passed around by a queue)."""
    loop, round_ = select_round
    loop.run(round_())  # warm up: every connection used

    benchmark.group = "psycopg async tasks SELECT 1"
    benchmark.pedantic(lambda: loop.run(round_()), rounds=ROUNDS, iterations=1)
    total = TASKS * PER_TASK
    record_rate(benchmark, total, "requests", tasks=TASKS, connections=CONNECTIONS)
