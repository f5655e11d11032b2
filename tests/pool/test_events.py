"""Events of ``pypool.Pool`` and ``pypool.AsyncPool``, on both cores: which
events there are, ``add_listener`` / ``remove_listener``, each event with its
documented arguments (connect, checkout, checkin, reset, close,
reconnect_failed), a failing listener (logged, the pool works on), and
``discard`` (closed, reported, refilled).

Leak and abandon reports are in test_leaks.py. Every scenario runs on each
pool over fake connections (``_support.pools``), its events recorded by
``_support.events.Recorder``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from _support.events import C, Recorder
from _support.fakes import FakeError
from _support.pools import Pools, each_pool, retired
from _support.waiting import eventually
from pypool import stats
from pypool.errors import ConfigurationError, PoolTimeout
from pypool.pool import EVENTS

# ------------------------------------------------------------------ listeners


@pytest.mark.timeout(30)
@each_pool
async def test_listener_registration_is_validated(pools: Pools) -> None:
    assert set(EVENTS) == {
        "connect",
        "checkout",
        "checkin",
        "reset",
        "close",
        "leak",
        "abandon",
        "reconnect_failed",
    }
    pool, _ = pools.make(max_size=1)
    seen: list[tuple[str, int]] = []

    def on_checkout(pool: Any, conn: Any) -> None:
        seen.append(C(conn))

    for event in EVENTS:  # every documented event is accepted
        pool.add_listener(event, on_checkout)
        pool.remove_listener(event, on_checkout)
    pool.add_listener("checkout", on_checkout)
    async with pool.connection() as conn:
        pass
    assert seen == [C(conn)]
    pool.remove_listener("checkout", on_checkout)
    async with pool.connection() as conn:
        pass
    assert seen == [C(conn)], "a removed listener is not called"

    with pytest.raises(ConfigurationError, match="does not listen"):
        pool.remove_listener("checkout", on_checkout)  # not registered (any more)
    with pytest.raises(ConfigurationError, match="unknown event"):
        pool.add_listener("checkouts", on_checkout)
    with pytest.raises(ConfigurationError, match="unknown event"):
        pool.remove_listener("nope", on_checkout)
    with pytest.raises(ConfigurationError, match="callable"):
        pool.add_listener("checkout", "not callable")

    async def coroutine_listener(pool: Any, conn: Any) -> None:
        seen.append(("coroutine", 0))

    with pytest.raises(ConfigurationError):
        pool.add_listener("checkout", coroutine_listener)
    with pytest.raises(ConfigurationError):
        pool.remove_listener("checkout", coroutine_listener)  # it was never added
    async with pool.connection() as conn:
        pass
    assert seen == [C(conn)]


# ---------------------------------------------------- connect .. reset


@pytest.mark.timeout(30)
@each_pool
async def test_connect_checkout_checkin_reset_events(pools: Pools) -> None:
    configured: list[tuple[str, int]] = []
    pool, factory = pools.make(
        max_size=2,
        configure=pools.flavoured(lambda conn: configured.append(C(conn))),
        check_after=None,
    )
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


@pytest.mark.timeout(30)
@each_pool
async def test_no_reset_event_without_a_reset(pools: Pools) -> None:
    pool, _ = pools.make(max_size=1, reset=False)
    rec = Recorder(pool, ("checkin", "reset"))
    conn = await pool.acquire()
    await pool.release(conn)
    assert rec.of("checkin") == [(C(conn), 0)]
    assert rec.of("reset") == []
    assert conn.rollbacks == 0


@pytest.mark.timeout(30)
@each_pool
async def test_failing_listener_is_logged_and_pool_keeps_working(
    pools: Pools, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pypool")
    kinds = ("connect", "checkout", "checkin", "reset", "close")

    def exploding(event: str) -> Callable[..., None]:
        def listener(pool: Any, *args: Any) -> None:
            raise FakeError(f"{event} listener exploded")

        return listener

    pool, _ = pools.make(max_size=1)
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

    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    logged = {e for e in kinds if any(f"{e} listener" in r.getMessage() for r in errors)}
    assert logged == set(kinds)
    assert all(r.exc_info and r.exc_info[0] is FakeError for r in errors)
    failed = {
        str(r.exc_info[1])
        for r in caplog.records
        if r.name == "pypool" and r.exc_info and isinstance(r.exc_info[1], FakeError)
    }
    assert failed == {f"{e} listener exploded" for e in kinds}, failed


# ---------------------------------------------------- reconnect_failed


@pytest.mark.timeout(30)
@each_pool
async def test_reconnect_failed_event_once_per_outage(pools: Pools) -> None:
    factory = pools.factory()
    factory.fail = FakeError("database is down")
    called: list[Any] = []
    pool, _ = pools.make(
        factory,
        min_size=1,
        max_size=1,
        reconnect_timeout=0.05,
        reconnect_failed=called.append,
    )
    rec = Recorder(pool, ("reconnect_failed", "connect"))
    await pool.open()
    with pytest.raises(PoolTimeout):
        await pool.acquire(timeout=0.1)
    assert await eventually(lambda: len(rec.of("reconnect_failed")) >= 1)
    failures = factory.calls
    assert await eventually(lambda: factory.calls > failures + 1)  # still trying
    assert rec.of("reconnect_failed") == [()], "once per outage"
    assert called == [pool.raw]

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
    assert called == [pool.raw, pool.raw]
    assert rec.other_pool == 0


# ------------------------------------------------------------ discard, close


@pytest.mark.timeout(30)
@each_pool
async def test_discard_closes_and_the_pool_refills(pools: Pools) -> None:
    pool, factory = pools.make(min_size=2, max_size=2)
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
    assert rec.other_pool == 0


@pytest.mark.timeout(30)
@each_pool
async def test_close_event_at_pool_close(pools: Pools) -> None:
    pool, _ = pools.make(max_size=2)
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
    assert rec.other_pool == 0
