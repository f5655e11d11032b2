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

import asyncio
import logging
import re
import sys
import threading
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
    # psycopg_pool sets the pool itself; pypool a weak link to it, which
    # answers for it (psycopg only calls ``_pool.putconn``)
    assert conn._pool.putconn == pool.raw.putconn
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


@pytest.mark.parametrize("state", ["broken", "closed"])
@matrix()
async def test_returned_unusable_is_replaced(m: Matrix, state: str) -> None:
    """A connection returned broken (its session killed) or closed is
    counted as a bad return and replaced by a new one."""
    pool = await m.pool(min_size=1, max_size=1)
    conn = await pool.getconn()
    pid = conn.pid
    if state == "broken":
        await terminate(m.dsn, pid)
        with pytest.raises(psycopg.OperationalError):
            await conn.execute("SELECT 1")
        assert conn.broken
    else:
        await conn.close()
        assert conn.closed
    await pool.putconn(conn)
    fresh = await pool.getconn(timeout=SOON)
    assert fresh.raw is not conn.raw
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


# ================================================================== logs

#: What psycopg_pool logs (WARNING, logger ``psycopg.pool``) for a connection
#: returned in each state: a key phrase, and the status name (in the
#: connection's repr).
RETURNED = {
    "INTRANS": "rolling back returned connection",
    "INERROR": "rolling back returned connection",
    "ACTIVE": "closing returned connection",
    "BAD": "discarding closed connection",
}


async def _leave_in(m: Matrix, conn: Conn, state: str) -> None:
    if state == "INTRANS":
        await conn.execute("SELECT 1")
    elif state == "INERROR":
        with pytest.raises(psycopg.errors.DivisionByZero):
            await conn.execute("SELECT 1 / 0")
    elif state == "ACTIVE":
        # A command sent and not read: the connection is mid-operation.
        conn.raw.pgconn.send_query(b"SELECT pg_sleep(0)")
    else:
        await conn.close()
    assert state in repr(conn.raw)


