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
    module every pool is made on (``_core=``).
    """

    name: str
    core: ModuleType | None

    @property
    def is_pypool(self) -> bool:
        return self.core is not None

    @property
    def mod(self) -> ModuleType:
        return psycopg_pool if self.core is None else pypool.psycopg

    def _kw(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.core is not None:
            kwargs["_core"] = self.core
        return kwargs

    def pool(self, *args: Any, **kwargs: Any) -> Any:
        return self.mod.ConnectionPool(*args, **self._kw(kwargs))

    def null_pool(self, *args: Any, **kwargs: Any) -> Any:
        return self.mod.NullConnectionPool(*args, **self._kw(kwargs))


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



# ================================================================== open / close



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




# ================================================================== callbacks



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



# ================================================================== maintenance



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



# ================================================================== null pool




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
