"""Scaling out: 4 processes x 8 threads against PostgreSQL, directly and
through PgBouncer in transaction mode.

    python benchmarks/scaling_out.py --dsn postgresql://postgres@127.0.0.1/test \\
        --json scaling.json --plot docs/scaling-out.png

Three ways to serve the same clients, each process with its own clients as a
service with several worker processes has them:

- ``a-direct``: a ``pypool.Pool`` of ``max_size=8`` in each process, straight
  to PostgreSQL (4 x 8 = 32 server connections);
- ``b-bouncer``: the same pools (``transaction_pooling=True``,
  ``prepare_threshold=None``) through a private PgBouncer in transaction
  mode with ``--bouncer-pool`` server connections (8: a quarter of a's);
- ``c-fresh``: a new connection per request through the same PgBouncer, what
  a service without a client pool does.

Two workloads: ``SELECT 1``, and a short read-write transaction (an
``UPDATE`` of one random row of a table made for the run and a ``SELECT`` of
it, between ``BEGIN`` and ``COMMIT``). The scenarios are measured round by
round, each round in a rotated order, so a noisy machine slows them alike;
the tables show the median over the rounds. Server connections are counted
halfway through each run: for a-direct in ``pg_stat_activity`` (by
``application_name``), for the others on the bouncer's admin console
(``SHOW POOLS``). Needs the ``pgbouncer`` program (Debian: ``apt-get
install pgbouncer``) and psycopg; matplotlib for ``--plot``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

SCENARIOS = {
    "a-direct": "pypool.Pool max_size=8 per process, straight to PostgreSQL",
    "b-bouncer": "pypool.Pool max_size=8 per process, through PgBouncer (transaction mode)",
    "c-fresh": "a new connection per request, through the same PgBouncer",
}
WORKLOADS = {"select1": "SELECT 1", "rw": "read-write transaction (UPDATE + SELECT)"}
ROWS = 1000
APP = "pypool-scaling"


# ------------------------------------------------------------------ the worker


class _Fresh:
    """``connection()`` that connects for every request and closes after."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        import psycopg

        conn = psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None)
        try:
            yield conn
        finally:
            conn.close()


class _Workload:
    """What one cycle runs on a connection."""

    def __init__(self, kind: str, table: str) -> None:
        self.kind = kind
        self.table = table

    def __call__(self, conn: Any) -> None:
        if self.kind == "select1":
            conn.execute("SELECT 1").fetchone()
            return
        key = random.randrange(ROWS)
        with conn.transaction():
            conn.execute(f"UPDATE {self.table} SET n = n + 1 WHERE id = %s", (key,))
            conn.execute(f"SELECT n FROM {self.table} WHERE id = %s", (key,)).fetchone()


def _run_threads(
    source: Any, work: _Workload, threads: int, seconds: float
) -> tuple[list[float], float]:
    from pypool.cli.workload import WorkloadFailed, run_clients

    try:
        latencies, elapsed, _ = run_clients(source, work, threads, seconds)
    except WorkloadFailed as exc:  # report the client's own error
        raise exc.__cause__ or exc from None
    return latencies, elapsed


def _worker(pipe: Any, dsns: dict[str, str], table: str, threads: int) -> None:
    import psycopg

    import pypool

    while True:
        message = pipe.recv()
        if message is None:
            return
        scenario, kind, seconds = message
        source: Any
        pool: Any = None
        try:
            if scenario == "c-fresh":
                source = _Fresh(dsns["bouncer"])
            else:
                dsn = dsns["direct"] if scenario == "a-direct" else dsns["bouncer"]
                factory = pypool.dbapi.connect_factory(
                    psycopg.connect, dsn, autocommit=True, prepare_threshold=None,
                    application_name=f"{APP}-{scenario}",
                )  # fmt: skip
                pool = pypool.Pool(factory, min_size=8, max_size=8, name=scenario,
                                   transaction_pooling=scenario == "b-bouncer")  # fmt: skip
                pool.wait(timeout=30.0)
                source = pool
            pipe.send(("ready", None))
            pipe.recv()  # go
            pipe.send(("done", _run_threads(source, _Workload(kind, table), threads, seconds)))
        except Exception as exc:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        finally:
            if pool is not None:
                pool.close()


# ------------------------------------------------------------------ the parent


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(q * len(values) + 0.999999) - 1))]


def _server_connections(scenario: str, monitor: Any, bouncer: Any) -> int:
    if scenario == "a-direct":
        row = monitor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (f"{APP}-{scenario}",),
        ).fetchone()
        return int(row[0])
    return int(bouncer.server_connections())


def _one_run(pipes: list[Any], scenario: str, kind: str, seconds: float, monitor: Any,
             bouncer: Any) -> dict[str, Any]:  # fmt: skip
    def gather() -> list[Any]:
        out = []
        for pipe in pipes:
            if not pipe.poll(seconds + 120):
                raise RuntimeError("a worker did not answer")
            status, value = pipe.recv()
            if status == "error":
                raise RuntimeError(f"{scenario} {kind}: {value}")
            out.append(value)
        return out

    for pipe in pipes:
        pipe.send((scenario, kind, seconds))
    gather()
    for pipe in pipes:
        pipe.send("go")
    time.sleep(seconds / 2)
    servers = _server_connections(scenario, monitor, bouncer)
    answers = gather()
    latencies = [x for lat, _ in answers for x in lat]
    return {
        "throughput": sum(len(lat) / elapsed for lat, elapsed in answers),
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "cycles": len(latencies),
        "server_connections": servers,
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        key: statistics.median(r[key] for r in runs)
        for key in ("throughput", "p50_ms", "p99_ms", "server_connections")
    } | {"rounds": len(runs), "samples": runs}


