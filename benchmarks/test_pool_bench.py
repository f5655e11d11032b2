"""Microbenchmarks of the full ``pypool.Pool`` against other pools:
measurements, never assertions of speed.

The contenders are the ones ``pypool bench`` measures (``pypool.cli.peers``),
so both report the same cycles. Groups (``--benchmark-group-by=group``):

* ``pool uncontended``: one thread, :data:`INNER` checkout + return cycles per
  timed call on a pool of :data:`CONNECTIONS`; ``extra_info["ns_per_cycle"]``
  is the median time of a call divided by :data:`INNER`. ``pypool.Pool`` runs
  with every default policy on, on both cores, over fake connections (see
  :class:`pypool.cli.peers.FakeDBAPIConnection`); SQLAlchemy's
  ``QueuePool`` and DBUtils' ``PooledDB`` over the same fakes; psycopg2's
  ``ThreadedConnectionPool`` and psycopg_pool's ``ConnectionPool`` over real
  PostgreSQL connections (and ``pool-native-pg``: ``pypool.Pool`` over real
  psycopg connections, for a like-for-like comparison).
* ``pool threads``: :data:`THREADS` threads share the :data:`CONNECTIONS`
  connections, each doing checkout (with a timeout where the pool takes one)
  and return in a loop; started untimed on a barrier, a round is timed from
  the barrier to the last join. ``extra_info["cycles_per_s"]`` is the
  throughput of all threads together at the median round time.

The database contenders use ``PYPOOL_BENCH_DSN``, else ``PYPOOL_TEST_DSN``,
else a local default; they are skipped, with the reason, when the server
cannot be reached (a failure instead with ``PYPOOL_REQUIRE_DB=1``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from itertools import repeat
from typing import Any
from urllib.parse import urlsplit

import pytest

from pypool.cli import CONNECTIONS, Handles
from pypool.cli import peers as _bench_peers

#: Cycles per timed call in the uncontended benchmarks.
INNER = 1000
#: Threads sharing the connections in the threaded benchmarks.
THREADS = 16
#: The timeout passed to a waiting checkout; never reached in a sane run.
TIMEOUT = 30.0
#: Target length of one threaded round, in seconds.
THREAD_ROUND = 0.3
THREAD_ROUNDS = 3

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
#: Contenders that need the database.
DB_CONTENDERS = frozenset({"pool-native-pg", "psycopg_pool", "psycopg2"})

_CONTENDERS = {c.name: c for c in _bench_peers.PEERS}


def _param(name: str) -> Any:
    marks = []
    if name in DB_CONTENDERS:
        marks.append(pytest.mark.db)
    if name.startswith("pool-native"):
        marks.append(pytest.mark.native)
    return pytest.param(name, marks=marks, id=name)


uncontended = pytest.mark.parametrize(
    "peer",
    [
        _param(name)
        for name in (
            "pool-native",
            "pool-python",
            "pool-native-with",
            "sqlalchemy",
            "dbutils",
            "pool-native-pg",
            "psycopg_pool",
            "psycopg2",
        )
    ],
    indirect=True,
)
threaded = pytest.mark.parametrize(
    "peer",
    [_param(name) for name in ("pool-native", "sqlalchemy", "psycopg_pool")],
    indirect=True,
)


# ------------------------------------------------------------------ fixtures


def _shown(dsn: str) -> str:
    """Where a DSN points, without credentials."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        return f"{parts.hostname}:{parts.port or 5432}{parts.path}"
    from pypool.dbapi import mask_dsn

    return mask_dsn(dsn)


_db_state: dict[str, str | None] = {}


