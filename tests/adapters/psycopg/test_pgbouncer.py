"""pypool behind a real PgBouncer (``pgbouncer`` marker).

Each test starts a private PgBouncer (``tests/_support/pgbouncer.py``) in
front of the tests' PostgreSQL, in ``pool_mode = transaction`` or
``session``, and stops it at the end, so no server connection carries state
from one test to the next.

- What transaction pooling does to session state: ``SET``, ``LISTEN``,
  session advisory locks, temporary tables and ``SET ROLE`` stay on the
  server connection the pooler lent, reach the client that gets it next,
  and do not follow the client; in session mode they follow it (the
  control that shows each probe can tell).
- ``transaction_pooling=True``: the setting that declares it (a client
  cannot tell it talks to PgBouncer 1.18); it refuses a session-state reset
  and, in the psycopg pools, turns psycopg's automatic prepared statements
  off, without which two clients sharing a server connection fail.
- Faults: the check before hand-out through the bouncer (an empty query
  goes to the server), a PgBouncer restart, ``KILL`` and ``RESUME`` on its
  admin console, and ``server_lifetime`` / ``client_idle_timeout`` shorter
  than the pool's: callers get a connection or ``PoolTimeout``, never a
  hang, and the counts balance.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

import pypool  # noqa: E402
from _support.pgbouncer import PgBouncer, binary  # noqa: E402
from pypool import dbapi, stats  # noqa: E402
from pypool.errors import ConfigurationError, PoolTimeout  # noqa: E402
from pypool.psycopg import (  # noqa: E402
    AsyncConnectionPool,
    ConnectionPool,
    discard_all,
    reset_session,
)

pytestmark = [pytest.mark.pgbouncer, pytest.mark.db]

#: Seconds a thread may take to come back from a bounded call: far above any
#: timeout given here, so that only a hang fails.
HANG = 60.0


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def start_bouncer(dsn: str) -> Iterator[Callable[..., PgBouncer]]:
    """``start_bouncer(pool_mode="transaction", **settings)``: a running
    private PgBouncer, stopped and removed at the end of the test."""
    program = binary()
    started: list[PgBouncer] = []

    def start(
        pool_mode: str = "transaction", default_pool_size: int = 2, **settings: object
    ) -> PgBouncer:
        bouncer = PgBouncer(
            dsn,
            pool_mode=pool_mode,
            default_pool_size=default_pool_size,
            settings=settings,
            program=program,
        )
        started.append(bouncer)
        return bouncer.start()

    yield start
    for bouncer in started:
        bouncer.cleanup()


@pytest.fixture
def bouncer(start_bouncer: Callable[..., PgBouncer]) -> PgBouncer:
    """A PgBouncer in transaction mode, two server connections."""
    return start_bouncer()


@pytest.fixture(scope="module")
def role(dsn: str) -> Iterator[str]:
    """A role without login, for ``SET ROLE``."""
    name = f"pypool_bouncer_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        if admin.execute("SELECT current_setting('is_superuser')").fetchone() != ("on",):
            pytest.skip("the test user is not a superuser: cannot create a role")
        admin.execute(f"CREATE ROLE {name} NOLOGIN")
    yield name
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"DROP ROLE IF EXISTS {name}")


POOL_KINDS = ["Pool", "ConnectionPool"]


def open_pool(
    kind: str,
    dsn: str,
    *,
    transaction_pooling: bool = True,
    prepare_threshold: Any = "default",
    connect_timeout: float = 2.0,
    core: ModuleType | None = None,
    **kwargs: Any,
) -> Any:
    """A ``pypool.Pool`` of psycopg connections (``"Pool"``) or a
    ``pypool.psycopg.ConnectionPool``, autocommit, opened and filled."""
    extra = {} if prepare_threshold == "default" else {"prepare_threshold": prepare_threshold}
    options = dict(kwargs)
    pool_class: Any = pypool.Pool if core is None else pypool.Pool.with_core(core)
    psycopg_class: Any = ConnectionPool if core is None else ConnectionPool.with_core(core)
    if kind == "Pool":
        factory = dbapi.connect_factory(
            psycopg.connect, dsn, autocommit=True, connect_timeout=connect_timeout, **extra
        )
        pool: Any = pool_class(factory, transaction_pooling=transaction_pooling, **options)
    else:
        options.setdefault("min_size", 1)
        pool = psycopg_class(
            dsn,
            kwargs={"autocommit": True, "connect_timeout": int(connect_timeout), **extra},
            transaction_pooling=transaction_pooling,
            open=True,
            **options,
        )
    pool.wait(timeout=20.0)
    return pool


def one(conn: Any, sql: str) -> Any:
    return conn.execute(sql).fetchone()[0]


# ------------------------------------------------------------------ the setting


@pytest.mark.parametrize(
    "reset", [discard_all, reset_session], ids=["discard_all", "reset_session"]
)
def test_transaction_pooling_refuses_a_session_state_reset(reset: Any) -> None:
    factory = dbapi.connect_factory(psycopg.connect, "postgresql://nobody@127.0.0.1:1/x")
    with pytest.raises(ConfigurationError, match="clears session state") as info:
        pypool.Pool(factory, transaction_pooling=True, reset=reset)
    assert reset.__qualname__ in str(info.value)
    with pytest.raises(ConfigurationError, match="clears session state"):
        pypool.AsyncPool(factory, transaction_pooling=True, reset=reset)
    # The psycopg pools take the reset into their adapter: refused too, and
    # as a ValueError, the kind psycopg_pool raises for a bad argument.
    with pytest.raises(ValueError, match="clears session state"):
        ConnectionPool("", transaction_pooling=True, reset=reset, open=False)
    with pytest.raises(ValueError, match="clears session state"):
        AsyncConnectionPool("", transaction_pooling=True, reset=reset, open=False)
    # Without the declaration the reset is the user's business.
    pypool.Pool(factory, reset=reset).close()
    ConnectionPool("", reset=reset, open=False).close()


def test_transaction_pooling_validation_and_marked_resets() -> None:
    factory = dbapi.connect_factory(psycopg.connect, "postgresql://nobody@127.0.0.1:1/x")
    with pytest.raises(ConfigurationError, match="transaction_pooling must be True or False"):
        pypool.Pool(factory, transaction_pooling="yes")
    with pytest.raises(ConfigurationError, match="transaction_pooling must be True or False"):
        ConnectionPool("", transaction_pooling=1, open=False)

    def rollback_only(conn: Any) -> None:
        conn.rollback()

    pool = pypool.Pool(factory, transaction_pooling=True, reset=rollback_only)
    assert pool._settings.reset is rollback_only
    assert pool._settings.transaction_pooling is True
    pool.close()

    from pypool.pool.settings import session_state_reset

    @session_state_reset
    def my_discard(conn: Any) -> None:
        conn.execute("DISCARD ALL")

    with pytest.raises(ConfigurationError, match="my_discard"):
        pypool.Pool(factory, transaction_pooling=True, reset=my_discard)


def test_asyncpg_reset_is_a_rollback_with_transaction_pooling() -> None:
    import pypool.asyncpg

    async def factory() -> Any:
        raise AssertionError("never connects")

    plain = pypool.AsyncPool(factory, adapter=pypool.asyncpg)
    assert plain._settings.reset is None  # asyncpg's Connection.reset(), asked at connect
    pooled = pypool.AsyncPool(factory, adapter=pypool.asyncpg, transaction_pooling=True)
    assert pooled._settings.reset is pypool.asyncpg.transaction_pooling_reset


def test_asyncpg_behind_transaction_pooling(bouncer: PgBouncer) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    import pypool.asyncpg

    async def main() -> tuple[bool, str]:
        pool = pypool.AsyncPool(
            lambda: asyncpg.connect(bouncer.dsn, statement_cache_size=0),
            adapter=pypool.asyncpg,
            max_size=1,
            transaction_pooling=True,
        )
        try:
            conn = await pool.acquire()
            await conn.execute("SET application_name = 'pypool-kept'")
            await conn.execute("BEGIN")
            await conn.execute("SELECT 1")
            await pool.release(conn)
            conn = await pool.acquire()
            in_transaction = conn.is_in_transaction()
            # No RESET ALL ran (Connection.reset() would have run one).
            name = await conn.fetchval("SHOW application_name")
            await pool.release(conn)
            return in_transaction, name
        finally:
            await pool.close()

    in_transaction, name = asyncio.run(main())
    assert in_transaction is False
    assert name == "pypool-kept"


# ------------------------------------------------------------- session state


def _state_cases(role: str) -> dict[str, tuple[str, str, Any]]:
    """kind -> (what the first client does outside a transaction, the probe,
    what the probe returns where that state is)."""
    tag = uuid.uuid4().hex[:10]
    key = int(tag[:6], 16)
    return {
        "SET": ("SET statement_timeout = '4321ms'", "SHOW statement_timeout", "4321ms"),
        "LISTEN": (
            f"LISTEN pypool_ch_{tag}",
            f"SELECT count(*) FROM pg_listening_channels() AS c WHERE c = 'pypool_ch_{tag}'",
            1,
        ),
        "advisory lock": (
            f"SELECT pg_advisory_lock({key})",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            f"AND pid = pg_backend_pid() AND objid = {key}",
            1,
        ),
        "temporary table": (
            f"CREATE TEMPORARY TABLE pypool_tmp_{tag} (id int)",
            f"SELECT to_regclass('pg_temp.pypool_tmp_{tag}') IS NOT NULL",
            True,
        ),
        "SET ROLE": (f"SET ROLE {role}", "SELECT current_user", role),
    }


STATE_KINDS = ["SET", "LISTEN", "advisory lock", "temporary table", "SET ROLE"]


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("kind", POOL_KINDS)
@pytest.mark.parametrize("state", STATE_KINDS)
def test_session_state_does_not_follow_the_client_in_transaction_mode(
    start_bouncer: Callable[..., PgBouncer], role: str, state: str, kind: str, mode: str
) -> None:
    """Client A (a pool of one connection) makes session state outside a
    transaction; client B then opens a transaction, which PgBouncer serves
    on the server connection A just used (it reuses the most recent one
    first); A's next statement needs another server connection.

    Transaction mode: A no longer sees its state, and B, another client,
    does. Session mode (the control): A keeps its state, B does not see it.
    """
    bouncer = start_bouncer(mode)
    setup, probe, present = _state_cases(role)[state]
    pool = open_pool(kind, bouncer.dsn, transaction_pooling=mode == "transaction",
                     min_size=1, max_size=1)  # fmt: skip
    other = psycopg.connect(bouncer.dsn, connect_timeout=5)  # not autocommit
    try:
        with pool.connection() as a:
            a.execute(setup)
        one(other, "SELECT 1")  # B's transaction holds a server connection
        with pool.connection() as a:
            seen_by_a = one(a, probe)
        seen_by_b = one(other, probe)
    finally:
        other.close()
        pool.close()
    if mode == "transaction":
        assert seen_by_a != present, f"{state} followed the client through transaction pooling"
        assert seen_by_b == present, f"{state} did not stay on the server connection"
    else:
        assert seen_by_a == present
        assert seen_by_b != present


# ------------------------------------------------------- prepared statements

QUERY = "SELECT %s::int + 1"


def _prepare_on_both(pool: Any) -> None:
    """Two clients of the pool run the same query often enough for psycopg
    to prepare it (``prepare_threshold``, 5 by default), one after the
    other, through a bouncer pool of one server connection."""
    first = pool.getconn() if hasattr(pool, "getconn") else pool.acquire()
    second = pool.getconn() if hasattr(pool, "getconn") else pool.acquire()
    try:
        for conn in (first, second):
            for i in range(8):
                assert conn.execute(QUERY, (i,)).fetchone() == (i + 1,)
    finally:
        for conn in (first, second):
            pool.putconn(conn) if hasattr(pool, "putconn") else pool.release(conn)


def test_prepared_statements_fail_behind_transaction_pooling(bouncer: PgBouncer) -> None:
    """What a user meets without the setting: psycopg names its prepared
    statements ``_pg3_0``, ``_pg3_1``, ... per client connection; through one
    shared server connection the second client's ``_pg3_0`` collides with
    the first one's (with more server connections, a statement is missing
    instead, on whichever server connection the next transaction lands)."""
    pool = ConnectionPool(bouncer.dsn_one, min_size=2, kwargs={"autocommit": True}, open=True)
    try:
        pool.wait(20.0)
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement, match="_pg3_"):
            _prepare_on_both(pool)
    finally:
        pool.close()


@pytest.mark.parametrize("pool_class", [ConnectionPool], ids=["ConnectionPool"])
def test_transaction_pooling_turns_prepared_statements_off(
    bouncer: PgBouncer, pool_class: type
) -> None:
    pool = pool_class(bouncer.dsn_one, min_size=2, kwargs={"autocommit": True},
                      transaction_pooling=True, open=True)  # fmt: skip
    try:
        pool.wait(20.0)
        _prepare_on_both(pool)  # no error
        with pool.connection() as conn:
            assert conn.prepare_threshold is None
    finally:
        pool.close()
    # A value the user chose is kept, also from a callable.
    pool = pool_class(bouncer.dsn, min_size=1, kwargs=lambda: {"prepare_threshold": 3},
                      transaction_pooling=True, open=True)  # fmt: skip
    try:
        with pool.connection() as conn:
            assert conn.prepare_threshold == 3
    finally:
        pool.close()


def test_async_psycopg_pool_turns_prepared_statements_off(bouncer: PgBouncer) -> None:
    async def main() -> tuple[Any, Any]:
        declared_pool = AsyncConnectionPool(bouncer.dsn, min_size=1, transaction_pooling=True)
        async with declared_pool as p, p.connection() as conn:
            declared = conn.prepare_threshold
        async with AsyncConnectionPool(bouncer.dsn, min_size=1) as p, p.connection() as conn:
            default = conn.prepare_threshold
        return declared, default

    declared, default = asyncio.run(main())
    assert declared is None
    assert default == 5  # psycopg's default, untouched without the declaration


def test_pool_with_psycopg_needs_prepare_threshold_none(bouncer: PgBouncer) -> None:
    """``pypool.Pool`` does not make the connections itself: the factory's
    ``prepare_threshold=None`` is the fix, as the documentation says."""
    pool = open_pool("Pool", bouncer.dsn_one, min_size=2, max_size=2)
    try:
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
            _prepare_on_both(pool)
    finally:
        pool.close()
    pool = open_pool("Pool", bouncer.dsn_one, prepare_threshold=None, min_size=2, max_size=2)
    try:
        _prepare_on_both(pool)
    finally:
        pool.close()


# -------------------------------------------------------------------- faults


def _borrow_from_threads(pool: Any, n: int, timeout: float) -> list[Any]:
    """``n`` threads each borrow once with ``timeout`` and run ``SELECT 1``;
    what each got: ``"ok"``, or the exception. Fails on a hang."""
    outcomes: list[Any] = [None] * n

    def borrow(i: int) -> None:
        try:
            conn = pool.acquire(timeout)
        except BaseException as exc:
            outcomes[i] = exc
            return
        try:
            conn.execute("SELECT 1").fetchone()
            outcomes[i] = "ok"
        except BaseException as exc:
            outcomes[i] = exc
        finally:
            pool.release(conn)

    threads = [threading.Thread(target=borrow, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG)
        assert not t.is_alive(), "a caller hung"
    return outcomes


def _balanced(pool: Any, bouncer: PgBouncer) -> None:
    """Nothing borrowed, every connection made is open or counted closed,
    and PgBouncer holds exactly the pool's client connections."""
    deadline = time.monotonic() + 20.0
    while pool.size != pool.idle and time.monotonic() < deadline:
        time.sleep(0.05)  # a refill to min_size may be connecting
    s = pool.stats()
    assert pool.in_use == 0
    assert pool.size == pool.idle, pool
    assert s[stats.CREATED] - s[stats.CLOSED] == pool.size
    while True:
        row = bouncer.pool()
        clients = int(row.get("cl_active", 0)) + int(row.get("cl_waiting", 0))
        if clients == pool.size or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert clients == pool.size, row


