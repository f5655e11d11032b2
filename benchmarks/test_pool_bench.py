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

from collections.abc import Iterator
from itertools import repeat
from typing import Any

import pytest

from _common import Round, calibrate, database, record_per_cycle, record_rate
from pypool.cli import CONNECTIONS, Handles
from pypool.cli import peers as _bench_peers

#: Cycles per timed call in the uncontended benchmarks.
INNER = 1000
#: Threads sharing the connections in the threaded benchmarks.
THREADS = 16
#: Target length of one threaded round, in seconds.
THREAD_ROUND = 0.3
THREAD_ROUNDS = 3

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


@pytest.fixture
def peer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Handles]:
    """The contender named by indirect parametrization, set up with
    :data:`CONNECTIONS` connections; closed afterwards."""
    contender = _CONTENDERS[request.param]
    if request.param in DB_CONTENDERS:
        monkeypatch.setattr(_bench_peers, "DSN", database(with_psycopg_pool=False))
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
    record_per_cycle(benchmark, INNER)


# ------------------------------------------------------------------ threads


@threaded
def test_pool_threads(benchmark: Any, peer: Handles) -> None:
    """THREADS threads share the connections: checkout + return in a loop."""
    per_thread = calibrate(peer.acquire, peer.release, THREADS, THREAD_ROUND)
    rounds: list[Round] = []

    def setup() -> tuple[tuple[Round], dict[str, Any]]:
        rounds.append(Round(peer.acquire, peer.release, THREADS, per_thread))
        return (rounds[-1],), {}

    benchmark.group = "pool threads"
    benchmark.pedantic(Round.run, setup=setup, rounds=THREAD_ROUNDS, iterations=1)
    for r in rounds:
        r.check()
    total = per_thread * THREADS
    record_rate(benchmark, total, "cycles", threads=THREADS, connections=CONNECTIONS)