def _plot(results: dict[str, Any], path: str, meta: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), dpi=100)
    colors = {"a-direct": "tab:blue", "b-bouncer": "tab:green", "c-fresh": "tab:red"}
    try:
        for ax, kind in zip(axes, WORKLOADS, strict=True):
            names = list(SCENARIOS)
            values = [results[kind][n]["throughput"] for n in names]
            bars = ax.bar(names, values, color=[colors[n] for n in names])
            ax.set_title(f"{WORKLOADS[kind]}")
            ax.set_ylabel("requests/s, all clients together")
            for bar, name in zip(bars, names, strict=True):
                r = results[kind][name]
                ax.annotate(
                    f"{r['throughput']:,.0f}/s\np99 {r['p99_ms']:.1f} ms\n"
                    f"{r['server_connections']:.0f} server conns",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8,
                )  # fmt: skip
            ax.set_ylim(0, max(values) * 1.3)
            ax.grid(True, axis="y", alpha=0.3)
        fig.suptitle(
            f"{meta['processes']} processes x {meta['threads']} threads; "
            f"PgBouncer {meta['pgbouncer']} transaction mode, {meta['bouncer_pool']} server "
            f"connections; median of {meta['rounds']} rounds of {meta['seconds']:g} s"
        )
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get(
        "PYPOOL_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test"))  # fmt: skip
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument(
        "--bouncer-pool",
        type=int,
        default=8,
        help="PgBouncer's server connections for b and c (default 8)",
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--plot", metavar="FILE.png")
    args = parser.parse_args(argv)

    import psycopg

    from _support.pgbouncer import PgBouncer, find_binary

    if find_binary() is None:
        print("scaling_out: needs pgbouncer (Debian: apt-get install pgbouncer)",
              file=sys.stderr)  # fmt: skip
        return 1
    table = f"pypool_scaling_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0)")
        conn.execute(f"INSERT INTO {table} (id) SELECT generate_series(0, {ROWS - 1})")
    bouncer = PgBouncer(args.dsn, pool_mode="transaction", default_pool_size=args.bouncer_pool,
                        settings={"max_client_conn": 500})  # fmt: skip
    context = multiprocessing.get_context("spawn")
    pipes: list[Any] = []
    processes: list[Any] = []
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        k: {s: [] for s in SCENARIOS} for k in WORKLOADS
    }
    try:
        bouncer.start()
        version = bouncer.show("VERSION")[0]
        dsns = {"direct": args.dsn, "bouncer": bouncer.dsn}
        for _ in range(args.processes):
            parent, child = context.Pipe()
            process = context.Process(target=_worker, args=(child, dsns, table, args.threads),
                                      daemon=True)  # fmt: skip
            process.start()
            pipes.append(parent)
            processes.append(process)
        monitor = psycopg.connect(args.dsn, autocommit=True)
        names = list(SCENARIOS)
        for r in range(args.rounds):
            shift = r % len(names)
            for kind in WORKLOADS:
                for scenario in names[shift:] + names[:shift]:
                    result = _one_run(pipes, scenario, kind, args.seconds, monitor, bouncer)
                    runs[kind][scenario].append(result)
                    print(f"round {r + 1}/{args.rounds} {kind:8} {scenario:10} "
                          f"{result['throughput']:10,.0f}/s  p50 {result['p50_ms']:6.2f} ms  "
                          f"p99 {result['p99_ms']:7.2f} ms  "
                          f"{result['server_connections']} server connections",
                          flush=True)  # fmt: skip
        monitor.close()
    finally:
        for pipe in pipes:
            with contextlib.suppress(Exception):
                pipe.send(None)
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
        bouncer.cleanup()
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")

    results = {k: {s: _summary(v) for s, v in by.items()} for k, by in runs.items()}
    meta = {
        "processes": args.processes, "threads": args.threads, "seconds": args.seconds,
        "rounds": args.rounds, "bouncer_pool": args.bouncer_pool,
        "pgbouncer": str(next(iter(version.values()))).replace("PgBouncer ", ""),
        "cpus": os.cpu_count(),
    }  # fmt: skip
    print()
    print(f"median of {args.rounds} rounds; {args.processes} processes x {args.threads} threads")
    for kind in WORKLOADS:
        a = results[kind]["a-direct"]
        b = results[kind]["b-bouncer"]
        c = results[kind]["c-fresh"]
        print(f"{WORKLOADS[kind]}:")
        for name in SCENARIOS:
            r = results[kind][name]
            print(f"  {name:10} {r['throughput']:10,.0f}/s  p50 {r['p50_ms']:6.2f} ms  "
                  f"p99 {r['p99_ms']:7.2f} ms  {r['server_connections']:.0f} server "
                  "connections")  # fmt: skip
        print(f"  b/a throughput {b['throughput'] / a['throughput']:.2f}, "
              f"server connections {b['server_connections']:.0f}/{a['server_connections']:.0f}; "
              f"b/c throughput {b['throughput'] / c['throughput']:.1f}x")  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "scenarios": SCENARIOS, "results": results}, f, indent=2)
    if args.plot:
        _plot(results, args.plot, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
