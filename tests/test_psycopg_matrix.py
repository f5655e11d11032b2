"""``pypool.psycopg`` against ``psycopg_pool``: one scenario, every pool.

Each scenario is written once (async code against the facades of
``_support.psycopg_matrix``) and runs on {psycopg_pool, pypool native, pypool
python} x {sync, async} x {pool, null pool} where it applies, asserting the
same observable results everywhere. Where pypool deliberately differs
(``docs/psycopg-migration.md``: which idle connection is reused first, when
checks run, lifetime enforced at hand-out, connects on worker threads) the
scenario is arranged so that the difference does not show.

Needs PostgreSQL (``dsn`` fixture): skipped with the reason when it cannot be
reached, unless ``PYPOOL_REQUIRE_DB=1``.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")
psycopg_pool = pytest.importorskip("psycopg_pool")

import pypool  # noqa: E402
import pypool.psycopg  # noqa: E402
from _support.psycopg_matrix import (  # noqa: E402
    KINDS,
    PYPOOL,
    SOON,
    Cell,
    Conn,
    Matrix,
    available,
    cells,
    core_of,
    make_pool,
    matrix,
    terminate,
    unreachable_conninfo,
    wait_until,
)

pytestmark = pytest.mark.db

IDLE = psycopg.pq.TransactionStatus.IDLE
INTRANS = psycopg.pq.TransactionStatus.INTRANS
INERROR = psycopg.pq.TransactionStatus.INERROR


@pytest.fixture
def table(dsn: str) -> Iterator[str]:
    """A fresh table ``(id int)``, dropped afterwards."""
    name = f"matrix_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int)")
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def rows(dsn: str, table: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY id")]


# ================================================================== construction


@matrix()
async def test_constructor_defaults_and_properties(m: Matrix) -> None:
    pool = m.new()
    assert re.fullmatch(r"pool-\d+", pool.name)
    assert pool.min_size == 4
    assert pool.max_size == 4
    assert pool.timeout == 30.0
    assert pool.max_lifetime == 3600.0
    assert pool.max_idle == 600.0
    assert pool.reconnect_timeout == 300.0
    assert pool.num_workers == 3
    assert pool.close_returns is False
    assert pool.conninfo == m.dsn
    assert pool.kwargs is None
    assert pool.connection_class is m.connection_class
    assert f"{pool.name!r}" in repr(pool.raw)


@matrix()
async def test_constructor_explicit_values(m: Matrix) -> None:
    kwargs = {"application_name": "matrix"}
    pool = m.new(
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


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"min_size": -1}, "negative"),
        ({"min_size": 3, "max_size": 2}, "greater or equal"),
        ({"min_size": 0}, "greater than 0"),
    ],
    ids=["negative", "max-below-min", "zero"],
)
@matrix()
async def test_invalid_sizes_raise_value_error(m: Matrix, sizes: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        m.new(**sizes)


@matrix(kinds=KINDS)
async def test_max_waiting_property(m: Matrix) -> None:
    pool = m.new(max_waiting=3)
    assert pool.max_waiting == 3


@matrix()
async def test_timeout_is_settable(m: Matrix) -> None:
    pool = m.new()
    pool.timeout = 5.0
    assert pool.timeout == 5.0


@matrix(kinds=KINDS)
async def test_generic_subscription(m: Matrix) -> None:
    """``ConnectionPool[Connection[DictRow]]``, as psycopg's docs annotate."""
    alias = m.cls[m.connection_class]
    assert alias is not None
    assert alias.__origin__ is m.cls


@matrix(kinds=KINDS)
async def test_error_classes(m: Matrix) -> None:
    for name in ("PoolTimeout", "PoolClosed", "TooManyRequests"):
        cls = getattr(m.mod, name)
        assert issubclass(cls, psycopg.OperationalError)
        assert issubclass(cls, psycopg.Error)
        if m.is_pypool:  # pypool's classes are psycopg's errors and pypool's at once
            assert issubclass(cls, getattr(pypool, name))


# ================================================================== open / close


@matrix()
async def test_closed_is_true_before_open(m: Matrix) -> None:
    assert m.new(min_size=1).closed


