"""Chaos: backends killed at random under load (marker ``chaos``).

Sixteen threads borrow from a ``pypool.Pool`` of eight connections while a
killer thread ends one of the pool's backends every 200 ms: PostgreSQL with
``pg_terminate_backend``, MariaDB with ``KILL``. Each thread times a bare
``acquire()``/``release()`` and runs a query through ``pool.run(fn,
retries=3)``. Asserted: the callers see no error at all (a killed
connection is discarded and the work runs again on a fresh one), every
acquire returns within its timeout + max(10 %, 100 ms), no thread is stuck,
and the pool's counts balance afterwards. Native core.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from _support.chaos import (
    Killer,
    Timer,
    acquire_limit,
    balanced,
    native_core,
    psycopg_pool_or_none,
    record,
    run_threads,
    seconds,
    with_core,
)
from _support.databases import mysql_params
from pypool import Pool, dbapi
from pypool import stats as names

pytestmark = [pytest.mark.chaos, pytest.mark.db, pytest.mark.native]

THREADS = 16
MAX_SIZE = 8
KILL_EVERY = 0.2
ACQUIRE_TIMEOUT = 5.0
RETRIES = 3
LOAD_SECONDS = 8.0


class Target:
    """One database: how to connect, what to run, how to kill a backend."""

    name: str

    def factory(self) -> Any:
        raise NotImplementedError

    def backend(self, conn: Any) -> int:
        raise NotImplementedError

    def query(self, conn: Any) -> int:
        raise NotImplementedError

    def kill(self, pid: int) -> bool:
        raise NotImplementedError


class Postgres(Target):
    name = "postgresql"

    def __init__(self, dsn: str) -> None:
        self.psycopg = pytest.importorskip("psycopg")
        self.dsn = dsn
        self.admin = self.psycopg.connect(dsn, autocommit=True, connect_timeout=5)

    def factory(self) -> Any:
        return dbapi.connect_factory(self.psycopg.connect, self.dsn)

    def backend(self, conn: Any) -> int:
        return int(conn.info.backend_pid)

    def query(self, conn: Any) -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM generate_series(1, 100)")
            value = cur.fetchone()[0]
        conn.commit()
        return int(value)

    def kill(self, pid: int) -> bool:
        row = self.admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
        return bool(row and row[0])

    def close(self) -> None:
        self.admin.close()


class MariaDB(Target):
    name = "mariadb"

    def __init__(self) -> None:
        self.pymysql = pytest.importorskip("pymysql")
        self.params = mysql_params()
        self.admin = self.pymysql.connect(**self.params, autocommit=True, connect_timeout=5)

    def factory(self) -> Any:
        return dbapi.connect_factory(self.pymysql.connect, **self.params)

    def backend(self, conn: Any) -> int:
        return int(conn.thread_id())

    def query(self, conn: Any) -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.CHARACTER_SETS")
            value = cur.fetchone()[0]
        conn.commit()
        return int(value)

    def kill(self, pid: int) -> bool:
        try:
            with self.admin.cursor() as cur:
                cur.execute(f"KILL {int(pid)}")
        except self.pymysql.err.OperationalError:  # already gone
            return False
        return True

    def close(self) -> None:
        self.admin.close()


@pytest.fixture(params=["postgresql", "mariadb"])
def target(request: pytest.FixtureRequest) -> Any:
    if request.param == "postgresql":
        made: Any = Postgres(request.getfixturevalue("dsn"))
    else:
        made = MariaDB()
    yield made
    made.close()


class Load:
    """``THREADS`` threads, each timing a bare acquire/release and then
    running the query through ``run(query)``, for ``seconds``, while a killer
    ends one of the backends the pool made every :data:`KILL_EVERY` s."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.live: set[int] = set()
        self.lock = threading.Lock()
        self.acquires = Timer(acquire_limit(ACQUIRE_TIMEOUT))
        self.errors: list[BaseException] = []
        self.done = [0] * THREADS

    def remember(self, conn: Any) -> None:
        """The pool's ``configure``: notes each new connection's backend."""
        with self.lock:
            self.live.add(self.target.backend(conn))

    def pids(self) -> list[int]:
        with self.lock:
            return sorted(self.live)

    def kill(self, pid: int) -> bool:
        with self.lock:
            self.live.discard(pid)
        return bool(self.target.kill(pid))

    def drive(
        self,
        acquire: Callable[[], Any],
        release: Callable[[Any], object],
        run: Callable[[Callable[[Any], int]], object],
    ) -> dict[str, Any]:
        stop = threading.Event()

        def work(i: int) -> None:
            while not stop.is_set():
                try:
                    release(self.acquires.timed(acquire))
                    run(self.target.query)
                    self.done[i] += 1
                except Exception as exc:
                    self.errors.append(exc)

        load = seconds(LOAD_SECONDS)
        started = time.monotonic()
        try:
            with Killer(self.pids, self.kill, KILL_EVERY) as killer:
                timer = threading.Timer(load, stop.set)
                timer.start()
                stuck = run_threads(THREADS, work, join_timeout=load + 30.0)
                timer.cancel()
        finally:
            stop.set()
        elapsed = time.monotonic() - started
        assert not stuck, f"threads stuck: {stuck}"
        return {
            "threads": THREADS,
            "max_size": MAX_SIZE,
            "seconds": round(elapsed, 2),
            "kills": killer.kills,
            "requests": sum(self.done),
            "requests_per_second": round(sum(self.done) / elapsed),
            "caller_errors": len(self.errors),
            "acquire_slowest_s": round(self.acquires.slowest, 3),
            "acquire_limit_s": self.acquires.limit,
            "acquires_late": len(self.acquires.late),
        }


