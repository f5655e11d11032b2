"""``pypool.psycopg`` against ``psycopg_pool``: the same scenarios, side by side.

Every compatibility test runs on three implementations (the ``impl`` fixture):
``psycopg_pool`` itself and ``pypool.psycopg`` on each core (``native`` and
``python``), and asserts the same observable results on all three. Where
pypool deliberately differs (``docs/psycopg-migration.md``: which idle
connection is reused first, when checks run, lifetime enforced at hand-out,
connects on worker threads) the scenario is arranged so that the difference
does not show, and pypool's own behaviour is asserted in the tests of the
"Deliberate differences" section at the end, which run on pypool only.

Needs PostgreSQL (``dsn`` fixture): skipped with the reason when it cannot be
reached, unless ``PYPOOL_REQUIRE_DB=1``.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import re
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")
psycopg_pool = pytest.importorskip("psycopg_pool")

import pypool.psycopg  # noqa: E402
from conftest import PYTHON_MODULE, import_native_core  # noqa: E402

pytestmark = pytest.mark.db

#: Generous bound for things that happen "soon" (a connect, a background return).
SOON = 10.0


# ------------------------------------------------------------------ implementations


@dataclass(frozen=True)
class Impl:
    """One implementation of psycopg_pool's interface.

    ``mod`` has ``ConnectionPool``, ``NullConnectionPool``, ``PoolTimeout``,
    ``PoolClosed`` and ``TooManyRequests``; for pypool, ``core`` is the core
    module every pool is made on (``with_core()``).
    """

    name: str
    core: ModuleType | None

    @property
    def is_pypool(self) -> bool:
        return self.core is not None

    @property
    def mod(self) -> ModuleType:
        return psycopg_pool if self.core is None else pypool.psycopg

    def _bound(self, cls: Any) -> Any:
        return cls if self.core is None else cls.with_core(self.core)

    def pool(self, *args: Any, **kwargs: Any) -> Any:
        return self._bound(self.mod.ConnectionPool)(*args, **kwargs)

    def null_pool(self, *args: Any, **kwargs: Any) -> Any:
        return self._bound(self.mod.NullConnectionPool)(*args, **kwargs)


@pytest.fixture(
    params=[
        pytest.param("psycopg_pool", id="psycopg_pool"),
        pytest.param("native", id="pypool-native", marks=pytest.mark.native),
        pytest.param("python", id="pypool-python"),
    ]
)
def impl(request: pytest.FixtureRequest) -> Impl:
    if request.param == "psycopg_pool":
        return Impl("psycopg_pool", None)
    if request.param == "native":
        return Impl("pypool-native", import_native_core())
    return Impl("pypool-python", importlib.import_module(PYTHON_MODULE))


@pytest.fixture(
    params=[
        pytest.param("native", id="native", marks=pytest.mark.native),
        pytest.param("python", id="python"),
    ]
)
def pypool_impl(request: pytest.FixtureRequest) -> Impl:
    """pypool only, on each core: for its deliberate differences."""
    if request.param == "native":
        return Impl("pypool-native", import_native_core())
    return Impl("pypool-python", importlib.import_module(PYTHON_MODULE))


class Pools:
    """Makes pools of one implementation and closes them all at teardown."""

    def __init__(self, impl: Impl, dsn: str) -> None:
        self.impl = impl
        self.dsn = dsn
        self.made: list[Any] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not args:
            args = (self.dsn,)
        kwargs.setdefault("open", True)
        pool = self.impl.pool(*args, **kwargs)
        self.made.append(pool)
        return pool

    def null(self, *args: Any, **kwargs: Any) -> Any:
        if not args:
            args = (self.dsn,)
        kwargs.setdefault("open", True)
        pool = self.impl.null_pool(*args, **kwargs)
        self.made.append(pool)
        return pool

    def close(self) -> None:
        for pool in self.made:
            with contextlib.suppress(Exception):  # a failed test may leave it half set up
                pool.close(timeout=1.0)


@pytest.fixture
def make(impl: Impl, dsn: str) -> Iterator[Pools]:
    pools = Pools(impl, dsn)
    yield pools
    pools.close()


@pytest.fixture
def make_pypool(pypool_impl: Impl, dsn: str) -> Iterator[Pools]:
    pools = Pools(pypool_impl, dsn)
    yield pools
    pools.close()


# ------------------------------------------------------------------ helpers


def wait_until(predicate: Callable[[], bool], timeout: float = SOON) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def closed_port() -> int:
    """A local TCP port nothing listens on (connecting is refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unreachable_conninfo() -> str:
    return f"host=127.0.0.1 port={closed_port()} user=postgres dbname=test connect_timeout=2"


def terminate(dsn: str, pid: int) -> None:
    """Ends a backend and waits until it is gone."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert wait_until(
            lambda: (
                not admin.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchall()
            )
        )


def available(pool: Any) -> int:
    return int(pool.get_stats()["pool_available"])


@pytest.fixture
def table(dsn: str) -> Iterator[str]:
    """A fresh table ``(id int)``, dropped afterwards."""
    name = f"compat_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int)")
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def rows(dsn: str, table: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY id")]


# ================================================================== construction


def test_constructor_defaults_and_properties(make: Pools, dsn: str) -> None:
    pool = make(open=False)
    assert re.fullmatch(r"pool-\d+", pool.name)
    assert pool.min_size == 4
    assert pool.max_size == 4
    assert pool.timeout == 30.0
    assert pool.max_lifetime == 3600.0
    assert pool.max_idle == 600.0
    assert pool.reconnect_timeout == 300.0
    assert pool.num_workers == 3
    assert pool.close_returns is False
    assert pool.conninfo == dsn
    assert pool.kwargs is None
    assert pool.connection_class is psycopg.Connection
    assert f"{pool.name!r}" in repr(pool)


def test_constructor_explicit_values(make: Pools, dsn: str) -> None:
    kwargs = {"application_name": "compat"}
    pool = make(
        open=False,
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
)
def test_invalid_sizes_raise_value_error(impl: Impl, dsn: str, sizes: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        impl.pool(dsn, open=False, **sizes)


def test_max_waiting_property(request: pytest.FixtureRequest, impl: Impl, make: Pools) -> None:
    assert make(open=False, max_waiting=3).max_waiting == 3


def test_timeout_is_settable(request: pytest.FixtureRequest, impl: Impl, make: Pools) -> None:
    pool = make(open=False)
    pool.timeout = 5.0
    assert pool.timeout == 5.0


def test_generic_subscription(request: pytest.FixtureRequest, impl: Impl) -> None:
    """``ConnectionPool[Connection[DictRow]]``, as psycopg's docs annotate."""
    assert impl.mod.ConnectionPool[psycopg.Connection] is not None


# ================================================================== open / close


def test_open_none_warns_at_first_getconn(make: Pools) -> None:
    with warnings_recorded() as at_creation:
        pool = make(open=None, min_size=1)
    assert not deprecations(at_creation)
    assert not pool.closed
    with pytest.warns(DeprecationWarning, match="open"):
        conn = pool.getconn()
    pool.putconn(conn)
    with warnings_recorded() as later:
        pool.putconn(pool.getconn())
    assert not deprecations(later)


def test_open_none_warns_at_first_connection(make: Pools) -> None:
    pool = make(open=None, min_size=1)
    with pytest.warns(DeprecationWarning, match="open"), pool.connection() as conn:
        conn.execute("SELECT 1")


def test_open_none_as_context_manager_does_not_warn(impl: Impl, dsn: str) -> None:
    with warnings_recorded() as recorded, impl.pool(dsn, min_size=1) as pool:
        with pool.connection() as conn:
            conn.execute("SELECT 1")
        pool.putconn(pool.getconn())
    assert not deprecations(recorded)


def test_open_none_warns_at_wait(request: pytest.FixtureRequest, impl: Impl, make: Pools) -> None:
    pool = make(open=None, min_size=1)
    with pytest.warns(DeprecationWarning, match="open"):
        pool.wait(SOON)


def test_open_false_then_getconn_raises_pool_closed(impl: Impl, make: Pools) -> None:
    pool = make(open=False, min_size=1)
    with pytest.raises(impl.mod.PoolClosed, match="not open yet"):
        pool.getconn()
    with pytest.raises(impl.mod.PoolClosed, match="not open yet"), pool.connection():
        pass  # pragma: no cover
    pool.open()
    assert not pool.closed
    with pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_closed_is_true_before_open(
    request: pytest.FixtureRequest, impl: Impl, make: Pools
) -> None:
    assert make(open=False, min_size=1).closed


def test_wait_on_a_pool_not_open_raises(
    request: pytest.FixtureRequest, impl: Impl, make: Pools
) -> None:
    pool = make(open=False, min_size=1)
    with pytest.raises(impl.mod.PoolClosed, match="not open yet"):
        pool.wait(1.0)


def test_close_before_open_then_open(
    request: pytest.FixtureRequest, impl: Impl, make: Pools
) -> None:
    pool = make(open=False, min_size=1)
    pool.close()
    pool.open()
    pool.putconn(pool.getconn())


def test_open_close_reopen(impl: Impl, make: Pools) -> None:
    pool = make(open=False, min_size=1)
    pool.open()
    pool.open()  # idempotent
    pool.putconn(pool.getconn())
    pool.close()
    assert pool.closed
    pool.close()  # idempotent
    with pytest.raises(impl.mod.PoolClosed, match="cannot be reused"):
        pool.open()
    with pytest.raises(impl.mod.PoolClosed, match="already closed"):
        pool.getconn()


def test_open_wait(make: Pools) -> None:
    pool = make(open=False, min_size=2)
    pool.open(wait=True, timeout=SOON)
    stats = pool.get_stats()
    assert stats["pool_size"] == 2
    assert stats["pool_available"] == 2


def test_wait_success(make: Pools) -> None:
    pool = make(min_size=3)
    pool.wait(SOON)
    assert available(pool) == 3
    assert not pool.closed


def test_wait_unreachable_closes_the_pool_and_raises_pool_timeout(impl: Impl, make: Pools) -> None:
    pool = make(unreachable_conninfo(), min_size=1)
    started = time.monotonic()
    with pytest.raises(impl.mod.PoolTimeout) as info:
        pool.wait(timeout=1.0)
    assert time.monotonic() - started < SOON
    assert isinstance(info.value, psycopg.OperationalError)
    assert pool.closed
    with pytest.raises(impl.mod.PoolClosed):
        pool.getconn()


@pytest.mark.parametrize("kind", ["pool", "null"])
def test_open_wait_unreachable_closes_the_pool(impl: Impl, make: Pools, kind: str) -> None:
    new = make if kind == "pool" else make.null
    pool = new(unreachable_conninfo(), open=False, **({"min_size": 1} if kind == "pool" else {}))
    with pytest.raises(impl.mod.PoolTimeout):
        pool.open(wait=True, timeout=1.0)
    assert pool.closed
    with pytest.raises(impl.mod.PoolClosed):
        pool.getconn()


def test_context_manager(impl: Impl, dsn: str) -> None:
    with impl.pool(dsn, min_size=1) as pool:
        assert not pool.closed
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        kept = pool.getconn()
        pool.putconn(kept)
    assert pool.closed
    assert kept.closed  # idle connections are closed with the pool


def test_a_dropped_pool_is_garbage_collected(
    request: pytest.FixtureRequest, impl: Impl, dsn: str
) -> None:
    """A pool nobody references (never closed) goes away with the garbage
    collector, taking its threads with it."""
    pool = impl.pool(dsn, min_size=2, open=True)
    pool.wait(SOON)
    pool.putconn(pool.getconn())
    ref = weakref.ref(pool)
    del pool
    try:
        assert wait_until(lambda: gc.collect() is not None and ref() is None, timeout=2.0)
    finally:
        leaked = ref()
        if leaked is not None:
            leaked.close()
            del leaked


# ================================================================== borrowing


def test_connection_commits_on_success(make: Pools, dsn: str, table: str) -> None:
    pool = make(min_size=1)
    with pool.connection() as conn:
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        assert not conn.autocommit
    assert rows(dsn, table) == [1]
    assert wait_until(lambda: available(pool) == 1)


def test_connection_rolls_back_on_error(make: Pools, dsn: str, table: str) -> None:
    pool = make(min_size=1, max_size=1)
    with pytest.raises(ZeroDivisionError), pool.connection() as conn:
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        1 / 0  # noqa: B018
    assert rows(dsn, table) == []
    assert wait_until(lambda: available(pool) == 1)
    with pool.connection() as again:
        assert again is conn
        assert again.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_connection_timeout_argument(impl: Impl, make: Pools) -> None:
    pool = make(min_size=1, max_size=1, timeout=SOON)
    held = pool.getconn()
    started = time.monotonic()
    with pytest.raises(impl.mod.PoolTimeout), pool.connection(timeout=0.2):
        pass  # pragma: no cover
    assert time.monotonic() - started < SOON / 2
    pool.putconn(held)


def test_getconn_putconn(make: Pools) -> None:
    pool = make(min_size=2)
    pool.wait(SOON)
    conn = pool.getconn()
    assert isinstance(conn, psycopg.Connection)
    assert conn.execute("SELECT 1").fetchone() == (1,)
    assert available(pool) == 1
    pool.putconn(conn)
    assert wait_until(lambda: available(pool) == 2)
    assert not conn.closed


def test_getconn_sets_the_pool_on_the_connection(make: Pools) -> None:
    """psycopg relies on ``conn._pool`` (``with conn:`` does not close a
    pooled connection; ``close_returns`` finds its pool through it)."""
    pool = make(min_size=1)
    conn = pool.getconn()
    assert conn._pool is pool
    with conn:  # psycopg's own block: commits, and leaves a pooled connection open
        conn.execute("SELECT 1")
    assert not conn.closed
    pool.putconn(conn)


def test_returned_in_transaction_is_rolled_back_with_a_warning(
    make: Pools, dsn: str, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make(min_size=1, max_size=1)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    conn.execute(f"INSERT INTO {table} VALUES (1)")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    with caplog.at_level(logging.WARNING, logger="psycopg.pool"):
        pool.putconn(conn)
        assert wait_until(lambda: available(pool) == 1)
    assert any(
        r.name == "psycopg.pool" and r.levelno == logging.WARNING and "rolling back" in r.message
        for r in caplog.records
    )
    assert rows(dsn, table) == []
    again = pool.getconn()
    assert again.info.backend_pid == pid
    assert again.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    pool.putconn(again)


def test_returned_in_failed_transaction_is_rolled_back(make: Pools) -> None:
    pool = make(min_size=1, max_size=1)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute("SELECT 1 / 0")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    pool.putconn(conn)
    assert wait_until(lambda: available(pool) == 1)
    again = pool.getconn()
    assert again.info.backend_pid == pid
    assert again.execute("SELECT 2").fetchone() == (2,)
    pool.putconn(again)


def test_returned_broken_is_replaced(make: Pools, dsn: str) -> None:
    pool = make(min_size=1, max_size=1)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    terminate(dsn, pid)
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    assert conn.broken
    pool.putconn(conn)
    fresh = pool.getconn(timeout=SOON)
    assert fresh is not conn
    assert fresh.info.backend_pid != pid
    assert fresh.execute("SELECT 1").fetchone() == (1,)
    pool.putconn(fresh)
    assert pool.get_stats()["returns_bad"] == 1


def test_returned_closed_is_replaced(make: Pools) -> None:
    pool = make(min_size=1, max_size=1)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    conn.close()
    assert conn.closed
    pool.putconn(conn)
    fresh = pool.getconn(timeout=SOON)
    assert fresh.info.backend_pid != pid
    assert fresh.execute("SELECT 1").fetchone() == (1,)
    pool.putconn(fresh)
    assert pool.get_stats()["returns_bad"] == 1


def test_putconn_of_a_foreign_connection_raises_value_error(make: Pools, dsn: str) -> None:
    pool = make(min_size=1, max_size=1)
    other = make(min_size=1, max_size=1)
    borrowed = pool.getconn()
    with psycopg.connect(dsn) as stranger:
        with pytest.raises(ValueError):
            pool.putconn(stranger)
        assert not stranger.closed
    from_other = other.getconn()
    with pytest.raises(ValueError):
        pool.putconn(from_other)
    assert not from_other.closed
    other.putconn(from_other)
    pool.putconn(borrowed)
    assert wait_until(lambda: available(pool) == 1 and available(other) == 1)


def test_putconn_twice_raises_value_error(make: Pools) -> None:
    pool = make(min_size=1, max_size=1)
    conn = pool.getconn()
    pool.putconn(conn)
    with pytest.raises(ValueError):
        pool.putconn(conn)
    assert wait_until(lambda: available(pool) == 1)
    pool.putconn(pool.getconn())


def test_putconn_after_close_closes_the_connection(make: Pools) -> None:
    pool = make(min_size=1)
    conn = pool.getconn()
    pool.close()
    assert not conn.closed
    pool.putconn(conn)
    assert conn.closed


def test_close_returns(make: Pools) -> None:
    pool = make(min_size=1, max_size=1, close_returns=True)
    assert pool.close_returns is True
    conn = pool.getconn()
    pid = conn.info.backend_pid
    conn.close()  # gives it back instead
    assert not conn.closed
    assert wait_until(lambda: available(pool) == 1)
    again = pool.getconn()
    assert again.info.backend_pid == pid
    pool.putconn(again)
    pool.close()
    assert again.closed


# ================================================================== callbacks


def test_configure_runs_once_per_connection(make: Pools) -> None:
    configured: list[int] = []

    def configure(conn: Any) -> None:
        conn.execute("SET application_name = 'configured'")
        conn.commit()
        configured.append(conn.info.backend_pid)

    pool = make(min_size=2, configure=configure)
    pool.wait(SOON)
    for _ in range(5):
        with pool.connection() as conn:
            assert conn.execute("SHOW application_name").fetchone() == ("configured",)
            assert conn.info.backend_pid in configured
    assert len(configured) == 2
    assert len(set(configured)) == 2


def test_configure_leaving_a_transaction_discards_the_connection(make: Pools) -> None:
    configured: list[int] = []

    def configure(conn: Any) -> None:
        configured.append(conn.info.backend_pid)
        if len(configured) == 1:
            conn.execute("SELECT 1")  # leaves a transaction open: not allowed

    pool = make(min_size=1, max_size=1, configure=configure)
    pool.wait(SOON)
    assert len(configured) >= 2
    with pool.connection() as conn:
        assert conn.info.backend_pid != configured[0]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_reset_runs_on_every_return(make: Pools) -> None:
    resets: list[int] = []

    def reset(conn: Any) -> None:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        conn.execute("RESET application_name")
        resets.append(conn.info.backend_pid)

    pool = make(min_size=1, max_size=1, reset=reset, kwargs={"autocommit": True})
    for n in range(1, 4):
        with pool.connection() as conn:
            conn.execute("SET application_name = 'dirty'")
        assert wait_until(lambda n=n: len(resets) == n)  # type: ignore[misc]
    with pool.connection() as conn:
        assert conn.execute("SHOW application_name").fetchone() != ("dirty",)


def test_reset_runs_after_the_rollback(make: Pools) -> None:
    seen: list[Any] = []

    def reset(conn: Any) -> None:
        seen.append(conn.info.transaction_status)

    pool = make(min_size=1, max_size=1, reset=reset)
    conn = pool.getconn()
    conn.execute("SELECT 1")
    pool.putconn(conn)
    assert wait_until(lambda: len(seen) == 1)
    assert seen == [psycopg.pq.TransactionStatus.IDLE]


def test_reset_leaving_a_transaction_discards_the_connection(make: Pools) -> None:
    def reset(conn: Any) -> None:
        conn.execute("SELECT 1")  # leaves a transaction open: not allowed

    pool = make(min_size=1, max_size=1, reset=reset)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    pool.putconn(conn)
    fresh = pool.getconn(timeout=SOON)
    assert fresh.info.backend_pid != pid
    assert conn.closed
    pool.putconn(fresh)


def test_reset_raising_discards_the_connection(make: Pools) -> None:
    def reset(conn: Any) -> None:
        raise RuntimeError("no")

    pool = make(min_size=1, max_size=1, reset=reset)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    pool.putconn(conn)
    fresh = pool.getconn(timeout=SOON)
    assert fresh.info.backend_pid != pid
    assert conn.closed


def test_check_callback_used(make: Pools) -> None:
    """The check runs on the connection about to be handed out.

    The connection has been idle longer than pypool's ``check_after`` (1 s),
    so both implementations run the check (psycopg_pool runs it at every
    getconn, pypool only then).
    """
    checked: list[int] = []
    pool = make(min_size=1, max_size=1, check=lambda conn: checked.append(conn.info.backend_pid))
    pool.wait(SOON)
    time.sleep(1.2)
    with pool.connection(timeout=SOON) as conn:
        assert checked == [conn.info.backend_pid]


def test_failing_check_on_a_broken_connection_replaces_it(make: Pools, dsn: str) -> None:
    checked: list[int] = []

    def check(conn: Any) -> None:
        checked.append(conn.info.backend_pid)
        conn.execute("SELECT 1")
        conn.rollback()

    pool = make(min_size=1, max_size=1, check=check)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    pool.putconn(conn)
    terminate(dsn, pid)
    time.sleep(1.2)
    with pool.connection(timeout=SOON) as conn:
        assert conn.info.backend_pid != pid
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert checked[0] == pid


def test_check_connection_as_check_callback(impl: Impl, make: Pools, dsn: str) -> None:
    pool = make(min_size=1, max_size=1, check=impl.mod.ConnectionPool.check_connection)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    pool.putconn(conn)
    terminate(dsn, pid)
    time.sleep(1.2)  # past pypool's check_after
    with pool.connection(timeout=SOON) as conn:
        assert conn.info.backend_pid != pid
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_check_connection_static(impl: Impl, dsn: str) -> None:
    check_connection = impl.mod.ConnectionPool.check_connection
    with psycopg.connect(dsn) as conn:
        check_connection(conn)
        assert not conn.autocommit
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        pid = conn.info.backend_pid
        terminate(dsn, pid)
        with pytest.raises(psycopg.OperationalError):
            check_connection(conn)


def test_callable_conninfo_and_kwargs_are_read_for_every_connection(make: Pools, dsn: str) -> None:
    calls = {"conninfo": 0, "kwargs": 0}

    def conninfo() -> str:
        calls["conninfo"] += 1
        return dsn

    def kwargs() -> dict[str, Any]:
        calls["kwargs"] += 1
        return {"application_name": f"compat{calls['kwargs']}"}

    pool = make(conninfo, kwargs=kwargs, min_size=2)
    pool.wait(SOON)
    assert calls == {"conninfo": 2, "kwargs": 2}
    a, b = pool.getconn(), pool.getconn()
    names = {c.execute("SHOW application_name").fetchone()[0] for c in (a, b)}
    assert names == {"compat1", "compat2"}
    pool.putconn(a)
    pool.putconn(b)
    pool.drain()
    assert wait_until(lambda: calls["conninfo"] == 4 and available(pool) == 2)
    assert calls == {"conninfo": 4, "kwargs": 4}


# ================================================================== maintenance


def test_resize(make: Pools) -> None:
    pool = make(min_size=1, max_size=1)
    pool.wait(SOON)
    pool.resize(2, 3)
    assert (pool.min_size, pool.max_size) == (2, 3)
    assert wait_until(lambda: pool.get_stats()["pool_size"] == 2)
    held = [pool.getconn() for _ in range(3)]
    assert len({c.info.backend_pid for c in held}) == 3
    for conn in held:
        pool.putconn(conn)
    pool.resize(1)
    assert (pool.min_size, pool.max_size) == (1, 1)
    stats = pool.get_stats()
    assert (stats["pool_min"], stats["pool_max"]) == (1, 1)
    with pytest.raises(ValueError):
        pool.resize(3, 2)


def test_check_discards_a_killed_idle_connection(make: Pools, dsn: str) -> None:
    pool = make(min_size=2)
    pool.wait(SOON)
    a, b = pool.getconn(), pool.getconn()
    pids = {a.info.backend_pid, b.info.backend_pid}
    pool.putconn(a)
    pool.putconn(b)
    terminate(dsn, a.info.backend_pid)
    pool.check()
    assert wait_until(lambda: available(pool) == 2)
    c, d = pool.getconn(), pool.getconn()
    now = {c.info.backend_pid, d.info.backend_pid}
    assert now & pids == {b.info.backend_pid}
    pool.putconn(c)
    pool.putconn(d)
    assert pool.get_stats()["connections_lost"] == 1


def test_drain_replaces_every_connection(make: Pools) -> None:
    pool = make(min_size=2)
    pool.wait(SOON)
    before = [pool.getconn() for _ in range(2)]
    pids = {c.info.backend_pid for c in before}
    held = before.pop()
    pool.putconn(before[0])
    pool.drain()
    pool.putconn(held)  # borrowed during the drain: replaced at its return
    assert wait_until(lambda: available(pool) == 2)
    after = [pool.getconn() for _ in range(2)]
    assert not pids & {c.info.backend_pid for c in after}
    for conn in after:
        pool.putconn(conn)


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


def test_stats_keys(make: Pools) -> None:
    pool = make(min_size=2, max_size=3)
    pool.wait(SOON)
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


def test_pop_stats_resets_counters(make: Pools) -> None:
    pool = make(min_size=1, max_size=1)
    pool.wait(SOON)
    for _ in range(3):
        with pool.connection():
            pass
    popped = pool.pop_stats()
    assert popped["requests_num"] == 3
    assert popped["connections_num"] == 1
    assert set(popped) >= GAUGES
    after = pool.get_stats()
    assert {k: after.get(k, 0) for k in COUNTERS} == dict.fromkeys(COUNTERS, 0)
    assert after["pool_size"] == 1  # gauges are not reset
    with pool.connection():
        pass
    assert pool.get_stats()["requests_num"] == 1


def test_stats_count_a_timeout(make: Pools) -> None:
    pool = make(min_size=1, max_size=1, timeout=0.1)
    pool.wait(SOON)
    held = pool.getconn()
    with pytest.raises(psycopg.OperationalError):
        pool.getconn()
    pool.putconn(held)
    stats = pool.get_stats()
    assert stats["requests_errors"] == 1


def test_stats_count_failed_requests(make: Pools) -> None:
    pool = make(min_size=1, max_size=1, timeout=0.1)
    pool.wait(SOON)
    held = pool.getconn()
    with pytest.raises(psycopg.OperationalError):
        pool.getconn()
    pool.putconn(held)
    stats = pool.get_stats()
    assert stats["requests_num"] == 2
    assert stats["requests_queued"] == 1
    assert stats["requests_wait_ms"] >= 50


def test_stats_count_too_many_requests_as_errors(make: Pools) -> None:
    pool = make(min_size=1, max_size=1, max_waiting=1, timeout=SOON)
    held = pool.getconn()
    waiter, got = start_waiter(pool)
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    with pytest.raises(psycopg.OperationalError):
        pool.getconn()
    pool.putconn(held)
    waiter.join(SOON)
    pool.putconn(got[0])
    assert pool.get_stats().get("requests_errors", 0) == 1


# ================================================================== errors


def start_waiter(pool: Any, timeout: float = SOON) -> tuple[threading.Thread, list[Any]]:
    got: list[Any] = []

    def wait() -> None:
        try:
            got.append(pool.getconn(timeout=timeout))
        except Exception as exc:
            got.append(exc)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, got


def test_pool_timeout_on_exhaustion(impl: Impl, make: Pools) -> None:
    pool = make(min_size=1, max_size=1, timeout=0.2)
    held = pool.getconn()
    started = time.monotonic()
    with pytest.raises(impl.mod.PoolTimeout) as info:
        pool.getconn()
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < SOON / 2
    assert isinstance(info.value, psycopg.OperationalError)
    assert isinstance(info.value, impl.mod.PoolTimeout)
    assert "0.20 sec" in str(info.value)
    with pytest.raises(impl.mod.PoolTimeout):
        pool.getconn(timeout=0.05)
    pool.putconn(held)
    pool.putconn(pool.getconn())


def test_too_many_requests(impl: Impl, make: Pools) -> None:
    pool = make(min_size=1, max_size=1, max_waiting=1, timeout=SOON)
    held = pool.getconn()
    waiter, got = start_waiter(pool)
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    started = time.monotonic()
    with pytest.raises(impl.mod.TooManyRequests) as info:
        pool.getconn()
    assert time.monotonic() - started < 1.0  # refused at once, not after a wait
    assert isinstance(info.value, psycopg.OperationalError)
    assert "1 requests waiting" in str(info.value)
    pool.putconn(held)
    waiter.join(SOON)
    assert got and got[0] is held  # handed straight to the waiter
    pool.putconn(got[0])


def test_error_classes(impl: Impl) -> None:
    for name in ("PoolTimeout", "PoolClosed", "TooManyRequests"):
        cls = getattr(impl.mod, name)
        assert issubclass(cls, psycopg.OperationalError)
        assert issubclass(cls, psycopg.Error)


def test_pypool_errors_are_both_kinds(pypool_impl: Impl) -> None:
    """pypool's classes are psycopg's errors and pypool's at once."""
    import pypool

    for name in ("PoolTimeout", "PoolClosed", "TooManyRequests"):
        cls = getattr(pypool.psycopg, name)
        assert issubclass(cls, getattr(pypool, name))
        assert issubclass(cls, psycopg.OperationalError)


def test_pool_closed_wakes_waiters(impl: Impl, make: Pools) -> None:
    pool = make(min_size=1, max_size=1, timeout=SOON)
    held = pool.getconn()
    waiter, got = start_waiter(pool)
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    pool.close()
    waiter.join(SOON)
    assert got and isinstance(got[0], impl.mod.PoolClosed)
    pool.putconn(held)
    assert held.closed


# ================================================================== null pool


def test_null_pool_min_size_must_be_zero(impl: Impl, dsn: str) -> None:
    with pytest.raises(ValueError, match="min_size"):
        impl.null_pool(dsn, min_size=1, open=False)


def test_null_pool_defaults(make: Pools) -> None:
    pool = make.null(max_size=2)
    assert pool.min_size == 0
    assert pool.max_size == 2
    stats = pool.get_stats()
    assert (stats["pool_min"], stats["pool_max"], stats["pool_size"]) == (0, 2, 0)


def test_null_pool_unbounded_max_size_is_zero(
    request: pytest.FixtureRequest, impl: Impl, make: Pools
) -> None:
    pool = make.null()
    assert pool.get_stats()["pool_max"] == 0
    assert pool.max_size == 0


def test_null_pool_closes_connections_on_return(make: Pools) -> None:
    pool = make.null(max_size=2)
    pids = []
    for _ in range(3):
        conn = pool.getconn()
        pids.append(conn.info.backend_pid)
        pool.putconn(conn)
        assert conn.closed
    assert len(set(pids)) == 3
    with pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert conn.closed
    assert pool.get_stats()["pool_size"] == 0


def test_null_pool_max_size_bounds_concurrency(make: Pools) -> None:
    pool = make.null(max_size=2, timeout=SOON)
    lock = threading.Lock()
    active = [0, 0]  # now, peak
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with pool.connection() as conn:
                with lock:
                    active[0] += 1
                    active[1] = max(active[1], active[0])
                conn.execute("SELECT pg_sleep(0.1)")
                with lock:
                    active[0] -= 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SOON)
    assert not errors
    assert active[1] == 2


def test_null_pool_hands_a_returned_connection_to_a_waiter(make: Pools) -> None:
    pool = make.null(max_size=1, timeout=SOON)
    held = pool.getconn()
    waiter, got = start_waiter(pool)
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    pool.putconn(held)
    waiter.join(SOON)
    assert got[0] is held
    assert not held.closed
    pool.putconn(held)
    assert held.closed


def test_null_pool_timeout(impl: Impl, make: Pools) -> None:
    pool = make.null(max_size=1, timeout=0.2)
    held = pool.getconn()
    with pytest.raises(impl.mod.PoolTimeout):
        pool.getconn()
    pool.putconn(held)


def test_null_pool_wait(make: Pools) -> None:
    pool = make.null()
    pool.wait(SOON)
    assert not pool.closed


def test_null_pool_wait_unreachable_raises(
    request: pytest.FixtureRequest, impl: Impl, make: Pools
) -> None:
    pool = make.null(unreachable_conninfo())
    with pytest.raises(impl.mod.PoolTimeout):
        pool.wait(timeout=1.0)
    assert pool.closed


def test_null_pool_resize(impl: Impl, make: Pools) -> None:
    pool = make.null(max_size=1)
    pool.resize(0, 3)
    assert pool.max_size == 3


def test_null_pool_resize_min_size_refused(
    request: pytest.FixtureRequest, impl: Impl, make: Pools
) -> None:
    pool = make.null(max_size=2)
    with pytest.raises(ValueError, match="min_size"):
        pool.resize(1, 2)


# ================================================================== deliberate differences
# pypool only: what docs/psycopg-migration.md says pypool does differently.


def test_pypool_reuses_the_most_recently_returned_connection(make_pypool: Pools) -> None:
    pool = make_pypool(min_size=3)
    pool.wait(SOON)
    pids = []
    for _ in range(4):
        with pool.connection() as conn:
            pids.append(conn.info.backend_pid)
    assert len(set(pids)) == 1


def test_pypool_lifo_false_is_round_robin(make_pypool: Pools) -> None:
    pool = make_pypool(min_size=3, lifo=False)
    pool.wait(SOON)
    pids = []
    for _ in range(6):
        with pool.connection() as conn:
            pids.append(conn.info.backend_pid)
    assert len(set(pids)) == 3
    assert pids[:3] == pids[3:]


def test_psycopg_pool_is_round_robin(dsn: str) -> None:
    """The behaviour ``lifo=False`` gives back."""
    with psycopg_pool.ConnectionPool(dsn, min_size=3) as pool:
        pool.wait(SOON)
        pids = []
        for _ in range(6):
            with pool.connection() as conn:
                pids.append(conn.info.backend_pid)
    assert len(set(pids)) == 3


def test_pypool_check_runs_only_after_check_after(make_pypool: Pools) -> None:
    checked: list[int] = []
    pool = make_pypool(min_size=1, max_size=1, check=lambda conn: checked.append(1))
    pool.wait(SOON)
    time.sleep(1.2)  # idle longer than check_after (1 s): checked once
    for _ in range(5):
        with pool.connection():
            pass
    assert len(checked) == 1


def test_pypool_check_raising_discards_a_working_connection(make_pypool: Pools) -> None:
    """psycopg_pool puts a connection whose check raised back into the pool
    if it is not closed, and tries again after a pause; pypool discards it
    and hands out another."""
    checked: list[int] = []

    def check(conn: Any) -> None:
        checked.append(conn.info.backend_pid)
        if len(checked) == 1:
            raise psycopg.OperationalError("failing the first check")

    pool = make_pypool(min_size=1, max_size=1, check=check)
    pool.wait(SOON)
    time.sleep(1.2)
    with pool.connection(timeout=SOON) as conn:
        assert conn.info.backend_pid != checked[0]
    assert len(checked) == 1  # a new connection is not checked
    assert pool.get_stats()["connections_num"] == 2


def test_pypool_check_after_zero_checks_every_getconn(make_pypool: Pools) -> None:
    checked: list[int] = []
    pool = make_pypool(min_size=1, max_size=1, check=lambda conn: checked.append(1), check_after=0)
    pool.wait(SOON)
    for _ in range(5):
        with pool.connection():
            pass
    assert len(checked) == 5


def test_pypool_checks_idle_connections_without_a_check_callback(
    make_pypool: Pools, dsn: str
) -> None:
    pool = make_pypool(min_size=1, max_size=1)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    pool.putconn(conn)
    terminate(dsn, pid)
    time.sleep(1.2)
    with pool.connection(timeout=SOON) as conn:
        assert conn.info.backend_pid != pid
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_psycopg_pool_hands_out_a_killed_idle_connection(dsn: str) -> None:
    """What pypool's check before hand-out avoids."""
    with psycopg_pool.ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        conn = pool.getconn()
        pid = conn.info.backend_pid
        pool.putconn(conn)
        terminate(dsn, pid)
        time.sleep(1.2)
        with pytest.raises(psycopg.OperationalError), pool.connection() as conn:
            conn.execute("SELECT 1")


def test_pypool_check_false_never_checks(make_pypool: Pools, dsn: str) -> None:
    pool = make_pypool(min_size=1, max_size=1, check=False)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    pool.putconn(conn)
    terminate(dsn, pid)
    time.sleep(1.2)
    with pytest.raises(psycopg.OperationalError), pool.connection() as conn:
        conn.execute("SELECT 1")


def test_pypool_enforces_lifetime_at_hand_out(make_pypool: Pools) -> None:
    pool = make_pypool(min_size=1, max_size=1, max_lifetime=0.5)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    pool.putconn(conn)
    time.sleep(0.7)
    with pool.connection(timeout=SOON) as conn:
        assert conn.info.backend_pid != pid


def test_pypool_extra_keywords(make_pypool: Pools) -> None:
    pool = make_pypool(
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
        with pool.connection(timeout=SOON) as conn:
            pids.append(conn.info.backend_pid)
    assert pids[0] == pids[1] != pids[2] == pids[3]  # max_uses=2


def test_pypool_unknown_keyword_is_a_type_error(pypool_impl: Impl, dsn: str) -> None:
    with pytest.raises(TypeError):
        pypool_impl.pool(dsn, open=False, no_such_option=1)


def test_pypool_resize_shrinks_at_once(make_pypool: Pools) -> None:
    pool = make_pypool(min_size=2, max_size=2)
    pool.wait(SOON)
    pool.resize(1)
    assert pool.get_stats()["pool_size"] == 1


def test_pypool_null_pool_connects_on_a_worker_thread(make_pypool: Pools) -> None:
    threads: list[threading.Thread] = []
    pool = make_pypool.null(configure=lambda conn: threads.append(threading.current_thread()))
    with pool.connection():
        pass
    assert threads and threads[0] is not threading.current_thread()


def test_pypool_usage_ms_counts_getconn_putconn(make_pypool: Pools) -> None:
    pool = make_pypool(min_size=1, max_size=1)
    conn = pool.getconn()
    time.sleep(0.1)
    pool.putconn(conn)
    assert pool.get_stats()["usage_ms"] >= 90


def test_pypool_reset_runs_in_putconn(make_pypool: Pools) -> None:
    """psycopg_pool runs ``reset`` on a worker; pypool in ``putconn`` itself."""
    threads: list[threading.Thread] = []
    pool = make_pypool(
        min_size=1, max_size=1, reset=lambda c: threads.append(threading.current_thread())
    )
    pool.putconn(pool.getconn())
    assert threads == [threading.current_thread()]


class _NoConnection(psycopg.Connection):  # type: ignore[type-arg]
    """A connection class whose connect() gives nothing back."""

    @classmethod
    def connect(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return None


def test_pypool_factory_returning_none_is_a_failed_connect(make_pypool: Pools) -> None:
    """A ``connection_class.connect()`` that returns None fails the connect:
    counted, retried, and the caller's PoolTimeout says what happened."""
    pool = make_pypool(connection_class=_NoConnection, min_size=0, max_size=1, timeout=0.5)
    with pytest.raises(pypool.psycopg.PoolTimeout) as info:
        pool.getconn()
    cause = info.value.__cause__
    assert isinstance(cause, pypool.ConnectionFailed), repr(cause)
    assert "returned None" in str(cause)
    assert pool.get_stats()["connections_errors"] >= 1
    assert wait_until(lambda: pool.stats()[pypool.stats.CONNECTING] == 0)


# ------------------------------------------------------------------ warnings helpers


class warnings_recorded:
    """Records every warning raised inside the block."""

    def __enter__(self) -> list[Any]:
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self.records = self._cm.__enter__()
        warnings.simplefilter("always")
        return self.records

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)


def deprecations(records: list[Any]) -> list[Any]:
    return [r for r in records if issubclass(r.category, DeprecationWarning)]
