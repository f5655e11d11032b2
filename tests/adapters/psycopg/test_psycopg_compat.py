"""``pypool.psycopg`` against ``psycopg_pool``: what is not a shared scenario.

Every scenario both implementations must pass alike runs once, on the sync
and the async pools, in ``test_psycopg_matrix.py``. Left here, on the sync
pools (through the same facades, ``_support.psycopg_matrix``):

- the garbage collection of a dropped pool, on every implementation;
- pypool's deliberate differences (``docs/psycopg-migration.md``: when
  checks run, what a raising check does), on pypool only, and what
  psycopg_pool does instead where pypool avoids it.

Needs PostgreSQL (``dsn`` fixture): skipped with the reason when it cannot be
reached, unless ``PYPOOL_REQUIRE_DB=1``.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("psycopg_pool")

from _support.psycopg_matrix import (  # noqa: E402
    PYPOOL,
    SOON,
    Matrix,
    kill_the_idle_connection,
    matrix,
    wait_until,
)

pytestmark = pytest.mark.db


# ================================================================== open / close


@matrix(flavours=("sync",))
async def test_a_dropped_pool_is_garbage_collected(m: Matrix) -> None:
    """A pool nobody references (never closed) goes away with the garbage
    collector, taking its threads with it."""
    pool = m.construct(m.dsn, min_size=2, open=True)
    pool.wait(SOON)
    pool.putconn(pool.getconn())
    ref = weakref.ref(pool)
    del pool
    try:
        assert await wait_until(lambda: gc.collect() is not None and ref() is None, timeout=2.0)
    finally:
        leaked = ref()
        if leaked is not None:
            leaked.close()
            del leaked


# ================================================================== deliberate differences
# pypool only: what docs/psycopg-migration.md says pypool does differently.

pypool_sync = matrix(impls=PYPOOL, flavours=("sync",))


async def _borrow(pool: Any, times: int) -> None:
    for _ in range(times):
        async with pool.connection():
            pass


@pypool_sync
async def test_pypool_check_runs_only_after_check_after(m: Matrix) -> None:
    """With ``check=`` given every hand-out is checked (as psycopg_pool does),
    unless ``check_after`` is given too: then only past it."""
    checked: list[int] = []
    pool = await m.pool(
        min_size=1, max_size=1, check=lambda conn: checked.append(1), check_after=1.0
    )
    await pool.wait(SOON)
    await m.sleep(1.2)  # idle longer than check_after (1 s): checked once
    await _borrow(pool, 5)
    assert len(checked) == 1


@pypool_sync
async def test_pypool_check_raising_discards_a_working_connection(m: Matrix) -> None:
    """psycopg_pool puts a connection whose check raised back into the pool
    if it is not closed, and tries again after a pause; pypool discards it
    and hands out another."""
    checked: list[int] = []

    def check(conn: Any) -> None:
        checked.append(conn.info.backend_pid)
        if len(checked) == 1:
            raise psycopg.OperationalError("failing the first check")

    pool = await m.pool(min_size=1, max_size=1, check=check)
    await pool.wait(SOON)
    await m.sleep(1.2)
    async with pool.connection(timeout=SOON) as conn:
        assert conn.pid != checked[0]
    assert len(checked) == 2  # the new connection is checked too
    assert pool.get_stats()["connections_num"] == 2


@pypool_sync
async def test_pypool_check_after_zero_checks_every_getconn(m: Matrix) -> None:
    checked: list[int] = []
    pool = await m.pool(min_size=1, max_size=1, check=lambda conn: checked.append(1), check_after=0)
    await pool.wait(SOON)
    await _borrow(pool, 5)
    assert len(checked) == 5


@pypool_sync
async def test_pypool_checks_idle_connections_without_a_check_callback(m: Matrix) -> None:
    pool = await m.pool(min_size=1, max_size=1)
    pid = await kill_the_idle_connection(m, pool)
    async with pool.connection(timeout=SOON) as conn:
        assert conn.pid != pid
        assert await conn.one("SELECT 1") == 1


async def _hands_out_a_dead_connection(m: Matrix, **kwargs: Any) -> None:
    pool = await m.pool(min_size=1, max_size=1, **kwargs)
    await kill_the_idle_connection(m, pool)
    with pytest.raises(psycopg.OperationalError):
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")


@matrix(impls=("psycopg_pool",), flavours=("sync",))
async def test_psycopg_pool_hands_out_a_killed_idle_connection(m: Matrix) -> None:
    """What pypool's check before hand-out avoids."""
    await _hands_out_a_dead_connection(m)


@pypool_sync
async def test_pypool_check_false_never_checks(m: Matrix) -> None:
    await _hands_out_a_dead_connection(m, check=False)
