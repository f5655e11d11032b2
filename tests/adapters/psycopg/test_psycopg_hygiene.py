"""Session state between borrowers of ``pypool.psycopg`` pools, on both cores.

Every pool here has ``max_size=1``, so the next borrower gets the same
physical connection (each test asserts the backend pid is equal) and sees
whatever the previous one left behind, unless the reset cleared it.

- ``reset=discard_all`` (``DISCARD ALL``) clears everything: role and session
  authorization, settings, temporary tables, prepared statements (psycopg
  forgets its own automatically prepared ones and prepares them again),
  ``LISTEN`` registrations, session advisory locks.
- ``reset=reset_session`` clears the same but keeps temporary tables.
- The default reset (no policy) only ends the transaction: an open or
  aborted transaction is rolled back; all session state survives
  (:data:`SURVIVES_DEFAULT_RESET`).

Needs PostgreSQL (``dsn`` fixture) and a user that may create roles and
``SET SESSION AUTHORIZATION`` (a superuser) for the role tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from _support.psycopg_resets import (  # noqa: E402
    AUTO_QUERY,
    POLICIES,
    PREPARE_THRESHOLD,
    lock_key,
)
from pypool.psycopg import ConnectionPool, discard_all, reset_session  # noqa: E402

pytestmark = pytest.mark.db

IDLE = psycopg.pq.TransactionStatus.IDLE

# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def role(dsn: str) -> Iterator[str]:
    """A role without login for ``SET ROLE`` / ``SET SESSION AUTHORIZATION``."""
    name = f"pypool_hygiene_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        if admin.execute("SELECT current_setting('is_superuser')").fetchone() != ("on",):
            pytest.skip("the test user is not a superuser: cannot switch roles")
        admin.execute(f"CREATE ROLE {name} NOLOGIN")
    yield name
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"DROP ROLE IF EXISTS {name}")


@pytest.fixture
def table(dsn: str) -> Iterator[str]:
    name = f"hygiene_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int)")
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def make_psycopg_pool(core_module: ModuleType, dsn: str) -> Iterator[Callable[..., Any]]:
    """``make_psycopg_pool(reset)``: one connection, the given reset policy."""
    pools: list[Any] = []

    def make(reset: Any = None, **kwargs: Any) -> Any:
        pool = ConnectionPool.with_core(core_module)(
            dsn, min_size=1, max_size=1, reset=reset, open=True, **kwargs
        )
        pools.append(pool)
        pool.wait(10.0)
        return pool

    yield make
    for pool in pools:
        pool.close()


def borrow_twice(pool: Any, dirty: Callable[[Any], object], inspect: Callable[[Any], Any]) -> Any:
    """``dirty(conn)`` as the first borrower (committed on exit), then
    ``inspect(conn)`` as the next one, on the same physical connection."""
    with pool.connection() as conn:
        pid = conn.info.backend_pid
        dirty(conn)
    with pool.connection() as conn:
        assert conn.info.backend_pid == pid, "max_size=1 must give the same connection"
        assert conn.info.transaction_status == IDLE
        return inspect(conn)


def one(conn: Any, sql: str, params: Any = None) -> Any:
    return conn.execute(sql, params).fetchone()[0]


def fresh_value(dsn: str, sql: str) -> Any:
    with psycopg.connect(dsn) as conn:
        return one(conn, sql)


# ------------------------------------------------------------------ inspections


def users(conn: Any) -> tuple[str, str]:
    return tuple(conn.execute("SELECT current_user, session_user").fetchone())  # type: ignore[return-value]


def temp_table_exists(conn: Any, name: str) -> bool:
    # pg_class, not the table itself: the role in effect may not read it.
    return bool(
        one(
            conn,
            "SELECT count(*) FROM pg_class WHERE relname = %s "
            "AND relnamespace = pg_my_temp_schema()",
            (name,),
        )
    )


def listening(conn: Any) -> list[str]:
    return [r[0] for r in conn.execute("SELECT pg_listening_channels()")]


def prepared(conn: Any) -> list[str]:
    return sorted(r[0] for r in conn.execute("SELECT name FROM pg_prepared_statements"))


def advisory_locks_held(conn: Any) -> int:
    return int(
        one(
            conn,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        )
    )


def lock_is_free(dsn: str, key: int) -> bool:
    """Whether another session can take advisory lock ``key`` (released at once)."""
    with psycopg.connect(dsn, autocommit=True) as other:
        if one(other, "SELECT pg_try_advisory_lock(%s)", (key,)):
            other.execute("SELECT pg_advisory_unlock(%s)", (key,))
            return True
        return False


def run_auto_query(conn: Any) -> None:
    """The same parametrized query, past the prepare threshold: psycopg
    prepares it (a ``_pg3_*`` statement) and uses the prepared statement."""
    assert conn.prepare_threshold == PREPARE_THRESHOLD
    for i in range(PREPARE_THRESHOLD + 3):
        assert one(conn, AUTO_QUERY, (i,)) == i + 1


def auto_prepared(conn: Any) -> list[str]:
    return [name for name in prepared(conn) if name.startswith("_pg3_")]


# ================================================================== policies


@pytest.mark.parametrize("policy", POLICIES)
def test_set_role_is_reset(make_psycopg_pool: Callable[..., Any], role: str, policy: Any) -> None:
    pool = make_psycopg_pool(policy)
    with pool.connection() as conn:
        original = users(conn)
    seen = borrow_twice(pool, lambda c: c.execute(f"SET ROLE {role}"), users)
    assert seen == original


@pytest.mark.parametrize("policy", POLICIES)
def test_session_authorization_is_reset(
    make_psycopg_pool: Callable[..., Any], role: str, policy: Any
) -> None:
    pool = make_psycopg_pool(policy)
    with pool.connection() as conn:
        original = users(conn)

    def dirty(conn: Any) -> None:
        conn.execute(f"SET SESSION AUTHORIZATION {role}")
        assert users(conn) == (role, role)

    assert borrow_twice(pool, dirty, users) == original


@pytest.mark.parametrize("policy", POLICIES)
def test_settings_are_reset(make_psycopg_pool: Callable[..., Any], dsn: str, policy: Any) -> None:
    pool = make_psycopg_pool(policy)
    expected = (fresh_value(dsn, "SHOW search_path"), fresh_value(dsn, "SHOW statement_timeout"))

    def dirty(conn: Any) -> None:
        conn.execute("SET search_path TO pg_catalog")
        conn.execute("SET statement_timeout = 1234")

    def inspect(conn: Any) -> tuple[str, str]:
        return (one(conn, "SHOW search_path"), one(conn, "SHOW statement_timeout"))

    assert borrow_twice(pool, dirty, inspect) == expected


@pytest.mark.parametrize(
    ("policy", "kept"),
    [
        pytest.param(discard_all, False, id="discard_all-drops"),
        pytest.param(reset_session, True, id="reset_session-keeps"),
    ],
)
def test_temporary_table(make_psycopg_pool: Callable[..., Any], policy: Any, kept: bool) -> None:
    """``discard_all`` drops temporary tables; ``reset_session`` keeps them
    (with their rows): a temporary table lives as long as the session."""
    pool = make_psycopg_pool(policy)
    name = f"tmp_{uuid.uuid4().hex[:10]}"

    def dirty(conn: Any) -> None:
        conn.execute(f"CREATE TEMPORARY TABLE {name} (id int)")
        conn.execute(f"INSERT INTO {name} VALUES (1)")

    def inspect(conn: Any) -> tuple[bool, Any]:
        exists = temp_table_exists(conn, name)
        count = one(conn, f"SELECT count(*) FROM {name}") if exists else None
        return exists, count

    assert borrow_twice(pool, dirty, inspect) == ((True, 1) if kept else (False, None))


@pytest.mark.parametrize("policy", POLICIES)
def test_advisory_lock_is_released(
    make_psycopg_pool: Callable[..., Any], dsn: str, policy: Any
) -> None:
    pool = make_psycopg_pool(policy)
    key = lock_key()

    def dirty(conn: Any) -> None:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        assert not lock_is_free(dsn, key)

    def inspect(conn: Any) -> int:
        return advisory_locks_held(conn)

    assert borrow_twice(pool, dirty, inspect) == 0
    assert lock_is_free(dsn, key)


@pytest.mark.parametrize("policy", POLICIES)
def test_advisory_lock_is_free_as_soon_as_returned(
    make_psycopg_pool: Callable[..., Any], dsn: str, policy: Any
) -> None:
    pool = make_psycopg_pool(policy)
    key = lock_key()
    with pool.connection() as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
    assert lock_is_free(dsn, key)  # nobody borrowed the connection since


@pytest.mark.parametrize("policy", POLICIES)
def test_listen_is_cleared(make_psycopg_pool: Callable[..., Any], policy: Any) -> None:
    pool = make_psycopg_pool(policy)
    assert borrow_twice(pool, lambda c: c.execute("LISTEN hygiene_channel"), listening) == []


@pytest.mark.parametrize("policy", POLICIES)
def test_prepared_statements_are_deallocated(
    make_psycopg_pool: Callable[..., Any], policy: Any
) -> None:
    pool = make_psycopg_pool(policy)

    def dirty(conn: Any) -> None:
        conn.execute("PREPARE hygiene_stmt AS SELECT 1")
        run_auto_query(conn)
        assert "hygiene_stmt" in prepared(conn)
        assert auto_prepared(conn)

    def inspect(conn: Any) -> tuple[list[str], list[str]]:
        before = prepared(conn)
        # psycopg forgot its statements with the server's: it counts the
        # query again, prepares it again, and it keeps working.
        run_auto_query(conn)
        return before, auto_prepared(conn)

    before, again = borrow_twice(pool, dirty, inspect)
    assert before == []
    assert len(again) == 1


@pytest.mark.parametrize(
    ("policy", "runs"),
    [
        pytest.param(discard_all, 0, id="discard_all-no_query"),
        pytest.param(discard_all, 1, id="discard_all-once"),
        pytest.param(discard_all, PREPARE_THRESHOLD + 3, id="discard_all-past_threshold"),
        pytest.param(reset_session, 0, id="reset_session-no_query"),
        pytest.param(reset_session, 1, id="reset_session-once"),
        pytest.param(reset_session, PREPARE_THRESHOLD + 3, id="reset_session-past_threshold"),
    ],
)
@pytest.mark.parametrize("autocommit", [False, True], ids=["transactions", "autocommit"])
def test_many_resets_keep_the_connection_and_prepared_statements(
    make_psycopg_pool: Callable[..., Any], policy: Any, runs: int, autocommit: bool
) -> None:
    """Many borrowers in a row, each running the same parametrized query
    ``runs`` times (once: psycopg prepares it across borrowers): every reset
    succeeds (the connection is kept) and psycopg forgets its statements at
    every reset, not only at the first."""
    pool = make_psycopg_pool(policy, kwargs={"autocommit": autocommit})
    pids = set()
    for n in range(3 * PREPARE_THRESHOLD):
        with pool.connection() as conn:
            pids.add(conn.info.backend_pid)
            for i in range(runs):
                assert one(conn, AUTO_QUERY, (n + i,)) == n + i + 1
    assert len(pids) == 1
    assert pool.get_stats().get("returns_bad", 0) == 0


@pytest.mark.parametrize("policy", POLICIES)
def test_open_transaction_is_rolled_back(
    make_psycopg_pool: Callable[..., Any], dsn: str, table: str, policy: Any
) -> None:
    pool = make_psycopg_pool(policy)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    conn.execute(f"INSERT INTO {table} VALUES (1)")
    conn.execute("SET search_path TO pg_catalog")
    pool.putconn(conn)
    with pool.connection() as conn:
        assert conn.info.backend_pid == pid
        assert conn.info.transaction_status == IDLE
        assert not conn.autocommit  # restored after the reset ran in autocommit
        assert one(conn, f"SELECT count(*) FROM public.{table}") == 0
        assert one(conn, "SHOW search_path") == fresh_value(dsn, "SHOW search_path")


@pytest.mark.parametrize("policy", POLICIES)
def test_aborted_transaction_is_rolled_back(
    make_psycopg_pool: Callable[..., Any], role: str, policy: Any
) -> None:
    pool = make_psycopg_pool(policy)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    original = users(conn)
    conn.commit()
    conn.execute(f"SET ROLE {role}")
    conn.commit()  # committed session state, then a failed transaction
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute("SELECT 1 / 0")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    pool.putconn(conn)
    with pool.connection() as conn:
        assert conn.info.backend_pid == pid
        assert conn.info.transaction_status == IDLE
        assert users(conn) == original


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_on_an_autocommit_connection(
    make_psycopg_pool: Callable[..., Any], policy: Any
) -> None:
    pool = make_psycopg_pool(policy, kwargs={"autocommit": True})

    def dirty(conn: Any) -> None:
        conn.execute("SET statement_timeout = 1234")
        conn.execute("LISTEN hygiene_channel")

    def inspect(conn: Any) -> tuple[bool, str, list[str]]:
        return conn.autocommit, one(conn, "SHOW statement_timeout"), listening(conn)

    assert borrow_twice(pool, dirty, inspect) == (True, "0", [])


def test_reset_session_keeps_temporary_tables_but_clears_the_rest(
    make_psycopg_pool: Callable[..., Any], role: str, dsn: str
) -> None:
    """Everything at once, with ``reset_session``: only the temporary table
    is left."""
    pool = make_psycopg_pool(reset_session)
    key = lock_key()
    name = f"tmp_{uuid.uuid4().hex[:10]}"
    with pool.connection() as conn:
        original = users(conn)
    seen = borrow_twice(pool, dirty_everything(role, key, name), inspect_everything(name))
    assert seen == {
        "users": original,
        "search_path": fresh_value(dsn, "SHOW search_path"),
        "statement_timeout": "0",
        "temp_table": True,
        "advisory_locks": 0,
        "listening": [],
        "prepared": [],
    }
    assert lock_is_free(dsn, key)


# ================================================================== default reset


def dirty_everything(role: str, key: int, name: str) -> Callable[[Any], None]:
    def dirty(conn: Any) -> None:
        conn.execute("SET search_path TO pg_catalog, public")
        conn.execute("SET statement_timeout = 1234")
        conn.execute(f"CREATE TEMPORARY TABLE {name} (id int)")
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        conn.execute("LISTEN hygiene_channel")
        conn.execute("PREPARE hygiene_stmt AS SELECT 1")
        run_auto_query(conn)
        conn.execute(f"SET ROLE {role}")  # last: the rest needs the original role

    return dirty


def inspect_everything(name: str) -> Callable[[Any], dict[str, Any]]:
    def inspect(conn: Any) -> dict[str, Any]:
        return {
            "users": users(conn),
            "search_path": one(conn, "SHOW search_path"),
            "statement_timeout": one(conn, "SHOW statement_timeout"),
            "temp_table": temp_table_exists(conn, name),
            "advisory_locks": advisory_locks_held(conn),
            "listening": listening(conn),
            "prepared": prepared(conn),
        }

    return inspect


def test_default_reset_keeps_session_state(
    make_psycopg_pool: Callable[..., Any], role: str, dsn: str
) -> None:
    """Without a reset policy the pool only ends the transaction: everything
    in :data:`SURVIVES_DEFAULT_RESET` reaches the next borrower."""
    pool = make_psycopg_pool()
    key = lock_key()
    name = f"tmp_{uuid.uuid4().hex[:10]}"
    with pool.connection() as conn:
        session_user = users(conn)[1]
    seen = borrow_twice(pool, dirty_everything(role, key, name), inspect_everything(name))
    assert seen["users"] == (role, session_user)  # SET ROLE
    assert seen["search_path"] == "pg_catalog, public"  # SET search_path
    assert seen["statement_timeout"] == "1234ms"  # SET statement_timeout
    assert seen["temp_table"] is True  # temporary table
    assert seen["advisory_locks"] == 1  # session advisory lock
    assert not lock_is_free(dsn, key)
    assert seen["listening"] == ["hygiene_channel"]  # LISTEN
    assert "hygiene_stmt" in seen["prepared"]  # PREPARE
    assert any(n.startswith("_pg3_") for n in seen["prepared"])  # psycopg's own
    with pool.connection() as conn:
        conn.execute("RESET ROLE")
        run_auto_query(conn)  # psycopg's prepared statement is still valid


def test_default_reset_keeps_session_authorization(
    make_psycopg_pool: Callable[..., Any], role: str
) -> None:
    pool = make_psycopg_pool()
    seen = borrow_twice(pool, lambda c: c.execute(f"SET SESSION AUTHORIZATION {role}"), users)
    assert seen == (role, role)
    with pool.connection() as conn:
        conn.execute("RESET SESSION AUTHORIZATION")


def test_default_reset_rolls_back_an_open_transaction(
    make_psycopg_pool: Callable[..., Any], dsn: str, table: str
) -> None:
    """A ``SET`` inside the rolled-back transaction is undone with it."""
    pool = make_psycopg_pool()
    expected = fresh_value(dsn, "SHOW statement_timeout")
    conn = pool.getconn()
    pid = conn.info.backend_pid
    conn.execute(f"INSERT INTO {table} VALUES (1)")
    conn.execute("SET statement_timeout = 1234")
    pool.putconn(conn)
    with pool.connection() as conn:
        assert conn.info.backend_pid == pid
        assert conn.info.transaction_status == IDLE
        assert one(conn, f"SELECT count(*) FROM {table}") == 0
        assert one(conn, "SHOW statement_timeout") == expected


def test_default_reset_rolls_back_an_aborted_transaction(
    make_psycopg_pool: Callable[..., Any],
) -> None:
    pool = make_psycopg_pool()
    conn = pool.getconn()
    pid = conn.info.backend_pid
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute("SELECT 1 / 0")
    pool.putconn(conn)
    with pool.connection() as conn:
        assert conn.info.backend_pid == pid
        assert conn.info.transaction_status == IDLE
        assert one(conn, "SELECT 42") == 42


def test_default_reset_keeps_session_state_set_before_an_open_transaction(
    make_psycopg_pool: Callable[..., Any], dsn: str
) -> None:
    """Only the last, uncommitted transaction is rolled back: what an
    earlier one committed stays."""
    pool = make_psycopg_pool()
    key = lock_key()
    conn = pool.getconn()
    pid = conn.info.backend_pid
    conn.execute("SET statement_timeout = 1234")
    conn.commit()
    conn.execute("SELECT pg_advisory_lock(%s)", (key,))  # session lock: not undone
    pool.putconn(conn)  # inside a transaction: rolled back
    with pool.connection() as conn:
        assert conn.info.backend_pid == pid
        assert one(conn, "SHOW statement_timeout") == "1234ms"
        assert advisory_locks_held(conn) == 1
        conn.execute("SELECT pg_advisory_unlock_all()")
    assert lock_is_free(dsn, key)


# ================================================================== client side


@pytest.mark.parametrize("policy", [None, *POLICIES])
def test_client_side_attributes_survive_every_policy(
    make_psycopg_pool: Callable[..., Any], policy: Any
) -> None:
    """No policy touches the attributes of psycopg's connection object: a
    borrower that changes ``read_only``, ``isolation_level``,
    ``row_factory`` or ``prepare_threshold`` must restore them (or a custom
    ``reset`` must). ``read_only`` and ``isolation_level`` take effect at
    psycopg's next ``BEGIN``, so they change the next borrower's
    transactions on the server too."""
    pool = make_psycopg_pool(policy)
    from psycopg.rows import dict_row

    def dirty(conn: Any) -> None:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        conn.row_factory = dict_row
        conn.prepare_threshold = None

    def inspect(conn: Any) -> tuple[Any, ...]:
        row = conn.execute(
            "SELECT current_setting('transaction_read_only') AS ro, "
            "current_setting('transaction_isolation') AS iso"
        ).fetchone()
        state = (conn.read_only, conn.isolation_level, conn.prepare_threshold, row)
        conn.rollback()
        conn.read_only = None
        conn.isolation_level = None
        conn.row_factory = psycopg.rows.tuple_row
        conn.prepare_threshold = PREPARE_THRESHOLD
        return state

    assert borrow_twice(pool, dirty, inspect) == (
        True,
        psycopg.IsolationLevel.SERIALIZABLE,
        None,
        {"ro": "on", "iso": "serializable"},
    )
