"""The generic DB-API adapter against real drivers and servers.

sqlite3 tests need nothing. The ``db`` tests use PostgreSQL (``dsn`` fixture,
``PYPOOL_TEST_DSN``) through psycopg 3 and psycopg2, and MySQL/MariaDB
(``mysql_params`` below, ``PYPOOL_TEST_MYSQL``, a ``mysql://user:pw@host:port/db``
URL) through PyMySQL. An unreachable server skips them, unless
``PYPOOL_REQUIRE_DB=1``. The last tests put a network that drops packets
(``fault_proxy``) between a pool and its server: a check, pypool's or the
user's, keeps the caller's timeout there (``watch``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from _support import databases
from _support.waiting import wait_until
from pypool import dbapi

# ------------------------------------------------------------------ helpers


def table_name() -> str:
    return f"pypool_dbapi_{uuid.uuid4().hex[:12]}"


class Recorder:
    """Wraps a real driver connect and records the arguments that reach it."""

    def __init__(self, connect: Callable[..., Any]) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

        @functools.wraps(connect)
        def recording_connect(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((args, dict(kwargs)))
            return connect(*args, **kwargs)

        self.connect = recording_connect

    @property
    def kwargs(self) -> dict[str, Any]:
        assert self.calls, "connect was not called"
        return self.calls[-1][1]

    @property
    def args(self) -> tuple[Any, ...]:
        assert self.calls, "connect was not called"
        return self.calls[-1][0]


# ------------------------------------------------------------------ mask_dsn


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgres://u:s%40c:r@h/db?sslmode=require", "postgres://u:***@h/db?sslmode=require"),
        ("mysql+pymysql://root:p@ss@host/db", "mysql+pymysql://root:***@host/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h:5432/db", "postgresql://h:5432/db"),
        ("host=h password=secret dbname=x", "host=h password=*** dbname=x"),
        ("host=h password='se cret \\' x' dbname=x", "host=h password=*** dbname=x"),
        ("host=h PASSWORD = secret", "host=h PASSWORD = ***"),
        ("sslpassword=key1 user=u", "sslpassword=*** user=u"),
        (
            "postgresql://u@h/db?password=pw&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        ("DRIVER=x;PWD=abc;UID=u", "DRIVER=x;PWD=***;UID=u"),
        ("{'user': 'u', 'passwd': b'pw'}", "{'user': 'u', 'passwd': '***'}"),
        (
            'password authentication failed for user "u"',
            'password authentication failed for user "u"',
        ),
    ],
)
def test_mask_dsn(text: str, expected: str) -> None:
    assert dbapi.mask_dsn(text) == expected


def test_mask_dsn_never_leaks_the_password() -> None:
    for password in ("s3cr3t", "a&b=c", "p@ss:w/rd", "x;y"):
        for text in (
            f"postgresql://user:{password}@db.example/app",
            f"host=db password={password} user=u",
            f"host=db password='{password}' user=u",
        ):
            masked = dbapi.mask_dsn(text)
            assert password not in masked, masked
            assert "***" in masked


# ------------------------------------------------------------------ sqlite3


@pytest.fixture
def lite(tmp_path: Any) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(str(tmp_path / "test.db"))
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.commit()
    yield conn
    conn.close()


def test_sqlite3_reset_plan(lite: sqlite3.Connection) -> None:
    plan = dbapi.reset_for(lite)
    assert callable(plan)  # a function, not "rollback"
    assert dbapi.DBAPIAdapter().driver(lite) == "sqlite3"


def test_sqlite3_reset_rolls_back(lite: sqlite3.Connection) -> None:
    reset = dbapi.reset_for(lite)
    assert callable(reset)
    lite.execute("INSERT INTO t VALUES (1)")
    assert lite.in_transaction
    reset(lite)
    assert not lite.in_transaction
    assert lite.execute("SELECT count(*) FROM t").fetchone() == (0,)
    reset(lite)  # idle: nothing to do
    assert not lite.in_transaction


def test_sqlite3_reset_after_failed_statement(lite: sqlite3.Connection) -> None:
    reset = dbapi.reset_for(lite)
    assert callable(reset)
    lite.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.IntegrityError):
        lite.execute("INSERT INTO t VALUES (1)")
    reset(lite)
    assert not lite.in_transaction
    assert lite.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_sqlite3_reset_explicit_begin_in_autocommit_mode(lite: sqlite3.Connection) -> None:
    lite.isolation_level = None  # the legacy autocommit mode
    reset = dbapi.reset_for(lite)
    assert callable(reset)
    lite.execute("BEGIN")
    lite.execute("INSERT INTO t VALUES (1)")
    reset(lite)
    assert not lite.in_transaction
    assert lite.execute("SELECT count(*) FROM t").fetchone() == (0,)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sqlite3 autocommit attribute is 3.12+")
def test_sqlite3_reset_pep249_autocommit_attribute(tmp_path: Any) -> None:
    for mode in (True, False):
        connect: Any = sqlite3.connect  # autocommit= is 3.12+
        conn = connect(str(tmp_path / f"ac{mode}.db"), autocommit=mode)
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER)")
            conn.commit()
            if mode:
                conn.execute("BEGIN")
            conn.execute("INSERT INTO t VALUES (1)")
            reset = dbapi.reset_for(conn)
            assert callable(reset)
            reset(conn)
            # autocommit=False keeps a (new, empty) transaction open by design
            assert conn.in_transaction is (not mode)
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
        finally:
            conn.close()


def test_sqlite3_check(lite: sqlite3.Connection) -> None:
    dbapi.check(lite)
    assert not lite.in_transaction
    assert not dbapi.is_broken(lite)


def test_sqlite3_closed_is_broken(lite: sqlite3.Connection) -> None:
    lite.close()
    with pytest.raises(sqlite3.ProgrammingError):
        dbapi.check(lite)
    assert dbapi.is_broken(lite)
    reset = dbapi.reset_for(lite)
    assert callable(reset)
    with pytest.raises(sqlite3.ProgrammingError):
        reset(lite)
    dbapi.close(lite)  # closing again is harmless


def test_sqlite3_failed_query_is_not_broken(lite: sqlite3.Connection) -> None:
    with pytest.raises(sqlite3.OperationalError) as info:
        lite.execute("SELEC 1")
    assert not dbapi.is_broken(lite, info.value)
    dbapi.check(lite)


def test_sqlite3_connect_factory(tmp_path: Any) -> None:
    rec = Recorder(sqlite3.connect)
    factory = dbapi.connect_factory(rec.connect, str(tmp_path / "f.db"), io_timeout=7.0)
    assert factory.driver == "sqlite3"
    conn = factory()
    try:
        assert rec.kwargs == {"timeout": 7.0, "check_same_thread": False}
        # the pool connects on one thread and hands out on others
        result: list[Any] = []
        worker = threading.Thread(target=lambda: result.append(conn.execute("SELECT 1").fetchone()))
        worker.start()
        worker.join()
        assert result == [(1,)]
    finally:
        conn.close()


def test_sqlite3_connect_factory_explicit_wins(tmp_path: Any) -> None:
    rec = Recorder(sqlite3.connect)
    path = str(tmp_path / "f.db")
    dbapi.connect_factory(rec.connect, path, timeout=1.5, check_same_thread=True)().close()
    assert rec.kwargs == {"timeout": 1.5, "check_same_thread": True}
    dbapi.connect_factory(rec.connect, path, 2.5)().close()  # timeout given positionally
    assert rec.args == (path, 2.5)
    assert rec.kwargs == {"check_same_thread": False}
    dbapi.connect_factory(rec.connect, path, io_timeout=None)().close()
    assert rec.kwargs == {"check_same_thread": False}


# ------------------------------------------------------------------ generic drivers


class OtherConnection:
    """A connection of a driver this module does not know: a thin real
    wrapper around sqlite3 with the DB-API surface only."""

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path)
        self.rollbacks = 0
        self.closed = False

    def cursor(self) -> sqlite3.Cursor:
        return self._conn.cursor()

    def commit(self) -> None:
        self._conn.commit()

    def rollback(self) -> None:
        self.rollbacks += 1
        self._conn.rollback()

    def close(self) -> None:
        self.closed = True
        self._conn.close()


class OperationalError(Exception):
    """Named like every DB-API driver's connection-level error."""


