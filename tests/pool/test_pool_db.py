"""pypool.Pool against real databases, on both cores.

sqlite3 tests need nothing. The ``db`` tests use PostgreSQL through psycopg 3
(``dsn`` fixture, ``PYPOOL_TEST_DSN``) and MariaDB/MySQL through PyMySQL
(``PYPOOL_TEST_MYSQL``, a ``mysql://user:pw@host:port/db`` URL). An
unreachable server skips them, unless ``PYPOOL_REQUIRE_DB=1``.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from _support import databases
from _support.waiting import wait_until
from pypool import stats as names

try:
    from pypool.dbapi import connect_factory as _connect_factory
except ImportError:  # the adapter is optional for these tests
    _connect_factory = None


def factory_for(connect: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], Any]:
    """A zero-argument factory: ``pypool.dbapi.connect_factory`` if there is one."""
    if _connect_factory is not None:
        return _connect_factory(connect, *args, connect_timeout=5, **kwargs)
    if connect is sqlite3.connect:
        kwargs.setdefault("check_same_thread", False)
    return functools.partial(connect, *args, **kwargs)


def retired(pool: Any) -> dict[str, int]:
    """Connections the pool closed, by reason."""
    return dict(pool.stats()[names.RETIRED])


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pools(core_module: ModuleType) -> Iterator[Callable[..., Any]]:
    """``make(factory, **kw)``: a Pool on the core under test, closed at the end."""
    with databases.pools_on(core_module) as make:
        yield make


# ------------------------------------------------------------------- sqlite3


@pytest.mark.timeout(30)
def test_sqlite3_uncommitted_rows_rolled_back(tmp_path: Path, pools: Any) -> None:
    path = tmp_path / "pool.db"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE t (x INTEGER)")
    setup.close()
    pool = pools(factory_for(sqlite3.connect, str(path)), max_size=1)
    with pool.connection() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.in_transaction
    with pool.connection() as again:
        assert again is conn  # max_size=1: the same physical connection
        assert not again.in_transaction
        assert again.execute("SELECT count(*) FROM t").fetchone() == (0,)
    # The write lock is gone too: another connection can write at once.
    other = sqlite3.connect(path, timeout=0.5)
    try:
        other.execute("INSERT INTO t VALUES (2)")
        other.commit()
        assert other.execute("SELECT count(*) FROM t").fetchone() == (1,)
    finally:
        other.close()


@pytest.mark.timeout(30)
def test_sqlite3_failed_check_after_close(tmp_path: Path, pools: Any) -> None:
    """A connection closed behind the pool's back is caught by the reset on
    return and replaced."""
    pool = pools(factory_for(sqlite3.connect, str(tmp_path / "c.db")), max_size=1)
    conn = pool.acquire()
    conn.close()
    pool.release(conn)  # its reset raises: discarded
    assert pool.size == 0
    with pool.connection() as fresh:
        assert fresh is not conn
        assert fresh.execute("SELECT 1").fetchone() == (1,)
    assert retired(pool).get("reset_failed") == 1


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg_admin(dsn: str) -> Iterator[Any]:
    psycopg = pytest.importorskip("psycopg")
    conn = psycopg.connect(dsn, autocommit=True)
    yield conn
    conn.close()


@pytest.fixture
def pg_table(pg_admin: Any) -> Iterator[str]:
    """A new table, dropped at the end (request it before the pool, so that
    the pool is closed first; a lock left behind fails the drop, not hangs it)."""
    name = unique("pypool_pool")
    pg_admin.execute(f"CREATE TABLE {name} (x int)")
    yield name
    pg_admin.execute("SET lock_timeout = '5s'")
    pg_admin.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def pg_pool(dsn: str, pools: Any) -> Callable[..., tuple[Any, str]]:
    """``make(**kw) -> (pool, application_name)``, a pool of psycopg connections."""
    psycopg = pytest.importorskip("psycopg")

    def make(**kw: Any) -> tuple[Any, str]:
        app = unique("pypool_test")
        return pools(factory_for(psycopg.connect, dsn, application_name=app), **kw), app

    return make


def backend_pid(conn: Any) -> int:
    return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])


def pg_backends(admin: Any, app: str) -> set[int]:
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
    ).fetchall()
    return {int(r[0]) for r in rows}


@pytest.mark.db
@pytest.mark.timeout(60)
def test_pg_uncommitted_rows_rolled_back(pg_table: str, pg_pool: Any) -> None:
    from psycopg.errors import DivisionByZero
    from psycopg.pq import TransactionStatus

    pool, _ = pg_pool(max_size=1)
    with pool.connection() as conn:
        conn.execute(f"INSERT INTO {pg_table} VALUES (1), (2)")
        assert conn.info.transaction_status == TransactionStatus.INTRANS
    with pool.connection() as again:
        assert again is conn
        assert again.info.transaction_status == TransactionStatus.IDLE
        assert again.execute(f"SELECT count(*) FROM {pg_table}").fetchone() == (0,)
    # a failed transaction is rolled back too
    with pool.connection() as conn:
        with pytest.raises(DivisionByZero):
            conn.execute("SELECT 1/0")
        assert conn.info.transaction_status == TransactionStatus.INERROR
    with pool.connection() as again:
        assert again is conn
        assert again.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.db
@pytest.mark.timeout(60)
def test_pg_terminated_backend_caught_by_check(pg_pool: Any, pg_admin: Any) -> None:
    pool, app = pg_pool(max_size=1, check_after=0.05)
    with pool.connection() as conn:
        old_pid = backend_pid(conn)
    pg_admin.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
    assert wait_until(lambda: old_pid not in pg_backends(pg_admin, app))
    time.sleep(0.1)
    started = time.monotonic()
    with pool.connection(timeout=5.0) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        new_pid = backend_pid(conn)
    assert time.monotonic() - started < 5.0
    assert new_pid != old_pid
    assert retired(pool).get("check") == 1


@pytest.mark.db
@pytest.mark.timeout(60)
def test_pg_elastic_growth_drain_invalidate(pg_pool: Any, pg_admin: Any) -> None:
    pool, app = pg_pool(max_size=4)
    assert pg_backends(pg_admin, app) == set()
    hold = threading.Event()
    held: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with pool.connection(timeout=10.0) as conn:
                held.append(backend_pid(conn))
                hold.wait(10.0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(held) == 4)
    time.sleep(0.1)
    live = pg_backends(pg_admin, app)
    assert len(held) == 4 and len(live) == 4 and set(held) == live
    assert pool.size == 4 and pool.waiting == 2
    hold.set()
    for t in threads:
        t.join(10.0)
    assert not errors and len(held) == 6 and set(held) == live
    assert pg_backends(pg_admin, app) == live  # never more than max_size

    # drain: every backend is replaced
    pool.drain()
    assert wait_until(lambda: not pg_backends(pg_admin, app) & live)
    conns = [pool.acquire() for _ in range(4)]
    drained = {backend_pid(c) for c in conns}
    assert len(drained) == 4 and not drained & live
    for c in conns:
        pool.release(c)

    # invalidate: nothing closed now, each replaced at its next use
    pool.invalidate()
    assert pg_backends(pg_admin, app) == drained
    conns = [pool.acquire() for _ in range(4)]
    fresh = {backend_pid(c) for c in conns}
    for c in conns:
        pool.release(c)
    assert len(fresh) == 4 and not fresh & drained
    assert wait_until(lambda: pg_backends(pg_admin, app) == fresh)


# --------------------------------------------------------------- MariaDB


@pytest.fixture(scope="session")
def mysql_params() -> dict[str, Any]:
    """``pymysql.connect`` arguments for the MariaDB/MySQL test database
    (``PYPOOL_TEST_MYSQL``): the shared helper, once per session."""
    return databases.mysql_params()


@pytest.fixture
def my_admin(mysql_params: dict[str, Any]) -> Iterator[Any]:
    import pymysql

    conn = pymysql.connect(**mysql_params, autocommit=True)
    my_query(conn, "SET SESSION lock_wait_timeout = 5")
    yield conn
    conn.close()


def my_query(conn: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, args or None)
        return list(cur.fetchall())


def my_pool(pools: Any, mysql_params: dict[str, Any], **kw: Any) -> Any:
    import pymysql

    return pools(factory_for(pymysql.connect, **mysql_params), **kw)


@pytest.mark.db
@pytest.mark.timeout(60)
def test_mysql_uncommitted_rows_rolled_back(
    pools: Any, mysql_params: dict[str, Any], my_admin: Any
) -> None:
    table = unique("pypool_pool")
    my_query(my_admin, f"CREATE TABLE {table} (x INT) ENGINE=InnoDB")
    pool = my_pool(pools, mysql_params, max_size=1)
    try:
        with pool.connection() as conn:
            my_query(conn, f"INSERT INTO {table} VALUES (1), (2)")
            assert conn.server_status & 1  # SERVER_STATUS_IN_TRANS
        with pool.connection() as again:
            assert again is conn
            assert not again.server_status & 1
            assert my_query(again, f"SELECT count(*) FROM {table}") == [(0,)]
        assert my_query(my_admin, f"SELECT count(*) FROM {table}") == [(0,)]
    finally:
        pool.close()  # before the drop: a transaction left open would block it
        my_query(my_admin, f"DROP TABLE IF EXISTS {table}")


@pytest.mark.db
@pytest.mark.timeout(60)
def test_mysql_killed_connection_caught_by_check(
    pools: Any, mysql_params: dict[str, Any], my_admin: Any
) -> None:
    pool = my_pool(pools, mysql_params, max_size=1, check_after=0.05)
    with pool.connection() as conn:
        old_id = my_query(conn, "SELECT CONNECTION_ID()")[0][0]
    my_query(my_admin, f"KILL {int(old_id)}")
    assert wait_until(
        lambda: (
            not my_query(
                my_admin, "SELECT id FROM information_schema.processlist WHERE id = %s", old_id
            )
        )
    )
    time.sleep(0.1)
    with pool.connection(timeout=5.0) as conn:
        assert my_query(conn, "SELECT 1") == [(1,)]
        new_id = my_query(conn, "SELECT CONNECTION_ID()")[0][0]
    assert new_id != old_id
    assert retired(pool).get("check") == 1
