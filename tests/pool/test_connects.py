"""Failing and slow connects of ``pypool.Pool`` and ``pypool.AsyncPool``, on
both cores: a failing factory is the cause of the caller's timeout (logged
without the password), its slot is given back and it is retried within the
timeout; a slow connect outlives its caller and is kept; what cannot be a new
connection (None, a coroutine for a pool of threads, one in the pool
already, a raise that is not an Exception) fails that connect like any other;
``configure`` runs once per new connection, and whatever it raises fails the
connect and closes the connection.

Every scenario runs on each pool over fake connections (``_support.pools``).
KeyboardInterrupt or SystemExit in an ``AsyncPool``'s ``configure`` leaves
the event loop: that is tested in test_aio.py.
"""

from __future__ import annotations

import asyncio
import gc
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from _support.fakes import AsyncFakeConn, FakeConn, FakeError
from _support.pools import Facade, Pools, each_pool
from _support.waiting import eventually
from pypool import stats
from pypool.errors import ConnectionFailed, PoolTimeout


class Connects:
    """A factory of the pool's flavour (``factory``: a function for ``Pool``,
    a coroutine function for ``AsyncPool``) that counts its ``calls``, sleeps
    ``delay`` seconds, then makes a new connection, numbered from 0 and kept
    in ``made``; when ``instead`` is set, a call returns what ``instead()``
    returns (or raises what it raises) rather than a new connection."""

    def __init__(self, pools: Pools, delay: float = 0.0) -> None:
        self.conn_class = AsyncFakeConn if pools.is_async else FakeConn
        self.delay = delay
        self.calls = 0
        self.made: list[Any] = []
        self.instead: Callable[[], Any] | None = None
        self.factory = self._coroutine if pools.is_async else self._function

    def new(self) -> Any:
        conn = self.conn_class(len(self.made))
        self.made.append(conn)
        return conn

    def _result(self) -> Any:
        return self.new() if self.instead is None else self.instead()

    def _function(self) -> Any:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return self._result()

    async def _coroutine(self) -> Any:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return self._result()


async def take(pool: Facade, timeout: float = 2.0) -> Any:
    """acquire(), and the pool never hands out a closed connection."""
    conn = await pool.acquire(timeout)
    assert not conn.closed, f"{conn!r} was handed out after it was closed"
    return conn


def workers_alive(pools: Pools, pool: Facade) -> bool:
    """The pool's worker threads (``Pool``) or tasks (``AsyncPool``) run on."""
    if pools.is_async:
        return all(not t.done() for t in pool._tasks)
    return all(t.is_alive() for t in pool._threads)


# ------------------------------------------------------- failing factory


@pytest.mark.timeout(30)
@each_pool
async def test_failing_factory_frees_slot_and_times_out_with_cause(pools: Pools) -> None:
    error = FakeError("database is down")
    factory = pools.factory()
    factory.fail = error
    pool, _ = pools.make(factory, max_size=2, timeout=0.3, name="orders")
    started = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        await pool.acquire()
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 1.0
    assert info.value.__cause__ is error
    message = str(info.value)
    assert "'orders'" in message and "size" in message and "/2" in message
    assert factory.calls >= 1
    assert await eventually(lambda: pool.size == 0)
    s = pool.stats()
    assert s[stats.CONNECT_ERRORS] >= 1 and s[stats.CREATED] == 0

    # the database comes back: the next caller gets a connection
    factory.fail = None
    conn = await take(pool, timeout=3.0)
    await pool.release(conn)
    assert pool.size >= 1


@pytest.mark.timeout(30)
@each_pool
async def test_connect_error_logged_without_password(
    pools: Pools, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-Pa55"
    error = FakeError(f"could not connect to postgresql://app:{secret}@db.example/orders")
    factory = pools.factory()
    factory.fail = error
    pool, _ = pools.make(factory, max_size=1, timeout=0.2)
    with caplog.at_level("WARNING", logger="pypool"), pytest.raises(PoolTimeout) as info:
        await pool.acquire()
    assert info.value.__cause__ is error
    assert secret not in str(info.value)
    assert "could not connect" in caplog.text  # the failure is logged...
    assert secret not in caplog.text  # ...without the password


@pytest.mark.timeout(30)
@each_pool
async def test_slow_connect_timeout_is_kept_and_connection_not_lost(pools: Pools) -> None:
    connects = Connects(pools, delay=0.5)
    pool, _ = pools.make(connects.factory, max_size=2)
    started = time.monotonic()
    with pytest.raises(PoolTimeout):
        await pool.acquire(0.1)
    assert time.monotonic() - started < 0.4  # the caller does not wait for the connect
    assert await eventually(lambda: pool.idle == 1)  # the connect finishes: kept for later
    assert connects.calls == 1
    assert await take(pool, timeout=0.5) is connects.made[0]


@pytest.mark.timeout(30)
@each_pool
async def test_failing_connect_is_retried_within_the_timeout(pools: Pools) -> None:
    failures = [FakeError("refused"), FakeError("refused")]
    connects = Connects(pools)

    def flaky() -> Any:
        if failures:
            raise failures.pop()
        return connects.new()

    connects.instead = flaky
    pool, _ = pools.make(connects.factory, max_size=1, timeout=3.0)
    conn = await take(pool, timeout=3.0)
    assert connects.calls >= 3 and not failures
    await pool.release(conn)


# ------------------------------------------------------------------ configure


@pytest.mark.timeout(30)
@each_pool
async def test_configure_runs_once_per_new_connection(pools: Pools) -> None:
    seen: list[Any] = []

    def configure(conn: Any) -> None:
        conn.configured = getattr(conn, "configured", 0) + 1
        seen.append(conn)

    pool, factory = pools.make(max_size=3, configure=pools.flavoured(configure), max_uses=2)
    for _ in range(10):
        held = [await take(pool) for _ in range(3)]
        for conn in held:
            assert conn.configured == 1
            await pool.release(conn)
    assert len(factory.conns) > 3  # max_uses replaced some
    assert all(c.configured == 1 for c in factory.conns)
    assert len(seen) == len(factory.conns) == len({id(c) for c in seen})


@pytest.mark.timeout(30)
@each_pool
async def test_configure_failure_discards_the_connection(pools: Pools) -> None:
    def configure(conn: Any) -> None:
        if conn.serial == 0:
            raise FakeError("SET search_path failed")

    pool, factory = pools.make(max_size=1, configure=pools.flavoured(configure))
    conn = await take(pool, timeout=3.0)
    assert conn.serial >= 1
    assert await eventually(lambda: factory.conns[0].closed)  # closed by the worker
    assert pool.stats()[stats.CONNECT_ERRORS] >= 1
    await pool.release(conn)


class Abort(BaseException):
    """Not an Exception, not a cancellation: what a library's own abort
    (gevent.Timeout, say) looks like."""


async def configure_raising(pools: Pools, raised: type[BaseException]) -> None:
    """Whatever ``configure`` raises fails that connect, closes the new
    connection and frees its slot; the workers live on."""
    factory = pools.factory()

    def configure(conn: Any) -> None:
        if factory.made == 1:  # the first connection's
            raise raised("configure interrupted")

    pool, _ = pools.make(factory, max_size=1, configure=pools.flavoured(configure))
    conn = await take(pool, timeout=5.0)
    assert conn.serial == 1 and conn is factory.conns[1] and factory.conns[0].closed
    assert pool.stats()[stats.CONNECT_ERRORS] == 1
    assert pool.stats()[stats.CONNECTING] == 0 and pool.size == 1
    assert workers_alive(pools, pool)
    await pool.release(conn)


@pytest.mark.timeout(30)
@each_pool
async def test_configure_raising_base_exception_fails_the_connect(pools: Pools) -> None:
    await configure_raising(pools, Abort)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit])
