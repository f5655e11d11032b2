"""``pypool.psycopg``'s asyncio pools against ``psycopg_pool``'s, side by side.

Every compatibility test runs on three implementations (the ``impl`` fixture):
``psycopg_pool.AsyncConnectionPool`` itself and
``pypool.psycopg.AsyncConnectionPool`` on each core (``native`` and
``python``), and asserts the same observable results on all three. Where
pypool deliberately differs (``docs/psycopg-migration.md``) the scenario is
arranged so that the difference does not show.

Only the ``check`` callback's scenarios are left here (their semantics are
being reworked); every other scenario runs once, on the sync and the async
pools alike, in ``test_psycopg_matrix.py``.

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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")
psycopg_pool = pytest.importorskip("psycopg_pool")

import pypool.psycopg  # noqa: E402
from _support.cores import PYTHON_MODULE, import_native_core  # noqa: E402

pytestmark = pytest.mark.db

#: Generous bound for things that happen "soon" (a connect, a background return).
SOON = 10.0

IDLE = psycopg.pq.TransactionStatus.IDLE


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


# ------------------------------------------------------------------ helpers


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


async def one(conn: Any, sql: str, params: Any = None) -> Any:
    cur = await conn.execute(sql, params)
    row = await cur.fetchone()
    return row[0]


# ================================================================== callbacks


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
