"""The waiting protocol, one finding at a time: each test here reproduces a
way a caller could time out while a connection sat idle, a waiter could be
orphaned or a slot leak, and holds both cores to the fix.

The broad nets (every call-out point against every kind of interference,
real threads under hypothesis, fault injection, contention) are in
``test_core_interleave.py``, ``test_core_threads_stateful.py``,
``test_core_faults.py`` and ``test_core_contention.py``.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

import pytest

from _support.fakes import FakeConn
from _support.interleave import Choreography, finalizer_at_allocation, interleaving
from _support.waiting import wait_until
from pypool.errors import PoolClosed, PoolTimeout


class Caller(threading.Thread):
    """A thread that makes one call and keeps what it returned or raised."""

    def __init__(self, name: str, fn: Any) -> None:
        super().__init__(name=name, daemon=True)
        self.fn = fn
        self.outcome: tuple[str, Any] | None = None

    def run(self) -> None:
        try:
            self.outcome = ("returned", self.fn())
        except BaseException as exc:
            self.outcome = ("raised", exc)

    def result(self, timeout: float = 30.0) -> tuple[str, Any]:
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} hangs"
        assert self.outcome is not None
        return self.outcome


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
    # (No make_core_pool: closing a pool whose mutex a hung thread holds would
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


@pytest.mark.parametrize("point", ["acquire.empty", "acquire.queued", "wait.sleep"])
def test_release_at_a_call_out_point_reaches_the_waiter(
    make_core_pool: Any, core_module: Any, point: str
) -> None:
    pool, (conn,) = make_core_pool(1)
    held = [pool.try_acquire()]

    def hook(at: str, core: Any) -> None:
        if at == point and core is pool and held:
            pool.release(held.pop())

    with interleaving(core_module, hook):
        kind, value = in_thread(lambda: pool.acquire(timeout=5.0))
    assert (kind, value) == ("returned", conn)
    assert held == []
    assert (pool.idle, pool.in_use, pool.waiting) == (0, 1, 0)


def test_a_timeout_records_the_idle_count(make_core_pool: Any) -> None:
    pool, (_conn,) = make_core_pool(1)
    pool.try_acquire()
    for timeout in (0, 0.05):
        with pytest.raises(PoolTimeout) as info:
            pool.acquire(timeout=timeout)
        assert info.value.idle == 0
    assert pool.stats()["timeouts"] == 2
    assert PoolTimeout("made elsewhere").idle is None


def test_hook_names_are_the_same_in_both_cores(native_module: Any, python_module: Any) -> None:
    assert native_module._CALL_OUT_POINTS == python_module._CALL_OUT_POINTS
    assert len(set(python_module._CALL_OUT_POINTS)) == len(python_module._CALL_OUT_POINTS)


def test_interleave_hook_must_be_callable(core_module: Any) -> None:
    from pypool.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        core_module._set_interleave_hook(42)
    assert core_module._set_interleave_hook(None) is None


# ------------------------------------ 2. a wake-up overtaken by a direct hand-off


def _notified_then_handed(pool: Any, dance: Choreography, behind: str) -> Any:
    """W1 waits, with a thread waiter or a ticket behind it. A release makes
    a connection idle and wakes W1 to take it; W1 is held before it runs
    until it has waited longer than handoff_after, when the next release
    hands it a different connection directly. Returns (W1, what is behind,
    the connection left idle, the one handed to W1, W1's gate, W2's gate)."""
    a, b = pool.try_acquire(), pool.try_acquire()
    w1_woken = dance.hold("W1", "wait.woken")
    w2_asleep = dance.hold("W2", "wait.sleep")
    w1 = Caller("W1", lambda: pool.acquire(timeout=30))
    w1.start()
    assert wait_until(lambda: pool.waiting == 1, 30.0)
    if behind == "thread":
        second: Any = Caller("W2", lambda: pool.acquire(timeout=30))
        second.start()
        w2_asleep.wait_reached()  # queued, and held before it sleeps
    else:
        second = pool.enqueue(lambda ticket: None)
    assert pool.waiting == 2
    assert pool.release(a) is True  # W1 is young: a goes idle and W1 is woken
    w1_woken.wait_reached()
    assert (pool.idle, pool.waiting) == (1, 2), "W1 was handed a: too slow a machine?"
    time.sleep(pool.handoff_after * 1.2)  # W1 is owed a hand-off now
    assert pool.release(b) is True  # handed to W1, first in the queue
    return w1, second, a, b, w1_woken, w2_asleep


@pytest.mark.timeout(60)
@pytest.mark.parametrize("second", ["ticket", "thread"])
def test_a_waiter_behind_an_overtaken_wake_up_is_served(
    make_core_pool: Any, core_module: Any, second: str
) -> None:
    """The second waiter (a ticket, or a thread W2) behind an overtaken
    wake-up gets the idle connection a at once; W1 gets b."""
    pool, _ = make_core_pool(2, handoff_after=0.5)
    dance = Choreography(pool)
    with interleaving(core_module, dance):
        w1, other, a, b, w1_woken, w2_asleep = _notified_then_handed(pool, dance, second)
        if second == "ticket":
            # a is idle, W1 took b: the ticket must have a, not wait for it.
            assert other.done, "a ticket waits while a connection is idle"
            assert other.result() is a
        else:
            seen = len(dance.log["W2"])
            w2_asleep.open()
            assert other.result() == ("returned", a)
            # W2 was woken for a, not left to find it when its slice ran out.
            assert dance.log["W2"][seen:][:1] == ["wait.woken"], dance.log["W2"]
        w1_woken.open()
        assert w1.result() == ("returned", b)
    assert (pool.idle, pool.in_use, pool.waiting) == (0, 2, 0)


@pytest.mark.timeout(60)
def test_a_ticket_behind_a_waiter_that_leaves_is_served(
    make_core_pool: Any, core_module: Any
) -> None:
    # W1 is woken for an idle connection and then interrupted before it takes
    # it: the wake-up passes on, to a ticket too.
    pool, _ = make_core_pool(1, handoff_after=30)
    a = pool.try_acquire()
    dance = Choreography(pool)
    dance.raise_at("W1", "wait.woken", KeyboardInterrupt())
    with interleaving(core_module, dance):
        w1 = Caller("W1", lambda: pool.acquire(timeout=30))
        w1.start()
        assert wait_until(lambda: pool.waiting == 1, 30.0)
        ticket = pool.enqueue(lambda ticket: None)
        assert pool.release(a) is True
        kind, exc = w1.result()
        assert (kind, type(exc)) == ("raised", KeyboardInterrupt)
        assert ticket.done, "a ticket waits while a connection is idle"
        assert ticket.result() is a
    assert (pool.idle, pool.in_use, pool.waiting) == (0, 1, 0)


# ------------------------------------------------ 3. every exit path unlinks


class HookFailed(Exception):
    pass


@pytest.mark.parametrize("error", [HookFailed, KeyboardInterrupt], ids=["Exception", "Ctrl-C"])
@pytest.mark.parametrize("how", ["acquire", "ticket"])
def test_on_wait_that_raises_orphans_nothing(CorePool: Any, how: str, error: type) -> None:
    raised: list[int] = []

    def on_wait() -> None:
        raised.append(1)
        raise error("on_wait failed")

    pool = CorePool(1, on_wait=on_wait)
    conn = FakeConn()
    pool.fill(pool.reserve(), conn)
    assert pool.try_acquire() is conn
    calls: list[Any] = []
    with pytest.raises(error):
        if how == "acquire":
            pool.acquire(timeout=5)
        else:
            pool.enqueue(calls.append)
    assert raised == [1]
    assert pool.waiting == 0, "the caller left, its place in the queue stayed"
    # The next release makes the connection idle: nobody left owns it.
    assert pool.release(conn) is True
    assert (pool.idle, pool.in_use, pool.waiting) == (1, 0, 0)
    assert calls == []
    assert pool.try_acquire() is conn
    pool.release(conn)
    assert pool.close() == [conn]


@pytest.mark.parametrize("error", [HookFailed, KeyboardInterrupt], ids=["Exception", "Ctrl-C"])
def test_on_wait_that_raises_after_a_hand_off_passes_it_on(CorePool: Any, error: type) -> None:
    # on_wait gives the connection back (so it is handed to this very
    # waiter), then raises: the connection must not go with the exception.
    held: list[Any] = []

    def on_wait() -> None:
        pool.release(held.pop())
        raise error("on_wait failed")

    pool = CorePool(1, handoff_after=0, on_wait=on_wait)
    conn = FakeConn()
    pool.fill(pool.reserve(), conn)
    held.append(pool.try_acquire())
    with pytest.raises(error):
        pool.acquire(timeout=5)
    assert (pool.idle, pool.in_use, pool.waiting) == (1, 0, 0)
    assert pool.try_acquire() is conn


@pytest.mark.parametrize("error", [HookFailed, KeyboardInterrupt], ids=["Exception", "Ctrl-C"])
def test_enqueue_whose_callback_raises_at_once_passes_the_connection_on(
    make_core_pool: Any, error: type
) -> None:
    # Served at once, the callback raises inside enqueue(): the caller never
    # gets the ticket, so the connection must not stay with it.
    pool, (conn,) = make_core_pool(1)

    def callback(ticket: Any) -> None:
        raise error("the loop is closed")

    with pytest.raises(error):
        pool.enqueue(callback)
    assert (pool.idle, pool.in_use, pool.waiting) == (1, 0, 0)
    assert pool.try_acquire() is conn


# ----------------------------------- 4. a callback that raises stops nothing


class LoopClosed(RuntimeError):
    pass


@pytest.mark.timeout(60)
def test_close_completes_when_a_ticket_callback_raises(make_core_pool: Any) -> None:
    pool, (conn,) = make_core_pool(1)
    assert pool.try_acquire() is conn
    called: list[int] = []

    def callback(n: int) -> Any:
        def call(ticket: Any) -> None:
            called.append(n)
            if n == 2:
                raise LoopClosed("Event loop is closed")

        return call

    tickets = [pool.enqueue(callback(n)) for n in (1, 2, 3)]
    thread = Caller("T", lambda: pool.acquire(timeout=None))
    thread.start()
    assert wait_until(lambda: pool.waiting == 4, 30.0)
    with pytest.raises(LoopClosed):
        pool.close()
    assert called == [1, 2, 3]
    assert all(t.done for t in tickets)
    kind, exc = thread.result(timeout=20)
    assert (kind, type(exc).__name__) == ("raised", "PoolClosed")
    assert pool.waiting == 0
    assert pool.release(conn) is False


def test_release_completes_when_a_ticket_callback_raises(make_core_pool: Any) -> None:
    # The connection is handed to the first ticket, whose callback raises:
    # the release is done all the same (the error is re-raised after), and
    # the ticket's owner can still cancel it to pass the connection on.
    pool, (a, b) = make_core_pool(2)
    assert pool.try_acquire() is b
    assert pool.try_acquire() is a

    def broken(ticket: Any) -> None:
        raise LoopClosed("Event loop is closed")

    first = pool.enqueue(broken)
    second = pool.enqueue(lambda ticket: None)
    with pytest.raises(LoopClosed):
        pool.release(a)
    assert first.done and not second.done
    assert (pool.idle, pool.in_use, pool.waiting) == (0, 2, 1)
    assert first.cancel() is True
    assert second.result() is a
    assert pool.release(b) is True
    assert (pool.idle, pool.in_use, pool.waiting) == (1, 1, 0)


# -------------------------------------- 6. finalizers do no policy work


@pytest.mark.timeout(60)
def test_a_finalizer_only_records_the_death(CorePool: Any) -> None:
    # on_abandon takes a lock (as Pool's takes Policy.lock). A collection that
    # finalizes a borrowed connection while the thread holds that lock must
    # not run on_abandon there: it would deadlock. The next operation reaps.
    lock = threading.Lock()
    reports: list[int] = []

    def on_abandon(slot: int) -> None:
        with lock:
            reports.append(slot)

    pool = CorePool(2, on_abandon=on_abandon)
    pool.fill(pool.reserve(), FakeConn())
    held = [pool.try_acquire()]
    slot = pool.slot_of(held[0])

    def drop() -> list[int]:
        with lock:
            held.clear()  # the last reference: finalized here, lock held
            gc.collect()
            return list(reports)

    assert in_thread(drop, timeout=10) == ("returned", [])
    assert reports == []
    assert pool.stats()["abandoned"] == 1  # the next operation reaps, and reports
    assert reports == [slot]
    assert (pool.size, pool.in_use) == (0, 0)


# ------------------------------- 7. a dead connection's address is free again


def test_a_new_connection_may_take_a_dead_ones_address(CorePool: Any) -> None:
    # A borrowed connection dies unreturned; its death is only recorded (the
    # finalizer does nothing else). A new connection that gets the dead one's
    # address must fill, and the dead slot must not count against max_size:
    # reserve() and fill() reap what died before they do anything.
    hits = 0
    for _ in range(20):
        pool = CorePool(1)
        pool.fill(pool.reserve(), FakeConn())
        conn = pool.try_acquire()
        address = id(conn)
        del conn  # finalized here
        spare: list[Any] = []
        for _ in range(10_000):
            new = FakeConn()
            if id(new) == address:
                break
            spare.append(new)
        else:
            continue  # the allocator chose another address this time
        hits += 1
        assert pool.size == 1  # not reaped yet: only recorded
        slot = pool.reserve()
        assert slot is not None, "the dead slot still counts against max_size"
        pool.fill(slot, new)
        assert pool.try_acquire() is new
        assert pool.stats()["abandoned"] == 1
    assert hits > 0


# ------------------------------------------------ 8. a long lifetime saturates


@pytest.mark.parametrize("lifetime", [9.3e9, 1e10, 1e300, float("inf"), 2**80])
def test_a_very_long_lifetime_never_expires(CorePool: Any, core_module: Any, lifetime: Any) -> None:
    pool = CorePool(1)
    slot = pool.reserve()
    pool.fill(slot, FakeConn(), lifetime=lifetime)
    assert pool.verdict(slot, True) == core_module.OK
    assert pool.verdict(slot, False) == core_module.OK
    _, created, *_, expires = pool.slot_info(slot)
    assert expires > created + 9e9


def test_the_longest_lifetime_is_the_same_in_both_cores(
    native_module: Any, python_module: Any
) -> None:
    ends = []
    for core in (native_module, python_module):
        pool = core.CorePool(1)
        pool.fill(pool.reserve(), FakeConn(), lifetime=1e12)
        ends.append(pool.slot_info(0)[-1])
    assert ends[0] == pytest.approx(ends[1])


# ------------------------------------- 9. the deadline counts from the call


@pytest.mark.timeout(60)
def test_the_deadline_counts_from_the_call_hooks_included(CorePool: Any, core_module: Any) -> None:
    # on_wait takes longer than the whole timeout: when it returns, the
    # deadline has passed, so the caller times out after one last retry of
    # the pop, without sleeping through further slices.
    def slow_on_wait() -> None:
        time.sleep(0.3)

    pool = CorePool(1, on_wait=slow_on_wait)
    pool.fill(pool.reserve(), FakeConn())
    pool.try_acquire()
    dance = Choreography(pool)
    with interleaving(core_module, dance):
        caller = Caller("W", lambda: pool.acquire(timeout=0.2))
        caller.start()
        kind, exc = caller.result()
    assert (kind, type(exc)) == ("raised", PoolTimeout)
    assert exc.idle == 0
    slices = [p for p in dance.log["W"] if p.startswith("wait.") and p != "wait.sleep"]
    assert slices == ["wait.slice_out"], dance.log["W"]


# --------------------------- nothing read before a call-out is trusted after


@pytest.mark.timeout(120)
def test_fill_sees_a_close_made_by_a_finalizer_inside_it(CorePool: Any) -> None:
    # fill() allocates (its weak reference); a collection there may run a
    # finalizer that closes the pool. Then fill() must raise PoolClosed (the
    # caller closes the connection), not fill a closed pool.
    for k in range(1, 12):
        pool = CorePool(1)
        slot = pool.reserve()
        conn = FakeConn()
        closed: list[Any] = []

        def close(pool: Any = pool, closed: list[Any] = closed) -> None:
            closed.extend(pool.close())

        with finalizer_at_allocation(k, close) as finalizer:
            try:
                pool.fill(slot, conn)
                outcome = "filled"
            except PoolClosed:
                outcome = "refused"
        gc.collect()
        if not finalizer.ran or finalizer.error is not None:
            continue  # the collection came too late, or the close was refused
        if outcome == "filled":
            assert any(c is conn for c in closed), f"k={k}: filled into a closed pool"
        else:
            assert closed == [] and pool.size == 0
        assert pool.close() == []