class ProgrammingError(Exception):
    pass


def test_generic_adapter(tmp_path: Any) -> None:
    conn = OtherConnection(str(tmp_path / "g.db"))
    assert dbapi.DBAPIAdapter().driver(conn) is None
    assert dbapi.reset_for(conn) == "rollback"
    dbapi.check(conn)
    assert conn.rollbacks == 1  # not in autocommit: the check ends its transaction
    assert not conn._conn.in_transaction
    assert not dbapi.is_broken(conn)
    assert not dbapi.is_broken(conn, ProgrammingError("syntax"))
    assert dbapi.is_broken(conn, OperationalError("server closed the connection"))
    conn.close()
    assert dbapi.is_broken(conn)


def test_generic_connect_factory_passes_through(tmp_path: Any) -> None:
    def connect(path: str, **kwargs: Any) -> OtherConnection:
        assert kwargs == {"flag": 1}
        return OtherConnection(path)

    factory = dbapi.connect_factory(connect, str(tmp_path / "g.db"), flag=1)
    assert factory.driver is None and factory.kwargs == {"flag": 1}
    factory().close()


def test_asyncio_connection_refused() -> None:
    class AsyncConnection:
        async def rollback(self) -> None:
            pass

    with pytest.raises(TypeError, match="asyncio"):
        dbapi.reset_for(AsyncConnection())


