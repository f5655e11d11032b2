"""Session state between borrowers of ``pypool.psycopg`` pools, sync and async.

Each scenario is written once (async code against the facades of
``_support.psycopg_matrix``) and runs on ``ConnectionPool`` and
``AsyncConnectionPool``, on both cores. Every pool here has ``max_size=1``,
so the next borrower gets the same physical connection (each test asserts the
backend pid is equal) and sees whatever the previous one left behind, unless
the reset cleared it.

``discard_all`` and ``reset_session`` are the same functions for both pools:
given a ``Connection`` they do the work at once; given an ``AsyncConnection``
they return a coroutine, which the async pool awaits when the connection
comes back.

- ``reset=discard_all`` (``DISCARD ALL``) clears everything: role and session
  authorization, settings, temporary tables, prepared statements (psycopg
  forgets its own automatically prepared ones and prepares them again),
  ``LISTEN`` registrations, session advisory locks.
- ``reset=reset_session`` clears the same but keeps temporary tables.
- The default reset (no policy) only ends the transaction: an open or
  aborted transaction is rolled back; all session state survives
  (``SURVIVES_DEFAULT_RESET`` of ``_support.psycopg_resets``).

Needs PostgreSQL (``dsn`` fixture) and a user that may create roles and
``SET SESSION AUTHORIZATION`` (a superuser) for the role tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from _support.psycopg_matrix import PYPOOL, Matrix, Pool, matrix, maybe, raw  # noqa: E402
from _support.psycopg_resets import (  # noqa: E402
    AUTO_QUERY,
    POLICIES,
    PREPARE_THRESHOLD,
    SURVIVES_DEFAULT_RESET,
    lock_key,
    nologin_role,
)
from pypool.psycopg import discard_all, reset_session  # noqa: E402

pytestmark = pytest.mark.db

IDLE = psycopg.pq.TransactionStatus.IDLE
INTRANS = psycopg.pq.TransactionStatus.INTRANS
INERROR = psycopg.pq.TransactionStatus.INERROR

#: Every policy, the default (``None``) included.
ALL_POLICIES = [pytest.param(None, id="default"), *POLICIES]

#: The pypool psycopg pools, sync and async, on both cores.
hygiene = matrix(impls=PYPOOL)


def per_policy(scenario: Any) -> Any:
    """:data:`hygiene`, once per reset policy (``policy`` argument)."""
    return pytest.mark.parametrize("policy", POLICIES)(hygiene(scenario))


def per_policy_and_default(scenario: Any) -> Any:
    """:func:`per_policy`, and once more with the default reset (None)."""
    return pytest.mark.parametrize("policy", ALL_POLICIES)(hygiene(scenario))


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def role(dsn: str) -> Iterator[str]:
    """A role without login for ``SET ROLE`` / ``SET SESSION AUTHORIZATION``."""
    with nologin_role(dsn, "pypool_hygiene") as name:
        yield name


@pytest.fixture
def table(dsn: str) -> Iterator[str]:
    name = f"hygiene_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int)")
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


# ------------------------------------------------------------------ helpers


async def one_pool(m: Matrix, reset: Any = None, **kwargs: Any) -> Pool:
    """An open pool of one connection with the given reset policy."""
    pool = m.new(m.dsn, min_size=1, max_size=1, reset=reset, **kwargs)
    await pool.open(wait=True, timeout=10.0)
    return pool


async def borrow_twice(
    m: Matrix,
    pool: Any,
    dirty: Callable[[Any], Awaitable[object]],
    inspect: Callable[[Any], Awaitable[Any]],
) -> Any:
    """``await dirty(conn)`` as the first borrower (committed on exit), then
    ``await inspect(conn)`` as the next one, on the same physical connection."""
    async with pool.connection() as conn:
        assert isinstance(conn.raw, m.connection_class)
        pid = conn.pid
        await dirty(conn)
    async with pool.connection() as conn:
        assert conn.pid == pid, "max_size=1 must give the same connection"
        assert conn.info.transaction_status == IDLE
        return await inspect(conn)


@contextlib.asynccontextmanager
async def next_borrower(pool: Any, conn: Any) -> AsyncIterator[Any]:
    """Returns ``conn`` as it is (``putconn``: the pool ends its transaction)
    and borrows the same physical connection again, idle."""
    pid = conn.pid
    await pool.putconn(conn)
    async with pool.connection() as again:
        assert again.pid == pid, "max_size=1 must give the same connection"
        assert again.info.transaction_status == IDLE
        yield again


async def column(
    conn: Any, sql: str, params: Any = None, *, prepare: bool | None = False
) -> list[Any]:
    """The first column of ``sql``. Not prepared unless asked: an inspection
    run by many borrowers must not become a prepared statement of its own
    (psycopg's count of a query survives ``reset_session``)."""
    cur = await maybe(raw(conn).execute(sql, params, prepare=prepare))
    return [r[0] for r in await maybe(cur.fetchall())]


async def one(conn: Any, sql: str, params: Any = None, *, prepare: bool | None = False) -> Any:
    """The first value of the first row (not prepared unless asked)."""
    return (await column(conn, sql, params, prepare=prepare))[0]


async def auto_query(conn: Any, i: int) -> int:
    """``AUTO_QUERY``, which psycopg prepares once it ran it often enough."""
    return int(await one(conn, AUTO_QUERY, (i,), prepare=None))


def fresh_value(dsn: str, sql: str) -> Any:
    """What a brand-new session sees."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchone()[0]


def executes(*statements: str) -> Callable[[Any], Awaitable[None]]:
    """A ``dirty`` that runs ``statements`` in order."""

    async def dirty(conn: Any) -> None:
        for sql in statements:
            await conn.execute(sql)

    return dirty


def temp_name() -> str:
    return f"tmp_{uuid.uuid4().hex[:10]}"


# ------------------------------------------------------------------ inspections


async def users(conn: Any) -> tuple[str, str]:
    cur = await maybe(raw(conn).execute("SELECT current_user, session_user", prepare=False))
    return tuple(await maybe(cur.fetchone()))  # type: ignore[return-value]


async def temp_table_exists(conn: Any, name: str) -> bool:
    # pg_class, not the table itself: the role in effect may not read it.
    return bool(
        await one(
            conn,
            "SELECT count(*) FROM pg_class WHERE relname = %s "
            "AND relnamespace = pg_my_temp_schema()",
            (name,),
        )
    )


async def listening(conn: Any) -> list[str]:
    return await column(conn, "SELECT pg_listening_channels()")


async def prepared(conn: Any) -> list[str]:
    return sorted(await column(conn, "SELECT name FROM pg_prepared_statements"))


async def advisory_locks_held(conn: Any) -> int:
    return int(
        await one(
            conn,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        )
    )


def lock_is_free(dsn: str, key: int) -> bool:
    """Whether another session can take advisory lock ``key`` (released at once)."""
    with psycopg.connect(dsn, autocommit=True) as other:
        if other.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
            other.execute("SELECT pg_advisory_unlock(%s)", (key,))
            return True
        return False


async def run_auto_query(conn: Any) -> None:
    """The same parametrized query, past the prepare threshold: psycopg
    prepares it (a ``_pg3_*`` statement) and uses the prepared statement."""
    assert conn.prepare_threshold == PREPARE_THRESHOLD
    for i in range(PREPARE_THRESHOLD + 3):
        assert await auto_query(conn, i) == i + 1


async def auto_prepared(conn: Any) -> list[str]:
    return [name for name in await prepared(conn) if name.startswith("_pg3_")]


def dirty_everything(role: str, key: int, name: str) -> Callable[[Any], Awaitable[None]]:
    async def dirty(conn: Any) -> None:
        await conn.execute("SET search_path TO pg_catalog, public")
        await conn.execute("SET statement_timeout = 1234")
        await conn.execute(f"CREATE TEMPORARY TABLE {name} (id int)")
        await conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        await conn.execute("LISTEN hygiene_channel")
        await conn.execute("PREPARE hygiene_stmt AS SELECT 1")
        await run_auto_query(conn)
        await conn.execute(f"SET ROLE {role}")  # last: the rest needs the original role

    return dirty


def inspect_everything(name: str) -> Callable[[Any], Awaitable[dict[str, Any]]]:
    async def inspect(conn: Any) -> dict[str, Any]:
        return {
            "users": await users(conn),
            "search_path": await one(conn, "SHOW search_path"),
            "statement_timeout": await one(conn, "SHOW statement_timeout"),
            "temp_table": await temp_table_exists(conn, name),
            "advisory_locks": await advisory_locks_held(conn),
            "listening": await listening(conn),
            "prepared": await prepared(conn),
        }

    return inspect


def returns_bad(pool: Any) -> int:
    return int(pool.get_stats().get("returns_bad", 0))


# ================================================================== policies


@hygiene
async def test_policies_called_on_a_connection(m: Matrix) -> None:
    """What the pools rely on: given a ``Connection`` each policy does the
    work at once and returns None; given an ``AsyncConnection`` it returns an
    awaitable that does the work (nothing runs before the await)."""
    pool = await one_pool(m)
    async with pool.connection() as conn:
        await conn.execute("SET statement_timeout = 1234")
        await conn.commit()
        for policy in (discard_all, reset_session):
            pending = policy(conn.raw)
            if m.is_async:  # a coroutine: the work is done at the await
                assert asyncio.iscoroutine(pending), policy
                assert await one(conn, "SHOW statement_timeout") == "1234ms"
                await conn.commit()
                await pending
            else:  # the sync policy already did it
                assert pending is None, policy
            assert conn.info.transaction_status == IDLE
            assert not conn.autocommit
            assert await one(conn, "SHOW statement_timeout") == "0"
            await conn.execute("SET statement_timeout = 1234")
            await conn.commit()


@pytest.mark.parametrize("switch", ["SET ROLE", "SET SESSION AUTHORIZATION"])
@per_policy
async def test_role_is_reset(m: Matrix, role: str, policy: Any, switch: str) -> None:
    """``SET ROLE`` changes the current user, ``SET SESSION AUTHORIZATION``
    the session user too: every policy gives both back."""
    pool = await one_pool(m, policy)
    async with pool.connection() as conn:
        original = await users(conn)

    async def dirty(conn: Any) -> None:
        await conn.execute(f"{switch} {role}")
        assert await users(conn) == (role, original[1] if switch == "SET ROLE" else role)

    assert await borrow_twice(m, pool, dirty, users) == original


@per_policy
async def test_settings_are_reset(m: Matrix, policy: Any) -> None:
    pool = await one_pool(m, policy)
    expected = (
        fresh_value(m.dsn, "SHOW search_path"),
        fresh_value(m.dsn, "SHOW statement_timeout"),
    )
    dirty = executes("SET search_path TO pg_catalog", "SET statement_timeout = 1234")

    async def inspect(conn: Any) -> tuple[str, str]:
        return (await one(conn, "SHOW search_path"), await one(conn, "SHOW statement_timeout"))

    assert await borrow_twice(m, pool, dirty, inspect) == expected


@pytest.mark.parametrize(
    ("policy", "kept"),
    [
        pytest.param(discard_all, False, id="discard_all-drops"),
        pytest.param(reset_session, True, id="reset_session-keeps"),
    ],
)
@hygiene
async def test_temporary_table(m: Matrix, policy: Any, kept: bool) -> None:
    """``discard_all`` drops temporary tables; ``reset_session`` keeps them
    (with their rows): a temporary table lives as long as the session."""
    pool = await one_pool(m, policy)
    name = temp_name()
    dirty = executes(f"CREATE TEMPORARY TABLE {name} (id int)", f"INSERT INTO {name} VALUES (1)")

    async def inspect(conn: Any) -> tuple[bool, Any]:
        exists = await temp_table_exists(conn, name)
        count = await one(conn, f"SELECT count(*) FROM {name}") if exists else None
        return exists, count

    assert await borrow_twice(m, pool, dirty, inspect) == ((True, 1) if kept else (False, None))


@per_policy
async def test_advisory_lock_is_released(m: Matrix, policy: Any) -> None:
    pool = await one_pool(m, policy)
    key = lock_key()

    async def dirty(conn: Any) -> None:
        await conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        assert not lock_is_free(m.dsn, key)

    assert await borrow_twice(m, pool, dirty, advisory_locks_held) == 0
    assert lock_is_free(m.dsn, key)


@per_policy
async def test_advisory_lock_is_free_as_soon_as_returned(m: Matrix, policy: Any) -> None:
    """The reset is part of the return itself: the lock is free once the
    ``connection()`` block is left, before anybody borrows the connection."""
    pool = await one_pool(m, policy)
    key = lock_key()
    async with pool.connection() as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        assert not lock_is_free(m.dsn, key)
    assert lock_is_free(m.dsn, key)  # nobody borrowed the connection since
    conn = await pool.getconn()
    await conn.execute("SELECT pg_advisory_lock(%s)", (key,))
    await conn.commit()
    await pool.putconn(conn)
    assert lock_is_free(m.dsn, key)  # the same through getconn / putconn


@per_policy
async def test_listen_is_cleared(m: Matrix, policy: Any) -> None:
    pool = await one_pool(m, policy)

    async def dirty(conn: Any) -> None:
        await conn.execute("LISTEN hygiene_channel")
        await conn.commit()  # LISTEN takes effect at the commit
        assert await listening(conn) == ["hygiene_channel"]

    assert await borrow_twice(m, pool, dirty, listening) == []


@per_policy
async def test_prepared_statements_are_deallocated(m: Matrix, policy: Any) -> None:
    pool = await one_pool(m, policy)

    async def dirty(conn: Any) -> None:
        await conn.execute("PREPARE hygiene_stmt AS SELECT 1")
        await run_auto_query(conn)
        assert "hygiene_stmt" in await prepared(conn)
        assert await auto_prepared(conn)

    async def inspect(conn: Any) -> tuple[list[str], list[str]]:
        before = await prepared(conn)
        # psycopg forgot its statements with the server's: it counts the
        # query again, prepares it again, and it keeps working.
        await run_auto_query(conn)
        return before, await auto_prepared(conn)

    before, again = await borrow_twice(m, pool, dirty, inspect)
    assert before == []
    assert len(again) == 1
    assert returns_bad(pool) == 0


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
@hygiene
async def test_many_resets_keep_the_connection_and_prepared_statements(
    m: Matrix, policy: Any, runs: int, autocommit: bool
) -> None:
    """Many borrowers in a row, each running the same parametrized query
    ``runs`` times (once: psycopg prepares it across borrowers): every reset
    succeeds (the connection is kept) and psycopg forgets its statements at
    every reset, not only at the first."""
    pool = await one_pool(m, policy, kwargs={"autocommit": autocommit})
    pids = set()
    for n in range(3 * PREPARE_THRESHOLD):
        async with pool.connection() as conn:
            pids.add(conn.pid)
            assert conn.autocommit is autocommit
            assert await prepared(conn) == []
            for i in range(runs):
                assert await auto_query(conn, n + i) == n + i + 1
    assert len(pids) == 1
    assert returns_bad(pool) == 0


@per_policy
async def test_policy_on_an_autocommit_connection(m: Matrix, policy: Any) -> None:
    pool = await one_pool(m, policy, kwargs={"autocommit": True})
    dirty = executes("SET statement_timeout = 1234", "LISTEN hygiene_channel")

    async def inspect(conn: Any) -> tuple[bool, str, list[str]]:
        return (conn.autocommit, await one(conn, "SHOW statement_timeout"), await listening(conn))

    assert await borrow_twice(m, pool, dirty, inspect) == (True, "0", [])


@pytest.mark.parametrize(
    ("policy", "temp_kept"),
    [
        pytest.param(discard_all, False, id="discard_all"),
        pytest.param(reset_session, True, id="reset_session"),
    ],
)
@hygiene
async def test_policy_clears_everything_at_once(
    m: Matrix, role: str, policy: Any, temp_kept: bool
) -> None:
    """Everything at once: ``discard_all`` leaves nothing, ``reset_session``
    only the temporary table."""
    pool = await one_pool(m, policy)
    key = lock_key()
    name = temp_name()
    async with pool.connection() as conn:
        original = await users(conn)
    seen = await borrow_twice(m, pool, dirty_everything(role, key, name), inspect_everything(name))
    assert seen == {
        "users": original,
        "search_path": fresh_value(m.dsn, "SHOW search_path"),
        "statement_timeout": "0",
        "temp_table": temp_kept,
        "advisory_locks": 0,
        "listening": [],
        "prepared": [],
    }
    assert lock_is_free(m.dsn, key)


# ================================================================== transactions


@per_policy_and_default
async def test_open_transaction_is_rolled_back(m: Matrix, table: str, policy: Any) -> None:
    """Returned inside a transaction (``putconn`` without a commit): its
    writes and the ``SET`` inside it are undone, whatever the policy."""
    pool = await one_pool(m, policy)
    expected = (
        fresh_value(m.dsn, "SHOW search_path"),
        fresh_value(m.dsn, "SHOW statement_timeout"),
    )
    conn = await pool.getconn()
    await conn.execute(f"INSERT INTO {table} VALUES (1)")
    await conn.execute("SET search_path TO pg_catalog")
    await conn.execute("SET statement_timeout = 1234")
    assert conn.info.transaction_status == INTRANS
    async with next_borrower(pool, conn) as conn:
        assert not conn.autocommit  # restored after a reset ran in autocommit
        assert await one(conn, f"SELECT count(*) FROM public.{table}") == 0
        assert (
            await one(conn, "SHOW search_path"),
            await one(conn, "SHOW statement_timeout"),
        ) == expected
    assert returns_bad(pool) == 0


@per_policy_and_default
async def test_aborted_transaction_is_rolled_back(m: Matrix, role: str, policy: Any) -> None:
    """Committed session state (``SET ROLE``), then a failed transaction: the
    next borrower gets a usable connection; the role is reset by a policy and
    kept by the default reset."""
    pool = await one_pool(m, policy)
    conn = await pool.getconn()
    original = await users(conn)
    await conn.commit()
    await conn.execute(f"SET ROLE {role}")
    await conn.commit()
    with pytest.raises(psycopg.errors.DivisionByZero):
        await conn.execute("SELECT 1 / 0")
    assert conn.info.transaction_status == INERROR
    async with next_borrower(pool, conn) as conn:
        assert await one(conn, "SELECT 42") == 42
        seen = await users(conn)
        await conn.execute("RESET ROLE")
    assert seen == (original if policy is not None else (role, original[1]))
    assert returns_bad(pool) == 0


@per_policy_and_default
async def test_session_state_committed_before_an_open_transaction(m: Matrix, policy: Any) -> None:
    """Only the last, uncommitted transaction is rolled back: what an earlier
    one committed (a setting) and a session lock taken in the open one stay
    after the default reset; a policy clears them after the rollback."""
    pool = await one_pool(m, policy)
    key = lock_key()
    conn = await pool.getconn()
    pid = conn.pid
    await conn.execute("SET statement_timeout = 1234")
    await conn.commit()
    await conn.execute("SELECT pg_advisory_lock(%s)", (key,))  # session lock: not undone
    await pool.putconn(conn)  # inside a transaction: rolled back
    free_after_return = lock_is_free(m.dsn, key)
    async with pool.connection() as conn:
        assert conn.pid == pid
        assert conn.info.transaction_status == IDLE
        seen = (await one(conn, "SHOW statement_timeout"), await advisory_locks_held(conn))
        await conn.execute("SELECT pg_advisory_unlock_all()")
    if policy is None:
        assert (seen, free_after_return) == (("1234ms", 1), False)
    else:
        assert (seen, free_after_return) == (("0", 0), True)
    assert lock_is_free(m.dsn, key)


# ================================================================== default reset


@hygiene
async def test_default_reset_keeps_session_state(m: Matrix, role: str) -> None:
    """Without a reset policy the pool only ends the transaction: everything
    in ``SURVIVES_DEFAULT_RESET`` reaches the next borrower (``SET SESSION
    AUTHORIZATION``: the next test)."""
    pool = await one_pool(m)
    key = lock_key()
    name = temp_name()
    async with pool.connection() as conn:
        session_user = (await users(conn))[1]
    seen = await borrow_twice(m, pool, dirty_everything(role, key, name), inspect_everything(name))
    held = not lock_is_free(m.dsn, key)
    checks = {  # item: (seen, expected)
        "SET ROLE": (seen["users"], (role, session_user)),
        "SET search_path": (seen["search_path"], "pg_catalog, public"),
        "SET statement_timeout": (seen["statement_timeout"], "1234ms"),
        "temporary table": (seen["temp_table"], True),
        "session advisory lock": ((seen["advisory_locks"], held), (1, True)),
        "LISTEN": (seen["listening"], ["hygiene_channel"]),
        "PREPARE": ("hygiene_stmt" in seen["prepared"], True),
        "psycopg's automatically prepared statements": (
            any(n.startswith("_pg3_") for n in seen["prepared"]),
            True,
        ),
    }
    assert {*checks, "SET SESSION AUTHORIZATION"} == set(SURVIVES_DEFAULT_RESET)
    assert {k: v[0] for k, v in checks.items()} == {k: v[1] for k, v in checks.items()}
    async with pool.connection() as conn:
        await conn.execute("RESET ROLE")
        await run_auto_query(conn)  # psycopg's prepared statement is still valid
        await conn.execute("SELECT pg_advisory_unlock_all()")
    assert lock_is_free(m.dsn, key)
    assert returns_bad(pool) == 0


@hygiene
async def test_default_reset_keeps_session_authorization(m: Matrix, role: str) -> None:
    pool = await one_pool(m)
    seen = await borrow_twice(m, pool, executes(f"SET SESSION AUTHORIZATION {role}"), users)
    assert seen == (role, role)
    async with pool.connection() as conn:
        await conn.execute("RESET SESSION AUTHORIZATION")
        assert await users(conn) != (role, role)


# ================================================================== client side


@per_policy_and_default
async def test_client_side_attributes_survive_every_policy(m: Matrix, policy: Any) -> None:
    """No policy touches the attributes of psycopg's connection object: a
    borrower that changes ``read_only``, ``isolation_level``,
    ``row_factory`` or ``prepare_threshold`` must restore them (or a custom
    ``reset`` must). ``read_only`` and ``isolation_level`` take effect at
    psycopg's next ``BEGIN``, so they change the next borrower's
    transactions on the server too."""
    from psycopg.rows import dict_row, tuple_row

    pool = await one_pool(m, policy)

    async def dirty(conn: Any) -> None:
        # The setter methods exist on both connection classes (the async
        # one has no property setters): awaited for an AsyncConnection.
        await maybe(conn.raw.set_read_only(True))
        await maybe(conn.raw.set_isolation_level(psycopg.IsolationLevel.SERIALIZABLE))
        conn.raw.row_factory = dict_row
        conn.raw.prepare_threshold = None

    async def inspect(conn: Any) -> tuple[Any, ...]:
        cur = await maybe(
            conn.raw.execute(
                "SELECT current_setting('transaction_read_only') AS ro, "
                "current_setting('transaction_isolation') AS iso"
            )
        )
        row = await maybe(cur.fetchone())
        state = (conn.read_only, conn.isolation_level, conn.prepare_threshold, row)
        await conn.rollback()
        await maybe(conn.raw.set_read_only(None))
        await maybe(conn.raw.set_isolation_level(None))
        conn.raw.row_factory = tuple_row
        conn.raw.prepare_threshold = PREPARE_THRESHOLD
        return state

    assert await borrow_twice(m, pool, dirty, inspect) == (
        True,
        psycopg.IsolationLevel.SERIALIZABLE,
        None,
        {"ro": "on", "iso": "serializable"},
    )
