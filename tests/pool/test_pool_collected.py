"""A pool nobody references any more is freed, closed and stopped.

Its threads (tasks, for the asyncio pools), its core and its connections hold
it only weakly, so reference counting alone frees it the moment the last
reference goes: these tests run with the garbage collector off, and check
that the pool is gone right after ``del``, that its connections are closed
(fake ones for ``Pool``/``AsyncPool``; for the psycopg pools, the server
sessions counted in ``pg_stat_activity`` by ``application_name``) and that its
threads or tasks end. A pool the user put in a reference cycle of their own
goes at the first ``gc.collect()``, closed the same way. Both cores, sync and
async, ``Pool``/``AsyncPool`` and the four psycopg pools; then 1,000 pools
opened, used once and dropped, whose peak thread and session counts stay
within one pool's beyond the live one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

import pypool

#: Generous bound for what happens "soon" (threads ending, closes landing).
SOON = 10.0

_names = itertools.count(1)


def on_core(cls: type, core_module: ModuleType, *args: Any, **kwargs: Any) -> Any:
    """A pool of ``cls`` on the core under test: the one place where the
    tests choose a pool's core."""
    return cls.with_core(core_module)(*args, **kwargs)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}-{time.monotonic_ns() % 1_000_000}"


@pytest.fixture
def no_gc() -> Iterator[None]:
    """The collector off: what frees a pool here is reference counting."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class FakeConn:
    """A connection that records its close."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def rollback(self) -> None:
        pass


class Made:
    """A factory of :class:`FakeConn` that keeps what it made."""

    def __init__(self) -> None:
        self.conns: list[FakeConn] = []

    def __call__(self) -> FakeConn:
        conn = FakeConn()
        self.conns.append(conn)
        return conn

    def all_closed(self) -> bool:
        return bool(self.conns) and all(c.closed for c in self.conns)


def threads_of(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"pypool-{name}-")]


def wait_until(predicate: Callable[[], bool], timeout: float = SOON) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def await_until(predicate: Callable[[], bool], timeout: float = SOON) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def tasks_of(name: str) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(f"pypool-{name}-")]


# ------------------------------------------------------------------ Pool, AsyncPool


def test_dropped_pool_is_freed_closed_and_stopped(core_module: ModuleType, no_gc: None) -> None:
    made = Made()
    name = unique("dropped")
    pool = on_core(pypool.Pool, core_module, made, min_size=2, name=name, check=False)
    with pool.connection():
        pass
    pool.wait(SOON)
    assert len(threads_of(name)) == 3  # two connect workers, maintenance
    ref = weakref.ref(pool)
    del pool
    assert ref() is None
    assert made.all_closed()
    assert wait_until(lambda: not threads_of(name))


def _refuse() -> Any:
    raise OSError("the database is down")


def test_pool_whose_connects_failed_is_freed(core_module: ModuleType, no_gc: None) -> None:
    """The kept connect error's traceback does not hold the pool."""
    name = unique("failing")
    pool = on_core(pypool.Pool, core_module, _refuse, min_size=1, name=name)
    pool.open()
    policy = pool._policy  # a lambda must not hold the pool (a closure cell would)
    assert wait_until(lambda: policy.connect_errors >= 2)
    ref = weakref.ref(pool)
    del pool
    assert wait_until(lambda: ref() is None)  # a worker may hold it for a moment
    assert wait_until(lambda: not threads_of(name))


def test_pool_whose_check_failed_is_freed(core_module: ModuleType, no_gc: None) -> None:
    """A failed check's error, kept for the next PoolTimeout, holds neither
    the pool nor the borrower's frames (where the pool is a variable)."""
    made = Made()

    def check(conn: Any) -> None:
        raise OSError("the check failed")

    def borrow() -> weakref.ref[Any]:
        pool = on_core(
            pypool.Pool, core_module, made, min_size=1, max_size=1, check=check,
            check_after=0.0, timeout=0.2, num_workers=1,
        )  # fmt: skip
        pool.wait(SOON)
        with pytest.raises(pypool.PoolTimeout) as caught:
            pool.acquire()
        assert isinstance(caught.value.__cause__, OSError)
        del caught
        pool.close()
        return weakref.ref(pool)

    ref = borrow()
    assert ref() is None


