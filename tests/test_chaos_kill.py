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
LOAD_SECONDS = 8.0


class Target:
    """One database: how to connect, what to run, how to kill a backend."""

    name: str

    def factory(self) -> Any: ...

    def backend(self, conn: Any) -> int: ...

    def query(self, conn: Any) -> int: ...

    def kill(self, pid: int) -> bool: ...


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


@pytest.mark.timeout(90)
def test_backends_killed_under_load(target: Any) -> None:
    core = native_core()
    live: set[int] = set()
    live_lock = threading.Lock()

    def remember(conn: Any) -> None:
        with live_lock:
            live.add(target.backend(conn))

    pool = with_core(
        Pool,
        core,
        target.factory(),
        min_size=MAX_SIZE,
        max_size=MAX_SIZE,
        timeout=ACQUIRE_TIMEOUT,
        configure=remember,
        name=f"chaos-kill-{target.name}",
    )

    def pids() -> list[int]:
        with live_lock:
            return sorted(live)

    def kill(pid: int) -> bool:
        with live_lock:
            live.discard(pid)
        return bool(target.kill(pid))

    acquires = Timer(acquire_limit(ACQUIRE_TIMEOUT))
    errors: list[BaseException] = []
    done = [0] * THREADS
    stop = threading.Event()

    def work(i: int) -> None:
        while not stop.is_set():
            try:
                conn = acquires.timed(pool.acquire)
                pool.release(conn)
                pool.run(target.query, retries=3, backoff=0.01)
                done[i] += 1
            except Exception as exc:
                errors.append(exc)

    try:
        pool.wait(15.0)
        load = seconds(LOAD_SECONDS)
        started = time.monotonic()
        with Killer(pids, kill, KILL_EVERY) as killer:
            timer = threading.Timer(load, stop.set)
            timer.start()
            stuck = run_threads(THREADS, work, join_timeout=load + 30.0)
            timer.cancel()
        elapsed = time.monotonic() - started
        stop.set()
        assert not stuck, f"threads stuck: {stuck}"
        stats = pool.stats()
        figures = {
            "threads": THREADS,
            "max_size": MAX_SIZE,
            "seconds": round(elapsed, 2),
            "kills": killer.kills,
            "requests": sum(done),
            "requests_per_second": round(sum(done) / elapsed),
            "caller_errors": len(errors),
            "acquire_slowest_s": round(acquires.slowest, 3),
            "acquire_limit_s": acquires.limit,
            "acquires_late": len(acquires.late),
            "timeouts": stats[names.TIMEOUTS],
            "lost": stats[names.LOST],
            **balanced(pool),
        }
        record(f"kill-{target.name}", figures)
        assert killer.kills >= load / KILL_EVERY / 4, figures  # the kills did happen
        assert stats[names.LOST] > 0, "no connection was found broken: did the kills land?"
        assert not errors, f"{len(errors)} caller errors, first: {errors[0]!r}"
        assert not acquires.late, f"acquires past {acquires.limit} s: {acquires.late[:5]}"
    finally:
        stop.set()
        pool.close()


def test_the_killer_harness_reports_its_own_failure() -> None:
    """A killer whose kill raises makes the scenario fail, not pass."""

    def boom(pid: int) -> bool:
        raise RuntimeError("kill failed")

    pids: Callable[[], list[int]] = lambda: [1]  # noqa: E731
    with pytest.raises(RuntimeError, match="kill failed"), Killer(pids, boom, 0.01):
        time.sleep(0.2)