def test_check_through_pgbouncer_is_bounded_by_the_callers_timeout(
    bouncer: PgBouncer, core_module: ModuleType
) -> None:
    """The check before hand-out is an empty query, and PgBouncer sends it
    to a server: it proves the bouncer could lend a server connection and
    PostgreSQL answered, not that the next transaction's server connection
    works. With PostgreSQL out of reach it waits for a server (up to
    PgBouncer's query_wait_timeout, 120 s): the caller's timeout bounds it,
    and the caller gets PoolTimeout."""
    pool = open_pool("Pool", bouncer.dsn, prepare_threshold=None, min_size=1, max_size=1,
                     core=core_module, check_after=0.0)  # fmt: skip
    try:
        with pool.connection() as conn:
            assert one(conn, "SELECT 1") == 1
        bouncer.point_at(1)  # PostgreSQL "moved" to a port where nothing listens
        outcomes = _borrow_from_threads(pool, 2, timeout=1.5)
        assert all(isinstance(o, PoolTimeout) for o in outcomes), outcomes
        assert pool.stats()[stats.RETIRED].get("check", 0) >= 1
        bouncer.point_at(bouncer.upstream_port)
        outcomes = _borrow_from_threads(pool, 2, timeout=20.0)
        assert outcomes == ["ok", "ok"]
        _balanced(pool, bouncer)
    finally:
        pool.close()