def _database() -> str:
    """The benchmarks' DSN; skips (or fails) when the server is unusable."""
    dsn = os.environ.get("PYPOOL_BENCH_DSN") or os.environ.get("PYPOOL_TEST_DSN") or DEFAULT_DSN
    if dsn not in _db_state:
        problem: str | None = None
        try:
            import psycopg

            with psycopg.connect(dsn, connect_timeout=3):
                pass
        except ImportError:
            problem = "psycopg is not installed (pip install psycopg[binary])"
        except Exception as exc:  # any driver error means "not usable"
            from pypool.dbapi import mask_dsn

            problem = mask_dsn(f"cannot connect: {type(exc).__name__}: {exc}")
        _db_state[dsn] = problem
    problem = _db_state[dsn]
    if problem is not None:
        message = f"database {_shown(dsn)} unusable: {problem}"
        if os.environ.get("PYPOOL_REQUIRE_DB") == "1":
            pytest.fail(f"PYPOOL_REQUIRE_DB=1 but the {message}")
        pytest.skip(message)
    return dsn


@pytest.fixture
def peer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Handles]:
    """The contender named by indirect parametrization, set up with
    :data:`CONNECTIONS` connections; closed afterwards."""
    contender = _CONTENDERS[request.param]
    if request.param in DB_CONTENDERS:
        monkeypatch.setattr(_bench_peers, "DSN", _database())
    reason = contender.check()
    if reason is not None:
        pytest.skip(f"{contender.name}: {reason}")
    handles = contender.setup(CONNECTIONS)
    yield handles
    handles.close()


# ------------------------------------------------------------------ uncontended


@uncontended
def test_pool_uncontended(benchmark: Any, peer: Handles) -> None:
    """Checkout + return of an idle connection, one thread."""
    acquire, release = peer.try_acquire, peer.release

    def cycles() -> None:
        for _ in repeat(None, INNER):
            release(acquire())

    benchmark.group = "pool uncontended"
    benchmark(cycles)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["ns_per_cycle"] = benchmark.stats.stats.median / INNER * 1e9
        benchmark.extra_info["cycles_per_call"] = INNER


# ------------------------------------------------------------------ threads


class _Round:
    """One threaded round: threads started, waiting on the barrier."""

    def __init__(self, handles: Handles, threads: int, per_thread: int) -> None:
        acquire, release = handles.acquire, handles.release
        assert acquire is not None
        self.errors: list[BaseException] = []
        self.barrier = threading.Barrier(threads + 1)

        def work() -> None:
            try:
                self.barrier.wait()
                for _ in repeat(None, per_thread):
                    release(acquire(TIMEOUT))
            except BaseException as exc:
                self.errors.append(exc)

        self.workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
        for w in self.workers:
            w.start()

    def run(self) -> None:
        """The timed part: release the barrier, join every thread."""
        self.barrier.wait()
        for w in self.workers:
            w.join()

    def check(self) -> None:
        if self.errors:
            exc = self.errors[0]
            pytest.fail(f"a worker thread failed: {type(exc).__name__}: {exc}")


def _calibrate(handles: Handles, threads: int) -> int:
    """Cycles per thread for a round of about THREAD_ROUND seconds."""
    per_thread = max(20, 2000 // threads)
    while True:
        r = _Round(handles, threads, per_thread)
        t0 = time.perf_counter()
        r.run()
        elapsed = time.perf_counter() - t0
        r.check()
        if elapsed >= THREAD_ROUND / 8:
            return max(10, round(per_thread * THREAD_ROUND / elapsed))
        per_thread *= 4


@threaded
def test_pool_threads(benchmark: Any, peer: Handles) -> None:
    """THREADS threads share the connections: checkout + return in a loop."""
    per_thread = _calibrate(peer, THREADS)
    rounds: list[_Round] = []

    def setup() -> tuple[tuple[_Round], dict[str, Any]]:
        rounds.append(_Round(peer, THREADS, per_thread))
        return (rounds[-1],), {}

    benchmark.group = "pool threads"
    benchmark.pedantic(_Round.run, setup=setup, rounds=THREAD_ROUNDS, iterations=1)
    for r in rounds:
        r.check()
    total = per_thread * THREADS
    benchmark.extra_info["threads"] = THREADS
    benchmark.extra_info["connections"] = CONNECTIONS
    benchmark.extra_info["cycles_per_round"] = total
    if benchmark.stats is not None:
        benchmark.extra_info["cycles_per_s"] = total / benchmark.stats.stats.median
