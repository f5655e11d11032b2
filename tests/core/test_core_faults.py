"""Fault injection: every hook and callback the core calls raises an
``Exception``, raises ``KeyboardInterrupt``, or returns garbage, in every
place the core calls it. Afterwards the operation that called it is either
complete or never started, and, once everything is given back, the counts
balance, nobody is left waiting and every connection is accounted for.

Hooks: ``on_wait`` (from ``acquire`` and ``enqueue``), ``on_abandon`` (from
the reap before a slow-path operation), a ticket's callback (served at once,
by a release, a fill, a restore, a cancel that passes a connection on, a
close) and a connection's finalizer.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from _support.protocol import Conn, Ledger
from pypool.errors import PoolError, PoolTimeout


class Fault(Exception):
    pass


class Garbage:
    """What a hook returns instead of None: an object that must be ignored
    (a coroutine the core never awaits, or any other object)."""

    def __await__(self) -> Any:
        raise AssertionError("the core must not await what a hook returns")


FAULTS: dict[str, Callable[[], Any]] = {
    "Exception": lambda: (_ for _ in ()).throw(Fault("hook failed")),
    "KeyboardInterrupt": lambda: (_ for _ in ()).throw(KeyboardInterrupt()),
    "garbage": Garbage,
}
EXPECTED = (Fault, KeyboardInterrupt)


class Faulty:
    """A hook that does its fault while armed, and counts its calls."""

    def __init__(self, fault: str) -> None:
        self.fault = FAULTS[fault]
        self.armed = False
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        if self.armed:
            return self.fault()
        return None


def attempt(fn: Callable[[], Any]) -> Any:
    """The call's result, or the exception it raised: the injected fault, or
    a timeout (which must not leave a connection idle)."""
    try:
        return fn()
    except EXPECTED as exc:
        return exc
    except PoolTimeout as exc:
        assert exc.idle == 0, exc
        return exc


def settle_and_check(ledger: Ledger, pool: Any) -> None:
    ledger.settle()
    pool.stats()  # reap anything dropped while settling
    gc.collect()
    pool.stats()
    stats = pool.stats()
    assert stats["waiting"] == 0
    assert (stats["size"], stats["in_use"], stats["idle"]) == (0, 0, 0), stats
    accounted = ledger.freed + ledger.abandoned
    assert sorted(accounted) == sorted(ledger.made), (accounted, ledger.made)
    assert stats["abandoned"] == len(ledger.abandoned)


def make(core_module: ModuleType, **hooks: Any) -> tuple[Any, Ledger, list[Conn]]:
    """A pool of three, two connections made, both borrowed by the test."""
    pool = core_module.CorePool(3, **hooks)
    ledger = Ledger(pool, tolerate=(Fault,))
    for k in range(2):
        ledger.fill(f"c{k}")
    held = [pool.try_acquire(), pool.try_acquire()]
    ledger.maybe_held.extend(held)
    return pool, ledger, held


@pytest.fixture(params=list(FAULTS))
def fault(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ----------------------------------------------------------------- on_wait


@pytest.mark.parametrize("via", ["acquire", "enqueue"])
def test_on_wait(core_module: ModuleType, fault: str, via: str) -> None:
    hook = Faulty(fault)
    pool, ledger, (a, _b) = make(core_module, on_wait=hook, handoff_after=0)
    hook.armed = True
    if via == "acquire":
        got = attempt(lambda: pool.acquire(timeout=0.05))
        if fault == "garbage":
            assert isinstance(got, PoolTimeout)  # nothing was given back
    else:
        got = attempt(lambda: pool.enqueue(lambda t: None))
        if not isinstance(got, BaseException):
            ledger.tickets.append(got)
    assert hook.calls == 1
    if isinstance(got, EXPECTED):
        assert pool.waiting == 0
    hook.armed = False
    ledger.release(a)  # served to a ticket, or idle: never to an orphan
    if isinstance(got, EXPECTED):
        assert (pool.idle, pool.waiting) == (1, 0)
    settle_and_check(ledger, pool)


# -------------------------------------------------------------- on_abandon


@pytest.mark.parametrize("op", ["stats", "reserve", "acquire", "close"])
def test_on_abandon(core_module: ModuleType, fault: str, op: str) -> None:
    hook = Faulty(fault)
    pool, ledger, (a, b) = make(core_module, on_abandon=hook)
    hook.armed = True
    ledger.maybe_held.remove(b)
    ledger.abandoned.append(b.name)
    del b
    gc.collect()  # recorded only: no hook runs here
    assert hook.calls == 0
    calls = {
        "stats": pool.stats,
        "reserve": pool.reserve,
        "acquire": lambda: pool.acquire(timeout=0.01),
        "close": pool.close,
    }
    got = attempt(calls[op])
    assert hook.calls == 1
    if isinstance(got, EXPECTED):
        # Reaped before the operation did anything: it never started.
        assert pool.stats()["abandoned"] == 1
        assert not pool.closed and pool.connecting == 0
    elif op == "reserve":
        pool.abandon(got)
    elif op == "close":
        ledger.closed(got)
    hook.armed = False
    ledger.release(a)
    settle_and_check(ledger, pool)


# -------------------------------------------------------- ticket callbacks


@pytest.mark.parametrize("by", ["at_once", "release", "fill", "restore", "cancel", "close"])
def test_ticket_callback(core_module: ModuleType, fault: str, by: str) -> None:
    callback = Faulty(fault)
    pool, ledger, (a, b) = make(core_module)
    callback.armed = True
    if by == "at_once":
        ledger.release(a)  # idle: the ticket is served inside enqueue()
        got = attempt(lambda: pool.enqueue(callback))
        if isinstance(got, EXPECTED):
            # The caller never got the ticket: the connection went back.
            assert (pool.idle, pool.in_use) == (1, 1)
        else:
            ledger.tickets.append(got)
    else:
        first = pool.enqueue(callback)
        ledger.tickets.append(first)
        if by == "release":
            ledger.maybe_held.remove(a)
            got = attempt(lambda: pool.release(a))
        elif by == "fill":
            conn = ledger.new("filled")
            got = attempt(lambda: pool.fill(pool.reserve(), conn))
        elif by == "restore":
            first.cancel()
            callback.armed = False
            ledger.release(b)  # idle: nobody waits
            slot = pool.slot_of(b)
            assert pool.claim(slot) is b
            second = pool.enqueue(callback)  # nothing idle: it waits
            ledger.tickets.append(second)
            callback.armed = True
            callback.calls = 0
            got = attempt(lambda: pool.restore(slot))  # hands b to the ticket
        elif by == "cancel":
            other = pool.enqueue(callback)
            ledger.tickets.append(other)
            callback.armed = False
            ledger.release(a)  # to the first ticket
            callback.armed = True
            got = attempt(first.cancel)  # passes it on to the second
        else:
            got = attempt(pool.close)
            if not isinstance(got, BaseException):
                ledger.closed(got)
    assert callback.calls >= 1
    callback.armed = False
    settle_and_check(ledger, pool)


# --------------------------------------------------------------- finalizers


class RaisingConn(Conn):
    def __init__(self, name: str, fault: str) -> None:
        super().__init__(name)
        self.fault = FAULTS[fault]

    def __del__(self) -> None:
        self.fault()


def test_finalizer_of_an_abandoned_connection(
    core_module: ModuleType, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a finalizer raises is "unraisable": printed, and dropped here, so
    # that no traceback keeps the dead connection's frame (and so it) alive.
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: None)
    pool = core_module.CorePool(2)
    ledger = Ledger(pool, tolerate=(Fault,))
    conn = RaisingConn("raising", fault)
    ledger.made.add(conn.name)
    pool.fill(pool.reserve(), conn)
    kept = ledger.fill("kept")
    assert pool.try_acquire() is kept
    ledger.maybe_held.append(kept)
    borrowed = pool.try_acquire()
    assert borrowed is conn
    ledger.abandoned.append(conn.name)
    del conn, borrowed
    gc.collect()  # its __del__ raises: only printed, the death is recorded
    with pytest.raises(PoolError):
        pool.slot_of(object())
    settle_and_check(ledger, pool)
