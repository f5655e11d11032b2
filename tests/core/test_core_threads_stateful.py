"""A stateful test with real threads: hypothesis rules start threads that
block in ``acquire`` with timeouts, give connections back from the test's
thread or from another one, queue tickets and cancel them, and close the
pool, on each core. The interleavings are the operating system's; the
invariants are checked after every step and at the end:

- the counts balance, and no connection is held by two owners;
- no caller timed out while the pool held an idle connection
  (``PoolTimeout.idle``, recorded by the core with its decision);
- at the end, once every thread is done and everything is given back, every
  connection is idle (or was handed back by ``close()``), nobody waits.

``max_examples`` is bounded so that each core costs well under a minute.
"""

from __future__ import annotations

import contextlib
import threading
import time
from types import ModuleType
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from _support.stateful import machine_settings
from pypool.errors import NotBorrowed, PoolClosed, PoolError, PoolTimeout

pytestmark = pytest.mark.stateful

SETTINGS = machine_settings(200, 30)

SIZE = 3
TIMEOUTS = (0.0, 0.005, 0.02, 0.1)


class Thing:
    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"<Thing {self.n}>"


class Call(threading.Thread):
    """One blocking acquire in its own thread."""

    def __init__(self, pool: Any, timeout: float, release_after: float | None) -> None:
        super().__init__(daemon=True)
        self.pool = pool
        self.timeout = timeout
        self.release_after = release_after  # give it back itself, after this long
        self.got: Any = None
        self.freed: Any = None  # given back after close(): the caller's to close
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.got = self.pool.acquire(timeout=self.timeout)
        except BaseException as exc:
            self.error = exc
            return
        if self.release_after is not None:
            time.sleep(self.release_after)
            conn, self.got = self.got, None
            try:
                if self.pool.release(conn) is False:
                    self.freed = conn
            except BaseException as exc:
                self.error = exc


def machine(core_module: ModuleType) -> type[RuleBasedStateMachine]:
    class Threads(RuleBasedStateMachine):
        @initialize()
        def make(self) -> None:
            self.pool = core_module.CorePool(SIZE)
            self.conns = [Thing(n) for n in range(SIZE)]
            for conn in self.conns:
                self.pool.fill(self.pool.reserve(), conn)
            self.held: list[Any] = []  # by the test's thread
            self.calls: list[Call] = []
            self.tickets: list[Any] = []
            self.closed_with: list[Any] = []
            self.problems: list[str] = []

        # -------------------------------------------------------- rules

        @rule(timeout=st.sampled_from(TIMEOUTS), gives_back=st.booleans())
        def acquire_in_a_thread(self, timeout: float, gives_back: bool) -> None:
            call = Call(self.pool, timeout, 0.001 if gives_back else None)
            self.calls.append(call)
            call.start()

        @rule()
        def try_acquire(self) -> None:
            try:
                conn = self.pool.try_acquire()
            except PoolClosed:
                return
            if conn is not None:
                self.held.append(conn)

        # What the threads did is not known in advance, so no rule depends on
        # it for what hypothesis draws: an index is drawn from a fixed range.

        @rule(index=st.integers(0, 7))
        def release(self, index: int) -> None:
            if not self.held:
                return
            conn = self.held.pop(index % len(self.held))
            if self.pool.release(conn) is False:
                self.closed_with.append(conn)

        @rule()
        def collect_finished(self) -> None:
            for call in [c for c in self.calls if not c.is_alive()]:
                self.calls.remove(call)
                self._collect(call)

        @rule()
        def enqueue(self) -> None:
            with contextlib.suppress(PoolClosed):
                self.tickets.append(self.pool.enqueue(lambda t: None))

        @rule(index=st.integers(0, 7), timed_out=st.booleans())
        def cancel_or_take_a_ticket(self, index: int, timed_out: bool) -> None:
            if not self.tickets:
                return
            ticket = self.tickets.pop(index % len(self.tickets))
            if ticket.done and not timed_out:
                with contextlib.suppress(PoolError):
                    self.held.append(ticket.result())
            else:
                ticket.cancel(timed_out=timed_out)

        @rule()
        def let_threads_run(self) -> None:
            time.sleep(0.002)

        @rule(dice=st.integers(0, 9))
        def close(self, dice: int) -> None:
            if dice == 0:  # rarely: it ends the interesting part
                self.closed_with += self.pool.close()

        # -------------------------------------------------- invariants

        def _collect(self, call: Call) -> None:
            if isinstance(call.error, PoolTimeout):
                if call.error.idle != 0:
                    self.problems.append(f"timed out with a connection idle: {call.error}")
            elif call.error is not None and not isinstance(call.error, PoolClosed):
                self.problems.append(f"a thread failed: {call.error!r}")
            if call.got is not None:
                self.held.append(call.got)
            if call.freed is not None:
                self.closed_with.append(call.freed)

        @invariant()
        def counts_balance(self) -> None:
            s = self.pool.stats()
            assert s["size"] == s["idle"] + s["in_use"] + s["connecting"] + s["claimed"], s
            assert s["waiting"] >= 0
            owners = [id(c) for c in self.held]
            assert len(owners) == len(set(owners)), "a connection with two owners"
            assert self.problems == []

        def teardown(self) -> None:
            for call in self.calls:
                call.join(10)
                assert not call.is_alive(), "a thread hangs"
                self._collect(call)
            for ticket in self.tickets:
                if ticket.done:
                    with contextlib.suppress(PoolError):
                        self.held.append(ticket.result())
                else:
                    ticket.cancel()
            for conn in self.held:
                try:
                    if self.pool.release(conn) is False:
                        self.closed_with.append(conn)
                except NotBorrowed:
                    self.problems.append(f"{conn!r} was not borrowed when given back")
            assert self.problems == []
            s = self.pool.stats()
            assert s["waiting"] == 0 and s["in_use"] == 0, s
            back = self.closed_with + self.pool.close()
            assert sorted(c.n for c in back) == list(range(SIZE))

    return Threads


@pytest.mark.timeout(300)
def test_threads_stateful(core_module: ModuleType) -> None:
    run_state_machine_as_test(machine(core_module), settings=SETTINGS)