@pytest.mark.parametrize("state", list(RETURNED))
@matrix()
async def test_returned_connection_is_logged_as_psycopg_pool_does(
    m: Matrix, state: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await m.pool(min_size=1, max_size=1)
    conn = await pool.getconn(SOON)
    await _leave_in(m, conn, state)
    with Records("psycopg.pool") as records:
        await pool.putconn(conn)
        again = await pool.getconn(SOON)  # the return is over (a new connection, maybe)
        await pool.putconn(again)
        await m.sleep(0.1)
    warned = [(level, text) for level, text in records.seen if level >= logging.WARNING]
    if m.is_pypool:
        assert len(warned) == 1, warned  # one record per event, no more
    # psycopg_pool adds "discarding closed connection" after closing an ACTIVE one
    level, message = next((r for r in warned if RETURNED[state] in r[1]), warned[0])
    assert level == logging.WARNING
    assert RETURNED[state] in message
    assert f"[{state}]" in message  # the connection's status, when it was returned


class Records(logging.Handler):
    """The records of one logger, formatted when they are emitted (as an
    operator's handler sees them: a connection's repr names its state then)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(name)
        self.seen: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.levelno, record.getMessage()))

    def __enter__(self) -> Records:
        self.level_before = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_before)


@matrix()
async def test_connect_failures_of_an_open_are_logged_once(m: Matrix) -> None:
    """Against a server that is down, ``open(wait=True)`` for less than a
    second logs the failed connects once (psycopg_pool: one attempt a
    second; pypool: retries faster, logs once)."""
    pool = m.new(unreachable_conninfo(), min_size=1)
    with Records("psycopg.pool") as records, pytest.raises(m.mod.PoolTimeout):
        await pool.open(wait=True, timeout=0.8)
    warned = [text for level, text in records.seen if level >= logging.WARNING]
    assert len(warned) == 1, warned
    assert ("connection failed" if m.is_pypool else "error connecting") in warned[0]


@matrix()
async def test_reconnection_attempts_failing_are_logged_once(m: Matrix) -> None:
    """After ``reconnect_timeout`` of failed connects: one WARNING saying
    the reconnection attempt failed, and ``reconnect_failed(pool)``."""
    called = []
    pool = m.new(
        unreachable_conninfo(),
        min_size=1,
        reconnect_timeout=0.5,
        reconnect_failed=lambda pool: called.append(pool),
    )
    with Records("psycopg.pool") as records:
        await pool.open()
        assert await wait_until(lambda: bool(called))
        await m.sleep(1.2)  # and no second one meanwhile
        await pool.close()
    gave_up = [
        (level, text) for level, text in records.seen if "reconnection attempt in pool" in text
    ]
    assert len(gave_up) == 1, gave_up
    assert gave_up[0][0] == logging.WARNING
    assert f"{pool.name!r}" in gave_up[0][1]
    assert called[:1] == [pool.raw]


@matrix(impls=PYPOOL, kinds=KINDS)
async def test_connections_made_and_closed_are_logged_at_debug(m: Matrix) -> None:
    with Records("psycopg.pool") as records:
        pool = await m.pool(**({} if m.is_null else {"min_size": 1}))
        await pool.putconn(await pool.getconn(SOON))
        await pool.close()
    debug = [text for level, text in records.seen if level == logging.DEBUG]
    assert any("connection made" in text for text in debug), debug
    assert any("connection closed" in text for text in debug), debug


# ================================================================== returning


@matrix()
async def test_putconn_of_a_foreign_connection_raises_value_error(m: Matrix) -> None:
    pool = await m.pool(min_size=1, max_size=1)
    other = await m.pool(min_size=1, max_size=1)
    borrowed = await pool.getconn()
    stranger = await m.connect()
    try:
        with pytest.raises(ValueError):
            await pool.putconn(stranger)
        assert not stranger.closed
    finally:
        await stranger.close()
    from_other = await other.getconn()
    with pytest.raises(ValueError):
        await pool.putconn(from_other)
    assert not from_other.closed
    await other.putconn(from_other)
    await pool.putconn(borrowed)
    assert await wait_until(lambda: available(pool) == 1 and available(other) == 1)


@matrix()
async def test_putconn_twice_raises_value_error(m: Matrix) -> None:
    pool = await m.pool(min_size=1, max_size=1)
    conn = await pool.getconn()
    await pool.putconn(conn)
    with pytest.raises(ValueError):
        await pool.putconn(conn)
    assert await wait_until(lambda: available(pool) == 1)
    await pool.putconn(await pool.getconn())


@matrix()
async def test_putconn_after_close_closes_the_connection(m: Matrix) -> None:
    pool = await m.pool(min_size=1)
    conn = await pool.getconn()
    await pool.close()
    assert not conn.closed
    await pool.putconn(conn)
    assert await wait_until(lambda: conn.closed)


@matrix(flavours=("sync",))
async def test_close_returns(m: Matrix) -> None:
    pool = await m.pool(min_size=1, max_size=1, close_returns=True)
    assert pool.close_returns is True
    conn = await pool.getconn()
    pid = conn.pid
    await conn.close()  # gives it back instead
    assert not conn.closed
    assert await wait_until(lambda: available(pool) == 1)
    again = await pool.getconn()
    assert again.pid == pid
    await pool.putconn(again)
    await pool.close()
    assert again.closed


# ================================================================== errors and waiters


async def _getconn(pool: Any, timeout: float = SOON) -> Any:
    return await pool.getconn(timeout=timeout)


@matrix(kinds=KINDS)
async def test_pool_timeout_on_exhaustion(m: Matrix) -> None:
    sizes = {"max_size": 1} if m.is_null else {"min_size": 1, "max_size": 1}
    pool = await m.pool(timeout=0.2, **sizes)
    held = await pool.getconn(timeout=SOON)
    started = time.monotonic()
    with pytest.raises(m.mod.PoolTimeout) as info:
        await pool.getconn()
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < SOON / 2
    assert isinstance(info.value, psycopg.OperationalError)
    assert "0.20 sec" in str(info.value)
    with pytest.raises(m.mod.PoolTimeout):
        await pool.getconn(timeout=0.05)
    await pool.putconn(held)
    await pool.putconn(await pool.getconn(timeout=SOON))


@matrix()
async def test_too_many_requests(m: Matrix) -> None:
    pool = await m.pool(min_size=1, max_size=1, max_waiting=1, timeout=SOON)
    held = await pool.getconn()
    waiter = m.spawn(_getconn, pool)
    assert await wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    started = time.monotonic()
    with pytest.raises(m.mod.TooManyRequests) as info:
        await pool.getconn()
    assert time.monotonic() - started < 1.0  # refused at once, not after a wait
    assert isinstance(info.value, psycopg.OperationalError)
    assert "1 requests waiting" in str(info.value)
    await pool.putconn(held)
    got = await asyncio.wait_for(waiter, SOON)
    assert got.raw is held.raw  # handed straight to the waiter
    await pool.putconn(got)


@matrix()
async def test_pool_closed_wakes_waiters(m: Matrix) -> None:
    pool = await m.pool(min_size=1, max_size=1, timeout=SOON)
    held = await pool.getconn()
    waiter = m.spawn(_getconn, pool)
    assert await wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    await pool.close()
    with pytest.raises(m.mod.PoolClosed):
        await asyncio.wait_for(waiter, SOON)
    await pool.putconn(held)
    assert await wait_until(lambda: held.closed)


@matrix(flavours=("async",))
async def test_cancelled_waiter_does_not_lose_a_connection(m: Matrix) -> None:
    pool = await m.pool(min_size=1, max_size=1, timeout=SOON)
    held = await pool.getconn()
    waiter = m.spawn(_getconn, pool)
    assert await wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await pool.putconn(held)
    again = await pool.getconn(timeout=SOON)
    assert again.raw is held.raw
    await pool.putconn(again)


@matrix(flavours=("async",))
async def test_many_tasks_never_share_a_connection(m: Matrix) -> None:
    """1000 tasks on a pool of 10: no connection is ever held by two tasks."""
    pool = await m.pool(min_size=10, max_size=10, timeout=60.0)
    await pool.wait(SOON)
    holders: dict[int, int] = {}
    conns: set[int] = set()
    doubles: list[tuple[int, int, int]] = []
    peak = [0]

    async def task(n: int) -> None:
        async with pool.connection() as conn:
            key = id(conn.raw)
            if key in holders:
                doubles.append((key, holders[key], n))
            holders[key] = n
            conns.add(key)
            peak[0] = max(peak[0], len(holders))
            assert await conn.one("SELECT %s::int", (n,)) == n
            await asyncio.sleep(0)
            assert holders.get(key) == n
            del holders[key]

    await asyncio.gather(*(task(n) for n in range(1000)))
    assert doubles == []
    assert not holders
    assert len(conns) <= 10
    assert peak[0] <= 10
    assert await wait_until(lambda: available(pool) == 10)


# ================================================================== null pools at work


@matrix(kinds=NULL)
async def test_null_pool_closes_connections_on_return(m: Matrix) -> None:
    pool = await m.pool(max_size=2)
    pids = []
    for _ in range(3):
        conn = await pool.getconn(timeout=SOON)
        pids.append(conn.pid)
        await pool.putconn(conn)
        assert await wait_until(lambda conn=conn: conn.closed)  # type: ignore[misc]
    assert len(set(pids)) == 3
    async with pool.connection(timeout=SOON) as conn:
        assert await conn.one("SELECT 1") == 1
    assert await wait_until(lambda: conn.closed)
    assert pool.get_stats()["pool_size"] == 0


@matrix(kinds=NULL)
async def test_null_pool_max_size_bounds_concurrency(m: Matrix) -> None:
    pool = await m.pool(max_size=2, timeout=SOON)
    lock = threading.Lock()
    active = [0, 0]  # now, peak

    async def work() -> None:
        async with pool.connection() as conn:
            with lock:
                active[0] += 1
                active[1] = max(active[1], active[0])
            await conn.execute("SELECT pg_sleep(0.1)")
            with lock:
                active[0] -= 1

    await asyncio.wait_for(asyncio.gather(*(m.spawn(work) for _ in range(6))), SOON)
    assert active[1] == 2


@matrix(kinds=NULL)
async def test_null_pool_hands_a_returned_connection_to_a_waiter(m: Matrix) -> None:
    pool = await m.pool(max_size=1, timeout=SOON)
    held = await pool.getconn()
    waiter = m.spawn(_getconn, pool)
    assert await wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    await pool.putconn(held)
    got = await asyncio.wait_for(waiter, SOON)
    assert got.raw is held.raw
    assert not held.closed
    await pool.putconn(held)
    assert await wait_until(lambda: held.closed)


# ================================================================== callbacks


@matrix()
async def test_configure_runs_once_per_connection(m: Matrix) -> None:
    configured: list[int] = []

    async def configure(conn: Conn) -> None:
        await conn.execute("SET application_name = 'configured'")
        await conn.commit()
        configured.append(conn.pid)

    pool = await m.pool(min_size=2, configure=m.callback(configure))
    await pool.wait(SOON)
    for _ in range(5):
        async with pool.connection() as conn:
            assert await conn.one("SHOW application_name") == "configured"
            assert conn.pid in configured
    assert len(configured) == 2
    assert len(set(configured)) == 2


@matrix()
async def test_configure_leaving_a_transaction_discards_the_connection(m: Matrix) -> None:
    configured: list[int] = []

    async def configure(conn: Conn) -> None:
        configured.append(conn.pid)
        if len(configured) == 1:
            await conn.execute("SELECT 1")  # leaves a transaction open: not allowed

    pool = await m.pool(min_size=1, max_size=1, configure=m.callback(configure))
    await pool.wait(SOON)
    assert len(configured) >= 2
    async with pool.connection() as conn:
        assert conn.pid != configured[0]
        assert conn.status == IDLE


@matrix()
async def test_reset_runs_on_every_return(m: Matrix) -> None:
    resets: list[int] = []

    async def reset(conn: Conn) -> None:
        assert conn.status == IDLE
        await conn.execute("RESET application_name")
        resets.append(conn.pid)

    pool = await m.pool(
        min_size=1, max_size=1, reset=m.callback(reset), kwargs={"autocommit": True}
    )
    for n in range(1, 4):
        async with pool.connection() as conn:
            await conn.execute("SET application_name = 'dirty'")
        assert await wait_until(lambda n=n: len(resets) == n)  # type: ignore[misc]
    async with pool.connection() as conn:
        assert await conn.one("SHOW application_name") != "dirty"


@matrix()
async def test_reset_runs_after_the_rollback(m: Matrix) -> None:
    seen: list[Any] = []

    async def reset(conn: Conn) -> None:
        seen.append(conn.status)

    pool = await m.pool(min_size=1, max_size=1, reset=m.callback(reset))
    conn = await pool.getconn()
    await conn.execute("SELECT 1")
    await pool.putconn(conn)
    assert await wait_until(lambda: len(seen) == 1)
    assert seen == [IDLE]


@pytest.mark.parametrize("fault", ["leaves_a_transaction", "raises"])
@matrix()
async def test_reset_going_wrong_discards_the_connection(m: Matrix, fault: str) -> None:
    """A reset that leaves a transaction open (not allowed) or raises: the
    connection is closed and a new one replaces it."""

    async def reset(conn: Conn) -> None:
        if fault == "raises":
            raise RuntimeError("no")
        await conn.execute("SELECT 1")  # leaves a transaction open: not allowed

    pool = await m.pool(min_size=1, max_size=1, reset=m.callback(reset))
    conn = await pool.getconn()
    pid = conn.pid
    await pool.putconn(conn)
    fresh = await pool.getconn(timeout=SOON)
    assert fresh.pid != pid
    assert await wait_until(lambda: conn.closed)
    await pool.putconn(fresh)


@matrix()
async def test_callable_conninfo_and_kwargs_are_read_for_every_connection(m: Matrix) -> None:
    calls = {"conninfo": 0, "kwargs": 0}

    def conninfo() -> str:
        calls["conninfo"] += 1
        return m.dsn

    def kwargs() -> dict[str, Any]:
        calls["kwargs"] += 1
        return {"application_name": f"matrix{calls['kwargs']}"}

    pool = await m.pool(m.value(conninfo), kwargs=m.value(kwargs), min_size=2)
    await pool.wait(SOON)
    assert calls == {"conninfo": 2, "kwargs": 2}
    a, b = await pool.getconn(), await pool.getconn()
    names = {await c.one("SHOW application_name") for c in (a, b)}
    assert names == {"matrix1", "matrix2"}
    await pool.putconn(a)
    await pool.putconn(b)
    await pool.drain()
    assert await wait_until(lambda: calls["conninfo"] == 4 and available(pool) == 2)
    assert calls == {"conninfo": 4, "kwargs": 4}


@matrix(impls=PYPOOL, flavours=("async",))
async def test_pypool_async_pools_take_sync_callables(m: Matrix) -> None:
    """pypool's async pools also take plain functions as ``conninfo``,
    ``kwargs``, ``configure`` and ``reset`` (psycopg_pool's await them)."""
    configured: list[int] = []
    resets: list[int] = []
    pool = await m.pool(
        lambda: m.dsn,
        kwargs=lambda: {"application_name": "matrix_sync"},
        configure=lambda conn: configured.append(conn.info.backend_pid),
        reset=lambda conn: resets.append(conn.info.backend_pid),
        min_size=2,
    )
    await pool.wait(SOON)
    async with pool.connection() as conn:
        assert await conn.one("SHOW application_name") == "matrix_sync"
        assert conn.pid in configured
    assert await wait_until(lambda: len(resets) == 1)
    assert len(configured) == 2


# ================================================================== maintenance


@matrix()
async def test_resize(m: Matrix) -> None:
    pool = await m.pool(min_size=1, max_size=1)
    await pool.wait(SOON)
    await pool.resize(2, 3)
    assert (pool.min_size, pool.max_size) == (2, 3)
    assert await wait_until(lambda: pool.get_stats()["pool_size"] == 2)
    held = [await pool.getconn() for _ in range(3)]
    assert len({c.pid for c in held}) == 3
    for conn in held:
        await pool.putconn(conn)
    await pool.resize(1)
    assert (pool.min_size, pool.max_size) == (1, 1)
    stats = pool.get_stats()
    assert (stats["pool_min"], stats["pool_max"]) == (1, 1)
    with pytest.raises(ValueError):
        await pool.resize(3, 2)


@matrix()
async def test_check_discards_a_killed_idle_connection(m: Matrix) -> None:
    pool = await m.pool(min_size=2)
    await pool.wait(SOON)
    a, b = await pool.getconn(), await pool.getconn()
    pids = {a.pid, b.pid}
    await pool.putconn(a)
    await pool.putconn(b)
    await terminate(m.dsn, a.pid)
    await pool.check()
    assert await wait_until(lambda: available(pool) == 2)
    c, d = await pool.getconn(), await pool.getconn()
    now = {c.pid, d.pid}
    assert now & pids == {b.pid}
    await pool.putconn(c)
    await pool.putconn(d)
    assert pool.get_stats()["connections_lost"] == 1


@matrix()
async def test_drain_replaces_every_connection(m: Matrix) -> None:
    pool = await m.pool(min_size=2)
    await pool.wait(SOON)
    before = [await pool.getconn() for _ in range(2)]
    pids = {c.pid for c in before}
    held = before.pop()
    await pool.putconn(before[0])
    await pool.drain()
    await pool.putconn(held)  # borrowed during the drain: replaced at its return
    assert await wait_until(lambda: available(pool) == 2)
    after = [await pool.getconn() for _ in range(2)]
    assert not pids & {c.pid for c in after}
    for conn in after:
        await pool.putconn(conn)


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


@matrix()
async def test_stats_keys(m: Matrix) -> None:
    pool = await m.pool(min_size=2, max_size=3)
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


@matrix()
async def test_pop_stats_resets_counters(m: Matrix) -> None:
    pool = await m.pool(min_size=1, max_size=1)
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


@matrix()
async def test_stats_count_a_timeout_as_a_failed_request(m: Matrix) -> None:
    pool = await m.pool(min_size=1, max_size=1, timeout=0.1)
    await pool.wait(SOON)
    held = await pool.getconn()
    with pytest.raises(psycopg.OperationalError):
        await pool.getconn()
    await pool.putconn(held)
    stats = pool.get_stats()
    assert stats["requests_errors"] == 1
    assert stats["requests_num"] == 2
    assert stats["requests_queued"] == 1
    assert stats["requests_wait_ms"] >= 50


@matrix()
async def test_stats_count_too_many_requests_as_errors(m: Matrix) -> None:
    pool = await m.pool(min_size=1, max_size=1, max_waiting=1, timeout=SOON)
    held = await pool.getconn()
    waiter = m.spawn(_getconn, pool)
    assert await wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    with pytest.raises(psycopg.OperationalError):
        await pool.getconn()
    await pool.putconn(held)
    await pool.putconn(await asyncio.wait_for(waiter, SOON))
    stats = pool.get_stats()
    assert stats.get("requests_errors", 0) == 1
    assert stats["requests_num"] == 3


# ================================================================== opening


def _open_warning(m: Matrix) -> tuple[type[Warning], str]:
    """What psycopg_pool warns when a pool is opened implicitly."""
    if m.is_async:
        return RuntimeWarning, "await pool.open()"
    return DeprecationWarning, "'open' parameter"


@matrix()
async def test_open_unspecified_opens_and_warns_at_the_first_getconn(m: Matrix) -> None:
    category, says = _open_warning(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pool = m.new(min_size=1, open=None)  # opened, warned at first use
    assert not pool.closed
    with pytest.warns(category, match=re.escape(says)):
        conn = await pool.getconn(timeout=SOON)
    await pool.putconn(conn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        await pool.putconn(await pool.getconn(timeout=SOON))


@matrix()
async def test_open_unspecified_as_a_context_manager_does_not_warn(m: Matrix) -> None:
    pool = None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pool = m.new(min_size=1, open=None)
        async with pool.as_context():
            async with pool.connection(timeout=SOON) as conn:
                assert await conn.one("SELECT 1") == 1
            await pool.putconn(await pool.getconn(timeout=SOON))
    assert pool.closed


@matrix(flavours=("async",))
async def test_async_open_in_the_constructor_warns_there(m: Matrix) -> None:
    with pytest.warns(RuntimeWarning, match=re.escape("await pool.open()")):
        pool = m.new(min_size=1, open=True)
    assert not pool.closed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, in the constructor
        async with pool.connection(timeout=SOON) as conn:
            assert await conn.one("SELECT 1") == 1


@matrix()
async def test_open_false_then_open(m: Matrix) -> None:
    pool = m.new(min_size=2)
    with pytest.raises(m.mod.PoolClosed, match="not open yet"):
        await pool.getconn()
    with pytest.raises(m.mod.PoolClosed, match="not open yet"):
        async with pool.connection():
            pass  # pragma: no cover
    await pool.open()
    assert not pool.closed
    await pool.wait(SOON)
    assert available(pool) == 2
    async with pool.connection() as conn:
        assert await conn.one("SELECT 1") == 1
    await pool.open()  # again: a no-op on an open pool
    assert not pool.closed


@matrix()
async def test_close_before_open_then_open(m: Matrix) -> None:
    pool = m.new(min_size=1)
    await pool.close()
    await pool.open()
    await pool.putconn(await pool.getconn(timeout=SOON))


# ================================================================== deliberate differences
# What docs/psycopg-migration.md says pypool does differently, on pypool's
# pools, sync and async (psycopg_pool's side where it shows the difference).


@matrix(impls=PYPOOL)
async def test_pypool_lifo_true_reuses_the_most_recently_returned_connection(
    m: Matrix,
) -> None:
    pool = await m.pool(min_size=3, lifo=True)
    await pool.wait(SOON)
    pids = []
    for _ in range(4):
        async with pool.connection() as conn:
            pids.append(conn.pid)
    assert len(set(pids)) == 1


@matrix()
async def test_round_robin_by_default_as_psycopg_pool(m: Matrix) -> None:
    pool = await m.pool(min_size=3)
    await pool.wait(SOON)
    pids = []
    for _ in range(6):
        async with pool.connection() as conn:
            pids.append(conn.pid)
    assert len(set(pids)) == 3
    if m.is_pypool:
        assert pids[:3] == pids[3:]


@matrix(impls=PYPOOL)
async def test_pypool_enforces_lifetime_at_hand_out(m: Matrix) -> None:
    pool = await m.pool(min_size=1, max_size=1, max_lifetime=0.5)
    conn = await pool.getconn()
    pid = conn.pid
    await pool.putconn(conn)
    await m.sleep(0.7)
    async with pool.connection(timeout=SOON) as conn:
        assert conn.pid != pid


@matrix(impls=PYPOOL)
async def test_pypool_extra_keywords(m: Matrix) -> None:
    pool = await m.pool(
        min_size=1,
        max_size=1,
        check_after=5.0,
        leak_timeout=30.0,
        keepalive=60.0,
        lifo=False,
        max_uses=2,
    )
    pids = []
    for _ in range(4):
        async with pool.connection(timeout=SOON) as conn:
            pids.append(conn.pid)
    assert pids[0] == pids[1] != pids[2] == pids[3]  # max_uses=2


@matrix(kinds=KINDS)
async def test_unknown_keyword_is_a_type_error(m: Matrix) -> None:
    with pytest.raises(TypeError):
        m.new(no_such_option=1)


@matrix(impls=PYPOOL)
async def test_pypool_resize_shrinks_at_once(m: Matrix) -> None:
    pool = await m.pool(min_size=2, max_size=2)
    await pool.wait(SOON)
    await pool.resize(1)
    assert pool.get_stats()["pool_size"] == 1


def _here(m: Matrix) -> Any:
    """Where a callback runs: its task (async pools) or its thread."""
    return asyncio.current_task() if m.is_async else threading.current_thread()


@matrix(impls=PYPOOL, kinds=NULL)
async def test_pypool_null_pool_connects_on_a_worker(m: Matrix) -> None:
    where: list[Any] = []

    async def configure(conn: Conn) -> None:
        where.append(_here(m))

    pool = await m.pool(configure=m.callback(configure))
    async with pool.connection(timeout=SOON):
        pass
    assert where and where[0] is not _here(m)


@matrix(impls=PYPOOL)
async def test_pypool_usage_ms_counts_getconn_putconn(m: Matrix) -> None:
    pool = await m.pool(min_size=1, max_size=1)
    conn = await pool.getconn(SOON)
    await m.sleep(0.1)
    await pool.putconn(conn)
    assert pool.get_stats()["usage_ms"] >= 90


@matrix(impls=PYPOOL)
async def test_pypool_reset_runs_in_putconn(m: Matrix) -> None:
    """psycopg_pool runs ``reset`` on a worker; pypool in ``putconn`` itself."""
    where: list[Any] = []

    async def reset(conn: Conn) -> None:
        where.append(_here(m))

    pool = await m.pool(min_size=1, max_size=1, reset=m.callback(reset))
    await pool.putconn(await pool.getconn(SOON))
    assert where == [_here(m)]


class _NoConnection(psycopg.Connection):  # type: ignore[type-arg]
    """A connection class whose connect() gives nothing back."""

    @classmethod
    def connect(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return None


class _NoAsyncConnection(psycopg.AsyncConnection):  # type: ignore[type-arg]
    @classmethod
    async def connect(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return None


@matrix(impls=PYPOOL, kinds=KINDS)
async def test_pypool_factory_returning_none_is_a_failed_connect(m: Matrix) -> None:
    """A ``connection_class.connect()`` that returns None fails the connect:
    counted, retried, and the caller's PoolTimeout says what happened."""
    pool = await m.pool(
        connection_class=_NoAsyncConnection if m.is_async else _NoConnection,
        max_size=1,
        timeout=0.5,
        **({} if m.is_null else {"min_size": 0}),
    )
    with pytest.raises(pypool.psycopg.PoolTimeout) as info:
        await pool.getconn()
    cause = info.value.__cause__
    assert isinstance(cause, pypool.ConnectionFailed), repr(cause)
    assert "returned None" in str(cause)
    assert pool.get_stats()["connections_errors"] >= 1
    assert await wait_until(lambda: pool.stats()[pypool.stats.CONNECTING] == 0)
    if m.is_async:
        assert all(not t.done() for t in pool._tasks)  # the workers live on


# ================================================================== check callback
# The check callback's scenarios, sync and async in one place.

from _support.psycopg_matrix import kill_the_idle_connection, maybe  # noqa: E402


async def _check_runs_at_hand_out(m: Matrix, check: Any, checked: list[int]) -> None:
    """The check runs on the connection about to be handed out. It has been
    idle longer than pypool's ``check_after`` (1 s), so both implementations
    run the check (psycopg_pool runs it at every getconn, pypool only then)."""
    pool = await m.pool(min_size=1, max_size=1, check=check)
    await pool.wait(SOON)
    await m.sleep(1.2)
    async with pool.connection(timeout=SOON) as conn:
        assert checked == [conn.pid]


@matrix()
async def test_check_callback_used(m: Matrix) -> None:
    checked: list[int] = []

    async def check(conn: Conn) -> None:
        checked.append(conn.pid)

    await _check_runs_at_hand_out(m, m.callback(check), checked)


@matrix(impls=PYPOOL, flavours=("async",))
async def test_pypool_async_pools_take_a_sync_check(m: Matrix) -> None:
    """psycopg_pool's async pool awaits ``check()``; pypool's also takes a
    plain function."""
    checked: list[int] = []
    await _check_runs_at_hand_out(m, lambda conn: checked.append(conn.info.backend_pid), checked)


@matrix()
async def test_failing_check_on_a_broken_connection_replaces_it(m: Matrix) -> None:
    checked: list[int] = []

    async def check(conn: Conn) -> None:
        checked.append(conn.pid)
        await conn.execute("SELECT 1")
        await conn.rollback()

    pool = await m.pool(min_size=1, max_size=1, check=m.callback(check))
    pid = await kill_the_idle_connection(m, pool)
    async with pool.connection(timeout=SOON) as conn:
        assert conn.pid != pid
        assert await conn.one("SELECT 1") == 1
    assert checked[0] == pid


@matrix()
async def test_check_connection_as_check_callback(m: Matrix) -> None:
    pool = await m.pool(min_size=1, max_size=1, check=m.cls.check_connection)
    pid = await kill_the_idle_connection(m, pool)
    async with pool.connection(timeout=SOON) as conn:
        assert conn.pid != pid
        assert await conn.one("SELECT 1") == 1


@matrix()
async def test_check_connection_static(m: Matrix) -> None:
    check_connection = m.cls.check_connection
    conn = await m.connect()
    try:
        await maybe(check_connection(conn.raw))
        assert not conn.autocommit
        assert conn.info.transaction_status == IDLE
        await terminate(m.dsn, conn.pid)
        with pytest.raises(psycopg.OperationalError):
            await maybe(check_connection(conn.raw))
    finally:
        await conn.close()