class FailingClose:
    def close(self) -> None:
        raise RuntimeError("cannot close postgresql://app:hunter2@db/app password=hunter2")


def test_close_logs_masked(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pypool"):
        dbapi.close(FailingClose())
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "RuntimeError" in message and "***" in message
    assert "hunter2" not in message


def test_factory_repr_hides_passwords() -> None:
    def connect(*args: Any, **kwargs: Any) -> None:
        pass

    factory = dbapi.connect_factory(
        connect,
        "postgresql://app:hunter2@db/app",
        dsn="host=db password=hunter2",
        password="hunter2",
        passwd=b"hunter2",
        user="app",
    )
    text = repr(factory)
    assert "hunter2" not in text
    assert "user='app'" in text and "password='***'" in text and "app:***@db" in text


def test_bad_timeouts() -> None:
    with pytest.raises(ValueError, match="io_timeout"):
        dbapi.connect_factory(sqlite3.connect, ":memory:", io_timeout=0)
    with pytest.raises(ValueError, match="connect_timeout"):
        dbapi.connect_factory(sqlite3.connect, ":memory:", connect_timeout=-1)


# ------------------------------------------------------------------ PostgreSQL


def _pg_terminate(dsn: str, pid: int) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert wait_until(
            lambda: (
                admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone()
                == (0,)
            ),
            step=0.05,  # a query per poll
        )


@pytest.fixture
def pg_table(dsn: str) -> Iterator[str]:
    import psycopg

    name = table_name()
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
    yield name
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def pg3(dsn: str) -> Iterator[Any]:
    psycopg = pytest.importorskip("psycopg")
    conn = psycopg.connect(dsn)
    yield conn
    conn.close()


@pytest.fixture
def pg2(dsn: str) -> Iterator[Any]:
    psycopg2 = pytest.importorskip("psycopg2")
    conn = psycopg2.connect(dsn)
    yield conn
    conn.close()


def pg3_status(conn: Any) -> str:
    return str(conn.info.transaction_status.name)


@pytest.mark.db
class TestPsycopg:
    def test_connect_factory(self, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
        import psycopg

        monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
        rec = Recorder(psycopg.connect)
        factory = dbapi.connect_factory(rec.connect, dsn, connect_timeout=4.2, io_timeout=12)
        assert factory.driver == "psycopg"
        with factory() as conn:
            expected = {
                "connect_timeout": 5,
                "keepalives": 1,
                "keepalives_idle": 6,
                "keepalives_interval": 2,
                "keepalives_count": 3,
            }
            if psycopg.pq.version() >= 120000:
                expected["tcp_user_timeout"] = 12000
            assert rec.kwargs == expected
            assert rec.args == (dsn,)
            params = {o.keyword: o.val for o in conn.pgconn.info}
            for key, value in expected.items():
                assert params[key.encode()] == str(value).encode()
            assert conn.execute("SELECT 1").fetchone() == (1,)

    def test_connect_factory_explicit_wins(self, dsn: str) -> None:
        import psycopg

        rec = Recorder(psycopg.connect)
        sep = "&" if "?" in dsn else "?"
        factory = dbapi.connect_factory(
            rec.connect, f"{dsn}{sep}connect_timeout=3", keepalives_idle=7, io_timeout=None
        )
        with factory() as conn:
            assert rec.kwargs == {"keepalives_idle": 7}
            params = {o.keyword: o.val for o in conn.pgconn.info}
            assert params[b"connect_timeout"] == b"3"
            assert params[b"keepalives_idle"] == b"7"

    def test_connect_timeout_from_environment_wins(
        self, dsn: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import psycopg

        monkeypatch.setenv("PGCONNECT_TIMEOUT", "4")
        rec = Recorder(psycopg.connect)
        with dbapi.connect_factory(rec.connect, dsn)() as conn:
            assert "connect_timeout" not in rec.kwargs
            params = {o.keyword: o.val for o in conn.pgconn.info}
            assert params[b"connect_timeout"] == b"4"


@pytest.mark.db
class TestPsycopg2:
    def test_connect_factory(self, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
        import psycopg2
        import psycopg2.extensions

        monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
        rec = Recorder(psycopg2.connect)
        factory = dbapi.connect_factory(rec.connect, dsn)
        assert factory.driver == "psycopg2"
        conn = factory()
        try:
            expected = {
                "connect_timeout": 10,
                "keepalives": 1,
                "keepalives_idle": 15,
                "keepalives_interval": 5,
                "keepalives_count": 3,
            }
            if psycopg2.extensions.libpq_version() >= 120000:
                expected["tcp_user_timeout"] = 30000
            assert rec.kwargs == expected
            params = psycopg2.extensions.parse_dsn(conn.dsn)
            for key, value in expected.items():
                assert params[key] == str(value)
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                assert cur.fetchone() == (1,)
            conn.rollback()
        finally:
            conn.close()

    def test_connect_factory_explicit_wins(self, dsn: str) -> None:
        import psycopg2

        rec = Recorder(psycopg2.connect)
        parts = urlsplit(dsn)
        kv = f"host={parts.hostname} port={parts.port or 5432} dbname={parts.path.lstrip('/')}"
        kv += f" user={unquote(parts.username or 'postgres')} connect_timeout=3"
        if parts.password:
            kv += f" password={unquote(parts.password)}"
        conn = dbapi.connect_factory(rec.connect, kv, keepalives_count=9, io_timeout=None)()
        try:
            assert rec.kwargs == {"keepalives_count": 9}
        finally:
            conn.close()


# ------------------------------------------------------------------ MariaDB / MySQL


@pytest.fixture(scope="session")
def mysql_params() -> dict[str, Any]:
    """``pymysql.connect`` arguments for the MySQL/MariaDB test database
    (``PYPOOL_TEST_MYSQL``): the shared helper, once per session."""
    return databases.mysql_params()


@pytest.fixture
def my(mysql_params: dict[str, Any]) -> Iterator[Any]:
    import pymysql

    conn = pymysql.connect(**mysql_params)
    yield conn
    if conn.open:
        conn.close()


@pytest.fixture
def my_admin(mysql_params: dict[str, Any]) -> Iterator[Any]:
    import pymysql

    conn = pymysql.connect(**mysql_params, autocommit=True)
    yield conn
    conn.close()


@pytest.fixture
def my_table(my_admin: Any) -> Iterator[str]:
    name = table_name()
    with my_admin.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (id INT PRIMARY KEY) ENGINE=InnoDB")
    yield name
    with my_admin.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {name}")


def my_query(conn: Any, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()


def in_transaction(conn: Any) -> bool:
    """What the server says (``@@in_transaction``, MariaDB and MySQL 5.7+)."""
    return bool(my_query(conn, "SELECT @@in_transaction")[0])


def rollbacks(conn: Any) -> int:
    return int(my_query(conn, "SHOW SESSION STATUS LIKE 'Com_rollback'")[1])


@pytest.mark.db
class TestPyMySQL:
    def test_reset_ends_read_only_snapshot(self, my: Any, my_admin: Any, my_table: str) -> None:
        """A transaction that only read is not flagged IN_TRANS, yet holds a
        snapshot: the reset must still end it (autocommit off)."""
        reset = dbapi.reset_for(my)
        assert callable(reset)
        assert my_query(my, f"SELECT count(*) FROM {my_table}") == (0,)
        my_query(my_admin, f"INSERT INTO {my_table} VALUES (1)")
        assert my_query(my, f"SELECT count(*) FROM {my_table}") == (0,)  # the snapshot
        reset(my)
        assert my_query(my, f"SELECT count(*) FROM {my_table}") == (1,)
        my.rollback()

    def test_reset_in_autocommit_skips_round_trip(self, my: Any, my_table: str) -> None:
        my.autocommit(True)
        reset = dbapi.reset_for(my)
        assert callable(reset)
        before = rollbacks(my)
        reset(my)
        assert rollbacks(my) == before  # no ROLLBACK sent
        my_query(my, "BEGIN")
        my_query(my, f"INSERT INTO {my_table} VALUES (1)")
        reset(my)
        assert rollbacks(my) == before + 1
        assert not in_transaction(my)
        assert my_query(my, f"SELECT count(*) FROM {my_table}") == (0,)

    def test_close_swallows_errors(self, my: Any, caplog: pytest.LogCaptureFixture) -> None:
        my.close()
        with caplog.at_level(logging.WARNING, logger="pypool"):
            dbapi.close(my)  # PyMySQL raises "Already closed"
        assert any("Already closed" in r.getMessage() for r in caplog.records)

    def test_lost_connection_codes(self, my: Any) -> None:
        import pymysql

        assert dbapi.is_broken(my, pymysql.err.OperationalError(2013, "Lost connection"))
        assert dbapi.is_broken(my, pymysql.err.InterfaceError(0, ""))
        assert not dbapi.is_broken(my, pymysql.err.OperationalError(1205, "Lock wait timeout"))

    def test_connect_factory(self, mysql_params: dict[str, Any]) -> None:
        import pymysql

        rec = Recorder(pymysql.connect)
        factory = dbapi.connect_factory(rec.connect, **mysql_params, io_timeout=20)
        assert factory.driver == "pymysql"
        conn = factory()
        try:
            added = {k: v for k, v in rec.kwargs.items() if k not in mysql_params}
            # the greeting is read under connect_timeout; the connection
            # then reads under io_timeout
            assert added == {"connect_timeout": 10.0, "read_timeout": 10.0, "write_timeout": 20}
            assert conn._read_timeout == 20 and conn._write_timeout == 20
            assert my_query(conn, "SELECT 1") == (1,)
            conn.rollback()
        finally:
            conn.close()

    def test_connect_to_a_server_that_never_greets_ends_at_connect_timeout(self) -> None:
        import pymysql

        # A listening socket nobody accepts from: the kernel completes the
        # handshake and the "server" never sends its greeting.
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(8)
            port = server.getsockname()[1]
            factory = dbapi.connect_factory(
                pymysql.connect, host="127.0.0.1", port=port, user="root", connect_timeout=1
            )
            assert factory.kwargs["read_timeout"] == 1 and factory.read_timeout == 30.0
            start = time.monotonic()
            with pytest.raises(pymysql.err.OperationalError):
                factory()
            took = time.monotonic() - start
        # bounded by connect_timeout (1 s), not by io_timeout (30 s)
        assert took < 10.0, took

    def test_connect_factory_explicit_wins(self, mysql_params: dict[str, Any]) -> None:
        import pymysql

        rec = Recorder(pymysql.connect)
        conn = dbapi.connect_factory(rec.connect, **mysql_params, read_timeout=99)()
        try:
            assert rec.kwargs["read_timeout"] == 99
            assert rec.kwargs["write_timeout"] == 30.0
        finally:
            conn.close()

    def test_factory_repr_hides_password(self, mysql_params: dict[str, Any]) -> None:
        import pymysql

        factory = dbapi.connect_factory(pymysql.connect, **{**mysql_params, "password": "pw-xyz"})
        assert "pw-xyz" not in repr(factory)
        assert "password='***'" in repr(factory)


# ------------------------------------------------- the same on every server driver


class Face:
    """One connection of a server driver (psycopg, psycopg2, PyMySQL) behind
    the few operations the tests below need."""

    def __init__(self, driver: str, request: pytest.FixtureRequest) -> None:
        self.driver = driver
        self.request = request
        self.conn = request.getfixturevalue({"psycopg": "pg3", "psycopg2": "pg2"}.get(driver, "my"))

    @property
    def pg(self) -> bool:
        return self.driver != "pymysql"

    def table(self) -> str:
        """A fresh empty table (made on first use)."""
        return str(self.request.getfixturevalue("pg_table" if self.pg else "my_table"))

    def query(self, sql: str) -> Any:
        """Runs ``sql``; its first row, if it returns rows."""
        if self.driver == "psycopg":
            cur = self.conn.execute(sql)
            return cur.fetchone() if cur.description else None
        if self.driver == "psycopg2":
            with self.conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchone() if cur.description else None
        return my_query(self.conn, sql)

    def status(self) -> str:
        """IDLE, INTRANS or INERROR (the server's word; PyMySQL's server
        knows no INERROR)."""
        if self.driver == "psycopg":
            return pg3_status(self.conn)
        if self.driver == "psycopg2":
            from psycopg2 import extensions as ext

            return {
                ext.TRANSACTION_STATUS_IDLE: "IDLE",
                ext.TRANSACTION_STATUS_INTRANS: "INTRANS",
                ext.TRANSACTION_STATUS_INERROR: "INERROR",
            }.get(self.conn.info.transaction_status, "UNKNOWN")
        return "INTRANS" if in_transaction(self.conn) else "IDLE"

    @property
    def errors(self) -> Any:
        """The driver's module of DB-API exceptions."""
        return __import__(
            {"psycopg": "psycopg", "psycopg2": "psycopg2"}.get(self.driver, "pymysql")
        )

    def failing_statement(self) -> tuple[str, type[BaseException]]:
        """A first statement that fails, and what it raises: on PostgreSQL a
        syntax error; on MySQL a duplicate key (the OK-packet flags never
        report the transaction it opens)."""
        if self.pg:
            return "SELEC 1", self.errors.ProgrammingError
        return f"INSERT INTO {self.table()} VALUES (2), (2)", self.errors.IntegrityError

    def set_autocommit(self, on: bool) -> None:
        if self.driver == "pymysql":
            self.conn.autocommit(on)
        else:
            self.conn.autocommit = on

    def autocommit(self) -> bool:
        if self.driver == "pymysql":
            return bool(self.conn.get_autocommit())
        return bool(self.conn.autocommit)

    def kill(self) -> None:
        """Ends the connection's session from the server's side."""
        if self.driver == "pymysql":
            my_query(self.request.getfixturevalue("my_admin"), f"KILL {self.conn.thread_id()}")
        elif self.driver == "psycopg":
            _pg_terminate(self.request.getfixturevalue("dsn"), self.conn.info.backend_pid)
        else:
            _pg_terminate(self.request.getfixturevalue("dsn"), self.conn.get_backend_pid())


@pytest.fixture(params=["psycopg", "psycopg2", "pymysql"])
def face(request: pytest.FixtureRequest) -> Face:
    return Face(request.param, request)


@pytest.mark.db
def test_reset_plan(face: Face) -> None:
    plan = dbapi.reset_for(face.conn)
    assert callable(plan)  # a function, not "rollback"


@pytest.mark.db
def test_reset_rolls_back(face: Face) -> None:
    table = face.table()
    reset = dbapi.reset_for(face.conn)
    assert callable(reset)
    face.query(f"INSERT INTO {table} VALUES (1)")
    assert face.status() == "INTRANS"
    reset(face.conn)
    assert face.status() == "IDLE"
    assert face.query(f"SELECT count(*) FROM {table}") == (0,)
    face.conn.rollback()


@pytest.mark.db
def test_reset_after_failed_statement(face: Face) -> None:
    reset = dbapi.reset_for(face.conn)
    assert callable(reset)
    sql, error = face.failing_statement()
    with pytest.raises(error) as info:
        face.query(sql)
    if face.pg:
        assert face.status() == "INERROR"
    assert not dbapi.is_broken(face.conn, info.value)
    assert not dbapi.is_broken(face.conn)
    reset(face.conn)
    assert face.status() == "IDLE"
    assert face.query("SELECT 1") == (1,)
    face.conn.rollback()


@pytest.mark.db
def test_reset_explicit_begin_in_autocommit(face: Face) -> None:
    table = face.table()
    face.set_autocommit(True)
    reset = dbapi.reset_for(face.conn)
    assert callable(reset)
    face.query("BEGIN")
    face.query(f"INSERT INTO {table} VALUES (1)")
    reset(face.conn)  # psycopg2's rollback() alone ignores this transaction
    assert face.status() == "IDLE"
    assert face.query(f"SELECT count(*) FROM {table}") == (0,)


@pytest.mark.db
def test_check(face: Face) -> None:
    dbapi.check(face.conn)
    assert face.status() == "IDLE"
    assert not dbapi.is_broken(face.conn)
    assert face.autocommit() is False
    face.set_autocommit(True)
    dbapi.check(face.conn)
    assert face.status() == "IDLE" and face.autocommit() is True


@pytest.mark.db
def test_killed_connection(face: Face) -> None:
    face.kill()
    with pytest.raises(face.errors.OperationalError) as info:
        dbapi.check(face.conn)
    assert dbapi.is_broken(face.conn, info.value)
    assert dbapi.is_broken(face.conn)
    reset = dbapi.reset_for(face.conn)
    assert callable(reset)
    with pytest.raises(dbapi.UnusableConnection):
        reset(face.conn)
    if face.pg:  # PyMySQL has closed its socket by now: a check raises its own "Already closed"
        with pytest.raises(dbapi.UnusableConnection):
            dbapi.check(face.conn)
    dbapi.close(face.conn)
    dbapi.close(face.conn)


@pytest.mark.db
def test_failed_query_is_not_broken(face: Face) -> None:
    with pytest.raises(face.errors.ProgrammingError) as info:
        face.query("SELEC 1")
    assert not dbapi.is_broken(face.conn, info.value)
    face.conn.rollback()
    dbapi.check(face.conn)


# ------------------------------------------------- checks bounded by the socket

#: What a caller may take beyond its timeout (a loaded machine included).
MARGIN = 2.0


def test_watch_without_a_known_socket(lite: sqlite3.Connection, tmp_path: Any) -> None:
    """sqlite3 has no socket, an unknown driver's socket is not known: no
    watch, so the pool bounds a user's check with a thread of its own."""
    assert dbapi.watch(lite, 1.0) is None
    other = OtherConnection(str(tmp_path / "g.db"))
    try:
        assert dbapi.watch(other, 1.0) is None
    finally:
        other.close()


@pytest.mark.db
def test_watched_check_leaves_a_healthy_connection_usable(face: Face) -> None:
    """A watch ended before its deadline never shuts the socket: the
    connection stays usable past the deadline, as after a check with a
    timeout (which watches the same way). A closed connection has no
    watch: whatever is done with it fails at once."""
    stop = dbapi.watch(face.conn, 0.2)
    assert callable(stop)
    assert face.query("SELECT 1") == (1,)
    assert stop() is False
    dbapi.check(face.conn, timeout=0.2)
    time.sleep(0.3)  # past both deadlines
    assert face.query("SELECT 1") == (1,)
    assert not dbapi.is_broken(face.conn)
    face.conn.rollback()
    face.conn.close()
    assert dbapi.watch(face.conn, 1.0) is None


def _select_one(conn: Any) -> None:
    """A user's ``check=``, also used as a query: fails unless it reads 1."""
    with contextlib.closing(conn.cursor()) as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


@pytest.mark.db
@pytest.mark.parametrize("check", ["own", "user"])
@pytest.mark.parametrize("driver", ["psycopg2", "pymysql"])
def test_check_on_a_black_holed_network_keeps_the_timeout(
    driver: str, check: str, fault_proxy: Any, request: pytest.FixtureRequest
) -> None:
    """pypool.Pool over ``connect_factory``: once the network drops every
    packet, pypool's own check (``check=None``) or a user's ``check=`` of
    the idle connection ends at the caller's deadline (its socket shut
    down), not when the driver's I/O bounds run out; the connection is
    counted lost, and the pool connects again once the network is back."""
    import pypool

    if driver == "psycopg2":
        psycopg2 = pytest.importorskip("psycopg2")
        dsn = request.getfixturevalue("dsn")
        proxy = fault_proxy(dsn)
        factory = dbapi.connect_factory(psycopg2.connect, proxy.dsn(dsn), connect_timeout=2)
    else:
        pymysql = pytest.importorskip("pymysql")
        params = request.getfixturevalue("mysql_params")
        proxy = fault_proxy((params["host"], params["port"]))
        params = {**params, "host": proxy.host, "port": proxy.port}
        # read_timeout (30 s) and write_timeout differ: PyMySQL then sets one
        # or the other on the socket before each read and write, so a socket
        # timeout set for the check alone would not hold.
        factory = dbapi.connect_factory(
            pymysql.connect, connect_timeout=2, write_timeout=60, **params
        )
    pool = pypool.Pool(
        factory,
        min_size=1,
        max_size=1,
        check_after=0,
        check=_select_one if check == "user" else None,
    )
    try:
        pool.wait(5)
        with pool.connection() as conn:
            _select_one(conn)
        proxy.blackhole()
        start = time.monotonic()
        with pytest.raises(pypool.PoolTimeout):  # new connects are black-holed too
            pool.acquire(timeout=1.0)
        assert time.monotonic() - start < 1.0 + MARGIN
        assert pool.stats()["pypool.connections.retired"].get("check", 0) == 1
        proxy.passthrough()
        with pool.connection(timeout=15) as conn:
            _select_one(conn)
    finally:
        pool.close(timeout=0.2)
