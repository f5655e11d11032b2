"""pypool.Pool with fake connections, on both cores.

Every test runs once per core (the ``core_module`` fixture): the pool is built
with ``Pool.with_core(core_module)(...)``. The fakes count what the pool does to
them (rollbacks, checks, closes, configure) and can be told to fail.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from _support.fakes import Factory, FakeConn, FakeError
from _support.waiting import wait_until
from pypool import stats as names
from pypool.errors import (
    ConnectionFailed,
    NotBorrowed,
    PoolTimeout,
)

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


def stop_maintenance(pool: Any) -> None:
    """Stops the pool's maintenance thread (it retires idle and expiring
    connections ahead of time), so that a test sees the checks at hand-out
    and return alone."""
    pool._stop.set()
    for t in pool._threads:
        if t.name.endswith("-maintenance"):
            t.join(2.0)
            assert not t.is_alive()


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


# ------------------------------------------------------- failing connects


@pytest.mark.timeout(30)
def test_failing_factory_frees_slot_and_times_out_with_cause(make_pool: Any) -> None:
    error = FakeError("database is down")
    factory = Factory(fail=error)
    pool, _ = make_pool(factory, max_size=2, timeout=0.3, name="orders")
    started = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.acquire()
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 1.0
    assert info.value.__cause__ is error
    message = str(info.value)
    assert "'orders'" in message and "size" in message and "/2" in message
    assert factory.calls >= 1
    assert wait_until(lambda: pool.size == 0)
    stats = pool.stats()
    assert stats[names.CONNECT_ERRORS] >= 1 and stats[names.CREATED] == 0

    # the database comes back: the next caller gets a connection
    factory.fail = None
    conn = take(pool, timeout=3.0)
    pool.release(conn)
    assert pool.size >= 1


@pytest.mark.timeout(30)
def test_connect_error_logged_without_password(
    make_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-Pa55"
    error = FakeError(f"could not connect to postgresql://app:{secret}@db.example/orders")
    pool, _ = make_pool(Factory(fail=error), max_size=1, timeout=0.2)
    with caplog.at_level("WARNING", logger="pypool"), pytest.raises(PoolTimeout) as info:
        pool.acquire()
    assert info.value.__cause__ is error
    assert secret not in str(info.value)
    assert "could not connect" in caplog.text  # the failure is logged...
    assert secret not in caplog.text  # ...without the password


@pytest.mark.timeout(30)
def test_slow_connect_timeout_is_kept_and_connection_not_lost(make_pool: Any) -> None:
    pool, factory = make_pool(Factory(delay=0.5), max_size=2)
    started = time.monotonic()
    with pytest.raises(PoolTimeout):
        pool.acquire(0.1)
    assert time.monotonic() - started < 0.4  # the caller does not wait for the connect
    assert wait_until(lambda: pool.idle == 1)  # the connect finishes: kept for later
    assert factory.calls == 1
    assert take(pool, timeout=0.5) is factory.conns[0]


@pytest.mark.timeout(30)
def test_failing_connect_is_retried_within_the_timeout(make_pool: Any) -> None:
    failures = [FakeError("refused"), FakeError("refused")]

    def flaky() -> None:
        if failures:
            factory.fail = failures.pop()
        else:
            factory.fail = None

    factory = Factory(on_call=flaky)
    pool, _ = make_pool(factory, max_size=1, timeout=3.0)
    conn = take(pool, timeout=3.0)
    assert factory.calls >= 3 and not failures
    pool.release(conn)


@pytest.mark.timeout(30)
def test_configure_runs_once_per_new_connection(make_pool: Any) -> None:
    seen: list[FakeConn] = []

    def configure(conn: FakeConn) -> None:
        conn.configured += 1
        seen.append(conn)

    pool, factory = make_pool(max_size=3, configure=configure, max_uses=2)
    for _ in range(10):
        held = [take(pool) for _ in range(3)]
        for conn in held:
            assert conn.configured == 1
            pool.release(conn)
    assert len(factory.conns) > 3  # max_uses replaced some
    assert all(c.configured == 1 for c in factory.conns)
    assert len(seen) == len(factory.conns) == len({id(c) for c in seen})


@pytest.mark.timeout(30)
def test_configure_failure_discards_the_connection(make_pool: Any) -> None:
    def configure(conn: FakeConn) -> None:
        if conn.serial == 0:
            raise FakeError("SET search_path failed")

    pool, factory = make_pool(max_size=1, configure=configure)
    conn = take(pool, timeout=3.0)
    assert conn.serial >= 1
    assert wait_until(lambda: factory.conns[0].closed)  # closed by the worker
    assert pool.stats()[names.CONNECT_ERRORS] >= 1
    pool.release(conn)


class Abort(BaseException):
    """Not an Exception: what a library's own abort (gevent.Timeout, say) looks like."""