@matrix()
async def test_open_wait(m: Matrix) -> None:
    pool = m.new(min_size=2)
    await pool.open(wait=True, timeout=SOON)
    stats = pool.get_stats()
    assert stats["pool_size"] == 2
    assert stats["pool_available"] == 2


@matrix()
async def test_wait_success(m: Matrix) -> None:
    pool = await m.pool(min_size=3)
    await pool.wait(SOON)
    assert available(pool) == 3
    assert not pool.closed


@matrix(kinds=KINDS)
async def test_wait_unreachable_closes_the_pool_and_raises_pool_timeout(m: Matrix) -> None:
    """A null pool keeps no connection: ``wait()`` makes one to see that the
    database answers, and closes the pool when it does not."""
    pool = await m.pool(unreachable_conninfo(), **({} if m.is_null else {"min_size": 1}))
    started = time.monotonic()
    with pytest.raises(m.mod.PoolTimeout) as info:
        await pool.wait(timeout=1.0)
    assert time.monotonic() - started < SOON
    assert isinstance(info.value, psycopg.OperationalError)
    assert pool.closed
    with pytest.raises(m.mod.PoolClosed):
        await pool.getconn()


@matrix(kinds=KINDS)
async def test_open_wait_unreachable_closes_the_pool(m: Matrix) -> None:
    pool = m.new(unreachable_conninfo(), **({} if m.is_null else {"min_size": 1}))
    with pytest.raises(m.mod.PoolTimeout):
        await pool.open(wait=True, timeout=1.0)
    assert pool.closed
    with pytest.raises(m.mod.PoolClosed):
        await pool.getconn()


@matrix()
async def test_open_close_reopen(m: Matrix) -> None:
    pool = m.new(min_size=1)
    await pool.open()
    await pool.open()  # idempotent
    await pool.putconn(await pool.getconn())
    await pool.close()
    assert pool.closed
    await pool.close()  # idempotent
    with pytest.raises(m.mod.PoolClosed, match="cannot be reused"):
        await pool.open()
    with pytest.raises(m.mod.PoolClosed, match="already closed"):
        await pool.getconn()