@each_pool(flavours=("sync",))
async def test_configure_interrupted_on_a_worker_thread_fails_the_connect(
    pools: Pools, raised: type[BaseException]
) -> None:
    """On a worker thread KeyboardInterrupt and SystemExit fail the connect
    like any raise (in an ``AsyncPool`` they leave the loop: test_aio.py)."""
    await configure_raising(pools, raised)


# ------------------------------------------------------------ factory result


async def bad_factory_result(
    pools: Pools, kind: str, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A factory that returns what cannot be a new connection, or raises
    something that is not an Exception, fails that connect like any other:
    counted, logged, its slot given back, retried with backoff; the caller's
    PoolTimeout says what the factory did. The workers live on and no task
    exception goes unretrieved."""
    unhandled: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
    connects = Connects(pools)

    def broken() -> Any:
        if kind == "None":
            return None
        if kind == "coroutine":

            async def connect() -> FakeConn:  # an async factory given to the threaded Pool
                return FakeConn(-1)

            return connect()
        if kind == "in-pool":
            return connects.made[0]  # the connection it made before, still in the pool
        if kind == "BaseException":
            raise Abort("factory aborted")
        assert kind == "SystemExit"
        raise SystemExit("factory called sys.exit()")

    pool, _ = pools.make(connects.factory, max_size=3, name="orders")
    held = await take(pool)  # the factory's first connection, good
    connects.instead = broken
    with caplog.at_level("WARNING", logger="pypool"), pytest.raises(PoolTimeout) as info:
        await pool.acquire(0.3)
    cause = info.value.__cause__
    assert cause is not None, "the timeout does not say why"
    expected = {"BaseException": Abort, "SystemExit": SystemExit}.get(kind, ConnectionFailed)
    assert isinstance(cause, expected), repr(cause)
    assert re.search(says, str(cause)), str(cause)
    assert "connection failed" in caplog.text and re.search(says, caplog.text)
    s = pool.stats()
    assert s[stats.CONNECT_ERRORS] >= 1 and s[stats.CREATED] == 1
    # The slot was given back: nothing stays "connecting", the size is the held one.
    assert await eventually(lambda: pool.stats()[stats.CONNECTING] == 0 and pool.size == 1)
    assert not held.closed  # a connection handed back twice is not closed under its borrower
    assert workers_alive(pools, pool)
    errors_before = pool.stats()[stats.CONNECT_ERRORS]
    await asyncio.sleep(0.3)
    assert pool.stats()[stats.CONNECT_ERRORS] == errors_before  # no waiter: no retry

    connects.instead = None  # the factory mends: the workers are alive and connect again
    conn = await take(pool, timeout=5.0)
    assert conn is not held and conn in connects.made
    await pool.release(conn)
    await pool.release(held)
    assert pool.in_use == 0 and pool.idle == pool.size == 2
    await pool.close()
    gc.collect()
    await asyncio.sleep(0)
    assert not unhandled, unhandled


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("None", r"factory returned None"),
        ("in-pool", r"factory returned .*FakeConn 0.* in the pool already"),
        ("BaseException", r"factory aborted"),
    ],
)
@each_pool
async def test_bad_factory_result_is_a_failed_connect(
    pools: Pools, kind: str, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    await bad_factory_result(pools, kind, says, caplog)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("coroutine", r"factory returned a coroutine.*AsyncPool"),
        ("SystemExit", r"sys.exit"),
    ],
)
@each_pool(flavours=("sync",))
async def test_bad_factory_result_of_a_pool_of_threads(
    pools: Pools, kind: str, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a pool of threads cannot await a coroutine, and only on a worker
    thread is SystemExit a failed connect like any other."""
    await bad_factory_result(pools, kind, says, caplog)