def _bad_result(kind: str, first: list[FakeConn]) -> Any:
    """What a broken factory gives, for the tests below."""
    if kind == "None":
        return None
    if kind == "coroutine":

        async def connect() -> FakeConn:  # an async factory given to the threaded Pool
            return FakeConn(-1)

        return connect()
    if kind == "in-pool":
        return first[0]  # the connection it made before, still in the pool
    if kind == "BaseException":
        raise Abort("factory aborted")
    assert kind == "SystemExit"
    raise SystemExit("factory called sys.exit()")


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("None", r"factory returned None"),
        ("coroutine", r"factory returned a coroutine.*AsyncPool"),
        ("in-pool", r"factory returned .*FakeConn 0.* in the pool already"),
        ("BaseException", r"factory aborted"),
        ("SystemExit", r"sys.exit"),
    ],
)
def test_bad_factory_result_is_a_failed_connect(
    make_pool: Any, kind: str, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A factory that returns what cannot be a new connection, or raises
    something that is not an Exception, fails that connect like any other:
    counted, logged, its slot given back, retried with backoff; the caller's
    PoolTimeout says what the factory did."""
    state = {"broken": False}
    made: list[FakeConn] = []

    def factory() -> Any:
        if state["broken"]:
            return _bad_result(kind, made)
        conn = FakeConn(len(made))
        made.append(conn)
        return conn

    pool, _ = make_pool(factory, max_size=3, name="orders")
    held = take(pool)  # the factory's first connection, good
    state["broken"] = True
    with caplog.at_level("WARNING", logger="pypool"), pytest.raises(PoolTimeout) as info:
        pool.acquire(0.5)
    cause = info.value.__cause__
    assert cause is not None, "the timeout does not say why"
    if kind in ("BaseException", "SystemExit"):
        assert isinstance(cause, Abort if kind == "BaseException" else SystemExit)
    else:
        assert isinstance(cause, ConnectionFailed), repr(cause)
    assert re.search(says, str(cause)), str(cause)
    assert "connection failed" in caplog.text and re.search(says, caplog.text)
    stats = pool.stats()
    assert stats[names.CONNECT_ERRORS] >= 1 and stats[names.CREATED] == 1
    # The slot was given back: nothing stays "connecting", the size is the held one.
    assert wait_until(lambda: pool.stats()[names.CONNECTING] == 0 and pool.size == 1)
    assert not held.closed  # a connection handed back twice is not closed under its borrower
    errors_before = pool.stats()[names.CONNECT_ERRORS]
    time.sleep(0.3)
    assert pool.stats()[names.CONNECT_ERRORS] == errors_before  # no waiter: no retry

    state["broken"] = False  # the factory mends: the workers are alive and connect again
    conn = take(pool, timeout=5.0)
    assert conn is not held and conn in made
    pool.release(conn)
    pool.release(held)
    assert pool.in_use == 0 and pool.idle == pool.size == 2


@pytest.mark.timeout(30)
@pytest.mark.parametrize("raised", [Abort, KeyboardInterrupt, SystemExit])
def test_configure_raising_base_exception_fails_the_connect(
    make_pool: Any, raised: type[BaseException]
) -> None:
    """``configure`` runs on a worker thread: whatever it raises fails that
    connect, closes the new connection and frees its slot."""
    calls = {"n": 0}

    def configure(conn: FakeConn) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise raised("configure interrupted")

    pool, factory = make_pool(max_size=1, configure=configure)
    conn = take(pool, timeout=5.0)
    assert conn.serial == 1 and factory.conns[0].closed
    assert pool.stats()[names.CONNECT_ERRORS] == 1
    assert pool.stats()[names.CONNECTING] == 0 and pool.size == 1
    pool.release(conn)


# ------------------------------------------------------------------ reset


@pytest.mark.timeout(30)
def test_reset_failure_discards_and_closes(make_pool: Any) -> None:
    pool, _ = make_pool(max_size=1)
    bad = take(pool)
    bad.fail_reset = True
    pool.release(bad)
    assert bad.rollbacks == 1 and bad.closes == 1
    assert pool.size == 0 and pool.in_use == 0
    assert retired(pool).get("reset_failed") == 1
    for _ in range(5):
        conn = take(pool)
        assert conn is not bad
        pool.release(conn)
    assert bad.closes == 1


@pytest.mark.timeout(30)
def test_lost_connection_refilled_to_min_size(make_pool: Any) -> None:
    pool, factory = make_pool(min_size=2, max_size=4)
    assert wait_until(lambda: pool.idle == 2)
    bad = take(pool)
    bad.fail_reset = True
    pool.release(bad)
    assert bad.closed
    assert wait_until(lambda: pool.idle == 2)
    assert factory.calls == 3 and pool.size == 2


@pytest.mark.timeout(30)
def test_reset_callable_and_false(make_pool: Any) -> None:
    resets: list[FakeConn] = []
    pool, _ = make_pool(reset=resets.append, max_size=1)
    conn = take(pool)
    pool.release(conn)
    assert resets == [conn] and conn.rollbacks == 0
    pool2, _ = make_pool(reset=False, max_size=1)
    conn2 = take(pool2)
    pool2.release(conn2)
    assert conn2.rollbacks == 0 and pool2.idle == 1


# ------------------------------------------------------------------ check


@pytest.mark.timeout(30)
def test_check_only_after_check_after(make_pool: Any) -> None:
    pool, _ = make_pool(max_size=1, check_after=0.05)
    conn = take(pool)
    pool.release(conn)
    again = take(pool)
    assert again is conn and conn.checks == 0  # used a moment ago: no check
    pool.release(again)
    time.sleep(0.1)
    again = take(pool)
    assert again is conn and conn.checks == 1
    pool.release(again)
    again = take(pool)
    assert conn.checks == 1
    pool.release(again)


@pytest.mark.timeout(30)
def test_failed_check_discards_and_caller_still_served(make_pool: Any) -> None:
    pool, _ = make_pool(max_size=2, check_after=0.05)
    held = [take(pool) for _ in range(2)]
    for conn in held:
        conn.fail_check = True
        pool.release(conn)
    time.sleep(0.1)
    started = time.monotonic()
    conn = take(pool, timeout=2.0)
    assert time.monotonic() - started < 2.0
    assert conn not in held
    assert all(c.checks == 1 and c.closes == 1 for c in held)
    assert retired(pool).get("check") == 2
    assert pool.in_use == 1 and conn.checks == 0  # a new one: not checked
    pool.release(conn)


@pytest.mark.timeout(30)
def test_check_false_never_checks_and_custom_check_is_used(make_pool: Any) -> None:
    pool, _ = make_pool(check=False, check_after=0.01, max_size=1)
    conn = take(pool)
    conn.fail_check = True
    pool.release(conn)
    time.sleep(0.05)
    assert take(pool) is conn and conn.checks == 0

    checked: list[FakeConn] = []
    pool2, _ = make_pool(check=checked.append, check_after=0.01, max_size=1)
    conn2 = take(pool2)
    pool2.release(conn2)
    checked.clear()
    time.sleep(0.05)
    assert take(pool2) is conn2
    assert checked == [conn2] and conn2.checks == 0  # the adapter's check is not run


# ---------------------------------------------------------------- recycle


@pytest.mark.timeout(30)
def test_max_lifetime_at_hand_out(make_pool: Any) -> None:
    pool, _ = make_pool(max_lifetime=0.2, max_size=1)
    old = take(pool)
    stop_maintenance(pool)
    pool.release(old)
    assert not old.closed
    time.sleep(0.25)
    assert not old.closed  # nothing closed it ahead of time
    new = take(pool)
    assert new is not old and old.closes == 1
    assert retired(pool).get("expired") == 1
    pool.release(new)


@pytest.mark.timeout(30)
def test_max_lifetime_replaced_ahead_by_maintenance(make_pool: Any) -> None:
    """An idle connection near the end of its lifetime is replaced without
    waiting for a caller; with min_size the pool stays warm."""
    pool, factory = make_pool(max_lifetime=0.3, min_size=1, max_size=2)
    assert wait_until(lambda: pool.idle == 1)
    old = factory.conns[0]
    assert wait_until(lambda: old.closed, timeout=2.0)
    assert wait_until(lambda: pool.idle == 1 and len(factory.conns) >= 2)
    assert retired(pool).get("expired", 0) >= 1
    new = take(pool)
    assert new is not old
    pool.release(new)


@pytest.mark.timeout(30)
def test_max_lifetime_at_return(make_pool: Any) -> None:
    pool, _ = make_pool(max_lifetime=0.2, max_size=1)
    conn = take(pool)
    time.sleep(0.25)
    pool.release(conn)
    assert conn.closes == 1 and pool.size == 0 and pool.idle == 0


@pytest.mark.timeout(30)
def test_max_uses(make_pool: Any) -> None:
    pool, _ = make_pool(max_size=1, max_uses=3)
    first = take(pool)
    pool.release(first)
    for _ in range(2):
        assert take(pool) is first
        pool.release(first)
    assert first.closes == 1  # retired on its third return
    second = take(pool)
    assert second is not first
    assert retired(pool).get("used_up") == 1
    pool.release(second)


@pytest.mark.timeout(30)
def test_max_idle_at_hand_out(make_pool: Any) -> None:
    pool, _ = make_pool(max_idle=0.1, check=False, max_size=1)
    conn = take(pool)
    stop_maintenance(pool)
    pool.release(conn)
    for _ in range(5):  # kept while it is used more often than max_idle
        time.sleep(0.03)
        assert take(pool) is conn
        pool.release(conn)
    time.sleep(0.15)
    assert not conn.closed
    new = take(pool)
    assert new is not conn and conn.closes == 1
    assert retired(pool).get("idle") == 1
    pool.release(new)


@pytest.mark.timeout(30)
def test_max_idle_retired_by_maintenance_down_to_min_size(make_pool: Any) -> None:
    pool, _ = make_pool(max_idle=0.1, min_size=1, max_size=3)
    held = [take(pool) for _ in range(3)]
    for conn in held:
        pool.release(conn)
    assert wait_until(lambda: pool.size == 1, timeout=2.0)  # no caller needed
    time.sleep(0.15)
    assert pool.size == 1 and pool.idle == 1  # min_size stays
    assert sum(c.closed for c in held) >= 2
    assert retired(pool).get("idle", 0) >= 2


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
