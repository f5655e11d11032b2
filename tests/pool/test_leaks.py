"""Leak and abandon reports of ``pypool.Pool`` and ``pypool.AsyncPool``, on
both cores: with ``leak_timeout``, a connection borrowed longer is reported
once (a warning and a ``leak`` event, with the line that acquired it); one
returned or discarded in time is no leak, and without ``leak_timeout``
nothing is reported. A borrowed connection that is garbage-collected is
reported (``abandon``) and its slot recovered.

Every scenario runs on each pool over fake connections (``_support.pools``).
A real server's view of an abandoned connection is tested in test_health.py.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import time

import pytest

from _support.events import C, Recorder
from _support.pools import Pools, each_pool, retired
from _support.waiting import eventually
from pypool import stats


@pytest.mark.timeout(30)
@each_pool
async def test_leak_reported_once_with_the_acquiring_line(
    pools: Pools, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pypool")
    pool, _ = await pools.open(min_size=1, max_size=2, leak_timeout=0.2)
    rec = Recorder(pool, ("leak",))
    line = inspect.currentframe().f_lineno + 2  # type: ignore[union-attr]
    # The raw pool's own acquire, on one line: through the facade, its frame would be the last.
    conn = (await pool.raw.acquire()) if pools.is_async else pool.raw.acquire()
    slot = pool._core.slot_of(conn)
    started = time.monotonic()
    assert await eventually(lambda: pool.stats()[stats.LEAKS] >= 1)
    assert time.monotonic() - started >= 0.2 * 0.9, "reported before leak_timeout"
    await asyncio.sleep(0.3)  # several more maintenance passes (every 0.05 s)
    assert pool.stats()[stats.LEAKS] == 1, "reported once"
    leaks = rec.of("leak")
    assert len(leaks) == 1
    (info,) = leaks[0]  # (pool, info)
    assert {"slot", "held", "stack"} <= set(info)
    assert isinstance(info["slot"], int) and info["slot"] == slot
    assert info["held"] >= 0.2
    where = info["stack"][-1]
    assert where.filename == __file__ and where.lineno == line, where
    assert rec.other_pool == 0
    await pool.release(conn)

    # A short borrow is no leak.
    async with pool.connection():
        pass
    await asyncio.sleep(0.3)
    assert pool.stats()[stats.LEAKS] == 1
    assert len(rec.of("leak")) == 1

    warnings = [r for r in caplog.records if "leak_timeout" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert warnings[0].name == "pypool"
    assert warnings[0].levelno == logging.WARNING
    message = warnings[0].getMessage()
    assert f'{os.path.basename(__file__)}", line {line}' in message, message


@pytest.mark.timeout(30)
@each_pool
async def test_returned_or_discarded_connection_is_not_a_leak(pools: Pools) -> None:
    pool, _ = pools.make(max_size=3, leak_timeout=0.2)
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


@pytest.mark.timeout(30)
@each_pool
async def test_no_leak_reports_without_leak_timeout(pools: Pools) -> None:
    # max_idle sets a short maintenance interval, and retiring the idle
    # extra shows that maintenance ran.
    pool, _ = pools.make(max_size=2, max_idle=0.2)
    rec = Recorder(pool, ("leak", "close"))
    held = await pool.acquire()
    extra = await pool.acquire()
    await pool.release(extra)
    assert await eventually(lambda: rec.of("close") == [(C(extra), "idle")])
    await asyncio.sleep(0.3)
    assert rec.of("leak") == []
    assert pool.stats()[stats.LEAKS] == 0
    await pool.release(held)


@pytest.mark.timeout(30)
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@each_pool
async def test_abandoned_connection_is_reported_and_recovered(
    pools: Pools, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pypool")
    # keepalive=0.2 runs maintenance, which reports the abandon, every 0.05 s.
    pool, _ = pools.make(pools.factory(keep=False), max_size=1, keepalive=0.2)
    rec = Recorder(pool, ("abandon", "checkout"))
    conn = await pool.acquire()
    slot = pool._core.slot_of(conn)
    lost = conn.serial
    assert rec.of("checkout") == [(("conn", lost),)]
    del conn
    gc.collect()
    assert await eventually(lambda: len(rec.of("abandon")) >= 1)
    assert rec.of("abandon") == [(slot,)]  # (pool, slot)
    assert retired(pool).get("abandoned") == 1
    assert pool.stats()[stats.LOST] == 1
    assert any("garbage-collected" in r.getMessage() for r in caplog.records)
    async with pool.connection(timeout=5) as again:  # the slot is usable again
        assert again.serial != lost
    assert rec.of("abandon") == [(slot,)]
    assert rec.other_pool == 0
