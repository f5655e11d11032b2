"""The workload of ``pypool sweep``: client threads running SQL through a
pool, timed as a caller sees it (the wait for a connection included).

Shared by the sweep in one process and by its worker processes
(``--processes``); it imports nothing of the command line.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ACTIVE", "WorkloadFailed", "measure", "percentile", "run_clients", "run_sql"]

#: Client connections on the server (through PgBouncer: the bouncer's server
#: connections and everyone else's).
ACTIVE = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"


class WorkloadFailed(Exception):
    """A client's workload raised: the first error, one line."""


def first_line(exc: BaseException) -> str:
    """``exc`` as one line, passwords masked."""
    from .._secrets import mask_dsn

    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return mask_dsn(text or type(exc).__name__)


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of sorted ``values``."""
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def run_sql(conn: Any, sql: str) -> None:
    """Runs ``sql`` (one or more statements) and reads every result."""
    cur = conn.execute(sql)
    while True:
        if cur.description is not None:
            cur.fetchall()
        if not cur.nextset():
            break


def measure(
    pool: Any,
    sql: str,
    clients: int,
    seconds: float,
    halfway: Callable[[], Any] | None = None,
) -> tuple[list[float], float, Any]:
    """``clients`` threads run ``with pool.connection() as conn: sql`` for
    ``seconds``: :func:`run_clients` of :func:`run_sql`."""
    return run_clients(pool, lambda conn: run_sql(conn, sql), clients, seconds, halfway)


def run_clients(
    pool: Any,
    work: Callable[[Any], object],
    clients: int,
    seconds: float,
    halfway: Callable[[], Any] | None = None,
) -> tuple[list[float], float, Any]:
    """``clients`` threads run ``with pool.connection() as conn: work(conn)``
    for ``seconds``; returns every cycle's latency in seconds (sorted), the
    elapsed time, and what ``halfway()`` returned halfway through (None
    without it; it runs on this thread, to count server connections, and
    an exception it raises counts as None). Raises :class:`WorkloadFailed`,
    caused by the first error, when a client's work raised."""
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)
    clock = time.perf_counter

    def client(mine: list[float]) -> None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        try:
            while not stop.is_set():
                t0 = clock()
                with pool.connection() as conn:
                    work(conn)
                mine.append(clock() - t0)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    workers = [threading.Thread(target=client, args=(lat,), daemon=True) for lat in latencies]
    for w in workers:
        w.start()
    try:
        barrier.wait()
        t0 = clock()
        stop.wait(seconds / 2)
        seen = None
        if halfway is not None:
            with contextlib.suppress(Exception):
                seen = halfway()
        stop.wait(max(0.0, t0 + seconds - clock()))
        stop.set()
        for w in workers:
            w.join()
        elapsed = clock() - t0
    except BaseException:
        stop.set()
        barrier.abort()
        raise
    if errors:
        raise WorkloadFailed(f"the workload failed: {first_line(errors[0])}") from errors[0]
    return sorted(x for lat in latencies for x in lat), elapsed, seen


def count_active(monitor: Any) -> int:
    """The server's client connections, read on ``monitor``."""
    return int(monitor.execute(ACTIVE).fetchone()[0])


def summary(latencies: list[float], cycles_per_second: float) -> dict[str, Any]:
    """Throughput and p50/p99 (milliseconds) of sorted ``latencies``."""
    return {
        "cycles": len(latencies),
        "throughput": cycles_per_second,
        "p50_ms": percentile(latencies, 0.50) * 1000 if latencies else None,
        "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else None,
    }
