"""Microbenchmarks of the core's hot path: measurements, never assertions of speed.

Groups (``--benchmark-group-by=group``):

* ``uncontended: try_acquire+release`` and ``uncontended: acquire+release``:
  one thread, :data:`INNER` cycles per timed call; ``extra_info["ns_per_cycle"]``
  is the median time of a call divided by :data:`INNER`. The floor is
  ``lst.append(lst.pop())`` on a one-element list.
* ``threads: NN on 4 connections``: NN threads share the pool's connections,
  each doing ``acquire(timeout)`` + ``release()`` cycles. The threads are
  started untimed and wait on a barrier; a round is timed from the barrier to
  the last join. ``extra_info["cycles_per_s"]`` is the throughput of all
  threads together at the median round time.
"""

from __future__ import annotations

from itertools import repeat
from typing import TYPE_CHECKING, Any

import pytest

from _common import Round, calibrate, record_per_cycle, record_rate

if TYPE_CHECKING:  # the fixture's type; conftest modules are not imported by tests
    from conftest import Contender

#: Cycles per timed call in the uncontended benchmarks, so that the harness's
#: own per-call overhead does not dominate.
INNER = 1000
#: Target length of one threaded round, in seconds.
THREAD_ROUND = 0.3
THREAD_ROUNDS = 3
THREAD_COUNTS = (1, 2, 4, 8, 16)

uncontended = pytest.mark.parametrize(
    "contender", ["floor", "native", "python", "queue"], indirect=True
)
pools = pytest.mark.parametrize("contender", ["native", "python", "queue"], indirect=True)


@uncontended
def test_try_acquire_release(benchmark: Any, contender: Contender) -> None:
    """``c = try_acquire(); release(c)``, uncontended."""
    acquire, release = contender.try_acquire, contender.release

    def cycles() -> None:
        for _ in repeat(None, INNER):
            release(acquire())

    benchmark.group = "uncontended: try_acquire+release"
    benchmark(cycles)
    record_per_cycle(benchmark, INNER)


@uncontended
def test_acquire_release(benchmark: Any, contender: Contender) -> None:
    """``c = acquire(); release(c)``: the blocking call, uncontended."""
    acquire, release = contender.acquire, contender.release

    def cycles() -> None:
        for _ in repeat(None, INNER):
            release(acquire())

    benchmark.group = "uncontended: acquire+release"
    benchmark(cycles)
    record_per_cycle(benchmark, INNER)


@pools
@pytest.mark.parametrize("threads", THREAD_COUNTS)
def test_threads(benchmark: Any, contender: Contender, threads: int) -> None:
    """``threads`` threads share the connections: acquire(timeout) + release."""
    per_thread = calibrate(contender.acquire_timeout, contender.release, threads, THREAD_ROUND)
    rounds: list[Round] = []

    def setup() -> tuple[tuple[Round], dict[str, Any]]:
        rounds.append(Round(contender.acquire_timeout, contender.release, threads, per_thread))
        return (rounds[-1],), {}

    benchmark.group = f"threads: {threads:02d} on {contender.connections} connections"
    benchmark.pedantic(Round.run, setup=setup, rounds=THREAD_ROUNDS, iterations=1)
    for r in rounds:
        r.check()
    total = per_thread * threads
    record_rate(benchmark, total, "cycles", threads=threads)