def test_pgbouncer_restart(bouncer: PgBouncer, core_module: ModuleType) -> None:
    """While PgBouncer is down callers get PoolTimeout; once it is back they
    get working connections (the dead ones fail their check and are
    replaced)."""
    pool = open_pool("Pool", bouncer.dsn, prepare_threshold=None, min_size=2, max_size=3,
                     core=core_module)  # fmt: skip
    try:
        assert _borrow_from_threads(pool, 3, timeout=10.0) == ["ok"] * 3
        bouncer.stop()
        time.sleep(1.2)  # idle longer than check_after: checked before hand-out
        outcomes = _borrow_from_threads(pool, 3, timeout=1.5)
        assert all(isinstance(o, PoolTimeout) for o in outcomes), outcomes
        bouncer.start()
        assert _borrow_from_threads(pool, 3, timeout=20.0) == ["ok"] * 3
        retired = pool.stats()[stats.RETIRED]
        assert retired.get("check", 0) >= 2, retired  # the ones the restart cut
        _balanced(pool, bouncer)
    finally:
        pool.close()


@pytest.mark.parametrize("kind", POOL_KINDS)
def test_kill_then_resume_on_the_admin_console(
    bouncer: PgBouncer, core_module: ModuleType, kind: str
) -> None:
    """``KILL test`` drops every client and server connection of the
    database and holds new clients until ``RESUME test``: meanwhile callers
    get PoolTimeout (connects hang in PgBouncer until connect_timeout);
    afterwards (PgBouncer connects again after ``server_login_retry``) they
    get working connections."""
    pool = open_pool(kind, bouncer.dsn, prepare_threshold=None, min_size=2, max_size=3,
                     core=core_module, timeout=20.0)  # fmt: skip
    try:
        assert _borrow_from_threads(pool, 3, timeout=10.0) == ["ok"] * 3
        bouncer.command(f"KILL {bouncer.dbname}")
        time.sleep(1.2)
        outcomes = _borrow_from_threads(pool, 3, timeout=1.5)
        assert all(isinstance(o, PoolTimeout) for o in outcomes), outcomes
        bouncer.command(f"RESUME {bouncer.dbname}")
        assert _borrow_from_threads(pool, 3, timeout=30.0) == ["ok"] * 3
        _balanced(pool, bouncer)
    finally:
        pool.close()


