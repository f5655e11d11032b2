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
``--tolerance`` percent of the best one measured; the report says how that
size keeps the total within what the server allows.

``--processes P`` runs the workload from P worker processes (``spawn``),
each with its own pool and ``--clients`` threads, as a service with P
worker processes does; sizes are then per process, and P x size stays
within the free connections.

Through PgBouncer, ``--admin-dsn`` (its admin console) makes the limits the
bouncer's: the client connections it has free (``max_client_conn`` less
those in use) cap P x size, and its pool (``pool_size`` + ``reserve_pool``,
within ``max_db_connections`` and ``max_user_connections``) is what
PostgreSQL sees. A transaction-mode bouncer (or ``--transaction-pooling``)
makes the pools declare ``transaction_pooling=True`` and connect with
``prepare_threshold=None``. ``--bouncer-pool-sizes 2,4,8`` then runs the
recommended size with each as the bouncer's ``default_pool_size`` (``SET``
on its console and ``RECONNECT`` of the database), recommends one the same
way, and sets the bouncer's own value back.

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
                      "best_throughput": 10100.0, "reason": "...",
                      "within_limits": "..."},   # or null
      "error": null                     # the error that stopped the sweep
    }

With ``--processes``, ``settings.processes`` is P and each result also has
``processes`` and ``total_size`` (P x size). With ``--admin-dsn``,
``bouncer`` holds what the console said (``version``, ``pool_mode``,
``max_client_conn``, ``clients_in_use``, ``available``,
``default_pool_size``, ``pool_size``, ``reserve_pool``,
``max_db_connections``, ``max_user_connections``, ``server_limit``), each
result has ``bouncer_server_connections`` (counted halfway through), and
``bouncer_results`` / ``recommended_bouncer`` hold the
``--bouncer-pool-sizes`` runs (``{"default_pool_size": 4, "size": 8,
"cycles": ..., ...}``). ``settings`` also has ``transaction_pooling`` and
``bouncer_pool_sizes``; ``notes`` lists what was skipped and why.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from . import bouncer as _bouncer
from .output import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Progress,
    check_plot,
    hint_extras,
    json_path,
    png_figure,
    png_path,
    positive,
    table,
    write_outputs,
)
from .sweep_processes import Workers, WorkersFailed
from .workload import (
    ACTIVE,
    WorkloadFailed,
    count_active,
    first_line,
    measure,
    percentile,
    run_sql,
    summary,
)

__all__ = ["SCHEMA", "add_arguments", "cap", "percentile", "recommend", "sizes", "sweep"]

SCHEMA = "pypool-sweep/1"
DEFAULT_QUERY = "SELECT 1"
DEFAULT_CLIENTS = 16
DEFAULT_MAX_SIZE = 32
DEFAULT_SECONDS = 3.0
DEFAULT_TOLERANCE = 5.0
PSYCOPG_EXTRA = "pip install 'pypool[psycopg]'"
#: Seconds a size's pool may take to open all its connections.
OPEN_TIMEOUT = 30.0

_ACTIVE = ACTIVE
_run = run_sql
_first_line = first_line


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


