"""``SELECT 1`` through ``with pool.connection() as conn:``, end to end:
``pypool.psycopg.ConnectionPool`` against ``psycopg_pool.ConnectionPool``,
interleaved, with autocommit on and off.

    python benchmarks/psycopg_select1.py --dsn postgresql://postgres@127.0.0.1/test \\
        --runs 7 --cycles 5000

Each run times ``--cycles`` checkouts that run ``SELECT 1`` on each contender
in turn (the order rotated from run to run, so a noisy machine slows them
alike), on pools of the same size, the same DSN, full before timing starts;
with ``--threads``, that many threads share each pool.
It prints, per autocommit setting, the median time per cycle of each
contender, and the median and spread (min..max) over the runs of the ratio
psycopg_pool / pypool (above 1.00: pypool is faster). ``--count-round-trips``
also counts the server round trips of one cycle on each pool (libpq calls
that send a query), without timing.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from itertools import repeat
from typing import Any

from _common import DEFAULT_DSN, open_psycopg_pool


def timed(pool: Any, cycles: int) -> tuple[float, float]:
    """Seconds per ``with pool.connection() as conn: conn.execute("SELECT 1")``:
    elapsed, and this process's CPU time."""
    connection = pool.connection
    cpu = time.process_time()
    started = time.perf_counter()
    for _ in repeat(None, cycles):
        with connection() as conn:
            conn.execute("SELECT 1")
    return (time.perf_counter() - started) / cycles, (time.process_time() - cpu) / cycles


def timed_threads(pool: Any, cycles: int, threads: int) -> tuple[float, float]:
    """Seconds per cycle (as :func:`timed`) with ``threads`` threads sharing
    the pool, ``cycles // threads`` each, from a barrier to the last join."""
    import threading

    per_thread = cycles // threads
    barrier = threading.Barrier(threads + 1)
    failures: list[BaseException] = []

    def worker() -> None:
        connection = pool.connection
        try:
            barrier.wait()
            for _ in repeat(None, per_thread):
                with connection() as conn:
                    conn.execute("SELECT 1")
        except BaseException as exc:  # reported below
            failures.append(exc)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in workers:
        t.start()
    barrier.wait()
    cpu = time.process_time()
    started = time.perf_counter()
    for t in workers:
        t.join()
    if failures:
        raise failures[0]
    done = per_thread * threads
    return (time.perf_counter() - started) / done, (time.process_time() - cpu) / done


def count_round_trips(pool: Any) -> int:
    """The round trips one checkout cycle makes to the server, read from
    libpq's protocol trace of the connection (a simple ``Query`` or an
    extended query's ``Sync`` each ends one)."""
    import tempfile

    with pool.connection() as conn:
        pgconn = conn.pgconn
    with tempfile.TemporaryFile("w+") as trace:
        pgconn.trace(trace.fileno())
        try:
            with pool.connection() as conn:
                assert conn.pgconn is pgconn, "the pool must hand out its last connection"
                conn.execute("SELECT 1")
        finally:
            pgconn.untrace()
        trace.seek(0)
        lines = trace.read().splitlines()
    sent = [line for line in lines if re.search(r"\tF\t\d+\t(Query|Sync)\b", line)]
    for line in sent:
        print("   ", line.split("\t", 1)[-1])
    return len(sent)


def report(
    mode: str,
    names: list[str],
    times: dict[str, list[float]],
    cpus: dict[str, list[float]],
    args: argparse.Namespace,
) -> None:
    for name in names:
        wall = statistics.median(times[name]) * 1e6
        cpu = statistics.median(cpus[name]) * 1e6
        print(
            f"autocommit={mode:3s} {name:15s} median {wall:7.1f} us/cycle elapsed, "
            f"{cpu:6.1f} us/cycle CPU of this process, over {args.runs} runs of {args.cycles}"
        )
    if "psycopg_pool" not in names:
        return
    for name in names:
        if name == "psycopg_pool":
            continue
        for what, series in (("elapsed", times), ("CPU", cpus)):
            ratios = [p / o for p, o in zip(series["psycopg_pool"], series[name], strict=True)]
            print(
                f"autocommit={mode:3s} psycopg_pool/{name} ({what}): median "
                f"{statistics.median(ratios):.3f}x (spread {min(ratios):.3f}..{max(ratios):.3f}; "
                "above 1: pypool faster)"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--cycles", type=int, default=5000)
    parser.add_argument("--size", type=int, default=4)
    parser.add_argument(
        "--contenders", default="pypool-native,psycopg_pool", help="comma-separated"
    )
    parser.add_argument("--autocommit", choices=("on", "off", "both"), default="both")
    parser.add_argument(
        "--threads", type=int, default=1, help="threads sharing each pool (pool size: the larger)"
    )
    parser.add_argument("--count-round-trips", action="store_true")
    args = parser.parse_args(argv)
    names = args.contenders.split(",")
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.autocommit]
    for autocommit in modes:
        size = 1 if args.count_round_trips else max(args.size, args.threads)
        if args.threads > 1:
            run_one = lambda pool, n: timed_threads(pool, n, args.threads)  # noqa: E731
        else:
            run_one = timed
        pools = {n: open_psycopg_pool(n, args.dsn, size, autocommit=autocommit) for n in names}
        try:
            if args.count_round_trips:
                for name, pool in pools.items():
                    print(
                        f"autocommit={'on' if autocommit else 'off'} {name}: "
                        f"{count_round_trips(pool)} queries sent per cycle"
                    )
                continue
            for pool in pools.values():  # warm up
                run_one(pool, min(500, args.cycles))
            times: dict[str, list[float]] = {n: [] for n in names}
            cpus: dict[str, list[float]] = {n: [] for n in names}
            for run in range(args.runs):
                order = names[run % len(names) :] + names[: run % len(names)]
                for name in order:
                    wall, cpu = run_one(pools[name], args.cycles)
                    times[name].append(wall)
                    cpus[name].append(cpu)
        finally:
            for pool in pools.values():
                pool.close()
        if not args.count_round_trips:
            report("on" if autocommit else "off", names, times, cpus, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