def test_bouncer_timeouts_shorter_than_the_pools(
    start_bouncer: Callable[..., PgBouncer], core_module: ModuleType
) -> None:
    """PgBouncer closes server connections older than ``server_lifetime``
    (1 s) when they are released, and client connections idle longer than
    ``client_idle_timeout`` (2 s); the pool keeps its defaults (an hour, ten
    minutes). Neither shows to a caller: server connections are the
    bouncer's business, and a client connection it closed fails the check
    before hand-out and is replaced."""
    bouncer = start_bouncer(server_lifetime=1, client_idle_timeout=2)
    pool = open_pool("Pool", bouncer.dsn, prepare_threshold=None, min_size=2, max_size=2,
                     core=core_module)  # fmt: skip
    try:
        for _ in range(3):
            for _ in range(5):
                assert _borrow_from_threads(pool, 2, timeout=20.0) == ["ok", "ok"]
                time.sleep(0.3)
            time.sleep(3.0)  # past client_idle_timeout
        assert _borrow_from_threads(pool, 2, timeout=20.0) == ["ok", "ok"]
        retired = pool.stats()[stats.RETIRED]
        assert retired.get("check", 0) >= 2, retired
        log = bouncer.log()
        assert "client_idle_timeout" in log
        assert "server lifetime over" in log
        _balanced(pool, bouncer)
    finally:
        pool.close()


