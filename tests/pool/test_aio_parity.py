"""``pypool.AsyncPool`` does what ``pypool.Pool`` does, on both cores:
events (``add_listener``), ``discard``, ``leak_timeout``, ``keepalive``,
replacement ahead of ``max_lifetime`` and ``max_idle``; the sync twins of
these tests are in test_observability.py, test_pool.py and test_health.py.

Fake asyncio connections serve every test but one (marker ``db``): a
keepalive check on asyncpg finds a backend terminated from another session.
Tests are plain functions that drive their coroutine with the ``run``
fixture, which closes every pool the test made before the loop ends.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from types import ModuleType
from typing import Any

import pytest

import pypool
import pypool.asyncpg
from _support.fakes import AsyncFactory, AsyncFakeAdapter, AsyncFakeConn, FakeError
from _support.waiting import eventually
from pypool import AsyncPool, stats
from pypool.errors import ConfigurationError
from pypool.pool import EVENTS

# ------------------------------------------------------------------ fakes


def C(conn: AsyncFakeConn) -> tuple[str, int]:
    """A connection as recorded: by serial number (holding it would keep an
    abandoned one alive)."""
    return ("conn", conn.serial)


class Recorder:
    """Listens to ``events`` of ``pool`` and records ``(event, args)``, with
    connections by serial; checkin and reset also record the connection's
    rollbacks at that moment (was the reset done yet?)."""

    def __init__(self, pool: AsyncPool, events: Iterable[str] = tuple(EVENTS)) -> None:
        self.pool = pool
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.other_pool = 0  # listener calls whose first argument was not the pool
        for event in events:
            pool.add_listener(event, self._listener(event))

    def _listener(self, event: str) -> Callable[..., None]:
        def listener(pool: Any, *args: Any) -> None:
            if pool is not self.pool:
                self.other_pool += 1
            snapshot: tuple[Any, ...] = tuple(
                C(a) if isinstance(a, AsyncFakeConn) else a for a in args
            )
            if event in ("checkin", "reset") and args:
                snapshot = (*snapshot, args[0].rollbacks)
            self.calls.append((event, snapshot))

        return listener

    def of(self, event: str) -> list[tuple[Any, ...]]:
        return [args for e, args in self.calls if e == event]


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def pools() -> list[AsyncPool]:
    """The pools a test made (``run`` closes them)."""
    return []


@pytest.fixture
def make(core_module: ModuleType, pools: list[AsyncPool]) -> Callable[..., Any]:
    """``make(factory=None, **kw) -> (pool, factory)``: an AsyncPool on the
    core under test, with an AsyncFakeAdapter unless ``adapter`` is given."""

    def make(factory: Any = None, **kw: Any) -> tuple[AsyncPool, Any]:
        factory = AsyncFactory() if factory is None else factory
        kw.setdefault("adapter", AsyncFakeAdapter())
        kw.setdefault("timeout", 5.0)
        kw.setdefault("max_size", 4)
        pool = AsyncPool.with_core(core_module)(factory, **kw)
        pools.append(pool)
        return pool, factory

    return make


@pytest.fixture
def run(pools: list[AsyncPool]) -> Callable[[Callable[[], Awaitable[None]]], None]:
    """``run(main)``: ``asyncio.run(main())``, then every pool made is closed
    on that loop (also when the test fails)."""

    def run(main: Callable[[], Awaitable[None]]) -> None:
        async def guarded() -> None:
            try:
                await main()
            finally:
                for pool in pools:
                    await pool.close(timeout=2.0)

        asyncio.run(guarded())

    return run


# ------------------------------------------------------------------ helpers


def retired(pool: AsyncPool) -> dict[str, int]:
    return dict(pool.stats()[stats.RETIRED])


def acquiring_line_in(message: str, line: int) -> bool:
    """True if ``message`` names this file at ``line`` (as a traceback does)."""
    base = os.path.basename(__file__)
    return f'{base}", line {line}' in message or f"{base}:{line}" in message


# ------------------------------------------------------------------ listeners


@pytest.mark.timeout(30)
def test_listener_registration_is_validated(make: Any, run: Any) -> None:
    async def main() -> None:
        pool, _ = make(max_size=1)
        seen: list[tuple[str, int]] = []

        def on_checkout(pool: Any, conn: Any) -> None:
            seen.append(C(conn))

        for event in EVENTS:  # every documented event is accepted
            pool.add_listener(event, on_checkout)
            pool.remove_listener(event, on_checkout)
        pool.add_listener("checkout", on_checkout)
        conn = await pool.acquire()
        await pool.release(conn)
        assert seen == [C(conn)]
        pool.remove_listener("checkout", on_checkout)
        conn = await pool.acquire()
        await pool.release(conn)
        assert seen == [C(conn)], "a removed listener is not called"

        with pytest.raises(ConfigurationError):
            pool.remove_listener("checkout", on_checkout)  # not registered (any more)
        with pytest.raises(ConfigurationError):
            pool.add_listener("checkouts", on_checkout)
        with pytest.raises(ConfigurationError):
            pool.remove_listener("nope", on_checkout)
        with pytest.raises(ConfigurationError):
            pool.add_listener("checkout", "not callable")  # type: ignore[arg-type]

        async def coroutine_listener(pool: Any, conn: Any) -> None:
            seen.append(("coroutine", 0))

        with pytest.raises(ConfigurationError):
            pool.add_listener("checkout", coroutine_listener)
        with pytest.raises(ConfigurationError):
            pool.remove_listener("checkout", coroutine_listener)  # it was never added
        conn = await pool.acquire()
        await pool.release(conn)
        assert seen == [C(conn)]

    run(main)


@pytest.mark.timeout(30)
def test_connect_checkout_checkin_reset_events(make: Any, run: Any) -> None:
    async def main() -> None:
        configured: list[tuple[str, int]] = []

        async def configure(conn: AsyncFakeConn) -> None:
            await asyncio.sleep(0)
            configured.append(C(conn))

        pool, factory = make(max_size=2, configure=configure, check_after=None)
        rec = Recorder(pool)
        configured_first: list[bool] = []
        pool.add_listener("connect", lambda p, c: configured_first.append(C(c) in configured))

        conn = await pool.acquire()
        assert await eventually(lambda: pool.stats()[stats.CONNECTING] == 0)
        made = [("conn", n) for n in range(factory.made)]
        assert C(conn) in made
        assert rec.of("connect") == [(c,) for c in made]
        assert configured == made
        assert configured_first == [True] * len(made), "connect fires after configure"
        assert rec.of("checkout") == [(C(conn),)], "checkout fires before acquire returns"
        assert rec.of("checkin") == [] and rec.of("reset") == []

        await pool.release(conn)
        assert rec.of("checkin") == [(C(conn), 0)], "checkin fires before the reset"
        assert rec.of("reset") == [(C(conn), 1)], "reset fires after the reset"
        assert conn.rollbacks == 1

        again = await pool.acquire()  # an idle one: the fast path
        assert again is conn
        assert rec.of("checkout") == [(C(conn),), (C(conn),)]
        await pool.release(again)
        assert rec.of("checkin") == [(C(conn), 0), (C(conn), 1)]
        assert rec.of("reset") == [(C(conn), 1), (C(conn), 2)]
        assert rec.of("close") == []
        assert rec.other_pool == 0, "listeners get the pool first"

    run(main)


@pytest.mark.timeout(30)
def test_no_reset_event_without_a_reset(make: Any, run: Any) -> None:
    async def main() -> None:
        pool, _ = make(max_size=1, reset=False)
        rec = Recorder(pool, ("checkin", "reset"))
        conn = await pool.acquire()
        await pool.release(conn)
        assert rec.of("checkin") == [(C(conn), 0)]
        assert rec.of("reset") == []
        assert conn.rollbacks == 0

    run(main)


@pytest.mark.timeout(30)
def test_failing_listener_is_logged_and_pool_keeps_working(
    make: Any, run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pypool")
    kinds = ("connect", "checkout", "checkin", "reset", "close")

    def exploding(event: str) -> Callable[..., None]:
        def listener(pool: Any, *args: Any) -> None:
            raise FakeError(f"{event} listener exploded")

        return listener

    async def main() -> None:
        pool, _ = make(max_size=1)
        for event in kinds:
            pool.add_listener(event, exploding(event))
        for _ in range(3):
            async with pool.connection() as conn:
                assert not conn.closed
        assert conn.rollbacks == 3, "the reset ran despite the failing reset listener"
        victim = await pool.acquire()
        assert victim is conn
        await pool.discard(victim)
        assert await eventually(lambda: victim.closed)
        async with pool.connection() as conn2:
            assert conn2 is not conn
            assert not conn2.closed
        assert pool.stats()[stats.REQUESTS] == 5
        assert retired(pool) == {"discarded": 1}

    run(main)
    failed = {
        str(r.exc_info[1])
        for r in caplog.records
        if r.name == "pypool" and r.exc_info and isinstance(r.exc_info[1], FakeError)
    }
    assert failed == {f"{e} listener exploded" for e in kinds}, failed


@pytest.mark.timeout(30)
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_abandon_event(make: Any, run: Any) -> None:
    async def main() -> None:
        factory = AsyncFactory(keep=False)
        pool, _ = make(factory, max_size=1)
        rec = Recorder(pool, ("abandon", "checkout"))
        conn = await pool.acquire()
        slot = pool._core.slot_of(conn)
        lost = conn.serial
        assert rec.of("checkout") == [(("conn", lost),)]
        del conn
        gc.collect()
        assert await eventually(lambda: len(rec.of("abandon")) >= 1)
        assert rec.of("abandon") == [(slot,)]
        assert retired(pool).get("abandoned") == 1
        async with pool.connection(timeout=5) as again:  # the slot is usable again
            assert again.serial != lost
        assert rec.of("abandon") == [(slot,)]

    run(main)


@pytest.mark.timeout(30)
def test_reconnect_failed_event_once_per_outage(make: Any, run: Any) -> None:
    async def main() -> None:
        factory = AsyncFactory()
        factory.fail = FakeError("database is down")
        called: list[Any] = []
        pool, _ = make(
            factory,
            min_size=1,
            max_size=1,
            reconnect_timeout=0.2,
            reconnect_failed=called.append,
        )
        rec = Recorder(pool, ("reconnect_failed", "connect"))
        await pool.open()
        assert await eventually(lambda: len(rec.of("reconnect_failed")) >= 1)
        failures = factory.calls
        assert await eventually(lambda: factory.calls > failures + 1)  # still trying
        assert rec.of("reconnect_failed") == [()], "once per outage"
        assert called == [pool]

        factory.fail = None
        assert await eventually(lambda: pool.idle == 1, 15.0)
        assert rec.of("connect") == [(("conn", 0),)]
        assert rec.of("reconnect_failed") == [()]

        # A new outage is reported again.
        factory.fail = FakeError("database is down again")
        conn = await pool.acquire()
        await pool.discard(conn, FakeError("connection lost"))
        assert await eventually(lambda: len(rec.of("reconnect_failed")) >= 2)
        assert rec.of("reconnect_failed") == [(), ()]
        assert called == [pool, pool]
        assert rec.other_pool == 0

    run(main)


# ------------------------------------------------------------------ discard


@pytest.mark.timeout(30)
def test_discard_closes_and_the_pool_refills(make: Any, run: Any) -> None:
    async def main() -> None:
        pool, factory = make(min_size=2, max_size=2)
        rec = Recorder(pool, ("close", "checkin", "reset"))
        await pool.open(wait=True, timeout=5)
        assert factory.made == 2

        victim = await pool.acquire()
        await pool.discard(victim)
        assert pool.in_use == 0
        assert await eventually(lambda: victim.closed)
        assert victim.closes == 1 and victim.rollbacks == 0  # closed, not reset
        assert rec.of("close") == [(C(victim), "discarded")]
        assert rec.of("checkin") == [] and rec.of("reset") == []
        assert retired(pool) == {"discarded": 1}
        assert pool.stats()[stats.LOST] == 0
        assert await eventually(lambda: pool.idle == 2 and factory.made == 3)

        victim2 = await pool.acquire()
        await pool.discard(victim2, FakeError("server closed the connection"))
        assert await eventually(lambda: victim2.closed)
        assert rec.of("close") == [(C(victim), "discarded"), (C(victim2), "broken")]
        assert retired(pool) == {"discarded": 1, "broken": 1}
        assert pool.stats()[stats.LOST] == 1
        assert await eventually(lambda: pool.idle == 2 and factory.made == 4)

        both = [await pool.acquire() for _ in range(2)]
        assert not {id(c) for c in both} & {id(victim), id(victim2)}
        assert not any(c.closed for c in both)
        for conn in both:
            await pool.release(conn)
        assert pool.stats()[stats.CLOSED] == 2

    run(main)


@pytest.mark.timeout(30)
def test_close_event_at_pool_close(make: Any, run: Any) -> None:
    async def main() -> None:
        pool, _ = make(max_size=2)
        rec = Recorder(pool, ("close",))
        idle = await pool.acquire()
        held = await pool.acquire()
        await pool.release(idle)
        await pool.close()
        assert rec.of("close") == [(C(idle), "closed")]
        assert idle.closes == 1 and not held.closed
        await pool.release(held)  # returned after close: closed
        assert held.closes == 1
        assert rec.of("close") == [(C(idle), "closed"), (C(held), "closed")]
        assert retired(pool) == {"closed": 2}

    run(main)


# ------------------------------------------------------------------ leaks


@pytest.mark.timeout(30)
def test_leak_reported_once_with_the_acquiring_line(
    make: Any, run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pypool")

    async def main() -> None:
        pool, _ = make(min_size=1, max_size=2, leak_timeout=0.2)
        await pool.open(wait=True, timeout=5)
        leaks: list[dict[str, Any]] = []
        pool.add_listener("leak", lambda p, info: leaks.append(info))
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        conn = await pool.acquire()
        slot = pool._core.slot_of(conn)
        started = time.monotonic()
        assert await eventually(lambda: pool.stats()[stats.LEAKS] >= 1)
        assert time.monotonic() - started >= 0.2 * 0.9, "reported before leak_timeout"
        await asyncio.sleep(0.3)  # several more maintenance passes (every 0.05 s)
        assert pool.stats()[stats.LEAKS] == 1, "reported once"
        assert len(leaks) == 1
        (info,) = leaks
        assert {"slot", "held", "stack"} <= set(info)
        assert info["slot"] == slot
        assert info["held"] >= 0.2
        where = info["stack"][-1]
        assert where.filename == __file__ and where.lineno == line, where
        await pool.release(conn)

        # A short borrow is no leak.
        async with pool.connection():
            pass
        await asyncio.sleep(0.3)
        assert pool.stats()[stats.LEAKS] == 1
        assert len(leaks) == 1

        warnings = [
            r
            for r in caplog.records
            if r.name == "pypool" and acquiring_line_in(r.getMessage(), line)
        ]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        assert warnings[0].levelno == logging.WARNING

    run(main)


@pytest.mark.timeout(30)
def test_returned_or_discarded_connection_is_not_a_leak(make: Any, run: Any) -> None:
    async def main() -> None:
        pool, _ = make(max_size=3, leak_timeout=0.2)
        rec = Recorder(pool, ("leak",))
        long = await pool.acquire()
        long_slot = pool._core.slot_of(long)
        short = await pool.acquire()
        await pool.release(short)
        short2 = await pool.acquire()
        await pool.discard(short2)
        assert await eventually(lambda: pool.stats()[stats.LEAKS] >= 1)
        await asyncio.sleep(0.25)  # a few more passes
        assert [info["slot"] for (info,) in rec.of("leak")] == [long_slot]
        assert pool.stats()[stats.LEAKS] == 1
        await pool.release(long)

    run(main)


@pytest.mark.timeout(30)
def test_no_leak_reports_without_leak_timeout(make: Any, run: Any) -> None:
    async def main() -> None:
        # max_idle sets a short maintenance interval, and retiring the idle
        # extra shows that maintenance ran.
        pool, _ = make(max_size=2, max_idle=0.2)
        rec = Recorder(pool, ("leak", "close"))
        held = await pool.acquire()
        extra = await pool.acquire()
        await pool.release(extra)
        assert await eventually(lambda: rec.of("close") == [(C(extra), "idle")])
        await asyncio.sleep(0.3)
        assert rec.of("leak") == []
        assert pool.stats()[stats.LEAKS] == 0
        await pool.release(held)

    run(main)


# ------------------------------------------------------------------ keepalive


@pytest.mark.timeout(30)
def test_keepalive_replaces_an_idle_connection_that_fails_its_check(make: Any, run: Any) -> None:
    async def main() -> None:
        pool, factory = make(min_size=1, max_size=1, keepalive=0.1, check_after=None)
        rec = Recorder(pool, ("close",))
        await pool.open(wait=True, timeout=5)
        first = factory.conns[0]
        assert await eventually(lambda: first.checks >= 1)  # the adapter's check
        assert not first.closed
        assert await eventually(lambda: pool.idle == 1)
        assert retired(pool) == {}

        first.fail_check = True
        assert await eventually(lambda: first.closed)
        assert first.closes == 1
        assert rec.of("close") == [(C(first), "check")]
        assert retired(pool) == {"check": 1}
        assert pool.stats()[stats.LOST] == 1
        assert await eventually(lambda: pool.idle == 1 and factory.made == 2)
        second = factory.conns[1]
        async with pool.connection() as conn:
            assert conn is second
            assert not conn.closed

    run(main)


@pytest.mark.timeout(30)
def test_keepalive_period_and_async_check_callable(make: Any, run: Any) -> None:
    keepalive = 0.15
    checked: list[tuple[int, float]] = []

    async def check(conn: AsyncFakeConn) -> None:
        checked.append((conn.serial, time.monotonic()))
        await asyncio.sleep(0)

    async def main() -> None:
        pool, factory = make(
            min_size=1, max_size=1, keepalive=keepalive, check=check, check_after=None
        )
        rec = Recorder(pool, ("close",))
        await pool.open(wait=True, timeout=5)
        held = await pool.acquire()
        checked.clear()
        await asyncio.sleep(3 * keepalive)  # a borrowed connection is never checked
        assert checked == []
        released_at = time.monotonic()
        await pool.release(held)

        assert await eventually(lambda: len(checked) >= 3)
        times = [t for _, t in checked[:3]]
        assert {serial for serial, _ in checked} == {held.serial}
        # unused for keepalive seconds first, then once a period at most
        assert times[0] - released_at >= keepalive * 0.9, times[0] - released_at
        assert times[1] - times[0] >= keepalive * 0.9, times
        assert times[2] - times[1] >= keepalive * 0.9, times
        assert held.checks == 0, "check= replaces the adapter's check"
        assert not held.closed and factory.made == 1
        assert rec.of("close") == [] and retired(pool) == {}
        async with pool.connection() as conn:
            assert conn is held

    run(main)


@pytest.mark.timeout(30)
def test_keepalive_none_never_checks(make: Any, run: Any) -> None:
    async def main() -> None:
        # max_idle makes maintenance run often; min_size keeps one connection.
        pool, factory = make(min_size=1, max_size=2, max_idle=0.2, keepalive=None)
        rec = Recorder(pool, ("close",))
        a = await pool.acquire()
        b = await pool.acquire()
        await pool.release(a)
        await pool.release(b)
        assert await eventually(lambda: len(rec.of("close")) == 1)  # maintenance ran
        assert rec.of("close")[0][1] == "idle"
        await asyncio.sleep(0.3)
        assert [c.checks for c in factory.conns] == [0] * factory.made

    run(main)


@pytest.mark.db
@pytest.mark.timeout(60)
def test_keepalive_replaces_a_terminated_asyncpg_connection(make: Any, run: Any, dsn: str) -> None:
    asyncpg = pytest.importorskip("asyncpg")

    async def main() -> None:
        pool, _ = make(
            lambda: asyncpg.connect(dsn),
            adapter=pypool.asyncpg,
            min_size=1,
            max_size=1,
            keepalive=0.2,
            check_after=None,
        )
        closed: list[tuple[Any, str]] = []
        pool.add_listener("close", lambda p, conn, reason: closed.append((conn, reason)))
        await pool.open(wait=True, timeout=10)
        old = await pool.acquire()
        old_pid = await old.fetchval("SELECT pg_backend_pid()")
        await pool.release(old)
        admin = await asyncpg.connect(dsn)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", old_pid)
            assert await eventually(lambda: retired(pool).get("check") == 1, 15.0), retired(pool)
            assert closed == [(old, "check")]
            assert old.is_closed()
            assert await eventually(lambda: pool.idle == 1, 10.0)
            async with pool.connection(timeout=5) as conn:  # no check at hand-out
                assert conn is not old
                new_pid = await conn.fetchval("SELECT pg_backend_pid()")
                assert new_pid != old_pid
            alive = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", old_pid
            )
            assert alive == 0
            assert retired(pool) == {"check": 1}
        finally:
            await admin.close()

    run(main)


# ------------------------------------------------------------------ lifetime, idle


@pytest.mark.timeout(30)
def test_max_lifetime_replaced_ahead_by_maintenance(make: Any, run: Any) -> None:
    """An idle connection near the end of its lifetime is replaced without a
    caller, and its replacement is connected first: the pool never drops
    below min_size."""

    async def main() -> None:
        pool, factory = make(min_size=1, max_size=2, max_lifetime=0.4)
        log: list[tuple[Any, ...]] = []
        pool.add_listener("connect", lambda p, conn: log.append(("connect", conn.serial)))
        pool.add_listener(
            "close",
            lambda p, conn, reason: log.append(("close", conn.serial, reason, p.idle + p.in_use)),
        )
        await pool.open(wait=True, timeout=5)
        old = factory.conns[0]
        assert await eventually(lambda: old.closed)
        assert old.closes == 1
        closes = [e for e in log if e[0] == "close" and e[1] == old.serial]
        assert len(closes) == 1
        _, _, reason, open_then = closes[0]
        assert reason == "expired"
        assert open_then >= 1, f"below min_size when the old one closed: {log}"
        assert ("connect", 1) in log
        assert log.index(("connect", 1)) < log.index(closes[0]), log
        assert retired(pool).get("expired", 0) >= 1
        assert await eventually(lambda: pool.idle >= 1)
        async with pool.connection() as conn:
            assert conn is not old and not conn.closed

    run(main)


@pytest.mark.timeout(30)
def test_expired_idle_connection_retired_by_maintenance(make: Any, run: Any) -> None:
    async def main() -> None:
        pool, factory = make(max_size=1, max_lifetime=0.3)
        rec = Recorder(pool, ("close",))
        conn = await pool.acquire()
        await pool.release(conn)
        assert await eventually(lambda: conn.closed)  # no caller needed
        assert rec.of("close") == [(C(conn), "expired")]
        assert retired(pool) == {"expired": 1}
        assert pool.size == 0 and factory.made == 1  # no min_size: not replaced
        again = await pool.acquire()
        assert again is not conn
        await pool.release(again)

    run(main)


@pytest.mark.timeout(30)
def test_max_idle_retired_by_maintenance_down_to_min_size(make: Any, run: Any) -> None:
    async def main() -> None:
        pool, factory = make(max_idle=0.1, min_size=1, max_size=3)
        rec = Recorder(pool, ("close",))
        held = [await pool.acquire() for _ in range(3)]
        for conn in held:
            await pool.release(conn)
        assert await eventually(lambda: pool.size == 1)  # no caller needed
        await asyncio.sleep(0.2)
        assert pool.size == 1 and pool.idle == 1  # min_size stays
        assert sum(c.closed for c in held) == 2
        assert factory.made == 3
        assert retired(pool) == {"idle": 2}
        assert [reason for _, reason in rec.of("close")] == ["idle", "idle"]

    run(main)
