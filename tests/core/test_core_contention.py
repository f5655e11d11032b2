"""Contention: many threads on few connections, the way a busy service
uses a pool. The stress run fails on any PoolTimeout raised while the pool
held an idle connection (the core records its idle count in the exception,
with its decision), and reports the longest and mean wait (fairness: the
longest should stay within 10x the mean).

``PYPOOL_STRESS_SECONDS`` sets the length of the stress run (default 60 s per
core).
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from types import ModuleType
from typing import Any

import pytest

from _support.fakes import NullAdapter
from pypool import Pool
from pypool.errors import PoolTimeout

THREADS = 16
CONNECTIONS = 2
HOLD = (0.0, 0.002)  # seconds a connection is held, uniformly
TIMEOUT = 1.0


class Thing:
    pass


def test_a_pool_timeout_carries_the_idle_count(core_module: ModuleType) -> None:
    with Pool.with_core(core_module)(
        Thing, adapter=NullAdapter(), min_size=1, max_size=1, check=False
    ) as pool:
        pool.wait(timeout=10)
        held = pool.acquire()
        with pytest.raises(PoolTimeout) as info:
            pool.acquire(timeout=0.05)
        assert info.value.idle == 0
        assert "no connection available" in str(info.value)
        pool.release(held)


def stress(core_module: ModuleType, seconds: float) -> dict[str, Any]:
    pool = core_module.CorePool(CONNECTIONS)
    for _ in range(CONNECTIONS):
        pool.fill(pool.reserve(), Thing())
    waits: list[list[float]] = [[] for _ in range(THREADS)]
    timeouts: list[PoolTimeout] = []
    failures: list[BaseException] = []
    holders: dict[int, int] = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(me: int) -> None:
        rnd = random.Random(me)
        try:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    conn = pool.acquire(timeout=TIMEOUT)
                except PoolTimeout as exc:
                    with lock:
                        timeouts.append(exc)
                    continue
                waits[me].append(time.perf_counter() - t0)
                with lock:
                    assert id(conn) not in holders, "a connection handed out twice"
                    holders[id(conn)] = me
                hold = rnd.uniform(*HOLD)
                if hold:
                    time.sleep(hold)
                with lock:
                    del holders[id(conn)]
                pool.release(conn)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    every = [w for ws in waits for w in ws]
    stats = pool.stats()
    result = {
        "core": core_module.__name__,
        "acquires": len(every),
        "timeouts": len(timeouts),
        "timeouts_with_idle": [str(e) for e in timeouts if e.idle != 0],
        "failures": [repr(f) for f in failures],
        "hung": sum(t.is_alive() for t in threads),
        "mean_wait_ms": statistics.fmean(every) * 1e3 if every else 0.0,
        "longest_wait_ms": max(every) * 1e3 if every else 0.0,
        "final": (stats["idle"], stats["in_use"], stats["waiting"], stats["size"]),
    }
    result["longest_over_mean"] = (
        result["longest_wait_ms"] / result["mean_wait_ms"] if result["mean_wait_ms"] else 0.0
    )
    pool.close()
    return result


@pytest.mark.stress
@pytest.mark.timeout(300)
def test_contention_never_times_out_beside_an_idle_connection(
    core_module: ModuleType, record_property: Any
) -> None:
    seconds = float(os.environ.get("PYPOOL_STRESS_SECONDS", "60"))
    result = stress(core_module, seconds)
    for key, value in result.items():
        record_property(key, value)
    print(
        f"\n{result['core']}: {result['acquires']} acquires in {seconds:.0f} s, "
        f"{result['timeouts']} timeouts ({len(result['timeouts_with_idle'])} with a "
        f"connection idle); wait mean {result['mean_wait_ms']:.2f} ms, longest "
        f"{result['longest_wait_ms']:.1f} ms ({result['longest_over_mean']:.1f}x the mean)"
    )
    assert result["hung"] == 0
    assert result["failures"] == []
    assert result["timeouts_with_idle"] == []
    assert result["final"] == (CONNECTIONS, 0, 0, CONNECTIONS)
    assert result["acquires"] > 0
