"""``pypool.psycopg`` against ``psycopg_pool``: the same scenarios, side by side.

Every compatibility test runs on three implementations (the ``impl`` fixture):
``psycopg_pool`` itself and ``pypool.psycopg`` on each core (``native`` and
``python``), and asserts the same observable results on all three. Where
pypool deliberately differs (``docs/psycopg-migration.md``: which idle
connection is reused first, when checks run, lifetime enforced at hand-out,
connects on worker threads) the scenario is arranged so that the difference
does not show, and pypool's own behaviour is asserted in the tests of the
"Deliberate differences" section at the end, which run on pypool only.

Only the ``check`` callback's scenarios and the garbage collection of a
dropped pool are left here (both are being reworked); every other scenario
runs once, on the sync and the async pools alike, in
``test_psycopg_matrix.py``.

Needs PostgreSQL (``dsn`` fixture): skipped with the reason when it cannot be
reached, unless ``PYPOOL_REQUIRE_DB=1``.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")
psycopg_pool = pytest.importorskip("psycopg_pool")

import pypool.psycopg  # noqa: E402
from _support.cores import PYTHON_MODULE, import_native_core  # noqa: E402
from _support.waiting import wait_until  # noqa: E402

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


# ================================================================== deliberate differences
# pypool only: what docs/psycopg-migration.md says pypool does differently.


def test_pypool_check_runs_only_after_check_after(make_pypool: Pools) -> None:
    """With ``check=`` given every hand-out is checked (as psycopg_pool does),
    unless ``check_after`` is given too: then only past it."""
    checked: list[int] = []
    pool = make_pypool(
        min_size=1, max_size=1, check=lambda conn: checked.append(1), check_after=1.0
    )
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
    assert len(checked) == 2  # the new connection is checked too
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