def _size_list(text: str) -> list[int]:
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise argparse.ArgumentTypeError(f"expected sizes like 2,4,8, got {text!r}")
        values.append(positive(part, 10_000))
    return sorted(set(values))


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
        type=functools.partial(positive, high=1024),
        default=DEFAULT_CLIENTS,
        metavar="N",
        help=f"client threads (default {DEFAULT_CLIENTS})",
    )
    parser.add_argument(
        "--max-size",
        type=functools.partial(positive, high=10_000),
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
    parser.add_argument(
        "--processes",
        type=functools.partial(positive, high=256),
        metavar="P",
        help="run the workload from P worker processes, each with its own pool of the size "
        "under test and --clients threads, as a service with P worker processes does; "
        "sizes are per process, and P x size stays within what the server (or PgBouncer) "
        "allows",
    )
    parser.add_argument(
        "--admin-dsn",
        metavar="URL",
        default=os.environ.get("PYPOOL_SWEEP_ADMIN_DSN"),
        help="when --dsn goes through PgBouncer: its admin console (database pgbouncer, a "
        "user in admin_users), to size by what the bouncer allows rather than by "
        "PostgreSQL's max_connections (default $PYPOOL_SWEEP_ADMIN_DSN)",
    )
    parser.add_argument(
        "--bouncer-pool-sizes",
        type=_size_list,
        metavar="LIST",
        help="with --admin-dsn: also run the recommended size with each of these as "
        "PgBouncer's default_pool_size (SET on its console, set back afterwards), and "
        "recommend one",
    )
    parser.add_argument(
        "--transaction-pooling",
        action="store_true",
        help="--dsn goes through a pooler in transaction mode (implied by --admin-dsn when "
        "PgBouncer's pool_mode is transaction): pools declare transaction_pooling=True and "
        "psycopg prepares no statements",
    )
    parser.add_argument("--json", type=json_path, metavar="FILE", help=f"write ({SCHEMA})")
    parser.add_argument(
        "--plot", type=png_path, metavar="FILE.png", help="draw throughput and p99 against size"
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
    processes: int | None = None  # None: client threads in this process
    transaction_pooling: bool = False
    bouncer: dict[str, Any] = field(default_factory=dict)  # from the admin console
    available: int = 0  # connections the sweep may open in all
    bouncer_pool_sizes: list[int] = field(default_factory=list)
    bouncer_results: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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


def _sampler(s: _Sweep, monitor: Any, admin: Any) -> Any:
    """What is counted halfway through a run: the server's client
    connections, and the bouncer's server connections when its console is
    open."""

    def sample() -> dict[str, int | None]:
        seen: dict[str, int | None] = {"server_in_use": None}
        with contextlib.suppress(Exception):
            seen["server_in_use"] = count_active(monitor)
        if admin is not None:
            seen["bouncer_server_connections"] = None
            with contextlib.suppress(Exception):
                seen["bouncer_server_connections"] = _bouncer.server_connections(
                    admin, s.bouncer["database"], s.bouncer["user"]
                )
        return seen

    return sample


def _measure(
    s: _Sweep, pool: Any, sql: str, workers: Any, size: int, sample: Any
) -> dict[str, Any]:
    """One run at pool size ``size``: in this process (``pool``) or in the
    worker processes (``workers``)."""
    try:
        if workers is not None:
            merged = workers.run(size, s.seconds, sample)
            seen = merged.pop("halfway") or {}
            result = {"cycles": merged["cycles"], "seconds": merged["seconds"],
                      "throughput": merged["throughput"], "p50_ms": merged["p50_ms"],
                      "p99_ms": merged["p99_ms"]}  # fmt: skip
        else:
            latencies, elapsed, seen = measure(pool, sql, s.clients, s.seconds, sample)
            seen = seen or {}
            timing = summary(latencies, len(latencies) / elapsed)
            result = {"cycles": timing["cycles"], "seconds": round(elapsed, 4),
                      "throughput": timing["throughput"], "p50_ms": timing["p50_ms"],
                      "p99_ms": timing["p99_ms"]}  # fmt: skip
    except (WorkloadFailed, WorkersFailed) as exc:
        raise _Failed(str(exc)) from None
    result["server_in_use"] = seen.get("server_in_use")
    if s.processes is not None:
        result["processes"] = s.processes
        result["total_size"] = s.processes * size
    if "bouncer_server_connections" in seen:
        result["bouncer_server_connections"] = seen["bouncer_server_connections"]
    return result


def _limits(s: _Sweep, admin: Any, dbname: str, user: str) -> None:
    """What the sweep may open in all: through PgBouncer its free client
    connections; directly the server's free non-reserved connections."""
    srv = s.server
    reserved = srv["superuser_reserved_connections"] + srv["reserved_connections"]
    srv["available"] = srv["max_connections"] - reserved - srv["in_use"]
    if admin is None:
        s.available = srv["available"]
        return
    try:
        s.bouncer = _bouncer.limits(admin, dbname, user)
    except Exception as exc:
        raise _Failed(f"cannot read PgBouncer's settings: {_first_line(exc)}") from None
    b = s.bouncer
    b["available"] = b["max_client_conn"] - b["clients_in_use"]
    s.available = b["available"]
    if b["pool_mode"] == "transaction":
        s.transaction_pooling = True


def _execute(s: _Sweep, psycopg: Any, args: Any, sql: str, progress: Progress) -> None:
    from .. import dbapi
    from ..pool import Pool

    dsn = args.dsn
    try:
        # No prepared statements: the DSN may lead through a transaction pooler.
        monitor = psycopg.connect(dsn, autocommit=True, connect_timeout=5, prepare_threshold=None)
    except Exception as exc:
        raise _Failed(f"cannot connect to {s.dsn}: {_first_line(exc)}") from None
    admin: Any = None
    workers: Any = None
    try:
        try:
            s.server = _server(monitor)
        except Exception as exc:
            raise _Failed(f"cannot read the server's settings: {_first_line(exc)}") from None
        if args.admin_dsn:
            try:
                admin = _bouncer.connect_admin(psycopg, args.admin_dsn)
            except Exception as exc:
                raise _Failed(
                    f"cannot connect to PgBouncer's admin console: {_first_line(exc)}"
                ) from None
            info = monitor.info
            _limits(s, admin, info.dbname, info.user)
        else:
            _limits(s, None, "", "")
        processes = s.processes or 1
        s.cap = max(0, min(s.max_size, s.available // processes))
        if s.cap < 1:
            where = "PgBouncer has" if admin is not None else "the server has"
            raise _Failed(
                f"{where} {s.available} free connections: not one per process for "
                f"{processes} processes"
            )
        s.sizes = sizes(s.cap)
        try:
            _run(monitor, sql)  # a dry run: a broken workload fails here, once
        except Exception as exc:
            raise _Failed(f"the workload failed: {_first_line(exc)}") from None
        sample = _sampler(s, monitor, admin)
        if s.processes is not None:
            progress.show(f"starting {s.processes} worker processes", advance=False)
            workers = Workers(s.processes, dsn, sql, s.clients, s.transaction_pooling)
        extra = {"prepare_threshold": None} if s.transaction_pooling else {}
        factory = dbapi.connect_factory(psycopg.connect, dsn, autocommit=True, **extra)
        steps = len(s.sizes) + len(s.bouncer_pool_sizes)
        progress.set_total(steps)

        def one_size(size: int, label: str, step: int) -> dict[str, Any]:
            progress.show(f"{label} ({step}/{steps})", advance=step > 1)
            if workers is not None:
                return _measure(s, None, sql, workers, size, sample)
            pool = Pool(factory, min_size=size, max_size=size, name=f"sweep-{size}",
                        transaction_pooling=s.transaction_pooling)  # fmt: skip
            try:
                try:
                    pool.wait(timeout=OPEN_TIMEOUT, fail_fast=True)
                except Exception as exc:
                    cause = exc.__cause__ or exc
                    raise _Failed(
                        f"pool size {size}: cannot open {size} connections: {_first_line(cause)}"
                    ) from None
                return _measure(s, pool, sql, None, size, sample)
            finally:
                pool.close()

        for i, size in enumerate(s.sizes):
            s.results.append({"size": size, **one_size(size, f"pool size {size}", i + 1)})
        if s.bouncer_pool_sizes:
            _vary_bouncer(s, admin, one_size, len(s.sizes))
        progress.show("done")
        s.complete = True
    finally:
        if workers is not None:
            workers.close()
        for conn in (admin, monitor):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()


def _vary_bouncer(s: _Sweep, admin: Any, one_size: Any, done: int) -> None:
    """At the recommended per-process size, runs the workload with each of
    ``--bouncer-pool-sizes`` as PgBouncer's ``default_pool_size``, then puts
    the bouncer's own value back."""
    rec = recommend(s.results, s.tolerance, s.clients)
    if rec is None:
        return
    size = rec["size"]
    original = s.bouncer["default_pool_size"]
    dbname = s.bouncer["database"]
    srv = s.server
    room = srv["available"] + s.bouncer["server_limit"]
    try:
        for i, n in enumerate(s.bouncer_pool_sizes):
            if n > room:
                s.notes.append(
                    f"default_pool_size {n} skipped: PostgreSQL has {srv['available']} free "
                    "connections"
                )
                continue
            _bouncer.set_default_pool_size(admin, n, dbname)
            if _bouncer.pool_size(admin, dbname) != n:
                raise _Failed(
                    f"SET default_pool_size = {n} did not change the pool of {dbname!r}: "
                    "its [databases] entry sets pool_size; change that instead"
                )
            result = one_size(size, f"PgBouncer default_pool_size {n}", done + i + 1)
            s.bouncer_results.append({"default_pool_size": n, "size": size, **result})
    finally:
        with contextlib.suppress(Exception):
            _bouncer.set_default_pool_size(admin, original, dbname)


def recommend_bouncer(results: list[dict[str, Any]], tolerance: float) -> dict[str, Any] | None:
    """The smallest ``default_pool_size`` within ``tolerance`` percent of the
    best throughput measured, with the reason, or None."""
    done = [r for r in results if r["throughput"] > 0]
    if not done:
        return None
    best = max(done, key=lambda r: r["throughput"])
    floor = best["throughput"] * (1 - tolerance / 100)
    chosen = min(
        (r for r in done if r["throughput"] >= floor), key=lambda r: r["default_pool_size"]
    )
    n = chosen["default_pool_size"]
    if chosen is best:
        reason = (
            f"default_pool_size {n} had the best throughput ({chosen['throughput']:,.0f}/s) "
            f"and no smaller one came within {tolerance:g}% of it"
        )
    else:
        reason = (
            f"default_pool_size {n} is the smallest within {tolerance:g}% of the best "
            f"throughput ({chosen['throughput']:,.0f}/s against {best['throughput']:,.0f}/s "
            f"at {best['default_pool_size']}); PostgreSQL then sees at most {n} server "
            "connection(s) from this database and user (plus the reserve pool)"
        )
    return {
        "default_pool_size": n,
        "throughput": chosen["throughput"],
        "best_default_pool_size": best["default_pool_size"],
        "best_throughput": best["throughput"],
        "reason": reason,
    }


def sizing(s: _Sweep, size: int) -> str:
    """Why ``size`` per process keeps the total within what is allowed."""
    processes = s.processes or 1
    total = processes * size
    who = f"{processes} processes x {size} = {total}" if s.processes else f"{size}"
    if s.bouncer:
        b = s.bouncer
        return (
            f"{who} client connections to PgBouncer, within the {b['available']} it has "
            f"free (max_client_conn {b['max_client_conn']}, {b['clients_in_use']} in use); "
            f"PgBouncer serves them from at most {b['server_limit']} server connections "
            f"(pool_size {b['pool_size']} + reserve_pool {b['reserve_pool']}, pool_mode "
            f"{b['pool_mode']}), which is what PostgreSQL sees, whatever the pools' size"
        )
    srv = s.server
    reserved = srv["superuser_reserved_connections"] + srv["reserved_connections"]
    return (
        f"{who} server connections, within the {srv['available']} the server has free "
        f"(max_connections {srv['max_connections']}, {reserved} reserved, "
        f"{srv['in_use']} in use before the sweep)"
    )


# ------------------------------------------------------------------ reporting


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _report(s: _Sweep) -> None:
    out = sys.stdout
    print(f"pypool sweep: {s.dsn}", file=out)
    per = " per process" if s.processes else ""
    if s.server:
        srv = s.server
        reserved = srv["superuser_reserved_connections"] + srv["reserved_connections"]
        print(
            f"server: PostgreSQL {srv['version']}, max_connections {srv['max_connections']} "
            f"({reserved} reserved), {srv['in_use']} in use before the sweep; "
            f"pool sizes{per} up to {s.cap} (--max-size {s.max_size})",
            file=out,
        )
    if s.bouncer:
        b = s.bouncer
        print(
            f"{b['version']}: pool_mode {b['pool_mode']}, max_client_conn "
            f"{b['max_client_conn']} ({b['clients_in_use']} in use), pool_size "
            f"{b['pool_size']} + reserve_pool {b['reserve_pool']} for "
            f"{b['database']}/{b['user']} (default_pool_size {b['default_pool_size']})",
            file=out,
        )
    sql = " ".join(s.workload["sql"].split())
    what = sql if len(sql) <= 60 else sql[:57] + "..."
    label = "script" if s.workload["kind"] == "script" else "query"
    clients = f"{s.clients} client threads"
    if s.processes:
        clients = f"{s.processes} processes x {s.clients} client threads, a pool in each"
    print(f"workload: {label} {what!r}, {clients}, {s.seconds:g} s per size", file=out)
    if not s.complete:
        print(f"{len(s.results)}/{len(s.sizes)} sizes measured (incomplete)", file=out)
    if s.results:
        print(file=out)
        header = ["size", "cycles/s", "p50 ms", "p99 ms", "server in use"]
        if s.processes:
            header.insert(1, "total")
        if s.bouncer:
            header.append("bouncer servers")
        rows = [header]
        for r in s.results:
            row = [
                str(r["size"]),
                f"{r['throughput']:,.0f}",
                _cell(r["p50_ms"], "{:.2f}"),
                _cell(r["p99_ms"], "{:.2f}"),
                _cell(r["server_in_use"]),
            ]
            if s.processes:
                row.insert(1, str(r["total_size"]))
            if s.bouncer:
                row.append(_cell(r.get("bouncer_server_connections")))
            rows.append(row)
        for line in table(rows, [True] * len(header)):
            print(line, file=out)
        print(
            f"size: pool size{per}; cycles/s: workloads completed per second, all clients "
            "together; latency includes the wait for a connection; server in use: client "
            "connections on the server during the run (max_connections "
            f"{s.server.get('max_connections')})"
            + ("; bouncer servers: PgBouncer's server connections" if s.bouncer else ""),
            file=out,
        )
    rec = recommend(s.results, s.tolerance, s.clients)
    if rec is not None:
        print(file=out)
        print(f"Recommended pool size{per}: {rec['size']}: {rec['reason']}.", file=out)
        print(f"Within limits: {sizing(s, rec['size'])}.", file=out)
    if s.bouncer_results:
        print(file=out)
        rows = [["default_pool_size", "cycles/s", "p50 ms", "p99 ms", "bouncer servers"]]
        for r in s.bouncer_results:
            rows.append([
                str(r["default_pool_size"]),
                f"{r['throughput']:,.0f}",
                _cell(r["p50_ms"], "{:.2f}"),
                _cell(r["p99_ms"], "{:.2f}"),
                _cell(r.get("bouncer_server_connections")),
            ])  # fmt: skip
        for line in table(rows, [True] * 5):
            print(line, file=out)
        print(
            f"PgBouncer's default_pool_size varied on its admin console at pool size "
            f"{s.bouncer_results[0]['size']}{per}, then set back to "
            f"{s.bouncer['default_pool_size']}",
            file=out,
        )
        brec = recommend_bouncer(s.bouncer_results, s.tolerance)
        if brec is not None:
            print(
                f"Recommended PgBouncer default_pool_size: {brec['default_pool_size']}: "
                f"{brec['reason']}.",
                file=out,
            )
    for note in s.notes:
        print(f"note: {note}", file=out)


def _doc(s: _Sweep) -> dict[str, Any]:
    rec = recommend(s.results, s.tolerance, s.clients)
    if rec is not None:
        rec["within_limits"] = sizing(s, rec["size"])
    return {
        "schema": SCHEMA,
        "complete": s.complete,
        "started": s.started,
        "dsn": s.dsn,
        "server": s.server or None,
        "bouncer": s.bouncer or None,
        "settings": {
            "clients": s.clients,
            "processes": s.processes,
            "transaction_pooling": s.transaction_pooling,
            "seconds": s.seconds,
            "max_size": s.max_size,
            "cap": s.cap,
            "tolerance": s.tolerance,
            "sizes": s.sizes,
            "bouncer_pool_sizes": s.bouncer_pool_sizes,
            "workload": s.workload,
        },
        "results": s.results,
        "recommended": rec,
        "bouncer_results": s.bouncer_results,
        "recommended_bouncer": recommend_bouncer(s.bouncer_results, s.tolerance),
        "notes": s.notes,
        "error": s.error,
    }


def _plot(s: _Sweep, path: str) -> None:
    with png_figure(path, 2, 1, sharex=True, figsize=(8, 6.5), dpi=100) as (top, bottom):
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


# ------------------------------------------------------------------ the command


def sweep(args: argparse.Namespace) -> int:
    def fail(message: str) -> int:
        print(f"pypool sweep: {message}", file=sys.stderr)
        return EXIT_FAILED

    if not args.dsn:
        return fail("a database is required: --dsn URL (or $PYPOOL_SWEEP_DSN)")
    error = check_plot("sweep", args.plot)
    if error:
        print(error, file=sys.stderr)
        return EXIT_FAILED
    try:
        import psycopg
    except ImportError:
        return fail(f"needs psycopg: {PSYCOPG_EXTRA}")
    hint_extras("sweep", plot=args.plot is not None)
    from .._secrets import Secrets

    secrets = Secrets(args.dsn)  # what is shown or written passes through it

    if args.script is not None:
        workload = {"kind": "script", "sql": args.script}
    else:
        workload = {"kind": "query", "sql": args.query or DEFAULT_QUERY}
    if args.bouncer_pool_sizes and not args.admin_dsn:
        return fail("--bouncer-pool-sizes needs PgBouncer's admin console: --admin-dsn URL")
    s = _Sweep(
        dsn=secrets.mask(args.dsn),
        processes=args.processes,
        transaction_pooling=args.transaction_pooling,
        bouncer_pool_sizes=args.bouncer_pool_sizes or [],
        workload=workload,
        clients=args.clients,
        seconds=args.seconds,
        max_size=args.max_size,
        tolerance=args.tolerance,
        started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    progress = Progress()
    status = EXIT_OK
    try:
        _execute(s, psycopg, args, workload["sql"], progress)
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
    if not write_outputs("sweep", functools.partial(_doc, s), args.json, plot, args.plot):
        return status or EXIT_FAILED
    return status