# --------------------------------------------------------- pypool sweep


def _sweep(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pypool", "sweep", *args],
        capture_output=True, text=True, timeout=150,
    )  # fmt: skip


@pytest.mark.timeout(180)
def test_sweep_processes_through_pgbouncer(
    start_bouncer: Callable[..., PgBouncer], tmp_path: Path
) -> None:
    """Through PgBouncer, with its admin console: the sizes are capped by the
    bouncer's free client connections (not PostgreSQL's max_connections),
    the server connections stay within its pool, the pools declare
    transaction pooling (no prepared-statement failures), and
    default_pool_size is varied, recommended and set back."""
    bouncer = start_bouncer(default_pool_size=2, max_client_conn=12)
    path = tmp_path / "sweep.json"
    proc = _sweep("--dsn", bouncer.dsn, "--admin-dsn", bouncer.admin_dsn, "--processes", "2",
                  "--clients", "2", "--max-size", "8", "--seconds", "0.3",
                  "--bouncer-pool-sizes", "1,2", "--json", str(path))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["complete"] is True, doc["error"]
    b = doc["bouncer"]
    assert b["pool_mode"] == "transaction" and b["max_client_conn"] == 12
    assert b["pool_size"] == 2 and b["server_limit"] == 2
    assert doc["settings"]["transaction_pooling"] is True
    # 12 client connections less the sweep's own (the monitor, the console):
    # at most 5 per process, far below what PostgreSQL alone would allow.
    assert doc["settings"]["cap"] == min(8, (12 - b["clients_in_use"]) // 2)
    assert doc["settings"]["cap"] < doc["server"]["available"] // 2
    for r in doc["results"]:
        assert r["cycles"] > 0
        assert r["bouncer_server_connections"] is None or r["bouncer_server_connections"] <= 2
    assert "client connections to PgBouncer" in doc["recommended"]["within_limits"]
    varied = {r["default_pool_size"]: r for r in doc["bouncer_results"]}
    assert set(varied) == {1, 2}
    for n, r in varied.items():
        assert r["cycles"] > 0
        assert r["bouncer_server_connections"] is None or r["bouncer_server_connections"] <= n
    assert doc["recommended_bouncer"]["default_pool_size"] in (1, 2)
    assert "Recommended PgBouncer default_pool_size: " in proc.stdout
    config = {row["key"]: row["value"] for row in bouncer.show("CONFIG")}
    assert config["default_pool_size"] == "2"  # set back


@pytest.mark.timeout(120)
def test_sweep_through_pgbouncer_without_its_console(bouncer: PgBouncer) -> None:
    """Without the admin console the sweep cannot tell it talks to PgBouncer:
    --transaction-pooling declares it (psycopg's prepared statements would
    fail otherwise), and the limits it reads are PostgreSQL's."""
    proc = _sweep("--dsn", bouncer.dsn, "--transaction-pooling", "--clients", "4",
                  "--max-size", "2", "--seconds", "0.5")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "server connections, within the" in proc.stdout
