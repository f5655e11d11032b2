"""pypool.Pool with fake connections, on both cores.

Every test runs once per core (the ``core_module`` fixture): the pool is built
with ``Pool.with_core(core_module)(...)``. The fakes count what the pool does to
them (rollbacks, checks, closes, configure) and can be told to fail.
Reset, check and recycling (``max_lifetime``, ``max_uses``, ``max_idle``)
are tested on ``Pool`` and ``AsyncPool`` alike in test_checks.py and
test_recycle.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from _support.fakes import Factory, FakeConn, FakeError
from pypool import stats as names
from pypool.errors import (
    NotBorrowed,
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