@pytest.mark.timeout(60)
def test_backends_killed_under_load(target: Any) -> None:
    load = Load(target)
    pool = with_core(
        Pool,
        native_core(),
        target.factory(),
        min_size=MAX_SIZE,
        max_size=MAX_SIZE,
        timeout=ACQUIRE_TIMEOUT,
        configure=load.remember,
        name=f"chaos-kill-{target.name}",
    )
    try:
        pool.wait(15.0)
        figures = load.drive(
            pool.acquire, pool.release, lambda fn: pool.run(fn, retries=RETRIES, backoff=0.01)
        )
        stats = pool.stats()
        figures.update(timeouts=stats[names.TIMEOUTS], lost=stats[names.LOST], **balanced(pool))
        record(f"kill-{target.name}", figures)
        assert figures["kills"] >= seconds(LOAD_SECONDS) / KILL_EVERY / 4, figures
        assert stats[names.LOST] > 0, "no connection was found broken: did the kills land?"
        assert not load.errors, f"{len(load.errors)} caller errors, first: {load.errors[0]!r}"
        late = load.acquires.late
        assert not late, f"acquires past {load.acquires.limit} s: {late[:5]}"
    finally:
        pool.close()


@pytest.mark.timeout(60)
def test_psycopg_pool_beside(dsn: str) -> None:
    """The same load on psycopg_pool (reported, never asserted), with its
    recommended ``check`` and the same retries done by hand, as psycopg_pool
    has no ``run()``."""
    peer = psycopg_pool_or_none()
    if peer is None:
        pytest.skip("psycopg_pool is not installed: nothing to compare with")
    target = Postgres(dsn)
    load = Load(target)
    pool = peer.ConnectionPool(
        dsn,
        min_size=MAX_SIZE,
        max_size=MAX_SIZE,
        timeout=ACQUIRE_TIMEOUT,
        configure=load.remember,
        check=peer.ConnectionPool.check_connection,
        open=True,
        name="chaos-kill-peer",
    )

    def run(fn: Callable[[Any], int]) -> int:
        for attempt in range(RETRIES + 1):
            try:
                with pool.connection() as conn:
                    return fn(conn)
            except target.psycopg.OperationalError:
                if attempt == RETRIES:
                    raise
                time.sleep(0.01 * 2**attempt)
        raise AssertionError("unreachable")

    try:
        pool.wait(15.0)
        figures = load.drive(pool.getconn, pool.putconn, run)
        figures.update(timeouts=pool.get_stats().get("requests_errors", 0))  # its name for them
        record("kill-postgresql-psycopg_pool", figures)
    finally:
        pool.close()
        target.close()


def test_the_killer_harness_reports_its_own_failure() -> None:
    """A killer whose kill raises makes the scenario fail, not pass."""

    def boom(pid: int) -> bool:
        raise RuntimeError("kill failed")

    pids: Callable[[], list[int]] = lambda: [1]  # noqa: E731
    with pytest.raises(RuntimeError, match="kill failed"), Killer(pids, boom, 0.01):
        time.sleep(0.2)
