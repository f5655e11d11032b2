"""``pypool.psycopg``'s asyncio pools against ``psycopg_pool``'s, side by side.

Every compatibility test runs on three implementations (the ``impl`` fixture):
``psycopg_pool.AsyncConnectionPool`` itself and
``pypool.psycopg.AsyncConnectionPool`` on each core (``native`` and
``python``), and asserts the same observable results on all three. Where
pypool deliberately differs (``docs/psycopg-migration.md``) the scenario is
arranged so that the difference does not show.

The state-hygiene scenarios at the end run on pypool only, through the async
pool with a ``reset`` that runs ``DISCARD ALL``.

No asyncio plugin is needed: every test is a plain function that runs its
scenario with ``asyncio.run()``; the pools made by a scenario are closed on
the same loop when it ends.

Needs PostgreSQL (``dsn`` fixture): skipped with the reason when it cannot be
reached, unless ``PYPOOL_REQUIRE_DB=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import re
import socket
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")
psycopg_pool = pytest.importorskip("psycopg_pool")

import pypool.psycopg  # noqa: E402
from conftest import PYTHON_MODULE, import_native_core  # noqa: E402

pytestmark = pytest.mark.db

#: Generous bound for things that happen "soon" (a connect, a background return).
SOON = 10.0

IDLE = psycopg.pq.TransactionStatus.IDLE
INTRANS = psycopg.pq.TransactionStatus.INTRANS
INERROR = psycopg.pq.TransactionStatus.INERROR


# ------------------------------------------------------------------ implementations


@dataclass(frozen=True)
class Impl:
    """One implementation of psycopg_pool's asyncio interface.

    ``mod`` has ``AsyncConnectionPool``, ``AsyncNullConnectionPool``,
    ``PoolTimeout``, ``PoolClosed`` and ``TooManyRequests``; for pypool,
    ``core`` is the core module every pool is made on (``with_core()``).
    """

    name: str
    core: ModuleType | None

    @property
    def is_pypool(self) -> bool:
        return self.core is not None

    @property
    def mod(self) -> ModuleType:
        return psycopg_pool if self.core is None else pypool.psycopg

    def _bound(self, cls: Any) -> Any:
        return cls if self.core is None else cls.with_core(self.core)

    def pool(self, *args: Any, **kwargs: Any) -> Any:
        return self._bound(self.mod.AsyncConnectionPool)(*args, **kwargs)

    def null_pool(self, *args: Any, **kwargs: Any) -> Any:
        return self._bound(self.mod.AsyncNullConnectionPool)(*args, **kwargs)


def _pypool_impl(param: str) -> Impl:
    if param == "native":
        return Impl("pypool-native", import_native_core())
    return Impl("pypool-python", importlib.import_module(PYTHON_MODULE))


@pytest.fixture(
    params=[
        pytest.param("psycopg_pool", id="psycopg_pool"),
        pytest.param("native", id="pypool-native", marks=pytest.mark.native),
        pytest.param("python", id="pypool-python"),
    ]
)
def impl(request: pytest.FixtureRequest) -> Impl:
    if request.param == "psycopg_pool":
        return Impl("psycopg_pool", None)
    return _pypool_impl(request.param)


@pytest.fixture(
    params=[
        pytest.param("native", id="native", marks=pytest.mark.native),
        pytest.param("python", id="python"),
    ]
)
def pypool_impl(request: pytest.FixtureRequest) -> Impl:
    """pypool only, on each core."""
    return _pypool_impl(request.param)


class Pools:
    """Makes async pools of one implementation inside a running loop and
    closes them all when the scenario ends (on the same loop).

    ``await make(...)`` makes a pool with ``open=False`` and opens it with
    ``await pool.open()`` (psycopg_pool's recommended way); ``make.new(...)``
    only makes it (``open=False`` unless given).
    """

    def __init__(self, impl: Impl, dsn: str) -> None:
        self.impl = impl
        self.dsn = dsn
        self.made: list[Any] = []

    def new(self, *args: Any, **kwargs: Any) -> Any:
        if not args:
            args = (self.dsn,)
        kwargs.setdefault("open", False)
        pool = self.impl.pool(*args, **kwargs)
        self.made.append(pool)
        return pool

    def new_null(self, *args: Any, **kwargs: Any) -> Any:
        if not args:
            args = (self.dsn,)
        kwargs.setdefault("open", False)
        pool = self.impl.null_pool(*args, **kwargs)
        self.made.append(pool)
        return pool

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        pool = self.new(*args, **kwargs)
        await pool.open()
        return pool

    async def null(self, *args: Any, **kwargs: Any) -> Any:
        pool = self.new_null(*args, **kwargs)
        await pool.open()
        return pool

    async def aclose(self) -> None:
        for pool in self.made:
            with contextlib.suppress(Exception):  # a failed test may leave it half set up
                await pool.close(timeout=1.0)


Scenario = Callable[[Pools], Awaitable[Any]]


def _runner(impl: Impl, dsn: str) -> Callable[[Scenario], Any]:
    def run(scenario: Scenario) -> Any:
        async def main() -> Any:
            pools = Pools(impl, dsn)
            try:
                return await scenario(pools)
            finally:
                await pools.aclose()

        return asyncio.run(main())

    return run


@pytest.fixture
def run(impl: Impl, dsn: str) -> Callable[[Scenario], Any]:
    """``run(scenario)``: ``asyncio.run(scenario(make))`` with a fresh ``Pools``."""
    return _runner(impl, dsn)


@pytest.fixture
def run_pypool(pypool_impl: Impl, dsn: str) -> Callable[[Scenario], Any]:
    return _runner(pypool_impl, dsn)


# ------------------------------------------------------------------ helpers


async def wait_until(predicate: Callable[[], bool], timeout: float = SOON) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def closed_port() -> int:
    """A local TCP port nothing listens on (connecting is refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unreachable_conninfo() -> str:
    return f"host=127.0.0.1 port={closed_port()} user=postgres dbname=test connect_timeout=2"


async def terminate(dsn: str, pid: int) -> None:
    """Ends a backend and waits until it is gone."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + SOON
        while time.monotonic() < deadline:
            cur = await admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
            if not await cur.fetchall():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"backend {pid} still there")


def available(pool: Any) -> int:
    return int(pool.get_stats()["pool_available"])


async def one(conn: Any, sql: str, params: Any = None) -> Any:
    cur = await conn.execute(sql, params)
    row = await cur.fetchone()
    return row[0]


@pytest.fixture
def table(dsn: str) -> Iterator[str]:
    """A fresh table ``(id int)``, dropped afterwards."""
    name = f"acompat_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int)")
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


async def rows(dsn: str, table: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(f"SELECT id FROM {table} ORDER BY id")
        return [r[0] for r in await cur.fetchall()]


# ================================================================== construction


def test_constructor_defaults_and_properties(run: Any, dsn: str) -> None:
    async def scenario(make: Pools) -> None:
        pool = make.new()
        assert re.fullmatch(r"pool-\d+", pool.name)
        assert pool.min_size == 4
        assert pool.max_size == 4
        assert pool.timeout == 30.0
        assert pool.max_lifetime == 3600.0
        assert pool.max_idle == 600.0
        assert pool.reconnect_timeout == 300.0
        assert pool.num_workers == 3
        assert pool.close_returns is False
        assert pool.conninfo == dsn
        assert pool.kwargs is None
        assert pool.connection_class is psycopg.AsyncConnection
        assert f"{pool.name!r}" in repr(pool)

    run(scenario)


def test_constructor_explicit_values(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        kwargs = {"application_name": "acompat"}
        pool = make.new(
            name="mine",
            min_size=2,
            max_size=5,
            timeout=7.0,
            max_lifetime=100.0,
            max_idle=50.0,
            reconnect_timeout=20.0,
            num_workers=2,
            kwargs=kwargs,
        )
        assert pool.name == "mine"
        assert (pool.min_size, pool.max_size) == (2, 5)
        assert pool.timeout == 7.0
        assert pool.max_lifetime == 100.0
        assert pool.max_idle == 50.0
        assert pool.reconnect_timeout == 20.0
        assert pool.num_workers == 2
        assert pool.kwargs == kwargs

    run(scenario)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"min_size": -1}, "negative"),
        ({"min_size": 3, "max_size": 2}, "greater or equal"),
        ({"min_size": 0}, "greater than 0"),
    ],
)
def test_invalid_sizes_raise_value_error(impl: Impl, dsn: str, sizes: Any, message: str) -> None:
    async def scenario() -> None:
        with pytest.raises(ValueError, match=message):
            impl.pool(dsn, open=False, **sizes)

    asyncio.run(scenario())


# ================================================================== open / close


def test_open_false_then_open(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = make.new(min_size=2)
        await pool.open()
        assert not pool.closed
        await pool.wait(SOON)
        assert available(pool) == 2
        async with pool.connection() as conn:
            assert await one(conn, "SELECT 1") == 1
        await pool.open()  # again: a no-op on an open pool
        assert not pool.closed

    run(scenario)


def test_open_wait(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = make.new(min_size=2)
        await pool.open(wait=True, timeout=SOON)
        assert available(pool) == 2

    run(scenario)


def test_closed_is_true_before_open(request: pytest.FixtureRequest, impl: Impl, run: Any) -> None:

    async def scenario(make: Pools) -> None:
        assert make.new(min_size=1).closed

    run(scenario)


def test_getconn_before_open_raises_pool_closed(impl: Impl, run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = make.new(min_size=1)
        with pytest.raises(impl.mod.PoolClosed, match="not open yet"):
            await pool.getconn()
        await pool.open()
        conn = await pool.getconn(timeout=SOON)
        await pool.putconn(conn)

    run(scenario)


def test_close_then_open_raises_pool_closed(impl: Impl, run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1)
        await pool.close()
        assert pool.closed
        with pytest.raises(impl.mod.PoolClosed):
            await pool.open()
        with pytest.raises(impl.mod.PoolClosed):
            await pool.getconn()

    run(scenario)


def test_open_in_constructor_warns(impl: Impl, run: Any, dsn: str) -> None:
    async def scenario(make: Pools) -> None:
        with pytest.warns(RuntimeWarning, match="await pool.open()"):
            pool = impl.pool(dsn, min_size=1, open=True)
        make.made.append(pool)
        assert not pool.closed
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once, in the constructor
            async with pool.connection(timeout=SOON) as conn:
                assert await one(conn, "SELECT 1") == 1

    run(scenario)


def test_open_none_warns_at_first_getconn(impl: Impl, run: Any, dsn: str) -> None:
    async def scenario(make: Pools) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pool = impl.pool(dsn, min_size=1)  # open=None: opened, warned at first use
        make.made.append(pool)
        with pytest.warns(RuntimeWarning, match="await pool.open()"):
            conn = await pool.getconn(timeout=SOON)
        await pool.putconn(conn)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            await pool.putconn(await pool.getconn(timeout=SOON))

    run(scenario)


def test_async_context_manager(impl: Impl, dsn: str) -> None:
    async def scenario() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            async with impl.pool(dsn, min_size=1, open=False) as pool:
                assert not pool.closed
                async with pool.connection(timeout=SOON) as conn:
                    assert await one(conn, "SELECT 1") == 1
                kept = await pool.getconn()
                await pool.putconn(kept)
        assert pool.closed
        assert kept.closed  # idle connections are closed with the pool

    asyncio.run(scenario())


def test_async_context_manager_open_none_does_not_warn(impl: Impl, dsn: str) -> None:
    async def scenario() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            async with (
                impl.pool(dsn, min_size=1) as pool,
                pool.connection(timeout=SOON) as conn,
            ):
                assert await one(conn, "SELECT 1") == 1
        assert pool.closed

    asyncio.run(scenario())


def test_wait_success(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=3)
        await pool.wait(SOON)
        assert available(pool) == 3
        assert not pool.closed

    run(scenario)


def test_wait_unreachable_closes_the_pool_and_raises_pool_timeout(impl: Impl, run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(unreachable_conninfo(), min_size=1)
        started = time.monotonic()
        with pytest.raises(impl.mod.PoolTimeout) as info:
            await pool.wait(timeout=1.0)
        assert time.monotonic() - started < SOON
        assert isinstance(info.value, psycopg.OperationalError)
        assert pool.closed
        with pytest.raises(impl.mod.PoolClosed):
            await pool.getconn()

    run(scenario)


def test_pool_closed_wakes_waiters(impl: Impl, run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1, timeout=SOON)
        held = await pool.getconn()
        waiter = asyncio.ensure_future(pool.getconn(timeout=SOON))
        assert await wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
        await pool.close()
        with pytest.raises(impl.mod.PoolClosed):
            await asyncio.wait_for(waiter, SOON)
        await pool.putconn(held)
        assert held.closed

    run(scenario)


# ================================================================== borrowing


def test_connection_commits_on_success(run: Any, dsn: str, table: str) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1)
        async with pool.connection() as conn:
            await conn.execute(f"INSERT INTO {table} VALUES (1)")
            assert not conn.autocommit
        assert await rows(dsn, table) == [1]
        assert await wait_until(lambda: available(pool) == 1)

    run(scenario)


def test_connection_rolls_back_on_error(run: Any, dsn: str, table: str) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1)
        with pytest.raises(ZeroDivisionError):
            async with pool.connection() as conn:
                await conn.execute(f"INSERT INTO {table} VALUES (1)")
                1 / 0  # noqa: B018
        assert await rows(dsn, table) == []
        assert await wait_until(lambda: available(pool) == 1)
        async with pool.connection() as again:
            assert again is conn
            assert again.info.transaction_status == IDLE

    run(scenario)


def test_connection_timeout_argument(impl: Impl, run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1, timeout=SOON)
        held = await pool.getconn()
        started = time.monotonic()
        with pytest.raises(impl.mod.PoolTimeout):
            async with pool.connection(timeout=0.2):
                pass  # pragma: no cover
        assert time.monotonic() - started < SOON / 2
        await pool.putconn(held)

    run(scenario)


def test_getconn_putconn(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=2)
        await pool.wait(SOON)
        conn = await pool.getconn()
        assert isinstance(conn, psycopg.AsyncConnection)
        assert conn._pool is pool
        assert await one(conn, "SELECT 1") == 1
        assert available(pool) == 1
        await pool.putconn(conn)
        assert await wait_until(lambda: available(pool) == 2)
        assert not conn.closed

    run(scenario)


def test_returned_in_transaction_is_rolled_back_with_a_warning(
    run: Any, dsn: str, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1)
        conn = await pool.getconn()
        pid = conn.info.backend_pid
        await conn.execute(f"INSERT INTO {table} VALUES (1)")
        assert conn.info.transaction_status == INTRANS
        with caplog.at_level(logging.WARNING, logger="psycopg.pool"):
            await pool.putconn(conn)
            assert await wait_until(lambda: available(pool) == 1)
        assert any(
            r.name == "psycopg.pool"
            and r.levelno == logging.WARNING
            and "rolling back" in r.message
            for r in caplog.records
        )
        assert await rows(dsn, table) == []
        again = await pool.getconn()
        assert again.info.backend_pid == pid
        assert again.info.transaction_status == IDLE
        await pool.putconn(again)

    run(scenario)


def test_returned_in_failed_transaction_is_rolled_back(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1)
        conn = await pool.getconn()
        pid = conn.info.backend_pid
        with pytest.raises(psycopg.errors.DivisionByZero):
            await conn.execute("SELECT 1 / 0")
        assert conn.info.transaction_status == INERROR
        await pool.putconn(conn)
        assert await wait_until(lambda: available(pool) == 1)
        again = await pool.getconn()
        assert again.info.backend_pid == pid
        assert await one(again, "SELECT 2") == 2
        await pool.putconn(again)

    run(scenario)


def test_returned_broken_is_replaced(run: Any, dsn: str) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1)
        conn = await pool.getconn()
        pid = conn.info.backend_pid
        await terminate(dsn, pid)
        with pytest.raises(psycopg.OperationalError):
            await conn.execute("SELECT 1")
        assert conn.broken
        await pool.putconn(conn)
        fresh = await pool.getconn(timeout=SOON)
        assert fresh is not conn
        assert fresh.info.backend_pid != pid
        assert await one(fresh, "SELECT 1") == 1
        await pool.putconn(fresh)
        assert pool.get_stats()["returns_bad"] == 1

    run(scenario)


def test_returned_closed_is_replaced(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1)
        conn = await pool.getconn()
        pid = conn.info.backend_pid
        await conn.close()
        await pool.putconn(conn)
        fresh = await pool.getconn(timeout=SOON)
        assert fresh.info.backend_pid != pid
        assert await one(fresh, "SELECT 1") == 1
        await pool.putconn(fresh)
        assert pool.get_stats()["returns_bad"] == 1

    run(scenario)


def test_putconn_of_a_foreign_connection_raises_value_error(run: Any, dsn: str) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1)
        borrowed = await pool.getconn()
        async with await psycopg.AsyncConnection.connect(dsn) as stranger:
            with pytest.raises(ValueError):
                await pool.putconn(stranger)
            assert not stranger.closed
        await pool.putconn(borrowed)

    run(scenario)


def test_putconn_after_close_closes_the_connection(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1)
        conn = await pool.getconn()
        await pool.close()
        assert not conn.closed
        await pool.putconn(conn)
        assert conn.closed

    run(scenario)


def test_many_tasks_never_share_a_connection(run: Any) -> None:
    """1000 tasks on a pool of 10: no connection is ever held by two tasks."""

    async def scenario(make: Pools) -> None:
        pool = await make(min_size=10, max_size=10, timeout=60.0)
        await pool.wait(SOON)
        holders: dict[int, int] = {}
        conns: set[int] = set()
        doubles: list[tuple[int, int, int]] = []
        peak = [0]

        async def task(n: int) -> None:
            async with pool.connection() as conn:
                key = id(conn)
                if key in holders:
                    doubles.append((key, holders[key], n))
                holders[key] = n
                conns.add(key)
                peak[0] = max(peak[0], len(holders))
                assert await one(conn, "SELECT %s::int", (n,)) == n
                await asyncio.sleep(0)
                assert holders.get(key) == n
                del holders[key]

        await asyncio.gather(*(task(n) for n in range(1000)))
        assert doubles == []
        assert not holders
        assert len(conns) <= 10
        assert peak[0] <= 10
        assert await wait_until(lambda: available(pool) == 10)

    run(scenario)


# ================================================================== callbacks


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_configure_runs_once_per_connection(impl: Impl, run: Any, kind: str) -> None:
    if kind == "sync" and not impl.is_pypool:
        pytest.skip("psycopg_pool's async pool awaits configure(): a sync one is not supported")

    configured: list[int] = []

    async def aconfigure(conn: Any) -> None:
        await conn.execute("SET application_name = 'configured'")
        await conn.commit()
        configured.append(conn.info.backend_pid)

    def configure(conn: Any) -> None:
        # A sync callable cannot await: it only records.
        configured.append(conn.info.backend_pid)

    async def scenario(make: Pools) -> None:
        pool = await make(min_size=2, configure=aconfigure if kind == "async" else configure)
        await pool.wait(SOON)
        for _ in range(5):
            async with pool.connection() as conn:
                if kind == "async":
                    assert await one(conn, "SHOW application_name") == "configured"
                assert conn.info.backend_pid in configured
        assert len(configured) == 2
        assert len(set(configured)) == 2

    run(scenario)


def test_configure_leaving_a_transaction_discards_the_connection(run: Any) -> None:
    configured: list[int] = []

    async def configure(conn: Any) -> None:
        configured.append(conn.info.backend_pid)
        if len(configured) == 1:
            await conn.execute("SELECT 1")  # leaves a transaction open: not allowed

    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1, configure=configure)
        await pool.wait(SOON)
        assert len(configured) >= 2
        async with pool.connection() as conn:
            assert conn.info.backend_pid != configured[0]
            assert conn.info.transaction_status == IDLE

    run(scenario)


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_reset_runs_on_every_return(impl: Impl, run: Any, kind: str) -> None:
    if kind == "sync" and not impl.is_pypool:
        pytest.skip("psycopg_pool's async pool awaits reset(): a sync one is not supported")
    resets: list[int] = []

    async def areset(conn: Any) -> None:
        assert conn.info.transaction_status == IDLE
        await conn.execute("RESET application_name")
        resets.append(conn.info.backend_pid)

    def reset(conn: Any) -> None:
        assert conn.info.transaction_status == IDLE
        resets.append(conn.info.backend_pid)

    async def scenario(make: Pools) -> None:
        pool = await make(
            min_size=1,
            max_size=1,
            reset=areset if kind == "async" else reset,
            kwargs={"autocommit": True},
        )
        for n in range(1, 4):
            async with pool.connection() as conn:
                await conn.execute("SET application_name = 'dirty'")
            assert await wait_until(lambda n=n: len(resets) == n)  # type: ignore[misc]
        if kind == "async":
            async with pool.connection() as conn:
                assert await one(conn, "SHOW application_name") != "dirty"

    run(scenario)


def test_reset_runs_after_the_rollback(run: Any) -> None:
    seen: list[Any] = []

    async def reset(conn: Any) -> None:
        seen.append(conn.info.transaction_status)

    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1, reset=reset)
        conn = await pool.getconn()
        await conn.execute("SELECT 1")
        await pool.putconn(conn)
        assert await wait_until(lambda: len(seen) == 1)
        assert seen == [IDLE]

    run(scenario)


def test_reset_raising_discards_the_connection(run: Any) -> None:
    async def reset(conn: Any) -> None:
        raise RuntimeError("no")

    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1, reset=reset)
        conn = await pool.getconn()
        pid = conn.info.backend_pid
        await pool.putconn(conn)
        fresh = await pool.getconn(timeout=SOON)
        assert fresh.info.backend_pid != pid
        assert await wait_until(lambda: conn.closed)
        await pool.putconn(fresh)

    run(scenario)


def test_reset_leaving_a_transaction_discards_the_connection(run: Any) -> None:
    async def reset(conn: Any) -> None:
        await conn.execute("SELECT 1")  # leaves a transaction open: not allowed

    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1, reset=reset)
        conn = await pool.getconn()
        pid = conn.info.backend_pid
        await pool.putconn(conn)
        fresh = await pool.getconn(timeout=SOON)
        assert fresh.info.backend_pid != pid
        assert await wait_until(lambda: conn.closed)
        await pool.putconn(fresh)

    run(scenario)


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_check_callback_used(impl: Impl, run: Any, kind: str) -> None:
    """The connection has been idle longer than pypool's ``check_after``
    (1 s), so both implementations run the check."""
    if kind == "sync" and not impl.is_pypool:
        pytest.skip("psycopg_pool's async pool awaits check(): a sync one is not supported")
    checked: list[int] = []

    async def acheck(conn: Any) -> None:
        checked.append(conn.info.backend_pid)

    def check(conn: Any) -> None:
        checked.append(conn.info.backend_pid)

    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1, check=acheck if kind == "async" else check)
        await pool.wait(SOON)
        await asyncio.sleep(1.2)
        async with pool.connection(timeout=SOON) as conn:
            assert checked == [conn.info.backend_pid]

    run(scenario)


def test_failing_check_on_a_broken_connection_replaces_it(run: Any, dsn: str) -> None:
    checked: list[int] = []

    async def check(conn: Any) -> None:
        checked.append(conn.info.backend_pid)
        await conn.execute("SELECT 1")
        await conn.rollback()

    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1, check=check)
        conn = await pool.getconn()
        pid = conn.info.backend_pid
        await pool.putconn(conn)
        await terminate(dsn, pid)
        await asyncio.sleep(1.2)
        async with pool.connection(timeout=SOON) as conn:
            assert conn.info.backend_pid != pid
            assert await one(conn, "SELECT 1") == 1
        assert checked[0] == pid

    run(scenario)


def test_check_connection_as_check_callback(impl: Impl, run: Any, dsn: str) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(
            min_size=1, max_size=1, check=impl.mod.AsyncConnectionPool.check_connection
        )
        conn = await pool.getconn()
        pid = conn.info.backend_pid
        await pool.putconn(conn)
        await terminate(dsn, pid)
        await asyncio.sleep(1.2)  # past pypool's check_after
        async with pool.connection(timeout=SOON) as conn:
            assert conn.info.backend_pid != pid
            assert await one(conn, "SELECT 1") == 1

    run(scenario)


def test_check_connection_static(impl: Impl, dsn: str) -> None:
    check_connection = impl.mod.AsyncConnectionPool.check_connection

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await check_connection(conn)
            assert not conn.autocommit
            assert conn.info.transaction_status == IDLE
            await terminate(dsn, conn.info.backend_pid)
            with pytest.raises(psycopg.OperationalError):
                await check_connection(conn)

    asyncio.run(scenario())


def test_async_callable_conninfo_and_kwargs_are_read_for_every_connection(
    run: Any, dsn: str
) -> None:
    calls = {"conninfo": 0, "kwargs": 0}

    async def conninfo() -> str:
        calls["conninfo"] += 1
        return dsn

    async def kwargs() -> dict[str, Any]:
        calls["kwargs"] += 1
        return {"application_name": f"acompat{calls['kwargs']}"}

    async def scenario(make: Pools) -> None:
        pool = await make(conninfo, kwargs=kwargs, min_size=2)
        await pool.wait(SOON)
        assert calls == {"conninfo": 2, "kwargs": 2}
        a, b = await pool.getconn(), await pool.getconn()
        names = {await one(c, "SHOW application_name") for c in (a, b)}
        assert names == {"acompat1", "acompat2"}
        await pool.putconn(a)
        await pool.putconn(b)
        await pool.drain()
        assert await wait_until(lambda: calls["conninfo"] == 4 and available(pool) == 2)
        assert calls == {"conninfo": 4, "kwargs": 4}

    run(scenario)


def test_sync_callable_conninfo_and_kwargs(run: Any, dsn: str) -> None:
    calls = {"conninfo": 0, "kwargs": 0}

    def conninfo() -> str:
        calls["conninfo"] += 1
        return dsn

    def kwargs() -> dict[str, Any]:
        calls["kwargs"] += 1
        return {"application_name": "acompat_sync"}

    async def scenario(make: Pools) -> None:
        pool = await make(conninfo, kwargs=kwargs, min_size=2)
        await pool.wait(SOON)
        assert calls == {"conninfo": 2, "kwargs": 2}
        async with pool.connection() as conn:
            assert await one(conn, "SHOW application_name") == "acompat_sync"

    run(scenario)


# ================================================================== maintenance


def test_resize(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1)
        await pool.wait(SOON)
        await pool.resize(2, 3)
        assert (pool.min_size, pool.max_size) == (2, 3)
        assert await wait_until(lambda: pool.get_stats()["pool_size"] == 2)
        held = [await pool.getconn(timeout=SOON) for _ in range(3)]
        assert len({c.info.backend_pid for c in held}) == 3
        for conn in held:
            await pool.putconn(conn)
        await pool.resize(1)
        assert (pool.min_size, pool.max_size) == (1, 1)
        stats = pool.get_stats()
        assert (stats["pool_min"], stats["pool_max"]) == (1, 1)
        with pytest.raises(ValueError):
            await pool.resize(3, 2)

    run(scenario)


def test_check_discards_a_killed_idle_connection(run: Any, dsn: str) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=2)
        await pool.wait(SOON)
        a, b = await pool.getconn(), await pool.getconn()
        pids = {a.info.backend_pid, b.info.backend_pid}
        await pool.putconn(a)
        await pool.putconn(b)
        await terminate(dsn, a.info.backend_pid)
        await pool.check()
        assert await wait_until(lambda: available(pool) == 2)
        c, d = await pool.getconn(), await pool.getconn()
        now = {c.info.backend_pid, d.info.backend_pid}
        assert now & pids == {b.info.backend_pid}
        await pool.putconn(c)
        await pool.putconn(d)
        assert pool.get_stats()["connections_lost"] == 1

    run(scenario)


def test_drain_replaces_every_connection(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=2)
        await pool.wait(SOON)
        before = [await pool.getconn() for _ in range(2)]
        pids = {c.info.backend_pid for c in before}
        held = before.pop()
        await pool.putconn(before[0])
        await pool.drain()
        await pool.putconn(held)  # borrowed during the drain: replaced at its return
        assert await wait_until(lambda: available(pool) == 2)
        after = [await pool.getconn() for _ in range(2)]
        assert not pids & {c.info.backend_pid for c in after}
        for conn in after:
            await pool.putconn(conn)

    run(scenario)


# ================================================================== stats

GAUGES = {"pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting"}
COUNTERS = {
    "requests_num",
    "requests_queued",
    "requests_wait_ms",
    "requests_errors",
    "usage_ms",
    "returns_bad",
    "connections_num",
    "connections_ms",
    "connections_errors",
    "connections_lost",
}


def test_stats_keys(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=2, max_size=3)
        await pool.wait(SOON)
        stats = pool.get_stats()
        assert set(stats) >= GAUGES
        assert set(stats) <= GAUGES | COUNTERS
        assert stats["pool_min"] == 2
        assert stats["pool_max"] == 3
        assert stats["pool_size"] == 2
        assert stats["pool_available"] == 2
        assert stats["requests_waiting"] == 0
        assert stats["connections_num"] == 2
        assert all(isinstance(v, int) for v in stats.values())

    run(scenario)


def test_pop_stats_resets_counters(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1)
        await pool.wait(SOON)
        for _ in range(3):
            async with pool.connection():
                pass
        popped = pool.pop_stats()
        assert popped["requests_num"] == 3
        assert popped["connections_num"] == 1
        assert set(popped) >= GAUGES
        after = pool.get_stats()
        assert {k: after.get(k, 0) for k in COUNTERS} == dict.fromkeys(COUNTERS, 0)
        assert after["pool_size"] == 1  # gauges are not reset
        async with pool.connection():
            pass
        assert pool.get_stats()["requests_num"] == 1

    run(scenario)


def test_stats_count_a_timeout(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1, timeout=0.1)
        await pool.wait(SOON)
        held = await pool.getconn()
        with pytest.raises(psycopg.OperationalError):
            await pool.getconn()
        await pool.putconn(held)
        assert pool.get_stats()["requests_errors"] == 1

    run(scenario)


def test_stats_count_failed_requests(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1, timeout=0.1)
        await pool.wait(SOON)
        held = await pool.getconn()
        with pytest.raises(psycopg.OperationalError):
            await pool.getconn()
        await pool.putconn(held)
        stats = pool.get_stats()
        assert stats["requests_num"] == 2
        assert stats["requests_queued"] == 1
        assert stats["requests_wait_ms"] >= 50

    run(scenario)


def test_stats_count_too_many_requests_as_errors(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1, max_waiting=1, timeout=SOON)
        held = await pool.getconn()
        waiter = asyncio.ensure_future(pool.getconn(timeout=SOON))
        assert await wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
        with pytest.raises(psycopg.OperationalError):
            await pool.getconn()
        await pool.putconn(held)
        await pool.putconn(await asyncio.wait_for(waiter, SOON))
        stats = pool.get_stats()
        assert stats["requests_errors"] == 1
        assert stats["requests_num"] == 3

    run(scenario)


# ================================================================== errors


def test_error_classes(impl: Impl) -> None:
    for name in ("PoolTimeout", "PoolClosed", "TooManyRequests"):
        cls = getattr(impl.mod, name)
        assert issubclass(cls, psycopg.OperationalError)


def test_pool_timeout_on_exhaustion(impl: Impl, run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1, timeout=0.2)
        held = await pool.getconn()
        started = time.monotonic()
        with pytest.raises(impl.mod.PoolTimeout) as info:
            await pool.getconn()
        elapsed = time.monotonic() - started
        assert 0.15 <= elapsed < SOON / 2
        assert isinstance(info.value, psycopg.OperationalError)
        assert "0.20 sec" in str(info.value)
        with pytest.raises(impl.mod.PoolTimeout):
            await pool.getconn(timeout=0.05)
        await pool.putconn(held)
        await pool.putconn(await pool.getconn())

    run(scenario)


def test_too_many_requests(impl: Impl, run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1, max_waiting=1, timeout=SOON)
        held = await pool.getconn()
        waiter = asyncio.ensure_future(pool.getconn(timeout=SOON))
        assert await wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
        started = time.monotonic()
        with pytest.raises(impl.mod.TooManyRequests) as info:
            await pool.getconn()
        assert time.monotonic() - started < 1.0  # refused at once, not after a wait
        assert isinstance(info.value, psycopg.OperationalError)
        assert "1 requests waiting" in str(info.value)
        await pool.putconn(held)
        got = await asyncio.wait_for(waiter, SOON)
        assert got is held  # handed straight to the waiter
        await pool.putconn(got)

    run(scenario)


def test_cancelled_waiter_does_not_lose_a_connection(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1, timeout=SOON)
        held = await pool.getconn()
        waiter = asyncio.ensure_future(pool.getconn())
        assert await wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await pool.putconn(held)
        again = await pool.getconn(timeout=SOON)
        assert again is held
        await pool.putconn(again)

    run(scenario)


# ================================================================== null pool


def test_null_pool_min_size_must_be_zero(impl: Impl, dsn: str) -> None:
    async def scenario() -> None:
        with pytest.raises(ValueError, match="min_size"):
            impl.null_pool(dsn, min_size=1, open=False)

    asyncio.run(scenario())


def test_null_pool_defaults(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make.null(max_size=2)
        assert pool.min_size == 0
        assert pool.max_size == 2
        stats = pool.get_stats()
        assert (stats["pool_min"], stats["pool_max"], stats["pool_size"]) == (0, 2, 0)

    run(scenario)


def test_null_pool_closes_connections_on_return(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make.null(max_size=2)
        pids = []
        for _ in range(3):
            conn = await pool.getconn(timeout=SOON)
            pids.append(conn.info.backend_pid)
            await pool.putconn(conn)
            assert await wait_until(lambda conn=conn: conn.closed)  # type: ignore[misc]
        assert len(set(pids)) == 3
        async with pool.connection(timeout=SOON) as conn:
            assert await one(conn, "SELECT 1") == 1
        assert await wait_until(lambda: conn.closed)
        assert pool.get_stats()["pool_size"] == 0

    run(scenario)


def test_null_pool_max_size_bounds_concurrency(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make.null(max_size=2, timeout=SOON)
        active = [0, 0]  # now, peak

        async def work() -> None:
            async with pool.connection() as conn:
                active[0] += 1
                active[1] = max(active[1], active[0])
                await conn.execute("SELECT pg_sleep(0.1)")
                active[0] -= 1

        await asyncio.wait_for(asyncio.gather(*(work() for _ in range(6))), SOON)
        assert active[1] == 2

    run(scenario)


def test_null_pool_hands_a_returned_connection_to_a_waiter(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make.null(max_size=1, timeout=SOON)
        held = await pool.getconn()
        waiter = asyncio.ensure_future(pool.getconn())
        assert await wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
        await pool.putconn(held)
        got = await asyncio.wait_for(waiter, SOON)
        assert got is held
        assert not held.closed
        await pool.putconn(held)
        assert await wait_until(lambda: held.closed)

    run(scenario)


def test_null_pool_timeout(impl: Impl, run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make.null(max_size=1, timeout=0.2)
        held = await pool.getconn(timeout=SOON)
        with pytest.raises(impl.mod.PoolTimeout):
            await pool.getconn()
        await pool.putconn(held)

    run(scenario)


def test_null_pool_wait(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make.null()
        await pool.wait(SOON)
        assert not pool.closed

    run(scenario)


def test_null_pool_wait_unreachable_closes_the_pool(impl: Impl, run: Any) -> None:
    """A null pool keeps no connection: ``wait()`` makes one to see that the
    database answers, and closes the pool when it does not."""

    async def scenario(make: Pools) -> None:
        pool = await make.null(unreachable_conninfo())
        with pytest.raises(impl.mod.PoolTimeout):
            await pool.wait(timeout=1.0)
        assert pool.closed
        with pytest.raises(impl.mod.PoolClosed):
            await pool.getconn()

    run(scenario)


@pytest.mark.parametrize("kind", ["pool", "null"])
def test_open_wait_unreachable_closes_the_pool(impl: Impl, run: Any, kind: str) -> None:
    async def scenario(make: Pools) -> None:
        if kind == "pool":
            pool = make.new(unreachable_conninfo(), min_size=1)
        else:
            pool = make.new_null(unreachable_conninfo())
        with pytest.raises(impl.mod.PoolTimeout):
            await pool.open(wait=True, timeout=1.0)
        assert pool.closed
        with pytest.raises(impl.mod.PoolClosed):
            await pool.getconn()

    run(scenario)


def test_null_pool_resize(run: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make.null(max_size=1)
        await pool.resize(0, 3)
        assert pool.max_size == 3

    run(scenario)


# ================================================================== state hygiene
# pypool only: session state between borrowers of the async pool, with a
# reset that runs DISCARD ALL outside any transaction.


async def adiscard_all(conn: Any) -> None:
    """``DISCARD ALL`` in autocommit, then psycopg forgets its prepared
    statements (the server dropped them): an async counterpart of
    ``pypool.psycopg.discard_all``."""
    autocommit = conn.autocommit
    if not autocommit:
        await conn.set_autocommit(True)
    try:
        await conn.execute("DISCARD ALL", prepare=False)
    finally:
        if not autocommit:
            await conn.set_autocommit(False)
    # psycopg's cache of prepared statements is private; its own clear()
    # would queue a DEALLOCATE ALL the server no longer needs.
    prepared = conn._prepared
    prepared._counts.clear()
    prepared._names.clear()
    prepared._to_flush.clear()


@pytest.fixture(scope="module")
def role(dsn: str) -> Iterator[str]:
    """A role without login for ``SET ROLE``."""
    name = f"pypool_ahygiene_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        if admin.execute("SELECT current_setting('is_superuser')").fetchone() != ("on",):
            pytest.skip("the test user is not a superuser: cannot switch roles")
        admin.execute(f"CREATE ROLE {name} NOLOGIN")
    yield name
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"DROP ROLE IF EXISTS {name}")


PREPARE_THRESHOLD = 5
AUTO_QUERY = "SELECT %s::int + 1"


async def run_auto_query(conn: Any) -> None:
    for i in range(PREPARE_THRESHOLD + 3):
        assert await one(conn, AUTO_QUERY, (i,)) == i + 1


async def lock_is_free(dsn: str, key: int) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as other:
        if await one(other, "SELECT pg_try_advisory_lock(%s)", (key,)):
            await other.execute("SELECT pg_advisory_unlock(%s)", (key,))
            return True
        return False


async def session_state(conn: Any, name: str) -> dict[str, Any]:
    cur = await conn.execute("SELECT current_user, session_user")
    users = tuple(await cur.fetchone())
    cur = await conn.execute("SELECT pg_listening_channels()")
    listening = [r[0] for r in await cur.fetchall()]
    cur = await conn.execute("SELECT name FROM pg_prepared_statements ORDER BY name")
    prepared = [r[0] for r in await cur.fetchall()]
    return {
        "users": users,
        "search_path": await one(conn, "SHOW search_path"),
        "statement_timeout": await one(conn, "SHOW statement_timeout"),
        "temp_table": bool(
            await one(
                conn,
                "SELECT count(*) FROM pg_class WHERE relname = %s "
                "AND relnamespace = pg_my_temp_schema()",
                (name,),
            )
        ),
        "advisory_locks": await one(
            conn,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        ),
        "listening": listening,
        "prepared": prepared,
    }


async def dirty_everything(conn: Any, role: str, key: int, name: str) -> None:
    await conn.execute("SET search_path TO pg_catalog, public")
    await conn.execute("SET statement_timeout = 1234")
    await conn.execute(f"CREATE TEMPORARY TABLE {name} (id int)")
    await conn.execute("SELECT pg_advisory_lock(%s)", (key,))
    await conn.execute("LISTEN ahygiene_channel")
    await conn.execute("PREPARE ahygiene_stmt AS SELECT 1")
    await run_auto_query(conn)
    await conn.execute(f"SET ROLE {role}")  # last: the rest needs the original role


class _NoConnection(psycopg.AsyncConnection):  # type: ignore[type-arg]
    """A connection class whose connect() gives nothing back."""

    @classmethod
    async def connect(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return None


def test_pypool_factory_returning_none_is_a_failed_connect(run_pypool: Any) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(connection_class=_NoConnection, min_size=0, max_size=1, timeout=0.5)
        with pytest.raises(pypool.psycopg.PoolTimeout) as info:
            await pool.getconn()
        cause = info.value.__cause__
        assert isinstance(cause, pypool.ConnectionFailed), repr(cause)
        assert "returned None" in str(cause)
        assert pool.get_stats()["connections_errors"] >= 1
        assert await wait_until(lambda: pool.stats()[pypool.stats.CONNECTING] == 0)
        assert all(not t.done() for t in pool._tasks)

    run_pypool(scenario)


def test_pypool_has_no_async_reset_policy() -> None:
    """``discard_all`` / ``reset_session`` are sync functions: with an async
    pool a user needs an async reset of their own (as :func:`adiscard_all`)."""
    import inspect

    assert not inspect.iscoroutinefunction(pypool.psycopg.discard_all)
    assert not inspect.iscoroutinefunction(pypool.psycopg.reset_session)


@pytest.mark.parametrize("autocommit", [False, True], ids=["transactions", "autocommit"])
def test_async_discard_all_clears_session_state(
    run_pypool: Any, dsn: str, role: str, autocommit: bool
) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(
            min_size=1, max_size=1, reset=adiscard_all, kwargs={"autocommit": autocommit}
        )
        key = uuid.uuid4().int % 2**62
        name = f"tmp_{uuid.uuid4().hex[:10]}"
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
            original = await session_state(conn, name)
        async with pool.connection() as conn:
            await dirty_everything(conn, role, key, name)
        assert await lock_is_free(dsn, key)  # released at the return
        async with pool.connection() as conn:
            assert conn.info.backend_pid == pid
            assert conn.info.transaction_status == IDLE
            assert conn.autocommit is autocommit
            seen = await session_state(conn, name)
            assert seen == {**original, "prepared": []}
            await run_auto_query(conn)  # psycopg prepares again, and it works
        assert pool.get_stats().get("returns_bad", 0) == 0

    run_pypool(scenario)


def test_async_default_reset_keeps_session_state(run_pypool: Any, dsn: str, role: str) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1)
        key = uuid.uuid4().int % 2**62
        name = f"tmp_{uuid.uuid4().hex[:10]}"
        async with pool.connection() as conn:
            session_user = (await session_state(conn, name))["users"][1]
        async with pool.connection() as conn:
            await dirty_everything(conn, role, key, name)
        async with pool.connection() as conn:
            seen = await session_state(conn, name)
            await conn.execute("RESET ROLE")
            await conn.execute("SELECT pg_advisory_unlock_all()")
        assert seen["users"] == (role, session_user)
        assert seen["search_path"] == "pg_catalog, public"
        assert seen["statement_timeout"] == "1234ms"
        assert seen["temp_table"] is True
        assert seen["advisory_locks"] == 1
        assert seen["listening"] == ["ahygiene_channel"]
        assert "ahygiene_stmt" in seen["prepared"]

    run_pypool(scenario)


@pytest.mark.parametrize("autocommit", [False, True], ids=["transactions", "autocommit"])
def test_async_discard_all_many_returns_keep_the_connection(
    run_pypool: Any, autocommit: bool
) -> None:
    """Every borrower runs the same query once: psycopg would prepare it on
    the fifth, but forgets it at every reset; each reset succeeds."""

    async def scenario(make: Pools) -> None:
        pool = await make(
            min_size=1, max_size=1, reset=adiscard_all, kwargs={"autocommit": autocommit}
        )
        pids = set()
        for n in range(3 * PREPARE_THRESHOLD):
            async with pool.connection() as conn:
                pids.add(conn.info.backend_pid)
                for i in range(PREPARE_THRESHOLD + 1):
                    assert await one(conn, AUTO_QUERY, (n + i,)) == n + i + 1
        assert len(pids) == 1
        assert pool.get_stats().get("returns_bad", 0) == 0

    run_pypool(scenario)


def test_async_discard_all_after_an_open_transaction(run_pypool: Any, dsn: str, table: str) -> None:
    async def scenario(make: Pools) -> None:
        pool = await make(min_size=1, max_size=1, reset=adiscard_all)
        async with await psycopg.AsyncConnection.connect(dsn) as fresh:
            expected = await one(fresh, "SHOW search_path")
        conn = await pool.getconn()
        pid = conn.info.backend_pid
        await conn.execute(f"INSERT INTO {table} VALUES (1)")
        await conn.execute("SET search_path TO pg_catalog")
        await pool.putconn(conn)
        async with pool.connection() as conn:
            assert conn.info.backend_pid == pid
            assert conn.info.transaction_status == IDLE
            assert not conn.autocommit  # restored after the reset ran in autocommit
            assert await one(conn, f"SELECT count(*) FROM public.{table}") == 0
            assert await one(conn, "SHOW search_path") == expected

    run_pypool(scenario)
