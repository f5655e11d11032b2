"""``pypool.psycopg.ConnectionPool`` against ``psycopg_pool.ConnectionPool``, on
real PostgreSQL connections: measurements, never assertions of speed.

Every pool holds :data:`CONNECTIONS` connections opened with
``autocommit=True`` (``min_size=max_size``), and is full before timing starts.
pypool runs on both cores (``pypool-native``, ``pypool-python``). Groups
(``--benchmark-group-by=group``):

* ``psycopg getconn/putconn``: ``pool.putconn(pool.getconn())``, :data:`INNER`
  cycles per timed call, one thread; ``extra_info["ns_per_cycle"]``.
* ``psycopg connection()``: ``with pool.connection(): pass``, likewise. No
  query runs, so this is the pool's whole share of a checkout.
* ``psycopg SELECT 1 autocommit on`` / ``off``: ``with pool.connection() as
  conn: conn.execute("SELECT 1")``, :data:`SELECT_INNER` cycles per timed
  call, one thread, on pools whose connections have autocommit on or off
  (off: each cycle also begins and commits a transaction). The interleaved
  runs with a median ratio and its spread are ``benchmarks/psycopg_select1.py``.
* ``psycopg threads SELECT 1``: :data:`THREADS` threads each run
  ``SELECT 1`` on a checked-out connection :data:`PER_THREAD` times, on a
  pool of :data:`THREADS` connections, against the same work on
  :data:`THREADS` persistent connections with no pool (``no-pool``: each
  thread keeps its own). A round is timed from a barrier to the last join;
  ``extra_info["requests_per_s"]`` is the throughput at the median round.

The database is ``PYPOOL_BENCH_DSN``, else ``PYPOOL_TEST_DSN``, else a local
default; the benchmarks are skipped, with the reason, when it cannot be
reached (a failure instead with ``PYPOOL_REQUIRE_DB=1``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import pytest

from _common import (
    CORES,
    PSYCOPG_POOLS,
    TIMEOUT,
    database,
    open_psycopg_pool,
    psycopg_param,
    record_per_cycle,
    record_rate,
    skip_unless_built,
)

pytestmark = pytest.mark.db

#: Connections in the pools of the single-thread benchmarks.
CONNECTIONS = 4
#: Checkout cycles per timed call in the single-thread benchmarks.
INNER = 1000
#: Checkout cycles per timed call of the end-to-end SELECT 1 benchmark.
SELECT_INNER = 200
#: Threads (and connections) of the threaded benchmark.
THREADS = 8
#: Requests per thread in one threaded round: the same for every contender,
#: so round times compare directly.
PER_THREAD = 1000
THREAD_ROUNDS = 5

# ------------------------------------------------------------------ contenders


def make_pool(name: str, dsn: str, size: int, autocommit: bool = True) -> Any:
    """A full pool of ``size`` connections (autocommit ones unless told)."""
    skip_unless_built(name)
    return open_psycopg_pool(name, dsn, size, autocommit=autocommit)


@pytest.fixture
def pool(request: pytest.FixtureRequest) -> Iterator[Any]:
    made = make_pool(request.param, database(), CONNECTIONS)
    yield made
    made.close()


# ------------------------------------------------------------------ one thread


@pytest.mark.parametrize("pool", PSYCOPG_POOLS, indirect=True)
def test_getconn_putconn(benchmark: Any, pool: Any) -> None:
    """``pool.putconn(pool.getconn())`` of an idle connection."""
    getconn, putconn = pool.getconn, pool.putconn

    def cycles() -> None:
        for _ in repeat(None, INNER):
            putconn(getconn())

    benchmark.group = "psycopg getconn/putconn"
    benchmark(cycles)
    record_per_cycle(benchmark, INNER)


@pytest.mark.parametrize("pool", PSYCOPG_POOLS, indirect=True)
def test_connection_block(benchmark: Any, pool: Any) -> None:
    """``with pool.connection(): pass``: checkout, the commit-or-rollback
    decision, return."""
    connection = pool.connection

    def cycles() -> None:
        for _ in repeat(None, INNER):
            with connection():
                pass

    benchmark.group = "psycopg connection()"
    benchmark(cycles)
    record_per_cycle(benchmark, INNER)


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit-on", "autocommit-off"])
@pytest.mark.parametrize(
    "name", [p.values[0] for p in PSYCOPG_POOLS], ids=[p.id for p in PSYCOPG_POOLS]
)
def test_select_1(benchmark: Any, name: str, autocommit: bool) -> None:
    """``with pool.connection() as conn: conn.execute("SELECT 1")``, end to
    end, autocommit on or off."""
    if name == "pypool-native":
        pytest.importorskip(CORES[name])
    pool = make_pool(name, database(), CONNECTIONS, autocommit)
    connection = pool.connection

    def cycles() -> None:
        for _ in repeat(None, SELECT_INNER):
            with connection() as conn:
                conn.execute("SELECT 1")

    try:
        cycles()  # warm up: psycopg prepares the statement after a few runs
        benchmark.group = f"psycopg SELECT 1 autocommit {'on' if autocommit else 'off'}"
        benchmark(cycles)
    finally:
        pool.close()
    if benchmark.stats is not None:
        benchmark.extra_info["us_per_cycle"] = benchmark.stats.stats.median / SELECT_INNER * 1e6
        benchmark.extra_info["cycles_per_call"] = SELECT_INNER


# ------------------------------------------------------------------ threads


@dataclass
class Workload:
    """``THREADS`` workers, each making a ``work()`` callable (from its index)
    and running it in a loop."""

    make_work: Callable[[int], Callable[[], object]]
    close: Callable[[], object]
    errors: list[BaseException] = field(default_factory=list)

    def round(self, per_thread: int) -> Callable[[], None]:
        """Starts the threads, waiting on a barrier; returns the timed part."""
        barrier = threading.Barrier(THREADS + 1)

        def worker(index: int) -> None:
            try:
                work = self.make_work(index)
                barrier.wait()
                for _ in repeat(None, per_thread):
                    work()
            except BaseException as exc:
                self.errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
        for t in threads:
            t.start()

        def run() -> None:
            barrier.wait()
            for t in threads:
                t.join()

        return run

    def check(self) -> None:
        if self.errors:
            exc = self.errors[0]
            pytest.fail(f"a worker thread failed: {type(exc).__name__}: {exc}")


def _select_on_pool(pool: Any) -> Workload:
    def make_work(index: int) -> Callable[[], object]:
        connection = pool.connection

        def work() -> None:
            with connection(TIMEOUT) as conn:
                conn.execute("SELECT 1")

        return work

    return Workload(make_work, pool.close)


def _select_without_pool(dsn: str) -> Workload:
    import psycopg

    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(THREADS)]

    def make_work(index: int) -> Callable[[], object]:
        conn = conns[index]
        return lambda: conn.execute("SELECT 1")

    def close() -> None:
        for conn in conns:
            conn.close()

    return Workload(make_work, close)


@pytest.fixture
def workload(request: pytest.FixtureRequest) -> Iterator[Workload]:
    dsn = database()
    if request.param == "no-pool":
        made = _select_without_pool(dsn)
    else:
        made = _select_on_pool(make_pool(request.param, dsn, THREADS))
    yield made
    made.close()


@pytest.mark.parametrize("workload", [*PSYCOPG_POOLS, psycopg_param("no-pool")], indirect=True)
def test_threads_select_1(benchmark: Any, workload: Workload) -> None:
    """THREADS threads run ``SELECT 1`` per checkout on a pool of THREADS
    connections (or each on its own connection, with no pool)."""
    workload.round(PER_THREAD // 10)()  # warm up: every connection used once
    workload.check()

    def setup() -> tuple[tuple[Callable[[], None]], dict[str, Any]]:
        return (workload.round(PER_THREAD),), {}

    benchmark.group = "psycopg threads SELECT 1"
    benchmark.pedantic(lambda run: run(), setup=setup, rounds=THREAD_ROUNDS, iterations=1)
    workload.check()
    total = PER_THREAD * THREADS
    record_rate(benchmark, total, "requests", threads=THREADS)
