"""The waiting protocol, one finding at a time: each test here reproduces a
way a caller could time out while a connection sat idle, a waiter could be
orphaned or a slot leak, and holds both cores to the fix.

The broad nets (every call-out point against every kind of interference,
real threads under hypothesis, fault injection, contention) are in
``test_core_interleave.py``, ``test_core_threads_stateful.py``,
``test_core_faults.py`` and ``test_core_contention.py``.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from _support.interleave import finalizer_at_allocation, interleaving
from conftest import FakeConn
from pypool.errors import PoolTimeout


def in_thread(fn: Any, timeout: float = 20.0) -> Any:
    """Runs ``fn()`` in a daemon thread and returns what it returned or
    raised; a thread still running after ``timeout`` seconds is a hang."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("returned", fn()))
        except BaseException as exc:
            outcome.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the operation hangs (a deadlock in the core?)"
    return outcome[0]


# ------------------------------------------------ 1. the empty pop and the enqueue


@pytest.mark.timeout(120)
def test_release_by_a_finalizer_inside_acquire_is_not_lost(CorePool: Any) -> None:
    # A garbage collection inside acquire() (at an allocation between "the
    # free list is empty" and "I am queued", under the Python core's mutex,
    # or in a wait slice) runs a finalizer that gives the only connection
    # back: the caller must get it, and nothing may hang. Only a collection
    # that lands after the core decided on a timeout may leave the caller
    # without it, and then no connection was idle at that decision.
    # (No make_pool: closing a pool whose mutex a hung thread holds would
    # hang the teardown.)
    got_it = 0
    for k in range(1, 9):
        pool = CorePool(1)
        conn = FakeConn()
        pool.fill(pool.reserve(), conn)
        held = [pool.try_acquire()]

        def give_back(pool: Any = pool, held: list[Any] = held) -> None:
            pool.release(held.pop())

        def take(pool: Any = pool, k: int = k) -> Any:
            with finalizer_at_allocation(k, give_back) as finalizer:
                try:
                    return pool.acquire(timeout=1.0), finalizer
                except PoolTimeout as exc:
                    return exc, finalizer

        kind, (got, finalizer) = in_thread(take)
        assert kind == "returned", f"k={k}: {got!r}"
        assert finalizer.ran and finalizer.error is None, (k, finalizer.error)
        if isinstance(got, PoolTimeout):
            assert got.idle == 0, f"k={k}: timed out with a connection idle: {got}"
            assert (pool.idle, pool.in_use, pool.waiting) == (1, 0, 0)
            continue
        got_it += 1
        assert got is conn
        assert (pool.idle, pool.in_use, pool.waiting) == (0, 1, 0)
        assert pool.release(conn) is True
    assert got_it >= 3  # the first allocations are inside acquire(), before any decision


@pytest.mark.parametrize("point", ["acquire.empty", "acquire.queued", "wait.sleep", "wait.woke"])
def test_release_at_a_call_out_point_reaches_the_waiter(
    make_pool: Any, core_module: Any, point: str
) -> None:
    pool, (conn,) = make_pool(1)
    held = [pool.try_acquire()]

    def hook(at: str, core: Any) -> None:
        if at == point and core is pool and held:
            pool.release(held.pop())

    with interleaving(core_module, hook):
        kind, value = in_thread(lambda: pool.acquire(timeout=5.0))
    assert (kind, value) == ("returned", conn)
    assert held == []
    assert (pool.idle, pool.in_use, pool.waiting) == (0, 1, 0)


def test_a_timeout_records_the_idle_count(make_pool: Any) -> None:
    pool, (_conn,) = make_pool(1)
    pool.try_acquire()
    for timeout in (0, 0.05):
        with pytest.raises(PoolTimeout) as info:
            pool.acquire(timeout=timeout)
        assert info.value.idle == 0
    assert pool.stats()["timeouts"] == 2
    assert PoolTimeout("made elsewhere").idle is None


def test_hook_names_are_the_same_in_both_cores(
    native_module: Any, python_module: Any
) -> None:
    assert native_module._CALL_OUT_POINTS == python_module._CALL_OUT_POINTS
    assert len(set(python_module._CALL_OUT_POINTS)) == len(python_module._CALL_OUT_POINTS)


def test_interleave_hook_must_be_callable(core_module: Any) -> None:
    from pypool.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        core_module._set_interleave_hook(42)
    assert core_module._set_interleave_hook(None) is None