def test_pool_in_a_cycle_goes_at_the_first_collection(core_module: ModuleType) -> None:
    made = Made()
    name = unique("cycle")
    pool = on_core(pypool.Pool, core_module, made, min_size=2, name=name, check=False)
    pool.wait(SOON)
    pool.itself = pool  # the user's own cycle
    ref = weakref.ref(pool)
    del pool
    gc.collect()
    assert ref() is None
    assert made.all_closed()
    assert wait_until(lambda: not threads_of(name))


def test_dropped_async_pool_is_freed_closed_and_stopped(
    core_module: ModuleType, no_gc: None
) -> None:
    made = Made()
    name = unique("adropped")

    async def scenario() -> None:
        pool = on_core(pypool.AsyncPool, core_module, made, min_size=2, name=name, check=False)
        async with pool.connection():
            pass
        await pool.wait(SOON)
        assert len(tasks_of(name)) == 3
        ref = weakref.ref(pool)
        del pool
        assert ref() is None
        assert await await_until(made.all_closed)
        assert await await_until(lambda: not tasks_of(name))

    asyncio.run(scenario())


def test_async_pool_whose_connects_failed_is_freed(core_module: ModuleType, no_gc: None) -> None:
    name = unique("afailing")

    async def scenario() -> None:
        pool = on_core(pypool.AsyncPool, core_module, _refuse, min_size=1, name=name)
        await pool.open()
        policy = pool._policy
        assert await await_until(lambda: policy.connect_errors >= 2)
        ref = weakref.ref(pool)
        del pool
        assert await await_until(lambda: ref() is None)
        assert await await_until(lambda: not tasks_of(name))

    asyncio.run(scenario())


# ------------------------------------------------------------------ psycopg pools

psycopg = pytest.importorskip("psycopg")
import pypool.psycopg as pp  # noqa: E402

SYNC_KINDS = ["ConnectionPool", "NullConnectionPool"]
ASYNC_KINDS = ["AsyncConnectionPool", "AsyncNullConnectionPool"]


