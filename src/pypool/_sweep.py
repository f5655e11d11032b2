"""``pypool sweep``: which pool size serves a workload best.

N client threads run a workload (default ``SELECT 1``; ``--query SQL`` or
``--script FILE``, run as one ``execute`` per cycle in autocommit) through a
:class:`pypool.Pool` of size 1, 2, 4, ... up to ``--max-size``, each size for
``--seconds``. A cycle is ``with pool.connection() as conn: <workload>``; its
latency includes the wait for a connection, as a caller would see it.

The sizes never go above what the server allows: ``max_connections`` less
``superuser_reserved_connections`` and ``reserved_connections`` less the client
connections already open (the sweep's own monitoring connection included).

The recommended size is the smallest whose throughput is within
``--tolerance`` percent of the best one measured.

``--json FILE`` writes (schema ``pypool-sweep/1``)::

    {
      "schema": "pypool-sweep/1",
      "complete": true,                 # false when interrupted or failed
      "dsn": "postgresql://u:***@h/db", # password masked
      "server": {"version": "16.2", "max_connections": 100,
                 "superuser_reserved_connections": 3, "reserved_connections": 0,
                 "in_use": 5,           # client connections before the sweep
                 "available": 92},      # what the sweep may open
      "settings": {"clients": 16, "seconds": 3.0, "max_size": 32, "cap": 32,
                   "tolerance": 5.0, "sizes": [1, 2, 4, 8, 16, 32],
                   "workload": {"kind": "query", "sql": "SELECT 1"}},
      "results": [{"size": 1, "cycles": 3012, "seconds": 3.0,
                   "throughput": 1004.0, "p50_ms": 0.9, "p99_ms": 2.5,
                   "server_in_use": 6}, ...],
      "recommended": {"size": 4, "throughput": 9800.0, "best_size": 8,
                      "best_throughput": 10100.0, "reason": "..."},   # or null
      "error": null                     # the error that stopped the sweep
    }
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .cli import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    _check_plot,
    _hint_extras,
    _json_path,
    _png_path,
    _positive,
    _Progress,
    _pyplot,
    _table,
    _write_outputs,
)

__all__ = ["SCHEMA", "add_arguments", "cap", "recommend", "sizes", "sweep"]

SCHEMA = "pypool-sweep/1"
DEFAULT_QUERY = "SELECT 1"
DEFAULT_CLIENTS = 16
DEFAULT_MAX_SIZE = 32
DEFAULT_SECONDS = 3.0
DEFAULT_TOLERANCE = 5.0
PSYCOPG_EXTRA = "pip install 'pypool[psycopg]'"
#: Seconds a size's pool may take to open all its connections.
OPEN_TIMEOUT = 30.0

_ACTIVE = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"


# ------------------------------------------------------------------ the rules


def cap(max_size: int, max_connections: int, reserved: int, in_use: int) -> int:
    """The largest pool size the sweep may use: ``max_size``, but never more
    than the server's free non-reserved connection slots."""
    return max(0, min(max_size, max_connections - reserved - in_use))


def sizes(limit: int) -> list[int]:
    """1, 2, 4, ... up to ``limit``, and ``limit`` itself."""
    out = []
    size = 1
    while size <= limit:
        out.append(size)
        size *= 2
    if limit >= 1 and out[-1] != limit:
        out.append(limit)
    return out