@matrix()
async def test_context_manager(m: Matrix) -> None:
    # open unspecified for the sync pools (no warning as a context manager),
    # open=False for the async ones (psycopg_pool's recommended way)
    pool = m.new(min_size=1, open=False if m.is_async else None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        async with pool.as_context():
            assert not pool.closed
            async with pool.connection(timeout=SOON) as conn:
                assert await conn.one("SELECT 1") == 1
            kept = await pool.getconn()
            await pool.putconn(kept)
    assert pool.closed
    assert kept.closed  # idle connections are closed with the pool


# ================================================================== borrowing


@matrix(kinds=KINDS)
async def test_connection_commits_on_success(m: Matrix, table: str) -> None:
    pool = await m.pool(**({} if m.is_null else {"min_size": 1}))
    async with pool.connection() as conn:
        await conn.execute(f"INSERT INTO {table} VALUES (1)")
        assert not conn.autocommit
    assert rows(m.dsn, table) == [1]
    if not m.is_null:
        assert await wait_until(lambda: available(pool) == 1)


@matrix()
async def test_connection_rolls_back_on_error(m: Matrix, table: str) -> None:
    pool = await m.pool(min_size=1, max_size=1)
    with pytest.raises(ZeroDivisionError):
        async with pool.connection() as conn:
            await conn.execute(f"INSERT INTO {table} VALUES (1)")
            1 / 0  # noqa: B018
    assert rows(m.dsn, table) == []
    assert await wait_until(lambda: available(pool) == 1)
    async with pool.connection() as again:
        assert again.raw is conn.raw
        assert again.status == IDLE


@matrix(kinds=KINDS)
async def test_connection_timeout_argument(m: Matrix) -> None:
    pool = await m.pool(**({"max_size": 1} if m.is_null else {"min_size": 1, "max_size": 1}))
    pool.timeout = SOON
    held = await pool.getconn()
    started = time.monotonic()
    with pytest.raises(m.mod.PoolTimeout):
        async with pool.connection(timeout=0.2):
            pass  # pragma: no cover
    assert time.monotonic() - started < SOON / 2
    await pool.putconn(held)


@matrix()
async def test_getconn_putconn(m: Matrix) -> None:
    pool = await m.pool(min_size=2)
    await pool.wait(SOON)
    conn = await pool.getconn()
    assert isinstance(conn.raw, m.connection_class)
    assert await conn.one("SELECT 1") == 1
    assert available(pool) == 1
    await pool.putconn(conn)
    assert await wait_until(lambda: available(pool) == 2)
    assert not conn.closed


@matrix(kinds=KINDS)
async def test_getconn_sets_the_pool_on_the_connection(m: Matrix) -> None:
    """psycopg relies on ``conn._pool`` (``with conn:`` does not close a
    pooled connection; ``close_returns`` finds its pool through it)."""
    pool = await m.pool(**({} if m.is_null else {"min_size": 1}))
    conn = await pool.getconn()
    assert conn._pool is pool.raw
    # psycopg's own block: commits, and leaves a pooled connection open
    if m.is_async:
        async with conn.raw:
            await conn.execute("SELECT 1")
    else:
        with conn.raw:
            await conn.execute("SELECT 1")
    assert not conn.closed
    await pool.putconn(conn)


@matrix()
async def test_returned_in_transaction_is_rolled_back_with_a_warning(
    m: Matrix, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await m.pool(min_size=1, max_size=1)
    conn = await pool.getconn()
    pid = conn.pid
    await conn.execute(f"INSERT INTO {table} VALUES (1)")
    assert conn.status == INTRANS
    with caplog.at_level(logging.WARNING, logger="psycopg.pool"):
        await pool.putconn(conn)
        assert await wait_until(lambda: available(pool) == 1)
    assert any(
        r.name == "psycopg.pool" and r.levelno == logging.WARNING and "rolling back" in r.message
        for r in caplog.records
    )
    assert rows(m.dsn, table) == []
    again = await pool.getconn()
    assert again.pid == pid
    assert again.status == IDLE
    await pool.putconn(again)


@matrix()
async def test_returned_in_failed_transaction_is_rolled_back(m: Matrix) -> None:
    pool = await m.pool(min_size=1, max_size=1)
    conn = await pool.getconn()
    pid = conn.pid
    with pytest.raises(psycopg.errors.DivisionByZero):
        await conn.execute("SELECT 1 / 0")
    assert conn.status == INERROR
    await pool.putconn(conn)
    assert await wait_until(lambda: available(pool) == 1)
    again = await pool.getconn()
    assert again.pid == pid
    assert await again.one("SELECT 2") == 2
    await pool.putconn(again)


@matrix()
async def test_returned_broken_is_replaced(m: Matrix) -> None:
    pool = await m.pool(min_size=1, max_size=1)
    conn = await pool.getconn()
    pid = conn.pid
    await terminate(m.dsn, pid)
    with pytest.raises(psycopg.OperationalError):
        await conn.execute("SELECT 1")
    assert conn.broken
    await pool.putconn(conn)
    fresh = await pool.getconn(timeout=SOON)
    assert fresh.raw is not conn.raw
    assert fresh.pid != pid
    assert await fresh.one("SELECT 1") == 1
    await pool.putconn(fresh)
    assert pool.get_stats()["returns_bad"] == 1


@matrix()
async def test_returned_closed_is_replaced(m: Matrix) -> None:
    pool = await m.pool(min_size=1, max_size=1)
    conn = await pool.getconn()
    pid = conn.pid
    await conn.close()
    assert conn.closed
    await pool.putconn(conn)
    fresh = await pool.getconn(timeout=SOON)
    assert fresh.pid != pid
    assert await fresh.one("SELECT 1") == 1
    await pool.putconn(fresh)
    assert pool.get_stats()["returns_bad"] == 1


@matrix(impls=PYPOOL)
async def test_pypool_matrix_runs_each_core(m: Matrix) -> None:
    """The matrix's pypool cells really run on the core they name."""
    pool = m.new(min_size=1)
    assert type(pool.raw).__mro__[-2].__module__ == m.core.__name__  # type: ignore[union-attr]


# ================================================================== null pools

NULL = ("null",)


@matrix(kinds=NULL)
async def test_null_pool_min_size_must_be_zero(m: Matrix) -> None:
    with pytest.raises(ValueError, match="min_size"):
        m.new(min_size=1)


@matrix(kinds=NULL)
async def test_null_pool_defaults(m: Matrix) -> None:
    pool = await m.pool(max_size=2)
    assert pool.min_size == 0
    assert pool.max_size == 2
    stats = pool.get_stats()
    assert (stats["pool_min"], stats["pool_max"], stats["pool_size"]) == (0, 2, 0)


@matrix(kinds=NULL)
async def test_null_pool_unbounded_max_size_is_zero(m: Matrix) -> None:
    pool = await m.pool()
    assert pool.get_stats()["pool_max"] == 0
    assert pool.max_size == 0


@matrix(kinds=NULL)
async def test_null_pool_wait_makes_a_test_connection(m: Matrix) -> None:
    pool = await m.pool()
    await pool.wait(SOON)
    assert not pool.closed
    assert pool.get_stats()["connections_num"] == 1
    assert pool.get_stats()["pool_size"] == 0  # and closes it


@matrix(kinds=NULL)
async def test_null_pool_resize(m: Matrix) -> None:
    pool = await m.pool(max_size=1)
    await pool.resize(0, 3)
    assert pool.max_size == 3
    await pool.resize(0)  # unbounded again
    assert pool.max_size == 0
    await pool.putconn(await pool.getconn(timeout=SOON))


@matrix(kinds=NULL)
async def test_null_pool_resize_min_size_refused(m: Matrix) -> None:
    pool = await m.pool(max_size=2)
    with pytest.raises(ValueError, match="min_size"):
        await pool.resize(1, 2)


@pytest.mark.parametrize("leave", ["transaction", "broken"])
@matrix(kinds=KINDS)
async def test_configure_leaving_the_connection_unusable_times_out(m: Matrix, leave: str) -> None:
    """A ``configure`` that leaves its connection in a transaction (or
    broken) discards it: no caller gets it, and the caller times out."""

    async def configure(conn: Any) -> None:
        if leave == "transaction":
            await Conn(conn).execute("SELECT 1")  # not autocommit: a transaction
        else:
            await Conn(conn).close()

    sync_configure = lambda conn: None  # noqa: E731  replaced below for the sync pools
    if not m.is_async:

        def sync_configure(conn: Any) -> None:
            if leave == "transaction":
                conn.execute("SELECT 1")
            else:
                conn.close()

    pool = await m.pool(
        configure=configure if m.is_async else sync_configure,
        **({"max_size": 1} if m.is_null else {"min_size": 1, "max_size": 1}),
    )
    if m.is_null and not m.is_pypool:
        # psycopg_pool's null pools connect in the caller, which gets the
        # configure's error; pypool's connect on a worker (a deliberate
        # difference), so a failed connect is the caller's PoolTimeout.
        with pytest.raises(psycopg.ProgrammingError, match="configure function"):
            await pool.getconn(timeout=0.5)
    else:
        with pytest.raises(m.mod.PoolTimeout):
            await pool.getconn(timeout=0.5)


# ================================================================== async parity


async def _outcome(call: Any) -> BaseException | None:
    try:
        await call()
    except Exception as exc:
        return exc
    return None


@pytest.mark.parametrize("state", ["not-open", "closed"])
@matrix(kinds=KINDS)
async def test_every_method_raises_psycopg_flavoured_errors(m: Matrix, state: str) -> None:
    """Whatever a pool method raises is a psycopg error that ``except
    psycopg_pool.PoolClosed`` (``pypool.psycopg.PoolClosed``) catches: never
    one of pypool's own classes alone."""
    pool = m.new(**({} if m.is_null else {"min_size": 1}))
    if state == "closed":
        await pool.open()
        await pool.close()

    async def block() -> None:
        async with pool.connection(timeout=0.1):
            pass  # pragma: no cover

    calls = {
        "wait": lambda: pool.wait(0.1),
        "getconn": lambda: pool.getconn(0.1),
        "connection": block,
        "resize": lambda: pool.resize(0 if m.is_null else 1, 2),
        "check": pool.check,
        "drain": pool.drain,
        "open": pool.open,
        "close": pool.close,
    }
    seen = {}
    for name, call in calls.items():
        exc = await _outcome(call)
        seen[name] = type(exc).__name__ if exc is not None else None
        if isinstance(exc, AttributeError) and not m.is_pypool and state == "not-open":
            continue  # psycopg_pool 3.3's own slip (no lock before open): not copied
        if exc is not None:
            assert isinstance(exc, psycopg.Error), (name, exc)
            if isinstance(exc, pypool.errors.PoolError):
                assert type(exc).__module__ == "pypool.psycopg", (name, exc)
            if isinstance(exc, m.mod.PoolClosed):
                expected = "already closed" if state == "closed" else "not open yet"
                if name != "open":
                    assert expected in str(exc), (name, exc)
    # The methods that refuse, as psycopg_pool's do; the others do not.
    refused = {"getconn", "connection", "wait"} | ({"open"} if state == "closed" else set())
    assert {name for name, kind in seen.items() if kind == "PoolClosed"} == refused
    if m.is_pypool or state == "closed":
        assert {name for name, kind in seen.items() if kind is None} == set(calls) - refused


@pytest.mark.parametrize("open_", [None, True], ids=["open-unspecified", "open-true"])
@pytest.mark.parametrize("cell", cells(flavours=("async",), kinds=KINDS))
def test_async_pool_opened_outside_a_loop_raises_runtime_error(
    cell: Cell, dsn: str, open_: bool | None
) -> None:
    """An async pool that would open in its constructor needs a running
    loop: without one, RuntimeError, as psycopg_pool raises."""
    cls = getattr(
        psycopg_pool if cell.impl == "psycopg_pool" else pypool.psycopg,
        "AsyncNullConnectionPool" if cell.kind == "null" else "AsyncConnectionPool",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # open=True's deprecation
        with pytest.raises(RuntimeError, match="open with no running loop"):
            make_pool(cls, core_of(cell.impl), dsn, open=open_)
    make_pool(cls, core_of(cell.impl), dsn, open=False)  # open=False needs none


@pytest.mark.parametrize("use", ["getconn", "connection", "wait"])
@matrix(flavours=("sync",), kinds=KINDS)
async def test_open_unspecified_warns_for_every_pool_at_the_users_line(m: Matrix, use: str) -> None:
    """A sync pool made without ``open`` and used warns (DeprecationWarning),
    once per pool, for every such pool, attributed to the caller's line."""
    for _ in range(2):  # a second pool warns again
        pool = m.new(open=None)
        with warnings.catch_warnings(record=True) as recorded:
            warnings.simplefilter("always")
            line = _use(pool.raw, use)
            _use(pool.raw, use)  # the same pool: once only
        deprecations = [w for w in recorded if issubclass(w.category, DeprecationWarning)]
        assert len(deprecations) == 1, [str(w.message) for w in deprecations]
        assert "'open' parameter" in str(deprecations[0].message)
        if m.is_pypool:  # psycopg_pool's points into psycopg_pool
            assert (deprecations[0].filename, deprecations[0].lineno) == (__file__, line)
        await pool.close()


def _use(pool: Any, use: str) -> int:
    """Uses the pool as ``use`` says; returns the line that did it."""
    if use == "getconn":
        line = sys._getframe().f_lineno + 1
        conn = pool.getconn(SOON)
        pool.putconn(conn)
    elif use == "connection":
        line = sys._getframe().f_lineno + 1
        with pool.connection(SOON):
            pass
    else:
        line = sys._getframe().f_lineno + 1
        pool.wait(SOON)
    return line


@matrix(kinds=KINDS)
async def test_requests_queued_counts_a_request_while_it_waits(m: Matrix) -> None:
    """A monitor sees a waiting request in ``requests_queued`` (and
    ``requests_num``) while it waits, not only once it is served."""
    pool = await m.pool(**({"max_size": 1} if m.is_null else {"min_size": 1, "max_size": 1}))
    held = await pool.getconn(SOON)
    before = pool.get_stats()

    async def waiter() -> None:
        await pool.putconn(await pool.getconn(SOON))

    task = m.spawn(waiter)
    assert await wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    during = pool.get_stats()
    assert during.get("requests_queued", 0) == before.get("requests_queued", 0) + 1
    assert during.get("requests_num", 0) == before.get("requests_num", 0) + 1
    await pool.putconn(held)
    await task
    after = pool.get_stats()
    assert after.get("requests_queued", 0) == during["requests_queued"]  # not counted twice
    assert after.get("requests_num", 0) == during["requests_num"]
