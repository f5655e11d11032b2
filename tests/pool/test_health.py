"""Keeping a ``pypool.Pool`` healthy, against a real PostgreSQL, on both
cores: idle retirement, lifetime replacement under load, abandon reports
(the session ends), ``wait()`` / ``open(wait=...)``, ``reconnect_failed``
and the statistics. A silently dropping network is tested in
test_silent_network.py, ``run()`` in test_run.py.

Every test here needs a server (marker ``db``): PostgreSQL from the ``dsn``
fixture (``PYPOOL_TEST_DSN``). An unreachable server skips them, unless
``PYPOOL_REQUIRE_DB=1``.
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from _support import databases
from _support.waiting import wait_until
from pypool import stats
from pypool.dbapi import connect_factory
from pypool.errors import ConnectionFailed, PoolTimeout
from pypool.pool.shared import maintenance_interval as _maintenance_interval

psycopg = pytest.importorskip("psycopg")

pytestmark = pytest.mark.db


# ------------------------------------------------------------------ helpers


def pid(conn: Any) -> int:
    """The backend pid of a psycopg connection (one round trip)."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def open_count(pool: Any) -> int:
    """Connections open now: idle, borrowed, or claimed by maintenance."""
    s = pool.stats()[stats.COUNT]
    return int(s["idle"] + s["used"])


def dead_port() -> int:
    """A local port nobody listens on (connects are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dsn_with(dsn: str, **params: Any) -> str:
    """``dsn`` with libpq keywords added or replaced."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, **params)


@pytest.fixture
def pools(core_module: ModuleType) -> Iterator[Callable[..., Any]]:
    """``make(factory, **kw)``: a Pool on the core under test, closed at the end."""
    with databases.pools_on(core_module) as make:
        yield make


@pytest.fixture
def pg_pool(dsn: str, pools: Any) -> Callable[..., Any]:
    """``make(**kw)``: a psycopg 3 pool on the test database."""

    def make(**kw: Any) -> Any:
        bounds = {k: kw.pop(k) for k in ("connect_timeout", "io_timeout") if k in kw}
        bounds.setdefault("connect_timeout", 5)
        return pools(connect_factory(psycopg.connect, dsn, **bounds), **kw)

    return make


@pytest.fixture
def admin(dsn: str) -> Iterator[Any]:
    conn = psycopg.connect(dsn, autocommit=True)
    yield conn
    conn.close()


def alive(admin: Any, pids: set[int]) -> set[int]:
    """Which of ``pids`` are backends still connected."""
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", [list(pids)]
    ).fetchall()
    return {int(r[0]) for r in rows}


def terminate(admin: Any, backend: int) -> None:
    """Ends the backend ``backend`` and waits until it is gone."""
    admin.execute("SELECT pg_terminate_backend(%s)", [backend])
    assert wait_until(lambda: not alive(admin, {backend}), 5.0)


# ------------------------------------------------------------ idle, lifetime


@pytest.mark.timeout(30)
def test_idle_connections_retired_down_to_min_size(pg_pool: Any, admin: Any) -> None:
    pool = pg_pool(min_size=1, max_size=5, max_idle=0.3)
    assert _maintenance_interval(pool._settings) <= 0.3 / 4
    pool.wait(5.0)
    conns = [pool.acquire() for _ in range(4)]
    pids = {pid(c) for c in conns}
    for c in conns:
        pool.release(c)
    assert pool.size == 4 and open_count(pool) == 4
    started = time.monotonic()
    assert wait_until(lambda: pool.size == 1, 5.0), pool
    took = time.monotonic() - started
    print(f"\n{pool.core}: idle connections retired to min_size after {took:.2f} s")
    assert took < 2.0
    time.sleep(0.6)  # several more passes: never below min_size
    assert pool.size == 1 and open_count(pool) == 1
    s = pool.stats()
    assert s[stats.RETIRED] == {"idle": 3}
    assert s[stats.CREATED] - s[stats.CLOSED] == 1
    assert wait_until(lambda: len(alive(admin, pids)) == 1, 5.0), "retired backends closed"


