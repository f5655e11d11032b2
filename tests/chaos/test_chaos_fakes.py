"""Chaos without a database, on both cores (marker ``chaos``).

The scenarios of ``test_chaos_kill.py`` and of the cancellation storm of
``test_chaos_storm.py``, with fake connections, so that they run on the
native core and on the Python one:

- sixteen threads borrow while a killer breaks one connection every few
  milliseconds (the fake's ``broken`` flag: its check fails, its reset fails,
  work on it raises); ``run(fn, retries=3)`` gives the callers no error, every
  acquire returns within its timeout + max(10 %, 100 ms), no thread is stuck,
  and the counts balance;
- tasks borrowing from an ``AsyncPool`` are cancelled at random; afterwards
  every connection is accounted for, and no task was ever handed a
  connection another task still held.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from types import ModuleType
from typing import Any

import pytest

from _support.chaos import (
    Timer,
    acquire_limit,
    balanced,
    record,
    run_threads,
    seconds,
    with_core,
)
from _support.interrupts import Adapter, AsyncConn, Conn, Factory, accounted
from pypool import AsyncPool, Pool
from pypool import stats as names

pytestmark = pytest.mark.chaos

THREADS = 16
MAX_SIZE = 8
ACQUIRE_TIMEOUT = 2.0
LOAD_SECONDS = 4.0


class Lost(ConnectionError):
    """Work on a broken fake connection."""


@pytest.mark.timeout(60)
def test_connections_broken_under_load(core_module: ModuleType) -> None:
    factory = Factory(Conn)
    pool = with_core(
        Pool,
        core_module,
        factory,
        adapter=Adapter(),
        min_size=MAX_SIZE,
        max_size=MAX_SIZE,
        timeout=ACQUIRE_TIMEOUT,
        name=f"chaos-fakes-{core_module.__name__}",
    )
    acquires = Timer(acquire_limit(ACQUIRE_TIMEOUT))
    errors: list[BaseException] = []
    done = [0] * THREADS
    stop = threading.Event()
    kills = [0]

    def fn(conn: Conn) -> int:
        time.sleep(0.0002)  # the "query": the killer may land meanwhile
        if conn.broken:
            raise Lost(f"conn {conn.serial}: lost")
        return conn.serial

    def work(i: int) -> None:
        while not stop.is_set():
            try:
                pool.release(acquires.timed(pool.acquire))
                pool.run(fn, retries=3, backoff=0.001)
                done[i] += 1
            except Exception as exc:
                errors.append(exc)

    def killer() -> None:
        rng = random.Random(15)
        while not stop.wait(0.005):
            alive = [c for c in factory.made if not c.broken and not c.closed]
            if alive:
                rng.choice(alive).broken = True
                kills[0] += 1

    try:
        pool.wait(10.0)
        killing = threading.Thread(target=killer, name="chaos-fake-killer", daemon=True)
        killing.start()
        load = seconds(LOAD_SECONDS)
        timer = threading.Timer(load, stop.set)
        started = time.monotonic()
        timer.start()
        stuck = run_threads(THREADS, work, join_timeout=load + 30.0)
        stop.set()
        timer.cancel()
        killing.join(5.0)
        elapsed = time.monotonic() - started
        assert not stuck, f"threads stuck: {stuck}"
        stats = pool.stats()
        figures = {
            "core": pool.core,
            "kills": kills[0],
            "requests_per_second": round(sum(done) / elapsed),
            "caller_errors": len(errors),
            "acquire_slowest_s": round(acquires.slowest, 3),
            "acquires_late": len(acquires.late),
            "lost": stats[names.LOST],
            **balanced(pool),
        }
        record(f"fakes-kill-{pool.core}", figures)
        assert kills[0] > 100, figures
        assert stats[names.LOST] > 0, figures
        assert not errors, f"{len(errors)} caller errors, first: {errors[0]!r}"
        assert not acquires.late, f"acquires past {acquires.limit} s: {acquires.late[:5]}"
        accounted(pool, [c for c in factory.made if not c.broken])
    finally:
        stop.set()
        pool.close()


@pytest.mark.timeout(60)
def test_cancellation_storm_with_fakes(core_module: ModuleType) -> None:
    factory = Factory(AsyncConn)
    holders: dict[int, int] = {}  # id(conn) -> the task holding it
    overlaps: list[str] = []
    rng = random.Random(15)
    cancelled = [0]
    completed = [0]

    async def main() -> dict[str, Any]:
        pool = with_core(
            AsyncPool,
            core_module,
            factory.connect,
            min_size=4,
            max_size=4,
            check_after=0.0,
            timeout=5.0,
            name=f"chaos-fake-cancel-{core_module.__name__}",
        )
        await pool.open()
        await pool.wait(5.0)

        async def use(conn: AsyncConn) -> None:
            me = id(asyncio.current_task())
            other = holders.get(id(conn))
            if other is not None and other != me:
                overlaps.append(f"{conn!r} handed out while task {other} held it")
            holders[id(conn)] = me
            try:
                await asyncio.sleep(0)
                await asyncio.sleep(rng.uniform(0, 0.001))
            finally:
                if holders.get(id(conn)) == me:
                    del holders[id(conn)]

        async def work() -> None:
            while True:
                way = rng.randrange(3)
                if way == 0:
                    conn = await pool.acquire(5.0)
                    try:
                        await use(conn)
                    finally:
                        await pool.release(conn)
                elif way == 1:
                    async with pool.connection(5.0) as conn:
                        await use(conn)
                else:
                    await pool.run(use, timeout=5.0)
                completed[0] += 1

        tasks = [asyncio.ensure_future(work()) for _ in range(12)]
        deadline = time.monotonic() + seconds(LOAD_SECONDS) / 2
        while time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(0.0002, 0.002))
            victim = rng.randrange(len(tasks))
            if tasks[victim].done() and not tasks[victim].cancelled():
                tasks[victim].result()  # an error ends the test
            tasks[victim].cancel()
            cancelled[0] += 1
            tasks[victim] = asyncio.ensure_future(work())
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failures = [r for r in results if not isinstance(r, asyncio.CancelledError | type(None))]
        assert not failures, failures[0]
        await asyncio.sleep(0.05)
        core = pool._core
        state = {
            "core": pool.core,
            "in_use": int(core.in_use),
            "balanced": core.idle + core.in_use + core.claimed + core.connecting == core.size,
        }
        accounted(pool, list(factory.made))
        await pool.close()
        return state

    state = asyncio.run(main())
    figures = {
        "core": state["core"],
        "cancellations": cancelled[0],
        "completed": completed[0],
        "connections_made": len(factory.made),
        "overlaps": len(overlaps),
    }
    record(f"fakes-cancel-{figures['core']}", figures)
    assert not overlaps, overlaps[:3]
    assert cancelled[0] > 200, figures
    assert state["in_use"] == 0 and state["balanced"], state
