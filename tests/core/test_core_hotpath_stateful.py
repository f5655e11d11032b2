"""Stateful property test of the cores' hot path, ``PoolBase``: random
sequences of hand-outs and returns, blocking (``acquire``, ``release``) and
not (``_take``, ``_give``, ``_give_back``), with resets that succeed, fail or
must be awaited, with thresholds (``max_uses``, ``check_after``), generations,
``max_size`` changes and close, applied in lockstep to a native and a Python
``PoolBase``. After every step the two must agree on what each call returned
or raised, on every hook call (which connection, which verdict), and on the
core's state.

Only deterministic verdicts are drawn (no lifetimes, no ``max_idle``): time
must not decide an outcome here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from _support.stateful import machine_settings

pytestmark = pytest.mark.stateful

SETTINGS = machine_settings(150, 50)

#: What a connection's reset does, drawn per connection.
RESETS = ("plain", "returns", "raises")


class Conn:
    """A connection whose reset is scripted by the test."""

    def __init__(self, serial: int) -> None:
        self.serial = serial
        self.mode = "plain"

    def reset(self) -> Any:
        if self.mode == "raises":
            raise RuntimeError(f"reset of {self.serial} failed")
        if self.mode == "returns":
            return ("pending", self.serial)
        return None


def hotpath_machine(modules: list[Any]) -> type[RuleBasedStateMachine]:
    class Hotpath(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.pools: list[Any] = []
            self.conns: list[list[Conn]] = [[] for _ in modules]  # per pool, by serial
            self.held: list[int] = []  # serials borrowed (same on every pool)
            self.pending: list[int] = []  # serials whose reset awaits _give_back

        # ------------------------------------------------------ plumbing

        def make_pool(self, module: Any, max_size: int) -> Any:
            calls: list[tuple[Any, ...]] = []

            def serial(conn: Any) -> Any:
                return conn.serial if isinstance(conn, Conn) else conn

            class Recording(module.PoolBase):  # type: ignore[misc,name-defined]
                def _retire(self, conn: Any, reason: int, exc: Any) -> None:
                    calls.append(("retire", serial(conn), reason, type(exc).__name__))

                def _rejected(self, conn: Any, reason: int, exc: Any) -> None:
                    calls.append(("rejected", serial(conn), reason))

                def _checked_out(self, conn: Any) -> None:
                    calls.append(("out", serial(conn)))

                def _checking_in(self, conn: Any) -> None:
                    calls.append(("in", serial(conn)))

                def _vet(self, conn: Any, timeout: float) -> Any:
                    calls.append(("vet", serial(conn)))
                    return None

            core = module.CorePool(max_size)
            pool = Recording(core, 0.0, "reset")
            pool.calls = calls
            return pool

        def each(self, op: Callable[[Any, int], Any]) -> Any:
            """``op(pool, k)`` on every pool: same result (connections by
            serial), same exception type; returns the first result."""
            results = []
            for k, pool in enumerate(self.pools):
                try:
                    value = op(pool, k)
                    results.append((value.serial if isinstance(value, Conn) else value, None))
                except Exception as exc:
                    results.append((None, type(exc).__name__))
            assert all(r == results[0] for r in results), f"the cores disagree: {results}"
            return results[0]

        def conn(self, k: int, serial: int) -> Conn:
            return self.conns[k][serial]

        # ---------------------------------------------------------- rules

        @initialize(max_size=st.integers(1, 4), observe=st.booleans())
        def start(self, max_size: int, observe: bool) -> None:
            import threading

            self.pools = [self.make_pool(m, max_size) for m in modules]
            for pool in self.pools:
                pool._set_thread(threading.get_ident())
                pool._set_observe(observe)

        @rule(mode=st.sampled_from(RESETS))
        def add_connection(self, mode: str) -> None:
            def op(pool: Any, k: int) -> Any:
                slot = pool._core.reserve()
                if slot is None:
                    return None
                conn = Conn(len(self.conns[k]))
                conn.mode = mode
                self.conns[k].append(conn)
                pool._core.fill(slot, conn, None)
                return slot

            self.each(op)

        @rule()
        def take(self) -> None:
            def op(pool: Any, k: int) -> Any:
                conn = pool._take()
                unchecked = pool._unchecked
                pool._unchecked = None
                return (
                    conn.serial if conn is not None else None,
                    unchecked.serial if unchecked is not None else None,
                )

            (got, unchecked), exc = self.each(op)
            for serial in (got, unchecked):
                if exc is None and serial is not None:
                    self.held.append(serial)

        @rule()
        def acquire_now(self) -> None:
            serial, exc = self.each(lambda p, k: p.acquire(0))
            if exc is None:
                self.held.append(serial)

        @precondition(lambda self: self.held)
        @rule(data=st.data(), blocking=st.booleans())
        def give(self, data: Any, blocking: bool) -> None:
            serial = data.draw(st.sampled_from(self.held))

            def op(pool: Any, k: int) -> Any:
                conn = self.conn(k, serial)
                if blocking:
                    return pool.release(conn)
                return pool._give(conn)

            value, exc = self.each(op)
            if exc is None:
                self.held.remove(serial)
                if value is not None:
                    self.pending.append(serial)

        @precondition(lambda self: self.pending)
        @rule(data=st.data())
        def give_back(self, data: Any) -> None:
            serial = data.draw(st.sampled_from(self.pending))
            _, exc = self.each(lambda p, k: p._give_back(self.conn(k, serial)))
            if exc is None:
                self.pending.remove(serial)

        @rule(serial=st.integers(0, 12), blocking=st.booleans())
        def give_any(self, serial: int, blocking: bool) -> None:
            """Misuse too: a connection not borrowed, or returned twice."""
            if serial in self.held or serial in self.pending:
                return
            if serial >= len(self.conns[0]):
                return

            def op(pool: Any, k: int) -> Any:
                conn = self.conn(k, serial)
                return pool.release(conn) if blocking else pool._give(conn)

            self.each(op)

        @precondition(lambda self: self.conns[0])
        @rule(data=st.data(), mode=st.sampled_from(RESETS))
        def script_reset(self, data: Any, mode: str) -> None:
            serial = data.draw(st.integers(0, len(self.conns[0]) - 1))
            for k in range(len(self.pools)):
                self.conn(k, serial).mode = mode

        @rule(max_uses=st.sampled_from([0, 0, 1, 2, 3]))
        def set_max_uses(self, max_uses: int) -> None:
            def op(pool: Any, k: int) -> None:
                pool._core.max_uses = max_uses

            self.each(op)

        @rule(check=st.booleans())
        def set_check_after(self, check: bool) -> None:
            def op(pool: Any, k: int) -> None:
                pool._core.check_after = 0.0 if check else None

            self.each(op)

        @rule(max_size=st.integers(1, 4))
        def set_max_size(self, max_size: int) -> None:
            def op(pool: Any, k: int) -> None:
                pool._core.max_size = max_size

            self.each(op)

        @rule()
        def advance_generation(self) -> None:
            self.each(lambda p, k: p._core.advance_generation())

        @rule(data=st.data())
        def close(self, data: Any) -> None:
            if data.draw(st.integers(0, 5)) == 0:
                self.each(lambda p, k: len(p._core.close()))

        # ------------------------------------------------------ invariants

        @invariant()
        def same_calls_and_state(self) -> None:
            if not self.pools:
                return

            def observe(pool: Any) -> Any:
                core = pool._core
                stats = core.stats()
                return (
                    tuple(pool.calls),
                    core.size,
                    core.idle,
                    core.in_use,
                    core.closed,
                    stats["acquires"],
                    tuple((i, *(core.slot_info(i)[j] for j in (0, 4, 5))) for i in core.slots()),
                )

            seen = [observe(pool) for pool in self.pools]
            assert all(s == seen[0] for s in seen), "\n".join(map(repr, seen))

    return Hotpath


def test_native_and_python_hot_paths_agree(native_module: Any, python_module: Any) -> None:
    machine = hotpath_machine([native_module, python_module])
    run_state_machine_as_test(machine, settings=SETTINGS)