@pytest.mark.timeout(30)
def test_max_lifetime_replaces_every_connection_under_load(pg_pool: Any, admin: Any) -> None:
    pool = pg_pool(min_size=2, max_size=4, max_lifetime=1.0)
    pool.wait(5.0)
    first = [pool.acquire(), pool.acquire()]
    originals = {pid(c) for c in first}
    for c in first:
        pool.release(c)
    del first
    stop = threading.Event()
    lowest = {"size": pool.size, "open": open_count(pool)}
    served: list[tuple[float, int]] = []
    errors: list[BaseException] = []

    def sample() -> None:
        while not stop.is_set():
            lowest["size"] = min(lowest["size"], pool.size)
            lowest["open"] = min(lowest["open"], open_count(pool))
            time.sleep(0.0005)

    def work() -> None:
        try:
            while not stop.is_set():
                with pool.connection() as conn:
                    served.append((time.monotonic(), pid(conn)))
                time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sample)] + [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(3.5)
    stop.set()
    for t in threads:
        t.join(10.0)
    end = time.monotonic()
    late = {p for t, p in served if t > end - 0.5}
    s = pool.stats()
    print(
        f"\n{pool.core}: {len(served)} requests in 3.5 s, lowest size {lowest['size']}, "
        f"lowest open {lowest['open']}, retired {s[stats.RETIRED]}"
    )
    assert not errors
    assert late and not late & originals, "late requests were served by original connections"
    assert not alive(admin, originals), "every original connection was replaced"
    assert s[stats.RETIRED].get("expired", 0) >= 2
    assert lowest["size"] >= 2, "the pool fell below min_size"
    # The open count (idle + used) may still dip while a connection that
    # expired in a borrower's hands is being replaced: see
    # test_borrowed_connection_replaced_ahead_of_expiry in test_recycle.py.


# ------------------------------------------------------------------ abandon


@pytest.mark.timeout(30)
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_abandoned_connection_is_recovered(
    pg_pool: Any, admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pypool")
    pool = pg_pool(max_size=1)
    abandoned: list[int] = []
    pool.add_listener("abandon", lambda p, slot: abandoned.append(slot))
    conn = pool.acquire()
    lost_pid = pid(conn)
    slot = pool._core.slot_of(conn)
    assert pool.size == 1
    del conn
    gc.collect()
    assert wait_until(lambda: abandoned == [slot], 5.0), abandoned
    assert wait_until(lambda: pool.size == 0 or pool.idle == 1, 5.0)
    with pool.connection(timeout=5.0) as conn:  # the slot is usable again
        assert pid(conn) != lost_pid
    assert any("garbage-collected" in r.getMessage() for r in caplog.records)
    s = pool.stats()
    assert s[stats.RETIRED].get("abandoned") == 1
    assert s[stats.LOST] == 1
    assert wait_until(lambda: not alive(admin, {lost_pid}), 5.0), "its session ended"


# ------------------------------------------------------------------ wait()


@pytest.mark.timeout(30)
def test_wait_blocks_until_min_size_ready(dsn: str, pools: Any) -> None:
    base = connect_factory(psycopg.connect, dsn, connect_timeout=5)

    def slow() -> Any:
        time.sleep(0.2)
        return base()

    pool = pools(slow, min_size=3, max_size=5, num_workers=1)
    started = time.monotonic()
    pool.wait(10.0)
    took = time.monotonic() - started
    assert open_count(pool) >= 3
    assert took >= 0.5, f"wait() returned after {took:.2f} s, before 3 slow connects"
    pool.wait(0.01)  # ready: returns at once


@pytest.mark.timeout(30)
def test_wait_times_out_with_the_connect_error_as_cause(dsn: str, pools: Any) -> None:
    bad = dsn_with(dsn, host="127.0.0.1", port=dead_port())
    pool = pools(connect_factory(psycopg.connect, bad, connect_timeout=2), min_size=2)
    started = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.wait(timeout=1.0)
    took = time.monotonic() - started
    assert 0.9 <= took < 2.5, took
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    assert "0 of min_size 2" in str(info.value)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("delay", [0.0, 2.0], ids=["at-once", "after-2s-of-failures"])
def test_open_fail_fast_raises_connection_failed_quickly(
    dsn: str, pools: Any, delay: float
) -> None:
    bad = dsn_with(dsn, host="127.0.0.1", port=dead_port())
    pool = pools(connect_factory(psycopg.connect, bad, connect_timeout=2), min_size=1)
    time.sleep(delay)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as info:
        pool.open(wait=True, timeout=10.0, fail_fast=True)
    took = time.monotonic() - started
    print(f"\n{pool.core}: fail_fast raised after {took:.3f} s (pool {delay} s old)")
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    assert took < 1.5, f"fail_fast took {took:.2f} s"


@pytest.mark.timeout(30)
def test_reconnect_failed_called_once_per_outage(dsn: str, pools: Any) -> None:
    good = connect_factory(psycopg.connect, dsn, connect_timeout=5)
    bad = connect_factory(psycopg.connect, dsn_with(dsn, port=dead_port()), connect_timeout=2)
    state = {"down": True}

    def factory() -> Any:
        return (bad if state["down"] else good)()

    calls: list[float] = []
    events: list[float] = []
    started = time.monotonic()
    pool = pools(
        factory,
        min_size=1,
        reconnect_timeout=0.5,
        reconnect_failed=lambda p: calls.append(time.monotonic() - started),
    )
    pool.add_listener("reconnect_failed", lambda p: events.append(time.monotonic()))
    assert wait_until(lambda: len(calls) == 1, 5.0)
    time.sleep(1.5)
    assert len(calls) == 1, calls
    assert len(events) == 1
    assert calls[0] >= 0.5
    print(f"\n{pool.core}: reconnect_failed after {calls[0]:.2f} s of failures")

    state["down"] = False  # the database is back: the outage ends
    pool.wait(5.0)
    state["down"] = True  # a second outage is reported again, once
    pool.discard(pool.acquire())
    assert wait_until(lambda: len(calls) == 2, 5.0)
    time.sleep(1.0)
    assert len(calls) == 2 and len(events) == 2


@pytest.mark.timeout(30)
def test_reconnect_backs_off_while_the_database_is_down(dsn: str, pools: Any) -> None:
    bad = connect_factory(psycopg.connect, dsn_with(dsn, port=dead_port()), connect_timeout=2)
    attempts: list[float] = []

    def factory() -> Any:
        attempts.append(time.monotonic())
        return bad()

    # leak_timeout=0.1 makes maintenance run every 25 ms.
    pool = pools(factory, min_size=1, leak_timeout=0.1, num_workers=2)
    time.sleep(4.0)
    pool.close()
    # Backoff doubling from 50 ms to 5 s (sleeping 50-100% of it): at most
    # about 8 attempts per worker in 4 s.
    print(f"\n{pool.core}: {len(attempts)} connect attempts in 4 s of outage")
    assert len(attempts) <= 20


# ------------------------------------------------------------------- stats


@pytest.mark.timeout(60)
def test_stats_agree_with_the_workers_tally(pg_pool: Any) -> None:
    pool = pg_pool(min_size=1, max_size=3)
    pool.wait(5.0)
    threads, cycles = 8, 120
    lock = threading.Lock()
    tally = {"served": 0, "timeouts": 0}
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def worker(n: int) -> None:
        served = timeouts = 0
        try:
            barrier.wait(10.0)
            for i in range(cycles):
                timeout = 0.0005 if (i + n) % 7 == 0 else 5.0
                try:
                    conn = pool.acquire(timeout=timeout)
                except PoolTimeout:
                    timeouts += 1
                    continue
                try:
                    conn.execute("SELECT 1").fetchone()
                finally:
                    pool.release(conn)
                served += 1
        except BaseException as exc:
            errors.append(exc)
        with lock:
            tally["served"] += served
            tally["timeouts"] += timeouts

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(50.0)
    assert not errors
    s = pool.stats()
    print(
        f"\n{pool.core}: tally {tally}, stats requests {s[stats.REQUESTS]}, "
        f"waited {s[stats.REQUESTS_WAITED]}, timeouts {s[stats.TIMEOUTS]}"
    )
    assert tally["served"] + tally["timeouts"] == threads * cycles
    assert tally["timeouts"] > 0, "some tiny timeouts should have expired"
    assert s[stats.REQUESTS] == tally["served"]
    assert s[stats.TIMEOUTS] == tally["timeouts"]
    assert s[stats.WAIT_TIME]["count"] == tally["served"]
    assert s[stats.USE_TIME]["count"] == tally["served"]
    assert s[stats.COUNT]["used"] == 0 and s[stats.PENDING_REQUESTS] == 0
    assert s[stats.CREATED] - s[stats.CLOSED] == open_count(pool) == pool.size
    assert s[stats.REQUESTS_WAITED] <= s[stats.REQUESTS]


@pytest.mark.timeout(30)
def test_requests_count_callers_served_not_failed_checks(pg_pool: Any, admin: Any) -> None:
    pool = pg_pool(min_size=2, max_size=2, check_after=0)
    pool.wait(5.0)
    conns = [pool.acquire(), pool.acquire()]
    pids = [pid(c) for c in conns]
    for c in conns:
        pool.release(c)
    del conns
    for backend in pids:
        terminate(admin, backend)
    before = pool.stats()
    with pool.connection() as conn:  # both idle ones fail their check first
        assert pid(conn) not in pids
    after = pool.stats()
    assert after[stats.RETIRED].get("check") == 2
    assert after[stats.REQUESTS] - before[stats.REQUESTS] == 1
    assert after[stats.WAIT_TIME]["count"] - before[stats.WAIT_TIME]["count"] == 1
    assert after[stats.USE_TIME]["count"] - before[stats.USE_TIME]["count"] == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("n", [1, 5])
def test_requests_waited_counts_each_waiter(pg_pool: Any, n: int) -> None:
    pool = pg_pool(min_size=1, max_size=1)
    pool.wait(5.0)
    held = pool.acquire()
    before = pool.stats()
    results: list[int] = []
    lock = threading.Lock()

    def waiter() -> None:
        with pool.connection(timeout=10.0) as conn:
            value = conn.execute("SELECT 1").fetchone()[0]
        with lock:
            results.append(value)

    ts = [threading.Thread(target=waiter) for _ in range(n)]
    for t in ts:
        t.start()
    assert wait_until(lambda: pool.waiting == n, 5.0, step=0.001)
    pool.release(held)
    for t in ts:
        t.join(10.0)
    after = pool.stats()
    assert results == [1] * n
    assert after[stats.REQUESTS_WAITED] - before[stats.REQUESTS_WAITED] == n
    assert after[stats.REQUESTS] - before[stats.REQUESTS] == n
    assert after[stats.WAIT_TIME]["count"] - before[stats.WAIT_TIME]["count"] == n
    assert after[stats.TIMEOUTS] == 0
    assert after[stats.PENDING_REQUESTS] == 0
