"""Waiting under scarcity: a measurement, never an assertion of speed.

16 threads cycle ``acquire()`` + ``release()`` on a ``pypool.Pool`` of 4 fake
connections (``check=False``), against one thread on the same pool. With the
GIL, a thread switched out while it holds a connection can only give it back
once it runs again; what this measures is how little a waiting thread pays
for that. ``extra_info["kept_pct"]`` is the 16-thread rate as a percentage of
the one-thread rate, the median of :data:`PAIRS` pairs of runs measured one
right after the other (so both see the same load on a shared machine);
the goal is at least 80% with the native core.
"""

from __future__ import annotations

import importlib
import statistics
import sys
import threading
import time
from itertools import repeat
from pathlib import Path
from typing import Any

import pytest

from pypool import Pool

# The fakes of the test suite (tests/_support), as benchmarks/scaling_out.py does.
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))
from _support.fakes import NullAdapter

THREADS = 16
CONNECTIONS = 4
#: Seconds of each run, and how many one-thread/16-thread pairs are measured.
RUN = 0.3
PAIRS = 5


class FakeConnection:
    pass


def _rate(pool: Any, threads: int) -> float:
    """Cycles per second of ``threads`` threads together, over RUN seconds."""
    stop = threading.Event()
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)

    def work(me: int) -> None:
        acquire, release = pool.acquire, pool.release
        barrier.wait()
        done = 0
        while not stop.is_set():
            for _ in repeat(None, 100):
                release(acquire())
            done += 100
        counts[me] = done

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    t0 = time.perf_counter()
    time.sleep(RUN)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - t0)


@pytest.mark.parametrize("core", ["native", "python"])
def test_pool_16_threads_on_4_connections(benchmark: Any, core: str) -> None:
    module_name = {"native": "pypool._corepool", "python": "pypool._corepool_py"}[core]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        pytest.skip(f"{module_name} is not built ({exc})")
    pool = Pool.with_core(module)(
        FakeConnection,
        adapter=NullAdapter(),
        min_size=CONNECTIONS,
        max_size=CONNECTIONS,
        check=False,
        timeout=30,
    )
    pool.wait(timeout=10)
    kept: list[float] = []

    def pairs() -> None:
        for _ in range(PAIRS):
            one = _rate(pool, 1)
            kept.append(_rate(pool, THREADS) / one * 100)

    try:
        benchmark.pedantic(pairs, rounds=1, iterations=1)
    finally:
        pool.close()
    benchmark.group = "contention: 16 threads on 4 connections"
    benchmark.extra_info["kept_pct"] = statistics.median(kept)
    benchmark.extra_info["kept_pct_each"] = [round(k, 1) for k in kept]