def recommend(
    results: list[dict[str, Any]], tolerance: float, clients: int | None = None
) -> dict[str, Any] | None:
    """The smallest size within ``tolerance`` percent of the best throughput,
    with the reason, or None when nothing was measured."""
    done = [r for r in results if r["throughput"] > 0]
    if not done:
        return None
    best = max(done, key=lambda r: r["throughput"])
    floor = best["throughput"] * (1 - tolerance / 100)
    chosen = min((r for r in done if r["throughput"] >= floor), key=lambda r: r["size"])
    share = chosen["throughput"] / best["throughput"] * 100
    if chosen is best:
        reason = (
            f"pool size {chosen['size']} had the best throughput "
            f"({chosen['throughput']:,.0f}/s) and no smaller size came within "
            f"{tolerance:g}% of it"
        )
    else:
        reason = (
            f"pool size {chosen['size']} is the smallest within {tolerance:g}% of the best "
            f"throughput ({chosen['throughput']:,.0f}/s, {share:.0f}% of "
            f"{best['throughput']:,.0f}/s at size {best['size']}); a larger pool holds more "
            "server connections for little or no gain"
        )
    largest = max(r["size"] for r in done)
    if len(done) > 1 and best["size"] == largest and (clients is None or largest < clients):
        reason += (
            "; throughput was highest at the largest size tried, so a larger one may do better"
        )
    return {
        "size": chosen["size"],
        "throughput": chosen["throughput"],
        "best_size": best["size"],
        "best_throughput": best["throughput"],
        "reason": reason,
    }


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of sorted ``values``."""
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


# ------------------------------------------------------------------ arguments


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 3600, got {text}")
    return value


def _percent(text: str) -> float:
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, got {text!r}") from None
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"must be from 0 to below 100, got {text}")
    return value


def _script(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"{path!r} is not UTF-8 text") from None
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{path!r} is empty")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn",
        metavar="URL",
        default=os.environ.get("PYPOOL_SWEEP_DSN"),
        help="the PostgreSQL to run against (default $PYPOOL_SWEEP_DSN)",
    )
    work = parser.add_mutually_exclusive_group()
    work.add_argument("--query", metavar="SQL", help=f"the workload (default {DEFAULT_QUERY})")
    work.add_argument(
        "--script", type=_script, metavar="FILE", help="the workload: the SQL in FILE"
    )
    parser.add_argument(
        "--clients",
        type=functools.partial(_positive, high=1024),
        default=DEFAULT_CLIENTS,
        metavar="N",
        help=f"client threads (default {DEFAULT_CLIENTS})",
    )
    parser.add_argument(
        "--max-size",
        type=functools.partial(_positive, high=10_000),
        default=DEFAULT_MAX_SIZE,
        metavar="N",
        help=f"the largest pool size (default {DEFAULT_MAX_SIZE}; never above what "
        "the server allows)",
    )
    parser.add_argument(
        "--seconds",
        type=_seconds,
        default=DEFAULT_SECONDS,
        metavar="S",
        help=f"seconds per size (default {DEFAULT_SECONDS:g})",
    )
    parser.add_argument(
        "--tolerance",
        type=_percent,
        default=DEFAULT_TOLERANCE,
        metavar="PCT",
        help=(
            f"recommend the smallest size within PCT%% of the best (default {DEFAULT_TOLERANCE:g})"
        ),
    )
    parser.add_argument("--json", type=_json_path, metavar="FILE", help=f"write ({SCHEMA})")
    parser.add_argument(
        "--plot", type=_png_path, metavar="FILE.png", help="draw throughput and p99 against size"
    )


# ------------------------------------------------------------------ running


class _Failed(Exception):
    """Stops the command with one line on stderr."""


@dataclass
class _Sweep:
    dsn: str  # masked
    workload: dict[str, str]
    clients: int
    seconds: float
    max_size: int
    tolerance: float
    started: str
    server: dict[str, Any] = field(default_factory=dict)
    cap: int = 0
    sizes: list[int] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False
    error: str | None = None


def _first_line(exc: BaseException) -> str:
    from .dbapi import mask_dsn

    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return mask_dsn(text or type(exc).__name__)


def _server(conn: Any) -> dict[str, Any]:
    def one(sql: str) -> Any:
        row = conn.execute(sql).fetchone()
        return row[0] if row else None

    return {
        "version": one("SHOW server_version"),
        "max_connections": int(one("SHOW max_connections")),
        "superuser_reserved_connections": int(one("SHOW superuser_reserved_connections")),
        "reserved_connections": int(
            one("SELECT current_setting('reserved_connections', true)") or 0
        ),
        "in_use": int(one(_ACTIVE)),
    }


def _run(conn: Any, sql: str) -> None:
    cur = conn.execute(sql)
    while True:
        if cur.description is not None:
            cur.fetchall()
        if not cur.nextset():
            break


def _measure(pool: Any, sql: str, clients: int, seconds: float, monitor: Any) -> dict[str, Any]:
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)
    clock = time.perf_counter

    def work(mine: list[float]) -> None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        try:
            while not stop.is_set():
                t0 = clock()
                with pool.connection() as conn:
                    _run(conn, sql)
                mine.append(clock() - t0)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    workers = [threading.Thread(target=work, args=(lat,), daemon=True) for lat in latencies]
    for w in workers:
        w.start()
    try:
        barrier.wait()
        t0 = clock()
        stop.wait(seconds / 2)
        in_use = None
        with contextlib.suppress(Exception):
            in_use = int(monitor.execute(_ACTIVE).fetchone()[0])
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
        raise _Failed(f"the workload failed: {_first_line(errors[0])}")
    merged = sorted(x for lat in latencies for x in lat)
    return {
        "cycles": len(merged),
        "seconds": round(elapsed, 4),
        "throughput": len(merged) / elapsed,
        "p50_ms": percentile(merged, 0.50) * 1000 if merged else None,
        "p99_ms": percentile(merged, 0.99) * 1000 if merged else None,
        "server_in_use": in_use,
    }


def _execute(s: _Sweep, psycopg: Any, dsn: str, sql: str, progress: _Progress) -> None:
    from . import dbapi
    from .pool import Pool

    try:
        monitor = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except Exception as exc:
        raise _Failed(f"cannot connect to {s.dsn}: {_first_line(exc)}") from None
    try:
        try:
            s.server = _server(monitor)
        except Exception as exc:
            raise _Failed(f"cannot read the server's settings: {_first_line(exc)}") from None
        reserved = s.server["superuser_reserved_connections"] + s.server["reserved_connections"]
        s.cap = cap(s.max_size, s.server["max_connections"], reserved, s.server["in_use"])
        s.server["available"] = s.server["max_connections"] - reserved - s.server["in_use"]
        if s.cap < 1:
            raise _Failed(
                f"the server has no free connections (max_connections "
                f"{s.server['max_connections']}, {reserved} reserved, {s.server['in_use']} in use)"
            )
        s.sizes = sizes(s.cap)
        try:
            _run(monitor, sql)  # a dry run: a broken workload fails here, once
        except Exception as exc:
            raise _Failed(f"the workload failed: {_first_line(exc)}") from None
        factory = dbapi.connect_factory(psycopg.connect, dsn, autocommit=True)
        progress.set_total(len(s.sizes))
        for i, size in enumerate(s.sizes):
            progress.show(f"pool size {size} ({i + 1}/{len(s.sizes)})", advance=i > 0)
            pool = Pool(factory, min_size=size, max_size=size, name=f"sweep-{size}")
            try:
                try:
                    pool.wait(timeout=OPEN_TIMEOUT, fail_fast=True)
                except Exception as exc:
                    cause = exc.__cause__ or exc
                    raise _Failed(
                        f"pool size {size}: cannot open {size} connections: {_first_line(cause)}"
                    ) from None
                result = _measure(pool, sql, s.clients, s.seconds, monitor)
            finally:
                pool.close()
            s.results.append({"size": size, **result})
        progress.show("done")
        s.complete = True
    finally:
        with contextlib.suppress(Exception):
            monitor.close()


# ------------------------------------------------------------------ reporting


def _report(s: _Sweep) -> None:
    out = sys.stdout
    print(f"pypool sweep: {s.dsn}", file=out)
    if s.server:
        srv = s.server
        reserved = srv["superuser_reserved_connections"] + srv["reserved_connections"]
        print(
            f"server: PostgreSQL {srv['version']}, max_connections {srv['max_connections']} "
            f"({reserved} reserved), {srv['in_use']} in use before the sweep; "
            f"pool sizes up to {s.cap} (--max-size {s.max_size})",
            file=out,
        )
    sql = " ".join(s.workload["sql"].split())
    what = sql if len(sql) <= 60 else sql[:57] + "..."
    label = "script" if s.workload["kind"] == "script" else "query"
    print(
        f"workload: {label} {what!r}, {s.clients} client threads, {s.seconds:g} s per size",
        file=out,
    )
    if not s.complete:
        print(f"{len(s.results)}/{len(s.sizes)} sizes measured (incomplete)", file=out)
    if s.results:
        print(file=out)
        rows = [["size", "cycles/s", "p50 ms", "p99 ms", "server in use"]]
        for r in s.results:
            rows.append(
                [
                    str(r["size"]),
                    f"{r['throughput']:,.0f}",
                    "-" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}",
                    "-" if r["p99_ms"] is None else f"{r['p99_ms']:.2f}",
                    "-" if r["server_in_use"] is None else str(r["server_in_use"]),
                ]
            )
        for line in _table(rows, [True] * 5):
            print(line, file=out)
        print(
            "cycles/s: workloads completed per second, all clients together; latency "
            "includes the wait for a connection; server in use: client connections on "
            f"the server during the run (max_connections {s.server.get('max_connections')})",
            file=out,
        )
    rec = recommend(s.results, s.tolerance, s.clients)
    if rec is not None:
        print(file=out)
        print(f"Recommended pool size: {rec['size']}: {rec['reason']}.", file=out)


def _doc(s: _Sweep) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "complete": s.complete,
        "started": s.started,
        "dsn": s.dsn,
        "server": s.server or None,
        "settings": {
            "clients": s.clients,
            "seconds": s.seconds,
            "max_size": s.max_size,
            "cap": s.cap,
            "tolerance": s.tolerance,
            "sizes": s.sizes,
            "workload": s.workload,
        },
        "results": s.results,
        "recommended": recommend(s.results, s.tolerance, s.clients),
        "error": s.error,
    }


def _plot(s: _Sweep, path: str) -> None:
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6.5), dpi=100)
    try:
        xs = [r["size"] for r in s.results]
        top.plot(xs, [r["throughput"] for r in s.results], marker="o", color="tab:blue")
        bottom.plot(
            xs, [r["p99_ms"] or 0 for r in s.results], marker="o", color="tab:red", label="p99"
        )
        bottom.plot(
            xs, [r["p50_ms"] or 0 for r in s.results], marker=".", color="tab:gray", label="p50"
        )
        rec = recommend(s.results, s.tolerance, s.clients)
        for ax in (top, bottom):
            if rec is not None:
                ax.axvline(rec["size"], color="tab:green", linestyle="--", alpha=0.7)
            ax.grid(True, alpha=0.3)
        top.set_ylabel("cycles/s (all clients)")
        top.set_ylim(bottom=0)
        bottom.set_ylabel("latency, ms")
        bottom.set_ylim(bottom=0)
        bottom.legend(fontsize="small")
        bottom.set_xlabel("pool size")
        if xs:
            bottom.set_xscale("log", base=2)
            bottom.set_xticks(xs)
            bottom.set_xticklabels([str(x) for x in xs])
        title = f"pypool sweep: {s.clients} clients, {s.seconds:g} s per size"
        if rec is not None:
            title += f"; recommended size {rec['size']} (dashed)"
        top.set_title(title)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


# ------------------------------------------------------------------ the command


def sweep(args: argparse.Namespace) -> int:
    def fail(message: str) -> int:
        print(f"pypool sweep: {message}", file=sys.stderr)
        return EXIT_FAILED

    if not args.dsn:
        return fail("a database is required: --dsn URL (or $PYPOOL_SWEEP_DSN)")
    error = _check_plot("sweep", args.plot)
    if error:
        print(error, file=sys.stderr)
        return EXIT_FAILED
    try:
        import psycopg
    except ImportError:
        return fail(f"needs psycopg: {PSYCOPG_EXTRA}")
    _hint_extras("sweep", plot=args.plot is not None)
    from .dbapi import Secrets

    secrets = Secrets(args.dsn)  # what is shown or written passes through it

    if args.script is not None:
        workload = {"kind": "script", "sql": args.script}
    else:
        workload = {"kind": "query", "sql": args.query or DEFAULT_QUERY}
    s = _Sweep(
        dsn=secrets.mask(args.dsn),
        workload=workload,
        clients=args.clients,
        seconds=args.seconds,
        max_size=args.max_size,
        tolerance=args.tolerance,
        started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    progress = _Progress()
    status = EXIT_OK
    try:
        _execute(s, psycopg, args.dsn, workload["sql"], progress)
    except KeyboardInterrupt:
        progress.clear()
        s.error = "interrupted"
        print("pypool sweep: interrupted; results so far:", file=sys.stderr)
        status = EXIT_INTERRUPTED
    except _Failed as exc:
        progress.clear()
        s.error = secrets.mask(str(exc))
        print(f"pypool sweep: {s.error}", file=sys.stderr)
        status = EXIT_FAILED
        if not s.results:
            return status
    finally:
        progress.clear()
    _report(s)
    sys.stdout.flush()
    plot = functools.partial(_plot, s)
    if not _write_outputs("sweep", functools.partial(_doc, s), args.json, plot, args.plot):
        return status or EXIT_FAILED
    return status