def sessions(dsn: str, application_name: str) -> int:
    """The server sessions of ``application_name``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def psycopg_kwargs(kind: str, app: str) -> dict[str, Any]:
    return {
        "kwargs": {"application_name": app},
        "min_size": 0 if "Null" in kind else 2,
        "name": app,
        "open": False,
    }


@pytest.mark.db
@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_dropped_psycopg_pool(core_module: ModuleType, dsn: str, kind: str, no_gc: None) -> None:
    app = unique("pypool-gc")
    pool = on_core(getattr(pp, kind), core_module, dsn, **psycopg_kwargs(kind, app))
    pool.open()
    with pool.connection() as conn:
        conn.execute("SELECT 1")
        assert sessions(dsn, app) >= 1
    del conn
    pool.wait(SOON)
    if "Null" not in kind:
        assert wait_until(lambda: sessions(dsn, app) == 2)
    ref = weakref.ref(pool)
    del pool
    assert ref() is None
    assert wait_until(lambda: sessions(dsn, app) == 0)
    assert wait_until(lambda: not threads_of(app))


@pytest.mark.db
@pytest.mark.parametrize("kind", ASYNC_KINDS)
def test_dropped_async_psycopg_pool(
    core_module: ModuleType, dsn: str, kind: str, no_gc: None
) -> None:
    app = unique("pypool-agc")

    async def count() -> int:
        return await asyncio.to_thread(sessions, dsn, app)

    async def scenario() -> None:
        pool = on_core(getattr(pp, kind), core_module, dsn, **psycopg_kwargs(kind, app))
        await pool.open()
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
            assert await count() >= 1
        del conn
        await pool.wait(SOON)
        ref = weakref.ref(pool)
        del pool
        assert ref() is None
        deadline = time.monotonic() + SOON
        while await count() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await count() == 0
        assert await await_until(lambda: not tasks_of(app))

    asyncio.run(scenario())


# ------------------------------------------------------------------ 1,000 pools

ROUNDS = 1000
#: psycopg_pool's run, only recorded, is shorter: the test stays near 15 s.
PEER_ROUNDS = 500


def _churn(make: Callable[[str], Any], dsn: str, app: str, rounds: int) -> tuple[int, int, int]:
    """Opens a pool, uses it once and drops it, ``rounds`` times; returns
    the peak thread count beyond the start's, the peak session count (a
    count above two, one pool's sessions beyond the live one's, is taken
    again after a moment, so that the backends of connections just closed
    have ended), and the threads one live pool has (the first, alone: the
    threads of a pool dropped a moment ago may still be ending later on)."""
    base = threading.active_count()
    with psycopg.connect(dsn, autocommit=True) as monitor:

        def count() -> int:
            row = monitor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
            ).fetchone()
            assert row is not None
            return int(row[0])

        peak_threads = peak_sessions = per_pool = 0
        for _ in range(rounds):
            pool = make(app)
            with pool.connection() as conn:
                conn.execute("SELECT 1")
            del conn
            live = threading.active_count() - base
            if not per_pool:  # the first pool: alone, nothing dropped yet
                per_pool = live
            peak_threads = max(peak_threads, live)
            sessions = count()
            if sessions > 2:  # a backend of a connection closed a moment ago may linger
                time.sleep(0.1)  # as long as the server takes to see it go, not a pool's doing
                sessions = count()
            peak_sessions = max(peak_sessions, sessions)
            del pool
    return peak_threads, peak_sessions, per_pool


@pytest.mark.db
def test_a_thousand_dropped_pools(
    core_module: ModuleType, dsn: str, record_property: Callable[[str, object], None]
) -> None:
    """Peaks of 1,000 psycopg ``ConnectionPool`` s opened, used once and
    dropped (the garbage collector on, as in a program): at most one pool's
    threads and sessions beyond the live one's. psycopg_pool's, for the
    record."""
    size = 1

    def make(app: str) -> Any:
        pool = on_core(
            pp.ConnectionPool, core_module, dsn, kwargs={"application_name": app},
            min_size=size, max_size=size, num_workers=1, open=True,
        )  # fmt: skip
        pool.wait(SOON)
        return pool

    started = time.monotonic()
    threads, server, one_pool = _churn(make, dsn, unique("pypool-churn"), ROUNDS)
    took = time.monotonic() - started
    record_property("pypool", f"threads {threads} sessions {server} in {took:.1f} s")
    assert one_pool <= 2  # one connect worker, maintenance
    assert threads <= 2 * one_pool, f"peak {threads} threads beyond the start"
    assert server <= 2 * size, f"peak {server} server sessions"

    peer = None
    if core_module.__name__.endswith("_py"):  # once, not once per core
        with contextlib.suppress(ImportError):
            import psycopg_pool as peer
    if peer is not None:

        def make_peer(app: str) -> Any:
            pool = peer.ConnectionPool(
                dsn, kwargs={"application_name": app}, min_size=size, max_size=size,
                num_workers=1, open=True,
            )  # fmt: skip
            pool.wait(SOON)
            return pool

        started = time.monotonic()
        threads, server, _ = _churn(make_peer, dsn, unique("peer-churn"), PEER_ROUNDS)
        record_property(
            "psycopg_pool",
            f"{PEER_ROUNDS} pools: threads {threads} sessions {server} "
            f"in {time.monotonic() - started:.1f} s",
        )
