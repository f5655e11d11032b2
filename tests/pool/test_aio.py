"""``pypool.AsyncPool`` on both cores: many tasks on few connections,
cancellation at every await, timeouts, loop binding, and (marker ``db``)
asyncpg against PostgreSQL: state reset. ``run()`` retries and a silently
dropping network are tested on both pools in test_run.py and
test_silent_network.py; a thousand tasks on ten asyncpg connections in
test_aio_db.py.

Tests are plain functions that drive their coroutine with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

import pytest

import pypool
import pypool.asyncpg
from _support.fakes import AsyncFakeConn
from _support.pools import assert_whole
from _support.waiting import eventually
from pypool import AsyncPool, stats
from pypool.errors import (
    PoolError,
)

asyncpg = pytest.importorskip("asyncpg")


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


# ------------------------------------------------------------ fake connections


async def fake_factory() -> AsyncFakeConn:
    await asyncio.sleep(0)
    return AsyncFakeConn()


@pytest.fixture
def make(core_module: ModuleType) -> Callable[..., AsyncPool]:
    def make(factory: Callable[[], Any] = fake_factory, **kw: Any) -> AsyncPool:
        kw.setdefault("max_size", 10)
        return AsyncPool.with_core(core_module)(factory, **kw)

    return make


# ---------------------------------------------------------- 1. many tasks


async def hammer(pool: AsyncPool, tasks: int, body: Callable[[Any], Awaitable[Any]]) -> set[int]:
    holders: set[int] = set()
    seen: set[int] = set()

    async def one() -> None:
        async with pool.connection() as conn:
            assert id(conn) not in holders, "one connection handed to two tasks"
            holders.add(id(conn))
            seen.add(id(conn))
            try:
                await body(conn)
            finally:
                holders.discard(id(conn))

    await asyncio.gather(*(one() for _ in range(tasks)))
    assert not holders
    return seen


@pytest.mark.timeout(60)
def test_thousand_tasks_on_ten_fake_connections(make: Callable[..., AsyncPool]) -> None:
    async def main() -> None:
        pool = make(max_size=10, timeout=30)

        async def body(conn: Any) -> None:
            assert not conn.closed
            await asyncio.sleep(0)

        seen = await hammer(pool, 1000, body)
        assert len(seen) <= 10
        assert_whole(pool, pool.size)
        assert pool.size <= 10
        assert pool.waiting == 0
        stats = pool.stats()
        assert stats[pypool.stats.REQUESTS] == 1000
        assert stats[pypool.stats.COUNT] == {"idle": pool.size, "used": 0}
        await pool.close()

    run(main())


# ---------------------------------------------------------- 2. cancellation


async def fill(pool: AsyncPool, n: int) -> list[Any]:
    return [await pool.acquire(timeout=5) for _ in range(n)]


@pytest.mark.timeout(30)
def test_cancelled_while_waiting_leaves_the_queue(make: Callable[..., AsyncPool]) -> None:
    async def main() -> None:
        pool = make(max_size=2)
        held = await fill(pool, 2)
        waiter = asyncio.ensure_future(pool.acquire(timeout=10))
        assert await eventually(lambda: pool.waiting == 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert pool.waiting == 0
        for conn in held:
            await pool.release(conn)
        assert_whole(pool, 2)
        # Nothing lost: both are handed out again at once.
        again = await fill(pool, 2)
        assert {id(c) for c in again} == {id(c) for c in held}
        for conn in again:
            await pool.release(conn)
        await pool.close()

    run(main())


@pytest.mark.timeout(30)
def test_cancelled_while_holding_gives_it_back(make: Callable[..., AsyncPool]) -> None:
    async def main() -> None:
        pool = make(max_size=1)
        inside = asyncio.Event()

        async def body() -> None:
            async with pool.connection():
                inside.set()
                await asyncio.sleep(60)

        task = asyncio.ensure_future(body())
        await inside.wait()
        assert pool.in_use == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await eventually(lambda: pool.idle == 1)
        assert_whole(pool, 1)
        conn = await pool.acquire(timeout=1)
        await pool.release(conn)
        await pool.close()

    run(main())


@pytest.mark.timeout(30)
def test_cancelled_during_reset_discards_and_refills(make: Callable[..., AsyncPool]) -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def slow_reset(conn: Any) -> None:
            started.set()
            await asyncio.sleep(60)

        pool = make(max_size=1, reset=slow_reset)
        conn = await pool.acquire(timeout=5)
        task = asyncio.ensure_future(pool.release(conn))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert conn.closed  # its state is unknown: discarded, never pooled
        assert pool.in_use == 0
        other = await pool.acquire(timeout=5)
        assert other is not conn
        await pool.close()

    run(main())


@pytest.mark.timeout(30)
def test_cancelled_during_the_check_closes_and_refills(make: Callable[..., AsyncPool]) -> None:
    checking = asyncio.Event()
    hang = False

    async def slow_check(conn: Any) -> None:
        if hang:
            checking.set()
            await asyncio.sleep(10)

    async def main() -> None:
        nonlocal hang
        pool = make(max_size=1, check=slow_check, check_after=0.0)
        async with pool.connection() as first:
            pass
        hang = True
        task = asyncio.ensure_future(pool.acquire(timeout=5))
        await asyncio.wait_for(checking.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await eventually(lambda: first.closed)
        assert pool.in_use == 0
        assert pool.stats()[stats.RETIRED] == {"discarded": 1}
        hang = False
        async with pool.connection(timeout=5) as second:
            assert second is not first
        await pool.close()

    run(main())


def test_cancelled_while_connecting_the_connection_joins(make: Callable[..., AsyncPool]) -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def slow_factory() -> AsyncFakeConn:
            started.set()
            await asyncio.sleep(0.3)
            return AsyncFakeConn()

        pool = make(slow_factory, max_size=1)
        caller = asyncio.ensure_future(pool.acquire(timeout=10))
        await started.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert pool.waiting == 0
        assert await eventually(lambda: pool.idle == 1, 5)
        assert_whole(pool, 1)
        await pool.close()

    run(main())


@pytest.mark.timeout(60)
def test_cancel_racing_a_hand_off_loses_nothing(make: Callable[..., AsyncPool]) -> None:
    async def main() -> None:
        pool = make(max_size=3, reset=False)
        held = await fill(pool, 3)
        got = 0
        for i in range(500):
            waiter = asyncio.ensure_future(pool.acquire(timeout=10))
            for _ in range(i % 4):  # vary where in the wait the race lands
                await asyncio.sleep(0)
            conn = held.pop()
            release = asyncio.ensure_future(pool.release(conn))
            if i % 2:
                waiter.cancel()
                await release
            else:
                await release
                waiter.cancel()
            try:
                held.append(await waiter)
                got += 1
            except asyncio.CancelledError:
                held.append(await pool.acquire(timeout=1))
            assert pool.in_use == 3 and pool.waiting == 0
        for conn in held:
            await pool.release(conn)
        assert_whole(pool, 3)
        assert pool.waiting == 0
        await pool.close()

    run(main())


# ---------------------------------------------------------- 3. timeouts


@pytest.mark.timeout(30)
@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit])
def test_configure_interrupted_frees_the_slot_and_closes_the_connection(
    make: Callable[..., AsyncPool], raised: type[BaseException]
) -> None:
    """KeyboardInterrupt or SystemExit from ``configure`` stops the program,
    as asyncio intends (it leaves the loop), but first the new connection is
    closed and its slot given back: the pool is whole for the next loop."""
    made: list[AsyncFakeConn] = []

    async def factory() -> AsyncFakeConn:
        made.append(AsyncFakeConn())
        return made[-1]

    async def configure(conn: Any) -> None:
        if len(made) == 1:
            raise raised()

    pool = make(factory, max_size=1, configure=configure, num_workers=1)
    with pytest.raises(raised):
        run(pool.acquire(timeout=5))
    assert made[0].closed
    assert pool.stats()[stats.CONNECTING] == 0 and pool.size == 0 and pool.in_use == 0


def test_resize_from_another_thread_and_after_the_loop_ended(
    make: Callable[..., AsyncPool],
) -> None:
    pool = make(max_size=3)

    async def main() -> None:
        conns = [await pool.acquire() for _ in range(3)]
        for conn in conns:
            await pool.release(conn)
        other = threading.Thread(target=pool.resize, args=(0, 2))
        other.start()
        other.join()
        # The idle extra is closed on the pool's loop, not the caller's thread.
        assert await eventually(lambda: sum(c.closed for c in conns) == 1)
        assert pool.idle == 2 and pool.size == 2
        assert pool.stats()[stats.RETIRED] == {"shrunk": 1}

    run(main())
    # The loop has ended: the limit changes, nothing raises (and nothing can
    # be closed on a loop that is gone).
    pool.resize(0, 1)
    assert pool.max_size == 1


# ---------------------------------------------------------- 4. loop binding

_MADE_AT_IMPORT: dict[str, AsyncPool] = {}


def _import_time_pool(core_module: ModuleType) -> AsyncPool:
    # Made outside any loop, as a module-level pool would be.
    key = core_module.__name__
    if key not in _MADE_AT_IMPORT:
        _MADE_AT_IMPORT[key] = AsyncPool.with_core(core_module)(fake_factory, max_size=2)
    return _MADE_AT_IMPORT[key]


@pytest.mark.timeout(30)
def test_pool_made_outside_a_loop_binds_to_the_first(core_module: ModuleType) -> None:
    pool = _import_time_pool(core_module)

    async def first() -> None:
        async with pool.connection() as conn:
            assert isinstance(conn, AsyncFakeConn)

    run(first())
    assert pool.idle == 1

    async def second_acquire() -> None:
        await asyncio.wait_for(pool.acquire(timeout=5), 2)

    # A second loop: refused at once, even with an idle connection ready,
    # also on the fast path (no timeout given) and through connection().
    async def second_fast() -> None:
        await pool.acquire()

    async def second_block() -> None:
        async with pool.connection():
            pass

    for attempt in (second_acquire, second_fast, second_block):
        start = time.monotonic()
        with pytest.raises(PoolError, match="another event loop"):
            run(attempt())
        assert time.monotonic() - start < 1.0
    assert pool.idle == 1 and pool.in_use == 0


@pytest.mark.timeout(30)
def test_loop_in_another_thread_is_refused_while_the_first_runs(
    core_module: ModuleType,
) -> None:
    pool = AsyncPool.with_core(core_module)(fake_factory, min_size=2, max_size=2)
    outcome: list[BaseException | None] = []

    async def other_thread() -> None:
        try:
            await pool.acquire()
        except PoolError as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    async def main() -> None:
        await pool.open(wait=True, timeout=5)
        assert pool.idle == 2
        worker = threading.Thread(target=lambda: asyncio.run(other_thread()))
        worker.start()
        while worker.is_alive():
            await asyncio.sleep(0.01)
        assert pool.idle == 2 and pool.in_use == 0
        await pool.close()

    run(main())
    assert len(outcome) == 1 and isinstance(outcome[0], PoolError), outcome


@pytest.mark.timeout(30)
def test_second_loop_refused_when_no_connection_is_idle(core_module: ModuleType) -> None:
    pool = AsyncPool.with_core(core_module)(fake_factory, max_size=1)
    held: list[Any] = []

    async def first() -> None:
        held.append(await pool.acquire(timeout=5))

    run(first())

    async def second() -> None:
        await asyncio.wait_for(pool.acquire(timeout=5), 2)

    start = time.monotonic()
    with pytest.raises(PoolError):
        run(second())
    assert time.monotonic() - start < 1.0


# ---------------------------------------------------------- 5. asyncpg state


@pytest.fixture
def pg_pools(core_module: ModuleType, dsn: str) -> Callable[..., AsyncPool]:
    def make(**kw: Any) -> AsyncPool:
        target = kw.pop("dsn", dsn)
        return AsyncPool.with_core(core_module)(
            lambda: asyncpg.connect(target), adapter=pypool.asyncpg, **kw
        )

    return make


@pytest.mark.db
@pytest.mark.timeout(60)
def test_asyncpg_state_is_reset_before_reuse(pg_pools: Callable[..., AsyncPool]) -> None:
    async def main() -> None:
        pool = pg_pools(max_size=1)
        async with pool.connection() as conn:
            default = await conn.fetchval("SHOW search_path")
            backend = conn.get_server_pid()
            await conn.execute("SET search_path TO pg_catalog")
            tx = conn.transaction()
            await tx.start()
            await conn.execute("SELECT 1")
            assert conn.is_in_transaction()
        async with pool.connection() as conn:
            assert conn.get_server_pid() == backend
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SHOW search_path") == default
            # A raw BEGIN left open (no transaction object) is rolled back too.
            await conn.execute("BEGIN")
            await conn.execute("SET LOCAL statement_timeout = 1234")
        async with pool.connection() as conn:
            assert conn.get_server_pid() == backend
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT txid_current_if_assigned() IS NULL")
        await pool.close()

    run(main())
