"""pypool.Pool against real databases, on both cores: uncommitted rows
rolled back on return, a session killed by the server caught by the check,
a connection closed behind the pool's back caught by the reset, and elastic
growth, drain and invalidate on PostgreSQL.

The behaviours every driver shares run once per driver (the ``driver``
fixture, parametrised indirectly). sqlite3 needs nothing. The ``db`` params
and tests use PostgreSQL through psycopg 3 (``dsn`` fixture,
``PYPOOL_TEST_DSN``) and MariaDB/MySQL through PyMySQL (``PYPOOL_TEST_MYSQL``,
a ``mysql://user:pw@host:port/db`` URL). An unreachable server skips them,
unless ``PYPOOL_REQUIRE_DB=1``.
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
from _support.pools import retired
from _support.waiting import wait_until

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


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pools(core_module: ModuleType) -> Iterator[Callable[..., Any]]:
    """``make(factory, **kw)``: a Pool on the core under test, closed at the end."""
    with databases.pools_on(core_module) as make:
        yield make


# ------------------------------------------------------------------- drivers


class Driver:
    """One driver's database, as the shared tests see it: ``pool(**kw)``
    makes a pool of its connections (closed at the end), ``admin`` is a
    connection of its own in autocommit, ``rows(conn, sql)`` runs a query."""

    name = ""

    def __init__(self, pools: Any) -> None:
        self.pools = pools
        self.admin: Any = None

    def pool(self, **kw: Any) -> Any:
        raise NotImplementedError

    def rows(self, conn: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def in_transaction(self, conn: Any) -> bool:
        raise NotImplementedError

    def create_table(self, name: str) -> None:
        self.rows(self.admin, f"CREATE TABLE {name} (x INT)")

    def drop_table(self, name: str) -> None:
        self.rows(self.admin, f"DROP TABLE IF EXISTS {name}")

    def session_id(self, conn: Any) -> int:
        raise NotImplementedError

    def kill(self, session: int) -> None:
        raise NotImplementedError

    def alive(self, session: int) -> bool:
        raise NotImplementedError


class Sqlite3(Driver):
    name = "sqlite3"

    def __init__(self, pools: Any, path: Path) -> None:
        super().__init__(pools)
        self.path = path
        # autocommit, and a write waits 0.5 s at most for a lock
        self.admin = sqlite3.connect(path, timeout=0.5, isolation_level=None)

    def pool(self, **kw: Any) -> Any:
        return self.pools(factory_for(sqlite3.connect, str(self.path)), **kw)

    def rows(self, conn: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return list(conn.execute(sql, args).fetchall())

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.in_transaction)


class Postgres(Driver):
    name = "postgresql"

    def __init__(self, pools: Any, dsn: str) -> None:
        super().__init__(pools)
        self.psycopg = pytest.importorskip("psycopg")
        self.dsn = dsn
        self.app = unique("pypool_test")
        self.admin = self.psycopg.connect(dsn, autocommit=True)
        self.admin.execute("SET lock_timeout = '5s'")  # a lock left behind fails, not hangs

    def pool(self, **kw: Any) -> Any:
        return self.pools(
            factory_for(self.psycopg.connect, self.dsn, application_name=self.app), **kw
        )

    def rows(self, conn: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        cur = conn.execute(sql, args or None)
        return list(cur.fetchall()) if cur.description is not None else []

    def in_transaction(self, conn: Any) -> bool:
        from psycopg.pq import TransactionStatus

        status = conn.info.transaction_status
        assert status in (TransactionStatus.INTRANS, TransactionStatus.IDLE), status
        return bool(status == TransactionStatus.INTRANS)

    def session_id(self, conn: Any) -> int:
        return backend_pid(conn)

    def kill(self, session: int) -> None:
        self.admin.execute("SELECT pg_terminate_backend(%s)", (session,))

    def alive(self, session: int) -> bool:
        return session in pg_backends(self.admin, self.app)


class MySQL(Driver):
    name = "mysql"

    def __init__(self, pools: Any, params: dict[str, Any]) -> None:
        import pymysql

        super().__init__(pools)
        self.params = params
        self.admin = pymysql.connect(**params, autocommit=True)
        self.rows(self.admin, "SET SESSION lock_wait_timeout = 5")

    def pool(self, **kw: Any) -> Any:
        import pymysql

        return self.pools(factory_for(pymysql.connect, **self.params), **kw)

    def rows(self, conn: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return my_query(conn, sql, *args)

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.server_status & 1)  # SERVER_STATUS_IN_TRANS

    def create_table(self, name: str) -> None:
        self.rows(self.admin, f"CREATE TABLE {name} (x INT) ENGINE=InnoDB")

    def session_id(self, conn: Any) -> int:
        return int(self.rows(conn, "SELECT CONNECTION_ID()")[0][0])

    def kill(self, session: int) -> None:
        self.rows(self.admin, f"KILL {int(session)}")

    def alive(self, session: int) -> bool:
        return bool(
            self.rows(
                self.admin, "SELECT id FROM information_schema.processlist WHERE id = %s", session
            )
        )


SQLITE3 = pytest.param("sqlite3", id="sqlite3")
POSTGRESQL = pytest.param("postgresql", id="postgresql", marks=pytest.mark.db)
MYSQL = pytest.param("mysql", id="mysql", marks=pytest.mark.db)


@pytest.fixture
def driver(request: pytest.FixtureRequest, pools: Any, tmp_path: Path) -> Iterator[Driver]:
    """The driver named by the param; its database's fixtures are asked for
    only then (``dsn`` skips when PostgreSQL cannot be reached)."""
    made: Driver
    if request.param == "sqlite3":
        made = Sqlite3(pools, tmp_path / "pool.db")
    elif request.param == "postgresql":
        made = Postgres(pools, request.getfixturevalue("dsn"))
    else:
        made = MySQL(pools, request.getfixturevalue("mysql_params"))
    yield made
    made.admin.close()


def my_query(conn: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, args or None)
        return list(cur.fetchall())


def backend_pid(conn: Any) -> int:
    return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])


def pg_backends(admin: Any, app: str) -> set[int]:
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
    ).fetchall()
    return {int(r[0]) for r in rows}


@pytest.fixture(scope="session")
def mysql_params() -> dict[str, Any]:
    """``pymysql.connect`` arguments for the MariaDB/MySQL test database
    (``PYPOOL_TEST_MYSQL``): the shared helper, once per session."""
    return databases.mysql_params()


# ------------------------------------------------------------- every driver


@pytest.mark.timeout(60)
@pytest.mark.parametrize("driver", [SQLITE3, POSTGRESQL, MYSQL], indirect=True)
def test_uncommitted_rows_rolled_back(driver: Driver) -> None:
    table = unique("pypool_pool")
    driver.create_table(table)
    pool = driver.pool(max_size=1)
    try:
        with pool.connection() as conn:
            driver.rows(conn, f"INSERT INTO {table} VALUES (1), (2)")
            assert driver.in_transaction(conn)
        with pool.connection() as again:
            assert again is conn  # max_size=1: the same physical connection
            assert not driver.in_transaction(again)
            assert driver.rows(again, f"SELECT count(*) FROM {table}") == [(0,)]
        assert driver.rows(driver.admin, f"SELECT count(*) FROM {table}") == [(0,)]
        # The write lock is gone too: another connection can write at once.
        driver.rows(driver.admin, f"INSERT INTO {table} VALUES (3)")
        assert driver.rows(driver.admin, f"SELECT count(*) FROM {table}") == [(1,)]
        if driver.name == "postgresql":
            # A failed transaction is rolled back too (PostgreSQL alone keeps
            # a transaction in error until it is rolled back).
            from psycopg.errors import DivisionByZero
            from psycopg.pq import TransactionStatus

            with pool.connection() as conn:
                with pytest.raises(DivisionByZero):
                    conn.execute("SELECT 1/0")
                assert conn.info.transaction_status == TransactionStatus.INERROR
            with pool.connection() as again:
                assert again is conn
                assert again.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()  # before the drop: a transaction left open would block it
        driver.drop_table(table)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("driver", [POSTGRESQL, MYSQL], indirect=True)
def test_session_killed_by_the_server_caught_by_check(driver: Driver) -> None:
    pool = driver.pool(max_size=1, check_after=0.05)
    with pool.connection() as conn:
        old = driver.session_id(conn)
    driver.kill(old)
    assert wait_until(lambda: not driver.alive(old))
    time.sleep(0.1)
    started = time.monotonic()
    with pool.connection(timeout=5.0) as conn:
        assert driver.rows(conn, "SELECT 1") == [(1,)]
        new = driver.session_id(conn)
    assert time.monotonic() - started < 5.0
    assert new != old
    assert retired(pool).get("check") == 1


# ------------------------------------------------------------------- sqlite3


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
def pg_pool(dsn: str, pools: Any) -> Callable[..., tuple[Any, str]]:
    """``make(**kw) -> (pool, application_name)``, a pool of psycopg connections."""
    psycopg = pytest.importorskip("psycopg")

    def make(**kw: Any) -> tuple[Any, str]:
        app = unique("pypool_test")
        return pools(factory_for(psycopg.connect, dsn, application_name=app), **kw), app

    return make


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
