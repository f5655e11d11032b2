"""The documentation's session-hygiene table, checked against the databases.

``docs/reliability.md`` has a table (after the ``<!-- hygiene-table -->``
comment) of what the previous borrower leaves to the next one under each
reset policy: ``kept`` (it reaches the next borrower), ``cleared`` (it does
not) or ``n/a`` (the database has no such thing). This file reads the table
and, for each cell, does the thing as one borrower, returns the connection,
borrows the same physical connection again and looks: the cell must say
what was seen. Each psycopg column is checked on ``pypool.psycopg``'s
``ConnectionPool`` and on a ``pypool.Pool`` over ``dbapi.connect_factory``
with the same reset; the PyMySQL column on a ``pypool.Pool`` (``dbapi``).
Connections are borrowed with ``getconn()``/``acquire()`` and returned
without a commit only for the "open transaction" row; every other row
commits before returning.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from _support.chaos import with_core

pytestmark = pytest.mark.db

DOC = Path(__file__).resolve().parents[3] / "docs" / "reliability.md"
MARK = "<!-- hygiene-table -->"

ITEMS = (
    "role",
    "settings (SET)",
    "temporary tables",
    "advisory locks",
    "LISTEN",
    "prepared statements",
    "WITH HOLD cursors",
    "open transaction",
)
COLUMNS = ("psycopg: default", "psycopg: reset_session", "psycopg: discard_all", "PyMySQL: default")
VALUES = frozenset({"kept", "cleared", "n/a"})


def read_table(text: str) -> dict[tuple[str, str], str]:
    """``{(item, column): value}`` from the markdown table after :data:`MARK`."""
    _, found, rest = text.partition(MARK)
    assert found, f"{DOC.name} has no {MARK} marker"
    rows = []
    for line in rest.strip().splitlines():
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip().strip("|").split("|")])
    header, _rule, *body = rows
    columns = header[1:]
    return {
        (row[0], column): value
        for row in body
        for column, value in zip(columns, row[1:], strict=True)
    }


@pytest.fixture(scope="module")
def table() -> dict[tuple[str, str], str]:
    return read_table(DOC.read_text())


def test_the_table_has_every_item_and_column(table: dict[tuple[str, str], str]) -> None:
    assert {item for item, _ in table} == set(ITEMS)
    assert {column for _, column in table} == set(COLUMNS)
    assert len(table) == len(ITEMS) * len(COLUMNS)
    assert set(table.values()) <= VALUES, set(table.values()) - VALUES


def test_the_parser_reads_a_table() -> None:
    text = f"x\n{MARK}\n\n| item | a | b |\n|---|---|---|\n| role | `kept` | cleared |\n\nafter"
    assert read_table(text) == {("role", "a"): "kept", ("role", "b"): "cleared"}


# ------------------------------------------------------------------ PostgreSQL


@dataclass
class Probe:
    """What a borrower leaves (``dirty``), and whether the next one sees it
    (``seen``), for one item."""

    dirty: Callable[[Any], object]
    seen: Callable[[Any], bool]
    commit: bool = True


def pg_probes(role: str, name: str, key: int) -> dict[str, Probe]:
    def one(conn: Any, sql: str, params: Any = None) -> Any:
        return conn.execute(sql, params).fetchone()[0]

    return {
        "role": Probe(
            lambda c: c.execute(f"SET ROLE {role}"),
            lambda c: one(c, "SELECT current_user") == role,
        ),
        "settings (SET)": Probe(
            lambda c: c.execute("SET statement_timeout = '4321s'"),
            lambda c: one(c, "SHOW statement_timeout") == "4321s",
        ),
        "temporary tables": Probe(
            lambda c: c.execute(f"CREATE TEMP TABLE {name} (id int)"),
            lambda c: bool(
                one(
                    c,
                    "SELECT count(*) FROM pg_class WHERE relname = %s "
                    "AND relnamespace = pg_my_temp_schema()",
                    (name,),
                )
            ),
        ),
        "advisory locks": Probe(
            lambda c: c.execute("SELECT pg_advisory_lock(%s)", (key,)),
            lambda c: bool(
                one(
                    c,
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND pid = pg_backend_pid()",
                )
            ),
        ),
        "LISTEN": Probe(
            lambda c: c.execute(f"LISTEN {name}"),
            lambda c: name in [r[0] for r in c.execute("SELECT pg_listening_channels()")],
        ),
        "prepared statements": Probe(
            lambda c: c.execute(f"PREPARE {name} AS SELECT 1"),
            lambda c: bool(
                one(c, "SELECT count(*) FROM pg_prepared_statements WHERE name = %s", (name,))
            ),
        ),
        "WITH HOLD cursors": Probe(
            lambda c: c.execute(f"DECLARE {name} CURSOR WITH HOLD FOR SELECT 1"),
            lambda c: bool(one(c, "SELECT count(*) FROM pg_cursors WHERE name = %s", (name,))),
        ),
        "open transaction": Probe(
            lambda c: c.execute("SELECT set_config('pypool.hygiene', 'left', true)"),
            lambda c: (
                c.pgconn.transaction_status != psycopg_idle()
                or one(c, "SELECT current_setting('pypool.hygiene', true)") == "left"
            ),
            commit=False,
        ),
    }


def psycopg_idle() -> Any:
    import psycopg

    return psycopg.pq.TransactionStatus.IDLE


@pytest.fixture(scope="module")
def role(dsn: str) -> Iterator[str]:
    pytest.importorskip("psycopg")
    from _support.psycopg_resets import nologin_role

    with nologin_role(dsn, "pypool_table") as name:
        yield name


def pg_policy(column: str) -> Any:
    from pypool.psycopg import discard_all, reset_session

    return {"default": None, "reset_session": reset_session, "discard_all": discard_all}[
        column.split(": ")[1]
    ]


class Borrower:
    """``take()``/``give(conn)`` on one pool of one connection."""

    def __init__(self, pool: Any, take: Callable[[], Any], give: Callable[[Any], None]) -> None:
        self.pool = pool
        self.take = take
        self.give = give


def pg_borrower(kind: str, dsn: str, reset: Any, core: ModuleType) -> Borrower:
    import psycopg

    from pypool import Pool, dbapi
    from pypool.psycopg import ConnectionPool

    if kind == "pypool.psycopg":
        pool = with_core(ConnectionPool, core, dsn, min_size=1, max_size=1, reset=reset, open=True)
        pool.wait(10.0)
        return Borrower(pool, lambda: pool.getconn(10.0), pool.putconn)
    pool = with_core(
        Pool,
        core,
        dbapi.connect_factory(psycopg.connect, dsn),
        min_size=1,
        max_size=1,
        reset=reset,
    )
    pool.wait(10.0)
    return Borrower(pool, lambda: pool.acquire(10.0), pool.release)


def observe(borrower: Borrower, probe: Probe, backend: Callable[[Any], int]) -> str | None:
    """``"kept"`` or ``"cleared"``; None if the next borrower got another
    physical connection (the pool discarded the first: nothing is learnt)."""
    conn = borrower.take()
    pid = backend(conn)
    try:
        probe.dirty(conn)
        if probe.commit:
            conn.commit()
        assert probe.seen(conn), "the probe does not see what it just did"
    finally:
        borrower.give(conn)
    conn = borrower.take()
    try:
        if backend(conn) != pid:
            return None
        return "kept" if probe.seen(conn) else "cleared"
    finally:
        conn.rollback()
        borrower.give(conn)


@pytest.mark.parametrize("kind", ["pypool.psycopg", "pypool.Pool"])
@pytest.mark.parametrize("column", [c for c in COLUMNS if c.startswith("psycopg")])
@pytest.mark.parametrize("item", ITEMS)
def test_psycopg_cell(
    table: dict[tuple[str, str], str],
    core_module: ModuleType,
    dsn: str,
    role: str,
    kind: str,
    column: str,
    item: str,
) -> None:
    name = f"hyg_{uuid.uuid4().hex[:12]}"
    probe = pg_probes(role, name, uuid.uuid4().int % 2**62)[item]
    borrower = pg_borrower(kind, dsn, pg_policy(column), core_module)
    try:
        seen = observe(borrower, probe, lambda c: int(c.info.backend_pid))
    finally:
        borrower.pool.close()
    assert seen is not None, "the pool discarded the connection: nothing reached the next borrower"
    assert table[item, column] == seen, f"{item} under {column} on {kind}: {seen}"


# ------------------------------------------------------------------ MariaDB


@pytest.fixture(scope="module")
def mysql_role() -> Iterator[tuple[dict[str, Any], str]]:
    from _support.databases import mysql_params

    pymysql = pytest.importorskip("pymysql")
    params = mysql_params()
    name = f"pypool_table_{uuid.uuid4().hex[:10]}"
    with pymysql.connect(**params, autocommit=True) as admin, admin.cursor() as cur:
        try:
            cur.execute(f"CREATE ROLE {name}")
            cur.execute(f"GRANT {name} TO CURRENT_USER")
        except pymysql.err.MySQLError as exc:
            pytest.skip(f"cannot make a role: {exc.args[0]}")
    yield params, name
    with pymysql.connect(**params, autocommit=True) as admin, admin.cursor() as cur:
        cur.execute(f"DROP ROLE IF EXISTS {name}")


def mysql_probes(name: str, table: str) -> dict[str, Probe | None]:
    import pymysql

    def one(conn: Any, sql: str, params: Any = None) -> Any:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()[0]

    def works(conn: Any, sql: str) -> bool:
        try:
            one(conn, sql)
        except pymysql.err.MySQLError:
            return False
        return True

    return {
        "role": Probe(
            lambda c: c.query(f"SET ROLE {name}"),
            lambda c: one(c, "SELECT CURRENT_ROLE()") == name,
        ),
        "settings (SET)": Probe(
            lambda c: c.query("SET SESSION wait_timeout = 4321"),
            lambda c: int(one(c, "SELECT @@SESSION.wait_timeout")) == 4321,
        ),
        "temporary tables": Probe(
            lambda c: c.query(f"CREATE TEMPORARY TABLE {name} (id int)"),
            lambda c: works(c, f"SELECT COUNT(*) FROM {name}"),
        ),
        "advisory locks": Probe(
            lambda c: one(c, f"SELECT GET_LOCK('{name}', 0)"),
            lambda c: one(c, f"SELECT IS_USED_LOCK('{name}')") == one(c, "SELECT CONNECTION_ID()"),
        ),
        "LISTEN": None,
        "prepared statements": Probe(
            lambda c: c.query(f"PREPARE {name} FROM 'SELECT 1'"),
            lambda c: works(c, f"EXECUTE {name}"),
        ),
        "WITH HOLD cursors": None,
        "open transaction": Probe(
            lambda c: c.query(f"INSERT INTO {table} VALUES (1)"),
            lambda c: int(one(c, f"SELECT COUNT(*) FROM {table}")) > 0,
            commit=False,
        ),
    }


@pytest.fixture
def mysql_table(mysql_role: tuple[dict[str, Any], str]) -> Iterator[str]:
    import pymysql

    params, _ = mysql_role
    name = f"hyg_{uuid.uuid4().hex[:12]}"
    with pymysql.connect(**params, autocommit=True) as admin, admin.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (id int) ENGINE=InnoDB")
    yield name
    with pymysql.connect(**params, autocommit=True) as admin, admin.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.mark.parametrize("item", ITEMS)
def test_pymysql_cell(
    table: dict[tuple[str, str], str],
    core_module: ModuleType,
    mysql_role: tuple[dict[str, Any], str],
    mysql_table: str,
    item: str,
) -> None:
    import pymysql

    from pypool import Pool, dbapi

    params, role_name = mysql_role
    column = "PyMySQL: default"
    probes = mysql_probes(role_name, mysql_table)
    probe = probes[item]
    if probe is None:
        assert table[item, column] == "n/a"
        return
    if item != "role":
        probe = mysql_probes(f"hyg_{uuid.uuid4().hex[:12]}", mysql_table)[item]
        assert probe is not None
    pool = with_core(
        Pool, core_module, dbapi.connect_factory(pymysql.connect, **params), min_size=1, max_size=1
    )
    pool.wait(10.0)
    try:
        seen = observe(
            Borrower(pool, lambda: pool.acquire(10.0), pool.release),
            probe,
            lambda c: int(c.thread_id()),
        )
    finally:
        pool.close()
    assert seen is not None, "the pool discarded the connection: nothing reached the next borrower"
    assert table[item, column] == seen, f"{item} under {column}: {seen}"
