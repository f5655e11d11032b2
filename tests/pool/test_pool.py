"""pypool.Pool with fake connections, on both cores.

Every test runs once per core (the ``core_module`` fixture): the pool is built
with ``Pool.with_core(core_module)(...)``. The fakes count what the pool does to
them (rollbacks, checks, closes, configure) and can be told to fail.
Reset, check and recycling (``max_lifetime``, ``max_uses``, ``max_idle``)
are tested on ``Pool`` and ``AsyncPool`` alike in test_checks.py and
test_recycle.py.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from _support.fakes import Factory, FakeAdapter, FakeConn, FakeError
from _support.waiting import wait_until
from pypool import Pool
from pypool import stats as names
from pypool.errors import (
    ConfigurationError,
    ConnectionFailed,
    NotBorrowed,
    PoolClosed,
    PoolTimeout,
    TooManyRequests,
)

# ------------------------------------------------------------------ fakes


def fake_connect(dsn: str) -> FakeConn:
    return FakeConn(-1)


# ------------------------------------------------------------------ helpers


def core_name(core_module: ModuleType) -> str:
    return "python" if core_module.__name__.endswith("_py") else "native"


def take(pool: Any, timeout: float = 2.0) -> FakeConn:
    """acquire(), and the pool never hands out a closed connection."""
    conn = pool.acquire(timeout)
    assert isinstance(conn, FakeConn)
    assert not conn.closed, f"{conn!r} was handed out after it was closed"
    return conn


def steady(pool: Any) -> dict[str, Any]:
    """The statistics that do not depend on timing."""
    stats = pool.stats()
    timed = {names.CREATE_TIME, names.WAIT_TIME, names.USE_TIME}
    result = {k: v for k, v in stats.items() if k not in timed}
    result.update({k: stats[k]["count"] for k in timed})
    return result


def retired(pool: Any) -> dict[str, int]:
    """Connections the pool closed, by reason."""
    return dict(pool.stats()[names.RETIRED])


def start(target: Callable[[], object]) -> threading.Thread:
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t


# ------------------------------------------------------- acquire / release


@pytest.mark.timeout(30)
def test_acquire_release_resets(make_pool: Any, core_module: ModuleType) -> None:
    pool, _ = make_pool(max_size=2)
    assert pool.core == core_name(core_module)
    conn = take(pool)
    assert pool.in_use == 1
    assert conn.rollbacks == 0
    pool.release(conn)
    assert conn.rollbacks == 1  # reset on return
    assert pool.in_use == 0 and pool.idle >= 1
    again = take(pool)
    assert again is conn  # the idle one is reused, not a new one made
    pool.release(again)
    assert conn.rollbacks == 2
    assert not conn.closed


@pytest.mark.timeout(30)
def test_connection_block_returns_on_exit_and_on_error(make_pool: Any) -> None:
    pool, _ = make_pool(max_size=1)
    with pool.connection() as conn:
        assert pool.in_use == 1
    assert pool.in_use == 0 and conn.rollbacks == 1
    with pytest.raises(FakeError, match="boom"), pool.connection(timeout=2.0) as conn2:
        assert conn2 is conn
        raise FakeError("boom")
    assert pool.in_use == 0 and pool.idle == 1
    assert conn.rollbacks == 2 and not conn.closed
    # max_size=1: a leaked connection would make this time out
    with pool.connection(timeout=1.0) as conn3:
        assert conn3 is conn


@pytest.mark.timeout(30)
def test_not_borrowed_changes_nothing(make_pool: Any) -> None:
    pool, _ = make_pool(max_size=2)
    other_pool, _ = make_pool(max_size=1)
    held = take(pool)
    spare = take(pool)
    pool.release(spare)
    foreign = take(other_pool)
    before = steady(pool)
    rollbacks = (held.rollbacks, spare.rollbacks)
    for obj in (object(), FakeConn(99), foreign, spare):  # spare: given back already
        with pytest.raises(NotBorrowed):
            pool.release(obj)
    assert steady(pool) == before
    assert (held.rollbacks, spare.rollbacks) == rollbacks
    assert not spare.closed and not held.closed and foreign.rollbacks == 0
    pool.release(held)  # still borrowed, still returnable
    with pytest.raises(NotBorrowed):
        pool.release(held)  # double release
    assert held.rollbacks == rollbacks[0] + 1
    other_pool.release(foreign)


# ---------------------------------------------------------------- growth


@pytest.mark.timeout(30)
def test_factory_runs_on_workers_and_growth_stops_at_max_size(make_pool: Any) -> None:
    sizes: list[int] = []
    holder: list[Any] = []
    factory = Factory(delay=0.01, on_call=lambda: sizes.append(holder[0].size))
    pool, _ = make_pool(factory, max_size=4)
    holder.append(pool)
    assert factory.calls == 0 and pool.size == 0  # min_size=0: nothing yet

    callers: set[threading.Thread] = {threading.current_thread()}
    release = threading.Event()
    got: list[FakeConn] = []
    errors: list[BaseException] = []

    def borrow() -> None:
        callers.add(threading.current_thread())
        try:
            conn = pool.acquire(5.0)
        except BaseException as exc:
            errors.append(exc)
            return
        got.append(conn)
        sizes.append(pool.size)
        release.wait(5.0)
        pool.release(conn)

    threads = [start(borrow) for _ in range(6)]
    assert wait_until(lambda: len(got) == 4)
    time.sleep(0.1)  # no fifth connection arrives
    assert len(got) == 4 and pool.size == 4 and pool.waiting == 2
    release.set()
    for t in threads:
        t.join(5.0)
    assert not errors and len(got) == 6
    assert factory.calls == 4 and len({id(c) for c in got}) == 4
    assert max(sizes) <= 4
    assert factory.threads and not factory.threads & callers
    assert all(t.name.startswith("pypool-") for t in factory.threads)
    assert all(c.thread not in callers for c in factory.conns)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("num_workers", [1, 3])
def test_num_workers_bounds_concurrent_connects(make_pool: Any, num_workers: int) -> None:
    factory = Factory(delay=0.05)
    pool, _ = make_pool(factory, max_size=8, num_workers=num_workers)
    release = threading.Event()
    done: list[FakeConn] = []

    def borrow() -> None:
        with pool.connection(timeout=5.0) as conn:
            done.append(conn)
            release.wait(5.0)

    threads = [start(borrow) for _ in range(8)]
    assert wait_until(lambda: len(done) == 8, timeout=5.0)
    release.set()
    for t in threads:
        t.join(5.0)
    assert factory.peak_active <= num_workers
    assert factory.peak_active >= min(num_workers, 2)  # they do run in parallel
    assert len(factory.threads) <= num_workers


@pytest.mark.timeout(30)
def test_default_two_workers(make_pool: Any) -> None:
    factory = Factory(delay=0.05)
    pool, _ = make_pool(factory, max_size=6)
    release = threading.Event()
    done: list[FakeConn] = []

    def borrow() -> None:
        with pool.connection(timeout=5.0) as conn:
            done.append(conn)
            release.wait(5.0)

    threads = [start(borrow) for _ in range(6)]
    assert wait_until(lambda: len(done) == 6, timeout=5.0)
    release.set()
    for t in threads:
        t.join(5.0)
    assert factory.peak_active == 2


@pytest.mark.timeout(30)
def test_one_caller_makes_one_connection(make_pool: Any) -> None:
    """A lone caller on an empty pool needs one connection: once it is made
    (and idle, or handed over), no worker may start another for that caller,
    however fast the factory is."""
    made = []
    for _ in range(20):
        pool, factory = make_pool(max_size=10)
        conn = take(pool)
        pool.release(conn)
        assert wait_until(lambda p=pool: p.stats()[names.CONNECTING] == 0)
        time.sleep(0.01)
        made.append(factory.calls)
        pool.close()
    assert made == [1] * 20, f"connections made for one acquire: {made}"


@pytest.mark.timeout(30)
def test_min_size_fills_without_demand(make_pool: Any) -> None:
    pool, factory = make_pool(min_size=3, max_size=5)
    assert wait_until(lambda: pool.idle == 3)
    time.sleep(0.05)
    assert pool.size == 3 and factory.calls == 3


# ------------------------------------------------------- drain, invalidate


@pytest.mark.timeout(30)
def test_drain(make_pool: Any) -> None:
    pool, _ = make_pool(max_size=3)
    a, b, c = (take(pool) for _ in range(3))
    pool.release(a)
    pool.release(b)
    pool.drain()
    assert a.closes == 1 and b.closes == 1  # idle: closed now
    assert not c.closed  # borrowed: closed when it comes back
    assert pool.size == 1
    pool.release(c)
    assert c.closes == 1 and pool.size == 0
    fresh = [take(pool) for _ in range(3)]
    assert not {id(x) for x in fresh} & {id(a), id(b), id(c)}
    for conn in fresh:
        pool.release(conn)
    assert not any(x.closed for x in fresh)


@pytest.mark.timeout(30)
def test_drain_replaces_a_connection_whose_connect_began_before(make_pool: Any) -> None:
    """A connect in flight when drain() runs makes an old connection (after a
    failover it may reach the old server): it is closed, never handed out."""
    pool, factory = make_pool(Factory(delay=0.3), max_size=2)
    got: list[FakeConn] = []
    t = threading.Thread(target=lambda: got.append(pool.acquire(5)))
    t.start()
    assert wait_until(lambda: factory.calls == 1)
    pool.drain()
    t.join()
    first = factory.conns[0]
    assert got and got[0] is not first
    assert first.closes == 1
    pool.release(got[0])


@pytest.mark.timeout(30)
def test_invalidate(make_pool: Any) -> None:
    pool, _ = make_pool(max_size=2)
    a, b = take(pool), take(pool)
    pool.release(a)
    pool.invalidate()
    assert not a.closed and not b.closed  # nothing closed now
    assert pool.size == 2
    pool.release(b)
    assert b.closes == 1  # replaced at return
    assert not a.closed
    new = take(pool)
    assert new is not a and a.closes == 1  # replaced at hand-out
    assert retired(pool).get("stale") == 2
    pool.release(new)
    assert take(pool) is new  # new ones are not stale
    pool.release(new)


# ------------------------------------------------------------------ resize


@pytest.mark.timeout(30)
def test_resize_down_and_up_while_borrowed(make_pool: Any) -> None:
    pool, factory = make_pool(max_size=4)
    held = [take(pool) for _ in range(4)]
    pool.resize(0, 2)
    assert pool.max_size == 2 and pool.size == 4
    assert not any(c.closed for c in held)  # borrowed: not closed now
    with pytest.raises(PoolTimeout):
        pool.acquire(0.1)  # over the new limit: no growth
    for conn in held:
        pool.release(conn)
    assert sum(c.closed for c in held) == 2  # the extras, on return
    assert pool.size == 2 and pool.idle == 2
    assert retired(pool).get("shrunk") == 2

    pool.resize(0, 5)
    more = [take(pool) for _ in range(5)]
    assert pool.size == 5 and factory.calls == 7
    for conn in more:
        pool.release(conn)
    pool.resize(0, 3)  # idle extras: closed now
    assert pool.size == 3 and pool.idle == 3
    assert sum(c.closed for c in more) == 2


@pytest.mark.timeout(30)
def test_resize_min_size_refills(make_pool: Any) -> None:
    pool, _ = make_pool(max_size=2)
    assert pool.size == 0
    pool.resize(3, 6)
    assert pool.min_size == 3 and pool.max_size == 6
    assert wait_until(lambda: pool.idle == 3)
    with pytest.raises(ConfigurationError, match="min_size"):
        pool.resize(5, 4)
    assert pool.min_size == 3 and pool.max_size == 6


@pytest.mark.timeout(30)
def test_lifo_and_round_robin(make_pool: Any) -> None:
    for lifo in (True, False):
        pool, _ = make_pool(max_size=2, lifo=lifo)
        a, b = take(pool), take(pool)
        pool.release(a)
        pool.release(b)
        assert take(pool) is (b if lifo else a)


# --------------------------------------------------------- open and wait


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fail_fast", [False, True], ids=["timeout", "fail_fast"])
@pytest.mark.parametrize("min_size_at_init", [False, True], ids=["open", "init-then-open"])
def test_failed_open_wait_closes_the_pool(
    make_pool: Any, fail_fast: bool, min_size_at_init: bool
) -> None:
    """``open(wait=True)`` that fails (PoolTimeout, or ConnectionFailed with
    ``fail_fast``) closes the pool before it raises: no thread goes on
    connecting in the background of a service that did not start."""
    error = FakeError("database is down")
    factory = Factory(fail=error)
    if min_size_at_init:  # min_size opens the pool at once; open(wait=True) then only waits
        pool, _ = make_pool(factory, min_size=2, max_size=2)
        assert wait_until(lambda: factory.calls >= 1)
    else:
        pool, _ = make_pool(factory, max_size=2)
        pool._policy.min_size = 2  # as resize(2, 2) would, without opening it
    expected = ConnectionFailed if fail_fast else PoolTimeout
    with pytest.raises(expected) as info:
        pool.open(wait=True, timeout=0.5, fail_fast=fail_fast)
    assert info.value.__cause__ is error
    assert pool.closed
    assert all(not t.is_alive() for t in pool._threads), pool._threads
    calls = factory.calls
    time.sleep(0.3)
    assert factory.calls == calls  # nothing connects any more
    with pytest.raises(PoolClosed):
        pool.acquire(0.1)


@pytest.mark.timeout(30)
def test_wait_that_fails_leaves_the_pool_open_and_connecting(make_pool: Any) -> None:
    """A direct ``wait()`` is a question (are min_size connections ready?),
    asked of a pool that may be serving already: when it raises, the pool
    stays open and keeps connecting, so it recovers when the database
    does."""
    error = FakeError("database is down")
    factory = Factory(fail=error)
    pool, _ = make_pool(factory, min_size=2, max_size=2)
    with pytest.raises(PoolTimeout) as info:
        pool.wait(timeout=0.3)
    assert info.value.__cause__ is error
    with pytest.raises(ConnectionFailed):
        pool.wait(timeout=5.0, fail_fast=True)
    assert not pool.closed
    factory.fail = None
    pool.wait(timeout=5.0)
    assert pool.idle == 2


# ------------------------------------------------------------------- close


@pytest.mark.timeout(30)
def test_close_wakes_waiters_and_is_idempotent(make_pool: Any) -> None:
    pool, _ = make_pool(max_size=1)
    held = take(pool)
    outcomes: list[tuple[str, float]] = []

    def wait() -> None:
        try:
            pool.acquire(10.0)
            outcomes.append(("got", 0.0))
        except BaseException as exc:
            outcomes.append((type(exc).__name__, time.monotonic()))

    threads = [start(wait) for _ in range(3)]
    assert wait_until(lambda: pool.waiting == 3)
    closed_at = time.monotonic()
    pool.close()
    for t in threads:
        t.join(2.0)
    assert [o[0] for o in outcomes] == ["PoolClosed"] * 3
    assert max(o[1] for o in outcomes) - closed_at < 1.0
    assert pool.closed and "closed" in repr(pool)
    pool.release(held)  # after close: closed, not an error
    assert held.closes == 1
    pool.close()  # idempotent
    assert held.closes == 1
    with pytest.raises(PoolClosed):
        pool.acquire(1.0)


@pytest.mark.timeout(30)
def test_close_during_connect_closes_the_new_connection(make_pool: Any) -> None:
    pool, factory = make_pool(Factory(delay=0.3), max_size=1)
    outcome: list[str] = []

    def wait() -> None:
        try:
            pool.acquire(5.0)
            outcome.append("got")
        except PoolClosed:
            outcome.append("closed")

    t = start(wait)
    assert wait_until(lambda: factory.active == 1)
    pool.close()  # waits for the connect in flight
    t.join(2.0)
    assert outcome == ["closed"]
    assert len(factory.conns) == 1 and factory.conns[0].closed  # not leaked
    assert pool.size == 0


@pytest.mark.timeout(30)
def test_close_closes_idle_connections(make_pool: Any) -> None:
    pool, _ = make_pool(max_size=3)
    conns = [take(pool) for _ in range(3)]
    for conn in conns:
        pool.release(conn)
    pool.close()
    assert [c.closes for c in conns] == [1, 1, 1]
    assert pool.size == 0


@pytest.mark.timeout(30)
def test_context_manager(core_module: ModuleType) -> None:
    factory = Factory()
    with (
        Pool.with_core(core_module)(factory, adapter=FakeAdapter(), max_size=2) as pool,
        pool.connection(timeout=2.0) as conn,
    ):
        assert not pool.closed
    assert pool.closed and conn.closes == 1
    with pytest.raises(PoolClosed):
        pool.acquire(1.0)


@pytest.mark.timeout(30)
def test_repr_shows_name_core_sizes_not_password(make_pool: Any, core_module: ModuleType) -> None:
    secret = "s3cr3t-Pa55"
    factory = functools.partial(fake_connect, f"postgresql://app:{secret}@db.example/orders")
    pool, _ = make_pool(factory, name="orders-db", max_size=7, min_size=1)
    assert wait_until(lambda: pool.idle == 1)
    text = repr(pool)
    assert "orders-db" in text and f"core={core_name(core_module)}" in text
    assert "1/7" in text and "min=1" in text
    assert secret not in text and secret not in str(pool)
    assert pool.name == "orders-db"


# ------------------------------------------------------------ saturation


@pytest.mark.timeout(30)
def test_pool_timeout_when_saturated(make_pool: Any) -> None:
    pool, factory = make_pool(max_size=2, timeout=0.1, name="busy")
    held = [take(pool) for _ in range(2)]
    started = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.acquire()
    elapsed = time.monotonic() - started
    assert 0.09 <= elapsed < 0.6
    assert "'busy'" in str(info.value) and "2/2" in str(info.value)
    assert info.value.__cause__ is None  # no connect failed
    assert pool.stats()[names.TIMEOUTS] == 1 and factory.calls == 2
    for conn in held:
        pool.release(conn)


@pytest.mark.timeout(30)
def test_too_many_requests(make_pool: Any) -> None:
    pool, _ = make_pool(max_size=1, max_waiting=2)
    held = take(pool)
    results: list[str] = []

    def wait() -> None:
        with pool.connection(timeout=5.0):
            results.append("ok")

    threads = [start(wait) for _ in range(2)]
    assert wait_until(lambda: pool.waiting == 2)
    started = time.monotonic()
    with pytest.raises(TooManyRequests):
        pool.acquire(5.0)
    assert time.monotonic() - started < 0.5
    pool.release(held)
    for t in threads:
        t.join(5.0)
    assert results == ["ok", "ok"]


# ----------------------------------------------------------- configuration


def _no_close_adapter() -> Any:
    class Partial:
        def reset_for(self, conn: Any) -> None:
            return None

        def check(self, conn: Any) -> None:
            pass

        def is_broken(self, conn: Any, exc: Any = None) -> bool:
            return False

    return Partial()


BAD_SETTINGS: list[tuple[dict[str, Any], str]] = [
    ({"min_size": 5, "max_size": 2}, "lower min_size or raise max_size"),
    ({"min_size": -1}, "min_size"),
    ({"max_size": 0}, "max_size must be >= 1"),
    ({"max_size": -3}, "max_size must be >= 1"),
    ({"max_size": 2.5}, "max_size must be an integer"),
    ({"max_size": "10"}, "max_size must be an integer"),
    ({"max_size": True}, "max_size must be an integer"),
    ({"timeout": 0}, "timeout must be > 0"),
    ({"timeout": -1.0}, "timeout must be > 0"),
    ({"timeout": math.nan}, "timeout"),
    ({"timeout": "30"}, "timeout must be a number of seconds"),
    ({"timeout": None}, "timeout must be a number of seconds"),
    ({"max_lifetime": -1}, "max_lifetime"),
    ({"max_lifetime": 0}, "max_lifetime"),
    ({"max_lifetime": math.nan}, "max_lifetime"),
    ({"max_lifetime": "1h"}, "max_lifetime must be a number of seconds"),
    ({"max_idle": -0.5}, "max_idle"),
    ({"max_idle": math.nan}, "max_idle"),
    ({"max_idle": "600"}, "max_idle must be a number of seconds"),
    ({"check_after": -1}, "check_after"),
    ({"check_after": math.nan}, "check_after"),
    ({"check_after": "1s"}, "check_after must be a number of seconds"),
    ({"configure": "SET x"}, "configure must be a callable"),
    ({"check": 1}, "check must be a callable"),
    ({"check": True}, "check must be a callable"),
    ({"reset": 5}, "reset must be a callable"),
    ({"reset": "not a name"}, "reset"),
    ({"num_workers": 0}, "num_workers must be >= 1"),
    ({"num_workers": 1.5}, "num_workers must be an integer"),
    ({"max_waiting": -1}, "max_waiting must be >= 0"),
    ({"max_uses": -1}, "max_uses must be >= 0"),
    ({"adapter": object()}, "pass pypool.dbapi or another adapter"),
    ({"adapter": _no_close_adapter()}, "no close()"),
    ({"name": 42}, "name must be a str"),
    ({"lifo": 1}, "lifo must be True or False"),
    ({"lifo": "yes"}, "lifo must be True or False"),
    ({"leak_timeout": 0}, "leak_timeout must be > 0"),
    ({"keepalive": -1}, "keepalive must be > 0"),
    ({"reconnect_timeout": None}, "reconnect_timeout must be a number of seconds"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("settings", "says"), BAD_SETTINGS, ids=[repr(s)[1:-1] for s, _ in BAD_SETTINGS]
)
def test_invalid_settings(core_module: ModuleType, settings: dict[str, Any], says: str) -> None:
    factory = Factory()
    kw: dict[str, Any] = {"adapter": FakeAdapter(), **settings}
    with pytest.raises(ConfigurationError) as info:
        Pool.with_core(core_module)(factory, **kw)
    assert says in str(info.value)
    assert factory.calls == 0
    assert not any(
        t.name.startswith("pypool-pool-") and not t.daemon for t in threading.enumerate()
    )


@pytest.mark.timeout(30)
def test_invalid_factory(core_module: ModuleType) -> None:
    with pytest.raises(ConfigurationError, match="factory must be a callable"):
        Pool.with_core(core_module)(None, adapter=FakeAdapter())
    with pytest.raises(ConfigurationError) as info:
        Pool.with_core(core_module)("postgresql://app@db/orders", adapter=FakeAdapter())
    assert "connect_factory" in str(info.value)


# ------------------------------------------------------------------- spike


@pytest.mark.timeout(60)
def test_spike_does_not_flood_the_database(make_pool: Any, core_module: ModuleType) -> None:
    """50 requests at once, connects take 150 ms: a handful of connections
    serve them all (each request holds one for 2 ms), instead of 50 connects."""
    holder: list[Any] = []
    sizes: list[int] = []
    factory = Factory(delay=0.15, on_call=lambda: sizes.append(holder[0].size))
    pool, _ = make_pool(factory, max_size=50, timeout=10.0)
    holder.append(pool)
    n = 50
    barrier = threading.Barrier(n)
    done: list[float] = []
    errors: list[BaseException] = []

    def request() -> None:
        barrier.wait(5.0)
        try:
            with pool.connection():
                sizes.append(pool.size)
                time.sleep(0.002)
            done.append(time.monotonic())
        except BaseException as exc:
            errors.append(exc)

    threads = [start(request) for _ in range(n)]
    for t in threads:
        t.join(15.0)
    peak = max(sizes)
    print(
        f"\nspike on the {core_name(core_module)} core: peak pool size {peak}, "
        f"{factory.calls} connects for {n} requests"
    )
    assert not errors
    assert len(done) == n
    assert peak <= 10
    assert factory.calls <= 10


# ------------------------------------------------------------------- stats


@pytest.mark.timeout(30)
def test_stats(make_pool: Any) -> None:
    pool, factory = make_pool(max_size=3, max_uses=4)
    cycles = 30
    for i in range(cycles):
        conns = [take(pool) for _ in range(1 + i % 3)]
        for conn in conns:
            pool.release(conn)
    stats = pool.stats()
    n = sum(1 + i % 3 for i in range(cycles))
    assert stats[names.REQUESTS] >= n and stats[names.WAIT_TIME]["count"] >= n
    assert stats[names.USE_TIME]["count"] == stats[names.REQUESTS]  # all returned
    assert stats[names.CREATED] == len(factory.conns) == factory.calls
    assert stats[names.CREATE_TIME]["count"] == len(factory.conns)
    assert stats[names.CLOSED] == len(factory.closed) > 0
    assert stats[names.RETIRED] == {"used_up": len(factory.closed)}
    assert stats[names.LOST] == 0
    assert stats[names.COUNT] == {"idle": pool.size, "used": 0}
    assert pool.size == len(factory.conns) - len(factory.closed)
    assert stats[names.MAX] == 3 and stats[names.IDLE_MIN] == 0
    assert stats[names.CONNECT_ERRORS] == 0 and stats[names.TIMEOUTS] == 0
    assert stats[names.POOL_NAME] == pool.name and stats[names.CORE] == pool.core
    open_before = pool.size
    pool.close()
    stats = pool.stats()
    assert stats[names.CLOSED] == len(factory.closed) == len(factory.conns)
    assert stats[names.RETIRED]["closed"] == open_before
